"""What an `embedding` version records about turning token states into one vector: pooling, normalization,
length limit. Read from a sentence-transformers folder's own files (modules.json, <pooling>/config.json,
sentence_bert_config.json); a plain BERT folder gets mean pooling + normalization, and its manifest says so.
No torch here: `store import` decides the task with it before loading anything."""

from __future__ import annotations

import json
from pathlib import Path

from bertserve.store.errors import StoreError

# sentence-transformers' Pooling modes this server computes (runtime/embed.py)
POOLINGS = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")
MODULES_FILE = "modules.json"
SENTENCE_CONFIG = "sentence_bert_config.json"
# The files of a sentence-transformers folder kept in the store version beside the weights, so the version
# folder itself still loads with the sentence-transformers package
SENTENCE_FILES = (MODULES_FILE, SENTENCE_CONFIG, "config_sentence_transformers.json")
# The older Pooling config: one boolean per mode, in sentence-transformers' order
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_MODULE_KIND = "sentence_transformers.models."


def is_sentence_transformers_folder(folder: Path) -> bool:
    return (Path(folder) / MODULES_FILE).is_file()


def _modules(folder: Path) -> list[dict]:
    try:
        modules = json.loads((folder / MODULES_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{folder / MODULES_FILE}: not readable JSON: {exc}") from exc
    if not isinstance(modules, list):
        raise StoreError(f"{folder / MODULES_FILE}: expected a list of modules")
    return sorted(modules, key=lambda module: module.get("idx", 0))


def _pooling_mode(config: dict, where: Path) -> str:
    """The pooling mode a Pooling config selects: the newer `pooling_mode` (a name or a list), else the
    older boolean keys (none set means mean, as sentence-transformers reads it). Several modes concatenate
    their vectors there; this server computes exactly one."""
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in _LEGACY_KEYS.items() if config.get(key)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise StoreError(f"{where}: pooling {modes} is not supported: exactly one of {', '.join(POOLINGS)}")
    return modes[0]


def embedding_fields(folder: Path, hidden_size: int) -> dict:
    """Manifest fields of an embedding model: pooling, normalize, dimensions, pooling_source, and
    max_length when the folder states one. Raises StoreError for a pipeline this server cannot reproduce."""
    folder = Path(folder)
    if not is_sentence_transformers_folder(folder):
        return {
            "pooling": "mean",
            "normalize": True,
            "dimensions": hidden_size,
            "pooling_source": "default for a plain encoder folder: mean pooling, then L2 normalization",
        }
    fields: dict = {"normalize": False, "dimensions": hidden_size, "pooling_source": MODULES_FILE}
    for position, module in enumerate(_modules(folder)):
        kind = str(module.get("type", "")).removeprefix(_MODULE_KIND)
        if kind == "Transformer" and position == 0:
            continue
        if kind == "Pooling" and "pooling" not in fields:
            config_path = folder / module.get("path", "") / "config.json"
            config = json.loads(config_path.read_text())
            fields["pooling"] = _pooling_mode(config, config_path)
            fields["dimensions"] = int(
                config.get("embedding_dimension") or config.get("word_embedding_dimension") or hidden_size
            )
        elif kind == "Normalize" and "pooling" in fields:
            fields["normalize"] = True
        else:
            raise StoreError(
                f"{folder / MODULES_FILE}: module {position} ({module.get('type')}) is not supported: this "
                "server runs Transformer -> Pooling [-> Normalize]"
            )
    if "pooling" not in fields:
        raise StoreError(f"{folder / MODULES_FILE}: no Pooling module")
    if (folder / SENTENCE_CONFIG).is_file():
        length = json.loads((folder / SENTENCE_CONFIG).read_text()).get("max_seq_length")
        if length:
            fields["max_length"] = int(length)
    return fields


def pooling_files(folder: Path) -> list[str]:
    """The sentence-transformers files of `folder` (relative paths) to copy into a store version."""
    folder = Path(folder)
    if not is_sentence_transformers_folder(folder):
        return []
    found = [name for name in SENTENCE_FILES if (folder / name).is_file()]
    for module in _modules(folder):
        path = module.get("path", "")
        if path and (folder / path / "config.json").is_file():
            found.append(f"{path}/config.json")
    return found
