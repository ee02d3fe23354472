"""GPUStack's scheduler replayed over a whole cluster: which instances it places, which it leaves Pending.

Pure, like the rest of fit/. The inputs are what GPUStack's API says (workers with their GPUs'
totals and reservations, models, instances in creation order); Rulebook A (gpustack.py) decides each
instance as gpustack 2.3.0's scheduler does (``gpustack/scheduler/scheduler.py``):

- Instances GPUStack has placed (any state but pending/analyzing; error included) hold their actual
  claims. Each is judged against the claims of the placed instances created before it: would
  GPUStack have accepted it when it was decided (any candidate on any path)? One already spread over
  several workers (``distributed_servers``) is taken as placed.
- Pending instances are decided again every 180 s (fixed in 2.3.0) against the claims of now, in
  creation order: each is judged against every placed claim plus the pending ones before it that we
  predict placed, as GPUStack's next re-check will do (its queue takes them one at a time).
- Each decision is GPUStack's: the candidate paths of its vLLM selector over every ready worker of
  the model's cluster (gpustack_paths.py: manual selection, one GPU, several GPUs of one worker,
  several workers), then its placement scorer (placement_scorer.py, spread or binpack).
- GPUStack lists its workers with an unordered query (``Worker.all``: PostgreSQL returns rows in
  storage order, which moves as workers post their status), and the first of equal scores wins, so
  the worker a tie goes to is not fixed. ``replay`` takes them in id order, or the reverse; a model
  whose pending count differs between the two is flagged by the caller.
"""

from __future__ import annotations

from ...errors import ModelError

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .. import backends, gpustack
from ..backends.vllm import selector as vllm_selector
from . import paths as gpustack_paths, scorer as placement_scorer
from ..model import ModelSpec, Scheduler
from ..flags import GpuStackParams, first_int_parameter
from .scorer import Strategy


@dataclass(frozen=True, slots=True)
class WorkerGpus:
    """One worker as the scheduler sees it."""

    id: int
    name: str
    totals: Mapping[int, int]  # GPU index -> memory total in bytes, as the worker reports it
    system_reserved: int = 0
    ready: bool = True  # only ready workers take new instances (worker_filters/status_filter.py)
    ram_total: int | None = None  # its RAM as it reports it (status.memory.total); None: not judged
    reserved_ram: int = 0  # system_reserved.ram
    unified_memory: bool = False  # status.memory.is_unified_memory: GPU claims come out of its RAM too
    gpu_type: str | None = None  # cuda, rocm, ... of the GPUs in ``totals`` (gpustack.visible_gpu_type)


@dataclass(frozen=True, slots=True)
class Request:
    """One model as the scheduler sees it."""

    spec: ModelSpec  # its pinned_gpus is ignored: ``selection`` says which GPUs of which worker
    workers: frozenset[int]  # the workers it may use (its cluster, worker_selector)
    selection: Mapping[str, tuple[int, ...]] | None = None  # gpu_selector: worker name -> GPU indexes
    selected_count: int = 0  # len(gpu_selector.gpu_ids)
    gpus_per_replica: int | None = None  # gpu_selector.gpus_per_replica as GPUStack filled it in
    strategy: Strategy = "spread"  # the model's placement_strategy
    distributed: bool = True  # distributed_inference_across_workers (GPUStack's default for vLLM)
    executor_mp: bool = False  # --distributed-executor-backend mp
    cpu_offloading: bool = False  # the model's cpu_offloading: the custom backend then tries a CPU-only placement
    kv_offload: gpustack.KvOffload | None = None  # its extended KV cache in the worker's RAM (vLLM, SGLang)
    selected_types: frozenset[str] = frozenset()  # the GPU types its gpu_selector.gpu_ids name (cuda, rocm)


@dataclass(frozen=True, slots=True)
class Instance:
    id: int  # creation order
    model: str
    placed: bool  # GPUStack's verdict: any state but pending / analyzing
    claims: Mapping[tuple[int, int], int]  # (worker id, GPU index) -> bytes, GPUStack's own
    distributed: bool = False  # spread over several workers: not judged
    worker: int | None = None  # where GPUStack put it (tried first when judging it: the usual answer)
    backend: str = "vllm"  # its model's (GPUStack limits distributed instances per worker per backend)
    stuck: bool = False  # pending with a worker bound: GPUStack never decides it again, its claims stay
    ram: int = 0  # the RAM it books on its main worker (``worker``)


