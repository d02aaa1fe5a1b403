"""LitServe's map of answers awaited in an HTTP process, made to forget requests that already timed out.

LitServe's request handler pops a request's entry once the worker's answer arrives. When ServiceMiddleware
answers 504 first, it cancels that handler, so the entry (and the worker's late answer) would stay for good:
one leak per timed-out request, which a long overload turns into a memory leak. Entries older than the request
timeout plus a margin belong to requests already answered 504; they are dropped, checked once per `ttl`.
"""

from __future__ import annotations

import time
from typing import Any


class ExpiringResponseBuffer(dict):
    def __init__(self, ttl: float) -> None:
        super().__init__()
        self.ttl = ttl
        self.born: dict[str, float] = {}
        self.next_sweep = time.monotonic() + ttl

    def __setitem__(self, uid: str, item: Any) -> None:
        super().__setitem__(uid, item)
        now = time.monotonic()
        self.born[uid] = now
        if now >= self.next_sweep:
            self.next_sweep = now + self.ttl
            for stale in [key for key, born in self.born.items() if now - born > self.ttl]:
                self.pop(stale, None)

    def pop(self, uid: str, *default: Any) -> Any:
        self.born.pop(uid, None)
        return super().pop(uid, *default)
