"""Answers travel from workers to HTTP processes over ZeroMQ, not litserve 0.2.19's Manager fallback."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import pickle
import threading

from service.api.transport import ResponseTransport
from service.config import Settings
from service.server import build_server
from service.store.layout import ModelStore
from service.store.publish import import_hf_folder


def test_server_answers_over_zeromq(store_root, tiny_classifier_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    import_hf_folder(ModelStore(store_root), tiny_classifier_dir, "sentiment")
    server = build_server(Settings(store=store_root), tmp_path / "draining", mp.Value("i", 0))
    manager = server._init_manager(2)  # LitServer.run starts so: the broker, then the transport
    try:
        transport = server._transport
        assert isinstance(transport, ResponseTransport)
        assert server.transport_config.transport_type == "zmq"
        # a worker gets the transport pickled; its answers for HTTP process 1 must reach that process only
        worker_side = pickle.loads(pickle.dumps(transport))
        assert isinstance(worker_side, ResponseTransport)

        async def roundtrip() -> tuple:
            answer = asyncio.create_task(transport.areceive(consumer_id=1, timeout=10))
            await asyncio.sleep(0.3)  # the subscription reaches the broker

            def publish() -> None:
                worker_side.connect_publisher()
                worker_side.send(("uid-0", ("for http process 0",)), consumer_id=0)
                worker_side.send(("uid-1", ("for http process 1",)), consumer_id=1)

            threading.Thread(target=publish).start()
            return await answer

        assert asyncio.run(roundtrip()) == ("uid-1", ("for http process 1",))
        worker_side.close()
        pickle.loads(pickle.dumps(transport)).close()  # never connected (the main process at shutdown)
    finally:
        manager.shutdown()
