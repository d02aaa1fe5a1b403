"""The versions one inference worker has loaded for its task, and the store snapshot requests resolve against.

Requests resolve `name` and `name:alias` against the snapshot taken when the loaded set last changed, not
against the live store. When `store alias` / `store rollback` / a publish changes what the configured model
refs name, the worker keeps answering with what it has, loads and warms the new versions in a background
thread, then switches in one step (new snapshot + new model set) and drops the versions no ref names any more.
So a swap never answers 404 for a version still loading, and never stops the batches while a model loads.

A version that cannot be loaded (damaged files), at start-up or in a swap, is refused once and remembered:
store versions never change once published. An alias moved to a refused version keeps serving the version it
named before; a ref pinned to one answers 404; every other change lands. So one damaged version never blocks
the swaps of any model, its own later changes included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bertserve import metrics
from bertserve.config import Settings
from bertserve.runtime.cpu import release_freed_memory
from bertserve.runtime.selection import Served, pick_version, served_models
from bertserve.store.layout import ALIASES_NAME, ModelStore

if TYPE_CHECKING:
    from bertserve.runtime.loaded import LoadedModel

logger = logging.getLogger(__name__)

Key = tuple[str, str]
Fingerprint = tuple[tuple[str, int, int], ...]


def store_fingerprint(store: ModelStore) -> Fingerprint:
    """Changes whenever a version is published or removed or an alias moves, for a few stat calls (it runs
    before every batch by default). Each of those is a rename inside a model folder (model-store.md), which
    bumps the folder's mtime; the new alias file's inode also tells apart two moves in one mtime tick."""
    marks = []
    with contextlib.suppress(OSError), os.scandir(store.root) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                aliases = os.stat(os.path.join(entry.path, ALIASES_NAME)).st_ino
            except OSError:
                aliases = 0
            with contextlib.suppress(OSError):  # removed while scanned: it is missing from the marks
                marks.append((entry.name, entry.stat().st_mtime_ns, aliases))
    return tuple(sorted(marks))


@dataclass(frozen=True)
class StoreSnapshot:
    """The store's versions and aliases at one moment; answers resolve()'s questions like a ModelStore."""

    published: dict[str, list[str]]
    alias_map: dict[str, dict[str, str]]

    @classmethod
    def read(cls, store: ModelStore, names: list[str]) -> StoreSnapshot:
        return cls({n: store.versions(n) for n in names}, {n: store.aliases(n) for n in names})

    def models(self) -> list[str]:
        return sorted(self.published)

    def versions(self, name: str) -> list[str]:
        return self.published.get(name, [])

    def aliases(self, name: str) -> dict[str, str]:
        return self.alias_map.get(name, {})


@dataclass(frozen=True)
class Plan:
    """What the configured refs name in the store at one moment."""

    served: Served
    tasks: dict[str, str]
    snapshot: StoreSnapshot

    @classmethod
    def read(cls, store: ModelStore, refs: str) -> Plan:
        served, tasks = served_models(store, refs)
        return cls(served, tasks, StoreSnapshot.read(store, list(served)))

    def keys(self, task: str | tuple[str, ...]) -> list[Key]:
        """The served versions of `task` (or of any of several tasks)."""
        accepted = (task,) if isinstance(task, str) else task
        return [(n, v) for n, versions in self.served.items() if self.tasks[n] in accepted for v in versions]

    def without(self, refused: set[Key], previous: Plan | None = None) -> Plan:
        """The plan minus versions that could not be loaded: requests naming them get pick_version's 404.
        An alias moved to a refused version keeps pointing where it did in the `previous` plan (that version
        stays served), so `store alias` to a damaged version never takes the alias's traffic down."""
        served = {n: [v for v in versions if (n, v) not in refused] for n, versions in self.served.items()}
        alias_map = {n: dict(aliases) for n, aliases in self.snapshot.alias_map.items()}
        for name, aliases in alias_map.items():
            before = previous.snapshot.aliases(name) if previous is not None else {}
            for alias, version in aliases.items():
                old = before.get(alias)
                if (name, version) in refused and old is not None and old in previous.served.get(name, []):
                    aliases[alias] = old
                    served.setdefault(name, [])
                    if old not in served[name]:
                        served[name].append(old)
        snapshot = StoreSnapshot(self.snapshot.published, alias_map)
        return Plan({n: v for n, v in served.items() if v}, self.tasks, snapshot)


