"""GPUStack 2.3.0's candidate search for one vLLM instance over a whole cluster, path by path.

A port of ``gpustack/policies/candidate_selectors/vllm_resource_fit_selector.py::select_candidates``:
the first path that yields candidates wins, and the placement scorer (placement_scorer.py) then
picks one of them.

1. Manual GPU selection (``gpu_selector``); when set, no other path runs
   (``should_skip_candidate_func``). ``base_candidate_selector.py::_find_manual_gpu_selection_candidates``.
2. One GPU on any worker; skipped when the world size is above 1.
3. Several GPUs of one worker; skipped when the world size is 1. Only the candidates with the
   fewest GPUs are kept.
4. Several whole workers (``distributed_inference_across_workers``, on by default for vLLM):
   ``auto_select_multi_worker_multi_gpu_candidates``.

Pure, like the rest of fit/. Workers arrive already filtered (its cluster, its worker_selector,
ready, named by its gpu_selector: ``find_candidate``'s worker filters) and in the order GPUStack
lists them, which decides among equal scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import reduce

from ...units import GIB
from .. import gpustack
from ..backends.vllm import selector as vllm_selector
from ..gpustack import GpuView, byte_to_gib, listed, requirement_lines, selector_message
from ..model import Architecture, Scheduler

Claims = Mapping[tuple[int, int], int]  # (worker id, GPU index) -> bytes


Node = gpustack.WorkerView  # one worker as the selector sees it when this instance is decided


@dataclass(frozen=True, slots=True)
class Candidate:
    worker: int
    gpus: tuple[int, ...]  # on the main worker
    claims: Claims  # every GPU it books, subordinate workers included
    subordinates: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (worker id, GPU indexes)
    overcommit: bool = False
    effective_vram: float = 0.0  # manual selection: what GPUStack ranks overcommitted candidates by
    # What GPUStack writes in the claims' vram_utilization: only its manual paths fill it in (on the main
    # worker's claim for one worker, on the subordinates' for several); automatic paths leave it None.
    utilization: float | None = None
    subordinate_utilization: float | None = None
    ram: int | None = None  # the RAM claim GPUStack writes on the main worker's claim (None: none written)
    gpu_type: str | None = None  # the type of its GPUs, on every worker it uses (cuda, rocm, ...)

    @property
    def workers(self) -> tuple[int, ...]:
        return (self.worker, *(worker for worker, _ in self.subordinates))


@dataclass(frozen=True, slots=True)
class Parallel:
    """The parallel sizes as GPUStack reads them (``utils/vllm_topology.py::parse_user_parallelism``)."""

    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    dpl: int | None = None
    pcp: int | None = None
    executor_mp: bool = False  # --distributed-executor-backend mp: cross-worker layouts are validated


@dataclass(frozen=True, slots=True)
class Ask:
    """One instance of a model, as the selector reads it."""

    estimate: int  # E
    gmu: float  # g as GPUStack reads it
    world_size: int | None  # from the parallel sizes; None: not requested
    arch: Architecture
    scheduler: Scheduler = "gpustack"
    distributed: bool = True  # distributed_inference_across_workers
    replicas: int = 1  # the model's replicas: manual selection forbids overcommit above 1
    selection: Mapping[str, tuple[int, ...]] | None = None  # gpu_selector: worker name -> GPU indexes
    selected_count: int = 0  # len(gpu_selector.gpu_ids), unknown workers included
    gpus_per_replica: int | None = None  # gpu_selector.gpus_per_replica (GPUStack fills it in)
    skip_count_check: bool = False  # GPUSTACK_SKIP_GPU_COUNT_CHECK
    parallel: Parallel = field(default_factory=Parallel)
    distributed_workers: frozenset[int] = frozenset()  # workers already holding a distributed vLLM instance
    fraction_flag: str = "gpu-memory-utilization"  # the flag its messages name (SGLang: mem-fraction-static)
    ram: int = 0  # RAM a worker must have left for the one- and several-GPU paths (an extended KV cache's)
    selected_types: int = 1  # how many GPU types gpu_selector.gpu_ids name


@dataclass(frozen=True, slots=True)
class Search:
    candidates: tuple[Candidate, ...]
    path: str  # "manual", "single", "multi", "workers", or "" when none
    reason: str = ""  # why there is none: GPUStack's words where it has them


def selection_of(gpu_ids: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """gpu_selector.gpu_ids ("<worker>:<device>:<index>") by worker name, indexes sorted
    (utils/gpu.py::group_gpu_indexes_by_gpu_type_and_worker); entries of another form are dropped."""
    selection: dict[str, list[int]] = {}
    for gpu_id in gpu_ids:
        worker_name, _, index = gpu_id.rpartition(":")
        worker_name = worker_name.rpartition(":")[0]
        if worker_name and index.isdigit():
            selection.setdefault(worker_name, []).append(int(index))
    return {name: tuple(sorted(indexes)) for name, indexes in selection.items()}


def manual_gpu_count(ask: Ask) -> tuple[int, str | None]:
    """``base_candidate_selector.py::_set_gpu_count``: the GPUs per replica, or GPUStack's refusal."""
    count = ask.gpus_per_replica or ask.selected_count
    if ask.world_size and ask.world_size > 0:
        if count and count != ask.world_size and not ask.skip_count_check:
            return count, (f"the selected gpu count ({count}) does not match the world size ({ask.world_size}). "
                           "Adjust the selected GPUs or the parallelism backend parameters so they match, or add "
                           "GPUSTACK_SKIP_GPU_COUNT_CHECK=1 to the model's environment variables.")
        if not (count and ask.skip_count_check):
            count = ask.world_size
    return count, None


