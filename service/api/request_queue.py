"""The per-endpoint request queue: LitServe's Manager queue, plus one call that takes a whole batch.

The queue lives in the `multiprocessing.Manager` process, so every call from a worker is a round trip
(~0.15 ms). Taking a batch of 32 short requests one `get` at a time spent ~8% of the worker's time in those
round trips (py-spy, c=64); `get_many` takes what is queued, up to the batch's room, in one.

It stays a Manager queue rather than a `multiprocessing.Queue` on purpose: that one's reader lock is held by
a worker blocked in `get`, so a worker SIGKILLed while idle would leave its replacement deadlocked.
"""

from __future__ import annotations

import queue
from multiprocessing.managers import SyncManager
from typing import Any


class RequestQueue(queue.Queue):
    def get_many(self, limit: int, timeout: float = 0.0) -> list[Any]:
        """Up to `limit` items: wait at most `timeout` seconds for the first (0: do not wait), then take only
        what is already queued. [] when nothing came."""
        try:
            items = [self.get(timeout=timeout) if timeout > 0 else self.get_nowait()]
        except queue.Empty:
            return []
        while len(items) < limit:
            try:
                items.append(self.get_nowait())
            except queue.Empty:
                break
        return items


def register() -> None:
    """Make `manager.RequestQueue()` available on the Manager LitServe starts (call before it starts)."""
    if "RequestQueue" not in getattr(SyncManager, "_registry", {}):
        SyncManager.register("RequestQueue", RequestQueue)
