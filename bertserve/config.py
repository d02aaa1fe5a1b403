"""One Settings object for the whole service: CLI flags override BERTSERVE_* environment variables."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from bertserve import routes
from bertserve.runtime.device import GpuProbe, check_device, pick_sizing, resolve_device, usable_cpus
from bertserve.store.layout import check_name

Backend = Literal["auto", "fp32", "fp16", "bf16", "int8", "onnx", "onnx-int8"]


class Settings(BaseSettings):
    """Every knob of `bertserve serve`; each field is also BERTSERVE_<FIELD> in the environment."""

    model_config = SettingsConfigDict(env_prefix="BERTSERVE_", extra="ignore")

    store: Path = Field(Path("model_store"), description="Model store root folder.")
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    device: str = Field(
        "auto",
        description="Where models run: cpu, cuda (every GPU), cuda:N[,M] or auto (cuda when torch sees one).",
    )
    workers: int = Field(
        0,
        ge=0,
        le=32,
        description="Inference processes (slots), each hosting every served model of every task; per GPU on "
        "cuda (0: sizing).",
    )
    explain_workers: int = Field(
        1,
        ge=0,
        le=1,
        description="1: /v1/explain runs on a thread of each inference process, its models loaded on the "
        "first explanation; 0 serves no /v1/explain.",
    )
    api_servers: int = Field(0, ge=0, le=32, description="HTTP server processes (0: sizing).")
    torch_threads: int = Field(
        0, ge=0, description="Most torch intra-op threads per inference process (0: sizing)."
    )
    single_thread_mflops: float = Field(
        50.0,
        ge=0,
        description="On a CPU, a batch whose forward costs at most this many million multiply-adds (about "
        "12 x hidden^2 x layers x padded tokens) runs on one torch thread: more threads cost more than they "
        "save on so little work; 0: always torch_threads.",
    )
    models: str = Field(
        "*",
        description="Comma-separated model refs to load (name, name@V, name:alias); '*' loads every version.",
    )
    default_classify_model: str = Field("sentiment", description="Model used by /v1/classify when absent.")
    default_fill_mask_model: str = Field("mlm", description="Model used by /v1/fill-mask when absent.")
    default_embedding_model: str = Field(
        "minilm", description="Model used by /v1/embeddings and /v1/embed when absent."
    )
    default_rerank_model: str = Field(
        "minilm",
        description="Model used by /v1/rerank and /rerank when absent: a cross-encoder (task rerank) or an "
        "embedding model (cosine).",
    )
    model_dir: Path | None = Field(
        None,
        description="A plain Hugging Face or sentence-transformers folder to serve (KServe mounts the "
        "InferenceService's storageUri at /mnt/models, the default when STORAGE_URI is set): published into "
        "the store at start-up unless a version came from the same files, and made its task's default model.",
    )
    model_name: str = Field(
        "model", description="The store name of model_dir's model (KServe: the service's)."
    )
    backend: Backend = Field(
        "auto",
        description="Inference backend of every served model not in model_backends ('auto': the fastest "
        "one verified against fp32 here).",
    )
    model_backends: str = Field(
        "",
        description="Per-model backends overriding backend, comma-separated name=backend "
        "(e.g. 'sentiment=int8,mlm=fp32').",
    )
    max_batch_size: int = Field(
        32, ge=1, le=1024, description="Most sequences in one forward pass (unset on cuda: 128)."
    )
    max_batch_tokens: int = Field(
        16384,
        ge=64,
        description="Most padded tokens (sequences x longest) in one forward pass (unset on cuda: 65536).",
    )
    batch_timeout: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Seconds a batch may wait for more requests (0: take what is queued).",
    )
    max_inputs: int = Field(64, ge=1, description="Most inputs in one request (413 above).")
    max_embedding_inputs: int = Field(
        2048,
        ge=1,
        description="Most inputs (texts, token arrays, documents) in one embeddings, similarity or rerank "
        "request, as OpenAI allows; the server splits them into batches (413 above).",
    )
    max_request_tokens: int = Field(
        65536,
        ge=64,
        description="Most tokens in one embeddings, similarity or rerank request, tokenized (413 above).",
    )
    max_input_chars: int = Field(20000, ge=1, description="Most characters in one input text (413 above).")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body in bytes (413 above).")
    max_answer_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest answer in bytes, estimated before it is computed (vectors x dimensions, masks x "
        "candidates, tokens): a request past it gets 413 (OpenAI's 400). 16 MiB holds 2,048 OpenAI vectors "
        "of 384 numbers as JSON (~9.6 MB) or of 1,024 as base64 (~11 MB).",
    )
    max_queue: int = Field(1024, ge=1, description="Most requests waiting per endpoint before 503.")
    request_timeout: float = Field(30.0, gt=0, description="Seconds before a request answers 504.")
    api_key: SecretStr | None = Field(
        None, description="One API key (see api_keys); kept for existing deployments."
    )
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys; when any key is configured, every path but auth_open_paths "
        "needs 'Authorization: Bearer <key>', else 401.",
    )
    api_keys_file: Path | None = Field(
        None, description="File of API keys, one per line ('#' comments), added to api_keys."
    )
    auth_open_paths: str = Field(
        ",".join(routes.open_paths()),
        description="Comma-separated paths that need no key even when keys are set ('' protects all): the "
        "probes (KServe's too), Prometheus, and the /ui page, which holds no data and asks for the key.",
    )
    drain_seconds: float = Field(
        25.0,
        ge=0,
        description="On SIGTERM: /health answers 503 and in-flight requests get this long to finish.",
    )
    log_level: str = Field(
        "info",
        description="Root log level of every process (main, HTTP, inference) and the libraries' loggers in "
        "them; the access log ignores it. Above info hides the start-up sizing and `drained` lines.",
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="Logs as one JSON object per line, or plain text; one access line per request."
    )
    reload_interval: float = Field(
        0.0,
        ge=0,
        description="Least seconds between two store checks for moved aliases and new versions, which are "
        "swapped in without downtime (0: check before every batch, a few stat calls).",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device(value)

    @field_validator("model_name")
    @classmethod
    def _check_model_name(cls, value: str) -> str:
        return check_name("model name", value)

    @field_validator("model_backends")
    @classmethod
    def _check_model_backends(cls, value: str) -> str:
        parse_model_backends(value)
        return value

    def default_model(self, task: str) -> str:
        """The model an endpoint of `task` answers with when a request names none."""
        return {
            "classification": self.default_classify_model,
            "fill-mask": self.default_fill_mask_model,
            "embedding": self.default_embedding_model,
            "rerank": self.default_rerank_model,
        }[task]

    def default_setting(self, task: str) -> str:
        """The flag and variable that set `task`'s default model, for messages."""
        name = {
            "classification": "classify",
            "fill-mask": "fill_mask",
            "embedding": "embedding",
            "rerank": "rerank",
        }[task]
        return f"--default-{name.replace('_', '-')}-model / BERTSERVE_DEFAULT_{name.upper()}_MODEL"

    def backend_for(self, model_name: str) -> str:
        """The backend the named model is served with."""
        return parse_model_backends(self.model_backends).get(model_name, self.backend)

    def resolved(self, cpus: int | None = None, probe: GpuProbe | None = None) -> Settings:
        """A copy for this machine: the device resolved (auto -> cpu or cuda:0,...) and every sizing setting
        left at 0 or unset filled in from the sizing table (runtime/device.py pick_sizing). `cpus` (usable
        CPUs) and `probe` (GPU count) are parameters for tests. Raises DeviceUnavailable."""
        placement = resolve_device(self.device, probe)
        sizing = pick_sizing(cpus or usable_cpus(), len(placement.gpus), self.workers)
        update = {
            "device": placement.spec,
            "workers": sizing.workers,
            "torch_threads": self.torch_threads or sizing.torch_threads,
            "api_servers": self.api_servers or sizing.api_servers,
        }
        for name in ("max_batch_size", "max_batch_tokens"):
            if name not in self.model_fields_set:
                update[name] = getattr(sizing, name)
        return self.model_copy(update=update)


