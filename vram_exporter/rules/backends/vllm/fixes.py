"""The fix search for a vLLM model: for each knob, the values that make it fit free memory aside, each with
the free memory vLLM's start-up check would need (rules/fixes.py ``FixPlan`` picks among them).

Every fix says the vLLM versions it holds for (``holds_for``: those whose rules, versions.py, are the model's).
vLLM 0.34's extensible KV cache (versions.py ``extensible_kv_cache``) has fixes of its own: it raises no
start-up error on free memory (vllm/v1/worker/utils.py::request_memory), so nothing is said of lowering
--gpu-memory-utilization for free memory; what fails is the KV check after warm-up, whose own hint
(vllm/v1/core/kv_cache_planning.py::_more_kv_cache_memory_hint) names raising the utilization (unset: 1.0),
--max-model-len and --max-num-seqs, and --kv-cache-memory-bytes sizes the cache directly
(``unset_utilization``, ``kv_cache_memory_bytes``, ``max_num_seqs``). Where vLLM holds more of a GPU than
GPUStack booked beside another instance (node.py ``with_booking_check``), ``booking`` says what keeps it
within its claim.

Candidates come from the rulebooks' algebra: a --gpu-memory-utilization g can only work on a GPU inside that
GPU's working window (``GpuFit.gmu_min`` .. ``gmu_max_static``, the closed form of every static check), a
claim only at a g that GPUStack's test 2 and vLLM's KV check admit somewhere; each candidate left is confirmed
by one ``probe`` (fit.py: the rulebooks themselves, reduced to the verdict). tests/rules/test_fix_search.py
and test_fix_search_034.py (by version) hold the result equal to a brute-force search over the whole grid
with the full rulebooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from ....snapshot import GpuReading
from ....units import GIB, MIB, gib
from ... import gpustack
from ...flags import with_param, without_param
from ...model import Cluster, ModelSpec
from ...verdicts import BOOKING_CHECK, BOOKING_TOLERANCE, Fix, GpuFit, Knob, ModelFit, NodeFit, Option, Probe
from . import engine as vllm, fit as vllm_fit, selector, versions

GMU_GRID = tuple(round(0.50 + i / 100, 2) for i in range(50))  # 0.50 .. 0.99
TP_SIZES = (2, 4, 8, 16)


def knobs(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> dict[str, Knob]:
    """Every knob's options for ``fit`` (static parts only are read; free memory is never), and ``booking_*``
    where vLLM would hold more than GPUStack booked beside another instance (a running instance has only those)."""
    search = _Search(model, fit, node.cluster, [g for g in gpus if g.up])
    if fit.placed:
        found = search.booking() if beyond_booking(fit) else {}
    elif not fit.schedulable:
        found = {"reservation": search.reservation(), "utilization": search.utilization(),
                 "unset_utilization": search.unset_utilization(),
                 "reservation_and_utilization": search.reservation_and_utilization(),
                 "claim": search.claim(), "pin": search.pin(), "gpu_count": search.gpu_count()}
    else:
        found = {"utilization": search.utilization(), "unset_utilization": search.unset_utilization(),
                 "max_model_len": search.max_model_len(), "kv_cache_memory_bytes": search.kv_cache_memory_bytes(),
                 "kv_cache_dtype": search.kv_cache_dtype(), "max_num_seqs": search.max_num_seqs(),
                 "gpu_count": search.gpu_count(), **(search.booking() if beyond_booking(fit) else {})}
    said = holds_for(model, node.cluster)
    return {name: _said_for(knob, said) for name, knob in found.items() if knob is not None}


def holds_for(model: ModelSpec, cluster: Cluster) -> str:
    """The vLLM versions a fix for ``model`` holds for: those whose rules (versions.py) are its version's,
    neighbours with equal rules joined ("vLLM 0.32-0.33"; the newest read, "vLLM 0.34+", stands for later
    ones too, as versions.rules_for reads them). A version older than every one read says so."""
    version = versions.version_of(model, cluster)
    first, span = _SPANS[versions.rules_for(version).version]
    return f"vLLM {span}" if _minor(version) >= _minor(first) else f"vLLM {span}, read for {version}"


def _spans() -> dict[str, tuple[str, str]]:
    """Each version read -> the first version of its run of alike rules and the run as said ("0.32-0.33")."""
    known = sorted(versions.VLLM_RULES, key=_minor)
    spans = {}
    for at, version in enumerate(known):
        lo, hi = at, at
        while lo > 0 and _rules_alike(versions.VLLM_RULES[known[lo - 1]], versions.VLLM_RULES[version]):
            lo -= 1
        while hi + 1 < len(known) and _rules_alike(versions.VLLM_RULES[known[hi + 1]], versions.VLLM_RULES[version]):
            hi += 1
        first = known[lo]
        after = known[hi + 1] if hi + 1 < len(known) else None
        if after is None:
            span = f"{first}+"
        else:
            major, minor = _minor(after)
            end = f"{major}.{minor - 1}" if minor > 0 else f"before {after}"
            span = first if end == first else f"{first}-{end}"
        spans[version] = (first, span)
    return spans


def _minor(version: str) -> tuple[int, int]:
    major, _, rest = version.lstrip("vV").partition(".")
    minor = rest.partition(".")[0]
    return int(major) if major.isdigit() else 0, int(minor) if minor.isdigit() else 0


def _rules_alike(a: versions.VllmRules, b: versions.VllmRules) -> bool:
    return replace(a, version="") == replace(b, version="")


_SPANS = _spans()  # the versions read never change while the exporter runs


def _said_for(knob: Knob, said: str) -> Knob:
    """``knob`` with every fix saying the versions it holds for."""
    def tag(fix: Fix | None) -> Fix | None:
        return None if fix is None else replace(fix, action=f"{fix.action} [{said}]")
    return Knob(tuple(Option(tag(o.fix), o.needs) for o in knob.options), tag(knob.otherwise))


def beyond_booking(fit: ModelFit) -> list[GpuFit]:
    """The GPUs where vLLM would hold more than GPUStack booked for it beside another instance."""
    return [f for f in fit.per_gpu if f.index in fit.gpus and f.take is not None
            and f.headroom.get(BOOKING_CHECK, 0) < -BOOKING_TOLERANCE]


class _Search:
    def __init__(self, model: ModelSpec, fit: ModelFit, cluster: Cluster, gpus: list[GpuReading]):
        self.model, self.fit, self.cluster, self.gpus = model, fit, cluster, gpus
        self._totals = {gpu.index: gpustack.total_whole_mib(gpu.memory.total) for gpu in gpus}
        self._allocatable_memo: dict[int, dict[int, int]] = {}
        self._views_memo: dict[int, dict[int, gpustack.GpuView]] = {}  # by reserved VRAM, as above
        vp, rules = model.vllm, versions.rules_of(model, cluster)
        # --kv-cache-memory-bytes, or --num-gpu-blocks-override where the check reads it (versions.py
        # override_checked): the KV cache does not follow the utilization.
        self._kv_sized_by_flags = vp.kv_cache_memory_bytes is not None or (
            vp.num_gpu_blocks_override is not None and rules.override_checked)
        self._extensible = rules.extensible_kv_cache

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
        found = self._views_memo.get(reserved)
        if found is None:
            allocatable = self._allocatable(reserved)
            found = {i: gpustack.GpuView(i, total, allocatable[i]) for i, total in self._totals.items()}
            self._views_memo[reserved] = found
        return found

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

    def _kv_passes(self, f: GpuFit, g: float, rewritten: bool = True) -> bool:
        """Whether vLLM's KV check on ``f``'s GPU can pass once g is written with dashes (vLLM reads it too):
        KV = R - W - O moves with R only, and not at all where the flags size the KV cache (fit.py
        ``_directly_sized_kv``). With 0.34's extensible cache KV = min(R - W - O, what is free less the margin):
        a larger R adds at most its growth, a smaller one takes nothing away for sure, so only that bound is
        used (the probe confirms). ``rewritten`` False: the model is left as it is, and so is vLLM's reading."""
        if not rewritten or self._kv_sized_by_flags:
            return f.headroom["vllm_kv_cache"] >= 0
        grows = vllm.budget_bytes(f.cuda_total, g) - f.budget
        return f.headroom["vllm_kv_cache"] + (max(grows, 0) if self._extensible else grows) >= 0

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

    # --- vLLM 0.34's extensible KV cache (versions.py extensible_kv_cache) ---------------------------------

    @property
    def _extensible_version(self) -> bool:
        """The model's vLLM version has the extensible KV cache (whether its flags turn it off or not)."""
        return versions.rules_for(versions.version_of(self.model, self.cluster)).extensible_kv_cache

    def unset_utilization(self) -> Knob | None:
        """vLLM 0.34+: --gpu-memory-utilization removed, unset being 1.0 with the extensible KV cache
        (vllm/config/cache.py resolved_gpu_memory_utilization), and with it the flags that turn that cache off
        (--kv-cache-memory-bytes, --num-gpu-blocks-override: vllm/config/vllm.py::_resolve_extensible_kv_cache),
        so that the cache takes what is free after warm-up (extensible_kv_cache.py::measure_kv_cache_bytes).
        GPUStack then books its default. Not where the cluster sets a default utilization (it would apply)."""
        vp = self.model.vllm
        if not self._extensible_version or self.cluster.vllm_default_gpu_memory_utilization is not None:
            return None
        given = (vp.gpu_memory_utilization, vp.kv_cache_memory_bytes, vp.num_gpu_blocks_override)
        removed = [name for name, value in zip(versions.KV_SIZING_FLAGS, given, strict=True) if value is not None]
        if not removed:
            return None
        parameters = tuple(self.model.backend_parameters)
        for name in removed:
            parameters = without_param(parameters, name)
        model = replace(self.model, backend_parameters=parameters)
        spelled = {"gpu-memory-utilization": "gpu_memory_utilization"} if vp.spelled_with_underscore else {}
        flags = " and ".join(f"--{spelled.get(name, name)}" for name in removed)
        fix = Fix("unset_gpu_memory_utilization",
                  f"remove {flags}: vLLM's extensible KV cache then takes what is free on the GPU after warm-up "
                  f"(GPUStack books {model.gpustack.gpu_memory_utilization} of it)", True,
                  (("unset_gpu_memory_utilization", True),))
        option = self._option(fix, model)
        return Knob((option,) if option else (),
                    Fix("unset_gpu_memory_utilization", f"removing {flags} alone does not make it fit", False))

    def kv_cache_memory_bytes(self) -> Knob | None:
        """vLLM 0.34+ where its KV check fails: --kv-cache-memory-bytes=N sizes the KV cache, profiling skipped
        (vllm/v1/worker/gpu_worker.py::determine_available_memory returns N), and turns the extensible cache off,
        so its start-up check on free memory is back (vllm/v1/worker/utils.py::request_memory). The least N the
        check passes is the model's minimum, in whole MiB up. vLLM allocates N beside the weights and O whatever
        its budget, with no check of its own: where that is more than R, the free memory it needs on each GPU is
        that (``_sized_option``)."""
        if not self._extensible_version or not self._kv_short():
            return None
        least = -(-self.fit.kv_required // MIB)
        fix = Fix("kv_cache_memory_bytes",
                  f"set --kv-cache-memory-bytes={least}M (the least KV cache vLLM's check passes, "
                  f"{gib(least * MIB)}; the extensible KV cache is then off and vLLM checks free memory at "
                  "start-up again)", True, (("kv_cache_memory_bytes", least * MIB),))
        option = self._sized_option(fix, self._with("kv-cache-memory-bytes", f"{least}M"))
        return Knob((option,) if option else (), Fix(
            "kv_cache_memory_bytes", f"--kv-cache-memory-bytes={least}M, the least KV cache vLLM's check passes, "
            "does not make it fit (less fails the check, more leaves less room)", False))

    def _sized_option(self, fix: Fix, model: ModelSpec) -> Option | None:
        """``fix`` where ``model`` fits free memory aside, with the free memory it needs on each GPU it lands on:
        its start-up check's, or what it holds (GpuFit.take: weights, O, the KV cache) beside what is committed
        there before it and its CUDA context, whichever is more; none where that is more than the GPU has."""
        fit = vllm_fit.evaluate(model, self.cluster, self.gpus, self.fit.context)
        if fit.error or not (fit.schedulable and fit.startable):
            return None
        needs = []
        for f in fit.per_gpu:
            if f.index in fit.gpus:
                holds = f.committed + self.cluster.vllm_context_overhead + f.take.takes
                if holds > f.cuda_total:
                    return None
                needs.append((f.index, max(holds, f.free_need or 0)))
        return Option(fix, tuple(needs))

    def max_num_seqs(self) -> Knob | None:
        """vLLM 0.34's KV check, with the extensible cache, names --max-num-seqs
        (kv_cache_planning.py::_more_kv_cache_memory_hint): fewer sequences, fewer and smaller CUDA graphs
        (vllm/config/vllm.py, capture sizes up to 2 x max_num_seqs). The rules bound CUDA graph memory per
        layer (runtime.py GRAPH_PER_LAYER_BOUND), not by sequences: what it frees is not sized, so no value
        is offered as working."""
        if not versions.rules_of(self.model, self.cluster).extensible_kv_cache or not self._kv_short():
            return None
        return Knob((), Fix("max_num_seqs", "lowering --max-num-seqs (vLLM's own hint) frees CUDA graph memory "
                            "these rules do not size by it: no value is predicted to make it fit", False))

    def _kv_short(self) -> bool:
        return any(f.headroom["vllm_kv_cache"] < 0 for f in self.fit.per_gpu if f.index in self.fit.gpus)

    # --- vLLM holding more than GPUStack booked, beside another instance (node.py with_booking_check) -------

    def booking(self) -> dict[str, Knob]:
        """What keeps vLLM within GPUStack's claim where another instance is booked on its GPU: the utilization
        GPUStack books, with dashes (GPUStack reads the same, so its claim stays; vLLM's budget R = ceil(T_cuda x
        g) then bounds what it holds, the extensible KV cache's too: extensible_kv_cache.py measure_kv_cache_bytes
        takes min(R - non-KV, ...)); and --kv-cache-memory-bytes, the most within the claim (vLLM then holds the
        weights, O and N: fit.py ``_take``). Each kept where the model still fits and holds no more than its
        claim (BOOKING_TOLERANCE: the claim's and the budget's rounding) on those GPUs; a running instance is
        judged where it runs, restarted with the flag."""
        over = beyond_booking(self.fit)
        booked = self.model.gpustack.gpu_memory_utilization
        needed = gib(self.fit.kv_required)
        fix = Fix("gpu_memory_utilization", f"set --gpu-memory-utilization={booked} (what GPUStack books: vLLM "
                  "then holds no more than its claim)", True, (("gpu_memory_utilization", booked),))
        option = self._within_booking(fix, _gmu(self.model, booked), over)
        utilization = Knob((option,) if option else (), Fix(
            "gpu_memory_utilization", f"--gpu-memory-utilization={booked} (what GPUStack books) does not keep vLLM "
            f"within its claim with the KV cache it needs ({needed})", False))
        most = self._most_kv_within_claim(over)
        option = None
        if most is not None and most[0] * MIB >= self.fit.kv_required:
            mib, bound = most
            model = self._with("kv-cache-memory-bytes", f"{mib}M")
            # With the KV cache sized so, vLLM checks free memory at start-up for its budget again
            # (utils.py::request_memory): no more than GPUStack books, so that others keeping to their claims
            # leave it enough; where vLLM would read more (unset: 0.92 from 0.20), the booked value goes too.
            also = booked < self._vllm_reads(model)
            change: tuple[tuple[str, object], ...] = (("kv_cache_memory_bytes", mib * MIB),)
            if also:
                model, change = _gmu(model, booked), change + (("gpu_memory_utilization", booked),)
            fix = Fix("kv_cache_memory_bytes", f"set --kv-cache-memory-bytes={mib}M"
                      + (f" and --gpu-memory-utilization={booked}" if also else "")
                      + f" (the most KV cache within GPUStack's claim of {gib(bound.take.claim)} on GPU "
                      f"{bound.index}; it needs at least {needed})", True, change)
            option = self._within_booking(fix, model, over)
        worst = min(over, key=lambda f: f.take.headroom)
        kv_cache = Knob((option,) if option else (), Fix(
            "kv_cache_memory_bytes", f"no --kv-cache-memory-bytes keeps vLLM within GPUStack's claim of "
            f"{gib(worst.take.claim)} on GPU {worst.index} with the KV cache it needs ({needed})", False))
        return {"booking_utilization": utilization, "booking_kv_cache": kv_cache}

    def _vllm_reads(self, model: ModelSpec) -> float:
        """The --gpu-memory-utilization vLLM runs ``model`` with, as its fit reads it (ModelFit.gmu_vllm)."""
        return vllm_fit.evaluate(model, self.cluster, self.gpus, self.fit.context, self._placed_on()).gmu_vllm

    def _placed_on(self) -> tuple[int, ...] | None:
        return self.fit.gpus if self.fit.placed else None

    def _within_booking(self, fix: Fix, model: ModelSpec, over: list[GpuFit]) -> Option | None:
        fit = vllm_fit.evaluate(model, self.cluster, self.gpus, self.fit.context, self._placed_on())
        if fit.error or not (fit.schedulable and fit.startable):
            return None
        by_index = {f.index: f for f in fit.per_gpu}
        if any(f.index not in by_index or by_index[f.index].take is None
               or by_index[f.index].take.headroom < -BOOKING_TOLERANCE for f in over):
            return None
        return Option(fix, tuple((f.index, f.free_need) for f in fit.per_gpu
                                 if f.index in fit.gpus and f.free_need is not None))

    def _most_kv_within_claim(self, over: list[GpuFit]) -> tuple[int, GpuFit] | None:
        """The most whole MiB of --kv-cache-memory-bytes with which vLLM holds no more than its claim on every
        GPU of ``over`` (what it holds is linear in N: read at N = 1 MiB), and the GPU that bounds it."""
        fit = vllm_fit.evaluate(self._with("kv-cache-memory-bytes", "1M"), self.cluster, self.gpus,
                                self.fit.context, self._placed_on())
        by_index = {f.index: f for f in fit.per_gpu}
        room = [((f.take.claim - by_index[f.index].take.takes + MIB) // MIB, f) for f in over
                if f.index in by_index and by_index[f.index].take is not None]
        if len(room) != len(over):
            return None
        return min(room, key=lambda r: r[0])

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