@dataclass(frozen=True, slots=True)
class Verdict:
    instance: int
    model: str
    placed: bool  # our prediction
    worker: int | None = None
    gpus: tuple[int, ...] = ()
    reason: str = ""  # why not: GPUStack's own words where it has them
    claims: Mapping[tuple[int, int], int] = field(default_factory=dict)  # what a predicted placement books
    overcommit: bool = False
    utilization: float | None = None  # GPUStack's vram_utilization on the main worker's claim
    subordinate_utilization: float | None = None  # and on the subordinate workers' claims
    # Every candidate the selector listed before the placement scorer chose (the chosen one among them),
    # each with the claims and vram_utilization GPUStack would book for it.
    candidates: tuple[gpustack_paths.Candidate, ...] = ()
    ram: int | None = None  # the RAM claim GPUStack writes on the main worker (None: it writes none)
    # GPUStack's message for an instance it places: only the custom-backend selector writes one ("" else)
    placed_message: str = ""


Claims = dict[tuple[int, int], int]


def replay(workers: Sequence[WorkerGpus], requests: Mapping[str, Request], instances: Iterable[Instance],
           scheduler: Scheduler = "gpustack", *, reverse_order: bool = False,
           listed_order: bool = False) -> dict[int, Verdict]:
    """Our verdict for every instance whose model has a request (others are skipped, their claims kept).

    Workers are taken in id order (``reverse_order``: the other way round), the order GPUStack's
    unordered ``Worker.all`` query usually returns them in; it decides among equal scores. ``listed_order``:
    in the order given instead, where the caller knows the order GPUStack saw them in."""
    ordered_workers = list(workers) if listed_order else sorted(workers, key=lambda w: w.id)
    if reverse_order:
        ordered_workers.reverse()
    ordered = sorted(instances, key=lambda inst: inst.id)
    claims: Claims = {}
    ram: dict[int, int] = {}  # worker id -> the RAM claims of the instances whose main worker it is
    holdings: list[placement_scorer.Holding] = []
    verdicts: dict[int, Verdict] = {}
    # Placed instances are judged on the workers as they were when placed: one since gone not ready
    # still counts.
    as_placed = [replace(w, ready=True) for w in ordered_workers]
    as_placed_by_id = {w.id: w for w in as_placed}
    for inst in ordered:
        if inst.stuck:
            _book(claims, inst.claims)
            _book_ram(ram, inst.worker, inst.ram)
            holdings.append(placement_scorer.Holding(inst.model, frozenset(inst.claims), inst.backend))
        if not inst.placed:
            continue
        request = requests.get(inst.model)
        if request is not None:
            verdicts[inst.id] = (Verdict(inst.id, inst.model, True) if inst.distributed
                                 else _judge_placed(inst, request, as_placed, as_placed_by_id, claims, scheduler,
                                                    holdings, ram))
        _book(claims, inst.claims)
        _book_ram(ram, inst.worker, inst.ram)
        holdings.append(placement_scorer.Holding(inst.model, frozenset(inst.claims), inst.backend))
    for inst in ordered:
        request = requests.get(inst.model)
        if inst.placed or request is None:
            continue
        if inst.stuck:
            verdicts[inst.id] = Verdict(inst.id, inst.model, False, reason=(
                "Pending with a worker still bound (a failed re-schedule): GPUStack does not decide it again "
                "until it is deleted and recreated."))
            continue
        verdict = decide(inst, request, ordered_workers, claims, scheduler, holdings, ram_booked=ram)
        verdicts[inst.id] = verdict
        if verdict.placed:
            _book(claims, verdict.claims)
            _book_ram(ram, verdict.worker, verdict.ram or 0)
            holdings.append(placement_scorer.Holding(inst.model, frozenset(verdict.claims), inst.backend))
    return verdicts


