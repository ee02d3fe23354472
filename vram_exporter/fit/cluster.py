"""GPUStack's scheduler replayed over a whole cluster: which instances it places, which it leaves Pending.

Pure, like the rest of fit/. The inputs are what GPUStack's API says (workers with their GPUs'
totals and reservations, models, instances in creation order); Rulebook A (gpustack.py) decides each
instance as gpustack 2.3.0's scheduler does (``gpustack/scheduler/scheduler.py``):

- Instances GPUStack has placed (any state but pending/analyzing; error included) hold their actual
  claims. Each is judged against the claims of the placed instances created before it: would
  GPUStack have accepted it when it was decided? (Claims of single instances are symmetric, so the
  order only matters for manual pinning, which is accepted as overcommit.)
- Pending instances are decided again every 180 s (fixed in 2.3.0) against the claims of now, in
  creation order: each is judged against every placed claim plus the pending ones before it that we
  predict placed. That is what GPUStack's next re-check will do.
- A placed instance is tried on its own worker first (any worker that fits makes it a placement
  GPUStack could have made). Among several workers that fit, the lowest worker id is taken (GPUStack scores candidates by its
  placement strategy; the choice only matters for pending instances decided after it).
- Not modelled: one instance spread over several workers (``distributed_servers``); such instances
  keep their claims and are taken as placed.
"""

from __future__ import annotations

from ..errors import ModelError

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from . import backends, gpustack
from .model import ModelSpec, Scheduler
from .params import GpuStackParams
from .params import gpustack_params


@dataclass(frozen=True, slots=True)
class WorkerGpus:
    """One worker as the scheduler sees it."""

    id: int
    name: str
    totals: Mapping[int, int]  # GPU index -> memory total in bytes, as the worker reports it
    system_reserved: int = 0
    ready: bool = True  # only ready workers take new instances (worker_filters/status_filter.py)


@dataclass(frozen=True, slots=True)
class Request:
    """One model as the scheduler sees it."""

    spec: ModelSpec  # its pinned_gpus is ignored: ``pinned`` says which GPUs of which worker
    workers: frozenset[int]  # the workers it may use (its cluster, worker_selector)
    pinned: Mapping[int, tuple[int, ...]] | None = None  # gpu_selector: worker id -> GPU indexes


@dataclass(frozen=True, slots=True)
class Instance:
    id: int  # creation order
    model: str
    placed: bool  # GPUStack's verdict: any state but pending / analyzing
    claims: Mapping[tuple[int, int], int]  # (worker id, GPU index) -> bytes, GPUStack's own
    distributed: bool = False  # spread over several workers: not judged
    worker: int | None = None  # where GPUStack put it (tried first when judging it: the usual answer)


@dataclass(frozen=True, slots=True)
class Verdict:
    instance: int
    model: str
    placed: bool  # our prediction
    worker: int | None = None
    gpus: tuple[int, ...] = ()
    reason: str = ""  # why not: GPUStack's own words where it has them
    claims: Mapping[int, int] | None = None  # GPU index -> bytes booked, where not int(g * T) (SGLang, custom)


Claims = dict[tuple[int, int], int]


def replay(workers: Sequence[WorkerGpus], requests: Mapping[str, Request], instances: Iterable[Instance],
           scheduler: Scheduler = "gpustack") -> dict[int, Verdict]:
    """Our verdict for every instance whose model has a request (others are skipped, their claims kept)."""
    by_id = {worker.id: worker for worker in workers}
    ordered = sorted(instances, key=lambda inst: inst.id)
    claims: Claims = {}
    verdicts: dict[int, Verdict] = {}
    for inst in ordered:
        if not inst.placed:
            continue
        request = requests.get(inst.model)
        if request is not None:
            verdicts[inst.id] = (Verdict(inst.id, inst.model, True) if inst.distributed
                                 else decide(inst, request, by_id, claims, scheduler))
        _book(claims, inst.claims)
    for inst in ordered:
        request = requests.get(inst.model)
        if inst.placed or request is None:
            continue
        verdict = decide(inst, request, by_id, claims, scheduler)
        verdicts[inst.id] = verdict
        if verdict.placed:
            _book(claims, _predicted_claims(verdict, request, by_id))
    return verdicts


def pending_counts(verdicts: Mapping[int, Verdict]) -> dict[str, int]:
    """Predicted pending instances per model (0 for a model whose every instance we place)."""
    counts: dict[str, int] = {}
    for verdict in verdicts.values():
        counts[verdict.model] = counts.get(verdict.model, 0) + (not verdict.placed)
    return counts


