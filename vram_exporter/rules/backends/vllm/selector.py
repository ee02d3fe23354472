"""GPUStack 2.3.0's placement of a vLLM model on one worker (docs/rulebooks.md#a-gpustacks-placement).

Source: ``gpustack/policies/candidate_selectors/vllm_resource_fit_selector.py``: the single-GPU tests
(``E > total * g`` and ``allocatable / total < g`` exclude a GPU: rules/gpustack.py ``single_gpu_tests``),
the multi-GPU walk (``allocatable / total > g`` strictly, largest allocatable first, each GPU adding
int(total * g), stopping at the first count that divides the heads and vocabulary and covers E), and the
claim int(total * g) on every GPU used. g is --gpu-memory-utilization as GPUStack reads it (the first
occurrence; 0.9 if absent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ....errors import ModelError
from ....units import GIB
from ...gpustack import (Booking, GpuView, Placement, WorkersPlacement, WorkerView, byte_to_gib, listed,
                         manual_claims, model_estimate, multi_gpu_claim, requirement_lines, selector_message,
                         single_gpu_claim, single_gpu_tests, tp_arch, tp_divisibility_problem)
from ...model import Architecture, ModelSpec, Scheduler


def tp_divisibility(spec: ModelSpec) -> str | None:
    """The selector's refusal of a --tensor-parallel-size that does not divide the heads or vocabulary
    (the vision heads unless --language-model-only: ``tp_arch``)."""
    gs = spec.gpustack
    if not gs.tensor_parallel_size:
        return None
    return tp_divisibility_problem(tp_arch(spec.arch, gs), gs.tensor_parallel_size)


def tp_problem(spec: ModelSpec) -> str | None:
    """``tp_divisibility`` as the single-worker selector words it."""
    problem = tp_divisibility(spec)
    return problem + " Consider adjusting your tensor-parallel-size value." if problem else None


def booking(spec: ModelSpec, min_total: int = 0, *, selected_per_worker: Sequence[int] = (),
            gpus_per_replica: int | None = None) -> Booking:
    """GPUStack's reading of ``spec``; raises ModelError where it refuses the model."""
    if problem := tp_problem(spec):
        raise ModelError(problem)
    gs = spec.gpustack
    return Booking(gs.gpu_memory_utilization, gs.world_size, gs.gmu_given)


def place_spec(spec: ModelSpec, views: Sequence[GpuView], *, scheduler: Scheduler, book: Booking,
               pinned: Sequence[int] | None = None, replica_count: int | None = None) -> Placement | None:
    """``place`` for ``spec`` as GPUStack books it (``book``)."""
    assert book.fraction is not None
    return place(views, estimate=model_estimate(spec), gmu=book.fraction,
                 world_size=book.world_size, arch=tp_arch(spec.arch, spec.gpustack), scheduler=scheduler,
                 pinned=pinned, replica_count=spec.replicas if replica_count is None else replica_count)


def candidates(spec: ModelSpec, views: Sequence[GpuView], *, scheduler: Scheduler, book: Booking,
               pinned: Sequence[int] | None = None) -> list[Placement]:
    found = place_spec(spec, views, scheduler=scheduler, book=book, pinned=pinned)
    return [found] if found is not None else []


def pending_message_of(spec: ModelSpec, views: Sequence[GpuView], book: Booking,
                       pinned: Sequence[int] | None = None) -> str:
    assert book.fraction is not None
    return pending_message(model_estimate(spec), book.fraction, views, book.world_size,
                           tp_arch(spec.arch, spec.gpustack))


def claim_utilization(book: Booking, *, manual: bool) -> float | None:
    """Only the manual path writes vram_utilization (base_candidate_selector.py); the automatic ones leave it."""
    return book.fraction if manual else None


WORKERS_BY_GPU_COUNT = False  # it keeps the order GPUStack lists its workers in
MANUAL_FRACTION_FLAG: str | None = "gpu-memory-utilization"