def pending_counts(verdicts: Mapping[int, Verdict]) -> dict[str, int]:
    """Predicted pending instances per model (0 for a model whose every instance we place)."""
    counts: dict[str, int] = {}
    for verdict in verdicts.values():
        counts[verdict.model] = counts.get(verdict.model, 0) + (not verdict.placed)
    return counts


def _judge_placed(inst: Instance, request: Request, workers: Sequence[WorkerGpus], by_id: Mapping[int, WorkerGpus],
                  claims: Mapping[tuple[int, int], int], scheduler: Scheduler,
                  holdings: Sequence[placement_scorer.Holding], ram: Mapping[int, int]) -> Verdict:
    """Would GPUStack have accepted this placed instance: is there any candidate at all? Its own
    worker is tried alone first: a candidate there means the whole search has one (the one-GPU path
    covers every worker, the several-GPU path each), and that spares searching every worker for every
    instance."""
    own = by_id.get(inst.worker) if inst.worker is not None else None
    if own is not None:
        verdict = decide(inst, request, [own], claims, scheduler, ram_booked=ram)
        if verdict.placed:
            return verdict
    return decide(inst, request, workers, claims, scheduler, holdings, ram_booked=ram)


def decide(inst: Instance, request: Request, workers: Sequence[WorkerGpus], claims: Mapping[tuple[int, int], int],
           scheduler: Scheduler, holdings: Sequence[placement_scorer.Holding] = (), *,
           ram_booked: Mapping[int, int] | None = None) -> Verdict:
    """Where GPUStack would put this instance now: its candidate search over the model's ready
    workers (gpustack_paths.py), then its placement scorer (placement_scorer.py). ``ram_booked``: the RAM
    claims per main worker of the instances placed before (none: no RAM is booked yet)."""
    ram_booked = ram_booked or {}
    groups = _type_groups(request, workers)
    if len(groups) > 1:
        return _decide_mixed(inst, request, groups, claims, scheduler, holdings, ram_booked)
    return _decide_one_type(inst, request, workers, claims, scheduler, holdings, ram_booked)


def _decide_one_type(inst: Instance, request: Request, workers: Sequence[WorkerGpus],
                     claims: Mapping[tuple[int, int], int], scheduler: Scheduler,
                     holdings: Sequence[placement_scorer.Holding], ram_booked: Mapping[int, int]) -> Verdict:
    if backends.of(request.spec.backend).selector is not vllm_selector:  # the vLLM selector's own search: paths.py
        return _decide_backend(inst, request, workers, claims, scheduler, holdings, ram_booked)
    try:
        ask = _ask(request, scheduler, holdings)
    except ModelError as exc:
        return Verdict(inst.id, inst.model, False, reason=str(exc))
    params = _params(request.spec)
    if problem := vllm_selector.tp_divisibility(request.spec):
        return Verdict(inst.id, inst.model, False, reason=problem)
    if request.executor_mp and params.mp_arguments_problem:  # vllm_resource_fit_selector._validate_mp_multinode_arguments
        return Verdict(inst.id, inst.model, False, reason=params.mp_arguments_problem)
    nodes = _nodes(request, workers, claims, ram_booked)
    if not nodes:
        return Verdict(inst.id, inst.model, False, reason="no ready worker of its cluster matches its selectors")
    found = gpustack_paths.search(nodes, ask)
    if not found.candidates:
        return Verdict(inst.id, inst.model, False, reason=found.reason)
    return _picked(inst, request, nodes, _with_ram_claims(found.candidates, request), holdings,
                   overcommit_reason=found.reason)


def _type_groups(request: Request, workers: Sequence[WorkerGpus]) -> list[list[WorkerGpus]]:
    """``policies/utils.py::group_workers_by_gpu_type``: the model's workers by the type of their GPUs, the
    types in the order they first appear (SGLang's selector sorts its workers by GPU count first). Every
    path of every selector looks at one type at a time; only the custom backend's paths never combine two
    workers, so its search needs no split, only that order."""
    selector = backends.of(request.spec.backend).selector
    eligible = [w for w in workers if w.id in request.workers and w.ready
                and (request.selection is None or w.name in request.selection)]
    if selector.WORKERS_BY_GPU_COUNT:
        eligible.sort(key=lambda w: len(w.totals), reverse=True)
    groups: dict[str | None, list[WorkerGpus]] = {}
    for worker in eligible:
        groups.setdefault(worker.gpu_type, []).append(worker)
    if selector.cluster_search is not None and len(groups) > 1:
        return [[w for group in groups.values() for w in group]]
    return list(groups.values())


