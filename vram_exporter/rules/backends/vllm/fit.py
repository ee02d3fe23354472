"""vLLM's fit of one model on one node: GPUStack's vLLM selector (selector.py) and vLLM's own KV cache
check (engine.py), per GPU as headroom in bytes, with the working window of --gpu-memory-utilization.

Free memory is applied later, by node.py ``with_free`` (vLLM's start-up check); ``free_reasons`` says
what it finds in vLLM's words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ....errors import ModelError
from ....snapshot import GpuReading
from ....units import gib
from ... import gpustack
from ...model import RUNTIME_OVERHEAD_FALLBACK, Cluster, ModelSpec
from ...verdicts import Context, EngineTake, GpuFit, ModelFit, Probe, reasons
from . import draft as vllm_draft, engine as vllm, lora as vllm_lora, runtime as vllm_runtime, selector, versions


def evaluate(
    model: ModelSpec,
    cluster: Cluster,
    gpus: Sequence[GpuReading],
    context: Context,
    placed_on: Sequence[int] | None = None,
) -> ModelFit:
    """One model against the node as it stands at its turn. Pure; used again by the fix search."""
    try:
        return _evaluate(model, cluster, gpus, context, placed_on)
    except ModelError as exc:
        return ModelFit(model.name, error=str(exc), placed=placed_on is not None, weights=model.weights_bytes,
                        context=context)


@dataclass(frozen=True, slots=True)
class _KvTerms:
    """What vLLM's KV check needs of a model, whichever GPU it lands on."""

    gmu: float
    per_token: int
    block: int
    cap: int | None
    target_len: int
    required: int
    weights_per_gpu: int
    overhead: int
    held_back: int  # blocks vLLM holds back beyond the minimum (its version's rule)
    rules: versions.VllmRules  # the version's rules (versions.rules_of: the one place they are chosen)
    batch_flag: int | None = None  # --max-num-batched-tokens; None: vLLM's default for the GPU
    kv_given: int | None = None  # --kv-cache-memory-bytes: the KV cache, profiling skipped
    blocks_override: int | None = None  # --num-gpu-blocks-override: the KV cache in blocks
    transient_peak: int = 0  # O's activation peak where O is the fitted model; 0: not known
    # What the engine loads beyond the base model, inside weights_per_gpu: (what, bytes per GPU)
    extras: tuple[tuple[str, int], ...] = ()


def _refuse(model: ModelSpec, gs, gmu_v: float) -> None:
    """Raise ModelError where the model cannot be judged (or GPUStack refuses it outright)."""
    for name, value in (("GPUStack", gs.gpu_memory_utilization), ("vLLM", gmu_v)):
        if not 0 < value <= 1 and not (name == "GPUStack" and model.books_estimate):
            raise ModelError(f"gpu_memory_utilization {value} as {name} reads it must be in (0, 1]")
    if problem := selector.tp_problem(model):
        raise ModelError(problem)
    if problem := gpustack.pinned_count_problem(model.pinned_gpus, gs.world_size, model.env):
        raise ModelError(problem)


