"""The engine's pieces on their own: the LitServe seam's version check, admission bounds per request queue,
and the HTTP processes' tokenizers built off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from bertserve.api import encoders as encoders_module
from bertserve.api.encoders import HttpEncoders
from bertserve.auth import Authenticator
from bertserve.config import Settings
from bertserve.engine import litserve_seam
from bertserve.engine.admission import InFlight
from bertserve.server import ServiceMiddleware
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder


def test_the_installed_litserve_has_every_internal_the_seam_uses():
    litserve_seam.check_litserve()


def test_a_litserve_without_an_internal_the_seam_uses_is_named(monkeypatch):
    from litserve.server import BaseRequestHandler

    monkeypatch.delattr(BaseRequestHandler, "_submit_request")  # where RegularRequestHandler inherits it
    monkeypatch.delattr(litserve_seam.ls.LitServer, "_start_server")
    with pytest.raises(litserve_seam.LitServeMismatch) as raised:
        litserve_seam.check_litserve()
    message = str(raised.value)
    assert "RegularRequestHandler._submit_request" in message and "LitServer._start_server" in message
    assert "litserve_seam.py" in message and litserve_seam.TESTED_LITSERVE in message


class HeldQueue:
    """A request queue whose size is the number of requests the route below is holding."""

    def __init__(self) -> None:
        self.held = 0

    def qsize(self) -> int:
        return self.held


def admission_app(queue: HeldQueue, release: asyncio.Event, tmp_path) -> ServiceMiddleware:
    async def hold(request):
        await request.body()
        queue.held += 1
        try:
            await release.wait()
        finally:
            queue.held -= 1
        return JSONResponse({"ok": True})

    routes = [Route(path, hold, methods=["POST"]) for path in ("/v1/embeddings", "/v1/embed")]
    settings = Settings(max_queue=4, request_timeout=30)
    return ServiceMiddleware(
        Starlette(routes=routes),
        settings=settings,
        auth=Authenticator(settings),
        queues={"/v1/embeddings": queue, "/v1/embed": queue},
        queue_paths={"/v1/embeddings": "/v1/embeddings", "/v1/embed": "/v1/embeddings"},
        in_flight=InFlight(("/v1/embeddings", "/v1/embed")),
        drain_flag=tmp_path / "draining",
    )


def test_two_routes_sharing_a_queue_share_its_bound(tmp_path):
    """/v1/embeddings and /v1/embed feed one queue: with max_queue 4 held by one route, the other gets 503."""

    async def run() -> list[int]:
        queue, release = HeldQueue(), asyncio.Event()
        app = admission_app(queue, release, tmp_path)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/v1/embeddings", json={})) for _ in range(4)]
            while queue.held < 4:
                await asyncio.sleep(0.01)
            refused = await asyncio.gather(*(client.post("/v1/embed", json={}) for _ in range(2)))
            release.set()
            return [r.status_code for r in refused] + [r.status_code for r in await asyncio.gather(*held)]

    assert asyncio.run(run()) == [503, 503, 200, 200, 200, 200]


def test_a_new_versions_tokenizer_is_built_off_the_event_loop(store_root, tiny_classifier_dir, monkeypatch):
    """The first request after a publish finds no encoder for the new version: it goes to the worker
    untokenized (None) at once, while a thread builds the encoder for the requests after it."""
    store = ModelStore(store_root)
    import_hf_folder(store, tiny_classifier_dir, "sentiment")
    encoders = HttpEncoders(Settings(store=store_root), "classification")
    release, built_by = threading.Event(), []
    real = encoders_module.TextEncoder

    def slow_encoder(*args):
        built_by.append(threading.current_thread().name)
        assert release.wait(30)
        return real(*args)

    monkeypatch.setattr(encoders_module, "TextEncoder", slow_encoder)
    assert encoders.find("sentiment") is None, "the caller does not wait for the tokenizer"
    assert encoders.find("sentiment") is None
    release.set()
    deadline = time.monotonic() + 30
    while (found := encoders.find("sentiment")) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert isinstance(found, real)
    assert built_by == [built_by[0]] and built_by[0] != threading.current_thread().name, built_by