def _decide_mixed(inst: Instance, request: Request, groups: Sequence[Sequence[WorkerGpus]],
                  claims: Mapping[tuple[int, int], int], scheduler: Scheduler,
                  holdings: Sequence[placement_scorer.Holding], ram_booked: Mapping[int, int]) -> Verdict:
    """Workers with GPUs of several types (NVIDIA beside AMD): each path of GPUStack's selector runs over every
    type, one type at a time, and the first path with candidates of any type wins; its candidates of every
    type then go to the placement scorer. Decided here type by type, then merged the same way. A pending
    instance gets the last type's words (GPUStack keeps each path's last event)."""
    verdicts = [_decide_one_type(inst, request, group, claims, scheduler, holdings, ram_booked) for group in groups]
    placed = [v for v in verdicts if v.placed]
    if not placed:
        return verdicts[-1]
    rank = min(_path_rank(c, request) for v in placed for c in v.candidates)
    pool = [(v, c) for v in placed for c in v.candidates if _path_rank(c, request) == rank]
    if rank == 2 and backends.of(request.spec.backend).selector is vllm_selector:
        fewest = min(len(c.gpus) for _, c in pool)  # its several-GPU path keeps the fewest GPUs of all types
        pool = [(v, c) for v, c in pool if len(c.gpus) == fewest]
    fitting = [(v, c) for v, c in pool if not c.overcommit]
    if fitting:
        pool, reason = fitting, ""
    else:  # one replica, manual selection in overcommit on every type (several replicas stay pending per type):
        best = max(enumerate(pool), key=lambda item: (item[1][1].effective_vram, item[0]))[1]  # the last of most
        pool, reason = [best], best[0].reason
    nodes = _nodes(request, [w for group in groups for w in group], claims, ram_booked)
    return _picked(inst, request, nodes, [c for _, c in pool], holdings, overcommit_reason=reason)


def _path_rank(candidate: gpustack_paths.Candidate, request: Request) -> int:
    """Which of the selector's paths listed it: manual selection, one GPU, several GPUs of one worker, several
    workers (the first with candidates wins), CPU-only last."""
    if request.selection is not None:
        return 0
    if candidate.subordinates:
        return 3
    return {0: 4, 1: 1}.get(len(candidate.gpus), 2)


