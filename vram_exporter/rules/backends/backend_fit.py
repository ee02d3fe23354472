"""SGLang and custom-backend models on one node: GPUStack's placement (backends.py) and, for SGLang,
SGLang's own KV pool (sglang.py). node.py hands every non-vLLM model here, once.

Checks (``vram_model_headroom_bytes{check}``, negative fails):
- ``gpustack_estimate`` = T x f - E and ``gpustack_allocatable`` = A - T x f (SGLang; f GPUStack's
  --mem-fraction-static), ``gpustack_custom_claim`` = A - max(E, int(T x fraction)) (custom);
- ``sglang_kv_pool``: the KV pool SGLang would size here, in bytes (<= 0: "Not enough memory");
- ``sglang_context``: that pool minus one request at the full context length (SGLang then starts
  but caps requests at the pool: the explain page says so).
The free memory SGLang sizes its pool from is taken as the GPU's CUDA total minus what the models
placed before it take and the process's own context (``vllm_context_overhead``, the same CUDA
context): memory held by other processes is not counted here (a live-free reading is left to do).
A custom backend's engine is not modelled: it is "startable" wherever GPUStack places it, and the
reasons say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from ...errors import ModelError
from ...snapshot import GpuReading
from ...units import gib
from .. import backends, gpustack
from .custom import selector as gpustack_custom
from .sglang import selector as gpustack_sglang, engine as sglang
from .vllm import engine as vllm
from ..model import Cluster, ModelSpec
from ..node import Context, GpuFit, ModelFit, _views

SGLANG_CHECKS = ("sglang_kv_pool", "sglang_context")
REQ_FLOOR = sglang.REQ_MARGIN + 1  # max_req_input_len = pool - 1 - 5 must be > 0


def evaluate(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context,
             placed_on: Sequence[int] | None = None) -> ModelFit:
    try:
        return _evaluate(model, cluster, gpus, context, placed_on)
    except ModelError as exc:
        return ModelFit(model.name, error=str(exc), placed=placed_on is not None, weights=model.weights_bytes,
                        context=context, backend=model.backend)


def booking_on(model: ModelSpec, views: Sequence[gpustack.GpuView]) -> backends.Booking:
    counts = (len(model.pinned_gpus),) if model.pinned_gpus else ()
    smallest = model.sizing_total or backends.min_total(views, model.pinned_gpus)
    return backends.booking(model, smallest, selected_per_worker=counts)


def placement(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], claims, replica_count=None):
    views = _views(gpus, claims, cluster)
    return backends.place(model, views, scheduler=cluster.scheduler, book=booking_on(model, views),
                          pinned=model.pinned_gpus, replica_count=replica_count)


def _evaluate(model, cluster, gpus, context, placed_on) -> ModelFit:
    views = _views(gpus, context.claims, cluster)
    book = booking_on(model, views)
    estimate = gpustack.estimate_bytes(model.weights_bytes, model.env)
    chosen: tuple[int, ...]
    place = None
    if placed_on is not None:
        chosen = tuple(placed_on)
    else:
        place = backends.place(model, views, scheduler=cluster.scheduler, book=book, pinned=model.pinned_gpus)
        chosen = place.gpus if place else ()
    engine = _SglangEngine(model, cluster, gpus) if model.backend == "sglang" else None
    by_view = {v.index: v for v in views}
    shown = [g for g in gpus if placed_on is None or g.index in placed_on]
    n = len(chosen) or (book.world_size or 1)
    per_gpu = tuple(_gpu_fit(model, g, by_view[g.index], context, book, estimate, n, engine, placed_on is not None)
                    for g in shown)
    engine_ok = all(f.headroom.get(c, 0) >= 0 for f in per_gpu if f.index in chosen for c in SGLANG_CHECKS)
    replicas = _count_replicas(model, cluster, gpus, context) if place else 0
    fit = ModelFit(
        name=model.name, placed=placed_on is not None, weights=model.weights_bytes, estimate=estimate,
        bytes_per_token=engine.cell if engine else 0, kv_required=engine.required if engine else 0,
        max_model_len=engine.context_len if engine else 0, block_tokens=engine.params.page_size if engine else 0,
        gmu_gpustack=book.fraction or 0.0, gmu_vllm=engine.fraction if engine else (book.fraction or 0.0),
        schedulable=placed_on is not None or place is not None, startable=bool(chosen) and engine_ok,
        gpus=chosen, overcommit=bool(place and place.overcommit),
        replicas_placed=replicas if placed_on is None else model.replicas, replicas=model.replicas,
        per_gpu=per_gpu, context=context, backend=model.backend)
    return _with_reasons(fit, model, views, book, engine)


class _SglangEngine:
    """What SGLang's pool needs of a model, whichever GPU it lands on."""

    def __init__(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]):
        self.params = p = sglang.sglang_params(model.backend_parameters)
        arch = model.arch
        smallest = min((g.memory.total for g in gpus), default=0)
        self.fraction = sglang.default_mem_fraction_static(smallest, p, arch)
        self.cell = sglang.cell_size(arch, tp=p.tp, pp=p.pp, kv_bytes=sglang.kv_bytes_per_element(arch, p.kv_cache_dtype))
        given = model.max_model_len if model.max_model_len is not None else p.context_length
        self.context_len = sglang.context_length(arch.hf_context_len, given, model.env)
        self.required = self.context_len * self.cell
        self.weights = math.ceil(model.weights_bytes / (p.tp * p.pp))
        self.overhead = 0 if model.runtime_overhead is None else model.runtime_overhead
        self.context_overhead = cluster.vllm_context_overhead

    def pool_tokens(self, gpu: GpuReading, committed: int) -> int:
        free = vllm.cuda_total(gpu.memory.total, gpu.memory.reserved) - committed - self.context_overhead
        return sglang.pool_tokens(free_at_start=free, mem_fraction_static=self.fraction, weights=self.weights,
                                  pre_pool_overhead=self.overhead, cell=self.cell, page_size=self.params.page_size,
                                  max_total_tokens=self.params.max_total_tokens)


