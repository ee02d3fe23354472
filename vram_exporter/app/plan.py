"""The one owner of derived and remembered state: the node's inputs, compared by value, turned into a
versioned plan, and what the scrapes and pages remember of it.

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

What is remembered, all of it here and every piece keyed by value (never by which object was handed
in): the current plan (by its inputs), per plan the live part of the last free memory seen and each
model's picked fixes (by which side of each need it compares free memory is on: ``PickKeys``), and
the last scrape body and the last report (``LastOne``, by what they are made of). Why each is kept is said where it is.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Generic, TypeVar

from ..present.collector import GpuDetail, LivePart, ModelFamilies, fix_segment
from ..present.exposition import Family, Segment
from ..rules.fixes import FixPlan, plan_fixes
from ..rules.model import ModelSpec
from ..rules.node import NodeFit, free_memory, start_needs, static_fit
from ..snapshot import GpuReading, NodeSnapshot
from ..sources.manifest import LoadedManifest, NodeModels
from ..sources.vllm_instance import VersionAnswer
from .cooperative import yielding
from .inputs import GpuSize, NodeInputs, gpu_sizes, node_inputs

__all__ = ["GpuSize", "LastOne", "NodeInputs", "Plan", "Planner", "gpu_sizes", "node_inputs"]

log = logging.getLogger(__name__)


T = TypeVar("T")


class LastOne(Generic[T]):
    """One value and the key it was made for, compared by value (``==``): the same key gives the same
    value back. On a hit the newer key is kept (it is equal): the next comparison then meets the same
    objects and stops at their identity, whatever object the caller built the key from."""

    def __init__(self) -> None:
        self._last: tuple[Hashable, T] | None = None

    def get(self, key: Hashable) -> T | None:
        last = self._last
        if last is None or not (last[0] is key or last[0] == key):
            return None
        self._last = (key, last[1])
        return last[1]

    def keep(self, key: Hashable, value: T) -> T:
        self._last = (key, value)  # one assignment: a reader sees the old pair or the new
        return value

    def of(self, key: Hashable, make: Callable[[], T]) -> T:
        found = self.get(key)
        return found if found is not None else self.keep(key, make())


@dataclass(eq=False, slots=True)
class Plan:
    version: int
    inputs: NodeInputs
    node: NodeFit
    families: ModelFamilies  # the per-model segments that only change with the plan
    gpus: tuple[GpuReading, ...]  # the readings the plan was made from (sizes only are read)
    fixes: Mapping[str, FixPlan] | None = field(default=None)  # None until every model's are known
    pick_keys: PickKeys | None = field(default=None)  # set with the fixes, before them
    # Done when ``fixes`` is set, or with None when a newer plan made this one's search pointless.
    fixes_known: Future = field(default_factory=Future)
    # The live part of the last free memory seen (by value): a scrape whose readings did not move (the
    # fixes just known, say) redoes none of it.
    _live: LastOne[LivePart] = field(default_factory=LastOne)
    # Each model's rendered working fixes and the key (``PickKeys``) they were picked for. The
    # planner's thread fills it for the free memory the plan was made with before ``fixes`` is set,
    # so that the scrape that first shows the fixes need not pick them: that scrape was the slowest
    # of those meanwhile (benchmarks/RESULTS.md, "What a user sees": p99 meanwhile 8.7 ms at 8 x 200).
    _picks: dict[str, tuple[tuple, Segment]] = field(default_factory=dict)
    # The explain page's last what-ifs on this plan (app/whatif.py), by (what-if, readings), each with
    # the live report it was shown beside: a new one costs about 0.8 s at 8 GPUs x 200 models against
    # 5 ms for the same again (benchmarks/RESULTS.md, "The explain page's what-if").
    what_ifs: OrderedDict[tuple, tuple[object, object]] = field(default_factory=OrderedDict)

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        return self.inputs.models

    def live(self, free: Mapping[int, int]) -> LivePart:
        return self._live.of(tuple(sorted(free.items())), lambda: self.families.live(free))

    def model_families(self, free: Mapping[int, int]) -> list[Family]:
        """The per-model families on ``free`` (GPU index -> bytes), the fixes once known."""
        live = self.live(free)
        return self.families.families(self.node, free, self.fix_segments(free, live), live)

    def fix_segments(self, free: Mapping[int, int], live: LivePart) -> list[Segment]:
        """Each model's working fixes on ``free``, rendered; a model whose pick cannot have changed
        (``PickKeys``) keeps its last one. Empty while the fixes are not known."""
        fixes, keys = self.fixes, self.pick_keys
        if fixes is None:
            return []
        sides = keys.sides(free)
        out = []
        for fit in self.node.models:
            fix_plan = fixes.get(fit.name)
            if fix_plan is None or fit.error or fit.placed or (fit.schedulable and live.startable[fit.name]):
                continue
            out.append(self._pick(fit, fix_plan, free, keys.key(fit.name, sides, free)))
        return out

    def _pick(self, fit, fix_plan: FixPlan, free: Mapping[int, int], key: tuple) -> Segment:
        last = self._picks.get(fit.name)
        if last is None or last[0] != key:
            last = self._picks[fit.name] = (key, fix_segment(fit.name, fix_plan.working(fit, free)))
        return last[1]


@dataclass(frozen=True, slots=True)
class PickKeys:
    """What each model's picked fixes (``FixPlan.working``) depend on, made once per plan with the fixes.

    A pick compares free memory with fixed numbers (its options' needs, ``FixPlan.needs``, and what the
    model's start needs, ``start_needs``); only a schedulable model's ``other_processes`` fix reads the
    free memory of its GPUs itself. So the pick is a function of, per GPU, the side of each of those
    numbers free memory is on (``bisect``: how many of them it reaches), and, for a schedulable model,
    its GPUs' free memory. Readings that move a few MiB on every GPU twice a second rarely cross one:
    each model's pick, 193 of them at 8 GPUs x 200 models, was about 1.4 ms of each such scrape
    (benchmarks/RESULTS.md, "Readings moving twice a second")."""

    needs: Mapping[int, tuple[int, ...]]  # per GPU, every need compared with its free memory, sorted
    # per model: the GPUs whose side its pick reads (an itemgetter over ``sides``), and those whose free memory
    by_model: Mapping[str, tuple[Callable[[Mapping[int, int]], object], tuple[int, ...]]]

    @classmethod
    def of(cls, node: NodeFit, fixes: Mapping[str, FixPlan]) -> PickKeys:
        needs: dict[int, set[int]] = {}
        by_model = {}
        for fit in node.models:
            fix_plan = fixes.get(fit.name)
            if fix_plan is None:
                continue
            own = [*fix_plan.needs(), *(start_needs(fit) or ())]
            for index, need in own:
                needs.setdefault(index, set()).add(need)
            gpus = sorted({index for index, _ in own})
            exact = tuple(f.index for f in fit.per_gpu if f.index in fit.gpus) if fit.schedulable else ()
            by_model[fit.name] = (itemgetter(*gpus) if gpus else _nothing, exact)
        return cls({index: tuple(sorted(values)) for index, values in needs.items()}, by_model)

    def sides(self, free: Mapping[int, int]) -> dict[int, int]:
        """Per GPU, how many of its needs ``free`` reaches (``free >= need`` holds for exactly those)."""
        return {index: bisect_right(needs, free.get(index, 0)) for index, needs in self.needs.items()}

    def key(self, model: str, sides: Mapping[int, int], free: Mapping[int, int]) -> tuple:
        side_of, exact = self.by_model[model]
        return side_of(sides), tuple(free.get(index, 0) for index in exact) if exact else ()


def _nothing(_sides) -> tuple:
    return ()


class Planner:
    """Turns inputs into plans, one at a time in one worker thread, and keeps the latest."""

    def __init__(self, gpu_detail: GpuDetail = "all") -> None:
        self._gpu_detail = gpu_detail
        # The last scrape's body but the exporter's own series, by what it was made of: a scrape that
        # finds nothing read or decided changed sends the same bytes (no family built, no render).
        self.last_body: LastOne[bytes] = LastOne()
        # The last verdicts document (/api/v1/fit, the explain page), by what it was made of.
        self.last_report: LastOne[dict] = LastOne()
        # Each document made from that report (the explain page's HTML, /api/v1/fit's JSON), by the
        # same key: the page of 200 models takes about 100 ms to build (benchmarks/RESULTS.md, "What a
        # user sees": `/` p50 2-4 ms against a max of 79-127 ms, the first build).
        self.last_documents: dict[str, LastOne[bytes]] = {}
        # gzip of the last scrape's content (its bytes, by value) and the compressor's state after it:
        # Prometheus asks for gzip at every scrape, and compressing the 1.7 MB of 8 GPUs x 200 models
        # takes 12 ms at level 1 (benchmarks/RESULTS.md, "Issue 26, the memo layers"); a scrape then
        # compresses only its tail.
        self.last_gzip: LastOne[tuple[bytes, object]] = LastOne()
        # The last inputs, by what they are built from (the models' source, the GPUs' sizes, the engines'
        # answers on /version): a model whose engine answered is a new ``ModelSpec`` at each build, and
        # comparing 200 of them field by field with the current plan's cost 1.1 ms a scrape, a steady
        # scrape's 0.3 ms becoming 1.5 (benchmarks/RESULTS.md, "Answered versions").
        self.last_inputs: LastOne[NodeInputs] = LastOne()
        # The running models' prediction-beside-reality series, rendered, by the plan and the vLLM readings
        # they compare: the readings change once a poll, and rendering 200 instances' series took 2.5 ms of
        # a scrape's 3.2 (benchmarks/RESULTS.md, "Answered versions").
        self.last_instances: LastOne[bytes] = LastOne()
        self._lock = threading.Lock()
        self._version = 0
        self._current: Plan | None = None
        self._building: tuple[NodeInputs, Future[Plan]] | None = None
        self.closed = False  # close() was called: the worker thread is gone
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")

    def inputs(self, models: LoadedManifest | NodeModels | None, snapshot: NodeSnapshot,
               answers: Mapping[str, VersionAnswer] | None = None) -> NodeInputs:
        """``node_inputs`` of these, the same object while what they are built from compares equal."""
        key = (models, gpu_sizes(snapshot), dict(answers or {}))
        return self.last_inputs.of(key, lambda: node_inputs(models, snapshot, answers))

    def submit(self, inputs: NodeInputs, snapshot: NodeSnapshot) -> Future[Plan]:
        """The plan for ``inputs``: done at once when it is the current one, else being built."""
        with self._lock:
            current = self._current
            if current is not None and (current.inputs is inputs or current.inputs == inputs):
                # Equal values: keep the newer object, so that the next comparison stops at identity.
                current.inputs = inputs
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
        fixes = _fixes(plan, stale)
        if fixes is not None:
            plan.pick_keys = PickKeys.of(plan.node, fixes)
        plan.fixes = fixes
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
                plan.pick_keys = PickKeys.of(plan.node, fixes)
                _first_picks(plan, fixes)
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
    return Plan(version, inputs, node, ModelFamilies(node, gpu_detail), snapshot.gpus)


def _settle_memory() -> None:
    """The plan lives until the inputs change: keep it out of the cyclic collector, whose full passes
    over it showed up as 20-30 ms pauses in scrape latency. The young generations are collected first
    (about a millisecond); a full collection would hold the interpreter for 40-65 ms at 8x200-16x500,
    so cycles already in the oldest generation are frozen with the plan. Acyclic garbage, superseded
    plans included, is freed by reference counting, frozen or not."""
    gc.collect(1)
    gc.freeze()


def _first_picks(plan: Plan, fixes: Mapping[str, FixPlan]) -> None:
    """Each model's fixes on the free memory the plan was made with (readings rarely moved since),
    picked before ``plan.fixes`` is set: no scrape reads ``_picks`` until then."""
    free = free_memory(NodeSnapshot(driver_version="", gpus=plan.gpus))
    keys = plan.pick_keys
    sides = keys.sides(free)
    for fit in plan.node.models:
        if fit.name in fixes:
            try:
                plan._pick(fit, fixes[fit.name], free, keys.key(fit.name, sides, free))
            except Exception:  # noqa: BLE001 - the scrape picks this one itself
                log.exception("picking the fixes of model %s failed", fit.name)


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
