"""Both rulebooks applied to one node: which models GPUStack places, where, and whether vLLM starts.

``fit_node(snapshot, cluster, models)`` is a pure function. Models already placed
(``placed_on``) book their claims first; then the candidates are placed one at a
time in manifest order, each seeing the claims (GPUStack) and the memory (vLLM)
of those placed before it, as GPUStack's scheduler does.

It is made of two parts. ``static_fit`` needs the GPUs' sizes only: GPUStack never reads free
memory and vLLM's KV check does not depend on it, so it is computed once per set of inputs.
``with_free`` then applies free memory, vLLM's start-up check: this module's ``free_headroom``
and ``free_top`` are the only place that rule is written (the metrics apply it per GPU through
them too).
"""

from __future__ import annotations

from ..errors import ModelError

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..snapshot import GpuReading, NodeSnapshot
from ..units import gib
from . import gpustack
from .backends.vllm import engine as vllm, runtime as vllm_runtime
from .model import RUNTIME_OVERHEAD_FALLBACK, Cluster, ModelSpec

CHECKS = ("gpustack_estimate", "gpustack_allocatable", "vllm_free_memory", "vllm_kv_cache",
          "gpustack_custom_claim", "sglang_kv_pool", "sglang_context", "sglang_free_memory")  # backend_fit.py
ENGINE_CHECKS = ("vllm_kv_cache", "sglang_kv_pool", "sglang_context")


@dataclass(frozen=True, slots=True)
class GpuBooking:
    """A GPU as GPUStack books it today, and what the candidates would add to that."""

    index: int
    uuid: str
    total: int  # T, whole MiB in bytes
    system_reserved: int
    claimed: int  # instances bound to it (running, booked): GPUStack's claims of today
    allocatable: int  # from those claims
    predicted: int = 0  # what the candidates (pending instances) would add, placed as predicted


@dataclass(frozen=True, slots=True)
class Context:
    """What a model sees at its turn: bytes claimed (GPUStack) and committed (vLLM) per GPU."""

    claims: Mapping[int, int] = field(default_factory=dict)
    committed: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GpuFit:
    """One model on one GPU: every check's headroom in bytes (>= 0 passes) and the working window."""

    index: int
    uuid: str
    budget: int  # vLLM's R on this GPU
    headroom: Mapping[str, float]  # check name -> bytes; a check that does not apply is absent
    gmu_min: float
    gmu_max: float
    max_model_len: int
    # What the free-memory dependent values are derived from (free_headroom, free_top).
    cuda_total: int = 0
    committed: int = 0  # memory candidates placed before this one will take on this GPU
    gmu_max_static: float = 1.0  # the window's top from every check but free memory
    free_need: int | None = None  # free memory vLLM's start-up check needs here (None: a running instance)
    kv_bytes: int = 0  # the KV cache vLLM gets here: R - weights - O
    weights: int = 0  # the weights vLLM loads here (its share under tensor/pipeline parallelism)
    free_check: str = "vllm_free_memory"  # the check free_need is for (SGLang: sglang_free_memory)

    @property
    def window_open(self) -> bool:
        return self.gmu_min <= self.gmu_max


@dataclass(frozen=True, slots=True)
class ModelFit:
    name: str
    error: str | None = None  # the model cannot be evaluated (bad world size, bad parameter...)
    placed: bool = False
    weights: int = 0
    estimate: int = 0
    bytes_per_token: int = 0
    kv_required: int = 0
    max_model_len: int = 0
    block_tokens: int = 0
    gmu_gpustack: float = 0.0
    gmu_vllm: float = 0.0
    schedulable: bool = False
    startable: bool = False
    gpus: tuple[int, ...] = ()  # where GPUStack puts (or has put) the first instance
    overcommit: bool = False
    replicas_placed: int = 0
    replicas: int = 1
    per_gpu: tuple[GpuFit, ...] = ()
    reasons: tuple[str, ...] = ()
    context: Context = field(default_factory=Context, compare=False)
    # The reasons that do not depend on free memory, which with_free weaves its own into.
    static_reasons: tuple[str, ...] = field(default=(), compare=False)
    kv_reasons: Mapping[int, str] = field(default_factory=dict, compare=False)
    backend: str = "vllm"  # vllm, sglang, custom: which selector and engine (rules/backends/__init__.py)

    @property
    def engine_reader(self) -> str | None:
        """The ``reader`` label of the engine's own fraction; None: not modelled (custom)."""
        return {"vllm": "vllm", "sglang": "sglang"}.get(self.backend)

    @property
    def fits(self) -> bool:
        return self.schedulable and self.startable

    @property
    def gmu_mismatch(self) -> bool:
        return abs(self.gmu_gpustack - self.gmu_vllm) > 1e-9


