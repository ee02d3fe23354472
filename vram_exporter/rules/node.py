"""The rulebooks applied to one node: which models GPUStack places, where, and whether their engine starts.

``fit_node(snapshot, cluster, models)`` is a pure function. Models already placed
(``placed_on``) book their claims first; then the candidates are placed one at a
time in manifest order, each seeing the claims (GPUStack) and the memory (vLLM)
of those placed before it, as GPUStack's scheduler does.

Each model is judged by its backend (rules/backends/: ``backends.of(model.backend)``); this module
orders them and books what each takes. It is made of two parts. ``static_fit`` needs the GPUs' sizes only: GPUStack never reads free
memory and vLLM's KV check does not depend on it, so it is computed once per set of inputs.
``with_free`` then applies free memory, vLLM's start-up check: this module's ``free_headroom``
and ``free_top`` are the only place that rule is written (the metrics apply it per GPU through
them too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from ..errors import ModelError
from ..snapshot import GpuReading, NodeSnapshot
from ..units import gib
from . import backends, gpustack
from .model import Cluster, ModelSpec
from .verdicts import (BOOKING_CHECK, BOOKING_TOLERANCE, CHECKS, ENGINE_CHECKS, Context, GpuBooking, GpuFit, ModelFit,  # noqa: F401
                       NodeFit, Probe, reasons)


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
    # who GPUStack books on each GPU (instances outside ``models`` unnamed): for with_booking_check
    tenants: dict[int, list[str]] = {i: ["an instance outside the manifest"] for i, c in claims.items() if c > 0}
    results: dict[str, ModelFit] = {}
    for model in models:  # running instances book first, whatever their place in the manifest
        if model.placed:
            results[model.name] = _book_placed(model, cluster, gpus, claims)
            for index in (() if results[model.name].error else model.placed_on):
                tenants.setdefault(index, []).append(model.name)
    today = dict(claims)
    for model in models:
        if not model.placed:
            fit = evaluate(model, cluster, gpus, Context(dict(claims), dict(committed)))
            results[model.name] = fit
            _commit(model, fit, cluster, gpus, claims, committed, tenants)
    results = {name: with_booking_check(fit, tenants) for name, fit in results.items()}
    bookings = tuple(
        GpuBooking(gpu.index, gpu.uuid, total := gpustack.reported_total(gpu.memory.total), cluster.system_reserved_vram,
                   today[gpu.index],
                   gpustack.allocatable_bytes(total, today[gpu.index], cluster.system_reserved_vram),
                   claims[gpu.index] - today[gpu.index] if predicted is None else predicted.get(gpu.index, 0))
        for gpu in gpus
    )
    return NodeFit(bookings, tuple(_with_version(results[m.name], m) for m in models), cluster)


def _with_version(fit: ModelFit, model: ModelSpec) -> ModelFit:
    """Every verdict says the engine version it assumed."""
    return fit if model.engine_version is None else replace(fit, engine_version=model.engine_version)


# --- free memory: vLLM's start-up check (free - C_pre >= R), written here only -------------------


def free_headroom(f: GpuFit, free: int) -> int | None:
    """free - (what candidates before it take) - C_pre - R; None for a running instance."""
    return None if f.free_need is None else free - f.free_need


def free_top(f: GpuFit, free: int) -> float:
    """The window's top once the start-up check is counted too (rounded down: it passes itself)."""
    if not top_moves(f):
        return f.gmu_max  # SGLang: free memory sizes its pool, it does not bound the fraction
    return window_top(free, f.free_need - f.budget, f.cuda_total, f.gmu_max_static)


def top_moves(f: GpuFit) -> bool:
    """Whether free memory moves the window's top on this GPU (vLLM's start-up check applies)."""
    return f.free_need is not None and f.free_check == "vllm_free_memory"


def window_top(free: int, beside_budget: int, cuda_total: int, static: float) -> float:
    """``free_top`` from plain numbers, for callers that take them out of the GpuFit once
    (present/collector.py, at every change of a reading): ``beside_budget`` is free_need - budget."""
    top = math.floor((free - beside_budget) / cuda_total * 10_000 + 1e-9) / 10_000
    return static if static < top else (top if top > 0 else 0.0)


def free_for_static_top(beside_budget: int, cuda_total: int, static: float) -> int | None:
    """The least free memory from which ``window_top`` is ``static`` (free memory no longer bounds the
    window), found on ``window_top`` itself, which only grows with free memory up to ``static``; None
    where there is none to find (``static`` not above 0). Made once per plan: at a reading, most tops
    are then one comparison (present/collector.py)."""
    if not static > 0 or cuda_total <= 0:
        return None

    def reached(free: int) -> bool:
        return window_top(free, beside_budget, cuda_total, static) == static

    low = high = beside_budget + math.ceil(static * cuda_total)  # within a few bytes of it
    step = 1
    while reached(low):
        low, step = low - step, step * 2
    step = 1
    while not reached(high):
        high, step = high + step, step * 2
    while high - low > 1:  # low does not reach it, high does
        middle = (low + high) // 2
        low, high = (low, middle) if reached(middle) else (middle, high)
    return high


def startable(fit: ModelFit, free: Mapping[int, int]) -> bool:
    """vLLM starts and serves max_model_len on every GPU the scheduler picks."""
    return starts_on(start_needs(fit), free)


