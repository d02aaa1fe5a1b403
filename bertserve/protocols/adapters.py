"""Every protocol's adapter, by the protocol name the route table (routes.py) gives each route."""

from __future__ import annotations

from bertserve import routes
from bertserve.protocols import cohere, kserve, native, openai, tei
from bertserve.protocols.adapter import Adapter, Handler

ADAPTERS: dict[str, Adapter] = {
    adapter.protocol: adapter
    for adapter in (native.ADAPTER, openai.ADAPTER, tei.ADAPTER, cohere.ADAPTER, kserve.ADAPTER)
}


def handler_of(path: str) -> Handler:
    """The handler of a queued route, in the adapter of the route's protocol."""
    return ADAPTERS[routes.route(path).protocol].handlers[path]


def reshape(protocol: str, status: int, body: dict) -> tuple[int, dict]:
    """Our error body -> (status, body) in `protocol`'s shape (unchanged for bertserve's own)."""
    reshaping = ADAPTERS[protocol].reshape
    return (status, body) if reshaping is None else reshaping(status, body)