@dataclass(frozen=True, slots=True)
class NodeFit:
    gpus: tuple[GpuBooking, ...]
    models: tuple[ModelFit, ...]
    cluster: Cluster


def fit_node(snapshot: NodeSnapshot, cluster: Cluster, models: Sequence[ModelSpec],
             booked: Mapping[int, int] | None = None) -> NodeFit:
    """Both rulebooks on this snapshot, free memory included. ``booked``: claims on this node's GPUs
    of instances that are not among ``models``."""
    return apply_free(static_fit(snapshot, cluster, models, booked), free_memory(snapshot))


def free_memory(snapshot: NodeSnapshot) -> dict[int, int]:
    return {gpu.index: gpu.memory.free for gpu in snapshot.gpus if gpu.up}


def static_fit(snapshot: NodeSnapshot, cluster: Cluster, models: Sequence[ModelSpec],
               booked: Mapping[int, int] | None = None, predicted: Mapping[int, int] | None = None) -> NodeFit:
    """Everything but vLLM's start-up check: reads the GPUs' identities and sizes, never free memory.
    ``predicted``: the candidates' claims per GPU as decided over the whole cluster, shown instead of
    this node's own placement of them."""
    gpus = [gpu for gpu in snapshot.gpus if gpu.up]
    claims: dict[int, int] = {gpu.index: (booked or {}).get(gpu.index, 0) for gpu in gpus}
    committed: dict[int, int] = {gpu.index: 0 for gpu in gpus}
    results: dict[str, ModelFit] = {}
    for model in models:  # running instances book first, whatever their place in the manifest
        if model.placed:
            results[model.name] = _book_placed(model, cluster, gpus, claims)
    today = dict(claims)
    for model in models:
        if not model.placed:
            fit = evaluate(model, cluster, gpus, Context(dict(claims), dict(committed)))
            results[model.name] = fit
            _commit(model, fit, cluster, gpus, claims, committed)
    bookings = tuple(
        GpuBooking(gpu.index, gpu.uuid, gpustack.total_whole_mib(gpu.memory.total), cluster.system_reserved_vram,
                   today[gpu.index],
                   gpustack.allocatable_bytes(gpu.memory.total, today[gpu.index], cluster.system_reserved_vram),
                   claims[gpu.index] - today[gpu.index] if predicted is None else predicted.get(gpu.index, 0))
        for gpu in gpus
    )
    return NodeFit(bookings, tuple(results[m.name] for m in models), cluster)


# --- free memory: vLLM's start-up check (free - C_pre >= R), written here only -------------------


def free_headroom(f: GpuFit, free: int) -> int | None:
    """free - (what candidates before it take) - C_pre - R; None for a running instance."""
    return None if f.free_need is None else free - f.free_need


def free_top(f: GpuFit, free: int) -> float:
    """The window's top once the start-up check is counted too (rounded down: it passes itself)."""
    if f.free_need is None or f.free_check != "vllm_free_memory":
        return f.gmu_max  # SGLang: free memory sizes its pool, it does not bound the fraction
    top = math.floor((free - (f.free_need - f.budget)) / f.cuda_total * 10_000 + 1e-9) / 10_000
    static = f.gmu_max_static
    return static if static < top else (top if top > 0 else 0.0)


def startable(fit: ModelFit, free: Mapping[int, int]) -> bool:
    """vLLM starts and serves max_model_len on every GPU the scheduler picks."""
    if fit.error or not fit.gpus:
        return False
    by_index = {f.index: f for f in fit.per_gpu}
    return all(vllm_starts_on(by_index[i], free.get(i, 0)) for i in fit.gpus if i in by_index)


def vllm_starts_on(f: GpuFit, free: int) -> bool:
    """vLLM's two checks on one GPU: the KV cache for max_model_len, and (but for a running
    instance) free memory at start-up."""
    engine = all(f.headroom[c] >= 0 for c in ENGINE_CHECKS if c in f.headroom)
    return engine and (f.free_need is None or free >= f.free_need)