def starts_on(needs: tuple[tuple[int, int], ...] | None, free: Mapping[int, int]) -> bool:
    """``startable`` from the model's ``start_needs``, for callers that take those once per plan."""
    return needs is not None and all(free.get(i, 0) >= need for i, need in needs)


def start_needs(fit: ModelFit) -> tuple[tuple[int, int], ...] | None:
    """What ``startable`` asks of free memory: (GPU, bytes) on the GPUs the scheduler picks; None where
    no free memory makes it start (an error, no GPU picked, a failing engine check). Free memory aside,
    it is static: callers take it once per plan and compare at every reading."""
    if fit.error or not fit.gpus:
        return None
    by_index = {f.index: f for f in fit.per_gpu}
    needs = []
    for i in fit.gpus:
        f = by_index.get(i)
        if f is None:
            continue
        if not _engine_passes(f):
            return None
        if f.free_need is not None:
            needs.append((i, f.free_need))
    return tuple(needs)


def vllm_starts_on(f: GpuFit, free: int) -> bool:
    """vLLM's two checks on one GPU: the KV cache for max_model_len, and (but for a running
    instance) free memory at start-up."""
    return _engine_passes(f) and (f.free_need is None or free >= f.free_need)


def _engine_passes(f: GpuFit) -> bool:
    """The engine's own checks on one GPU (the KV cache for max_model_len...), free memory aside."""
    return all(f.headroom[c] >= 0 for c in ENGINE_CHECKS if c in f.headroom)


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
    return reasons(fit, backends.of(fit.backend).fit.free_reasons)


def _book_placed(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], claims: dict[int, int]) -> ModelFit:
    by_index = {gpu.index: gpu for gpu in gpus}
    missing = [i for i in model.placed_on if i not in by_index]
    try:
        own = placed_claims(model, cluster, gpus)
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


def placed_claims(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> dict[int, int]:
    """A running instance's claims: GPUStack's own when known, else what its backend books."""
    if model.placed_claims is not None:
        indexes = {gpu.index for gpu in gpus}
        return {i: claim for i, claim in model.placed_claims.items() if i in indexes}
    return backends.of(model.backend).fit.placed_claims(model, cluster, gpus)


def _commit(model: ModelSpec, fit: ModelFit, cluster: Cluster, gpus: Sequence[GpuReading],
            claims: dict[int, int], committed: dict[int, int], tenants: dict[int, list[str]]) -> None:
    """Book every replica GPUStack can place, one at a time."""
    if fit.error or not fit.schedulable:
        return
    by_index = {gpu.index: gpu for gpu in gpus}
    backend = backends.of(model.backend).fit
    for _ in range(fit.replicas_placed):
        placement = backend.placement(model, cluster, gpus, claims)
        if placement is None:
            break
        for index, claim in placement.claims.items():
            claims[index] += claim
            tenants.setdefault(index, []).append(model.name)
            committed[index] += backend.committed_on(model, cluster, by_index[index], claim)


# --- the engine's take against GPUStack's booking, where another instance shares the GPU ------------------


def with_booking_check(fit: ModelFit, tenants: Mapping[int, Sequence[str]]) -> ModelFit:
    """BOOKING_CHECK on the GPUs ``fit``'s instance lands on where GPUStack books another instance too (placed,
    or placed by this node's prediction): an engine holding more than its claim takes memory GPUStack booked
    for that other one, which then fails its own start (issue 21 item 6: vLLM 0.34's extensible KV cache with
    --gpu-memory-utilization unset holds about the whole card)."""
    if fit.error or not fit.gpus:
        return fit
    per_gpu, said = [], []
    for f in fit.per_gpu:
        others = _others(tenants.get(f.index, ()), fit.name)
        if f.take is None or f.index not in fit.gpus or not others:
            per_gpu.append(f)
            continue
        per_gpu.append(replace(f, headroom={**f.headroom, BOOKING_CHECK: f.take.headroom}))
        if f.take.headroom < -BOOKING_TOLERANCE:
            said.append(f"GPU {f.index}: {f.take.said}, {gib(-f.take.headroom)} more than the {gib(f.take.claim)} "
                        f"GPUStack booked for it; {', '.join(others)} "
                        f"{'is' if len(others) == 1 else 'are'} booked on that GPU too and will find that memory "
                        f"taken. Fix: {f.take.fix}.")
    if per_gpu == list(fit.per_gpu):
        return fit
    fit = replace(fit, per_gpu=tuple(per_gpu), static_reasons=fit.static_reasons + tuple(said))
    return replace(fit, reasons=reasons(fit))


def _others(names: Sequence[str], own: str) -> list[str]:
    """Everyone booked on a GPU but this instance (another replica of the same model counts)."""
    rest = list(names)
    if own in rest:
        rest.remove(own)
    return list(dict.fromkeys(rest))


def evaluate(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context,
             placed_on: Sequence[int] | None = None) -> ModelFit:
    """One model against the node as it stands at its turn, by its backend. Pure; used again by the fix search."""
    return backends.of(model.backend).fit.evaluate(model, cluster, gpus, context, placed_on)


def probe(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context) -> Probe:
    """``evaluate`` reduced to its verdict, for the fix search: would the model fit, free memory aside?"""
    return backends.of(model.backend).fit.probe(model, cluster, gpus, context)
