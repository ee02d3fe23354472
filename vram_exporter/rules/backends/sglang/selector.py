"""GPUStack 2.3.0's placement of an SGLang model on one worker.

Source: ``gpustack/policies/candidate_selectors/sglang_resource_fit_selector.py``
(``SGLangResourceFitSelector``, ``MemFractionStaticCalculator``), ``base_candidate_selector.py``
(manual selection, TP divisibility) and ``gpustack/policies/utils.py`` (``group_worker_gpu_by_memory``).

- The fraction f GPUStack books: ``--mem-fraction-static`` when given (first occurrence, > 0), else
  ``MemFractionStaticCalculator._cal_mem_fraction_static``, GPUStack's copy of SGLang's own default
  (sglang ``server_args.py``): from the smallest GPU of the type (MiB, rounded to 2 decimals) a
  chunked-prefill size and a CUDA-graph batch size, a reserve of 512 + 1.5 x chunked prefill + 2 x
  graph batch + TP x PP / 8 GiB (at least 10 GiB on cards over 60 GiB, more for DP attention and
  speculative decoding), f = round((mem - reserve) / mem, 3), times a ViT factor for vision models.
  So f differs by card (TP 1, nothing given): 0.393 on 6138 MiB, 0.772 on 16384, 0.847 on 24564,
  0.835 on 81559 (the 10 GiB floor), 0.907 on 143771 MiB.
- E is GPUStack's estimate (``estimate_model_vram``); the claim on every GPU used is int(T * f).
- Single GPU (unless the world size is > 1): a GPU is excluded when ``E > T * f`` or ``A / T < f``.
- Multi-GPU on one worker: the GPUs with A > 0 grouped by allocatable (ascending, a group holds
  GPUs whose smallest A is at least 0.9 x each one's); the first group of two or more whose every
  GPU has ``A / T >= f`` and whose sum of A reaches ``E / f``, walked from the largest A adding
  int(T * f) until the count divides heads and vocabulary and the sum reaches E (with a world size:
  stops at that count).
- Manual selection: GPUStack's base selector's, handed f (rules/cluster/paths.py ``manual``), across
  workers too; ``place`` here takes one worker's selection whole (the exporter's own node).
- Across workers (``distributed_inference_across_workers``, on by default; only when no worker has a
  candidate alone): ``across_workers``, the port of ``find_multi_worker_multi_gpu_candidates``.
Not modelled here: diffusion models, the worker's RAM (only for an extended KV cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ....errors import ModelError
from ....units import GIB, MIB
from ...flags import find_bool_parameter as _flag, first_int_parameter as _first_int, first_parameter as _first
from ...gpustack import (MANUAL_MULTI_REPLICA, Booking, GpuView, Placement, WorkersPlacement, WorkerView,
                         byte_to_gib, claim_bytes, combination_lines, listed, requirement_lines, selector_message,
                         model_estimate, gpu_tests, pinned_count_problem, tp_divisibility_problem)
from ...model import Architecture, ModelSpec, Scheduler


def _strtobool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("y", "yes", "t", "true", "on", "1"):
        return True
    if lowered in ("n", "no", "f", "false", "off", "0"):
        return False
    raise ModelError(f"GPUStack cannot read --enable-mixed-chunk {value!r} as a boolean")


@dataclass(frozen=True, slots=True)
class SglangGpuStackParams:
    """backend_parameters as the SGLang selector reads them (first occurrence wins)."""

    tp: int | None
    pp: int | None
    dp: int | None
    dp_attention: bool
    mem_fraction_static: float | None  # given and > 0
    chunked_prefill_size: int | None
    cuda_graph_max_bs: int | None
    speculative_algorithm: str | None
    piecewise_cuda_graph_tokens: int | None  # None: piecewise CUDA graphs not enabled
    language_only: bool

    @property
    def world_size(self) -> int | None:
        """``get_world_size_from_backend_parameters``: tp x pp x dp (dp not counted with DP attention)."""
        dp = None if self.dp_attention else self.dp
        if not (self.tp or self.pp or dp):
            return None
        world = 1
        for size in (self.tp, self.pp, dp):
            world *= size or 1
        return world


def gpustack_sglang_params(parameters: Sequence[str]) -> SglangGpuStackParams:
    """Raises ModelError where the selector raises (``_validate_and_set_arguments``), but for the
    checks that need the model's config (``validate``)."""
    tp = _first_int(parameters, ["tp-size", "tensor-parallel-size", "tp"])
    pp = _first_int(parameters, ["pp-size", "pipeline-parallel-size"])
    dp = _first_int(parameters, ["dp-size", "data-parallel-size", "dp"])
    raw_mfs = _first(parameters, ["mem-fraction-static"])
    mfs = None
    if raw_mfs:
        try:
            mfs = float(raw_mfs)
        except ValueError:
            raise ModelError(f"GPUStack cannot read --mem-fraction-static={raw_mfs!r} as a number") from None
        if not 0 < mfs <= 1:
            raise ModelError(f"--mem-fraction-static {mfs} must be in (0, 1]")
    mixed = _first(parameters, ["enable-mixed-chunk"])
    mixed_chunk = _strtobool(mixed) if mixed is not None else False
    speculative = _first(parameters, ["speculative-algorithm"])
    nnodes = int(_first(parameters, ["nnodes"]) or 1)
    if ((tp or 1) * (pp or 1)) % nnodes:
        raise ModelError(f"tp-size {(tp or 1) * (pp or 1)} must be divisible by nnodes")
    if (pp or 1) > 1 and (speculative is not None or mixed_chunk):
        raise ModelError("Pipeline parallelism is not compatible with overlap schedule, speculative decoding, "
                         "mixed chunked prefill.")
    dp_attention = _flag(parameters, ["enable-dp-attention"])
    if (dp or 1) > 1 and nnodes != 1 and not dp_attention:
        raise ModelError("multi-node data parallel is not supported unless dp attention!")
    if speculative is not None and mixed_chunk:
        raise ModelError("enable_mixed_chunk is required for speculative decoding")
    piecewise = _first(parameters, ["enable-piecewise-cuda-graph"])
    return SglangGpuStackParams(
        tp=tp, pp=pp, dp=dp, dp_attention=dp_attention, mem_fraction_static=mfs,
        chunked_prefill_size=_first_int(parameters, ["chunked-prefill-size"]),
        cuda_graph_max_bs=_first_int(parameters, ["cuda-graph-max-bs"]),
        speculative_algorithm=speculative,
        piecewise_cuda_graph_tokens=(_first_int(parameters, ["piecewise-cuda-graph-max-tokens"]) or 0)
        if piecewise else None,
        language_only=_flag(parameters, ["language-only"]),
    )