def manual(nodes: Sequence[Node], ask: Ask) -> Search:
    """GPUStack's base selector's manual selection (``_find_manual_gpu_selection_candidates``), shared by
    every selector that hands it its fraction (vLLM's, SGLang's)."""
    return _manual(nodes, ask)


def search(nodes: Sequence[Node], ask: Ask) -> Search:
    """The first path with candidates; else none, and GPUStack's one message for the whole cluster
    (``_set_messages``: the requirement lines, then the event of the last path tried that has one, in
    its order: several workers, several GPUs of one worker, one GPU)."""
    if ask.selection is not None:
        return _manual(nodes, ask)
    paths = [("single", _single), ("multi", _multi_one_worker)]
    if ask.distributed:
        paths.append(("workers", _multi_workers))
    events = []
    for name, path in paths:
        found, event = path(nodes, ask)
        if found:
            return Search(tuple(found), name)
        events.append(event)
    return Search((), "", message(ask, reversed(events)))


def message(ask: Ask, events: Iterable[str | None]) -> str:
    return selector_message(requirement_lines(ask.estimate, ask.gmu, ask.fraction_flag, ask.ram), events)


def _with_ram(nodes: Sequence[Node], ask: Ask) -> list[Node]:
    """The workers whose RAM covers ``ask.ram`` (``ram_not_enough`` skips a worker before its GPUs are
    looked at, so they count in no event either)."""
    return [node for node in nodes if not gpustack.ram_short(ask.ram, node)]


def claim(view: GpuView, gmu: float) -> int:
    return int(view.total * gmu)


# --- 2. one GPU ---------------------------------------------------------------------------------


def _single(nodes: Sequence[Node], ask: Ask) -> tuple[list[Candidate], str | None]:
    if ask.world_size and ask.world_size > 1:
        return [], None
    nodes = _with_ram(nodes, ask)
    found = [Candidate(node.id, (gpu.index,), {(node.id, gpu.index): gpustack.single_gpu_claim(gpu, ask.gmu, ask.estimate)})
             for node in nodes for gpu in node.gpus
             if gpu.total and _single_passes(gpu, ask)]
    event = None if found else vllm_selector.single_gpu_event((g for n in nodes for g in n.gpus), ask.gmu)
    return found, event


def _single_passes(gpu: GpuView, ask: Ask) -> bool:
    return gpustack.single_gpu_tests(gpu, ask.estimate, ask.gmu, ask.scheduler).passes


# --- 3. several GPUs of one worker ------------------------------------------------------------------


def _multi_one_worker(nodes: Sequence[Node], ask: Ask) -> tuple[list[Candidate], str | None]:
    if ask.world_size == 1:
        return [], None
    nodes = _with_ram(nodes, ask)
    found = []
    for node in nodes:
        chosen = vllm_selector.multi_gpu_choice(node.gpus, ask.estimate, ask.gmu, ask.world_size, ask.arch)
        if chosen:
            found.append(Candidate(node.id, tuple(g.index for g in chosen),
                                   {(node.id, g.index): gpustack.multi_gpu_claim(g, ask.gmu) for g in chosen}))
    if found:
        fewest = min(len(c.gpus) for c in found)
        return [c for c in found if len(c.gpus) == fewest], None
    return [], vllm_selector.multi_gpu_event([n.gpus for n in nodes], ask.gmu, ask.arch)


# --- 4. several whole workers -----------------------------------------------------------------------


