"""Which GPUStack selector places a model: the one place that branches on the model's backend.

GPUStack 2.3.0 picks the selector by backend (``gpustack/scheduler/scheduler.py``):
vLLM -> ``VLLMResourceFitSelector`` (gpustack.py), SGLang -> ``SGLangResourceFitSelector``
(gpustack_sglang.py), Custom -> ``CustomBackendResourceFitSelector`` (gpustack_custom.py).
Each books a fraction of every card it uses: vLLM's --gpu-memory-utilization (0.9 if absent),
SGLang's --mem-fraction-static (GPUStack's port of SGLang's default if absent), a custom backend's
declared fraction (none if absent: the bare estimate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...errors import ModelError
from .. import gpustack
from .custom import selector as gpustack_custom
from .sglang import selector as gpustack_sglang
from ..model import ModelSpec, Scheduler

FRACTION_FLAG = {"vllm": "--gpu-memory-utilization", "sglang": "--mem-fraction-static",
                 "custom": "--gpu-memory-utilization / --mem-fraction-static"}
ENGINE = {"vllm": "vLLM", "sglang": "SGLang", "custom": "a custom backend"}


@dataclass(frozen=True, slots=True)
class Booking:
    """What GPUStack reads of one model's parameters to place it on a worker."""

    fraction: float | None  # booked of each card's total; None: custom without one (claims E)
    world_size: int | None
    fraction_given: bool = True
    note: str | None = None  # said on the model (a repeated flag read differently)


def booking(spec: ModelSpec, min_total: int, *, selected_per_worker: Sequence[int] = ()) -> Booking:
    """GPUStack's reading of ``spec`` for GPUs whose smallest total is ``min_total`` (SGLang's
    default fraction depends on it). Raises ModelError where GPUStack refuses the model."""
    if spec.backend == "sglang":
        p = gpustack_sglang.gpustack_sglang_params(spec.backend_parameters)
        gpustack_sglang.validate(spec.arch, p)
        if problem := gpustack.pinned_count_problem(spec.pinned_gpus, p.world_size, spec.env):
            raise ModelError(problem)  # base_candidate_selector.py::_set_gpu_count
        vision = ({"num_hidden_layers": spec.arch.vision_layers, "hidden_size": spec.arch.vision_hidden_size or 1024}
                  if spec.arch.has_vision else None)
        fraction = gpustack_sglang.gpustack_mem_fraction_static(min_total, p, vision,
                                                                selected_per_worker=selected_per_worker)
        return Booking(fraction, p.world_size, p.mem_fraction_static is not None)
    if spec.backend == "custom":
        declared = gpustack_custom.whole_card_fraction(spec.run_command, spec.backend_parameters)
        return Booking(declared.value, None, declared.value is not None, declared.note())
    gs = spec.gpustack
    if gs.tensor_parallel_size and (problem := gpustack.tp_divisibility_problem(spec.arch, gs.tensor_parallel_size)):
        raise ModelError(problem + " Consider adjusting your tensor-parallel-size value.")
    return Booking(gs.gpu_memory_utilization, gs.world_size, gs.gmu_given)


def smallest_total(totals: Mapping[int, Mapping[int, int]], pinned: Mapping[int, Sequence[int]] | None) -> int:
    """``_get_min_gpu_sum`` over several workers: ``totals`` worker -> GPU index -> bytes (the ready workers
    the model may use); with manual selection only the selected GPUs count. Whole MiB, as workers report."""
    chosen = [t for w, gpus in totals.items() for i, t in gpus.items()
              if pinned is None or i in pinned.get(w, ())]
    return gpustack.total_whole_mib(min(chosen, default=0))


def min_total(views: Sequence[gpustack.GpuView], pinned: Sequence[int] | None = None) -> int:
    """The smallest card SGLang's default fraction is computed for (``_get_min_gpu_sum``): the selected
    GPUs with manual selection, else every GPU of the worker(s)."""
    chosen = [v for v in views if not pinned or v.index in pinned]
    return min((v.total for v in chosen), default=0)