def validate(arch: Architecture, p: SglangGpuStackParams) -> None:
    """The selector's refusals that read the config (raised before any placement)."""
    tp = p.tp or 1
    if arch.attention_heads % tp:
        raise ModelError(f"Total number of attention heads ({arch.attention_heads}) must be divisible by "
                         f"tp-size ({tp}).")
    if problem := tp_divisibility_problem(arch, tp, check_vision=not p.language_only):
        raise ModelError(problem + " Consider adjusting your tp-size value.")


# --- the fraction GPUStack assumes: MemFractionStaticCalculator._cal_mem_fraction_static --------------


def _chunk_and_graph_bs(gpu_mem: float, max_tp: int) -> tuple[int, int]:
    """Step 1 for NVIDIA cards: SGLang's defaults by card size (MiB)."""
    if gpu_mem < 20 * 1024:
        return 2048, 8
    if gpu_mem < 35 * 1024:
        return 2048, 24 if max_tp < 4 else 80
    if gpu_mem < 60 * 1024:
        return 4096, 32 if max_tp < 4 else 160
    if gpu_mem < 160 * 1024:
        return 8192, 256 if max_tp < 4 else 512
    return 16384, 512


def gpustack_mem_fraction_static(min_total_bytes: int, p: SglangGpuStackParams,
                                 vision_config: Mapping[str, Any] | None = None, *,
                                 selected_per_worker: Sequence[int] = (), gpus_per_replica: int | None = None,
                                 unchunked_prefill_tokens: int | None = None) -> float:
    """The ``--mem-fraction-static`` GPUStack assumes on a GPU type whose smallest card has
    ``min_total_bytes`` (a given fraction wins). ``selected_per_worker``: with manual selection, how many
    GPUs are selected on each worker (they raise the TP and PP it assumes), and the model's
    gpu_selector.gpus_per_replica (it raises the TP: ``_get_max_tp_size``). ``unchunked_prefill_tokens``:
    SGLang's own rule reserves max(--max-prefill-tokens, 2048) x 1.5 when chunked prefill is off;
    GPUStack's port reserves nothing then (None)."""
    if p.mem_fraction_static:
        return p.mem_fraction_static
    tp, pp, dp = p.tp or 1, p.pp or 1, p.dp or 1
    max_tp = max([tp, *selected_per_worker, gpus_per_replica or 0])
    max_pp = max(pp, len(selected_per_worker))
    gpu_mem = round(min_total_bytes / MIB, 2)  # byte_to_mib
    if gpu_mem:
        chunked, graph_bs = _chunk_and_graph_bs(gpu_mem, max_tp)
    else:
        chunked, graph_bs = 4096, 160
    chunked = p.chunked_prefill_size if p.chunked_prefill_size is not None else chunked
    graph_bs = p.cuda_graph_max_bs if p.cuda_graph_max_bs is not None else graph_bs
    reserved: float = 512
    if chunked > 0:
        reserved += max(chunked, 2048) * 1.5
    elif unchunked_prefill_tokens is not None:
        reserved += max(unchunked_prefill_tokens, 2048) * 1.5
    reserved += graph_bs * 2
    reserved += max_tp * max_pp / 8 * 1024
    if p.dp_attention:
        reserved += graph_bs * dp * 3
        if graph_bs > 300:
            reserved += graph_bs * dp * 1.5
    if gpu_mem > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    if p.speculative_algorithm is not None:
        if p.speculative_algorithm == "STANDALONE":
            reserved += 6 * 1024
        elif p.speculative_algorithm != "NGRAM":
            reserved += 2 * 1024
    if p.piecewise_cuda_graph_tokens is not None:
        reserved += p.piecewise_cuda_graph_tokens // 4
    fraction = round((gpu_mem - reserved) / gpu_mem, 3) if gpu_mem > 0 else 0.88
    if vision_config is not None:
        fraction = round(fraction * _vit_factor(vision_config), 3)
    return fraction


