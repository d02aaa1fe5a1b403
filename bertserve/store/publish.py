"""Changing the store: publish a version, verify it, move aliases, promote through the gate, import.

Every change is write-to-temporary then rename inside the same folder, under an exclusive lock on the
model folder, so readers (a running server, `store list`) never see half a version or half an alias
file, and two concurrent publishes get two different version numbers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from bertserve.store.embedding import embedding_fields, is_sentence_transformers_folder, pooling_files
from bertserve.store.errors import IntegrityError, PromotionRefused, StoreError, UnknownModelError
from bertserve.store.gate import DEFAULT_MARGIN, HOLDOUT_FILE, METRICS, Holdout, compare
from bertserve.store.layout import ALIASES_NAME, HISTORY_NAME, ModelStore, check_name
from bertserve.store.manifest import MANIFEST_NAME, TASK_MODEL_CLASSES, Manifest, hash_folder, sha256_file

LOCK_NAME = ".lock"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on an existing model folder, held while version numbers or aliases change.
    It never creates the folder: a command that fails must not leave a model with no version behind."""
    with open(folder / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target, fsync, rename: the file is either the old one or the new one."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def publish_version(
    store: ModelStore,
    name: str,
    source_dir: str | Path,
    manifest_fields: dict,
    created_by: str,
    move: bool = False,
) -> Manifest:
    """Copy (or move) a finished folder into the store as the next version of `name` and return its
    manifest. The files are hashed and synced in a hidden staging folder first; only the rename makes
    the version visible, and it happens under the model lock so numbers never collide."""
    check_name("model name", name)
    source = Path(source_dir)
    if not (source / "config.json").is_file():
        raise StoreError(f"{source} is not a model folder: config.json is missing")
    pickles = [p.name for p in source.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise StoreError(f"refusing pickle weights {pickles}: the store holds safetensors only")
    model_dir = store.model_dir(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".publish-{uuid.uuid4().hex}"
    published = False
    try:
        if move:
            shutil.move(str(source), staging)
        else:
            shutil.copytree(source, staging)
        (staging / MANIFEST_NAME).unlink(missing_ok=True)
        fields = {k: v for k, v in manifest_fields.items() if k not in ("name", "version", "files")}
        files = hash_folder(staging)
        _fsync_tree(staging)
        with locked(model_dir):
            versions = store.versions(name)
            version = str(int(versions[-1]) + 1 if versions else 1)
            manifest = Manifest(name=name, version=version, files=files, created_by=created_by, **fields)
            write_atomic(staging / MANIFEST_NAME, manifest.dump())
            os.rename(staging, store.version_dir(name, version))
            published = True
        return manifest
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if not published:
            _remove_if_unpublished(model_dir)


def _remove_if_unpublished(model_dir: Path) -> None:
    """After a failed first publish: the model folder goes too, unless something else is in it (a version,
    another publish's staging folder, an alias file). Checked and removed under the lock, so a concurrent
    publish either sees the folder gone before it starts or keeps it by being in it."""
    with contextlib.suppress(OSError), locked(model_dir):
        if {entry.name for entry in model_dir.iterdir()} == {LOCK_NAME}:
            (model_dir / LOCK_NAME).unlink()
            model_dir.rmdir()


def _existing_model_dir(store: ModelStore, name: str) -> Path:
    """The folder of a model that has a published version; raises InvalidNameError / UnknownModelError
    before anything is created, so an alias or a rollback aimed at a typo leaves nothing behind."""
    check_name("model name", name)
    store.latest_version(name)
    return store.model_dir(name)


def verify_version(store: ModelStore, name: str, version: str | int) -> Manifest:
    """Check every file against the manifest (presence, size, sha256) and that nothing was added.
    Raises IntegrityError naming the first file that does not match."""
    manifest = store.read_manifest(name, version)
    folder = store.version_dir(name, version)
    where = f"{name}@{version}"
    for relative, entry in manifest.files.items():
        path = folder / relative
        if not path.is_file():
            raise IntegrityError(f"{where}: file {relative} is missing")
        if path.stat().st_size != entry.size:
            raise IntegrityError(
                f"{where}: file {relative} has {path.stat().st_size} bytes, manifest says {entry.size}"
            )
        if sha256_file(path) != entry.sha256:
            raise IntegrityError(f"{where}: file {relative} does not match its sha256 in the manifest")
    extra = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and p.relative_to(folder).as_posix() not in manifest.files
    )
    if extra:
        raise IntegrityError(f"{where}: file {extra[0]} is not in the manifest")
    if not any(relative.endswith(".safetensors") for relative in manifest.files):
        raise IntegrityError(f"{where}: no .safetensors weights")
    return manifest


def set_alias(store: ModelStore, name: str, alias: str, version: str | int) -> None:
    """Point `alias` at an existing version; the move is recorded so `rollback` can undo it."""
    check_name("alias", alias)
    model_dir = _existing_model_dir(store, name)
    version = str(int(version))
    if version not in store.versions(name):
        raise UnknownModelError(f"unknown version {name}@{version} (versions: {store.versions(name)})")
    with locked(model_dir):
        aliases = store.aliases(name)
        history = store.alias_history(name)
        trail = history.setdefault(alias, [])
        if not trail and alias in aliases:
            trail.append(aliases[alias])
        if aliases.get(alias) != version:
            trail.append(version)
        aliases[alias] = version
        write_atomic(model_dir / HISTORY_NAME, json.dumps(history, indent=2) + "\n")
        write_atomic(model_dir / ALIASES_NAME, json.dumps(aliases, indent=2, sort_keys=True) + "\n")


def rollback(store: ModelStore, name: str, alias: str = "production") -> tuple[str, str]:
    """Move `alias` back to the version it pointed to before its last move. Returns (from, to)."""
    model_dir = _existing_model_dir(store, name)
    with locked(model_dir):
        aliases = store.aliases(name)
        history = store.alias_history(name)
        if alias not in aliases:
            raise UnknownModelError(
                f"{name} has no alias {alias!r} (aliases: {', '.join(aliases) or 'none'})"
            )
        trail = history.get(alias, [])
        if len(trail) < 2:
            raise StoreError(f"{name}:{alias} has no earlier version to roll back to")
        current, previous = trail.pop(), trail[-1]
        aliases[alias] = previous
        write_atomic(model_dir / HISTORY_NAME, json.dumps(history, indent=2) + "\n")
        write_atomic(model_dir / ALIASES_NAME, json.dumps(aliases, indent=2, sort_keys=True) + "\n")
    return current, previous


def read_holdout(store: ModelStore, name: str, version: str) -> Holdout | None:
    """A version's recorded holdout predictions (None: it has none), checked against the manifest's hash."""
    manifest = store.read_manifest(name, version)
    entry = manifest.files.get(HOLDOUT_FILE)
    if "holdout" not in manifest.metrics or entry is None:
        return None
    path = store.version_dir(name, version) / HOLDOUT_FILE
    if not path.is_file() or sha256_file(path) != entry.sha256:
        raise IntegrityError(
            f"{name}@{version}: file {HOLDOUT_FILE} does not match its sha256 in the manifest"
        )
    return Holdout.from_json(json.loads(path.read_text()))


def gate(
    store: ModelStore, name: str, version: str, alias: str, metric: str, margin: float
) -> tuple[bool, str]:
    """(passes, why): the candidate must beat the majority baseline on its holdout and, if `alias` points
    elsewhere, must not be worse than that version by more than `margin` (95% paired bootstrap interval)
    on the rows of a shared holdout that neither version's training or selection read."""
    if metric not in METRICS:
        raise ValueError(f"unknown gate metric {metric!r}: use one of {', '.join(METRICS)}")
    candidate = read_holdout(store, name, version)
    if candidate is None:
        return False, (
            f"{name}@{version} has no recorded holdout predictions: nothing shows how it does on data its "
            "training never read (`bertserve train --test-file` records them)"
        )
    summary = candidate.summary()
    if not summary["rows"]:
        return (
            False,
            f"{name}@{version}: its training read every one of its {len(candidate.truth)} holdout rows",
        )
    baseline = summary["majority_baseline"]
    scores = (
        f"{name}@{version} holdout accuracy {summary['accuracy']:.4f} macro_f1 {summary['macro_f1']:.4f} on "
        f"{summary['rows']} rows, majority baseline (always {baseline['label']!r}) accuracy "
        f"{baseline['accuracy']:.4f}"
    )
    if summary["below_baseline"]:
        return False, f"{scores}: below the majority baseline"
    current_version = store.aliases(name).get(alias)
    if current_version is None or current_version == version:
        return True, f"{scores}; {name}:{alias} pointed to no other version"
    current = read_holdout(store, name, current_version)
    versus = f"{scores}; against {name}:{alias}=@{current_version}:"
    if current is None or current.sha256 != candidate.sha256:
        found = "none recorded" if current is None else f"holdout sha256 {current.sha256[:12]}"
        return False, (
            f"{versus} no shared holdout to compare on (candidate: sha256 {candidate.sha256[:12]}, "
            f"@{current_version}: {found})"
        )
    if not len(candidate.clean_rows(current)):
        return False, f"{versus} every row of the shared holdout was read in training by one of them"
    comparison = compare(candidate, current, metric)
    return comparison.passes(margin), f"{versus} {comparison.describe(margin)}"


def promote(
    store: ModelStore,
    name: str,
    version: str | int,
    alias: str = "production",
    metric: str = "macro_f1",
    margin: float = DEFAULT_MARGIN,
    force: bool = False,
) -> str:
    """Move `alias` to `version` if the gate passes, or anyway with `force`; returns the gate's reasons.
    Raises PromotionRefused naming the numbers, rows, interval and margin when it does not pass."""
    _existing_model_dir(store, name)
    version = str(int(version))
    store.read_manifest(name, version)  # an unknown version fails here, before the gate reads anything
    passes, why = gate(store, name, version, alias, metric, margin)
    if not passes and not force:
        raise PromotionRefused(f"{why} (use --force to promote anyway)")
    set_alias(store, name, alias, version)
    return why if passes else f"forced past the gate: {why}"


def detect_task(architectures: list[str], num_labels: int = 2) -> str | None:
    """The task a folder's config names. A sequence classifier with a single output is a cross-encoder
    (sentence-transformers' CrossEncoder saves rerankers so): one score per pair, nothing to softmax."""
    for architecture in architectures:
        if architecture.endswith("ForSequenceClassification"):
            return "rerank" if num_labels == 1 else "classification"
        if architecture.endswith(("ForMaskedLM", "ForPreTraining")):
            return "fill-mask"
    return None


def import_hf_folder(
    store: ModelStore,
    path: str | Path,
    name: str,
    task: str | None = None,
    created_by: str | None = None,
    extra_fields: dict | None = None,
) -> Manifest:
    """Publish a local Hugging Face BERT-family folder as the next version of `name`.

    The model is loaded once here with its task head (pickle `.bin` weights are read with
    `weights_only` and re-saved as safetensors, so the server never unpickles anything), the fast
    tokenizer is saved beside it, and a folder whose head would be freshly initialised is refused:
    serving random head weights would answer confidently and wrongly. A sentence-transformers folder is an
    `embedding` model: its pooling files come along and the manifest records what they say."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    source = Path(path).expanduser()
    if not (source / "config.json").is_file():
        raise StoreError(f"{source} is not a Hugging Face model folder: config.json is missing")
    config = AutoConfig.from_pretrained(source)
    if task is None and is_sentence_transformers_folder(source):
        task = "embedding"
    task = task or detect_task(list(config.architectures or []), config.num_labels)
    if task not in TASK_MODEL_CLASSES:
        raise StoreError(
            f"cannot tell the task of {source} (architectures {config.architectures}): pass --task; "
            "a bare encoder has no head to serve: serve it as --task embedding, or train one with "
            "`bertserve train` or `bertserve pretrain`"
        )
    if task == "rerank" and config.num_labels != 1:
        raise StoreError(
            f"{source} has {config.num_labels} outputs: a rerank model (cross-encoder) has one score per pair"
        )
    model_class = getattr(transformers, TASK_MODEL_CLASSES[task])
    model, info = model_class.from_pretrained(source, output_loading_info=True)
    # an embedding model uses the token states only: BERT's pooler (for next-sentence prediction) is unused
    unused = ("position_ids", "pooler.dense.weight", "pooler.dense.bias") if task == "embedding" else ()
    missing = [key for key in info["missing_keys"] if not key.endswith(("position_ids", *unused))]
    if missing:
        raise StoreError(
            f"{source} has no trained {task} head (missing {', '.join(missing[:3])}...): "
            "train one with `bertserve train` / `bertserve pretrain` instead"
        )
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    if not tokenizer.is_fast:
        raise StoreError(f"{source}: no fast tokenizer could be built (tokenizer.json or vocab.txt needed)")
    limits = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512)]
    fields: dict = {"task": task, "base_model": str(source.resolve())}
    if task == "classification":
        fields["labels"] = [config.id2label[i] for i in range(config.num_labels)]
        multi = config.problem_type == "multi_label_classification"
        fields["problem_type"] = "multi_label" if multi else "single_label"
    if task == "embedding":
        fields.update(embedding_fields(source, config.hidden_size))
        limits.append(fields.get("max_length"))
    fields["max_length"] = int(min(limit for limit in limits if limit and limit < 1_000_000))
    fields.update(extra_fields or {})
    with tempfile.TemporaryDirectory(prefix="bertserve-import-") as scratch:
        folder = Path(scratch) / "version"
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        if task == "embedding":
            for relative in pooling_files(source):
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / relative, folder / relative)
        return publish_version(
            store,
            name,
            folder,
            fields,
            created_by=created_by or f"bertserve store import {source}",
            move=True,
        )
