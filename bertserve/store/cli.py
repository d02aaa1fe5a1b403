"""`bertserve store ...`: import, list, show, verify, alias, promote, rollback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer

from bertserve.store.errors import StoreError
from bertserve.store.gate import DEFAULT_MARGIN
from bertserve.store.layout import ModelStore, check_name
from bertserve.store.resolve import parse_ref, resolve

store_app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

StoreOption = typer.Option("model_store", "--store", envvar="BERTSERVE_STORE", help="Model store root.")


def _fail(error: Exception) -> NoReturn:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def checked(check: Callable[[str], object]) -> Callable[[str | None], str | None]:
    """A parameter callback: a value `check` refuses (a name that would be a path, a malformed ref) exits 2
    with one line, before the command touches the store or starts any work."""

    def callback(value: str | None) -> str | None:
        if value is not None:
            try:
                check(value)
            except ValueError as error:  # InvalidNameError is one too
                typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
                raise typer.Exit(2) from None
        return value

    return callback


MODEL_NAME = checked(lambda value: check_name("model name", value))
ALIAS_NAME = checked(lambda value: check_name("alias", value))
MODEL_REF = checked(lambda value: check_name("model name", parse_ref(value).name))


def _resolve(store: ModelStore, ref: str) -> tuple[str, str]:
    try:
        return resolve(store, ref)
    except (StoreError, ValueError) as error:
        _fail(error)


@store_app.command("import")
def import_(
    path: Path = typer.Argument(..., help="Local Hugging Face folder (config.json, weights, tokenizer)."),
    name: str = typer.Option(..., "--name", help="Model name in the store.", callback=MODEL_NAME),
    task: str = typer.Option(
        None,
        help="classification | fill-mask | embedding | rerank (default: embedding for a sentence-transformers"
        " folder, rerank for a one-output sequence classifier, else from config.architectures).",
    ),
    alias: str = typer.Option(
        None, help="Also point this alias at the new version (default: none).", callback=ALIAS_NAME
    ),
    store: Path = StoreOption,
) -> None:
    """Publish a Hugging Face BERT-family folder as the next version of NAME (pickle weights converted)."""
    from bertserve.store.publish import import_hf_folder, set_alias

    model_store = ModelStore(store)
    try:
        manifest = import_hf_folder(model_store, path, name, task=task)
        if alias:
            set_alias(model_store, name, alias, manifest.version)
    except (StoreError, OSError, ValueError) as error:
        _fail(error)
    typer.echo(f"published {manifest.name}@{manifest.version} ({manifest.task}, {len(manifest.files)} files)")


@store_app.command("list")
def list_(store: Path = StoreOption) -> None:
    """Every model with its versions, tasks, aliases and headline metric."""
    model_store = ModelStore(store)
    names = model_store.models()
    if not names:
        typer.echo(f"(no models in {store})")
    for name in names:
        aliases = model_store.aliases(name)
        for version in model_store.versions(name):
            try:
                manifest = model_store.read_manifest(name, version)
            except StoreError as error:
                typer.secho(f"{name}@{version}\tFAILED  {error}", fg=typer.colors.RED)
                continue
            tags = ",".join(a for a, v in sorted(aliases.items()) if v == version)
            typer.echo(
                f"{name}@{version}\t{manifest.task}\t{manifest.encoder or '-'}\t"
                f"{_headline(manifest.metrics)}\t{tags}\t{manifest.created_at}"
            )


def _headline(metrics: dict) -> str:
    """The holdout's scores when the version has one (what the gate compares), else the eval split's."""
    holdout = metrics.get("holdout")
    if holdout:
        flag = " below-baseline" if holdout["below_baseline"] else ""
        return f"holdout accuracy={holdout['accuracy']:.3f} macro_f1={holdout['macro_f1']:.3f}{flag}"
    keys = ("accuracy", "macro_f1", "micro_f1", "top1", "top5")
    return " ".join(f"{k}={metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), int | float)) or "-"


@store_app.command()
def show(
    ref: str = typer.Argument(..., help="name, name@version or name:alias.", callback=MODEL_REF),
    store: Path = StoreOption,
) -> None:
    """Print a version's manifest: task, labels, base, training, metrics (files summarised)."""
    model_store = ModelStore(store)
    name, version = _resolve(model_store, ref)
    try:
        manifest = model_store.read_manifest(name, version)
    except StoreError as error:
        _fail(error)
    data = manifest.model_dump()
    files = data.pop("files")
    data["files"] = {path: entry["size"] for path, entry in files.items()}
    data["aliases"] = {a: v for a, v in model_store.aliases(name).items() if v == version}
    typer.echo(json.dumps(data, indent=2))


