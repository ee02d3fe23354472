"""The reference for the fix search: every knob probed over the whole grid with the full rulebooks.

This is the search vram-exporter shipped before the fixes were planned from the rulebooks' algebra
(vram_exporter/rules/fixes.py); tests/rules/test_fix_search.py holds the two equal on random nodes.

For each knob the smallest change that makes the model both schedulable (GPUStack) and
startable (vLLM) on this node is searched for, holding everything else as it is; where no
value of a knob works, that is said too (the seed scenario: with 1 GiB reserved, no
--gpu-memory-utilization places the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from vram_exporter.rules import gpustack
from vram_exporter.rules.fixes import Fix
from vram_exporter.rules.model import Cluster, ModelSpec
from vram_exporter.rules.node import ModelFit, NodeFit, evaluate, with_free
from vram_exporter.rules.flags import with_param
from vram_exporter.snapshot import GpuReading
from vram_exporter.units import GIB, gib

GMU_GRID = tuple(round(0.50 + i / 100, 2) for i in range(50))  # 0.50 .. 0.99


def find_fixes(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> list[Fix]:
    if fit.fits or fit.error or fit.placed:
        return []
    search = _Search(model, fit, node.cluster, [g for g in gpus if g.up])
    fixes: list[Fix | None] = []
    if not fit.schedulable:
        single = [search.reservation(), search.utilization()]
        fixes += single
        if not any(f and f.works for f in single):
            fixes.append(search.reservation_and_utilization())
        fixes += [search.claim(), search.pin()]
    else:
        fixes += [search.utilization(), search.max_model_len(), search.kv_cache_dtype(), search.other_processes()]
    fixes.append(search.gpu_count())
    return [f for f in fixes if f is not None]


class _Search:
    def __init__(self, model: ModelSpec, fit: ModelFit, cluster: Cluster, gpus: list[GpuReading]):
        self.model, self.fit, self.cluster, self.gpus = model, fit, cluster, gpus

    def _fits(self, model: ModelSpec | None = None, cluster: Cluster | None = None) -> ModelFit:
        fit = evaluate(model or self.model, cluster or self.cluster, self.gpus, self.fit.context)
        return with_free(fit, {gpu.index: gpu.memory.free for gpu in self.gpus})

    def _with(self, name: str, value: object) -> ModelSpec:
        return replace(self.model, backend_parameters=with_param(self.model.backend_parameters, name, value))

    def _nearest_gmu(self, model: ModelSpec, cluster: Cluster | None = None) -> float | None:
        current = self.fit.gmu_gpustack
        working = [g for g in GMU_GRID if self._fits(_gmu(model, g), cluster).fits]
        return min(working, key=lambda g: (abs(g - current), g)) if working else None

    def utilization(self) -> Fix:
        g = self._nearest_gmu(self.model)
        if g is None:
            return Fix("gpu_memory_utilization",
                       "no value of --gpu-memory-utilization from 0.50 to 0.99 makes it fit on this node"
                       + _window_note(self.fit), False)
        return Fix("gpu_memory_utilization",
                   f"set --gpu-memory-utilization={g} (dashes, so GPUStack and vLLM both read it)", True)

    def reservation(self) -> Fix | None:
        current = self.cluster.system_reserved_vram
        if current == 0:
            return None
        for reserved in range(current - GIB, -1, -GIB):
            if self._fits(cluster=replace(self.cluster, system_reserved_vram=reserved)).fits:
                return Fix("system_reserved_vram",
                           f"lower the worker's --system-reserved vram from {current // GIB} to {reserved // GIB} GiB",
                           True)
        return Fix("system_reserved_vram",
                   f"lowering the worker's --system-reserved vram alone does not help, even to 0 "
                   f"(now {current // GIB} GiB)", False)

    def reservation_and_utilization(self) -> Fix | None:
        current = self.cluster.system_reserved_vram
        for reserved in range(current - GIB, -1, -GIB) if current else ():
            cluster = replace(self.cluster, system_reserved_vram=reserved)
            g = self._nearest_gmu(self.model, cluster)
            if g is not None:
                return Fix("system_reserved_vram+gpu_memory_utilization",
                           f"lower --system-reserved vram to {reserved // GIB} GiB and set "
                           f"--gpu-memory-utilization={g}", True)
        return None

    def claim(self) -> Fix | None:
        # The largest claim test (1) admits on the roomiest GPU; the claim is GPUStack's
        # bookkeeping only: vLLM still takes its budget, which the re-check includes.
        for g in [self.fit.gmu_gpustack] + sorted(GMU_GRID, key=lambda x: abs(x - self.fit.gmu_gpustack)):
            model = _gmu(self.model, g) if g != self.fit.gmu_gpustack else self.model
            claim = self._largest_claim(g)
            if claim <= 0:
                continue
            with_claim = replace(model, env={**self.model.env, gpustack.ENV_CLAIM: str(claim)})
            if self._fits(with_claim).fits:
                also = "" if model is self.model else f" with --gpu-memory-utilization={g}"
                return Fix("vram_claim", f"set {gpustack.ENV_CLAIM}={claim} ({gib(claim)}) or less{also}", True)
        return Fix("vram_claim", f"no {gpustack.ENV_CLAIM} makes it fit on its own", False)

    def _largest_claim(self, g: float) -> int:
        """The largest E that test (1) admits: over the N GPUs the instance needs, the roomiest ones."""
        n = self.model.gpustack.world_size or 1
        if self.cluster.scheduler == "gpustack-0.6":
            sizes = [gpustack.allocatable_bytes(gpustack.reported_total(gpu.memory.total),
                                                self.fit.context.claims.get(gpu.index, 0),
                                                self.cluster.system_reserved_vram) for gpu in self.gpus]
        else:
            sizes = [gpustack.claim_bytes(gpustack.reported_total(gpu.memory.total), g) for gpu in self.gpus]
        return sum(sorted(sizes, reverse=True)[:n])

    def pin(self) -> Fix | None:
        if self.model.replicas != 1:
            return None
        for gpu in self.gpus:
            pinned = replace(self.model, pinned_gpus=(gpu.index,))
            if self._fits(pinned).fits:
                return Fix("gpu_selector", f"pin it to GPU {gpu.index} (gpu_selector): GPUStack accepts a single "
                           "replica as overcommit, and vLLM would start there", True)
        return None

    def max_model_len(self) -> Fix | None:
        fits_len = min((f.max_model_len for f in self.fit.per_gpu if f.index in self.fit.gpus), default=0)
        if self.fit.startable or fits_len <= 0:
            return None if self.fit.startable else Fix(
                "max_model_len", "no context length fits: the KV cache has no room at all", False)
        if self._fits(replace(self.model, max_model_len=fits_len)).fits:
            return Fix("max_model_len", f"set --max-model-len={fits_len} (the longest that fits; now "
                       f"{self.fit.max_model_len})", True)
        return Fix("max_model_len", "shortening the context alone does not help", False)

    def kv_cache_dtype(self) -> Fix | None:
        if self.model.vllm.kv_cache_dtype.startswith("fp8") or self.fit.bytes_per_token == 0:
            return None
        works = self._fits(self._with("kv-cache-dtype", "fp8")).fits
        return Fix("kv_cache_dtype", "set --kv-cache-dtype=fp8 (half the KV bytes per token)" if works
                   else "--kv-cache-dtype=fp8 alone does not make it fit", works)

    def other_processes(self) -> Fix | None:
        short = [(f.index, -f.headroom["vllm_free_memory"]) for f in self.fit.per_gpu
                 if f.index in self.fit.gpus and f.headroom.get("vllm_free_memory", 0) < 0]
        if not short:
            return None
        index, missing = max(short, key=lambda s: s[1])
        return Fix("other_processes", f"free {gib(missing)} more on GPU {index} (other processes hold it), or lower "
                   "--gpu-memory-utilization", True)

    def gpu_count(self) -> Fix | None:
        current = self.model.vllm.tensor_parallel_size
        for size in (2, 4, 8, 16):
            if size <= current or size > len(self.gpus):
                continue
            if gpustack.tp_divisibility_problem(self.model.arch, size):
                continue
            if self._fits(self._with("tensor-parallel-size", size)).fits:
                return Fix("tensor_parallel_size", f"spread it over {size} GPUs: --tensor-parallel-size={size}", True)
        return None


def _gmu(model: ModelSpec, g: float) -> ModelSpec:
    return replace(model, backend_parameters=with_param(model.backend_parameters, "gpu-memory-utilization", g))


def _window_note(fit: ModelFit) -> str:
    if not fit.per_gpu:
        return ""
    best = max(fit.per_gpu, key=lambda f: f.gmu_max - f.gmu_min)
    return (f": on GPU {best.index} it would need at least {best.gmu_min:.4f} "
            f"(GPUStack's estimate, vLLM's KV cache) but at most {best.gmu_max:.4f} passes "
            "(GPUStack's allocatable, free memory)")
