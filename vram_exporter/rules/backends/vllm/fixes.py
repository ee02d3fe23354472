"""The fix search for a vLLM model: for each knob, the values that make it fit free memory aside, each with
the free memory vLLM's start-up check would need (rules/fixes.py ``FixPlan`` picks among them).

Candidates come from the rulebooks' algebra: a --gpu-memory-utilization g can only work on a GPU inside that
GPU's working window (``GpuFit.gmu_min`` .. ``gmu_max_static``, the closed form of every static check), a
claim only at a g that GPUStack's test 2 and vLLM's KV check admit somewhere; each candidate left is confirmed
by one ``probe`` (fit.py: the rulebooks themselves, reduced to the verdict). tests/rules/test_fix_search.py
holds the result equal to a brute-force search over the whole grid with the full rulebooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from ....snapshot import GpuReading
from ....units import GIB, gib
from ... import gpustack
from ...flags import with_param
from ...model import Cluster, ModelSpec
from ...verdicts import Fix, GpuFit, Knob, ModelFit, NodeFit, Option, Probe
from . import engine as vllm, fit as vllm_fit, selector

GMU_GRID = tuple(round(0.50 + i / 100, 2) for i in range(50))  # 0.50 .. 0.99
TP_SIZES = (2, 4, 8, 16)


def knobs(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> dict[str, Knob]:
    """Every knob's options for ``fit`` (static parts only are read; free memory is never)."""
    search = _Search(model, fit, node.cluster, [g for g in gpus if g.up])
    if not fit.schedulable:
        found = {"reservation": search.reservation(), "utilization": search.utilization(),
                 "reservation_and_utilization": search.reservation_and_utilization(),
                 "claim": search.claim(), "pin": search.pin()}
    else:
        found = {"utilization": search.utilization(), "max_model_len": search.max_model_len(),
                 "kv_cache_dtype": search.kv_cache_dtype()}
    found["gpu_count"] = search.gpu_count()
    return found


