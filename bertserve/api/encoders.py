"""Tokenizing in the HTTP processes, so that an inference worker only pads, runs the model and decodes.

An HTTP process resolves a request's model ref as the workers do (registry.py), against its own snapshot of
the store, and tokenizes with that version's encoder. The worker resolves the ref again with what it has
loaded and uses the token ids only when its version's encoder key is the same (runtime/encoding.py); during a
swap, or when the new version's tokenizer differs, it tokenizes the request itself. Whatever this process
cannot resolve (an unknown model, a store it cannot read) goes to the worker untokenized, to be answered as
before.

A version published while serving gets its encoder built in a thread (hashing its files and loading the
tokenizer take tens of milliseconds to seconds): the event loop never waits for it, and the requests that come
meanwhile are tokenized by the worker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from bertserve.config import Settings
from bertserve.runtime.encoding import Encoded, TextEncoder
from bertserve.runtime.registry import Key, Plan, store_fingerprint
from bertserve.runtime.selection import pick_version
from bertserve.store.errors import StoreError
from bertserve.store.layout import ModelStore

logger = logging.getLogger(__name__)

# Least seconds between two looks at the store from an HTTP process (a few stat calls, ~40 us): a view up to
# this old costs nothing but a worker-side tokenize, as the worker checks the encoder key.
STORE_POLL_SECONDS = 0.5


@dataclass
class Tokens:
    """A request's token ids, made by the encoder whose key they carry."""

    key: str
    inputs: list[Encoded]
    target_ids: list[int] | None = None


class HttpEncoders:
    """One task's encoders in one HTTP process, loaded on first use and dropped when no ref names them."""

    def __init__(self, settings: Settings, task: str | tuple[str, ...]) -> None:
        self.settings = settings
        self.task = task
        self.store = ModelStore(settings.store)
        self.plan: Plan | None = None
        self.encoders: dict[Key, TextEncoder | None] = {}
        self._building: dict[Key, Future] = {}
        self._builder: ThreadPoolExecutor | None = None  # made on first use, in the HTTP process
        self._seen: tuple = ()
        self._next_check = 0.0

    def load(self) -> None:
        """Load every served version's encoder now: in the main process, before the HTTP processes are
        forked, so that none of them imports transformers or reads tokenizer files while requests wait."""
        with contextlib.suppress(Exception):  # a store the workers will refuse: they say why
            for key in self._current_plan().keys(self.task):
                if key not in self.encoders:
                    self.encoders[key] = self._build(key)

    def find(self, ref: str, task: str | tuple[str, ...] | None = None) -> TextEncoder | None:
        """The encoder of the version `ref` names now (a model of `task`, default: any this API serves);
        None when this process cannot tell."""
        try:
            plan = self._current_plan()
            key = pick_version(plan.snapshot, plan.served, plan.tasks, ref, task or self.task)
        except Exception:  # e.g. 404 unknown model: the worker answers it, as it always did
            return None
        return self._encoder(key)

    def _encoder(self, key: Key) -> TextEncoder | None:
        """The version's encoder, or None while it is being built off the event loop (or cannot be)."""
        if key in self.encoders:
            return self.encoders[key]
        building = self._building.get(key)
        if building is None:
            if self._builder is None:
                self._builder = ThreadPoolExecutor(1, thread_name_prefix="encoder-build")
            self._building[key] = self._builder.submit(self._build, key)
        elif building.done():
            del self._building[key]
            self.encoders[key] = building.result()
            return self.encoders[key]
        return None

    def _build(self, key: Key) -> TextEncoder | None:
        try:
            manifest = self.store.read_manifest(*key)
        except StoreError:  # a damaged manifest: the workers refuse the version and log why, once
            return None
        try:
            return TextEncoder(manifest, self.store.version_dir(*key))
        except Exception as exc:  # e.g. a damaged version, which the workers refuse too
            logger.warning("%s@%s: not tokenizing in the HTTP processes: %s", *key, exc)
            return None

    def _current_plan(self) -> Plan:
        now = time.monotonic()
        if self.plan is None or now >= self._next_check:
            self._next_check = now + max(STORE_POLL_SECONDS, self.settings.reload_interval)
            fingerprint = store_fingerprint(self.store)
            if self.plan is None or fingerprint != self._seen:
                self._seen = fingerprint
                self.plan = Plan.read(self.store, self.settings.models)
                wanted = set(self.plan.keys(self.task))
                self.encoders = {key: found for key, found in self.encoders.items() if key in wanted}
        return self.plan