def _gpu_fit(model, gpu, view, context, book, estimate, n, engine, running=False) -> GpuFit:
    committed = context.committed.get(gpu.index, 0)
    if model.backend == "custom":
        claim = gpustack_custom_claim(view, estimate, book.fraction, n)
        headroom = {"gpustack_custom_claim": view.allocatable - claim}
        return GpuFit(gpu.index, gpu.uuid, claim, headroom, 0.0, 1.0, 0, committed=committed, free_need=None)
    f = book.fraction or 0.0
    booked = view.total * f
    headroom: dict[str, float] = {
        "gpustack_estimate": booked - estimate if n == 1 else gpustack_sglang.claim_bytes(view.total, f) - estimate / n,
        "gpustack_allocatable": view.allocatable - booked,
    }
    tokens = engine.pool_tokens(gpu, committed)
    headroom["sglang_kv_pool"] = tokens * engine.cell if tokens > REQ_FLOOR else -engine.cell * (REQ_FLOOR - tokens)
    headroom["sglang_context"] = (tokens - engine.context_len) * engine.cell
    budget = int((vllm.cuda_total(gpu.memory.total, gpu.memory.reserved) - committed - engine.context_overhead)
                 * engine.fraction)
    # SGLang's pool comes from the free memory at start: the free memory that gives one full-context request.
    need = (None if running else committed + engine.context_overhead
            + math.ceil((engine.weights + engine.overhead + engine.required) / engine.fraction)
            if engine.fraction > 0 else None)
    longest = max(min(engine.context_len, tokens), 0)
    # The window of --mem-fraction-static: GPUStack's two tests, and SGLang's pool holding the context.
    free_at_start = vllm.cuda_total(gpu.memory.total, gpu.memory.reserved) - committed - engine.context_overhead
    lows = [estimate / (n * view.total) if view.total else 1.0,
            (engine.weights + engine.overhead + engine.required) / free_at_start if free_at_start > 0 else 1.0]
    lo = max(*lows, 0.0)
    hi = min(view.allocatable / view.total if view.total else 0.0, 1.0)
    return GpuFit(gpu.index, gpu.uuid, budget, headroom, math.ceil(lo * 10_000) / 10_000,
                  math.floor(hi * 10_000) / 10_000, longest, committed=committed, free_need=need,
                  kv_bytes=max(tokens, 0) * engine.cell, weights=engine.weights, free_check="sglang_free_memory",
                  cuda_total=vllm.cuda_total(gpu.memory.total, gpu.memory.reserved),
                  gmu_max_static=math.floor(hi * 10_000) / 10_000)


def gpustack_custom_claim(view, estimate, fraction, n) -> int:
    """What a custom backend books on one GPU of an n-GPU placement (gpustack_custom.py)."""
    if n > 1:
        return max(estimate // n, gpustack_custom.claim_on(view, estimate, fraction) if fraction is not None else 0)
    return gpustack_custom.claim_on(view, estimate, fraction)


def _count_replicas(model, cluster, gpus, context) -> int:
    return gpustack.replicas_placed(model.replicas, context.claims,
                                    lambda claims: placement(model, cluster, gpus, claims))


def _with_reasons(fit: ModelFit, model, views, book, engine) -> ModelFit:
    reasons = []
    if book.note:
        reasons.append(book.note)
    if not fit.schedulable:
        reasons.append("GPUStack leaves it Pending (No suitable workers):\n"
                       + backends.pending_message(model, views, book, model.pinned_gpus))
    elif fit.overcommit:
        reasons.append("GPUStack accepts the manual GPU selection as overcommit: its own tests fail there.")
    if model.backend == "custom":
        reasons.append("a custom backend's engine is not modelled: only GPUStack's placement is judged")
    if engine is not None:
        if not book.fraction_given and abs(engine.fraction - (book.fraction or 0)) > 1e-9:
            reasons.append(f"GPUStack books --mem-fraction-static={book.fraction} (its port of SGLang's default for "
                           f"the smallest card) while SGLang will take {engine.fraction:.4g}: write "
                           f"--mem-fraction-static explicitly so both read the same")
        for f in fit.per_gpu:
            if f.index not in fit.gpus:
                continue
            if f.headroom["sglang_kv_pool"] < 0:
                reasons.append(f"GPU {f.index}: SGLang fails: " + sglang.not_enough_memory(engine.fraction))
            elif f.headroom["sglang_context"] < 0:
                reasons.append(f"GPU {f.index}: SGLang starts, but its KV pool holds {f.kv_bytes // engine.cell} tokens "
                               f"({gib(f.kv_bytes)}): requests are capped below the context length "
                               f"{engine.context_len} ({gib(engine.required)} needed)")
    fit = replace(fit, static_reasons=tuple(reasons))
    return replace(fit, reasons=tuple(reasons))
