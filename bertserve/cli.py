"""`bertserve` command line: serve, store, train, pretrain, bootstrap. Heavy imports stay inside commands."""

from __future__ import annotations

import typer

from bertserve.store.cli import store_app
from bertserve.training.cli import register_training_commands

app = typer.Typer(
    help="bertserve: BERT classification, fill-mask, embeddings and explanations as a REST service, from a "
    "versioned model store.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(store_app, name="store", help="Inspect and change the versioned model store.")
register_training_commands(app)


@app.command()
def serve(
    store: str = typer.Option(None, help="Model store root [BERTSERVE_STORE]."),
    host: str = typer.Option(None, help="Interface to listen on [BERTSERVE_HOST]."),
    port: int = typer.Option(None, help="HTTP port [BERTSERVE_PORT]."),
    device: str = typer.Option(
        None, help="auto | cpu | cuda | cuda:N[,M] (auto: cuda when torch sees a GPU) [BERTSERVE_DEVICE]."
    ),
    workers: int = typer.Option(
        None,
        help="Inference processes (slots) per device, each with every model, 0: sizing [BERTSERVE_WORKERS].",
    ),
    explain_workers: int = typer.Option(
        None,
        help="1: /v1/explain on a thread of each inference process, 0: none [BERTSERVE_EXPLAIN_WORKERS].",
    ),
    api_servers: int = typer.Option(None, help="HTTP server processes, 0 = sizing [BERTSERVE_API_SERVERS]."),
    torch_threads: int = typer.Option(
        None, help="Most torch threads per inference process, 0 = sizing [BERTSERVE_TORCH_THREADS]."
    ),
    single_thread_mflops: float = typer.Option(
        None,
        help="CPU batches of <= this many M multiply-adds use 1 thread [BERTSERVE_SINGLE_THREAD_MFLOPS].",
    ),
    models: str = typer.Option(None, help="Model refs to load, '*' = all [BERTSERVE_MODELS]."),
    default_classify_model: str = typer.Option(None, help="[BERTSERVE_DEFAULT_CLASSIFY_MODEL]"),
    default_fill_mask_model: str = typer.Option(None, help="[BERTSERVE_DEFAULT_FILL_MASK_MODEL]"),
    default_embedding_model: str = typer.Option(None, help="[BERTSERVE_DEFAULT_EMBEDDING_MODEL]"),
    default_rerank_model: str = typer.Option(None, help="[BERTSERVE_DEFAULT_RERANK_MODEL]"),
    model_dir: str = typer.Option(
        None,
        help="Plain Hugging Face folder to publish and serve (KServe: /mnt/models) [BERTSERVE_MODEL_DIR].",
    ),
    model_name: str = typer.Option(None, help="Store name of --model-dir's model [BERTSERVE_MODEL_NAME]."),
    backend: str = typer.Option(
        None, help="fp32 | fp16 | bf16 | int8 | onnx | onnx-int8 | auto [BERTSERVE_BACKEND]."
    ),
    model_backends: str = typer.Option(
        None, help="Per-model backends, e.g. 'sentiment=int8,mlm=fp32' [BERTSERVE_MODEL_BACKENDS]."
    ),
    max_batch_size: int = typer.Option(None, help="Most sequences per forward [BERTSERVE_MAX_BATCH_SIZE]."),
    max_batch_tokens: int = typer.Option(
        None, help="Most padded tokens per forward [BERTSERVE_MAX_BATCH_TOKENS]."
    ),
    batch_timeout: float = typer.Option(
        None, help="Seconds to wait for more requests [BERTSERVE_BATCH_TIMEOUT]."
    ),
    max_inputs: int = typer.Option(None, help="Most inputs per request [BERTSERVE_MAX_INPUTS]."),
    max_embedding_inputs: int = typer.Option(
        None, help="Most inputs per embeddings/rerank request [BERTSERVE_MAX_EMBEDDING_INPUTS]."
    ),
    max_request_tokens: int = typer.Option(
        None, help="Most tokens per embeddings/rerank request [BERTSERVE_MAX_REQUEST_TOKENS]."
    ),
    max_input_chars: int = typer.Option(None, help="Most characters per input [BERTSERVE_MAX_INPUT_CHARS]."),
    max_body_bytes: int = typer.Option(None, help="Largest body in bytes [BERTSERVE_MAX_BODY_BYTES]."),
    max_answer_bytes: int = typer.Option(
        None, help="Largest answer in bytes, estimated first [BERTSERVE_MAX_ANSWER_BYTES]."
    ),
    max_queue: int = typer.Option(None, help="Most queued requests per endpoint [BERTSERVE_MAX_QUEUE]."),
    request_timeout: float = typer.Option(None, help="Seconds before 504 [BERTSERVE_REQUEST_TIMEOUT]."),
    drain_seconds: float = typer.Option(
        None, help="Grace for in-flight requests on SIGTERM [BERTSERVE_DRAIN_SECONDS]."
    ),
    log_level: str = typer.Option(None, help="Root log level of every server process [BERTSERVE_LOG_LEVEL]."),
    log_format: str = typer.Option(None, help="json | text [BERTSERVE_LOG_FORMAT]."),
    api_keys_file: str = typer.Option(
        None, help="File of API keys, one per line (keys themselves: env only) [BERTSERVE_API_KEYS_FILE]."
    ),
    auth_open_paths: str = typer.Option(
        None, help="Paths open without a key, comma-separated [BERTSERVE_AUTH_OPEN_PATHS]."
    ),
    reload_interval: float = typer.Option(
        None, help="Least seconds between store checks, 0 = every batch [BERTSERVE_RELOAD_INTERVAL]."
    ),
) -> None:
    """Serve the store's models: POST /v1/classify, /v1/fill-mask, /v1/embeddings, /v1/embed, /v1/explain;
    GET /v1/models, /health, /metrics, /ui."""
    overrides = {key: value for key, value in locals().items() if value is not None}
    from pydantic import ValidationError

    from bertserve.auth import configured_keys
    from bertserve.config import Settings, serving_metrics_dir
    from bertserve.runtime.device import DeviceUnavailable

    try:  # a configuration mistake or a missing GPU: one line and exit 2, no traceback
        settings = Settings(**overrides).resolved()
    except ValidationError as exc:
        _refuse("; ".join(f"{error['loc'][0]}: {error['msg']}" for error in exc.errors()))
    except DeviceUnavailable as exc:
        _refuse(str(exc))
    try:  # a keys file that names no key (or cannot be read) would turn authentication off
        configured_keys(settings)
    except (OSError, ValueError) as exc:
        _refuse(str(exc))
    from bertserve.store.errors import StoreError
    from bertserve.store.mounted import serve_mounted

    try:  # KServe's storage initializer put the model there: publish it, then check the defaults
        settings = serve_mounted(settings)
    except (StoreError, OSError, ValueError) as exc:
        _refuse(f"--model-dir: {exc}")
    _refuse_unserved_default(settings)
    with serving_metrics_dir():  # before bertserve.metrics is imported anywhere
        from bertserve.server import run_server

        run_server(settings)


def _refuse_unserved_default(settings) -> None:
    """A default model the server will not serve (say, your own model imported, `sentiment` still the
    default) would answer every request that names no model 404: say so at start, in one line."""
    from bertserve.runtime.selection import served_models, unserved_default
    from bertserve.store.errors import StoreError
    from bertserve.store.layout import ModelStore

    store = ModelStore(settings.store)
    try:
        served, tasks = served_models(store, settings.models)
    except (StoreError, OSError, ValueError) as exc:
        _refuse(str(exc))
    defaults = {task: settings.default_model(task) for task in set(tasks.values())}
    problem = unserved_default(store, served, tasks, defaults)
    if problem is not None:
        task, why = problem
        choices = ", ".join(name for name, found in sorted(tasks.items()) if found == task)
        _refuse(
            f"the default {task} model is {defaults[task]!r}, but {why}; set "
            f"{settings.default_setting(task)} to one of: {choices}"
        )


def _refuse(message: str) -> None:
    typer.echo(f"bertserve serve: {message}", err=True)
    raise typer.Exit(2)


if __name__ == "__main__":
    app()
