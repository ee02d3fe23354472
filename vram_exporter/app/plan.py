"""The one owner of derived state: the node's inputs, compared by value, turned into a versioned plan.

A node's inputs are the cluster settings, the models, the other instances' bookings (from a
manifest or from GPUStack) and the GPUs' identities and sizes. Everything derived from them alone
lives in one ``Plan``: the static fit (both rulebooks but vLLM's start-up check, rules/node.py), the
per-model metric segments that only change with it, and every model's fix plan. Consumers (the
metrics, the explain page, /api/v1/fit, ``check``) read the same plan and apply the free memory of
the moment to it (``fit.node.with_free``, ``FixPlan.pick``). A plan's version changes exactly when
its inputs do: a manifest reloaded unchanged, or a GPUStack refresh that changes nothing here, keeps
the plan and everything built on it.

The fit comes first (tens of milliseconds at 8 GPUs x 200 models); the fixes follow in the same
worker thread (a few hundred milliseconds), and ``Plan.fixes`` is set once they are all known, so
a scrape never waits for them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..present.collector import GpuDetail, ModelFamilies, fix_segment
from .cooperative import yielding
from ..present.exposition import Segment
from ..rules.fixes import FixPlan, plan_fixes
from ..rules.model import Cluster, ModelSpec
from ..rules.node import NodeFit, free_memory, static_fit
from ..snapshot import GpuReading, NodeSnapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuSize:
    """What the static fit reads of a GPU: its identity and sizes (its name gives vLLM's default batch),
    never its free memory."""

    index: int
    uuid: str
    name: str
    up: bool
    total: int | None
    reserved: int | None


@dataclass(frozen=True, slots=True)
class NodeInputs:
    """Everything a plan is derived from, compared by value."""

    cluster: Cluster
    models: tuple[ModelSpec, ...]
    booked: tuple[tuple[int, int], ...]
    gpus: tuple[GpuSize, ...]
    predicted: tuple[tuple[int, int], ...] | None = None  # the cluster's placement of the candidates here

    @classmethod
    def of(cls, cluster: Cluster | None, models, booked: Mapping[int, int] | None,
           snapshot: NodeSnapshot, predicted: Mapping[int, int] | None = None) -> NodeInputs:
        return cls(cluster or Cluster(), tuple(models), tuple(sorted((booked or {}).items())), gpu_sizes(snapshot),
                   None if predicted is None else tuple(sorted(predicted.items())))


def gpu_sizes(snapshot: NodeSnapshot) -> tuple[GpuSize, ...]:
    return tuple(GpuSize(g.index, g.uuid, g.name, g.up, g.memory.total if g.memory else None,
                         g.memory.reserved if g.memory else None) for g in snapshot.gpus)


@dataclass(eq=False, slots=True)
class Plan:
    version: int
    inputs: NodeInputs
    node: NodeFit
    families: ModelFamilies  # the per-model segments that only change with the plan
    gpus: tuple[GpuReading, ...]  # the readings the plan was made from (sizes only are read)
    fixes: Mapping[str, FixPlan] | None = field(default=None)  # None until every model's are known
    # Done when ``fixes`` is set, or with None when a newer plan made this one's search pointless.
    fixes_known: Future = field(default_factory=Future)
    # Each model's working fixes on the free memory the plan was made with, picked in the planner's
    # thread so that the scrape that first shows the fixes need not pick them (readings rarely moved).
    first_picks: Mapping[str, tuple[tuple, Segment]] = field(default_factory=dict)

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        return self.inputs.models


class Planner:
    """Turns inputs into plans, one at a time in one worker thread, and keeps the latest."""

    def __init__(self, gpu_detail: GpuDetail = "all") -> None:
        self._gpu_detail = gpu_detail
        self._lock = threading.Lock()
        self._version = 0
        self._current: Plan | None = None
        self._building: tuple[NodeInputs, Future[Plan]] | None = None
        self.closed = False  # close() was called: the worker thread is gone
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")

    def submit(self, inputs: NodeInputs, snapshot: NodeSnapshot) -> Future[Plan]:
        """The plan for ``inputs``: done at once when it is the current one, else being built."""
        with self._lock:
            current = self._current
            if current is not None and (current.inputs is inputs or current.inputs == inputs):
                done: Future[Plan] = Future()
                done.set_result(current)
                return done
            if self._building is not None and self._building[0] == inputs:
                return self._building[1]
            self._version += 1
            future = self._pool.submit(self._build, self._version, inputs, snapshot)
            self._building = (inputs, future)
            return future

    async def plan(self, inputs: NodeInputs, snapshot: NodeSnapshot) -> Plan:
        return await asyncio.wrap_future(self.submit(inputs, snapshot))

    def build_now(self, inputs: NodeInputs, snapshot: NodeSnapshot, stale=lambda: False) -> Plan:
        """A whole plan in the calling thread (``check``, the explain page's what-if), never the
        planner's current one; the fixes are left out (None) if ``stale()`` turns true meanwhile."""
        plan = _fit(0, inputs, snapshot, self._gpu_detail)
        plan.fixes = _fixes(plan, stale)
        plan.fixes_known.set_result(plan.fixes)
        return plan

    def _build(self, version: int, inputs: NodeInputs, snapshot: NodeSnapshot) -> Plan:
        plan = _fit(version, inputs, snapshot, self._gpu_detail)
        with self._lock:
            self._current = plan
            if self._building is not None and self._building[0] is inputs:
                self._building = None
        # The fixes follow in this same thread, unless a newer plan is wanted meanwhile.
        self._pool.submit(self._add_fixes, plan)
        return plan

    def _add_fixes(self, plan: Plan) -> None:
        fixes = None
        try:
            # A newer plan asked for meanwhile (its version is taken in submit) makes this search pointless:
            # it stops within one model, and the newer plan's fit, queued behind it, starts.
            fixes = _fixes(plan, lambda: self._version != plan.version)
            if fixes is not None:
                plan.first_picks = _first_picks(plan, fixes)
                plan.fixes = fixes  # one assignment: readers see None or every model's
                _settle_memory()
        except Exception:  # noqa: BLE001 - the plan serves without fixes rather than never answering
            log.exception("fix planning failed")
        finally:
            plan.fixes_known.set_result(plan.fixes)

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


def _fit(version: int, inputs: NodeInputs, snapshot: NodeSnapshot, gpu_detail: GpuDetail) -> Plan:
    node = static_fit(snapshot, inputs.cluster, inputs.models, dict(inputs.booked),
                      None if inputs.predicted is None else dict(inputs.predicted))
    families = ModelFamilies(gpu_detail)
    families.prepare(node)
    return Plan(version, inputs, node, families, snapshot.gpus)


def _settle_memory() -> None:
    """The plan lives until the inputs change: keep it out of the cyclic collector, whose full passes
    over it showed up as 20-30 ms pauses in scrape latency. The young generations are collected first
    (about a millisecond); a full collection would hold the interpreter for 40-65 ms at 8x200-16x500,
    so cycles already in the oldest generation are frozen with the plan. Acyclic garbage, superseded
    plans included, is freed by reference counting, frozen or not."""
    gc.collect(1)
    gc.freeze()


def pick_key(fit, free: Mapping[int, int]) -> tuple:
    """What a model's picked fixes depend on: the free memory of each GPU it is judged on."""
    return tuple(free.get(f.index) for f in fit.per_gpu)


def _first_picks(plan: Plan, fixes: Mapping[str, FixPlan]) -> dict[str, tuple[tuple, Segment]]:
    free = free_memory(NodeSnapshot(driver_version="", gpus=plan.gpus))
    picks = {}
    for fit in plan.node.models:
        if fit.name in fixes:
            try:
                picks[fit.name] = (pick_key(fit, free), fix_segment(fit.name, fixes[fit.name].working(fit, free)))
            except Exception:  # noqa: BLE001 - the scrape picks this one itself
                log.exception("picking the fixes of model %s failed", fit.name)
    return picks


def _fixes(plan: Plan, stale) -> dict[str, FixPlan] | None:
    fixes = {}
    # Between two models the interpreter is handed over: a scrape waiting for it gets it within one
    # model's search (about half a millisecond).
    for spec, fit in yielding(zip(plan.specs, plan.node.models, strict=True)):
        if stale():
            return None
        try:
            fixes[spec.name] = plan_fixes(spec, fit, plan.node, plan.gpus)
        except Exception:  # noqa: BLE001 - a bug in one model's search must not cost the others theirs
            log.exception("fix search failed for model %s", spec.name)
    return fixes