def place(spec: ModelSpec, views: Sequence[gpustack.GpuView], *, scheduler: Scheduler, book: Booking,
          pinned: Sequence[int] | None = None, replica_count: int | None = None) -> gpustack.Placement | None:
    """Where GPUStack puts one instance of ``spec`` on this worker, or None (pending)."""
    estimate = gpustack.estimate_bytes(spec.weights_bytes, spec.env)
    replicas = spec.replicas if replica_count is None else replica_count
    if spec.backend == "sglang":
        assert book.fraction is not None
        return gpustack_sglang.place(views, estimate=estimate, fraction=book.fraction, world_size=book.world_size,
                                     arch=spec.arch, check_vision=not _language_only(spec), pinned=pinned,
                                     replica_count=replicas)
    if spec.backend == "custom":
        return gpustack_custom.place(views, estimate=estimate, fraction=book.fraction, pinned=pinned,
                                     replica_count=replicas)
    assert book.fraction is not None
    return gpustack.place(views, estimate=estimate, gmu=book.fraction, world_size=book.world_size, arch=spec.arch,
                          scheduler=scheduler, pinned=pinned, replica_count=replicas)


def candidates(spec: ModelSpec, views: Sequence[gpustack.GpuView], *, scheduler: Scheduler, book: Booking,
               pinned: Sequence[int] | None = None) -> list[gpustack.Placement]:
    """Every candidate of this worker, as the selector lists them before the placement scorer picks:
    one per passing GPU on the single-GPU path, else the one ``place`` finds."""
    estimate = gpustack.estimate_bytes(spec.weights_bytes, spec.env)
    single: list[gpustack.Placement] = []
    if not pinned and spec.backend == "sglang" and not (book.world_size and book.world_size > 1):
        assert book.fraction is not None
        single = [gpustack.Placement((g.index,), {g.index: gpustack_sglang.claim_bytes(g.total, book.fraction)},
                                     "single")
                  for g in views if g.total and gpustack_sglang.single_gpu_passes(g, estimate, book.fraction)]
    elif not pinned and spec.backend == "custom":
        single = [gpustack.Placement((g.index,), {g.index: c}, "single") for g in views
                  if g.allocatable >= (c := gpustack_custom.claim_on(g, estimate, book.fraction))]
    if single:
        return single
    found = place(spec, views, scheduler=scheduler, book=book, pinned=pinned)
    return [found] if found is not None else []


def pending_message(spec: ModelSpec, views: Sequence[gpustack.GpuView], book: Booking,
                    pinned: Sequence[int] | None = None) -> str:
    estimate = gpustack.estimate_bytes(spec.weights_bytes, spec.env)
    if spec.backend == "sglang":
        assert book.fraction is not None
        return gpustack_sglang.pending_message(estimate, book.fraction, views, book.world_size, spec.arch,
                                               not _language_only(spec), pinned=bool(pinned))
    if spec.backend == "custom":
        return gpustack_custom.pending_message(estimate, views, book.fraction, pinned=bool(pinned))
    assert book.fraction is not None
    return gpustack.pending_message(estimate, book.fraction, views, book.world_size)


def claims_of(spec: ModelSpec, totals: Mapping[int, int], book: Booking) -> dict[int, int]:
    """What a placed instance books on each of its GPUs when GPUStack's own claims are not known."""
    estimate = gpustack.estimate_bytes(spec.weights_bytes, spec.env)
    if spec.backend == "custom":  # as the single-GPU and multi-GPU paths book (a manual one: GPUStack's claims)
        views = {i: gpustack.GpuView(i, gpustack.total_whole_mib(t), 0) for i, t in totals.items()}
        if len(views) == 1:
            return {i: gpustack_custom.claim_on(v, estimate, book.fraction) for i, v in views.items()}
        return {i: max(estimate // len(views), gpustack_custom.claim_on(v, estimate, book.fraction)
                       if book.fraction is not None else 0) for i, v in views.items()}
    assert book.fraction is not None
    return {i: int(gpustack.total_whole_mib(t) * book.fraction) for i, t in totals.items()}


def _language_only(spec: ModelSpec) -> bool:
    return gpustack_sglang.gpustack_sglang_params(spec.backend_parameters).language_only if spec.backend == "sglang" \
        else False