def apply_free(node: NodeFit, free: Mapping[int, int]) -> NodeFit:
    return replace(node, models=tuple(with_free(fit, free) for fit in node.models))


def with_free(fit: ModelFit, free: Mapping[int, int]) -> ModelFit:
    """``fit`` (static) with vLLM's start-up check on ``free`` (GPU index -> NVML free bytes)."""
    if fit.error:
        return fit
    per_gpu = tuple(
        f if f.free_need is None else
        replace(f, headroom={**f.headroom, f.free_check: free_headroom(f, free[f.index])},
                gmu_max=free_top(f, free[f.index]))
        for f in fit.per_gpu)
    live = replace(fit, per_gpu=per_gpu, startable=startable(fit, free))
    return replace(live, reasons=_reasons(live))


def _reasons(fit: ModelFit) -> tuple[str, ...]:
    reasons = list(fit.static_reasons)
    by_gpu = {f.index: f for f in fit.per_gpu}
    for index in fit.gpus:
        f = by_gpu.get(index)
        if f is None:
            continue
        if f.headroom.get("sglang_free_memory", 0) < 0:
            reasons.append(f"GPU {index}: SGLang sizes its KV pool from the free memory at start: with the free "
                           f"memory of now it falls {gib(-f.headroom['sglang_free_memory'])} short of one request of "
                           f"{fit.max_model_len} tokens (other processes hold it), and SGLang would cap requests")
        headroom = f.headroom.get("vllm_free_memory", 0)
        if headroom < 0:
            available = headroom + f.budget  # free - committed - C_pre
            reasons.append(f"GPU {index}: vLLM will not start: " + vllm.startup_error(
                available, f.cuda_total, fit.gmu_vllm, f.budget))
        if index in fit.kv_reasons:
            reasons.append(fit.kv_reasons[index])
    if fit.schedulable and not fit.startable and len(fit.gpus) == 1 and not fit.placed:
        others = [f.index for f in fit.per_gpu if f.index not in fit.gpus and _passes_all(f)]
        if others:
            reasons.append(f"GPUStack may pick GPU {', '.join(map(str, others))} instead (it passes GPUStack's tests "
                           "too; the placement strategy decides between them), and vLLM would start there.")
    return tuple(reasons)


@dataclass(frozen=True, slots=True)
class LiveValues:
    """What free memory moves for one model, in the order of its ``per_gpu``."""

    free_headroom: tuple[int | None, ...]  # None: a running instance, not held to the start-up check
    gmu_max: tuple[float, ...]
    startable: bool


def live_values(fit: ModelFit, free: Mapping[int, int]) -> LiveValues:
    """The free-memory dependent numbers of a static fit, for the metrics."""
    return LiveValues(tuple(free_headroom(f, free[f.index]) for f in fit.per_gpu),
                      tuple(free_top(f, free[f.index]) for f in fit.per_gpu), startable(fit, free))


def _book_placed(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], claims: dict[int, int]) -> ModelFit:
    by_index = {gpu.index: gpu for gpu in gpus}
    missing = [i for i in model.placed_on if i not in by_index]
    try:
        own = _placed_claims(model, cluster, gpus, by_index)
    except ModelError as exc:
        return ModelFit(model.name, error=str(exc), placed=True)
    context = Context(dict(claims), {})
    for index, claim in own.items():
        claims[index] += claim
    if missing:
        return ModelFit(model.name, placed=True,
                        error=f"placed_on names GPU {missing} which this node does not have (or is down)")
    # Judge the running instance as GPUStack would on a fresh placement: without its own claim.
    return evaluate(model, cluster, gpus, context, placed_on=model.placed_on)


def _placed_claims(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], by_index) -> dict[int, int]:
    """A running instance's claims: GPUStack's own when known, else what its backend books."""
    if model.placed_claims is not None:
        return {i: claim for i, claim in model.placed_claims.items() if i in by_index}
    if model.backend != "vllm":
        from .backends import backend_fit
        from . import backends
        book = backend_fit.booking_on(model, _views(gpus, {}, cluster))
        return backends.claims_of(model, {i: by_index[i].memory.total for i in model.placed_on if i in by_index}, book)
    gmu = model.gpustack.gpu_memory_utilization
    return {i: gpustack.claim_bytes(by_index[i].memory.total, gmu) for i in model.placed_on if i in by_index}


