"""The fix search for SGLang and custom-backend models (fixes.py hands them here, once).

The same knobs, the backend's own flags, each value confirmed by the full rulebooks
(backend_fit.evaluate) with everything else held: SGLang's --mem-fraction-static (the fraction both
GPUStack and SGLang then read), --context-length, --kv-cache-dtype fp8_e4m3 and --tp-size; a custom
backend's declared fraction; the worker's reservation; pinning (GPUStack's manual selection). Neither
backend's checks read live free memory here, so every option holds on any reading (needs ()).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ...snapshot import GpuReading
from ...units import GIB
from . import backend_fit
from .. import gpustack
from ..fixes import FixPlan, Fix, Knob, Option
from ..model import Cluster, ModelSpec
from ..node import ModelFit, NodeFit
from ..flags import with_param

FRACTIONS = tuple(round(0.30 + i / 100, 2) for i in range(68))  # 0.30 .. 0.97
TP_SIZES = (2, 4, 8)


def plan_fixes(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> FixPlan:
    search = _Search(model, fit, node.cluster, [g for g in gpus if g.up])
    knobs = {"reservation": search.reservation(), "utilization": search.fraction(),
             "reservation_and_utilization": Knob((), None), "claim": Knob((), None), "pin": search.pin(),
             "max_model_len": search.context_length(), "kv_cache_dtype": search.kv_cache_dtype(),
             "gpu_count": search.tp_size()}
    return FixPlan(fit.schedulable, knobs)


class _Search:
    def __init__(self, model: ModelSpec, fit: ModelFit, cluster: Cluster, gpus: list[GpuReading]):
        self.model, self.fit, self.cluster, self.gpus = model, fit, cluster, gpus
        self.sglang = model.backend == "sglang"

    def _fits(self, model: ModelSpec, cluster: Cluster | None = None) -> tuple[tuple[int, int], ...] | None:
        """None: it does not fit, free memory aside; else the free memory it needs on its GPUs."""
        fit = backend_fit.evaluate(model, cluster or self.cluster, self.gpus, self.fit.context)
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

    def fraction(self) -> Knob:
        flag = "mem-fraction-static" if self.sglang else "gpu-memory-utilization"
        current = self.fit.gmu_gpustack or 0.9
        ordered = sorted(FRACTIONS, key=lambda f: (abs(f - current), f))
        candidates = ((Fix("gpu_memory_utilization", f"set --{flag}={f}" + (
            " (GPUStack books it and SGLang takes it: both read the same)" if self.sglang else ""), True),
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

    def context_length(self) -> Knob:
        if not self.sglang or not self.fit.max_model_len:
            return Knob((), None)
        lengths = []
        n = self.fit.max_model_len // 2
        while n >= 1024:
            lengths.append(n)
            n //= 2
        candidates = ((Fix("max_model_len", f"set --context-length {n}", True),
                       replace(self.model, max_model_len=n), None) for n in lengths)
        return self._knob(candidates, None)

    def kv_cache_dtype(self) -> Knob:
        if not self.sglang:
            return Knob((), None)
        model = replace(self.model, backend_parameters=with_param(self.model.backend_parameters, "kv-cache-dtype",
                                                                  "fp8_e4m3"))
        return self._knob([(Fix("kv_cache_dtype", "set --kv-cache-dtype fp8_e4m3 (halves the KV pool's bytes per "
                                "token)", True), model, None)], None)

    def tp_size(self) -> Knob:
        if not self.sglang:
            return Knob((), None)
        candidates = ((Fix("tensor_parallel_size", f"set --tp-size {tp} (SGLang splits weights and KV heads over "
                           f"{tp} GPUs)", True),
                       replace(self.model, backend_parameters=_tp(self.model.backend_parameters, tp)), None)
                      for tp in TP_SIZES if tp <= len(self.gpus))
        return self._knob(candidates, None)


def _tp(parameters, tp: int) -> tuple[str, ...]:
    """Every TP spelling replaced: GPUStack reads the first of --tp-size/--tensor-parallel-size/--tp, SGLang the
    last; written as both --tp-size and --tensor-parallel-size, they agree."""
    return with_param(with_param(parameters, "tp-size", tp), "tensor-parallel-size", tp)
