"""What every task API shares: validating and tokenizing in the HTTP processes, loading the served versions
in the inference process, picking one per request, metrics.

A task API is not a LitAPI: one LitAPI (engine/process.py's InferenceProcess) hosts every task in each
inference process, and the engine's loop (engine/worker.py) calls `admit`, `predict` and `render`."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bertserve import metrics, routes
from bertserve.api.encoders import HttpEncoders, Tokens
from bertserve.config import Settings
from bertserve.engine import wire
from bertserve.errors import ClientError
from bertserve.limits import check_inputs
from bertserve.protocols.adapter import Handler
from bertserve.protocols.adapters import handler_of
from bertserve.runtime.encoding import Encoded, TextEncoder

# ~20 inputs of drug-review length: tokenizing takes about a millisecond on one core
LARGE_REQUEST_CHARS = 4000


@dataclass
class Submission:
    """What an HTTP process sends the inference process for one request (engine/wire.py's request frame):
    the job as plain JSON, the token ids as binary arrays (None when this process could not tokenize), and
    the route whose adapter writes the answer."""

    route: str
    job: dict[str, Any]
    key: str | None
    lengths: list[int] | None
    targets: list[int] | None
    body: bytes
    sequences: int

    def header(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "job": self.job,
            "key": self.key,
            "lengths": self.lengths,
            "targets": self.targets,
        }


class TaskAPI:
    """One task's requests. The inference process loads every served version of the task's models.
    `submission` runs in the HTTP processes (validation, tokenizing), the rest in the inference process.
    It answers the routes whose queue is its `endpoint` in the route table (routes.py); each route's adapter
    (protocols/) turns the route's body into this API's job and writes the result for the route's clients."""

    task: str = ""
    # the tasks whose models this API's workers load (default: its task); a request may accept fewer
    serves: tuple[str, ...] = ()
    endpoint: str = ""  # its queue, and its requests' metrics label
    job_type: type = object  # the job its routes' requests become (validated again in the worker)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_path = f"/v1/{self.endpoint}"
        self.max_batch_size = settings.max_batch_size
        self.default_ref = settings.default_model(self.task)
        self.serves = self.serves or (self.task,)
        self.handlers = {
            path: handler_of(path) for path, queue in routes.queues().items() if queue == self.endpoint
        }

    def routes(self) -> dict[str, Handler]:
        """The HTTP routes this API answers (server.py adds them): path -> its adapter's handler."""
        return self.handlers

    # ---- inference process start-up --------------------------------------------------------------

    def load(self, device: str) -> None:
        """Load and warm every served version of this task's models (in the inference process)."""
        from bertserve.runtime.registry import ModelRegistry

        self.registry = ModelRegistry(self.settings, self.serves, self.endpoint, device)
        self.registry.load_initial()

    # ---- per request, in the HTTP processes ----------------------------------------------------------

    def submission(self, job, encoders: HttpEncoders, route: str) -> Submission:
        """What to send the inference process for `route`'s request, made this API's job by the route's
        adapter: tokenized here when this process can resolve its model (raises ClientError for what the
        client must fix)."""
        inputs = job.as_list()
        check_inputs(self.settings, inputs, self.input_limit(job))
        encoder = encoders.find(job.model or self.default_for(job), self.accepts(job))
        dumped = job.model_dump(mode="json")
        if encoder is None:
            return Submission(route, dumped, None, None, None, b"", max(1, len(inputs)))
        tokens = self.tokenize(encoder, job)
        lengths, body = wire.token_arrays(tokens.inputs)
        return Submission(route, dumped, tokens.key, lengths, tokens.target_ids, body, max(1, len(lengths)))

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

    def is_large(self, job) -> bool:
        """Whether tokenizing it takes a millisecond or more (then not in the event loop, see server.py)."""
        items = job.as_list()
        return sum(len(item) if isinstance(item, str) else sum(map(len, item)) for item in items) > (
            LARGE_REQUEST_CHARS
        )

    # ---- per request, in the inference process ---------------------------------------------------

    def model_for(self, job):
        return self.registry.pick(job.model or self.default_for(job), self.accepts(job))

    def refresh(self, look=None) -> None:
        """Between batches: let the registry pick up alias moves and new versions (see registry.py); `look`
        gives the store's fingerprint when several tasks share one look at it."""
        self.registry.refresh(look)

    def admit(self, header: dict[str, Any], body: memoryview):
        """A request frame -> Prepared for the batch. The job was validated in the HTTP process and is not
        validated again; the ids made there are used when they came from this version's encoder. Otherwise
        (no encoder there, or a swap to another tokenizer under way) the job is validated and tokenized
        here. The route names the handler that will write the answer."""
        route = header.get("route")
        if route not in self.handlers:
            raise ClientError(404, f"{self.endpoint} answers no route {str(route)[:80]!r}", "not_found")
        key = header["key"]
        job = self.job_type.model_construct(**header["job"]) if key is not None else None
        model = self.model_for(job) if job is not None else None
        if job is None or model.encoder.key != key:
            job = self.job_type.model_validate(header["job"])
            model = self.model_for(job)
            tokens = self.tokenize(model.encoder, job)
        else:
            inputs = [Encoded(ids, types) for ids, types in wire.token_lists(header["lengths"], body)]
            tokens = Tokens(key, inputs, header["targets"])
        prepared = self.prepare(model, tokens, job)
        prepared.route = route
        self.check_answer(prepared, job)
        return prepared

    def prepare(self, model, tokens: Tokens, request):
        """The batch's view of one request: a Prepared with what the task's decode needs."""
        from bertserve.runtime.loaded import Prepared

        return Prepared(
            model, tokens.inputs, top_k=request.top_k, target_ids=tokens.target_ids, options=request
        )

    def check_answer(self, prepared, job) -> None:
        """Refuse, before its forward pass, a request whose answer would pass BERTSERVE_MAX_ANSWER_BYTES
        (limits.py): the APIs whose answers grow with what a client asks for say how large it will be."""

    # ---- per batch -------------------------------------------------------------------------------

    def observe_queue(self, waiting: Sequence) -> None:
        """How long each request of a batch waited (engine.worker.Waiting records)."""
        now = time.monotonic()
        for item in waiting:
            model = item.prepared.model
            metrics.QUEUE_DURATION.labels(self.endpoint, model.name, model.version).observe(
                now - item.arrived
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
                outputs[i] = (model, batch[i], answer)
        return outputs

    def run_model(self, model, requests: list) -> list:
        raise NotImplementedError

    def render(self, output) -> tuple[bytes, str]:
        """The answer's JSON body, written by its route's handler, and the version that made it (the HTTP
        process sends it as X-Model-Version, which the metrics layer reads for its labels)."""
        model, prepared, result = output
        body = self.handlers[prepared.route].render(model, prepared, result)
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), model.ref