def workers_candidates(spec: ModelSpec, workers: Sequence[WorkerView], book: Booking
                       ) -> tuple[WorkersPlacement | None, str | None]:
    """Its worker search is rules/cluster/paths.py's, with its other paths: not through this contract."""
    return None, None


def manual_workers_refusal(spec: ModelSpec, selected_workers: int) -> str | None:
    return None  # several workers: rules/cluster/paths.py's manual multi-worker path


def claims_of(spec: ModelSpec, totals: Mapping[int, int], book: Booking) -> dict[int, int]:
    """What a placed instance books on each of its GPUs when GPUStack's own claims are not known."""
    assert book.fraction is not None
    return placed_claims_of(spec, totals, book.fraction)


def placed_claims_of(spec: ModelSpec, totals: Mapping[int, int], gmu: float) -> dict[int, int]:
    """int(T * g) on each GPU; booked on the estimate (g = 0), E shared among them (one GPU: E, as the
    one-GPU path books; on several, GPUStack's claims then depend on what was allocatable: E / n, as its
    manual path books, is what is known)."""
    return manual_claims([GpuView(i, t, 0) for i, t in totals.items()], gmu, model_estimate(spec))


def place(
    gpus: Sequence[GpuView],
    *,
    estimate: int,
    gmu: float,
    world_size: int | None,
    arch: Architecture,
    scheduler: Scheduler,
    pinned: Sequence[int] | None = None,
    replica_count: int = 1,
) -> Placement | None:
    """Where GPUStack puts one instance on this worker, or None (pending)."""
    if pinned:
        return _place_pinned(gpus, pinned, estimate, gmu, scheduler, replica_count)
    if not world_size or world_size == 1:
        single = _place_single(gpus, estimate, gmu, scheduler)
        if single is not None or world_size == 1:
            return single
    return _place_multi(gpus, estimate, gmu, world_size, arch)


def _place_single(gpus: Sequence[GpuView], estimate: int, gmu: float, scheduler: Scheduler) -> Placement | None:
    fits = [gpu for gpu in gpus if single_gpu_tests(gpu, estimate, gmu, scheduler).passes]
    if not fits:
        return None
    # Every passing GPU is a candidate; the placement strategy picks one. Spread (the default)
    # favours the emptiest: the most allocatable, then the lowest index.
    chosen = max(fits, key=lambda gpu: (gpu.allocatable, -gpu.index))
    return Placement((chosen.index,), {chosen.index: single_gpu_claim(chosen, gmu, estimate)}, "single")


def multi_gpu_eligible(gpu: GpuView, gmu: float) -> bool:
    """A GPU may join a multi-GPU placement only with A/T > g, strictly."""
    return bool(gpu.total) and gpu.allocatable / gpu.total > gmu


def _place_multi(
    gpus: Sequence[GpuView], estimate: int, gmu: float, world_size: int | None, arch: Architecture
) -> Placement | None:
    chosen = multi_gpu_choice(gpus, estimate, gmu, world_size, arch)
    return Placement(tuple(g.index for g in chosen), {g.index: multi_gpu_claim(g, gmu) for g in chosen},
                     "multi") if chosen else None


def multi_gpu_choice(gpus: Sequence[GpuView], estimate: int, gmu: float, world_size: int | None,
                     arch: Architecture) -> list[GpuView] | None:
    """The GPUs of one worker a multi-GPU placement takes (largest allocatable first), or None."""
    if len(gpus) < 2:
        return None
    eligible = [gpu for gpu in gpus if multi_gpu_eligible(gpu, gmu)]
    eligible.sort(key=lambda gpu: gpu.allocatable, reverse=True)  # stable: index order among equals
    chosen: list[GpuView] = []
    booked = 0
    for gpu in eligible:
        chosen.append(gpu)
        booked += multi_gpu_claim(gpu, gmu)
        if tp_divisibility_problem(arch, len(chosen)):
            continue
        if world_size and len(chosen) >= world_size:
            # GPUStack stops at the requested count (or the first divisible count past it).
            return chosen if booked >= estimate else None
        if not world_size and booked >= estimate:
            return chosen
    return None


