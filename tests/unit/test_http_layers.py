"""The HTTP layers (bertserve/http_layers.py) over a small Starlette app: auth before the body, body limits,
the shared queue bound, draining, the timeout, a client leaving, and what the metrics and access log record.

Through httpx's ASGI transport, except the client leaving: that takes a real socket, so uvicorn serves it."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from bertserve import http_layers
from bertserve.auth import Authenticator
from bertserve.config import Settings
from bertserve.engine.admission import InFlight
from bertserve.http_layers import in_flight_slots, install_layers

ENDPOINTS = {
    "/v1/classify": "test-classify",
    "/v1/embeddings": "test-embeddings",
    "/v1/embed": "test-embed",
    "/v1/slow": "test-slow",
}
QUEUE_LABELS = {
    "/v1/classify": "test-classify",
    "/v1/embeddings": "test-embeddings",
    "/v1/embed": "test-embeddings",  # one queue for both, as the embeddings API has
    "/v1/slow": "test-slow",
}
KEY = "secret-key-1"


@dataclass
class Routes:
    """What the routes below saw; the held and slow ones wait until released (or cancelled)."""

    called: list[str] = field(default_factory=list)
    held: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)

    async def classify(self, request: Request) -> JSONResponse:
        self.called.append(request.url.path)
        await request.body()
        return JSONResponse({"label": "positive"}, headers={"x-model-version": "sentiment@3"})

    async def hold(self, request: Request) -> JSONResponse:
        await request.body()
        self.held += 1
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return JSONResponse({"ok": True})

    async def slow(self, request: Request) -> JSONResponse:
        await request.body()
        self.entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return JSONResponse({"ok": True})


def layered(app: Starlette, tmp_path: Path, **settings) -> Starlette:
    settings = Settings(**{"request_timeout": 30, **settings})
    install_layers(
        app,
        settings=settings,
        auth=Authenticator(settings),
        in_flight=InFlight(in_flight_slots(ENDPOINTS, QUEUE_LABELS)),
        drain_flag=tmp_path / "draining",
        endpoints=ENDPOINTS,
        queue_labels=QUEUE_LABELS,
    )
    return app


def service(tmp_path: Path, **settings) -> tuple[Starlette, Routes]:
    routes = Routes()
    app = Starlette(
        routes=[
            Route("/v1/classify", routes.classify, methods=["POST"]),
            Route("/v1/embeddings", routes.hold, methods=["POST"]),
            Route("/v1/embed", routes.hold, methods=["POST"]),
            Route("/v1/slow", routes.slow, methods=["POST"]),
        ]
    )
    return layered(app, tmp_path, **settings), routes


class CountingReceive:
    """Around the whole app: how often anything asked for the request's body."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.reads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            self.reads += 1
            return await receive()

        await self.app(scope, counted, send)


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def requests_counted(endpoint: str, code: str, model: str = "", version: str = "") -> float:
    labels = {"endpoint": endpoint, "model": model, "version": version, "code": code}
    return sample("bertserve_requests_total", **labels)


def access_lines(caplog: pytest.LogCaptureFixture, path: str) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "bertserve.access" and r.fields["path"] == path]


def test_auth_comes_before_anything_reads_the_body(tmp_path):
    app, routes = service(tmp_path, api_key=KEY)
    counting = CountingReceive(app)

    async def run() -> tuple[httpx.Response, httpx.Response, int, httpx.Response]:
        async with client(counting) as http:
            huge = await http.post("/v1/classify", content=b"{not json" * 200_000)
            invalid = await http.post("/v1/classify", content=b"{not json")
            reads = counting.reads
            authed = await http.post("/v1/classify", json={}, headers={"Authorization": f"Bearer {KEY}"})
            return huge, invalid, reads, authed

    huge, invalid, reads, authed = asyncio.run(run())
    assert [huge.status_code, invalid.status_code] == [401, 401]
    assert huge.headers["www-authenticate"] == "Bearer"
    assert huge.json()["error"]["request_id"] == huge.headers["x-request-id"]
    assert authed.status_code == 200
    assert routes.called == ["/v1/classify"], "only the authenticated request reached the route"
    assert reads == 0 and counting.reads > 0, "the refused bodies were never read, the accepted one was"


def test_a_declared_body_over_the_limit_is_refused_unread(tmp_path):
    app, routes = service(tmp_path, max_body_bytes=1024)
    counting = CountingReceive(app)

    async def run() -> httpx.Response:
        async with client(counting) as http:
            return await http.post("/v1/classify", content=b"x" * 1025)

    response = asyncio.run(run())
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "body of 1025 bytes; the limit is 1024"
    assert routes.called == [] and counting.reads == 0


def fastapi_service(tmp_path: Path, **settings) -> tuple[FastAPI, Routes]:
    """The task routes are FastAPI's: a body it cannot read turns into its own 400, which the 413 replaces."""
    routes = Routes()
    app = FastAPI()

    @app.post("/v1/classify")
    def classify(body: dict) -> dict:
        routes.called.append("/v1/classify")
        return body

    return layered(app, tmp_path, **settings), routes


@pytest.mark.parametrize("make", [service, fastapi_service], ids=["starlette", "fastapi"])
def test_a_chunked_body_over_the_limit_is_413(tmp_path, make):
    app, routes = make(tmp_path, max_body_bytes=1024)

    async def chunks(count: int) -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(count):
            yield b"x" * 300
        yield b'"}'

    async def run() -> list[httpx.Response]:
        async with client(app) as http:
            json_body = {"Content-Type": "application/json"}
            return [await http.post("/v1/classify", content=chunks(n), headers=json_body) for n in (5, 2)]

    over, under = asyncio.run(run())
    assert "content-length" not in over.request.headers, "sent chunked"
    assert over.status_code == 413
    assert over.json()["error"] == {
        "code": "payload_too_large",
        "message": "body over the limit of 1024 bytes",
        "request_id": over.headers["x-request-id"],
    }
    assert under.status_code == 200
    # Starlette's route is called before it reads the body; FastAPI's once the body is parsed
    assert routes.called == (["/v1/classify"] * 2 if make is service else ["/v1/classify"])