def _decide_backend(inst: Instance, request: Request, workers: Sequence[WorkerGpus],
                    claims: Mapping[tuple[int, int], int], scheduler: Scheduler,
                    holdings: Sequence[placement_scorer.Holding], ram_booked: Mapping[int, int]) -> Verdict:
    """``decide`` for SGLang and custom backends (rules/backends/__init__.py): manual selection (the base
    selector's, across workers too, where the backend hands it its fraction; else each worker's own), else
    the single-GPU candidates of every worker, else each worker's multi-GPU one, else the backend's
    search across whole workers; then GPUStack's placement scorer. SGLang's default fraction is sized for
    the smallest GPU of the model's workers, as GPUStack's selector sees them all."""
    spec = request.spec
    nodes = _nodes(request, workers, claims, ram_booked)
    if not nodes:
        return Verdict(inst.id, inst.model, False, reason="no ready worker of its cluster matches its selectors")
    selector = backends.of(spec.backend).selector
    if selector.WORKERS_BY_GPU_COUNT:
        nodes.sort(key=lambda node: len(node.gpus), reverse=True)
    pinned = None if request.selection is None else {node.id: request.selection[node.name] for node in nodes}
    try:
        book = selector.booking(spec, gpustack.smallest_total(_totals(nodes), _sizing_selection(nodes, request)),
                                selected_per_worker=tuple(len(v) for v in (pinned or {}).values() if v),
                                gpus_per_replica=request.gpus_per_replica)
    except ModelError as exc:
        return Verdict(inst.id, inst.model, False, reason=str(exc))
    book = replace(book, ram=_fixed_ram(request))
    if request.selection is not None and (refusal := selector.manual_workers_refusal(spec, len(request.selection))):
        return Verdict(inst.id, inst.model, False, reason=refusal)
    if pinned is not None and selector.MANUAL_FRACTION_FLAG is not None:
        return _decide_manual(inst, request, nodes, book, selector.MANUAL_FRACTION_FLAG, holdings)
    if selector.cluster_search is not None:
        return _decide_cluster(inst, request, nodes, book, pinned, holdings)
    if pinned is None:  # every automatic path skips a worker short of the RAM (``ram_not_enough``)
        nodes = [node for node in nodes if not gpustack.ram_short(book.ram, node)]
    candidates, reason = _worker_candidates(spec, nodes, scheduler, book, pinned)
    manual = pinned is not None
    if not candidates and not manual and request.distributed:
        across, message = selector.workers_candidates(spec, nodes, book)
        reason = message or reason
        if across is not None:
            (main, gpus), *rest = across.workers
            candidates = [gpustack_paths.Candidate(main, gpus, across.claims, tuple(rest),
                                                   subordinate_utilization=book.fraction)]
    if not candidates:
        return Verdict(inst.id, inst.model, False, reason=reason)
    utilization = selector.claim_utilization(book, manual=manual)
    candidates = [c if c.subordinates else replace(c, utilization=utilization) for c in candidates]
    return _picked(inst, request, nodes, _with_ram_claims(candidates, request), holdings)


def _decide_cluster(inst: Instance, request: Request, nodes: Sequence[gpustack_paths.Node], book: gpustack.Booking,
                    pinned: Mapping[int, tuple[int, ...]] | None,
                    holdings: Sequence[placement_scorer.Holding]) -> Verdict:
    """A selector that searches the whole cluster at once and words one message for it, whether it places
    the instance or not (the custom backend's: its RAM, its CPU-only path)."""
    selector = backends.of(request.spec.backend).selector
    found = selector.cluster_search(request.spec, nodes, book, pinned=pinned, cpu_offloading=request.cpu_offloading)
    if not found.placements:
        return Verdict(inst.id, inst.model, False, reason=found.message)
    utilization = selector.claim_utilization(book, manual=pinned is not None)
    candidates = [gpustack_paths.Candidate(worker, p.gpus, {(worker, i): c for i, c in p.claims.items()},
                                           overcommit=p.overcommit, utilization=utilization, ram=found.ram)
                  for worker, p in found.placements]
    return replace(_picked(inst, request, nodes, candidates, holdings), placed_message=found.message)


def _picked(inst: Instance, request: Request, nodes: Sequence[gpustack_paths.Node],
            candidates: Sequence[gpustack_paths.Candidate], holdings: Sequence[placement_scorer.Holding],
            overcommit_reason: str = "") -> Verdict:
    """GPUStack's placement scorer picks among every candidate the selector listed; an overcommitted pick
    carries the selector's reason (its own tests fail there)."""
    allocatable = {(node.id, gpu.index): gpu.allocatable for node in nodes for gpu in node.gpus}
    types = {node.id: node.gpu_type for node in nodes}
    candidates = [replace(c, gpu_type=types.get(c.worker)) for c in candidates]
    chosen = placement_scorer.pick(candidates, request.strategy, inst.model, holdings, allocatable)
    return Verdict(inst.id, inst.model, True, chosen.worker, chosen.gpus,
                   overcommit_reason if chosen.overcommit else "", chosen.claims, chosen.overcommit,
                   chosen.utilization, chosen.subordinate_utilization, tuple(candidates), chosen.ram)


def _sizing_selection(nodes: Sequence[gpustack_paths.Node], request: Request
                      ) -> dict[int, tuple[int, ...]] | None:
    """The GPUs a card-dependent fraction is sized for (``_get_min_gpu_sum``): with manual selection the
    selected ones, and with gpus_per_replica set, on each worker only that many of them, the highest
    allocatable rate first (``sort_gpu_indexes_by_allocatable_rate``)."""
    if request.selection is None:
        return None
    sizing = {}
    for node in nodes:
        chosen = set(request.selection[node.name])
        ranked = sorted((g for g in node.gpus), key=lambda g: g.allocatable / g.total if g.total else 0, reverse=True)
        picked = [g.index for g in ranked if g.index in chosen]
        sizing[node.id] = tuple(picked[:request.gpus_per_replica] if request.gpus_per_replica else picked)
    return sizing


