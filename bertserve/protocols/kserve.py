"""KServe's Open Inference Protocol (v2) over REST: what Triton's clients, KServe's SDK and KServe
InferenceServices call.

- GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}] (metadata) and .../ready;
- POST /v2/models/{name}[/versions/{v}]/infer: texts as one BYTES input (JSON, or the binary tensor extension
  tritonclient sends by default). A classification model answers `label` (BYTES [n]), `score` (FP32 [n]) and
  `scores` (FP32 [n, labels], in the order of the metadata's `labels`); an embedding model `embedding`
  (FP32 [n, d]). Answers are JSON.

The infer route's model decides which task API runs it: the protocol middleware rewrites the path to that
API's internal route (INFER_PATHS) and puts the model into the body. Errors are `{"error": "..."}`, 400 for
a bad request.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.responses import JSONResponse

from bertserve import __version__, routes
from bertserve.errors import ClientError
from bertserve.jobs import ClassifyJob, EmbedJob
from bertserve.protocols.adapter import Adapter, Handler, error_parts
from bertserve.protocols.served import ServedModels
from bertserve.schemas import Items, NonEmpty, Text

PREFIX = routes.KSERVE_PREFIX
INFER_PATHS = {"classification": routes.KSERVE_CLASSIFY_INFER, "embedding": routes.KSERVE_EMBED_INFER}
INFER_PATTERN = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
OUTPUTS = {"classification": ("label", "score", "scores"), "embedding": ("embedding",)}
_TEXTS = TypeAdapter(Items[Text])
SHOWN_DIMENSIONS = 8  # of a shape quoted in an error


class InferInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    shape: Items[int]
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
    inputs: NonEmpty[InferInput]
    outputs: Items[RequestedOutput] | None = None
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
        if not values:
            raise ClientError(400, f"input {tensor.name!r} holds no texts", "bad_input")
        if _elements(tensor.shape, len(values)) != len(values):
            shape = _shown(tensor.shape)
            raise ClientError(
                400, f"input {tensor.name!r}: shape {shape} but {len(values)} values", "bad_input"
            )
        try:
            return _TEXTS.validate_python(values)
        except ValidationError as exc:  # one error: the list stops at its first wrong item
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

    def reply(self) -> dict[str, Any]:
        """What the answer echoes (the request's id) and keeps (the outputs asked for; None: all)."""
        return {"id": self.id, "outputs": self.wanted()}


class ClassifyInferRequest(InferRequest):
    task: ClassVar[str] = "classification"

    def job(self) -> ClassifyJob:
        return ClassifyJob(model=self.model, inputs=self.texts(), reply=self.reply())


class EmbedInferRequest(InferRequest):
    task: ClassVar[str] = "embedding"

    def job(self) -> EmbedJob:
        return EmbedJob(model=self.model, texts=self.texts(), reply=self.reply())


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


def _elements(shape: list[int], most: int) -> int | None:
    """How many elements `shape` declares, None when a dimension is negative or the count passes `most`:
    one pass that stops there, in time linear in the shape (math.prod of 49,000 dimensions of 2**62, a
    megabyte of JSON, multiplied ever larger integers for seconds)."""
    if any(dim < 0 for dim in shape):
        return None
    if 0 in shape:
        return 0
    count = 1
    for dim in shape:
        count *= dim
        if count > most:
            return None
    return count


def _shown(shape: list[int]) -> str:
    """A shape for an error message: its first dimensions only, when it has many."""
    if len(shape) <= SHOWN_DIMENSIONS:
        return str(shape)
    return f"[{', '.join(map(str, shape[:SHOWN_DIMENSIONS]))}, ... ({len(shape)} dimensions)]"


def _flatten(data):
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _response(model, prepared, outputs: list[dict]) -> dict:
    reply = prepared.options.reply
    if reply.get("outputs") is not None:
        outputs = [o for o in outputs if o["name"] in reply["outputs"]]
    body = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if reply.get("id") is not None:
        body["id"] = reply["id"]
    return body


def classification_outputs(model, prepared, rankings: list[list[dict]]) -> dict:
    """label, score (the best's) and scores (every label's, in the model's label order), per text."""
    index = {label: i for i, label in enumerate(model.labels)}
    scores = [[0.0] * len(model.labels) for _ in rankings]
    for row, ranking in zip(scores, rankings, strict=True):
        for item in ranking:
            row[index[item["label"]]] = item["score"]
    n = len(rankings)
    return _response(
        model,
        prepared,
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


def embedding_outputs(model, prepared, rows) -> dict:
    tensor = {"name": "embedding", "datatype": "FP32", "shape": list(rows.shape), "data": rows.reshape(-1)}
    return _response(model, prepared, [tensor])


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


def from_binary(body: bytes, header_length: bytes) -> dict:
    """A request in the binary tensor extension (tritonclient's default) as plain JSON: the JSON header (of
    `header_length` bytes, the Inference-Header-Content-Length), then each input's raw bytes (BYTES: 4-byte
    little-endian length, then the string, per element). Raises ValueError, saying why, for a body that does
    not parse so; a header of the wrong fields is left to the route's schema to describe."""
    length = int(header_length) if header_length.strip().isdigit() else -1
    if not 0 < length <= len(body):
        shown = header_length[:40].decode("latin-1")
        raise ValueError(f"Inference-Header-Content-Length {shown!r} does not fit a {len(body)}-byte body")
    request = orjson.loads(body[:length])  # as a JSON request is read: the same nesting and number limits
    if not isinstance(request, dict):
        raise ValueError("the JSON header is not an object")
    offset = length
    for tensor in request.get("inputs") if isinstance(request.get("inputs"), list) else ():
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        name, size = tensor.get("name"), parameters.pop("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"input {name!r}: binary_data_size {str(size)[:40]} is not a number of bytes")
        chunk, offset = body[offset : offset + size], offset + size
        if len(chunk) != size:
            raise ValueError(f"input {name!r}: binary data shorter than {size} bytes")
        if str(tensor.get("datatype", "")).upper() != "BYTES":
            raise ValueError(f"input {name!r}: only BYTES inputs are accepted")
        tensor["data"] = _bytes_elements(chunk)
    return request


def _bytes_elements(chunk: bytes) -> list[str]:
    values, at = [], 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise ValueError("a BYTES element's 4-byte length runs past the end of its data")
        (length,) = struct.unpack_from("<I", chunk, at)
        at += 4
        if at + length > len(chunk):
            raise ValueError("a BYTES element runs past the end of its data")
        values.append(chunk[at : at + length].decode("utf-8"))
        at += length
    return values


def reshape(status: int, body: dict) -> tuple[int, dict]:
    """The protocol's `{"error": "..."}`; 400 for what a client sent wrong."""
    parts = error_parts(body)
    if parts is None:
        return status, body
    return (400 if status == 422 else status), {"error": parts[0]}


def install_routes(app: FastAPI, served: ServedModels, drain_flag: Path | None) -> None:
    """The routes answered here: server and model metadata, health and readiness, and the public infer
    routes (reached only when the protocol layer sends a request nowhere else: they say why)."""

    def model_metadata(name: str, version: str | None) -> dict:
        try:
            task = served.task_of(name)
            manifest = served.manifest(f"{name}@{version}" if version else name)
        except ClientError as exc:
            raise ClientError(
                404, f"model {name!r} not found: {exc.message}", "unknown_model"
            ).to_http() from None
        versions = served.loaded_versions(manifest.name)
        return metadata(manifest.name, versions, task or manifest.task, manifest)

    def readiness(name: str, version: str | None) -> JSONResponse:
        """The Open Inference Protocol's model readiness: 200 when an inference process serves the version
        `name` (or `name`'s default) resolves to, 400 (the protocol's "false") when it refused it."""
        try:
            resolved, resolved_version = served.resolve(f"{name}@{version}" if version else name)
        except ClientError as exc:
            raise ClientError(
                404, f"model {name!r} not found: {exc.message}", "unknown_model"
            ).to_http() from None
        ready = served.is_loaded(resolved, resolved_version)
        return JSONResponse({"name": resolved, "ready": ready}, 200 if ready else 400)

    @app.get(PREFIX, tags=["kserve"])
    def server_metadata() -> dict:
        """The Open Inference Protocol's server metadata."""
        return {"name": "bertserve", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get(f"{PREFIX}/health/live", tags=["kserve"])
    def live() -> dict:
        return {"live": True}

    @app.get(f"{PREFIX}/health/ready", tags=["kserve"])
    def ready() -> JSONResponse:
        """Ready once the workers are (the HTTP server starts after them), until a drain begins."""
        draining = drain_flag is not None and drain_flag.exists()
        return JSONResponse({"ready": not draining}, 503 if draining else 200)

    @app.get(f"{PREFIX}/models/{{model_name}}", tags=["kserve"])
    def model(model_name: str) -> dict:
        return model_metadata(model_name, None)

    @app.get(f"{PREFIX}/models/{{model_name}}/versions/{{model_version}}", tags=["kserve"])
    def model_version(model_name: str, model_version: str) -> dict:
        return model_metadata(model_name, model_version)

    @app.get(f"{PREFIX}/models/{{model_name}}/ready", tags=["kserve"])
    def model_ready(model_name: str) -> JSONResponse:
        return readiness(model_name, None)

    @app.get(f"{PREFIX}/models/{{model_name}}/versions/{{model_version}}/ready", tags=["kserve"])
    def model_version_ready(model_name: str, model_version: str) -> JSONResponse:
        return readiness(model_name, model_version)

    def refuse(model_name: str) -> None:
        task = served.task_of(model_name)
        if task is None:
            raise ClientError(404, f"model {model_name!r} not found", "unknown_model").to_http()
        raise ClientError(
            400, f"model {model_name!r} is a {task} model: infer serves classification and embedding models"
        ).to_http()

    @app.post(f"{PREFIX}/models/{{model_name}}/infer", tags=["kserve"])
    def infer(model_name: str, request: InferRequest) -> InferResponse:
        """Texts as one BYTES input; see protocols/kserve.py for the outputs."""
        refuse(model_name)

    @app.post(f"{PREFIX}/models/{{model_name}}/versions/{{model_version}}/infer", tags=["kserve"])
    def infer_version(model_name: str, model_version: str, request: InferRequest) -> InferResponse:
        refuse(model_name)


ADAPTER = Adapter(
    "kserve",
    {
        INFER_PATHS["classification"]: Handler(ClassifyInferRequest, InferResponse, classification_outputs),
        INFER_PATHS["embedding"]: Handler(EmbedInferRequest, InferResponse, embedding_outputs),
    },
    reshape,
)
