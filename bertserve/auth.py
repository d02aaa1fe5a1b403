"""Optional API keys: Bearer tokens checked in constant time, on every path but the configured open ones.

Keys come from BERTSERVE_API_KEY (one), BERTSERVE_API_KEYS (comma-separated) and BERTSERVE_API_KEYS_FILE
(one per line, `#` comments), so keys can be rotated by running old and new side by side. Every refusal is
the same 401 whatever was wrong (no header, not Bearer, unknown key), so a caller learns nothing from it.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.responses import Response

from bertserve.config import Settings
from bertserve.errors import error_response

UNAUTHORIZED_MESSAGE = "missing or invalid API key: send 'Authorization: Bearer <key>'"


def read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and `#` comments are skipped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def configured_keys(settings: Settings) -> list[bytes]:
    """Every accepted key. A keys file that names none is an error: it would silently turn auth off."""
    keys = [key.strip() for key in settings.api_keys.get_secret_value().split(",") if key.strip()]
    if settings.api_key is not None and settings.api_key.get_secret_value().strip():
        keys.append(settings.api_key.get_secret_value().strip())
    if settings.api_keys_file is not None:
        from_file = read_keys_file(settings.api_keys_file)
        if not from_file:
            raise ValueError(f"BERTSERVE_API_KEYS_FILE {settings.api_keys_file} holds no key")
        keys.extend(from_file)
    return [key.encode() for key in dict.fromkeys(keys)]


class Authenticator:
    """Decides per request; built once in the HTTP process (before the API servers fork)."""

    def __init__(self, settings: Settings) -> None:
        self.keys = configured_keys(settings)
        self.open_paths = frozenset(p.strip() for p in settings.auth_open_paths.split(",") if p.strip())

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def allows(self, path: str, headers: dict[bytes, bytes]) -> bool:
        if not self.keys or path in self.open_paths:
            return True
        return self._known(_presented_token(headers))

    def _known(self, token: bytes) -> bool:
        """Compare against every key, without stopping at a match, so timing tells nothing about which."""
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(token, key)
        return matched and bool(token)

    @staticmethod
    def challenge() -> Response:
        return error_response(401, UNAUTHORIZED_MESSAGE, headers={"WWW-Authenticate": "Bearer"})


def _presented_token(headers: dict[bytes, bytes]) -> bytes:
    """The Bearer token (scheme case-insensitive), else X-API-Key; b"" when neither is there."""
    scheme, _, token = headers.get(b"authorization", b"").strip().partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return headers.get(b"x-api-key", b"").strip()
