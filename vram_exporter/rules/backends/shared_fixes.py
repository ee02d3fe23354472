"""The fix search for the backends whose fit is shared_fit.py's (SGLang, custom): each value confirmed by
the backend's full rulebook (its fit.py ``evaluate``) with everything else held. Neither backend's checks
read live free memory here, so every option holds on any reading (needs ()). The knobs every such backend
has are here (its booked fraction, the worker's reservation, pinning); its own are in its fixes.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ...snapshot import GpuReading
from ...units import GIB
from .. import gpustack
from ..flags import with_param
from ..model import Cluster, ModelSpec
from ..verdicts import Context, Fix, Knob, ModelFit, Option

FRACTIONS = tuple(round(0.30 + i / 100, 2) for i in range(68))  # 0.30 .. 0.97
NO_KNOB = Knob((), None)

Evaluate = Callable[[ModelSpec, Cluster, Sequence[GpuReading], Context], ModelFit]


class Search:
    def __init__(self, evaluate: Evaluate, model: ModelSpec, fit: ModelFit, cluster: Cluster,
                 gpus: list[GpuReading]):
        self.evaluate, self.model, self.fit, self.cluster, self.gpus = evaluate, model, fit, cluster, gpus

    def _fits(self, model: ModelSpec, cluster: Cluster | None = None) -> tuple[tuple[int, int], ...] | None:
        """None: it does not fit, free memory aside; else the free memory it needs on its GPUs."""
        fit = self.evaluate(model, cluster or self.cluster, self.gpus, self.fit.context)
        if fit.error or not (fit.schedulable and fit.startable):
            return None
        return tuple((f.index, f.free_need) for f in fit.per_gpu if f.index in fit.gpus and f.free_need is not None)

    def _knob(self, candidates, otherwise: Fix | None) -> Knob:
        """Every working value, in the order given: the first whose free memory need holds is picked."""
        options = []
        for fix, model, cluster in candidates:
            needs = self._fits(model, cluster)
            if needs is not None:
                options.append(Option(fix, needs))
                if not needs:
                    break  # holds on any reading: nothing after it is ever picked
        return Knob(tuple(options), otherwise)

    def fraction(self, flag: str, why: str = "") -> Knob:
        """``--flag`` (the fraction GPUStack books) over the grid, nearest the current value first; ``why``
        is said after each value."""
        current = self.fit.gmu_gpustack or 0.9
        ordered = sorted(FRACTIONS, key=lambda f: (abs(f - current), f))
        candidates = ((Fix("gpu_memory_utilization", f"set --{flag}={f}" + why, True),
            replace(self.model, backend_parameters=with_param(self.model.backend_parameters, flag, f)), None)
            for f in ordered)
        return self._knob(candidates, Fix("gpu_memory_utilization",
                                          f"no value of --{flag} from 0.30 to 0.97 makes it fit on this node", False))

    def reservation(self) -> Knob:
        current = self.cluster.system_reserved_vram
        candidates = ((Fix("system_reserved_vram", f"lower the worker's --system-reserved vram from {current // GIB} "
                           f"to {r // GIB} GiB", True), self.model, replace(self.cluster, system_reserved_vram=r))
                      for r in gpustack.reservations_below(current, (g.memory.total for g in self.gpus)))
        return self._knob(candidates, None)

    def pin(self) -> Knob:
        candidates = ((Fix("gpu_selector", f"pin it to GPU {g.index} (gpu_selector): GPUStack accepts a single replica "
                           "as overcommit", True), replace(self.model, pinned_gpus=(g.index,), replicas=1), None)
                      for g in self.gpus) if self.model.replicas == 1 else ()
        return self._knob(candidates, None)
