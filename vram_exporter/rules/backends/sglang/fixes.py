"""The fix search for an SGLang model: its own flags, each value confirmed by SGLang's full rulebook
(fit.py) through the shared search (rules/backends/shared_fixes.py): --mem-fraction-static (the fraction
both GPUStack and SGLang then read), --context-length, --kv-cache-dtype fp8_e4m3 and --tp-size, the
worker's reservation and pinning (GPUStack's manual selection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ....snapshot import GpuReading
from ...flags import with_param
from ...model import ModelSpec
from ...verdicts import Fix, Knob, ModelFit, NodeFit
from ..shared_fixes import NO_KNOB, Search
from . import fit as sglang_fit

TP_SIZES = (2, 4, 8)


def knobs(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> dict[str, Knob]:
    search = _SglangSearch(sglang_fit.FIT.evaluate, model, fit, node.cluster, [g for g in gpus if g.up])
    return {"reservation": search.reservation(),
            "utilization": search.fraction("mem-fraction-static",
                                           " (GPUStack books it and SGLang takes it: both read the same)"),
            "reservation_and_utilization": NO_KNOB, "claim": NO_KNOB, "pin": search.pin(),
            "max_model_len": search.context_length(), "kv_cache_dtype": search.kv_cache_dtype(),
            "gpu_count": search.tp_size()}


class _SglangSearch(Search):
    def context_length(self) -> Knob:
        if not self.fit.max_model_len:
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
        model = replace(self.model, backend_parameters=with_param(self.model.backend_parameters, "kv-cache-dtype",
                                                                  "fp8_e4m3"))
        return self._knob([(Fix("kv_cache_dtype", "set --kv-cache-dtype fp8_e4m3 (halves the KV pool's bytes per "
                                "token)", True), model, None)], None)

    def tp_size(self) -> Knob:
        candidates = ((Fix("tensor_parallel_size", f"set --tp-size {tp} (SGLang splits weights and KV heads over "
                           f"{tp} GPUs)", True),
                       replace(self.model, backend_parameters=_tp(self.model.backend_parameters, tp)), None)
                      for tp in TP_SIZES if tp <= len(self.gpus))
        return self._knob(candidates, None)


def _tp(parameters, tp: int) -> tuple[str, ...]:
    """Every TP spelling replaced: GPUStack reads the first of --tp-size/--tensor-parallel-size/--tp, SGLang the
    last; written as both --tp-size and --tensor-parallel-size, they agree."""
    return with_param(with_param(parameters, "tp-size", tp), "tensor-parallel-size", tp)