def _multi_workers(nodes: Sequence[Node], ask: Ask) -> tuple[list[Candidate], str | None]:
    """Whole workers with the same GPU count, every GPU with A/T >= g, int(T * g) on each, in
    GPUStack's order (most GPUs first, stable), stopping at the first set that covers E (and, with
    a world size, has exactly that many GPUs). None found: its event, the topology refusals met, the
    combination that booked most (``auto_select_multi_worker_multi_gpu_candidates``)."""
    if len(nodes) < 2:
        return [], None
    groups: dict[int, list[Node]] = {}
    for node in sorted((n for n in nodes if n.gpus), key=lambda n: len(n.gpus), reverse=True):
        groups.setdefault(len(node.gpus), []).append(node)
    refusals: list[str] = []
    best: tuple[int, list[Node], int, int] = (0, [], 0, 0)  # booked, workers, group size, GPUs per worker
    for count, group in groups.items():
        if len(group) < 2 or gpustack.tp_divisibility_problem(ask.arch, count):
            continue
        selected: list[Node] = []
        gpu_sum = booked = 0
        for node in group:
            if any(not g.total or g.allocatable / g.total < ask.gmu for g in node.gpus):
                continue
            selected.append(node)
            gpu_sum += count
            booked += sum(int(g.total * (ask.gmu or 1)) for g in node.gpus)
            if ask.world_size:
                if gpu_sum < ask.world_size:
                    continue
                if gpu_sum > ask.world_size:
                    break
            if booked >= ask.estimate:
                problem = topology_problem([len(n.gpus) for n in selected], ask.parallel)
                if problem:
                    if problem not in refusals:
                        refusals.append(problem)
                    continue
                return [_whole_workers(selected, ask.gmu)], None
        if booked > best[0]:
            best = (booked, list(selected), len(group), count)
    return [], listed([*refusals, *_combination_lines(best, ask.gmu)])


def _combination_lines(best: tuple[int, list[Node], int, int], gmu: float) -> list[str]:
    booked, combination, group_size, per_worker = best
    if not gmu:
        return [f"The largest available worker has {byte_to_gib(booked)} of VRAM.",
                *gpustack.combination_lines([], 0, 0, 0)]
    return gpustack.combination_lines([n.name for n in combination], booked, group_size, per_worker)


def _whole_workers(selected: Sequence[Node], gmu: float) -> Candidate:
    main, rest = selected[0], selected[1:]
    claims = {(n.id, g.index): claim(g, gmu) for n in selected for g in n.gpus}
    return Candidate(main.id, tuple(g.index for g in main.gpus), claims,
                     tuple((n.id, tuple(g.index for g in n.gpus)) for n in rest))