def _worker_candidates(spec: ModelSpec, nodes: Sequence[gpustack_paths.Node], scheduler: Scheduler,
                       book: gpustack.Booking, pinned: Mapping[int, tuple[int, ...]] | None
                       ) -> tuple[list[gpustack_paths.Candidate], str]:
    """Each worker's own candidates; the single-GPU ones of any worker win over every multi-GPU one (the
    selectors try one GPU on every worker before several). None: the last worker's pending text."""
    selector = backends.of(spec.backend).selector
    found_by_node, reason = [], "no ready worker of its cluster matches its selectors"
    for node in nodes:
        chosen = None if pinned is None else pinned[node.id]
        found = selector.candidates(spec, list(node.gpus), scheduler=scheduler, book=book, pinned=chosen)
        found_by_node += [(node, p) for p in found]
        if not found:
            reason = selector.pending_message_of(spec, list(node.gpus), book, chosen)  # the last worker's
    if any(p.mode == "single" for _, p in found_by_node):
        found_by_node = [(node, p) for node, p in found_by_node if p.mode == "single"]
    return [gpustack_paths.Candidate(node.id, p.gpus, {(node.id, i): c for i, c in p.claims.items()},
                                     overcommit=p.overcommit) for node, p in found_by_node], reason


def _decide_manual(inst: Instance, request: Request, nodes: Sequence[gpustack_paths.Node], book: gpustack.Booking,
                   flag: str, holdings: Sequence[placement_scorer.Holding]) -> Verdict:
    """GPUStack's base selector's manual selection, handed the backend's fraction (paths.py ``manual``)."""
    spec = request.spec
    assert book.fraction is not None
    skip = _skip_count_check(spec.env)
    ask = gpustack_paths.Ask(
        estimate=gpustack.model_estimate(spec), gmu=max(book.fraction, 0),
        world_size=book.world_size, arch=spec.arch, replicas=spec.replicas, selection=request.selection,
        selected_count=request.selected_count, gpus_per_replica=_per_replica(request, book.world_size, skip),
        skip_count_check=skip, distributed_workers=_distributed_workers(request, holdings), fraction_flag=flag,
        ram=book.ram, selected_types=len(request.selected_types))
    found = gpustack_paths.manual(nodes, ask)
    if not found.candidates:
        return Verdict(inst.id, inst.model, False, reason=found.reason)
    return _picked(inst, request, nodes, _with_ram_claims(found.candidates, request), holdings,
                   overcommit_reason=found.reason)


def _fixed_ram(request: Request) -> int:
    return request.kv_offload.fixed if request.kv_offload else 0


def _with_ram_claims(candidates: Sequence[gpustack_paths.Candidate], request: Request
                     ) -> list[gpustack_paths.Candidate]:
    """Each candidate's RAM claim on its main worker (``get_computed_ram_claim`` of the VRAM it claims there):
    an extended KV cache's, else none."""
    if request.kv_offload is None:
        return list(candidates)
    return [replace(c, ram=request.kv_offload.claim({i: b for (w, i), b in c.claims.items() if w == c.worker}))
            for c in candidates]


def _per_replica(request: Request, world_size: int | None, skip: bool) -> int | None:
    """gpu_selector.gpus_per_replica, as GPUStack fills it in when the model leaves it out."""
    if request.selection is None or request.gpus_per_replica:
        return request.gpus_per_replica
    return gpustack.filled_gpus_per_replica(request.selected_count, request.spec.replicas, world_size, skip)