def _kv_terms(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> _KvTerms:
    vp = model.vllm
    tp, pp = vp.tensor_parallel_size, vp.pipeline_parallel_size
    dtype_bytes = vllm.kv_dtype_bytes(model.arch, vp.kv_cache_dtype, vp.dtype)
    rules = versions.rules_of(model, cluster)
    draft = vllm_draft.load_of(model, rules, tp=tp, pp=pp, kv_dtype_bytes=dtype_bytes)
    per_token = vllm.bytes_per_token(model.arch, tp=tp, pp=pp, dtype_bytes=dtype_bytes)
    per_token += draft.per_token if draft else 0  # the draft's layers share the KV cache's blocks (draft.py)
    block = vllm.block_tokens(model.arch, vp.block_size, rules.block_tokens)
    cap = model.arch.max_position_embeddings
    target_len = _target_len(model, vp, cap)
    held = rules.held_back_blocks
    first_up = next((g for g in gpus if g.up), None)
    lora = _lora_memory(model, rules, first_up)
    required = (vllm.required_kv_bytes(model.arch, target_len, block, per_token, held_back=held,
                                       batch_tokens=_batch_in_flight(first_up, rules, vp.max_num_batched_tokens), rules=rules)
                if target_len > 0 and vllm.allocates_kv_cache(model.arch) else 0)
    extras = tuple((what, size) for what, size in (
        ("LoRA slots", lora.weights if lora else 0), ("draft weights", draft.weights_per_gpu if draft else 0)) if size)
    return _KvTerms(
        gmu=_vllm_gmu(model, cluster), per_token=per_token, block=block, cap=cap, target_len=target_len,
        required=required, weights_per_gpu=math.ceil(model.weights_bytes / (tp * pp)) + sum(s for _, s in extras),
        overhead=_runtime_overhead(model, cluster, first_up, lora), held_back=held, rules=rules,
        batch_flag=vp.max_num_batched_tokens, kv_given=vp.kv_cache_memory_bytes or None,
        blocks_override=vp.num_gpu_blocks_override, transient_peak=_transient_peak(model, cluster, first_up, lora),
        extras=extras)


def _lora_memory(model: ModelSpec, rules: versions.VllmRules, gpu: GpuReading | None) -> vllm_lora.LoraMemory | None:
    """What --enable-lora adds on each GPU (rules/backends/vllm/lora.py), as the engine is started: with the flags
    GPUStack's worker adds for the model's adapters; None: LoRA off."""
    params = vllm_lora.engine_params(model)
    if params is None:
        return None
    if problem := vllm_lora.rank_refusal(model.lora_adapters, params, rules):
        raise ModelError(problem)
    vp = model.vllm
    tokens, seqs = vllm.default_scheduler_limits(gpu.memory.total if gpu and gpu.memory else None,
                                                 gpu.name if gpu else "", "serve", rules)
    return vllm_lora.gpu_memory(model.arch, params, rules, tp=vp.tensor_parallel_size, pp=vp.pipeline_parallel_size,
                                model_dtype_bytes=vllm.kv_dtype_bytes(model.arch, "auto", vp.dtype),
                                max_num_batched_tokens=vp.max_num_batched_tokens or tokens,
                                max_num_seqs=vp.max_num_seqs or seqs)


def _runtime_overhead(model: ModelSpec, cluster: Cluster, gpu: GpuReading | None,
                      lora: vllm_lora.LoraMemory | None = None) -> int:
    """O: the model's own, else the cluster's, else (one GPU, no tensor or pipeline parallelism) the fitted
    model at the batch `vllm serve` will run (rules/backends/vllm/runtime.py; with LoRA its graph sets and
    shrink buffer), else the fallback constant."""
    for given in (model.runtime_overhead, cluster.vllm_runtime_overhead):
        if given is not None:
            return given
    if model.vllm.tensor_parallel_size * model.vllm.pipeline_parallel_size > 1:
        return RUNTIME_OVERHEAD_FALLBACK  # the fit is of one GPU; NCCL and sharded MLPs were not measured
    fitted = vllm_runtime.fitted_runtime_overhead(
        model.arch, version=versions.version_of(model, cluster), device_total_bytes=gpu.memory.total if gpu and gpu.memory else None,
        device_name=gpu.name if gpu else "", max_num_batched_tokens=model.vllm.max_num_batched_tokens,
        graph_sets=lora.graph_sets if lora else 1, extra_activation=lora.activation if lora else 0)
    return RUNTIME_OVERHEAD_FALLBACK if fitted is None else fitted


def _transient_peak(model: ModelSpec, cluster: Cluster, gpu: GpuReading | None,
                    lora: vllm_lora.LoraMemory | None = None) -> int:
    """The transient peak 0.34's extensible KV cache keeps free (and 0.75 of it as its margin, above 1 GiB):
    the activation peak of the fitted O where O is that model (``_runtime_overhead``); 0 where O is given or
    the fallback (its parts are not known: the margin is then its 1 GiB floor and the peak stays inside O)."""
    if model.runtime_overhead is not None or cluster.vllm_runtime_overhead is not None:
        return 0
    if model.vllm.tensor_parallel_size * model.vllm.pipeline_parallel_size > 1:
        return 0
    peak = vllm_runtime.fitted_transient_peak(
        model.arch, version=versions.version_of(model, cluster),
        device_total_bytes=gpu.memory.total if gpu and gpu.memory else None, device_name=gpu.name if gpu else "",
        max_num_batched_tokens=model.vllm.max_num_batched_tokens, extra_activation=lora.activation if lora else 0)
    return peak or 0


def _batch_in_flight(gpu: GpuReading | None, rules: versions.VllmRules, flag: int | None = None) -> int:
    """Sliding-window layers hold the tokens in flight beyond the window: `vllm serve`'s default batch
    depends on the GPU and the version, and so do the batches in flight (versions.py in_flight_batches)."""
    batches = rules.in_flight_batches
    if flag is not None:
        return batches * flag
    if gpu is None or gpu.memory is None:
        return batches * vllm.SLIDING_BATCH_TOKENS
    return batches * vllm.default_max_num_batched_tokens(gpu.memory.total, gpu.name, rules)


def _kv_check(gpu: GpuReading, kv: _KvTerms, cluster: Cluster, arch, committed: int = 0) -> vllm.VllmGpuCheck:
    t_cuda = vllm.cuda_total(gpu.memory.total, gpu.memory.reserved)
    check = vllm.check_gpu(
        cuda_total_bytes=t_cuda, gmu=kv.gmu,
        weights_per_gpu=kv.weights_per_gpu, runtime_overhead=kv.overhead, required_kv=kv.required, arch=arch, block=kv.block,
        per_token=kv.per_token, max_len_cap=kv.cap, held_back=kv.held_back,
        batch_tokens=_batch_in_flight(gpu, kv.rules, kv.batch_flag), rules=kv.rules)
    if kv.kv_given is not None or (kv.blocks_override is not None and kv.rules.override_checked):
        return _sized(check, _directly_sized_kv(kv), kv, gpu, arch)
    if not kv.rules.extensible_kv_cache:
        return check
    # 0.34: sized after warm-up from what is free then, the margin max(1 GiB, 0.75 x transient peak) kept free
    # (engine.extensible_kv_static), the transient peak being O's activation peak where O is the fitted model.
    kv_bytes = vllm.extensible_kv_static(
        budget=check.budget, device_room=t_cuda - cluster.vllm_context_overhead - committed,
        weights_per_gpu=kv.weights_per_gpu, runtime_overhead=kv.overhead, transient_peak=kv.transient_peak)
    if check.kv_cache_bytes <= 0:
        kv_bytes = check.kv_cache_bytes  # nothing left even before the margin: vLLM's "No available memory"
    return _sized(check, kv_bytes, kv, gpu, arch)


def _directly_sized_kv(kv: _KvTerms) -> int:
    """The KV cache the flags give: --kv-cache-memory-bytes (vllm/v1/worker/gpu_worker.py
    determine_available_memory returns it, profiling skipped), else --num-gpu-blocks-override blocks
    (get_kv_cache_configs: override x bytes per block)."""
    if kv.kv_given is not None:
        return kv.kv_given
    return kv.blocks_override * kv.block * kv.per_token


def _sized(check: vllm.VllmGpuCheck, kv_bytes: int, kv: _KvTerms, gpu: GpuReading, arch) -> vllm.VllmGpuCheck:
    return replace(check, kv_cache_bytes=kv_bytes, kv_cache_headroom=kv_bytes - kv.required,
                   max_model_len=vllm.longest_context(arch, kv_bytes, kv.block, kv.per_token, kv.cap, kv.held_back,
                                                      _batch_in_flight(gpu, kv.rules, kv.batch_flag), kv.rules))


def probe(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context) -> Probe:
    """The same rules as ``evaluate`` (a property test holds them equal), without what the verdict
    does not need: the other GPUs' checks, the replica count, the reasons."""
    try:
        gs = model.gpustack
        kv = _kv_terms(model, cluster, gpus)
        _refuse(model, gs, kv.gmu)
    except ModelError:
        return Probe(False)
    placement = _placement(model, cluster, gpus, context.claims, gs)
    if placement is None:
        return Probe(False)
    by_index = {gpu.index: gpu for gpu in gpus}
    needs = []
    for index in placement.gpus:
        committed = context.committed.get(index, 0)
        check = _kv_check(by_index[index], kv, cluster, model.arch, committed)
        if check.kv_cache_headroom < 0:
            return Probe(False)
        if not kv.rules.extensible_kv_cache:  # 0.34 checks no free memory at start-up
            needs.append((index, committed + cluster.vllm_context_overhead + check.budget))
    return Probe(True, tuple(needs))


def _placement(model, cluster, gpus, claims, params, replica_count=None):
    return selector.place(
        gpustack.views_of(gpus, claims, cluster.system_reserved_vram),
        estimate=gpustack.model_estimate(model),
        gmu=params.gpu_memory_utilization,
        world_size=params.world_size,
        arch=gpustack.tp_arch(model.arch, params),
        scheduler=cluster.scheduler,
        pinned=model.pinned_gpus,
        replica_count=model.replicas if replica_count is None else replica_count,
    )


def _vllm_gmu(model: ModelSpec, cluster: Cluster) -> float:
    """The --gpu-memory-utilization vLLM runs with: the model's flag, else the cluster's setting, else the
    version's default (versions.py: 0.9 before 0.20, 0.92 from 0.20, 1.0 with 0.34's extensible KV cache)."""
    given = model.vllm.gpu_memory_utilization
    if given is None:
        given = cluster.vllm_default_gpu_memory_utilization
    return versions.rules_of(model, cluster).gmu(given)


def _evaluate(model, cluster, gpus, context, placed_on) -> ModelFit:
    gs = model.gpustack
    kv = _kv_terms(model, cluster, gpus)
    _refuse(model, gs, kv.gmu)
    gmu_v = kv.gmu
    estimate = gpustack.model_estimate(model)

    placement = None
    if placed_on is not None:
        chosen = tuple(placed_on)
    else:
        placement = _placement(model, cluster, gpus, context.claims, gs)
        chosen = placement.gpus if placement else ()
    replicas_placed = _count_replicas(model, cluster, gpus, context, gs) if placement else 0
    n_gpus = len(chosen) or gs.world_size or 1

    per_gpu = []
    views = {v.index: v for v in gpustack.views_of(gpus, context.claims, cluster.system_reserved_vram)}
    shown = [g for g in gpus if placed_on is None or g.index in placed_on]
    for gpu in shown:
        per_gpu.append(_gpu_fit(
            gpu, views[gpu.index], context, running=placed_on is not None, estimate=estimate, n_gpus=n_gpus,
            gmu_g=gs.gpu_memory_utilization, scheduler=cluster.scheduler, cluster=cluster, kv=kv, model=model))
    own_claims = _own_claims(model, cluster, gpus, placement, placed_on)
    per_gpu = [replace(f, take=_take(f, kv, model, cluster, own_claims[f.index])) if f.index in own_claims else f
               for f in per_gpu]
    # Static: vLLM's KV check on the GPUs picked; with_free adds its start-up check.
    startable = bool(chosen) and all(f.headroom["vllm_kv_cache"] >= 0 for f in per_gpu if f.index in chosen)
    schedulable = placed_on is not None or placement is not None
    fit = ModelFit(
        name=model.name, placed=placed_on is not None, weights=model.weights_bytes, estimate=estimate,
        bytes_per_token=kv.per_token, kv_required=kv.required, max_model_len=kv.target_len, block_tokens=kv.block,
        gmu_gpustack=gs.gpu_memory_utilization, gmu_vllm=gmu_v, schedulable=schedulable, startable=startable,
        gpus=chosen, overcommit=bool(placement and placement.overcommit),
        replicas_placed=replicas_placed if placed_on is None else model.replicas, replicas=model.replicas,
        per_gpu=tuple(per_gpu), context=context,
    )
    return _with_static_reasons(fit, model, views, cluster, kv.extras)


def _target_len(model: ModelSpec, vp, cap: int | None) -> int:
    wanted = model.max_model_len if model.max_model_len is not None else vp.max_model_len
    if wanted is None:
        if cap is None:
            raise ModelError("max_model_len is not given and config has no max_position_embeddings")
        return model.arch.default_max_model_len or cap  # LongRoPE: original_max_position_embeddings
    if wanted == -1:  # auto: the longest that fits; the check is that at least one block fits
        return 1
    if wanted <= 0:
        raise ModelError(f"max_model_len must be positive, got {wanted}")
    return wanted


def _count_replicas(model, cluster, gpus, context, params) -> int:
    return gpustack.replicas_placed(model.replicas, context.claims,
                                    lambda claims: _placement(model, cluster, gpus, claims, params))


def _gpu_fit(gpu: GpuReading, view: gpustack.GpuView, context: Context, *, running: bool, estimate: int,
             n_gpus: int, gmu_g: float, scheduler: str, cluster: Cluster, kv: _KvTerms, model: ModelSpec) -> GpuFit:
    t_cuda = vllm.cuda_total(gpu.memory.total, gpu.memory.reserved)
    committed = context.committed.get(gpu.index, 0)
    check = _kv_check(gpu, kv, cluster, model.arch, committed)
    weights_per_gpu, overhead, required = kv.weights_per_gpu, kv.overhead, kv.required
    tests = gpustack.gpu_tests(view, estimate, gmu_g, n_gpus, scheduler)
    headroom = {"gpustack_estimate": tests.estimate_headroom, "gpustack_allocatable": tests.allocatable_headroom,
                "vllm_kv_cache": check.kv_cache_headroom}
    lo, hi_static = _window(view, estimate, n_gpus, scheduler, t_cuda, weights_per_gpu, overhead, required)
    # A running instance passed its start-up check long ago: it needs no free memory.
    # vLLM 0.34's extensible KV cache checks no free memory at start-up (vllm/v1/worker/utils.py::request_memory).
    need = None if running or kv.rules.extensible_kv_cache else committed + cluster.vllm_context_overhead + check.budget
    return GpuFit(gpu.index, gpu.uuid, check.budget, headroom, lo, hi_static, check.max_model_len,
                  cuda_total=t_cuda, committed=committed, gmu_max_static=hi_static, free_need=need,
                  kv_bytes=check.kv_cache_bytes, weights=weights_per_gpu)


def _round_down(x: float) -> float:
    return math.floor(x * 10_000 + 1e-9) / 10_000


def _window(view, estimate, n_gpus, scheduler, t_cuda, weights_per_gpu, overhead, required) -> tuple[float, float]:
    """[min, max] of a --gpu-memory-utilization (read alike by both) passing every check here but
    vLLM's start-up one, which depends on free memory (``free_top``). Ends are rounded inwards
    so that they themselves pass."""
    lows = [(required + weights_per_gpu + overhead) / t_cuda]
    highs = [1.0, view.allocatable / view.total if view.total else 0.0]
    if scheduler == "gpustack-0.6":
        if estimate > view.allocatable * (n_gpus if n_gpus > 1 else 1):
            highs.append(0.0)  # E <= A does not depend on g: nothing works
    else:
        lows.append(estimate / (n_gpus * view.total) if view.total else 1.0)
    lo = math.ceil(max(lows) * 10_000 - 1e-9) / 10_000
    return lo, max(_round_down(min(highs)), 0.0)


def _with_static_reasons(fit: ModelFit, model: ModelSpec, views, cluster: Cluster,
                         extras: tuple[tuple[str, int], ...] = ()) -> ModelFit:
    head = []
    if not fit.schedulable:
        head.append(_pending_reason(fit, model, views, cluster))
    elif fit.overcommit:
        head.append("GPUStack accepts the manual GPU selection as overcommit: its own tests fail there.")
    kv = {f.index: f"GPU {f.index}: " + _kv_reason(fit, f, extras) for f in fit.per_gpu
          if f.index in fit.gpus and f.headroom["vllm_kv_cache"] < 0}
    fit = replace(fit, static_reasons=tuple(head), kv_reasons=kv)
    return replace(fit, reasons=reasons(fit))


def _pending_reason(fit: ModelFit, model: ModelSpec, views, cluster: Cluster) -> str:
    text = "GPUStack leaves it Pending (No suitable workers):\n" + selector.pending_message(
        fit.estimate, fit.gmu_gpustack, list(views.values()), model.gpustack.world_size)
    if fit.per_gpu and all(not f.window_open for f in fit.per_gpu):
        f = fit.per_gpu[0]
        text += (f"\nNo value of --gpu-memory-utilization places it on this node: it needs at least "
                 f"{f.gmu_min:.4f} but at most {f.gmu_max:.4f} works.")
    return text


def _kv_reason(fit: ModelFit, f: GpuFit, extras: tuple[tuple[str, int], ...] = ()) -> str:
    kv = f.headroom["vllm_kv_cache"] + fit.kv_required
    loaded = (" (the weights include " + ", ".join(f"{what} {gib(size)}" for what, size in extras) + ")"
              if extras else "")
    if kv <= 0:
        return ("vLLM fails: No available memory for the cache blocks "
                f"(budget {gib(f.budget)} minus weights and overhead leaves {gib(kv)}){loaded}.")
    return (f"vLLM fails: To serve at least one request with the model's max seq len ({fit.max_model_len}), "
            f"{gib(fit.kv_required)} KV cache is needed, which is larger than the available KV cache memory "
            f"({gib(kv)}); the longest context that fits is {f.max_model_len} tokens{loaded}.")


def placement(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], claims: Mapping[int, int]):
    """Where GPUStack puts the next instance with ``claims`` booked (None: pending)."""
    return _placement(model, cluster, gpus, claims, model.gpustack)