def _commit(model: ModelSpec, fit: ModelFit, cluster: Cluster, gpus: Sequence[GpuReading],
            claims: dict[int, int], committed: dict[int, int]) -> None:
    """Book every replica GPUStack can place, one at a time."""
    if fit.error or not fit.schedulable:
        return
    by_index = {gpu.index: gpu for gpu in gpus}
    if model.backend != "vllm":
        from .backends import backend_fit
        for _ in range(fit.replicas_placed):
            placement = backend_fit.placement(model, cluster, gpus, claims)
            if placement is None:
                break
            for index, claim in placement.claims.items():  # the engine takes about what GPUStack books
                claims[index] += claim
                committed[index] += claim + cluster.vllm_context_overhead
        return
    params = model.gpustack
    for _ in range(fit.replicas_placed):
        placement = _placement(model, cluster, gpus, claims, params)
        if placement is None:
            break
        for index, claim in placement.claims.items():
            claims[index] += claim
            gpu = by_index[index]
            committed[index] += vllm.budget_bytes(vllm.cuda_total(gpu.memory.total, gpu.memory.reserved),
                                                  _vllm_gmu(model, cluster)) + cluster.vllm_context_overhead


def _views(gpus: Sequence[GpuReading], claims: Mapping[int, int], cluster: Cluster) -> list[gpustack.GpuView]:
    return [
        gpustack.GpuView(gpu.index, gpustack.total_whole_mib(gpu.memory.total),
                         gpustack.allocatable_bytes(gpu.memory.total, claims.get(gpu.index, 0),
                                                    cluster.system_reserved_vram))
        for gpu in gpus
    ]


def _placement(model, cluster, gpus, claims, params, replica_count=None):
    return gpustack.place(
        _views(gpus, claims, cluster),
        estimate=gpustack.estimate_bytes(model.weights_bytes, model.env),
        gmu=params.gpu_memory_utilization,
        world_size=params.world_size,
        arch=gpustack.tp_arch(model.arch, params),
        scheduler=cluster.scheduler,
        pinned=model.pinned_gpus,
        replica_count=model.replicas if replica_count is None else replica_count,
    )


def _vllm_gmu(model: ModelSpec, cluster: Cluster) -> float:
    given = model.vllm.gpu_memory_utilization
    return cluster.vllm_default_gpu_memory_utilization if given is None else given


def evaluate(
    model: ModelSpec,
    cluster: Cluster,
    gpus: Sequence[GpuReading],
    context: Context,
    placed_on: Sequence[int] | None = None,
) -> ModelFit:
    """One model against the node as it stands at its turn. Pure; used again by the fix search."""
    if model.backend != "vllm":  # SGLang and custom backends: their own selector (and engine)
        from .backends import backend_fit
        return backend_fit.evaluate(model, cluster, gpus, context, placed_on)
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
    batch_flag: int | None = None  # --max-num-batched-tokens; None: vLLM's default for the GPU


def _refuse(model: ModelSpec, gs, gmu_v: float) -> None:
    """Raise ModelError where the model cannot be judged (or GPUStack refuses it outright)."""
    for name, value in (("GPUStack", gs.gpu_memory_utilization), ("vLLM", gmu_v)):
        if not 0 < value <= 1:
            raise ModelError(f"gpu_memory_utilization {value} as {name} reads it must be in (0, 1]")
    if gs.tensor_parallel_size and (problem := gpustack.tp_divisibility_problem(gpustack.tp_arch(model.arch, gs),
                                                                                  gs.tensor_parallel_size)):
        raise ModelError(problem + " Consider adjusting your tensor-parallel-size value.")
    if problem := gpustack.pinned_count_problem(model.pinned_gpus, gs.world_size, model.env):
        raise ModelError(problem)