def _vit_factor(vision: Mapping[str, Any]) -> float:
    """Step 3: vision models keep less static memory, by the ViT's size against ViT-L/14."""
    layers = vision.get("num_hidden_layers") or vision.get("depth") or 24
    hidden = vision.get("hidden_size", 1024)
    ratio = layers * hidden**2 / (24 * 1024**2)
    adjustment = max(0.8, min(1.05, 1.0 - 0.1 * (ratio - 1.0)))
    return 0.95 * adjustment


# --- placement on one worker -----------------------------------------------------------------------


def single_gpu_tests(gpu: GpuView, estimate: int, fraction: float, n_gpus: int = 1):
    """GPUStack's two tests as headroom (rules/gpustack.py ``gpu_tests``): on one GPU ``E > T * f`` and
    ``A / T < f`` exclude it; the SGLang selector has no v0.6 form."""
    return gpu_tests(gpu, estimate, fraction, n_gpus, "gpustack")


def place(gpus: Sequence[GpuView], *, estimate: int, fraction: float, world_size: int | None, arch: Architecture,
          check_vision: bool = True, pinned: Sequence[int] | None = None, replica_count: int = 1
          ) -> Placement | None:
    """Where GPUStack puts one instance of an SGLang model on this worker, or None (pending)."""
    if pinned:
        return _place_pinned(gpus, pinned, estimate, fraction, replica_count)
    if not world_size or world_size <= 1:
        fits = [gpu for gpu in gpus if gpu.total and single_gpu_tests(gpu, estimate, fraction).passes]
        if fits:
            chosen = max(fits, key=lambda gpu: (gpu.allocatable, -gpu.index))  # spread: the emptiest
            return Placement((chosen.index,), {chosen.index: claim_bytes(chosen.total, fraction)}, "single")
    return _place_multi(gpus, estimate, fraction, world_size, arch, check_vision)


