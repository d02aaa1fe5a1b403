"""The inference process: one per device slot, hosting every served model of every task.

LitServe spawns `workers_per_device` of them per device (the slots) from this one LitAPI and supervises
them with us (supervisor.py). Each loads every task's models in `setup()`, binds its socket in the server's
0700 folder, reports ready, then runs the engine's loop (worker.py) until it is stopped. One process per
slot holds one torch runtime and one copy of each model, instead of one per endpoint.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import litserve as ls

from bertserve.config import Settings
from bertserve.engine import litserve_seam
from bertserve.engine.wire import slot_socket
from bertserve.engine.worker import EngineLoop, Explainer, Task, bind_listener

if TYPE_CHECKING:
    from bertserve.engine.client import EngineClient


class InferenceProcess(ls.LitAPI):
    def __init__(
        self,
        settings: Settings,
        tasks: list[Task],
        explain: Task | None,
        socket_dir: Path,
        drain_flag: Path,
    ) -> None:
        super().__init__(api_path="/inference", loop=litserve_seam.EngineLoop())
        self.settings = settings
        self.tasks = tasks
        self.explain = explain
        self.socket_dir = socket_dir
        self.drain_flag = drain_flag
        self.client: EngineClient | None = None  # the HTTP processes' (server.py sets it; not pickled)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "client": None}

    def setup(self, device: str) -> None:
        import torch

        from bertserve.logs import configure_logging, route_transformers_output

        configure_logging(self.settings)  # a spawned process: it inherits no logging set-up
        route_transformers_output()
        # A terminal's Ctrl-C reaches every process of the group; the main process drains and stops the
        # workers, so a worker interrupted on its own would only print a KeyboardInterrupt traceback.
        # Spawned with SIGINT blocked (server.py launches the workers so) for the imports before this line;
        # from here on it is ignored for the process, whatever mask a thread ends up with.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(self.settings.torch_threads)  # resolved for this machine by build_server
        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # LitServe's pick for this slot: cuda:N
        self.device_name = device
        for task in self.tasks:
            task.load(device)
        self.listener = bind_listener(slot_socket(self.socket_dir, litserve_seam.worker_id()))

    def serve(self) -> None:
        explainer = None
        if self.explain is not None:
            explainer = Explainer(self.explain.endpoint, self._load_explain, self.settings.request_timeout)
        EngineLoop(
            self.listener,
            {task.endpoint: task for task in self.tasks},
            request_timeout=self.settings.request_timeout,
            batch_timeout=self.settings.batch_timeout,
            explainer=explainer,
            threads_for=ThreadSizing(self.settings).apply if self.device_name == "cpu" else None,
            refresh=self._refresh,
        ).run()

    def _refresh(self) -> None:
        """Every task's registry looks at the store through one fingerprint per turn of the loop (a scan
        of the store folder each would cost every request once per task)."""
        from bertserve.runtime.registry import store_fingerprint

        look = functools.cache(lambda: store_fingerprint(self.tasks[0].registry.store))
        for task in self.tasks:
            task.refresh(look)

    def _load_explain(self) -> Task:
        """On the explain thread, at the first explanation."""
        import torch

        torch.set_num_threads(self.settings.torch_threads)  # OpenMP's thread count is per calling thread
        assert self.explain is not None
        self.explain.load(self.device_name)
        return self.explain

    def health(self) -> bool:
        """In the HTTP processes (LitServe's /health also waits for every slot's setup): not draining, and an
        inference process listening."""
        return not self.drain_flag.exists() and self.client.any_listening()


class ThreadSizing:
    """Torch intra-op threads per batch on a CPU: one for a batch with little work, where threads only add
    their hand-offs (a 1-layer, 32-wide model answered c=1 in 2.4 ms on one thread, 9.3 ms on two), every
    configured thread for more (a MiniLM-L6 forward of one short text: c=1 p50 8.1-8.5 ms on two threads,
    10.8-11.0 on one). The work is estimated as the encoder's multiply-adds: 12 x hidden^2 per token and
    layer (attention's projections and the feed-forward block)."""

    def __init__(self, settings: Settings) -> None:
        self.most = settings.torch_threads
        self.small = settings.single_thread_mflops * 1e6
        self.current = self.most

    def apply(self, batch: list) -> None:
        import torch

        config = batch[0].model.config
        longest = max((len(e.ids) for p in batch for e in p.inputs), default=0)
        padded = sum(p.sequences for p in batch) * longest
        work = 12 * config.hidden_size**2 * config.num_hidden_layers * padded
        wanted = 1 if work <= self.small else self.most
        if wanted != self.current:
            torch.set_num_threads(wanted)
            self.current = wanted
