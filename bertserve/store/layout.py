"""Reading the store: `<root>/<name>/<version>/` folders, `aliases.json` and the alias history.

Versions are the folders named by an integer that hold a manifest; anything else (a publish in progress
is a hidden `.publish-*` folder) is invisible, which is what makes publishing atomic for readers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import ValidationError

from bertserve.store.errors import IntegrityError, InvalidNameError, StoreError, UnknownModelError
from bertserve.store.manifest import MANIFEST_NAME, Manifest

ALIASES_NAME = "aliases.json"
HISTORY_NAME = "alias-history.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(kind: str, value: str) -> str:
    """Model and alias names become folder and JSON keys: keep them plain."""
    if not NAME_PATTERN.match(value) or value.isdigit():
        raise InvalidNameError(
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
        """Raises IntegrityError for a manifest that is not one (truncated, edited, another version's), so
        every reader refuses that version alone instead of failing on it."""
        path = self.version_dir(name, version) / MANIFEST_NAME
        if not path.is_file():
            raise UnknownModelError(f"unknown version {name}@{version} (versions: {self.versions(name)})")
        where = f"{name}@{version}: {MANIFEST_NAME}"
        try:
            manifest = Manifest.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"])
            raise IntegrityError(
                f"{where} is not a valid manifest: {field + ': ' if field else ''}{error['msg']}"
            ) from None
        if (manifest.name, manifest.version) != (name, str(version)):
            raise IntegrityError(f"{where} is the manifest of {manifest.name}@{manifest.version}")
        return manifest

    def manifests(self, name: str) -> list[Manifest]:
        """The manifests of `name`'s versions that can be read, oldest first: a damaged one is left out
        (`store verify` names it), so one bad version never hides its model's others."""
        found = []
        for version in self.versions(name):
            try:
                found.append(self.read_manifest(name, version))
            except StoreError:
                continue
        return found

    def problems(self, names: list[str]) -> list[str]:
        """What leaves a model unservable beyond its files: no published version (a folder left by a failed or
        running first publish), no manifest that reads, or an alias to a version the store does not have."""
        problems = []
        for name in names:
            versions = self.versions(name)
            if not versions:
                problems.append(f"{name}: no published versions")
            elif not self.manifests(name):
                problems.append(f"{name}: no version has a readable manifest")
            for alias, version in sorted(self.aliases(name).items()):
                if version not in versions:
                    problems.append(
                        f"{name}:{alias} points to version {version}, which the store does not have"
                    )
        return problems

    def aliases(self, name: str) -> dict[str, str]:
        return _read_json(self.model_dir(name) / ALIASES_NAME)

    def alias_history(self, name: str) -> dict[str, list[str]]:
        """Every version each alias has pointed to, oldest first: what `rollback` walks back through."""
        return _read_json(self.model_dir(name) / HISTORY_NAME)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
