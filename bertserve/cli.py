"""`bertserve` command line: serve, store, train, pretrain, bootstrap. Heavy imports stay inside commands;
Settings is imported here, as serve's options are drawn from its fields."""

from __future__ import annotations

import inspect
from types import UnionType
from typing import Union, get_args, get_origin

import typer

from bertserve import routes
from bertserve.config import Settings, env_only, flag_help
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


def _flag_type(annotation: object) -> object:
    """The type a flag parses: the setting's, without the None an optional setting allows."""
    if get_origin(annotation) in (Union, UnionType):
        (annotation,) = (arg for arg in get_args(annotation) if arg is not type(None))
    return annotation


def _serve_options() -> inspect.Signature:
    """One --flag per setting that is not env only; each defaults to None, so that a flag left out leaves
    its BERTSERVE_* variable (or the setting's default) in force."""
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, help=flag_help(name), show_default=False),
                annotation=_flag_type(field.annotation),
            )
            for name, field in Settings.model_fields.items()
            if not env_only(field)
        ]
    )


def serve(**flags: object) -> None:
    """Serve the store's models on the routes below (docs/api.md#every-route), each where the store holds a
    model of its task."""
    overrides = {key: value for key, value in flags.items() if value is not None}
    from pydantic import ValidationError

    from bertserve.auth import configured_keys
    from bertserve.config import serving_metrics_dir
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


serve.__signature__ = _serve_options()  # typer reads the options from the signature
app.command(epilog=routes.by_protocol())(serve)  # the routes, from the route table


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