def memory_groups(gpus: Sequence[GpuView]) -> list[list[GpuView]]:
    """``group_worker_gpu_by_memory``: ascending by allocatable, a GPU joins the group while the
    group's smallest allocatable is at least 0.9 x its own."""
    groups: list[list[GpuView]] = []
    for gpu in sorted((g for g in gpus if g.total and g.allocatable > 0), key=lambda g: g.allocatable):
        if groups and groups[-1][0].allocatable >= gpu.allocatable * 0.9:
            groups[-1].append(gpu)
        else:
            groups.append([gpu])
    return groups


def _group_usable(group: Sequence[GpuView], fraction: float) -> bool:
    return len(group) >= 2 and all(gpu.allocatable / gpu.total >= fraction for gpu in group)


def _place_multi(gpus, estimate, fraction, world_size, arch, check_vision) -> Placement | None:
    if len(gpus) < 2:
        return None
    for group in memory_groups(gpus):
        if not _group_usable(group, fraction) or sum(g.allocatable for g in group) < estimate / fraction:
            continue
        chosen: list[GpuView] = []
        booked = 0
        found = False
        for gpu in sorted(group, key=lambda g: g.allocatable, reverse=True):
            chosen.append(gpu)
            booked += claim_bytes(gpu.total, fraction)
            if tp_divisibility_problem(arch, len(chosen), check_vision=check_vision):
                continue
            if world_size and len(chosen) >= world_size:
                found = booked >= estimate
                break
            if not world_size and booked >= estimate:
                found = True
                break
        if found:
            return Placement(tuple(g.index for g in chosen),
                             {g.index: claim_bytes(g.total, fraction) for g in chosen}, "multi")
    return None


def _place_pinned(gpus, pinned, estimate, fraction, replica_count) -> Placement | None:
    by_index = {gpu.index: gpu for gpu in gpus}
    if any(index not in by_index for index in pinned):
        return None
    views = [by_index[index] for index in pinned]
    claims = {g.index: claim_bytes(g.total, fraction) for g in views}
    overcommit = (sum(claims.values()) < estimate
                  or any(not g.total or g.allocatable / g.total < fraction for g in views))
    if overcommit and replica_count > 1:
        return None  # manual scheduling of several replicas does not allow overcommit
    return Placement(tuple(pinned), claims, "pinned", overcommit)


def pending_message(estimate: int, fraction: float, gpus: Sequence[GpuView], world_size: int | None,
                    arch: Architecture, check_vision: bool = True, pinned: bool = False, ram: int = 0) -> str:
    """The selector's "No suitable workers" text (``_set_messages``): the requirement lines, then the
    multi-GPU path's event when it ran (two or more GPUs), else the single-GPU one's."""
    opening = requirement_lines(estimate, fraction if fraction > 0 else 0, "mem-fraction-static", ram)
    # the largest of the fractions and the initial 0: a negative one (tiny card) is not said
    if pinned:  # manual selection is the only path tried; pending only for several replicas in overcommit
        event = MANUAL_MULTI_REPLICA
    elif len(gpus) >= 2:
        event = _multi_line(gpus, fraction, arch, check_vision)
    elif gpus and not (world_size and world_size > 1):  # the single-GPU path is skipped for a world size > 1
        largest = max(gpus, key=lambda g: g.allocatable)  # the first of the largest
        share = largest.allocatable / largest.total * 100 if largest.total and largest.allocatable else 0
        event = (f"The current available GPU only has {byte_to_gib(largest.allocatable)} allocatable VRAM "
                 f"({share:.2f}%).")
    else:
        event = None
    return selector_message(opening, [listed([event]) if event else None])


def _multi_line(gpus, fraction, arch, check_vision) -> str:
    largest, count = 0, 0
    for group in memory_groups(gpus):
        if not _group_usable(group, fraction):
            continue
        total = sum(g.allocatable for g in group)
        if total > largest:
            largest, count = total, len(group)
    if problem := tp_divisibility_problem(arch, count, check_vision=check_vision) if count else None:
        return problem
    if not largest:
        return "No worker offered a GPU set that could be sized for this model."
    effective = byte_to_gib(int(largest * fraction * count / len(gpus)))
    return (f"The largest available worker has {round(largest / GIB, 2):.2f} GiB allocatable VRAM, {count}/"
            f"{len(gpus)} of GPUs meet the VRAM utilization ratio, providing {effective} of allocatable VRAM.")