def _distributed_workers(request: Request, holdings: Sequence[placement_scorer.Holding]) -> frozenset[int]:
    """base_candidate_selector.py::_validate_distributed_limit_per_worker: the workers already holding an
    instance of the same backend spread over several workers (only manual selection over several reads it)."""
    if request.selection is None or len(request.selection) <= 1:
        return frozenset()
    backend = backends.of(request.spec.backend)
    return frozenset(key[0] for holding in holdings if len({w for w, _ in holding.gpus}) > 1
                     and backends.REGISTRY.get(holding.backend) is backend for key in holding.gpus)


def _totals(nodes: Sequence[gpustack_paths.Node]) -> dict[int, dict[int, int]]:
    return {node.id: {gpu.index: gpu.total for gpu in node.gpus} for node in nodes}


def _nodes(request: Request, workers: Sequence[WorkerGpus], claims: Mapping[tuple[int, int], int],
           ram_booked: Mapping[int, int]) -> list[gpustack_paths.Node]:
    """find_candidate's worker filters: its cluster and labels (request.workers), ready, and named by
    its gpu_selector (policies/worker_filters/gpu_matching_filter.py)."""
    return [gpustack_paths.Node(worker.id, worker.name, tuple(worker_views(worker, claims)),
                                _ram_of(worker, ram_booked, claims), worker.gpu_type)
            for worker in workers
            if worker.id in request.workers and worker.ready
            and (request.selection is None or worker.name in request.selection)]


def _ram_of(worker: WorkerGpus, ram_booked: Mapping[int, int], claims: Mapping[tuple[int, int], int]) -> int | None:
    """The worker's allocatable RAM (gpustack.ram_allocatable)."""
    vram_booked = sum(claims.get((worker.id, index), 0) for index in worker.totals) if worker.unified_memory else 0
    return gpustack.ram_allocatable(worker.ram_total, ram_booked.get(worker.id, 0), worker.reserved_ram,
                                    unified=worker.unified_memory, reserved_vram=worker.system_reserved,
                                    vram_booked=vram_booked)


def _ask(request: Request, scheduler: Scheduler, holdings: Sequence[placement_scorer.Holding]) -> gpustack_paths.Ask:
    spec = request.spec
    params = _params(spec)
    distributed = _distributed_workers(request, holdings)
    skip = _skip_count_check(spec.env)
    per_replica = _per_replica(request, params.world_size, skip)
    return gpustack_paths.Ask(
        estimate=gpustack.model_estimate(spec), gmu=params.gpu_memory_utilization,
        world_size=params.world_size, arch=gpustack.tp_arch(spec.arch, params), scheduler=scheduler, distributed=request.distributed,
        replicas=spec.replicas, selection=request.selection, selected_count=request.selected_count,
        gpus_per_replica=per_replica, skip_count_check=skip,
        parallel=_parallel(tuple(spec.backend_parameters), request.executor_mp), distributed_workers=distributed,
        ram=_fixed_ram(request), selected_types=len(request.selected_types))


_skip_count_check = gpustack.skips_gpu_count_check


@functools.lru_cache(maxsize=4096)
def _parallel(backend_parameters: tuple[str, ...], executor_mp: bool) -> gpustack_paths.Parallel:
    """Parsed once per distinct list, as _params is."""
    read = functools.partial(first_int_parameter, backend_parameters)
    return gpustack_paths.Parallel(read(["tensor-parallel-size", "tp"]), read(["pipeline-parallel-size", "pp"]),
                                   read(["data-parallel-size", "dp"]), read(["data-parallel-size-local", "dpl"]),
                                   read(["prefill-context-parallel-size", "pcp"]), executor_mp)


def _params(spec: ModelSpec) -> GpuStackParams:
    return spec.gpustack


def worker_views(worker: WorkerGpus, claims: Mapping[tuple[int, int], int]) -> list[gpustack.GpuView]:
    return [
        gpustack.GpuView(index, total,
                         gpustack.allocatable_bytes(total, claims.get((worker.id, index), 0), worker.system_reserved))
        for index, total in sorted(worker.totals.items())
    ]


def _book(claims: Claims, more: Mapping[tuple[int, int], int]) -> None:
    for key, value in more.items():
        claims[key] = claims.get(key, 0) + value


def _book_ram(ram: dict[int, int], worker: int | None, size: int) -> None:
    if worker is not None and size:
        ram[worker] = ram.get(worker, 0) + size
