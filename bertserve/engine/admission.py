"""What the HTTP processes share about requests not yet answered: counts per task, and the moment each
request arrived.

- InFlight counts requests per task (its queue label), across every HTTP process (shared memory, forked
  with them). Routes of one task (/v1/embeddings, /v1/embed, TEI's /embed, ...) share one count and one
  `max_queue` bound. SIGTERM's drain waits for the total to reach 0.
- TICKET holds, per request, when the request log layer received it (time.monotonic(), one clock for every
  process of the machine) and whether it was sent to an inference process yet. The 504 and the inference
  process's expiry both count from that moment, so no request is computed whose client was already
  answered 504; a request whose client left before it was sent is counted as withdrawn by the deadline
  layer itself.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class Ticket:
    arrived: float = field(default_factory=time.monotonic)
    queued: bool = False


TICKET: ContextVar[Ticket] = ContextVar("bertserve_ticket")


def ticket() -> Ticket:
    """The current request's ticket (a fresh one outside the middleware: a test calling an app directly)."""
    try:
        return TICKET.get()
    except LookupError:
        return Ticket()


class InFlight:
    """Requests being handled per queue, counted across every HTTP process. Admission asks the request queue
    its size (a round trip to the Manager process, ~0.3 ms of the event loop) only when this count passes
    the queue's bound."""

    def __init__(self, queues: tuple[str, ...]) -> None:
        self._slot = {queue: index for index, queue in enumerate(queues)}
        self._counts = mp.get_context("fork").Array("i", len(queues))

    def enter(self, queue: str) -> int:
        """Count one more request for `queue`; returns its count, this request included."""
        with self._counts.get_lock():
            self._counts[self._slot[queue]] += 1
            return self._counts[self._slot[queue]]

    def leave(self, queue: str) -> None:
        with self._counts.get_lock():
            self._counts[self._slot[queue]] -= 1

    def total(self) -> int:
        with self._counts.get_lock():
            return sum(self._counts)