def placed_claims(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> dict[int, int]:
    """A running instance's claims when GPUStack's own are not known: int(g * T) on each of its GPUs."""
    by_index = {gpu.index: gpu for gpu in gpus}
    gmu = model.gpustack.gpu_memory_utilization
    return {i: gpustack.claim_bytes(gpustack.reported_total(by_index[i].memory.total), gmu)
            for i in model.placed_on if i in by_index}


def committed_on(model: ModelSpec, cluster: Cluster, gpu: GpuReading, claim: int) -> int:
    """What vLLM takes of a GPU it is placed on: its budget R (weights, O and the KV cache where the flags size
    it directly: vLLM then allocates no more, whatever R), and the new process's CUDA context."""
    budget = vllm.budget_bytes(vllm.cuda_total(gpu.memory.total, gpu.memory.reserved), _vllm_gmu(model, cluster))
    kv = _kv_terms(model, cluster, [gpu])
    if kv.kv_given is not None or kv.blocks_override is not None:
        budget = kv.weights_per_gpu + kv.overhead + _directly_sized_kv(kv)
    return budget + cluster.vllm_context_overhead


# --- what vLLM takes against GPUStack's booking (issue 21 item 6) -------------------------------------------


def _own_claims(model, cluster, gpus, placement, placed_on) -> dict[int, int]:
    """GPUStack's claim for this instance on each GPU it lands on: the placement's, or a running instance's
    own (GPUStack's where known)."""
    if placed_on is None:
        return dict(placement.claims) if placement else {}
    if model.placed_claims is not None:
        return {i: c for i, c in model.placed_claims.items() if i in placed_on}
    return placed_claims(model, cluster, gpus)


def _take(f: GpuFit, kv: _KvTerms, model: ModelSpec, cluster: Cluster, claim: int) -> EngineTake:
    """What vLLM will hold on this GPU (weights, O and the KV cache it allocates: R where the KV cache is sized
    from the budget; its own CUDA context aside, as GPUStack's claim leaves it aside) against GPUStack's claim,
    and what to pass so that it holds no more than the claim: the utilization GPUStack books, or
    the KV cache the claim leaves (--kv-cache-memory-bytes, which every version read has)."""
    if not vllm.allocates_kv_cache(model.arch):
        return _take_without_kv_cache(kv, model, cluster, claim)
    takes = kv.weights_per_gpu + kv.overhead + _allocated_kv_of(f, kv)
    version = versions.version_of(model, cluster)
    if kv.rules.extensible_kv_cache:
        why = (f"its extensible KV cache grows into the memory free after warm-up"
               f"{' (--gpu-memory-utilization unset is 1.0)' if model.vllm.gpu_memory_utilization is None else ''}")
    elif kv.kv_given is not None or kv.blocks_override is not None:
        why = "the KV cache its flags size directly"
    else:
        why = f"its budget at --gpu-memory-utilization {kv.gmu}"
    booked = model.gpustack.gpu_memory_utilization  # with dashes GPUStack reads it too: its claim stays
    kv_fix = claim - kv.weights_per_gpu - kv.overhead
    fix = f"pass --gpu-memory-utilization={booked} (what GPUStack books)"
    if model.books_estimate:  # g = 0: a --gpu-memory-utilization would make GPUStack book g x total instead
        fix = (f"pass --kv-cache-memory-bytes={kv_fix // 2**20}M (GPUStack books the estimate, not a share of the "
               "card, and passes no --gpu-memory-utilization)") if kv_fix > 0 else "none keeps it within the estimate"
    elif kv_fix > 0:
        fix += f" or --kv-cache-memory-bytes={kv_fix // 2**20}M"
    if kv.extras:
        why += ", " + ", ".join(f"{what} {gib(size)} among it" for what, size in kv.extras)
    return EngineTake(claim=claim, takes=takes, fix=fix,
                      said=f"vLLM {version} will hold {gib(takes)} here ({why})")


def _take_without_kv_cache(kv: _KvTerms, model: ModelSpec, cluster: Cluster, claim: int) -> EngineTake:
    """An encoder-only model (engine.py ``allocates_kv_cache``): vLLM holds its weights and O, no KV cache."""
    takes = kv.weights_per_gpu + kv.overhead
    return EngineTake(claim=claim, takes=takes,
                      fix=f"no flag shrinks it (no KV cache); {gpustack.ENV_CLAIM}={takes} raises GPUStack's claim to it",
                      said=f"vLLM {versions.version_of(model, cluster)} will hold {gib(takes)} here (weights and "
                           "runtime overhead: an encoder-only model allocates no KV cache)")


def _allocated_kv_of(f: GpuFit, kv: _KvTerms) -> int:
    if kv.blocks_override is not None and not kv.rules.override_checked:
        return _directly_sized_kv(kv)
    return max(f.kv_bytes, 0)


def free_reasons(fit: ModelFit, f: GpuFit) -> list[str]:
    """vLLM's start-up check on this GPU's free memory, in its own words, where it fails."""
    headroom = f.headroom.get("vllm_free_memory", 0)
    if headroom >= 0:
        return []
    available = headroom + f.budget  # free - committed - C_pre
    return [f"GPU {f.index}: vLLM will not start: " + vllm.startup_error(available, f.cuda_total, fit.gmu_vllm,
                                                                         f.budget)]
