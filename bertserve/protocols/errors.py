"""Each route's error shape, by its protocol (routes.py), in its adapter (protocols/adapters.py).

Everything inside the service raises and answers our own `{"error": {"code", "message"}}` (errors.py); the
protocol layer (protocols/middleware.py's ProtocolErrors) rewrites an error answered on another protocol's
route into that protocol's shape and statuses, chosen by our error code, never by the message's words,
because its clients parse it.
"""

from __future__ import annotations

from bertserve import routes
from bertserve.protocols.adapters import ADAPTERS, reshape

__all__ = ["protocol_of", "reshape"]


def protocol_of(path: str) -> str | None:
    """The protocol whose error shape `path` answers in; None: bertserve's own."""
    protocol = routes.protocol_of(path)
    return None if ADAPTERS[protocol].reshape is None else protocol