# --- across workers: find_multi_worker_multi_gpu_candidates ----------------------------------------


def _workers_eligible(workers: Sequence[WorkerView], fraction: float) -> bool:
    """The selector runs its worker search only when some group of GPUs across the workers
    (``group_worker_gpu_by_memory``) has two or more, every one with ``A / T >= f``, and as many of
    them on each worker it spans."""
    for group in _cross_groups(workers):
        if len(group) < 2 or any(gpu.allocatable / gpu.total < fraction for _, gpu in group):
            continue
        per_worker: dict[int, int] = {}
        for worker, _ in group:
            per_worker[worker] = per_worker.get(worker, 0) + 1
        if len(set(per_worker.values())) == 1:
            return True
    return False


def _cross_groups(workers: Sequence[WorkerView]) -> list[list[tuple[int, GpuView]]]:
    """``group_worker_gpu_by_memory`` over several workers: their GPUs with A > 0, ascending by A."""
    groups: list[list[tuple[int, GpuView]]] = []
    pool = [(w.id, g) for w in workers for g in w.gpus if g.total and g.allocatable > 0]
    for worker, gpu in sorted(pool, key=lambda item: item[1].allocatable):
        if groups and groups[-1][0][1].allocatable >= gpu.allocatable * 0.9:
            groups[-1].append((worker, gpu))
        else:
            groups.append([(worker, gpu)])
    return groups


def across_workers(workers: Sequence[WorkerView], *, estimate: int, fraction: float, arch: Architecture,
                   check_vision: bool = True) -> tuple[WorkersPlacement | None, str | None]:
    """``auto_select_multi_worker_multi_gpu_candidates``: whole workers with the same GPU count (most
    GPUs first, stable), each with every GPU at ``A / T >= f``, adding int(T * f) per GPU, until the
    sum covers E where the per-worker count divides the heads and vocabulary. No world size is read:
    the first covering set is taken whatever --tp-size says. None found: its event (None when the
    search did not run)."""
    if len(workers) < 2 or not _workers_eligible(workers, fraction):
        return None, None
    by_count: dict[int, list[WorkerView]] = {}
    for worker in sorted((w for w in workers if w.gpus), key=lambda w: len(w.gpus), reverse=True):
        by_count.setdefault(len(worker.gpus), []).append(worker)
    best: tuple[int, list[WorkerView], int, int] = (0, [], 0, 0)  # booked, workers, group size, GPUs each
    for count, group in by_count.items():
        if len(group) < 2:
            continue
        selected: list[WorkerView] = []
        booked = 0
        for worker in group:
            if any(not g.total or g.allocatable / g.total < fraction for g in worker.gpus):
                continue
            selected.append(worker)
            booked += sum(claim_bytes(g.total, fraction) for g in worker.gpus)
            if tp_divisibility_problem(arch, count, check_vision=check_vision):
                continue
            if booked >= estimate:
                return _whole_workers(selected, fraction), None
        if booked > best[0]:
            best = (booked, selected, len(group), count)
    booked, combination, group_size, per_worker = best
    return None, listed(combination_lines([w.name for w in combination], booked, group_size, per_worker))


def _whole_workers(selected: Sequence[WorkerView], fraction: float) -> WorkersPlacement:
    return WorkersPlacement(tuple((w.id, tuple(g.index for g in w.gpus)) for w in selected),
                            {(w.id, g.index): claim_bytes(g.total, fraction) for w in selected for g in w.gpus})


# --- the selector contract (rules/backends/__init__.py) --------------------------------------------

WORKERS_BY_GPU_COUNT = True  # select_candidates: sort_workers_by_gpu_count
MANUAL_FRACTION_FLAG: str | None = "mem-fraction-static"  # manual selection: the base selector's, named so


