"""The reference for the fix search: every knob probed over the whole grid with the full rulebooks.

This is the search vram-exporter shipped before the fixes were planned from the rulebooks' algebra
(vram_exporter/rules/fixes.py); tests/rules/test_fix_search.py holds the two equal on random nodes.

For each knob the smallest change that makes the model both schedulable (GPUStack) and
startable (vLLM) on this node is searched for, holding everything else as it is; where no
value of a knob works, that is said too (the seed scenario: with 1 GiB reserved, no
--gpu-memory-utilization places the model).

vLLM 0.34's extensible KV cache (rules/backends/vllm/versions.py) has knobs of its own, tried here by value
on the full fit too: the flags removed, --kv-cache-memory-bytes searched for the least whole MiB the KV check
passes (where vLLM's take then fits in the memory left to it), --max-num-seqs (said, not sized). Where vLLM
holds more than GPUStack booked beside another instance, the node is fitted again with each value tried
(``specs``: every model of the node) and its booking check read: --gpu-memory-utilization at GPUStack's
booking, and the largest --kv-cache-memory-bytes that keeps it within its claim. Every vLLM fix ends with the
versions it holds for (the wording the planned search writes: vllm/fixes.py ``holds_for``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from vram_exporter.rules import gpustack
from vram_exporter.rules.backends.vllm import versions
from vram_exporter.rules.backends.vllm.fixes import holds_for
from vram_exporter.rules.fixes import Fix
from vram_exporter.rules.model import Cluster, ModelSpec
from vram_exporter.rules.node import ModelFit, NodeFit, evaluate, fit_node, top_moves, with_free
from vram_exporter.rules.flags import with_param
from vram_exporter.rules.verdicts import BOOKING_CHECK, BOOKING_TOLERANCE
from vram_exporter.snapshot import GpuReading, NodeSnapshot
from vram_exporter.units import GIB, MIB, gib

GMU_GRID = tuple(round(0.50 + i / 100, 2) for i in range(50))  # 0.50 .. 0.99


def find_fixes(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading],
               specs: Sequence[ModelSpec] = ()) -> list[Fix]:
    """``specs``: every model of the node, in its order (the booking check is the node's); () where none of
    them shares a GPU with ``model``."""
    if fit.error:
        return []
    search = _Search(model, fit, node.cluster, [g for g in gpus if g.up], specs)
    if fit.fits or fit.placed:
        return _said(model, node.cluster, search.booking() if _beyond_booking(fit) else [])
    fixes: list[Fix | None] = []
    if not fit.schedulable:
        single = [search.reservation(), search.utilization()]
        fixes += single
        if not any(f and f.works for f in single):
            fixes.append(search.reservation_and_utilization())
        fixes += [search.unset_utilization(), search.claim(), search.pin()]
    else:
        fixes += [search.utilization(), search.unset_utilization(), search.max_model_len(),
                  search.kv_cache_memory_bytes(), search.kv_cache_dtype(), search.max_num_seqs(),
                  search.other_processes()]
    fixes.append(search.gpu_count())
    return _said(model, node.cluster, [f for f in fixes if f is not None])


def _said(model: ModelSpec, cluster: Cluster, fixes: list[Fix]) -> list[Fix]:
    if model.backend != "vllm":
        return fixes
    return [replace(f, action=f"{f.action} [{holds_for(model, cluster)}]") for f in fixes]


def _beyond_booking(fit: ModelFit) -> bool:
    return any(f.headroom.get(BOOKING_CHECK, 0) < -BOOKING_TOLERANCE for f in fit.per_gpu if f.index in fit.gpus)


class _Search:
    def __init__(self, model: ModelSpec, fit: ModelFit, cluster: Cluster, gpus: list[GpuReading],
                 specs: Sequence[ModelSpec] = ()):
        self.model, self.fit, self.cluster, self.gpus, self.specs = model, fit, cluster, gpus, specs

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

    # --- vLLM 0.34's extensible KV cache -----------------------------------------------------------------

    def _extensible_version(self) -> bool:
        return versions.rules_for(versions.version_of(self.model, self.cluster)).extensible_kv_cache

    def unset_utilization(self) -> Fix | None:
        vp = self.model.vllm
        if not self._extensible_version() or self.cluster.vllm_default_gpu_memory_utilization is not None:
            return None
        removed = [name for name, value in (("gpu-memory-utilization", vp.gpu_memory_utilization),
                                            ("kv-cache-memory-bytes", vp.kv_cache_memory_bytes),
                                            ("num-gpu-blocks-override", vp.num_gpu_blocks_override))
                   if value is not None]
        if not removed:
            return None
        kept = tuple(p for p in self.model.backend_parameters if not any(
            p.lstrip("-").replace("_", "-").partition("=")[0] == name for name in removed))
        model = replace(self.model, backend_parameters=kept)
        spelled = "gpu_memory_utilization" if vp.spelled_with_underscore else "gpu-memory-utilization"
        flags = " and ".join("--" + (spelled if name == "gpu-memory-utilization" else name) for name in removed)
        if self._fits(model).fits:
            return Fix("unset_gpu_memory_utilization",
                       f"remove {flags}: vLLM's extensible KV cache then takes what is free on the GPU after "
                       f"warm-up (GPUStack books {model.gpustack.gpu_memory_utilization} of it)", True)
        return Fix("unset_gpu_memory_utilization", f"removing {flags} alone does not make it fit", False)

    def _kv_short(self) -> bool:
        return any(f.headroom["vllm_kv_cache"] < 0 for f in self.fit.per_gpu if f.index in self.fit.gpus)

    def kv_cache_memory_bytes(self) -> Fix | None:
        """The least whole MiB the KV check passes, searched on the verdict; more cannot help where it does
        not fit (the start-up check does not read N, the memory vLLM needs grows with it)."""
        if not self._extensible_version() or not self._kv_short():
            return None
        lo, hi = 1, 1 << 24  # MiB: 16 TiB, above any model's minimum (which may exceed every GPU)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self._kv_passes_with(mid) else (mid + 1, hi)
        model = self._with("kv-cache-memory-bytes", f"{lo}M")
        if self._fits(model).fits and self._holds(model):
            return Fix("kv_cache_memory_bytes",
                       f"set --kv-cache-memory-bytes={lo}M (the least KV cache vLLM's check passes, {gib(lo * MIB)}; "
                       "the extensible KV cache is then off and vLLM checks free memory at start-up again)", True)
        return Fix("kv_cache_memory_bytes", f"--kv-cache-memory-bytes={lo}M, the least KV cache vLLM's check "
                   "passes, does not make it fit (less fails the check, more leaves less room)", False)

    def _kv_passes_with(self, mib: int) -> bool:
        fit = self._fits(self._with("kv-cache-memory-bytes", f"{mib}M"))
        return bool(fit.gpus) and all(f.headroom["vllm_kv_cache"] >= 0 for f in fit.per_gpu if f.index in fit.gpus)

    def _holds(self, model: ModelSpec) -> bool:
        """vLLM allocates the KV cache the flag gives, beside weights and O, in the memory free now less what is
        committed before it and its CUDA context (no check of vLLM's own: it runs out of memory otherwise)."""
        fit = self._fits(model)
        free = {g.index: g.memory.free for g in self.gpus}
        return all(f.take.takes + self.cluster.vllm_context_overhead + f.committed <= free[f.index]
                   for f in fit.per_gpu if f.index in fit.gpus)

    def max_num_seqs(self) -> Fix | None:
        if not versions.rules_of(self.model, self.cluster).extensible_kv_cache or not self._kv_short():
            return None
        return Fix("max_num_seqs", "lowering --max-num-seqs (vLLM's own hint) frees CUDA graph memory these rules "
                   "do not size by it: no value is predicted to make it fit", False)

    # --- vLLM holding more than GPUStack booked, beside another instance ----------------------------------

    def _node_fit(self, model: ModelSpec) -> ModelFit:
        """``model`` in place of this one, the node fitted again: its booking check as the node says it."""
        specs = [model if s.name == self.model.name else s for s in self.specs]
        snapshot = NodeSnapshot("", tuple(self.gpus))
        return next(f for f in fit_node(snapshot, self.cluster, specs).models if f.name == self.model.name)

    def _within_booking(self, model: ModelSpec) -> bool:
        """It fits, and holds no more than its claim (the booking check's tolerance) where it held more."""
        fit = self._node_fit(model)
        return not fit.error and fit.fits and all(
            f.take is not None and f.headroom.get(BOOKING_CHECK, 0) >= -BOOKING_TOLERANCE for f in fit.per_gpu
            if f.index in self._over())

    def _over(self) -> set[int]:
        return {f.index for f in self.fit.per_gpu
                if f.index in self.fit.gpus and f.headroom.get(BOOKING_CHECK, 0) < -BOOKING_TOLERANCE}

    def booking(self) -> list[Fix]:
        booked = self.model.gpustack.gpu_memory_utilization
        needed = gib(self.fit.kv_required)
        if self._within_booking(_gmu(self.model, booked)):
            fixes = [Fix("gpu_memory_utilization", f"set --gpu-memory-utilization={booked} (what GPUStack books: "
                         "vLLM then holds no more than its claim)", True)]
        else:
            fixes = [Fix("gpu_memory_utilization", f"--gpu-memory-utilization={booked} (what GPUStack books) does "
                         f"not keep vLLM within its claim with the KV cache it needs ({needed})", False)]
        return fixes + [self._booking_kv(booked, needed)]

    def _booking_kv(self, booked: float, needed: str) -> Fix:
        """The largest whole MiB with which vLLM holds no more than its claim, searched on the node's fit; with
        the booked utilization too where vLLM would read more (its start-up check is back: no more free memory
        than GPUStack books)."""
        def with_kv(mib: int) -> tuple[ModelSpec, bool]:
            model = self._with("kv-cache-memory-bytes", f"{mib}M")
            given = model.vllm.gpu_memory_utilization
            reads = versions.rules_of(model, self.cluster).gmu(
                given if given is not None else self.cluster.vllm_default_gpu_memory_utilization)
            return (_gmu(model, booked), True) if booked < reads else (model, False)

        def beyond(mib: int) -> list[int]:
            fit = self._node_fit(with_kv(mib)[0])
            return [f.index for f in fit.per_gpu if f.index in self._over() and f.take.headroom < 0]

        lo, hi = 0, max(g.memory.total for g in self.gpus) // MIB
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if not beyond(mid) else (lo, mid - 1)
        over = [f for f in self.fit.per_gpu if f.index in self._over()]
        model, also = with_kv(lo)
        if lo >= 1 and lo * MIB >= self.fit.kv_required and self._within_booking(model):
            bound = next(f for f in over if f.index in beyond(lo + 1))
            return Fix("kv_cache_memory_bytes", f"set --kv-cache-memory-bytes={lo}M"
                       + (f" and --gpu-memory-utilization={booked}" if also else "")
                       + f" (the most KV cache within GPUStack's claim of {gib(bound.take.claim)} on GPU "
                       f"{bound.index}; it needs at least {needed})", True)
        worst = min(over, key=lambda f: f.take.headroom)
        return Fix("kv_cache_memory_bytes", f"no --kv-cache-memory-bytes keeps vLLM within GPUStack's claim of "
                   f"{gib(worst.take.claim)} on GPU {worst.index} with the KV cache it needs ({needed})", False)

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
            f"(GPUStack's allocatable{', free memory' if top_moves(best) else ''})")  # 0.34: not free memory
