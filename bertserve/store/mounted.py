"""A plain model folder served as it is mounted: KServe's storage initializer downloads an InferenceService's
storageUri to /mnt/models, and the runtime is started with --model-dir there (or finds STORAGE_URI set).

The folder is published into the store as the next version of --model-name (weights checked and converted
as by `store import`), unless a version already came from the same files, and becomes the default model of
its task's endpoints, so requests that name no model get it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bertserve.config import Settings
from bertserve.store.errors import StoreError
from bertserve.store.layout import ModelStore

KSERVE_MODEL_DIR = Path("/mnt/models")
# the settings naming each task's default model; an embedding model also answers rerank requests
DEFAULTS = {
    "classification": ("default_classify_model",),
    "fill-mask": ("default_fill_mask_model",),
    "embedding": ("default_embedding_model", "default_rerank_model"),
    "rerank": ("default_rerank_model",),
}


def mounted_dir(settings: Settings) -> Path | None:
    if settings.model_dir is not None:
        return settings.model_dir
    if os.environ.get("STORAGE_URI") and KSERVE_MODEL_DIR.is_dir():
        return KSERVE_MODEL_DIR
    return None


def folder_digest(folder: Path) -> str:
    """Names, sizes and the config's bytes: enough to tell a new mount from the one already published."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
    digest.update((folder / "config.json").read_bytes())
    return digest.hexdigest()


def serve_mounted(settings: Settings) -> Settings:
    """`settings` with the mounted model published and made the default of its task (unchanged when no
    folder is mounted). Raises StoreError for a folder that cannot be served."""
    folder = mounted_dir(settings)
    if folder is None:
        return settings
    from bertserve.store.publish import import_hf_folder

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise StoreError(f"{folder} is not a Hugging Face model folder: config.json is missing")
    store, name, digest = ModelStore(settings.store), settings.model_name, folder_digest(folder)
    same = [m for m in store.manifests(name) if m.training.get("mounted") == digest]  # damaged ones skipped
    if same:
        task = same[-1].task
    else:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
        bare = bool(architectures) and all(a.endswith("Model") for a in architectures)  # e.g. BertModel
        task = "embedding" if bare else None
        extra = {"training": {"mounted": digest, "source": str(folder)}}
        task = import_hf_folder(store, folder, name, task=task, extra_fields=extra).task
    return settings.model_copy(update=dict.fromkeys(DEFAULTS[task], name))