class _Search:
    def __init__(self, model: ModelSpec, fit: ModelFit, cluster: Cluster, gpus: list[GpuReading]):
        self.model, self.fit, self.cluster, self.gpus = model, fit, cluster, gpus
        self._totals = {gpu.index: gpustack.total_whole_mib(gpu.memory.total) for gpu in gpus}
        self._allocatable_memo: dict[int, dict[int, int]] = {}

    def _allocatable(self, reserved: int) -> dict[int, int]:
        """Each GPU's A with ``reserved`` VRAM reserved and the claims placed before this model."""
        found = self._allocatable_memo.get(reserved)
        if found is None:
            claims = self.fit.context.claims
            found = {i: gpustack.allocatable_bytes(t, claims.get(i, 0), reserved) for i, t in self._totals.items()}
            self._allocatable_memo[reserved] = found
        return found

    def _probe(self, model: ModelSpec | None = None, cluster: Cluster | None = None) -> Probe:
        return vllm_fit.probe(model or self.model, cluster or self.cluster, self.gpus, self.fit.context)

    def _option(self, fix: Fix, model: ModelSpec | None = None, cluster: Cluster | None = None) -> Option | None:
        verdict = self._probe(model, cluster)
        return Option(fix, verdict.needs) if verdict.fits else None

    def _with(self, name: str, value: object) -> ModelSpec:
        return replace(self.model, backend_parameters=with_param(self.model.backend_parameters, name, value))

    def _gmu_options(self, cluster: Cluster, fix_for) -> list[Option]:
        """Options over the grid of g, nearest the current value first, each confirmed by a probe."""
        current = self.fit.gmu_gpustack
        candidates = sorted(self._possible_gmus(cluster), key=lambda g: (abs(g - current), g))
        return [o for g in candidates if (o := self._option(fix_for(g), _gmu(self.model, g), cluster))]

    def _possible_gmus(self, cluster: Cluster) -> Iterable[float]:
        """The grid values at which some placement can pass: on one GPU, GPUStack's two tests
        (``gpustack.single_gpu_tests``) and vLLM's KV check at that g; on several, enough GPUs
        ``gpustack.multi_gpu_eligible``. The probe confirms the rest; a pinned model (overcommit is
        accepted) is probed at every value."""
        if self.model.pinned_gpus or len(self.fit.per_gpu) != len(self.gpus):
            return GMU_GRID
        world = self.model.gpustack.world_size
        views = self._views(cluster.system_reserved_vram)
        singles = [(views[f.index], f) for f in self.fit.per_gpu] if not world or world == 1 else []
        multi_count = world if world and world > 1 else (2 if world is None and len(self.gpus) > 1 else 0)
        estimate, scheduler = self.fit.estimate, cluster.scheduler
        return [g for g in GMU_GRID
                if any(gpustack.single_gpu_tests(v, estimate, g, scheduler).passes and self._kv_passes(f, g)
                       for v, f in singles)
                or (multi_count and sum(selector.multi_gpu_eligible(v, g) for v in views.values()) >= multi_count)]

    def _views(self, reserved: int) -> dict[int, gpustack.GpuView]:
        allocatable = self._allocatable(reserved)
        return {i: gpustack.GpuView(i, total, allocatable[i]) for i, total in self._totals.items()}

    def utilization(self) -> Knob:
        options = self._gmu_options(self.cluster, lambda g: Fix(
            "gpu_memory_utilization", f"set --gpu-memory-utilization={g} (dashes, so GPUStack and vLLM both read it)",
            True, (("gpu_memory_utilization", g),)))
        return Knob(tuple(options), None)  # what is said otherwise depends on free memory: _utilization

    def reservation(self) -> Knob:
        current = self.cluster.system_reserved_vram
        if current == 0:
            return Knob((), None)
        options = []
        for reserved in self._reservations():
            fix = Fix("system_reserved_vram",
                      f"lower the worker's --system-reserved vram from {current // GIB} to {reserved // GIB} GiB", True,
                      (("system_reserved_vram", reserved),))
            if option := self._option(fix, cluster=replace(self.cluster, system_reserved_vram=reserved)):
                options.append(option)
        return Knob(tuple(options), Fix(
            "system_reserved_vram", f"lowering the worker's --system-reserved vram alone does not help, even to 0 "
            f"(now {current // GIB} GiB)", False))

    def reservation_and_utilization(self) -> Knob:
        current = self.cluster.system_reserved_vram
        options = []
        for reserved in self._reservations():
            cluster = replace(self.cluster, system_reserved_vram=reserved)
            options += self._gmu_options(cluster, lambda g, r=reserved: Fix(
                "system_reserved_vram+gpu_memory_utilization",
                f"lower --system-reserved vram to {r // GIB} GiB and set --gpu-memory-utilization={g}", True,
                (("system_reserved_vram", r), ("gpu_memory_utilization", g))))
        return Knob(tuple(options), None)

    def _reservations(self) -> Iterable[int]:
        return gpustack.reservations_below(self.cluster.system_reserved_vram, (g.memory.total for g in self.gpus))

    def claim(self) -> Knob:
        # The largest claim test (1) admits on the roomiest GPUs; the claim is GPUStack's
        # bookkeeping only: vLLM still takes its budget, which the probe includes.
        current = self.fit.gmu_gpustack
        options = []
        for g in [current] + sorted(GMU_GRID, key=lambda x: abs(x - current)):
            claim = self._largest_claim(g)
            if claim <= 0 or not self._claim_possible(g):
                continue
            model = _gmu(self.model, g) if g != current else self.model
            with_claim = replace(model, env={**self.model.env, gpustack.ENV_CLAIM: str(claim)})
            also = "" if g == current else f" with --gpu-memory-utilization={g}"
            change = (("vram_claim", claim),) + ((("gpu_memory_utilization", g),) if g != current else ())
            fix = Fix("vram_claim", f"set {gpustack.ENV_CLAIM}={claim} ({gib(claim)}) or less{also}", True, change)
            if option := self._option(fix, with_claim):
                options.append(option)
        return Knob(tuple(options), Fix("vram_claim", f"no {gpustack.ENV_CLAIM} makes it fit on its own", False))

    def _claim_possible(self, g: float) -> bool:
        """Whatever the claim, GPUStack's test 2 (A/T >= g) and vLLM's KV check at g must pass on one
        GPU; a pinned model is accepted as overcommit, so only the probe can say."""
        if self.model.pinned_gpus:
            return True
        views = self._views(self.cluster.system_reserved_vram)
        # Test 2 does not depend on the claim (test 1 does, and the claim is chosen to pass it).
        return any(gpustack.single_gpu_tests(views[f.index], 0, g, self.cluster.scheduler).allocatable_headroom >= 0
                   and self._kv_passes(f, g, rewritten=g != self.fit.gmu_gpustack) for f in self.fit.per_gpu)

    @staticmethod
    def _kv_passes(f: GpuFit, g: float, rewritten: bool = True) -> bool:
        """vLLM's KV check on ``f``'s GPU once g is written with dashes (vLLM reads it too): KV = R - W - O
        moves with R only. ``rewritten`` False: the model is left as it is, and so is vLLM's reading."""
        if not rewritten:
            return f.headroom["vllm_kv_cache"] >= 0
        return f.headroom["vllm_kv_cache"] - f.budget + vllm.budget_bytes(f.cuda_total, g) >= 0

    def _largest_claim(self, g: float) -> int:
        """The largest E that test (1) admits: over the N GPUs the instance needs, the roomiest ones."""
        n = self.model.gpustack.world_size or 1
        if self.cluster.scheduler == "gpustack-0.6":
            sizes = list(self._allocatable(self.cluster.system_reserved_vram).values())
        else:
            sizes = [int(total * g) for total in self._totals.values()]  # gpustack.claim_bytes
        return sum(sorted(sizes, reverse=True)[:n])

    def pin(self) -> Knob:
        if self.model.replicas != 1:
            return Knob((), None)
        options = []
        for gpu in self.gpus:
            fix = Fix("gpu_selector", f"pin it to GPU {gpu.index} (gpu_selector): GPUStack accepts a single "
                      "replica as overcommit, and vLLM would start there", True)
            if option := self._option(fix, replace(self.model, pinned_gpus=(gpu.index,))):
                options.append(option)
        return Knob(tuple(options), None)

    def max_model_len(self) -> Knob:
        fits_len = min((f.max_model_len for f in self.fit.per_gpu if f.index in self.fit.gpus), default=0)
        if fits_len <= 0:
            return Knob((), Fix("max_model_len", "no context length fits: the KV cache has no room at all", False))
        fix = Fix("max_model_len", f"set --max-model-len={fits_len} (the longest that fits; now "
                  f"{self.fit.max_model_len})", True, (("max_model_len", fits_len),))
        option = self._option(fix, replace(self.model, max_model_len=fits_len))
        return Knob((option,) if option else (),
                    Fix("max_model_len", "shortening the context alone does not help", False))

    def kv_cache_dtype(self) -> Knob:
        if self.model.vllm.kv_cache_dtype.startswith("fp8") or self.fit.bytes_per_token == 0:
            return Knob((), None)
        option = self._option(Fix("kv_cache_dtype", "set --kv-cache-dtype=fp8 (half the KV bytes per token)", True,
                                  (("kv_cache_dtype", "fp8"),)),
                              self._with("kv-cache-dtype", "fp8"))
        return Knob((option,) if option else (),
                    Fix("kv_cache_dtype", "--kv-cache-dtype=fp8 alone does not make it fit", False))

    def gpu_count(self) -> Knob:
        current = self.model.vllm.tensor_parallel_size
        options = []
        for size in TP_SIZES:
            if size <= current or size > len(self.gpus):
                continue
            if gpustack.tp_divisibility_problem(self.model.arch, size):
                continue
            fix = Fix("tensor_parallel_size", f"spread it over {size} GPUs: --tensor-parallel-size={size}", True)
            if option := self._option(fix, self._with("tensor-parallel-size", size)):
                options.append(option)
        return Knob(tuple(options), None)


def _gmu(model: ModelSpec, g: float) -> ModelSpec:
    return replace(model, backend_parameters=with_param(model.backend_parameters, "gpu-memory-utilization", g))
