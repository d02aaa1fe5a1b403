"""The engine's pieces on their own: the LitServe seam's version check and the HTTP processes' tokenizers
built off the event loop (the streams: test_streams.py; admission: test_http_layers.py)."""

from __future__ import annotations

import threading
import time

import pytest

from bertserve.api import encoders as encoders_module
from bertserve.api.encoders import HttpEncoders
from bertserve.config import Settings
from bertserve.engine import litserve_seam
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder


def test_the_installed_litserve_has_every_internal_the_seam_uses():
    litserve_seam.check_litserve()


def test_a_litserve_without_an_internal_the_seam_uses_is_named(monkeypatch):
    from litserve.loops import loops

    monkeypatch.delattr(litserve_seam.ls.LitServer, "_start_server")

    def inference_worker(lit_api, device, worker_id, request_queue, transport, workers_setup_status):
        lit_api.loop(lit_api)  # no LITSERVE_WORKER_ID set before the loop: the slot is unknown

    monkeypatch.setattr(loops, "inference_worker", inference_worker)
    with pytest.raises(litserve_seam.LitServeMismatch) as raised:
        litserve_seam.check_litserve()
    message = str(raised.value)
    assert "LitServer._start_server" in message and "LITSERVE_WORKER_ID" in message
    assert "litserve_seam.py" in message and litserve_seam.TESTED_LITSERVE in message


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
