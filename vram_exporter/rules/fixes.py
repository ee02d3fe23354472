"""Which knob fixes a model that will not fit, computed from the rulebooks, never canned.

For each knob the smallest change that makes the model both schedulable (GPUStack) and
startable (vLLM) on this node is found, holding everything else as it is; where no value of a
knob works, that is said too (the seed scenario: with 1 GiB reserved, no
--gpu-memory-utilization places the model).

The search is split the way the fit is. ``plan_fixes`` needs the static fit only (GPU sizes, the
manifest): for each knob it lists, in the order a person would prefer them, the values that make
the model fit free memory aside, each with the free memory vLLM's start-up check would need on the
GPUs it lands on. ``FixPlan.pick`` then takes the first value whose needs the free memory of the
moment covers, so a reading that moves costs a few comparisons, not a search.

Each backend searches its own knobs (rules/backends/*/fixes.py ``knobs``); this module holds the plan
and the pick, alike for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..snapshot import GpuReading
from ..units import gib
from . import backends
from .backends.vllm.fixes import beyond_booking  # the one engine whose take is judged (verdicts.BOOKING_CHECK)
from .model import ModelSpec
from .node import free_headroom, startable, top_moves, with_free
from .verdicts import Fix, Knob, ModelFit, NodeFit, Option  # noqa: F401 - the fix search's vocabulary, named here too


@dataclass(frozen=True, slots=True)
class FixPlan:
    """A model's fixes for every free memory: static, computed once per plan."""

    schedulable: bool
    knobs: Mapping[str, Knob]
    # The engine versions the fixes this plan writes itself hold for ("vLLM 0.32-0.33"; the backend's
    # ``holds_for``, which its own knobs say too); "" where the backend says none.
    said_for: str = ""

    def pick(self, live: ModelFit, free: Mapping[int, int]) -> list[Fix]:
        """The fixes for ``live`` (the model's fit with this free memory applied), those that do not
        work included, each saying why."""
        return self._choose(live, free, live.startable, lambda: _window_note(live))

    def working(self, fit: ModelFit, free: Mapping[int, int]) -> list[Fix]:
        """The fixes that work, for the static ``fit`` on ``free``: ``pick``'s, without building the
        live fit (the metrics export only these, at every change of a reading)."""
        return [f for f in self._choose(fit, free, startable(fit, free), None) if f.works]

    def needs(self) -> Iterator[tuple[int, int]]:
        """Every (GPU, free bytes) a pick compares free memory with (``Option.holds``): where free memory
        moves on one side of all of them, every knob picks what it picked."""
        for knob in self.knobs.values():
            for option in knob.options:
                yield from option.needs

    def _choose(self, fit: ModelFit, free: Mapping[int, int], starts: bool, window_note) -> list[Fix]:
        if fit.error:
            return []
        knobs = self.knobs
        if fit.placed or (fit.schedulable and starts):  # it fits: only what keeps it within its booking
            return [f for name in BOOKING_KNOBS if (f := _pick(knobs, name, free)) is not None]
        said = f" [{self.said_for}]" if self.said_for else ""
        fixes: list[Fix | None] = []
        if not self.schedulable:
            single = [knobs["reservation"].pick(free), _utilization(knobs["utilization"], free, window_note, said)]
            fixes += single
            if not any(f and f.works for f in single):
                fixes.append(knobs["reservation_and_utilization"].pick(free))
            fixes += [_pick(knobs, "unset_utilization", free), knobs["claim"].pick(free), knobs["pin"].pick(free)]
        else:
            fixes += [_utilization(knobs["utilization"], free, window_note, said),
                      _pick(knobs, "unset_utilization", free),
                      None if starts else knobs["max_model_len"].pick(free),
                      _pick(knobs, "kv_cache_memory_bytes", free),
                      knobs["kv_cache_dtype"].pick(free), _pick(knobs, "max_num_seqs", free),
                      _other_processes(fit, free, said)]
        fixes.append(knobs["gpu_count"].pick(free))
        return [f for f in fixes if f is not None]


def _pick(knobs: Mapping[str, Knob], name: str, free: Mapping[int, int]) -> Fix | None:
    """A knob only some backends or versions have (vLLM 0.34's extensible KV cache's: vllm/fixes.py)."""
    knob = knobs.get(name)
    return None if knob is None else knob.pick(free)


NO_FIXES = FixPlan(True, {})
# Where the engine holds more than GPUStack booked beside another instance (vllm/fixes.py ``booking``).
BOOKING_KNOBS = ("booking_utilization", "booking_kv_cache")


def find_fixes(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> list[Fix]:
    """The fixes for ``fit`` on the free memory of ``gpus`` (one-shot: ``check``, tests)."""
    free = {gpu.index: gpu.memory.free for gpu in gpus if gpu.up}
    return plan_fixes(model, fit, node, gpus).pick(with_free(fit, free), free)


def plan_fixes(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> FixPlan:
    """Every knob's options for ``fit`` (static parts only are read; free memory is never). A running instance
    has fixes only where its engine holds more than GPUStack booked beside another instance."""
    if fit.error or (fit.placed and not beyond_booking(fit)):
        return NO_FIXES
    fixes = backends.of(model.backend).fixes
    # A backend whose fixes depend on the engine's version says which (vllm/fixes.py holds_for); optional.
    holds_for = getattr(fixes, "holds_for", None)
    return FixPlan(fit.schedulable, fixes.knobs(model, fit, node, gpus),
                   holds_for(model, node.cluster) if holds_for else "")


def _utilization(knob: Knob, free: Mapping[int, int], window_note, said: str = "") -> Fix | None:
    """The nearest working g; else, where the caller wants it said (``window_note``), why none does."""
    found = knob.pick(free)
    if found is not None or window_note is None:
        return found
    return Fix("gpu_memory_utilization",
               "no value of --gpu-memory-utilization from 0.50 to 0.99 makes it fit on this node" + window_note()
               + said, False)


def _other_processes(fit: ModelFit, free: Mapping[int, int], said: str = "") -> Fix | None:
    """Where vLLM's start-up check on free memory fails (before 0.34, or 0.34 with the KV cache sized by flags:
    vllm/v1/worker/utils.py::request_memory raises it only without the extensible KV cache, and no free memory
    is needed otherwise, GpuFit.free_need None)."""
    short = [(f.index, -headroom) for f in fit.per_gpu
             if f.index in fit.gpus and (headroom := free_headroom(f, free.get(f.index, 0))) is not None
             and headroom < 0]
    if not short:
        return None
    index, missing = max(short, key=lambda s: s[1])
    return Fix("other_processes", f"free {gib(missing)} more on GPU {index} (other processes hold it), or lower "
               "--gpu-memory-utilization" + said, True)


def _window_note(fit: ModelFit) -> str:
    if not fit.per_gpu:
        return ""
    best = max(fit.per_gpu, key=lambda f: f.gmu_max - f.gmu_min)
    return (f": on GPU {best.index} it would need at least {best.gmu_min:.4f} "
            f"(GPUStack's estimate, vLLM's KV cache) but at most {best.gmu_max:.4f} passes "
            f"(GPUStack's allocatable{', free memory' if top_moves(best) else ''})")  # 0.34: not free memory