@store_app.command()
def verify(
    ref: str = typer.Argument(
        None, help="name, name@version or name:alias; default: every version.", callback=MODEL_REF
    ),
    store: Path = StoreOption,
) -> None:
    """Check file hashes against the manifests, and that every model has versions and its aliases exist.
    Exit 1 naming each problem; an empty store fails too: a server started on it has nothing to serve."""
    from bertserve.store.publish import verify_version

    model_store = ModelStore(store)
    if ref is None:
        names = model_store.models()
        if not names:
            _fail(
                StoreError(
                    f"the store {store} holds no models: seed it before serving "
                    "(`bertserve bootstrap --store`, or copy a built store into it)"
                )
            )
        targets = [(n, v) for n in names for v in model_store.versions(n)]
    elif parse_ref(ref).version or parse_ref(ref).alias:
        targets = [_resolve(model_store, ref)]
        names = [targets[0][0]]
    else:
        targets = [(ref, v) for v in model_store.versions(ref)] or [_resolve(model_store, ref)]
        names = [ref]
    problems = model_store.problems(names)
    for problem in problems:
        typer.secho(f"FAILED  {problem}", fg=typer.colors.RED)
    failures = len(problems)
    for name, version in targets:
        try:
            verify_version(model_store, name, version)
            typer.echo(f"ok      {name}@{version}")
        except StoreError as error:
            failures += 1
            typer.secho(f"FAILED  {error}", fg=typer.colors.RED)
    if failures:
        raise typer.Exit(1)


@store_app.command()
def alias(
    name: str = typer.Argument(..., help="Model name.", callback=MODEL_NAME),
    alias_name: str = typer.Argument(
        ..., metavar="ALIAS", help="Alias, e.g. production or staging.", callback=ALIAS_NAME
    ),
    version: str = typer.Argument(..., help="Version number the alias should point to."),
    store: Path = StoreOption,
) -> None:
    """Point ALIAS at VERSION unconditionally (recorded, so `rollback` can undo it)."""
    from bertserve.store.publish import set_alias

    try:
        set_alias(ModelStore(store), name, alias_name, version)
    except (StoreError, ValueError) as error:
        _fail(error)
    typer.echo(f"{name}:{alias_name} -> {version}")


@store_app.command()
def promote(
    name: str = typer.Argument(..., help="Model name.", callback=MODEL_NAME),
    version: str = typer.Argument(..., help="Candidate version."),
    alias_name: str = typer.Option("production", "--alias", help="Alias to move.", callback=ALIAS_NAME),
    metric: str = typer.Option(
        "macro_f1", help="What the gate compares on the holdout: macro_f1 or accuracy."
    ),
    margin: float = typer.Option(
        DEFAULT_MARGIN, min=0.0, help="Pass if the 95% interval of candidate - current stays above -MARGIN."
    ),
    force: bool = typer.Option(
        False, help="Promote even if the gate refuses (its reasons are still printed)."
    ),
    store: Path = StoreOption,
) -> None:
    """Move ALIAS to VERSION only if, on a holdout neither version trained or selected on, it beats the
    majority baseline and is not worse than the current version by more than MARGIN (paired bootstrap)."""
    from bertserve.store.publish import promote as promote_version

    try:
        why = promote_version(
            ModelStore(store), name, version, alias=alias_name, metric=metric, margin=margin, force=force
        )
    except (StoreError, ValueError) as error:
        _fail(error)
    typer.echo(f"{name}:{alias_name} -> {version}: {why}")


@store_app.command()
def rollback(
    name: str = typer.Argument(..., help="Model name.", callback=MODEL_NAME),
    alias_name: str = typer.Argument(
        "production", metavar="[ALIAS]", help="Alias to move back.", callback=ALIAS_NAME
    ),
    store: Path = StoreOption,
) -> None:
    """Move ALIAS back to the version it pointed to before its last move."""
    from bertserve.store.publish import rollback as rollback_alias

    try:
        before, after = rollback_alias(ModelStore(store), name, alias_name)
    except StoreError as error:
        _fail(error)
    typer.echo(f"{name}:{alias_name} {before} -> {after}")