def env_only(field: FieldInfo) -> bool:
    """Whether a setting is read from the environment only: a secret on a command line is shown to every
    user of the machine (`ps`), so API keys have no flag."""
    return SecretStr in (field.annotation, *get_args(field.annotation))


def shown_default(value: object) -> str:
    """A setting's default as `serve --help` and docs/configuration.md write it."""
    if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
        return "unset"
    return str(value) if value != "" else "(none)"


def flag_help(name: str) -> str:
    """The --help of a setting's flag, drawn from its field (the one place its meaning and default live).
    The bracket opens with the variable: rich takes a lower-case `[word...]` for markup and drops it."""
    field = Settings.model_fields[name]
    return f"{field.description} [BERTSERVE_{name.upper()}, default {shown_default(field.default)}]"


def parse_model_backends(text: str) -> dict[str, str]:
    """'sentiment=int8, mlm=fp32' -> {'sentiment': 'int8', 'mlm': 'fp32'}; a bad entry raises ValueError."""
    choices = get_args(Backend)
    overrides: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, backend = (piece.strip() for piece in entry.partition("="))
        if not name or backend not in choices:
            raise ValueError(
                f"model_backends entry {entry!r}: expected name=backend, backend one of {choices}"
            )
        overrides[name] = backend
    return overrides


@contextlib.contextmanager
def serving_metrics_dir() -> Iterator[Path]:
    """Give all processes of this server one fresh multiprocess-metrics folder (before prometheus_client).

    A folder set by the operator (PROMETHEUS_MULTIPROC_DIR, e.g. an emptyDir) is emptied of stale files and
    kept; one made here, in the temp dir, is removed when the server exits (else every run left one)."""
    import shutil
    import tempfile

    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="bertserve-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield folder
    finally:  # in the main process only: forked HTTP processes leave through os._exit
        if not configured:
            shutil.rmtree(folder, ignore_errors=True)