def _place_pinned(
    gpus: Sequence[GpuView], pinned: Sequence[int], estimate: int, gmu: float, scheduler: Scheduler,
    replica_count: int,
) -> Placement | None:
    by_index = {gpu.index: gpu for gpu in gpus}
    if any(index not in by_index for index in pinned):
        return None
    views = [by_index[index] for index in pinned]
    claims = manual_claims(views, gmu, estimate)
    if gmu <= 0:  # non-LLM: every selected GPU meets g; overcommitted when the shares of E fall short of it
        fits = sum(claims.values()) >= estimate
    elif len(views) == 1:
        fits = single_gpu_tests(views[0], estimate, gmu, scheduler).passes
    else:
        fits = all(g.allocatable / g.total >= gmu for g in views) and sum(claims.values()) >= estimate
    if not fits and replica_count > 1:
        return None  # overcommit is accepted only for a single replica
    return Placement(tuple(pinned), claims, "pinned", not fits)


def pending_message(estimate: int, gmu: float, gpus: Sequence[GpuView], world_size: int | None,
                    arch: Architecture | None = None) -> str:
    """GPUStack's own "No suitable workers" text for one worker (``_set_messages``): the requirement
    lines, then the several-GPU path's event when that path ran (no world size of 1), else the one-GPU
    path's (no world size above 1)."""
    events = [multi_gpu_event([gpus], gmu, arch) if world_size != 1 else None,
              single_gpu_event(gpus, gmu) if not (world_size and world_size > 1) else None]
    return selector_message(requirement_lines(estimate, gmu), events)


def single_gpu_event(gpus: Iterable[GpuView], gmu: float) -> str | None:
    """``_find_single_worker_single_gpu_full_offloading_candidates``' event: the GPU with the most
    allocatable memory (the first of equals) over every worker it looked at."""
    largest, rate, seen = 0, 0.0, False
    for gpu in gpus:
        seen = True
        if gpu.allocatable > largest:
            largest, rate = gpu.allocatable, gpu.allocatable / gpu.total if gpu.total else 0.0
    if not seen:
        return None
    line = f"The current available GPU only has {byte_to_gib(largest)} allocatable VRAM."
    if gmu:
        line = line.rstrip(".") + f" ({rate * 100:.2f}%)."
    return listed([line])


def multi_gpu_event(workers: Iterable[Sequence[GpuView]], gmu: float, arch: Architecture | None) -> str | None:
    """``_find_single_worker_multi_gpu_full_offloading_candidates``' event: the worker of two GPUs or
    more with the most allocatable memory (the first of equals), the tensor-parallel refusal for the
    count of its GPUs above g, and what they provide (GiB rounded before the product, as it does)."""
    largest = satisfied = count = 0
    tried = False
    for gpus in workers:
        if len(gpus) < 2:
            continue
        tried = True
        total = sum(g.allocatable for g in gpus)
        if total > largest:
            largest, count = total, len(gpus)
            satisfied = sum(1 for g in gpus if multi_gpu_eligible(g, gmu))
    if not tried:
        return None
    lines = []
    if arch is not None and satisfied and (problem := tp_divisibility_problem(arch, satisfied)):
        lines.append(problem)
    if not count:
        lines.append("No worker offered a GPU set that could be sized for this model.")
    elif gmu:
        effective = round(largest / GIB, 2) * gmu * satisfied / count
        lines.append(f"The largest available worker has {byte_to_gib(largest)} allocatable VRAM, {satisfied}/{count} "
                     f"of GPUs meet the VRAM utilization ratio, providing {effective:.2f} GiB of allocatable VRAM.")
    else:
        lines.append(f"The largest available worker has {byte_to_gib(largest)} allocatable VRAM.")
    return listed(lines)


cluster_search = None  # candidates searched worker by worker (cluster/replay.py) or by cluster/paths.py
