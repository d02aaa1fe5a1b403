"""KServe's Open Inference Protocol (v2) over REST: what Triton's clients, KServe's SDK and KServe
InferenceServices call.

- GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}] (metadata) and .../ready;
- POST /v2/models/{name}[/versions/{v}]/infer: texts as one BYTES input (JSON, or the binary tensor extension
  tritonclient sends by default). A classification model answers `label` (BYTES [n]), `score` (FP32 [n]) and
  `scores` (FP32 [n, labels], in the order of the metadata's `labels`); an embedding model `embedding`
  (FP32 [n, d]). Answers are JSON.

The infer route's model decides which task API runs it: the protocol middleware rewrites the path to that
API's internal route (INFER_PATHS) and puts the model into the body. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from bertserve.errors import ClientError
from bertserve.schemas import ClassifyJob, EmbedJob, Text

PREFIX = "/v2"
INFER_PATHS = {
    "classification": "/_protocol/kserve/classification/infer",
    "embedding": "/_protocol/kserve/embedding/infer",
}
INFER_PATTERN = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
OUTPUTS = {"classification": ("label", "score", "scores"), "embedding": ("embedding",)}
_TEXTS = TypeAdapter(list[Text])


class InferInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="The texts (BYTES), flattened row-major or nested by shape.")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(..., min_length=1)
    outputs: list[RequestedOutput] | None = None
    model: str = Field("", description="Set from the path.")

    task: ClassVar[str] = ""

    def texts(self) -> list[str]:
        """The one BYTES input's strings, checked against its shape."""
        texts = [item for item in self.inputs if item.datatype.upper() == "BYTES"]
        if len(texts) != 1 or len(self.inputs) != 1:
            raise ClientError(
                400, "send exactly one input, of datatype BYTES, holding the texts", "bad_input"
            )
        tensor = texts[0]
        values = list(_flatten(tensor.data))
        if math.prod(tensor.shape) != len(values):
            raise ClientError(
                400, f"input {tensor.name!r}: shape {tensor.shape} but {len(values)} values", "bad_input"
            )
        try:
            return _TEXTS.validate_python(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ClientError(
                400, f"input {tensor.name!r} value {where}: {first['msg']}", "bad_input"
            ) from None

    def wanted(self) -> list[str] | None:
        if self.outputs is None:
            return None
        unknown = [o.name for o in self.outputs if o.name not in OUTPUTS[self.task]]
        if unknown:
            known = ", ".join(OUTPUTS[self.task])
            raise ClientError(400, f"unknown output {unknown[0]!r}: this model answers {known}", "bad_output")
        return [o.name for o in self.outputs]


class ClassifyInferRequest(InferRequest):
    task: ClassVar[str] = "classification"

    def job(self) -> ClassifyJob:
        return ClassifyJob(
            model=self.model, inputs=self.texts(), shape="kserve", request_id=self.id, outputs=self.wanted()
        )


class EmbedInferRequest(InferRequest):
    task: ClassVar[str] = "embedding"

    def job(self) -> EmbedJob:
        return EmbedJob(
            model=self.model, texts=self.texts(), shape="kserve", request_id=self.id, outputs=self.wanted()
        )


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def _flatten(data):
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _response(model, job, outputs: list[dict]) -> dict:
    if job.outputs is not None:
        outputs = [o for o in outputs if o["name"] in job.outputs]
    body = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if job.request_id is not None:
        body["id"] = job.request_id
    return body


def classification_outputs(model, job: ClassifyJob, rankings: list[list[dict]]) -> dict:
    index = {label: i for i, label in enumerate(model.labels)}
    scores = [[0.0] * len(model.labels) for _ in rankings]
    for row, ranking in zip(scores, rankings, strict=True):
        for item in ranking:
            row[index[item["label"]]] = item["score"]
    n = len(rankings)
    return _response(
        model,
        job,
        [
            {"name": "label", "datatype": "BYTES", "shape": [n], "data": [r[0]["label"] for r in rankings]},
            {"name": "score", "datatype": "FP32", "shape": [n], "data": [r[0]["score"] for r in rankings]},
            {
                "name": "scores",
                "datatype": "FP32",
                "shape": [n, len(model.labels)],
                "data": [s for row in scores for s in row],
            },
        ],
    )


def embedding_outputs(model, job: EmbedJob, rows) -> dict:
    tensor = {"name": "embedding", "datatype": "FP32", "shape": list(rows.shape), "data": rows.reshape(-1)}
    return _response(model, job, [tensor])


def metadata(name: str, versions: list[str], task: str, manifest) -> dict:
    """GET /v2/models/{name}: the tensors infer takes and answers."""
    text = {"name": "text", "datatype": "BYTES", "shape": [-1]}
    if task == "classification":
        labels = len(manifest.labels) or -1
        outputs = [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, labels]},
        ]
        parameters = {"labels": manifest.labels}
    else:
        outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, manifest.dimensions or -1]}]
        parameters = {"pooling": manifest.pooling, "normalize": manifest.normalize}
    return {
        "name": name,
        "versions": versions,
        "platform": f"bertserve-{task}",
        "inputs": [text],
        "outputs": outputs,
        "parameters": parameters,
    }


def from_binary(body: bytes, header_length: int) -> dict:
    """A request in the binary tensor extension (tritonclient's default) as plain JSON: the JSON header,
    then each input's raw bytes (BYTES: 4-byte little-endian length, then the string, per element).
    Raises ValueError for a body that does not parse so."""
    if not 0 < header_length <= len(body):
        raise ValueError(
            f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body"
        )
    request = json.loads(body[:header_length])
    offset = header_length
    for tensor in request.get("inputs") or []:
        size = (tensor.get("parameters") or {}).pop("binary_data_size", None)
        if size is None:
            continue
        chunk, offset = body[offset : offset + int(size)], offset + int(size)
        if len(chunk) != int(size):
            raise ValueError(f"input {tensor.get('name')!r}: binary data shorter than {size} bytes")
        if str(tensor.get("datatype", "")).upper() != "BYTES":
            raise ValueError(f"input {tensor.get('name')!r}: only BYTES inputs are accepted")
        tensor["data"] = _bytes_elements(chunk)
    return request


def _bytes_elements(chunk: bytes) -> list[str]:
    values, at = [], 0
    while at < len(chunk):
        (length,) = struct.unpack_from("<I", chunk, at)
        at += 4
        if at + length > len(chunk):
            raise ValueError("BYTES element runs past the end of its data")
        values.append(chunk[at : at + length].decode("utf-8"))
        at += length
    return values
