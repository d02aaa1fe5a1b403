"""What the server serves, as the HTTP processes see it: model names, their tasks and versions, from the
configured refs and the store (re-read when the store changes, as api/encoders.py does), and which of those
versions the inference processes report loaded (a version they refused is named by the store, not served)."""

from __future__ import annotations

import time

from bertserve import metrics
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
        self._loaded: set[tuple[str, str]] | None = None
        self._next_loaded_check = 0.0

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

    def is_loaded(self, name: str, version: str) -> bool:
        """Whether an inference process reports `name@version` loaded (re-read every POLL_SECONDS). Without
        a metrics folder (an app built without the server) nothing reports: the plan is taken at its word."""
        now = time.monotonic()
        if now >= self._next_loaded_check:
            self._next_loaded_check = now + POLL_SECONDS
            self._loaded = set(metrics.loaded_versions()) if metrics.reports_loaded() else None
        return self._loaded is None or (name, version) in self._loaded

    def loaded_versions(self, name: str) -> list[str]:
        """The served versions of `name` that are loaded."""
        return [version for version in self.plan().served.get(name, []) if self.is_loaded(name, version)]

    def manifest(self, ref: str) -> Manifest:
        """The manifest of the served version `ref` names; ClientError 404 when it does not read or the
        inference processes refused it (requests naming it get 404 too)."""
        name, version = self.resolve(ref)
        if not self.is_loaded(name, version):
            message = f"{name}@{version} is not served: the inference processes refused it (see the log)"
            raise ClientError(404, message, "unknown_model")
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
