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
    return {"reservation": search.reservation(), "utilization": search.named_then_grid(),
            "reservation_and_utilization": NO_KNOB, "claim": NO_KNOB, "pin": search.pin(),
            "max_model_len": search.context_length(), "kv_cache_dtype": search.kv_cache_dtype(),
            "gpu_count": search.tp_size()}


class _SglangSearch(Search):
    def named_then_grid(self) -> Knob:
        """SGLang's own "Raise --mem-fraction-static above X" (0.5.18 on, where the weights leave no KV memory),
        the least value above X, first where it works; then the grid, nearest the current value first."""
        grid = self.fraction("mem-fraction-static", " (GPUStack books it and SGLang takes it: both read the same)")
        engine = sglang_fit.Engine(self.model, self.cluster, self.gpus)
        named = self._named(engine)
        if named is None or named >= 1:
            return grid
        fix = Fix("gpu_memory_utilization", f"set --mem-fraction-static={named} (SGLang {engine.version} asks to "
                  f"raise it above {named - 0.001:.3f}: the weights leave it no KV memory)", True)
        first = self._knob([(fix, replace(self.model, backend_parameters=with_param(
            self.model.backend_parameters, "mem-fraction-static", named)), None)], None)
        return Knob(first.options + tuple(o for o in grid.options if o.fix.action != fix.action), grid.otherwise)

    def _named(self, engine: sglang_fit.Engine) -> float | None:
        """The least fraction above the largest X SGLang names on the model's GPUs (None: it names none)."""
        if not self.fit.gpus:
            return None
        named = [x for f in self.fit.per_gpu if f.index in self.fit.gpus
                 if (x := engine.named_fraction(f)) is not None]
        return round(max(named) + 0.001, 3) if named else None

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
