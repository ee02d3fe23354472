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
from .model import ModelSpec
from .node import free_headroom, startable, with_free
from .verdicts import Fix, Knob, ModelFit, NodeFit, Option  # noqa: F401 - the fix search's vocabulary, named here too


@dataclass(frozen=True, slots=True)
class FixPlan:
    """A model's fixes for every free memory: static, computed once per plan."""

    schedulable: bool
    knobs: Mapping[str, Knob]

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
        if fit.error or fit.placed or (fit.schedulable and starts):
            return []
        knobs = self.knobs
        fixes: list[Fix | None] = []
        if not self.schedulable:
            single = [knobs["reservation"].pick(free), _utilization(knobs["utilization"], free, window_note)]
            fixes += single
            if not any(f and f.works for f in single):
                fixes.append(knobs["reservation_and_utilization"].pick(free))
            fixes += [knobs["claim"].pick(free), knobs["pin"].pick(free)]
        else:
            fixes += [_utilization(knobs["utilization"], free, window_note),
                      None if starts else knobs["max_model_len"].pick(free),
                      knobs["kv_cache_dtype"].pick(free), _other_processes(fit, free)]
        fixes.append(knobs["gpu_count"].pick(free))
        return [f for f in fixes if f is not None]


NO_FIXES = FixPlan(True, {})


def find_fixes(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> list[Fix]:
    """The fixes for ``fit`` on the free memory of ``gpus`` (one-shot: ``check``, tests)."""
    free = {gpu.index: gpu.memory.free for gpu in gpus if gpu.up}
    return plan_fixes(model, fit, node, gpus).pick(with_free(fit, free), free)


def plan_fixes(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> FixPlan:
    """Every knob's options for ``fit`` (static parts only are read; free memory is never)."""
    if fit.error or fit.placed:
        return NO_FIXES
    return FixPlan(fit.schedulable, backends.of(model.backend).fixes.knobs(model, fit, node, gpus))


def _utilization(knob: Knob, free: Mapping[int, int], window_note) -> Fix | None:
    """The nearest working g; else, where the caller wants it said (``window_note``), why none does."""
    found = knob.pick(free)
    if found is not None or window_note is None:
        return found
    return Fix("gpu_memory_utilization",
               "no value of --gpu-memory-utilization from 0.50 to 0.99 makes it fit on this node" + window_note(),
               False)


def _other_processes(fit: ModelFit, free: Mapping[int, int]) -> Fix | None:
    short = [(f.index, -headroom) for f in fit.per_gpu
             if f.index in fit.gpus and (headroom := free_headroom(f, free.get(f.index, 0))) is not None
             and headroom < 0]
    if not short:
        return None
    index, missing = max(short, key=lambda s: s[1])
    return Fix("other_processes", f"free {gib(missing)} more on GPU {index} (other processes hold it), or lower "
               "--gpu-memory-utilization", True)


def _window_note(fit: ModelFit) -> str:
    if not fit.per_gpu:
        return ""
    best = max(fit.per_gpu, key=lambda f: f.gmu_max - f.gmu_min)
    return (f": on GPU {best.index} it would need at least {best.gmu_min:.4f} "
            f"(GPUStack's estimate, vLLM's KV cache) but at most {best.gmu_max:.4f} passes "
            "(GPUStack's allocatable, free memory)")