def topology_problem(gpu_per_node: Sequence[int], parallel: Parallel) -> str | None:
    """``utils/vllm_topology.py::validate_multinode_topology``, run by the selector only for the MP
    executor (``_create_candidate``); GPUStack's default executor is Ray, which it does not check."""
    if not parallel.executor_mp or len(gpu_per_node) < 2:
        return None
    pp, pcp = parallel.pp or 1, parallel.pcp or 1
    if parallel.tp is not None:
        tp = parallel.tp
    elif parallel.dp is not None:
        total, denom = sum(gpu_per_node), parallel.dp * pp * pcp
        if denom == 0 or total % denom:
            return (f"vLLM multi-node: cannot infer --tensor-parallel-size from --data-parallel-size {parallel.dp}, "
                    f"--pipeline-parallel-size {pp} and --prefill-context-parallel-size {pcp}.")
        tp = total // denom
    else:
        tp = reduce(math.gcd, gpu_per_node)
    per_rank = tp * pp * pcp
    if per_rank <= min(gpu_per_node):
        ranks = [g // per_rank for g in gpu_per_node]
        if parallel.dp is not None and parallel.dp != sum(ranks):
            return f"vLLM multi-node: --data-parallel-size {parallel.dp} does not match derived total {sum(ranks)}."
        if parallel.dpl is not None and any(r != parallel.dpl for r in ranks):
            return f"vLLM multi-node: --data-parallel-size-local {parallel.dpl} cannot be applied uniformly."
        return None
    if len(set(gpu_per_node)) != 1:
        return "vLLM multi-node: cross-node TP/PP requires a homogeneous cluster."
    if per_rank % gpu_per_node[0]:
        return f"vLLM multi-node: workers_per_dp={per_rank} cannot evenly distribute across nodes."
    spans = per_rank // gpu_per_node[0]
    if len(gpu_per_node) % spans:
        return f"vLLM multi-node: cluster size {len(gpu_per_node)} cannot evenly distribute DP ranks."
    if parallel.dp is not None and parallel.dp != len(gpu_per_node) // spans:
        return f"vLLM multi-node: --data-parallel-size {parallel.dp} does not match derived total."
    if parallel.dpl is not None and parallel.dpl != 1:
        return f"vLLM multi-node: --data-parallel-size-local {parallel.dpl} is invalid in cross-node TP/PP layouts."
    return None


# --- 1. manual selection ------------------------------------------------------------------------


HETEROGENEOUS = ("Deployment with heterogeneous GPU types is not supported, please select GPUs of the same type "
                 "or update GPUs per replica.")


def _manual(nodes: Sequence[Node], ask: Ask) -> Search:
    count, refusal = manual_gpu_count(ask)
    if refusal:
        return Search((), "", refusal)
    if count == ask.selected_count and ask.selected_types > 1:  # one replica over GPUs of several types
        return Search((), "", message(ask, [listed([HETEROGENEOUS])]))
    selected = _selected_nodes(nodes, ask.selection or {})
    found: list[Candidate] = []
    if count == 1:
        found = [_manual_one_worker(node, [gpu], 1, ask) for node in selected for gpu in node.gpus]
    elif count > 1:
        found = [c for node in selected if (c := _manual_one_worker(node, list(node.gpus), count, ask))]
        if not found and len(selected) >= 2:
            found = _manual_workers(selected, count, ask)
    if not found:
        return Search((), "", message(ask, ()))  # no event: the requirement lines and a newline
    # g = 0 (the vLLM selector's non-LLM booking): every selected GPU meets it
    satisfied = {(n.id, g.index) for n in selected for g in n.gpus
                 if ask.gmu <= 0 or (g.total and g.allocatable / g.total >= ask.gmu)}
    by_id = {node.id: node for node in selected}
    judged = [_judge_overcommit(c, by_id, satisfied, ask) for c in found]
    fitting = [c for c in judged if not c.overcommit]
    if fitting:
        return Search(tuple(fitting), "manual")
    if ask.replicas > 1:
        return Search((), "", message(ask, [listed([
            f"Found {len(judged)} candidate, manual scheduling for multi-replica model instances does not allow "
            "overcommit or heterogeneous deployment topologies."])]))
    best = None
    for candidate in judged:  # the last of the largest effective VRAM (its `>=`)
        if best is None or candidate.effective_vram >= best.effective_vram:
            best = candidate
    return Search((best,), "manual", message(ask, [listed(_overcommit_lines(best, by_id, satisfied, ask))]))


def _overcommit_lines(candidate: Candidate, nodes: Mapping[int, Node], satisfied: set[tuple[int, int]],
                      ask: Ask) -> list[str]:
    """``_generate_manual_selected_gpus_overcommit_message``, for a booked fraction: what the GPUs used
    provide when only some of the selected ones are used, else what all the selected ones provide."""
    views = {(n.id, g.index): g for n in nodes.values() for g in n.gpus}
    used = list(candidate.claims)
    used_satisfied = sum(1 for key in used if key in satisfied)
    lines = ["Manual GPU selection resulted in resource overcommit."]
    if len(used) < ask.selected_count:
        allocatable = sum(views[key].allocatable for key in used if key in views)
        main = nodes[candidate.worker].name
        devices = f"worker {main} GPU indexes {_abbreviated(list(candidate.gpus))}"
        others = len(used) - len(candidate.gpus)
        if others > 0 and candidate.subordinates:
            workers = len(candidate.subordinates)
            devices += (f" and {others} {'GPUs' if others > 1 else 'GPU'} from other {workers} "
                        f"{'workers' if workers > 1 else 'worker'}")
        lines.append(f"Using {devices} out of {ask.selected_count} selected devices.")
        if ask.gmu <= 0:  # non-LLM: what the GPUs offer, the ratio not asked
            lines.append(f"Used GPUs provide {byte_to_gib(allocatable)} allocatable VRAM.")
        else:
            lines.append(f"Used GPUs provide {_gib2(allocatable)} GiB allocatable VRAM, {used_satisfied}/{len(used)} "
                         f"of GPUs meet the VRAM utilization ratio, providing {_gib2(allocatable * ask.gmu)} GiB of "
                         "allocatable VRAM.")
    elif ask.gmu <= 0:
        lines.append(f"Selected GPUs have {byte_to_gib(sum(g.allocatable for g in views.values()))} of VRAM.")
    else:
        allocatable = sum(g.allocatable for g in views.values())
        lines.append(f"Selected GPUs have {_gib2(allocatable)} GiB allocatable VRAM, {len(satisfied)}/"
                     f"{ask.selected_count} of GPUs meet the VRAM utilization ratio, providing "
                     f"{_gib2(allocatable * ask.gmu)} GiB of allocatable VRAM.")
    return lines


def _gib2(n: float) -> str:
    """``f"{byte_to_gib(n):.2f}"``: rounded to two decimals, then printed with two."""
    return f"{round(n / GIB, 2):.2f}"


def _abbreviated(indexes: list[int], shown: int = 8) -> str:
    """``utils/gpu.py::abbreviate_gpu_indexes``."""
    if len(indexes) <= shown:
        return str(indexes)
    return f"[{','.join(map(str, indexes[:shown]))}...(more {len(indexes) - shown})]"


def _selected_nodes(nodes: Sequence[Node], selection: Mapping[str, tuple[int, ...]]) -> list[Node]:
    """``policies/utils.py::sort_selected_workers_by_gpu_type_and_resource``: each worker's selected GPUs
    by allocatable rate, highest first (stable), then the workers by selected GPU count, most first."""
    out = []
    for node in nodes:
        indexes = set(selection.get(node.name, ()))
        gpus = [g for g in node.gpus if g.index in indexes]
        if not gpus:
            continue
        gpus.sort(key=lambda g: g.allocatable / g.total if g.total else 0, reverse=True)
        out.append(Node(node.id, node.name, tuple(gpus)))
    out.sort(key=lambda n: len(n.gpus), reverse=True)
    return out


def _manual_one_worker(node: Node, gpus: Sequence[GpuView], count: int, ask: Ask) -> Candidate | None:
    """``_manual_select_single_worker_multi_gpu_candidates``: the first ``count`` GPUs meeting g (with g = 0,
    every one), topped up with the ones that do not."""
    if len(gpus) < count:
        return None
    meets, short = [], []
    for gpu in gpus:
        (meets if ask.gmu <= 0 or (gpu.total and gpu.allocatable / gpu.total >= ask.gmu) else short).append(gpu)
        if len(meets) >= count:
            break
    used = meets + short[:count - len(meets)]
    claims = gpustack.manual_claims(used, ask.gmu, ask.estimate)
    return Candidate(node.id, tuple(g.index for g in used), {(node.id, i): c for i, c in claims.items()},
                     utilization=ask.gmu)


def _manual_workers(selected: Sequence[Node], count: int, ask: Ask) -> list[Candidate]:
    """``_manual_select_multi_worker_multi_gpu_candidates``: the worker with most selected GPUs takes
    all of them (in index order), the others add theirs until ``count``."""
    main = selected[0]
    main_gpus = sorted(main.gpus, key=lambda g: g.index)
    claims = {(main.id, i): c for i, c in gpustack.manual_claims(main_gpus, ask.gmu, ask.estimate).items()}
    used = len(main_gpus)
    subordinates = []
    for node in selected[1:]:
        if node.id in ask.distributed_workers:
            continue  # "Each worker can run only one distributed vLLM instance."
        # sort_gpu_indexes_by_allocatable_rate, handed the claims of all its selected GPUs rather than the
        # allocatable memory: int(T * g), every rate g but for int()'s truncation, which still orders them
        # (g = 0: E / their number each, the smaller card first).
        rated = gpustack.manual_claims(node.gpus, ask.gmu, ask.estimate)
        ranked = sorted(node.gpus, key=lambda g: rated[g.index] / g.total if g.total else 0, reverse=True)
        take = ranked[:min(len(ranked), max(count - used, 0))]
        subordinates.append((node.id, tuple(g.index for g in take)))
        claims.update({(node.id, i): c for i, c in gpustack.manual_claims(take, ask.gmu, ask.estimate).items()})
        used += len(take)
        if used >= count:
            break
    if not subordinates:
        return []
    return [Candidate(main.id, tuple(g.index for g in main_gpus), claims, tuple(subordinates),
                      subordinate_utilization=ask.gmu)]


def _judge_overcommit(candidate: Candidate, nodes: Mapping[int, Node], satisfied: set[tuple[int, int]],
                      ask: Ask) -> Candidate:
    """``_generate_manual_selected_gpus_overcommit_message``: overcommitted when the claims do not cover
    E or a used GPU misses g; ranked by the allocatable VRAM it offers times g."""
    used = list(candidate.claims)
    over = sum(candidate.claims.values()) < ask.estimate or any(key not in satisfied for key in used)
    views = {(n.id, g.index): g for n in nodes.values() for g in n.gpus}
    partial = len(used) < ask.selected_count
    pool = used if partial else list(views)
    effective = sum(views[key].allocatable for key in pool if key in views) * (ask.gmu if ask.gmu > 0 else 1)
    return replace(candidate, overcommit=over, effective_vram=effective)
