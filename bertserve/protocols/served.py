"""What the server serves, as the HTTP processes see it: model names, their tasks and versions, from the
configured refs and the store (re-read when the store changes, as api/encoders.py does)."""

from __future__ import annotations

import time

from bertserve.config import Settings
from bertserve.errors import ClientError
from bertserve.runtime.registry import Plan, store_fingerprint
from bertserve.runtime.selection import pick_version
from bertserve.store.errors import StoreError
from bertserve.store.layout import ModelStore
from bertserve.store.manifest import Manifest

POLL_SECONDS = 0.5


class ServedModels:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.store)
        self._plan: Plan | None = None
        self._seen: tuple = ()
        self._next_check = 0.0

    def plan(self) -> Plan:
        now = time.monotonic()
        if self._plan is None or now >= self._next_check:
            self._next_check = now + POLL_SECONDS
            fingerprint = store_fingerprint(self.store)
            if self._plan is None or fingerprint != self._seen:
                self._plan, self._seen = Plan.read(self.store, self.settings.models), fingerprint
        return self._plan

    def tasks(self) -> set[str]:
        return set(self.plan().tasks.values())

    def task_of(self, name: str) -> str | None:
        return self.plan().tasks.get(name)

    def resolve(self, ref: str) -> tuple[str, str]:
        """(name, version) of a ref among the served versions; raises ClientError 404 (unknown) / 422."""
        plan = self.plan()
        return pick_version(plan.snapshot, plan.served, plan.tasks, ref, tuple(set(plan.tasks.values())))

    def manifest(self, ref: str) -> Manifest:
        """The manifest of the served version `ref` names; ClientError 404 when it does not read (the workers
        refuse that version too)."""
        name, version = self.resolve(ref)
        try:
            return self.store.read_manifest(name, version)
        except StoreError as exc:
            raise ClientError(404, f"{name}@{version} is not served: {exc}", "unknown_model") from None

    def root_ref(self) -> str | None:
        """The model TEI's POST / and /info speak of: the default embedding model when an embedding model is
        served, else the default classifier."""
        tasks = self.tasks()
        for task in ("embedding", "classification", "rerank"):
            if task in tasks:
                return self.settings.default_model(task)
        return None
