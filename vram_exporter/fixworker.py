"""Fixes for the metrics (``vram_model_fix_info``), found in a background thread, never on the scrape path.

The fix search re-runs both rulebooks dozens of times per model (about 40 ms for a model on 8
GPUs); 200 failing models would make a scrape take seconds. So a scrape exports the fixes found so
far and asks for the ones that are missing or out of date; one worker thread searches, pausing
between models so that scrapes keep the interpreter. A model's fixes are searched again when what
placement depends on changes (the manifest, the GPUs, the claims before it), and otherwise at most
once every REFRESH_SECONDS as free memory drifts. `vram-exporter check` and the explain page search
synchronously and are always current.
"""

from __future__ import annotations

import logging
import threading
import time

from .fit.fixes import Fix, find_fixes
from .fit.model import ModelSpec
from .fit.node import LiveValues, ModelFit, NodeFit, refreshed
from .snapshot import NodeSnapshot

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
PAUSE_SECONDS = 0.005  # between two models' searches: let the event loop in


class FixWorker:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._found: dict[str, tuple[tuple, float, list[Fix]]] = {}  # model -> (key, when, fixes)
        self._wanted: dict[str, tuple] = {}  # model -> (key, spec, (fit, live), node, snapshot)
        self._closed = False
        self.version = 0  # goes up whenever a search result is stored
        self._keys: dict[str, tuple] = {}  # model -> (fit, spec, key): keys are worth computing once per fit
        self._thread = threading.Thread(target=self._run, name="fixes", daemon=True)
        self._thread.start()

    def get(self, spec: ModelSpec, fit: ModelFit, live: LiveValues, node: NodeFit, snap: NodeSnapshot,
            sync_until: float = 0.0) -> list[Fix]:
        """The fixes known for this model now (possibly a little stale). One never searched for this
        placement is searched right here while ``time.perf_counter() < sync_until``, else queued.
        ``fit`` is the cached fit, ``live`` its values of the moment."""
        key = self._key(spec, fit, node)
        with self._lock:
            found = self._found.get(fit.name)
            unknown = found is None or found[0] != key
        if unknown and time.perf_counter() < sync_until:
            fixes = _search(fit.name, spec, refreshed(fit, live), node, snap)
            with self._lock:
                self._found[fit.name] = (key, time.monotonic(), fixes)
                self._wanted.pop(fit.name, None)
                self.version += 1
            return fixes
        with self._lock:
            found = self._found.get(fit.name)
            fresh = found is not None and found[0] == key and time.monotonic() - found[1] < REFRESH_SECONDS
            if not fresh and fit.name not in self._wanted:
                self._wanted[fit.name] = (key, spec, (fit, live), node, snap)
                self._lock.notify()
            return found[2] if found is not None and found[0] == key else []

    def _key(self, spec: ModelSpec, fit: ModelFit, node: NodeFit) -> tuple:
        memo = self._keys.get(fit.name)
        if memo is None or memo[0] is not fit or memo[1] is not spec:
            memo = (fit, spec, _placement_key(spec, fit, node))
            self._keys[fit.name] = memo
        return memo[2]

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._wanted)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued (benchmarks and tests); True if it got there in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._wanted:
                    return True
            time.sleep(0.05)
        return False

    def forget_except(self, names: set[str]) -> None:
        with self._lock:
            for name in set(self._found) - names:
                del self._found[name]
                self.version += 1
            for name in set(self._keys) - names:
                del self._keys[name]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._wanted and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                name, (key, spec, (fit, live), node, snap) = next(iter(self._wanted.items()))
            fixes = _search(name, spec, refreshed(fit, live), node, snap)
            with self._lock:
                self._found[name] = (key, time.monotonic(), fixes)
                self._wanted.pop(name, None)
                self.version += 1
            time.sleep(PAUSE_SECONDS)


def _search(name: str, spec: ModelSpec, fit: ModelFit, node: NodeFit, snap: NodeSnapshot) -> list[Fix]:
    try:
        return find_fixes(spec, fit, node, snap.gpus)
    except Exception:  # noqa: BLE001 - a bug in the search must not stop the others or the scrape
        log.exception("fix search failed for model %s", name)
        return []


def _placement_key(spec: ModelSpec, fit: ModelFit, node: NodeFit) -> tuple:
    # The spec itself, compared by value: a reload that leaves a model unchanged keeps its fixes.
    return (spec, node.cluster, tuple(sorted(fit.context.claims.items())),
            tuple(sorted(fit.context.committed.items())), tuple((b.index, b.total) for b in node.gpus),
            fit.schedulable)  # not live.startable: a model flapping around its start-up limit would
    # otherwise be searched again at every flap; free memory drift is what REFRESH_SECONDS covers
