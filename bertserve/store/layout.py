"""Reading the store: `<root>/<name>/<version>/` folders, `aliases.json` and the alias history.

Versions are the folders named by an integer that hold a manifest; anything else (a publish in progress
is a hidden `.publish-*` folder) is invisible, which is what makes publishing atomic for readers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bertserve.store.errors import UnknownModelError
from bertserve.store.manifest import MANIFEST_NAME, Manifest

ALIASES_NAME = "aliases.json"
HISTORY_NAME = "alias-history.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(kind: str, value: str) -> str:
    """Model and alias names become folder and JSON keys: keep them plain."""
    if not NAME_PATTERN.match(value) or value.isdigit():
        raise UnknownModelError(
            f"invalid {kind} {value!r}: use letters, digits, '_', '.', '-' (not only digits), at most 64"
        )
    return value


class ModelStore:
    """A store root on disk. Cheap to create; every call reads the disk, so changes made by other
    processes (a publish, an alias move) are seen at once."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def versions(self, name: str) -> list[str]:
        """Published versions, oldest first."""
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if p.name.isdigit() and (p / MANIFEST_NAME).is_file()]
        return sorted(found, key=int)

    def latest_version(self, name: str) -> str:
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.models()) or "none"
            raise UnknownModelError(f"unknown model {name!r} (models in the store: {known})")
        return versions[-1]

    def version_dir(self, name: str, version: str | int) -> Path:
        return self.model_dir(name) / str(version)

    def read_manifest(self, name: str, version: str | int) -> Manifest:
        path = self.version_dir(name, version) / MANIFEST_NAME
        if not path.is_file():
            raise UnknownModelError(f"unknown version {name}@{version} (versions: {self.versions(name)})")
        return Manifest.model_validate_json(path.read_text())

    def aliases(self, name: str) -> dict[str, str]:
        return _read_json(self.model_dir(name) / ALIASES_NAME)

    def alias_history(self, name: str) -> dict[str, list[str]]:
        """Every version each alias has pointed to, oldest first: what `rollback` walks back through."""
        return _read_json(self.model_dir(name) / HISTORY_NAME)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
