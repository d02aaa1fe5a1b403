"""Which store versions a server loads, and which one a request's `model` field picks. No torch here:
the HTTP processes use it for /v1/models, the workers for every request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bertserve.errors import ClientError
from bertserve.store.errors import StoreError
from bertserve.store.layout import ModelStore
from bertserve.store.resolve import parse_ref, resolve

if TYPE_CHECKING:
    from bertserve.runtime.registry import StoreSnapshot

Served = dict[str, list[str]]


def served_models(store: ModelStore, spec: str) -> tuple[Served, dict[str, str]]:
    """The versions `spec` names, and each name's task (a model name has one: read once per store change,
    not per request). '*' serves every published version of every name that has a readable manifest and
    skips the rest (a folder with no version, every manifest damaged: `store verify` names them); a name
    `spec` asks for by name must have one. A damaged version of a served name stays listed: the workers
    refuse it alone, as they refuse damaged weights."""
    every = spec.strip() == "*"
    served = _named_versions(store, spec)
    tasks = {}
    for name in list(served):
        manifests = store.manifests(name)
        if manifests:
            tasks[name] = manifests[-1].task
        elif every:
            del served[name]
        else:
            raise StoreError(f"model {name!r} has no version with a readable manifest in {store.root}")
    return served, tasks


def _named_versions(store: ModelStore, spec: str) -> Served:
    """'*' names every published version; otherwise a comma list of refs, each naming one version."""
    served: Served = {}
    if spec.strip() == "*":
        for name in store.models():
            served[name] = store.versions(name)
        return served
    for ref in filter(None, (part.strip() for part in spec.split(","))):
        parsed = parse_ref(ref)
        if parsed.version is None and parsed.alias is None:
            versions = store.versions(parsed.name)  # a bare name serves all its versions, so aliases can move
            if not versions:
                raise StoreError(f"model {parsed.name!r} has no published version in {store.root}")
            served.setdefault(parsed.name, []).extend(versions)
        else:
            name, version = resolve(store, parsed)
            served.setdefault(name, []).append(version)
    return {name: sorted(set(versions), key=int) for name, versions in served.items()}


def pick_version(
    store: ModelStore | StoreSnapshot,
    served: Served,
    tasks: dict[str, str],
    ref: str,
    task: str | tuple[str, ...],
) -> tuple[str, str]:
    """Resolve a request's model ref against the worker's store snapshot (see registry.py) and loaded set;
    `task`: the task (or tasks) whose models can answer the request."""
    try:
        parsed = parse_ref(ref)
    except ValueError as exc:
        raise ClientError(422, f"model {ref!r} is not 'name', 'name@version' or 'name:alias': {exc}") from exc
    if parsed.name not in served:
        known = ", ".join(sorted(served)) or "none"
        raise ClientError(404, f"model {parsed.name!r} is not served here (served: {known})", "unknown_model")
    try:
        name, version = resolve(store, parsed)
    except StoreError as exc:
        raise ClientError(404, str(exc), "unknown_model") from exc
    if version not in served[name]:
        raise ClientError(
            404,
            f"{name}@{version} is in the store but not loaded by this server (loaded: "
            f"{', '.join(served[name])}); restart with BERTSERVE_MODELS including it",
            "version_not_loaded",
        )
    accepted = (task,) if isinstance(task, str) else task
    if tasks[name] not in accepted:
        wanted = " or ".join(accepted)
        raise ClientError(422, f"model {name!r} is a {tasks[name]} model, not {wanted}", "wrong_task")
    return name, version


def unserved_default(
    store: ModelStore, served: Served, tasks: dict[str, str], defaults: dict[str, str]
) -> tuple[str, str] | None:
    """(task, why) for the first task this server answers whose default model (`defaults`: task -> ref, what
    a request naming no model gets) it cannot serve, else None: every such request would be a 404."""
    for task in sorted(set(tasks.values())):
        # an embedding model ranks by cosine: the rerank default may be one (the default store's minilm)
        accepted = ("embedding", "rerank") if task == "rerank" else task
        try:
            pick_version(store, served, tasks, defaults[task], accepted)
        except ClientError as exc:
            return task, exc.message
    return None