class ModelRegistry:
    """Per worker and task: the loaded versions, request resolution, and the store polling that swaps them."""

    def __init__(
        self, settings: Settings, task: str | tuple[str, ...], endpoint: str, device: str = "cpu"
    ) -> None:
        self.settings = settings
        self.task = task
        self.endpoint = endpoint
        self.device = device  # this worker's: cpu or cuda:N
        self.store = ModelStore(settings.store)
        self.models: dict[Key, LoadedModel] = {}
        self.plan: Plan | None = None
        self._pending: tuple[Plan, Future] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._next_check = 0.0
        self._seen: Fingerprint = ()  # the store state last acted on (applied, or refused and logged)
        self.refused: set[Key] = set()  # versions that failed to load: never tried again

    # ---- start-up and per request ----------------------------------------------------------------

    def load_initial(self) -> None:
        """Load everything the refs name; a version that fails verification or loading is refused, with a
        log line, and the others serve. Raises when none of this task's versions can be loaded."""
        self._seen = store_fingerprint(self.store)
        plan = self._plan()
        loaded = self._load(plan)
        if plan.keys(self.task) and not loaded:
            raise RuntimeError(f"{self.endpoint}: none of {plan.keys(self.task)} could be loaded")
        self._apply(plan.without(self.refused), loaded)

    def pick(self, ref: str, task: str | tuple[str, ...] | None = None) -> LoadedModel:
        """The loaded model a request's ref names, resolved against the snapshot of the last swap; `task`:
        the tasks that can answer this request (default: every task this registry loads)."""
        assert self.plan is not None, "load_initial() first"
        accepted = task or self.task
        name, version = pick_version(self.plan.snapshot, self.plan.served, self.plan.tasks, ref, accepted)
        return self.models[(name, version)]

    # ---- swaps -----------------------------------------------------------------------------------

    def refresh(self, look: Callable[[], Fingerprint] | None = None) -> None:
        """Called by the worker loop between batches: cheap unless a store check is due or a load is done.
        `look`: the store's fingerprint, shared by the registries of one process (one look per turn)."""
        if self._pending is not None:
            if self._pending[1].done():
                pending, self._pending = self._pending, None
                self._finish(*pending)
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.settings.reload_interval
        fingerprint = look() if look is not None else store_fingerprint(self.store)
        if fingerprint == self._seen:
            return
        self._seen = fingerprint  # whatever happens next is logged once, then retried on the next change
        try:
            plan = self._plan()
        except Exception:  # e.g. a configured alias was removed: keep serving what is loaded
            logger.exception("%s: cannot serve the store change; keeping the loaded versions", self.endpoint)
            return
        if self._same_models(plan):
            self._apply(plan.without(self.refused, self.plan), {})
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="model-load")
        self._pending = plan, self._executor.submit(self._load, plan)

    def _same_models(self, plan: Plan) -> bool:
        """Nothing to load: every version the plan names is loaded already, or refused for good."""
        return set(plan.keys(self.task)) - self.refused == set(self.models)

    def _finish(self, plan: Plan, loading: Future) -> None:
        try:
            loaded = loading.result()
        except Exception:  # not a version's fault (those are refused in _load): keep serving what we have
            logger.exception(
                "%s: could not apply the store change; still serving %s",
                self.endpoint,
                ", ".join(f"{n}@{v}" for n, v in sorted(self.models)),
            )
            return
        self._apply(plan.without(self.refused, self.plan), loaded)

    # ---- helpers ---------------------------------------------------------------------------------

    def _plan(self) -> Plan:
        return Plan.read(self.store, self.settings.models)

    def _load(self, plan: Plan) -> dict[Key, LoadedModel]:
        """Verify, load and warm every version of the plan not loaded (nor refused) yet. One that fails is
        logged and added to `refused`."""
        from bertserve.runtime.loaded import LoadedModel
        from bertserve.store.publish import verify_version

        loaded: dict[Key, LoadedModel] = {}
        for name, version in plan.keys(self.task):
            if (name, version) in self.models or (name, version) in self.refused:
                continue
            try:
                verify_version(self.store, name, version)
                model = LoadedModel(
                    self.store.read_manifest(name, version),
                    self.store.version_dir(name, version),
                    self.settings.backend_for(name),
                    self.device,
                )
                model.warm_up()
            except Exception as exc:
                logger.error("%s: refusing %s@%s, it cannot be loaded: %s", self.endpoint, name, version, exc)
                self.refused.add((name, version))
                continue
            loaded[(name, version)] = model
        return loaded

    def _info(self, model: LoadedModel) -> tuple[str, ...]:
        return self.endpoint, model.name, model.version, model.task, model.backend.name, model.device

    def _apply(self, plan: Plan, loaded: dict[Key, LoadedModel]) -> None:
        """Switch in one step: requests decoded from now on resolve against the new snapshot."""
        wanted = plan.keys(self.task)
        models = {
            key: self.models.get(key) or loaded[key] for key in wanted if key in self.models or key in loaded
        }
        dropped = [self.models[key] for key in self.models if key not in models]
        for model in models.values():
            metrics.MODEL_INFO.labels(*self._info(model)).set(1)
        for model in dropped:
            metrics.MODEL_INFO.labels(*self._info(model)).set(0)
        self.models, self.plan = models, plan
        for key in loaded:
            logger.info("%s: serving %s@%s", self.endpoint, *key)
        for model in dropped:
            logger.info("%s: unloaded %s (no configured model ref names it now)", self.endpoint, model.ref)
        del dropped
        release_freed_memory()  # what loading or unloading freed, back to the OS
