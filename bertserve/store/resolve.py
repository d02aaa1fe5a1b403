"""Model references as api.md spells them: `name`, `name@version`, `name:alias`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bertserve.store.errors import UnknownModelError
from bertserve.store.layout import ModelStore

DEFAULT_ALIAS = "production"
REF_PATTERN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:@(?P<version>[0-9]+)|:(?P<alias>[A-Za-z0-9][A-Za-z0-9_.-]{0,63}))?$"
)


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}@{self.version}"
        return f"{self.name}:{self.alias}" if self.alias else self.name


def parse_ref(text: str) -> ModelRef:
    """Raises ValueError naming the accepted forms when `text` is none of them."""
    match = REF_PATTERN.match(text.strip())
    if not match:
        raise ValueError(f"malformed model reference {text!r}: use name, name@version or name:alias")
    version = match["version"]
    return ModelRef(match["name"], str(int(version)) if version else None, match["alias"])


def resolve(store: ModelStore, ref: str | ModelRef) -> tuple[str, str]:
    """(name, version) for a reference. A bare name means its `production` alias if set, else the latest."""
    parsed = parse_ref(ref) if isinstance(ref, str) else ref
    versions = store.versions(parsed.name)
    if not versions:
        known = ", ".join(store.models()) or "none"
        raise UnknownModelError(f"unknown model {parsed.name!r} (models in the store: {known})")
    if parsed.version is not None:
        if parsed.version not in versions:
            raise UnknownModelError(f"unknown version {parsed} (versions: {', '.join(versions)})")
        return parsed.name, parsed.version
    aliases = store.aliases(parsed.name)
    if parsed.alias is not None:
        if parsed.alias not in aliases:
            raise UnknownModelError(f"unknown alias {parsed} (aliases: {', '.join(aliases) or 'none'})")
        return parsed.name, aliases[parsed.alias]
    return parsed.name, aliases.get(DEFAULT_ALIAS, versions[-1])