def _kv_terms(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> _KvTerms:
    vp = model.vllm
    tp, pp = vp.tensor_parallel_size, vp.pipeline_parallel_size
    dtype_bytes = vllm.kv_dtype_bytes(model.arch, vp.kv_cache_dtype, vp.dtype)
    per_token = vllm.bytes_per_token(model.arch, tp=tp, pp=pp, dtype_bytes=dtype_bytes)
    block = vllm.block_tokens(model.arch, vp.block_size)
    cap = model.arch.max_position_embeddings
    target_len = _target_len(model, vp, cap)
    held = vllm_runtime.rules_for(cluster.vllm_version).held_back_blocks
    required = (vllm.required_kv_bytes(model.arch, target_len, block, per_token, held_back=held,
                                       batch_tokens=_batch_in_flight(next((g for g in gpus if g.up), None),
                                                                     vp.max_num_batched_tokens))
                if target_len > 0 else 0)
    return _KvTerms(
        gmu=_vllm_gmu(model, cluster), per_token=per_token, block=block, cap=cap, target_len=target_len,
        required=required, weights_per_gpu=math.ceil(model.weights_bytes / (tp * pp)),
        overhead=_runtime_overhead(model, cluster, next((g for g in gpus if g.up), None)), held_back=held,
        batch_flag=vp.max_num_batched_tokens)


def _runtime_overhead(model: ModelSpec, cluster: Cluster, gpu: GpuReading | None) -> int:
    """O: the model's own, else the cluster's, else (one GPU, no tensor or pipeline parallelism) the fitted
    model at the batch `vllm serve` will run (rules/backends/vllm/runtime.py), else the fallback constant."""
    for given in (model.runtime_overhead, cluster.vllm_runtime_overhead):
        if given is not None:
            return given
    if model.vllm.tensor_parallel_size * model.vllm.pipeline_parallel_size > 1:
        return RUNTIME_OVERHEAD_FALLBACK  # the fit is of one GPU; NCCL and sharded MLPs were not measured
    fitted = vllm_runtime.fitted_runtime_overhead(
        model.arch, version=cluster.vllm_version, device_total_bytes=gpu.memory.total if gpu and gpu.memory else None,
        device_name=gpu.name if gpu else "", max_num_batched_tokens=model.vllm.max_num_batched_tokens)
    return RUNTIME_OVERHEAD_FALLBACK if fitted is None else fitted


def _batch_in_flight(gpu: GpuReading | None, flag: int | None = None) -> int:
    """Sliding-window layers hold the tokens in flight beyond the window: `vllm serve`'s default batch
    depends on the GPU, and with async scheduling (vLLM's default) two batches are in flight
    (vllm/config/vllm.py, VllmConfig.max_in_flight_tokens / max_concurrent_batches, vLLM 0.26.0)."""
    if flag is not None:
        return 2 * flag
    if gpu is None or gpu.memory is None:
        return 2 * vllm.SLIDING_BATCH_TOKENS
    return 2 * vllm.default_max_num_batched_tokens(gpu.memory.total, gpu.name)


def _kv_check(gpu: GpuReading, kv: _KvTerms, cluster: Cluster, arch) -> vllm.VllmGpuCheck:
    return vllm.check_gpu(
        cuda_total_bytes=vllm.cuda_total(gpu.memory.total, gpu.memory.reserved), free_bytes=0, gmu=kv.gmu,
        weights_per_gpu=kv.weights_per_gpu, runtime_overhead=kv.overhead,
        context_overhead=cluster.vllm_context_overhead, required_kv=kv.required, arch=arch, block=kv.block,
        per_token=kv.per_token, max_len_cap=kv.cap, held_back=kv.held_back,
        batch_tokens=_batch_in_flight(gpu, kv.batch_flag))


@dataclass(frozen=True, slots=True)
class Probe:
    """``evaluate`` reduced to its verdict, for the fix search: would the model fit, free memory aside?"""

    fits: bool  # GPUStack places it and vLLM's KV check passes on the GPUs it picks
    needs: tuple[tuple[int, int], ...] = ()  # (GPU, free memory vLLM's start-up check needs there)


def probe(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context) -> Probe:
    """The same rules as ``evaluate`` (a property test holds them equal), without what the verdict
    does not need: the other GPUs' checks, the replica count, the reasons."""
    if model.backend != "vllm":
        fit = evaluate(model, cluster, gpus, context)
        return Probe(fit.schedulable and fit.startable and not fit.error)
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
        check = _kv_check(by_index[index], kv, cluster, model.arch)
        if check.kv_cache_headroom < 0:
            return Probe(False)
        needs.append((index, context.committed.get(index, 0) + cluster.vllm_context_overhead + check.budget))
    return Probe(True, tuple(needs))


def _evaluate(model, cluster, gpus, context, placed_on) -> ModelFit:
    gs = model.gpustack
    kv = _kv_terms(model, cluster, gpus)
    _refuse(model, gs, kv.gmu)
    gmu_v = kv.gmu
    estimate = gpustack.estimate_bytes(model.weights_bytes, model.env)

    placement = None
    if placed_on is not None:
        chosen = tuple(placed_on)
    else:
        placement = _placement(model, cluster, gpus, context.claims, gs)
        chosen = placement.gpus if placement else ()
    replicas_placed = _count_replicas(model, cluster, gpus, context, gs) if placement else 0
    n_gpus = len(chosen) or gs.world_size or 1

    per_gpu = []
    views = {v.index: v for v in _views(gpus, context.claims, cluster)}
    shown = [g for g in gpus if placed_on is None or g.index in placed_on]
    for gpu in shown:
        per_gpu.append(_gpu_fit(
            gpu, views[gpu.index], context, running=placed_on is not None, estimate=estimate, n_gpus=n_gpus,
            gmu_g=gs.gpu_memory_utilization, scheduler=cluster.scheduler, cluster=cluster, kv=kv, model=model))
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
    return _with_static_reasons(fit, model, views, cluster)


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
    check = _kv_check(gpu, kv, cluster, model.arch)
    weights_per_gpu, overhead, required = kv.weights_per_gpu, kv.overhead, kv.required
    total = view.total
    if n_gpus == 1:
        tests = gpustack.single_gpu_tests(view, estimate, gmu_g, scheduler)
        est_headroom, alloc_headroom = tests.estimate_headroom, tests.allocatable_headroom
    else:  # each GPU of a multi-GPU instance contributes int(g * T) towards E
        est_headroom = gpustack.claim_bytes(total, gmu_g) - estimate / n_gpus
        alloc_headroom = view.allocatable - total * gmu_g
    headroom = {"gpustack_estimate": est_headroom, "gpustack_allocatable": alloc_headroom,
                "vllm_kv_cache": check.kv_cache_headroom}
    lo, hi_static = _window(view, estimate, n_gpus, scheduler, t_cuda, weights_per_gpu, overhead, required)
    # A running instance passed its start-up check long ago: it needs no free memory.
    need = None if running else committed + cluster.vllm_context_overhead + check.budget
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


def _with_static_reasons(fit: ModelFit, model: ModelSpec, views, cluster: Cluster) -> ModelFit:
    head = []
    if not fit.schedulable:
        head.append(_pending_reason(fit, model, views, cluster))
    elif fit.overcommit:
        head.append("GPUStack accepts the manual GPU selection as overcommit: its own tests fail there.")
    kv = {f.index: f"GPU {f.index}: " + _kv_reason(fit, f) for f in fit.per_gpu
          if f.index in fit.gpus and f.headroom["vllm_kv_cache"] < 0}
    fit = replace(fit, static_reasons=tuple(head), kv_reasons=kv)
    return replace(fit, reasons=_reasons(fit))


def _passes_all(f: GpuFit) -> bool:
    return all(value >= 0 for value in f.headroom.values())


def _pending_reason(fit: ModelFit, model: ModelSpec, views, cluster: Cluster) -> str:
    text = "GPUStack leaves it Pending (No suitable workers):\n" + gpustack.pending_message(
        fit.estimate, fit.gmu_gpustack, list(views.values()), model.gpustack.world_size)
    if fit.per_gpu and all(not f.window_open for f in fit.per_gpu):
        f = fit.per_gpu[0]
        text += (f"\nNo value of --gpu-memory-utilization places it on this node: it needs at least "
                 f"{f.gmu_min:.4f} but at most {f.gmu_max:.4f} works.")
    return text


def _kv_reason(fit: ModelFit, f: GpuFit) -> str:
    kv = f.headroom["vllm_kv_cache"] + fit.kv_required
    if kv <= 0:
        return ("vLLM fails: No available memory for the cache blocks "
                f"(budget {gib(f.budget)} minus weights and overhead leaves {gib(kv)}).")
    return (f"vLLM fails: To serve at least one request with the model's max seq len ({fit.max_model_len}), "
            f"{gib(fit.kv_required)} KV cache is needed, which is larger than the available KV cache memory "
            f"({gib(kv)}); the longest context that fits is {f.max_model_len} tokens.")

