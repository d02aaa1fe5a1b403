"""The per-endpoint request queue, in the `multiprocessing.Manager` process: hands a worker its batch in one
round trip and remembers which worker holds which requests, so none is lost when a worker dies.

- `put_many`: what an HTTP process's event loop submitted in one pass, in one call (submitter.py); with it,
  `cancel`: requests whose client went away (disconnected, or answered 504): removed while still queued,
  marked for the worker holding them otherwise, so no work is done for an answer nobody reads.
- `take`: what is queued, up to the batch's room, in one call. Every call is a round trip to the Manager
  (~0.15 ms); one `get` per request spent ~8% of the worker's time at c=64 (py-spy).
- The requests handed out are recorded under the worker's pid in the same step, inside the Manager, so there
  is no moment at which a request is out of the queue but unrecorded. `release` (after a batch is answered)
  keeps only what the worker carries to its next batch, and tells it which of those were cancelled;
  `retire` (by the supervisor, once the worker is dead) returns what it held, to be answered 503, and makes
  a `take` the dead worker had left waiting put whatever it got back at the front of the queue, for the
  replacement.

It is a Manager queue rather than a `multiprocessing.Queue` on purpose: that one's reader lock is held by a
worker blocked in `get`, so a worker SIGKILLed while idle would leave its replacement deadlocked.
"""

from __future__ import annotations

import queue
import time
from multiprocessing.managers import SyncManager
from typing import Any

Claim = tuple[int, str]  # (response queue id, request uid): enough to answer a request

# A dead worker's pid is remembered this long, for a `take` it had left waiting in this process (at most a
# worker's idle poll, well under a second) to give back what it got.
RETIRED_SECONDS = 60.0


class RequestQueue(queue.Queue):
    def __init__(self) -> None:
        super().__init__()
        self._held: dict[int, list[Claim]] = {}
        self._retired: dict[int, float] = {}  # dead worker's pid -> when it was retired
        self._cancelled: set[str] = set()  # uids held by a worker whose client went away

    def put_many(self, items: list[Any]) -> None:
        with self.not_full:
            self.queue.extend(items)
            self.unfinished_tasks += len(items)
            self.not_empty.notify(len(items))

    def cancel(self, uids: list[str]) -> int:
        """Drop these requests: returns how many were still queued (never computed now). Those a worker
        already holds are marked, for `release` to tell it; the rest were answered already."""
        wanted = set(uids)
        with self.mutex:
            kept = [item for item in self.queue if item[1] not in wanted]
            removed = len(self.queue) - len(kept)
            if removed:
                self.queue.clear()
                self.queue.extend(kept)
                self.unfinished_tasks -= removed
            held = {uid for claims in self._held.values() for _, uid in claims}
            self._cancelled |= wanted & held
            return removed

    def take(self, holder: int, limit: int, timeout: float = 0.0) -> list[Any]:
        """Up to `limit` requests for worker `holder`: wait at most `timeout` seconds for the first (0: do not
        wait), then take only what is already queued. [] when nothing came."""
        try:
            first = self.get(timeout=timeout) if timeout > 0 else self.get_nowait()
        except queue.Empty:
            return []
        with self.not_empty:  # the rest, the retired check and the record: one step under the queue's lock
            items = [first]
            while self.queue and len(items) < limit:
                items.append(self._get())
            if holder in self._retired:  # the call of a worker that died while it waited
                self.queue.extendleft(reversed(items))
                self.not_empty.notify(len(items))
                return []
            claims = [(item[0], item[1]) for item in items if item[1] is not None]  # not the stop sentinel
            self._held.setdefault(holder, []).extend(claims)
        return items

    def release(self, holder: int, keep: list[str]) -> tuple[int, list[str]]:
        """`holder` answered its batch and still holds only the requests `keep` (uids). Returns what is queued
        (the depth operators alert on, sparing another round trip) and which of `keep` were cancelled: the
        worker drops those, and no longer holds them."""
        with self.mutex:
            held = self._held.get(holder, [])
            cancelled = [uid for uid in keep if uid in self._cancelled]
            kept = set(keep) - self._cancelled
            self._cancelled -= {uid for _, uid in held}  # answered, or reported cancelled now
            self._held[holder] = [claim for claim in held if claim[1] in kept]
            return len(self.queue), cancelled

    def retire(self, holder: int) -> list[Claim]:
        """`holder` is dead: what it held, for the supervisor to answer; it will never take anything again."""
        with self.mutex:
            now = time.monotonic()
            self._retired = {pid: at for pid, at in self._retired.items() if now - at < RETIRED_SECONDS}
            self._retired[holder] = now
            held = self._held.pop(holder, [])
            self._cancelled -= {uid for _, uid in held}
            return held


def register() -> None:
    """Make `manager.RequestQueue()` available on the Manager LitServe starts (call before it starts)."""
    if "RequestQueue" not in getattr(SyncManager, "_registry", {}):
        SyncManager.register("RequestQueue", RequestQueue)