def test_two_routes_sharing_a_queue_share_its_bound(tmp_path):
    """/v1/embeddings and /v1/embed feed one queue: with max_queue 4 held by one route, the other gets 503;
    a route of another queue is not refused."""
    app, routes = service(tmp_path, max_queue=4, request_timeout=5)

    async def run() -> tuple[list[httpx.Response], int, list[int]]:
        async with client(app) as http:
            held = [asyncio.create_task(http.post("/v1/embeddings", json={})) for _ in range(4)]
            while routes.held < 4:
                await asyncio.sleep(0.01)
            refused = await asyncio.gather(*(http.post("/v1/embed", json={}) for _ in range(2)))
            other = await http.post("/v1/classify", json={})
            routes.release.set()
            return refused, other.status_code, [r.status_code for r in await asyncio.gather(*held)]

    refused, other, held = asyncio.run(run())
    assert [r.status_code for r in refused] == [503, 503]
    assert refused[0].json()["error"]["message"] == "server busy: request queue is full"
    assert refused[0].json()["error"]["code"] == "unavailable"
    assert refused[0].headers["retry-after"] == "1"
    assert other == 200 and held == [200, 200, 200, 200]


def test_a_draining_server_refuses_new_requests(tmp_path):
    app, routes = service(tmp_path)

    async def run() -> tuple[int, httpx.Response]:
        async with client(app) as http:
            before = (await http.post("/v1/classify", json={})).status_code
            (tmp_path / "draining").touch()
            await asyncio.sleep(http_layers.DRAIN_LOOK_SECONDS)  # the flag is looked at this often
            return before, await http.post("/v1/classify", json={})

    before, during = asyncio.run(run())
    assert before == 200 and during.status_code == 503
    assert during.json()["error"]["message"] == "server is shutting down"
    assert during.headers["retry-after"] == "1"
    assert routes.called == ["/v1/classify"]


def test_a_route_past_the_timeout_is_cancelled_and_answered_504(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bertserve.access")
    app, routes = service(tmp_path, request_timeout=0.3)
    withdrawn = sample("bertserve_cancelled_requests_total", endpoint="test-slow")
    counted = requests_counted("test-slow", "504")

    async def run() -> tuple[httpx.Response, float]:
        async with client(app) as http:
            started = time.monotonic()
            response = await http.post("/v1/slow", json={})
            return response, time.monotonic() - started

    response, took = asyncio.run(run())
    assert response.status_code == 504
    assert response.json()["error"]["message"] == "no answer within 0.3 s"
    assert 0.3 <= took < 5
    assert routes.cancelled.is_set(), "the route was cancelled"
    assert sample("bertserve_cancelled_requests_total", endpoint="test-slow") == withdrawn + 1
    assert requests_counted("test-slow", "504") == counted + 1
    assert [line["status"] for line in access_lines(caplog, "/v1/slow")] == [504]


def test_a_request_is_counted_by_the_model_that_answered_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bertserve.access")
    app, _ = service(tmp_path)
    counted = requests_counted("test-classify", "200", "sentiment", "3")
    labels = {"endpoint": "test-classify", "model": "sentiment", "version": "3", "code": "200"}
    timed = sample("bertserve_request_duration_seconds_count", **labels)

    async def run() -> httpx.Response:
        async with client(app) as http:
            return await http.post("/v1/classify", json={}, headers={"X-Request-ID": "abc-123"})

    response = asyncio.run(run())
    assert response.status_code == 200 and response.headers["x-request-id"] == "abc-123"
    assert requests_counted("test-classify", "200", "sentiment", "3") == counted + 1
    assert sample("bertserve_request_duration_seconds_count", **labels) == timed + 1
    [line] = access_lines(caplog, "/v1/classify")
    [record] = [r for r in caplog.records if r.name == "bertserve.access"]
    assert record.getMessage() == "POST /v1/classify 200"
    assert line["status"] == 200 and line["request_id"] == "abc-123"
    assert (line["model"], line["version"], line["method"]) == ("sentiment", "3", "POST")


@pytest.fixture()
def served(tmp_path):
    """The layered app behind a real uvicorn on 127.0.0.1, in a thread: (its port, its routes)."""
    app, routes = service(tmp_path)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    yield listening.getsockname()[1], routes
    server.should_exit = True
    thread.join(10)
    listening.close()


def test_a_client_that_leaves_cancels_its_route_and_is_recorded_as_499(served, caplog):
    caplog.set_level(logging.INFO, logger="bertserve.access")
    port, routes = served
    withdrawn = sample("bertserve_cancelled_requests_total", endpoint="test-slow")
    counted = requests_counted("test-slow", "499")
    body = b"{}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/slow HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert routes.entered.wait(10), "the route got the request"
    assert routes.cancelled.wait(10), "the route was cancelled once its client left"
    deadline = time.monotonic() + 10
    while requests_counted("test-slow", "499") < counted + 1:
        assert time.monotonic() < deadline, "counted as 499"
        time.sleep(0.01)
    assert sample("bertserve_cancelled_requests_total", endpoint="test-slow") == withdrawn + 1
    assert [line["status"] for line in access_lines(caplog, "/v1/slow")] == [499]