def workers_candidates(spec: ModelSpec, workers: Sequence[WorkerView], book: Booking
                       ) -> tuple[WorkersPlacement | None, str | None]:
    """One instance over several workers, or the selector's whole "No suitable workers" text when its
    worker search ran and found none (None: it did not run)."""
    assert book.fraction is not None
    estimate = model_estimate(spec)
    found, event = across_workers(workers, estimate=estimate, fraction=book.fraction, arch=spec.arch,
                                  check_vision=not params_of(spec).language_only)
    if event is None:
        return found, None
    return None, selector_message(requirement_lines(estimate, max(book.fraction, 0), "mem-fraction-static", book.ram),
                                  [event])



def params_of(spec: ModelSpec) -> SglangGpuStackParams:
    return spec.read(gpustack_sglang_params)


def booking(spec: ModelSpec, min_total: int, *, selected_per_worker: Sequence[int] = (),
            gpus_per_replica: int | None = None) -> Booking:
    """GPUStack's reading of ``spec`` for GPUs whose smallest total is ``min_total`` (the default
    fraction depends on it: rules/gpustack.py ``smallest_total``). Raises ModelError where GPUStack
    refuses the model."""
    p = params_of(spec)
    validate(spec.arch, p)
    if problem := pinned_count_problem(spec.pinned_gpus, p.world_size, spec.env):
        raise ModelError(problem)  # base_candidate_selector.py::_set_gpu_count
    vision = ({"num_hidden_layers": spec.arch.vision_layers, "hidden_size": spec.arch.vision_hidden_size or 1024}
              if spec.arch.has_vision else None)
    fraction = gpustack_mem_fraction_static(min_total, p, vision, selected_per_worker=selected_per_worker,
                                            gpus_per_replica=gpus_per_replica)
    return Booking(fraction, p.world_size, p.mem_fraction_static is not None)


def place_spec(spec: ModelSpec, views: Sequence[GpuView], *, scheduler: Scheduler, book: Booking,
               pinned: Sequence[int] | None = None, replica_count: int | None = None) -> Placement | None:
    assert book.fraction is not None
    return place(views, estimate=model_estimate(spec), fraction=book.fraction,
                 world_size=book.world_size, arch=spec.arch, check_vision=not params_of(spec).language_only,
                 pinned=pinned, replica_count=spec.replicas if replica_count is None else replica_count)


def candidates(spec: ModelSpec, views: Sequence[GpuView], *, scheduler: Scheduler, book: Booking,
               pinned: Sequence[int] | None = None) -> list[Placement]:
    """Every candidate of this worker before the placement scorer picks: one per passing GPU on the
    single-GPU path, else the one ``place`` finds."""
    assert book.fraction is not None
    estimate = model_estimate(spec)
    single = []
    if not pinned and not (book.world_size and book.world_size > 1):
        single = [Placement((g.index,), {g.index: claim_bytes(g.total, book.fraction)}, "single")
                  for g in views if g.total and single_gpu_tests(g, estimate, book.fraction).passes]
    if single:
        return single
    found = place_spec(spec, views, scheduler=scheduler, book=book, pinned=pinned)
    return [found] if found is not None else []


def claim_utilization(book: Booking, *, manual: bool) -> float | None:
    """Every path of its selector writes the fraction as vram_utilization (the manual one through
    base_candidate_selector.py, handed the same fraction)."""
    return book.fraction


def manual_workers_refusal(spec: ModelSpec, selected_workers: int) -> str | None:
    return None


def pending_message_of(spec: ModelSpec, views: Sequence[GpuView], book: Booking,
                       pinned: Sequence[int] | None = None) -> str:
    assert book.fraction is not None
    return pending_message(model_estimate(spec), book.fraction, views, book.world_size,
                           spec.arch, not params_of(spec).language_only, pinned=bool(pinned), ram=book.ram)


def claims_of(spec: ModelSpec, totals: Mapping[int, int], book: Booking) -> dict[int, int]:
    """What a placed instance books on each of its GPUs when GPUStack's own claims are not known."""
    assert book.fraction is not None
    return {i: claim_bytes(t, book.fraction) for i, t in totals.items()}


cluster_search = None  # candidates searched worker by worker (cluster/replay.py) or by cluster/paths.py
