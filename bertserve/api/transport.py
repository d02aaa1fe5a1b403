"""Answers from inference workers to HTTP processes over ZeroMQ (LitServe's `fast_queue`), made to work.

litserve 0.2.19 has two bugs on that path:
- LitServer passes `transport_config="zmq"`, a field TransportConfig does not have, so `fast_queue=True`
  silently keeps the Manager-queue transport (profiled under load: ~11% of a worker's time in that queue's
  put; the ZMQ path serves ~15% more short requests per second at c=64, side by side);
- the ZMQ transport it would build swaps the broker's two addresses (publishers connect to its XPUB side,
  subscribers to XSUB), so no answer would ever arrive.
And its publisher set-up sends a `__ping__` frame to consumer 0; should it arrive, the HTTP process fails to
unpickle it and its answer reader stops for good. ResponseTransport connects each side to the right address,
sends no ping, and closes without error where it never connected (LitServe's shutdown would stop there);
server.py installs it once LitServe has started the broker, before any worker.
"""

from __future__ import annotations

import time

import zmq
from litserve.transport.zmq_queue import Producer
from litserve.transport.zmq_transport import ZMQTransport

# A new publisher drops what it sends until the broker's subscriptions have reached it.
SUBSCRIPTION_SETTLE_SECONDS = 0.1


class ResponseTransport(ZMQTransport):
    """Publishers (workers, the supervisor) connect to the broker's XSUB side, HTTP processes to XPUB."""

    def setup(self, operation, consumer_id: int | None = None) -> None:
        if operation != zmq.PUB:
            super().setup(operation, consumer_id)
            return
        self._zmq = Producer(address=self.backend_address)
        time.sleep(SUBSCRIPTION_SETTLE_SECONDS)

    def connect_publisher(self) -> None:
        """Connect now (worker start-up) rather than delaying the first answer by the settle time."""
        if self._zmq is None:
            self.setup(zmq.PUB)

    def close(self, **kwargs) -> None:
        """LitServe closes the transport at shutdown in the main process, which may never have connected
        (ZMQTransport.close raises there, and the rest of the shutdown is skipped: the server hangs)."""
        if self._zmq is not None:
            self._zmq.close()
            self._zmq = None

    def __reduce__(self):
        return ResponseTransport, (self.backend_address, self.frontend_address)
