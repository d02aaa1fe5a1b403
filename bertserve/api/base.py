"""What both task APIs share: loading the served versions in a worker, picking one per request, metrics."""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import litserve as ls
import orjson
from starlette.responses import Response

from bertserve import metrics
from bertserve.api.encoders import HttpEncoders, Submitted, Tokens
from bertserve.config import Settings
from bertserve.engine.loop import SequenceBatchingLoop
from bertserve.errors import ClientError
from bertserve.runtime.encoding import TextEncoder

# ~20 inputs of drug-review length: tokenizing takes about a millisecond on one core
LARGE_REQUEST_CHARS = 4000


class TaskAPI(ls.LitAPI):
    """One endpoint (= one task). Each inference worker loads every served version of the task's models.
    `submission` runs in the HTTP processes (validation, tokenizing), the rest in the inference workers."""

    task: str = ""
    # the tasks whose models this API's workers load (default: its task); a request may accept fewer
    serves: tuple[str, ...] = ()
    endpoint: str = ""
    request_type: type = object  # the body's schema in /docs
    response_type: type = object
    answer_field = "predictions"  # the response body's field holding the answers

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            api_path=f"/v1/{self.endpoint}",
            loop=SequenceBatchingLoop(),
        )
        self.settings = settings
        self.default_ref = settings.default_model(self.task)
        self.serves = self.serves or (self.task,)

    def worker_count(self) -> int:
        """Inference worker processes of this endpoint (per GPU on cuda)."""
        return self.settings.workers

    async def authorize(self) -> None:
        """LitServe's per-route auth dependency. ServiceMiddleware has already checked the key; being async,
        this no-op spares every request the thread-pool hop FastAPI makes for LitServe's sync default."""

    def routes(self) -> dict[str, tuple[type, type]]:
        """The HTTP routes this API answers (server.py adds them): path -> (request, response) schema."""
        return {self.api_path: (self.request_type, self.response_type)}

    def health(self) -> bool:
        """Runs in the HTTP processes: LitServe already waits for every worker's setup (load + warm-up)."""
        drain_flag = getattr(self, "drain_flag", None)
        return drain_flag is None or not drain_flag.exists()

    # ---- worker start-up -------------------------------------------------------------------------

    def setup(self, device: str) -> None:
        import torch

        from bertserve.logs import configure_logging, route_transformers_output
        from bertserve.runtime.registry import ModelRegistry

        configure_logging(self.settings)  # a spawned process: it inherits no logging set-up
        route_transformers_output()
        # A terminal's Ctrl-C reaches every process of the group; the main process drains and stops the
        # workers, so a worker interrupted on its own would only print a KeyboardInterrupt traceback.
        # Spawned with SIGINT blocked (server.py launches the workers so) for the imports before this line;
        # from here on it is ignored for the process, whatever mask a thread ends up with.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(self.settings.torch_threads)  # resolved for this machine by build_server
        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # LitServe's pick for this worker: cuda:N
        self.registry = ModelRegistry(self.settings, self.serves, self.endpoint, device)
        self.registry.load_initial()

    def refresh(self) -> None:
        """Between batches: let the registry pick up alias moves and new versions (see registry.py)."""
        self.registry.refresh()

    # ---- per request, in the HTTP processes ----------------------------------------------------------

    def submission(self, request, encoders: HttpEncoders) -> tuple[bytes, bytes]:
        """What to queue for the workers: the request as this API's job (a route's own request schema turns
        itself into one: `job()`), tokenized here when this process can resolve its model (raises
        ClientError for what the client must fix)."""
        job = as_job(request)
        self.check_limits(job.as_list(), self.input_limit(job))
        encoder = encoders.find(job.model or self.default_for(job), self.accepts(job))
        tokens = self.tokenize(encoder, job) if encoder is not None else None
        return Submitted(job, tokens).encode()

    def default_for(self, job) -> str:
        """The model ref a request naming none gets."""
        return self.default_ref

    def accepts(self, job) -> tuple[str, ...]:
        """The tasks whose models can answer this request."""
        return (self.task,)

    def input_limit(self, job) -> int:
        return self.settings.max_inputs

    def tokenize(self, encoder: TextEncoder, request) -> Tokens:
        raise NotImplementedError

    def is_large(self, request) -> bool:
        """Whether tokenizing it takes a millisecond or more (then not in the event loop, see server.py)."""
        items = as_job(request).as_list()
        return sum(len(item) if isinstance(item, str) else sum(map(len, item)) for item in items) > (
            LARGE_REQUEST_CHARS
        )

    def check_limits(self, inputs: Sequence[str | tuple[str, str]], limit: int | None = None) -> None:
        limit = limit or self.settings.max_inputs
        if len(inputs) > limit:
            raise ClientError(
                413, f"{len(inputs)} inputs in one request; the limit is {limit}", "too_many_inputs"
            )
        for index, item in enumerate(inputs):
            chars = len(item) if isinstance(item, str) else sum(map(len, item))
            if chars > self.settings.max_input_chars:
                raise ClientError(
                    413,
                    f"input {index} has {chars} characters; the limit is {self.settings.max_input_chars}",
                    "input_too_large",
                )

    # ---- per request, in the inference workers ----------------------------------------------------

    def model_for(self, job):
        return self.registry.pick(job.model or self.default_for(job), self.accepts(job))

    def decode_request(self, request):
        """A submission -> Prepared for the batch. The ids made in the HTTP process are used when they came
        from this version's encoder; otherwise (no encoder there, or a swap to another tokenizer under way)
        the request is tokenized here."""
        submitted = Submitted.decode(request, self.request_type)
        model = self.model_for(submitted.request)
        tokens = submitted.tokens
        if tokens is None or tokens.key != model.encoder.key:
            tokens = self.tokenize(model.encoder, submitted.request)
        return self.prepare(model, tokens, submitted.request)

    def prepare(self, model, tokens: Tokens, request):
        """The batch's view of one request: a Prepared with what the task's decode needs."""
        from bertserve.runtime.loaded import Prepared

        return Prepared(model, tokens.inputs, top_k=request.top_k, target_ids=tokens.target_ids)

    # ---- per batch -------------------------------------------------------------------------------

    def observe_queue(self, waiting: Sequence[tuple]) -> None:
        now = time.monotonic()
        for prepared, submitted_at in waiting:
            model = prepared.model
            metrics.QUEUE_DURATION.labels(self.endpoint, model.name, model.version).observe(
                now - submitted_at
            )

    def predict(self, batch: list) -> list:
        """Run each model's share of the batch in its own forward passes; answers keep the batch's order."""
        by_model: dict = defaultdict(list)
        for index, prepared in enumerate(batch):
            by_model[prepared.model].append(index)
        outputs: list = [None] * len(batch)
        for model, indices in by_model.items():
            requests = [batch[i] for i in indices]
            started = time.perf_counter()
            answers = self.run_model(model, requests)
            labels = (self.endpoint, model.name, model.version)
            metrics.MODEL_DURATION.labels(*labels).observe(time.perf_counter() - started)
            metrics.BATCH_REQUESTS.labels(*labels).observe(len(requests))
            sequences = sum(r.sequences for r in requests)
            metrics.BATCH_SEQUENCES.labels(*labels).observe(sequences)
            metrics.BATCH_TOKENS.labels(*labels).observe(model.padded_tokens)
            metrics.SEQUENCES.labels(*labels).inc(sequences)
            for i, answer in zip(indices, answers, strict=True):
                outputs[i] = (model, answer)
        return outputs

    def run_model(self, model, requests: list) -> list:
        raise NotImplementedError

    def encode_response(self, output) -> Response:
        """orjson bytes plus X-Model-Version, which the metrics middleware reads for its labels."""
        model, predictions = output
        return Response(
            self.response_body(model, predictions),
            media_type="application/json",
            headers={"X-Model-Version": model.ref},
        )

    def response_body(self, model, predictions) -> bytes:
        if isinstance(predictions, Shaped):
            return orjson.dumps(predictions.body, option=orjson.OPT_SERIALIZE_NUMPY)
        return orjson.dumps({"model": model.name, "version": model.version, self.answer_field: predictions})


@dataclass
class Shaped:
    """An answer already written in its route's protocol shape (TEI, Hugging Face, KServe, ...)."""

    body: Any


def as_job(request):
    """A route's request as the API's queued job (requests of our own schemas are their own job)."""
    return request.job() if hasattr(request, "job") else request