def decide(inst: Instance, request: Request, workers: Mapping[int, WorkerGpus], claims: Mapping[tuple[int, int], int],
           scheduler: Scheduler) -> Verdict:
    """Where GPUStack would put this instance now, trying the model's workers in id order."""
    spec = request.spec
    if spec.backend != "vllm":
        return _decide_backend(inst, request, workers, claims, scheduler)
    try:
        params = _params(spec)
    except ModelError as exc:
        return Verdict(inst.id, inst.model, False, reason=str(exc))
    if params.tensor_parallel_size and (problem := gpustack.tp_divisibility_problem(spec.arch,
                                                                                       params.tensor_parallel_size)):
        return Verdict(inst.id, inst.model, False, reason=problem)
    estimate = gpustack.estimate_bytes(spec.weights_bytes, spec.env)
    reason = "no ready worker of its cluster matches its selectors"
    order = sorted(request.workers, key=lambda worker_id: (worker_id != inst.worker, worker_id))
    for worker_id in order:
        worker = workers.get(worker_id)
        if worker is None or not worker.ready:
            continue
        pinned = None if request.pinned is None else request.pinned.get(worker_id)
        if request.pinned is not None and not pinned:
            continue
        if problem := gpustack.pinned_count_problem(pinned, params.world_size, spec.env):
            return Verdict(inst.id, inst.model, False, reason=problem)
        views = worker_views(worker, claims)
        placement = gpustack.place(views, estimate=estimate, gmu=params.gpu_memory_utilization,
                                   world_size=params.world_size, arch=spec.arch, scheduler=scheduler,
                                   pinned=pinned, replica_count=spec.replicas)
        if placement is not None:
            return Verdict(inst.id, inst.model, True, worker_id, placement.gpus)
        reason = f"{worker.name}: " + gpustack.pending_message(estimate, params.gpu_memory_utilization, views,
                                                               params.world_size)
    return Verdict(inst.id, inst.model, False, reason=reason)


@functools.lru_cache(maxsize=4096)
def _gpustack_params(backend_parameters: tuple[str, ...]) -> GpuStackParams:
    return gpustack_params(backend_parameters)


def _params(spec: ModelSpec) -> GpuStackParams:
    """backend_parameters parsed once per distinct list, not once per instance and worker."""
    return _gpustack_params(tuple(spec.backend_parameters))


def worker_views(worker: WorkerGpus, claims: Mapping[tuple[int, int], int]) -> list[gpustack.GpuView]:
    return [
        gpustack.GpuView(index, gpustack.total_whole_mib(total),
                         gpustack.allocatable_bytes(total, claims.get((worker.id, index), 0), worker.system_reserved))
        for index, total in sorted(worker.totals.items())
    ]


def _decide_backend(inst: Instance, request: Request, workers: Mapping[int, WorkerGpus],
                    claims: Mapping[tuple[int, int], int], scheduler: Scheduler) -> Verdict:
    """``decide`` for SGLang and custom backends (fit/backends.py). SGLang's default fraction is computed
    from the smallest GPU of the workers the model may use, as GPUStack's selector sees them all."""
    spec = request.spec
    usable = usable_workers(request, workers)
    selected = tuple(len(v) for v in request.pinned.values() if v) if request.pinned is not None else ()
    try:
        book = backends.booking(spec, backends.smallest_total({w.id: w.totals for w in usable}, request.pinned),
                                selected_per_worker=selected)
    except ModelError as exc:
        return Verdict(inst.id, inst.model, False, reason=str(exc))
    reason = "no ready worker of its cluster matches its selectors"
    for worker in sorted(usable, key=lambda w: (w.id != inst.worker, w.id)):
        pinned = None if request.pinned is None else request.pinned.get(worker.id)
        if request.pinned is not None and not pinned:
            continue
        views = worker_views(worker, claims)
        placement = backends.place(spec, views, scheduler=scheduler, book=book, pinned=pinned)
        if placement is not None:
            return Verdict(inst.id, inst.model, True, worker.id, placement.gpus, claims=dict(placement.claims))
        reason = f"{worker.name}: " + backends.pending_message(spec, views, book, pinned)
    return Verdict(inst.id, inst.model, False, reason=reason)


def usable_workers(request: Request, workers: Mapping[int, WorkerGpus]) -> list[WorkerGpus]:
    """The ready workers a model may use, in id order."""
    return [workers[w] for w in sorted(request.workers) if w in workers and workers[w].ready]


def _predicted_claims(verdict: Verdict, request: Request, workers: Mapping[int, WorkerGpus]) -> Claims:
    worker = workers[verdict.worker]
    if verdict.claims is not None:
        return {(worker.id, index): claim for index, claim in verdict.claims.items()}
    gmu = _params(request.spec).gpu_memory_utilization
    return {(worker.id, index): gpustack.claim_bytes(worker.totals[index], gmu) for index in verdict.gpus}


def _book(claims: Claims, more: Mapping[tuple[int, int], int]) -> None:
    for key, value in more.items():
        claims[key] = claims.get(key, 0) + value
