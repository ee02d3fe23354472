"""GPUStack 2.3.0's placement of a Custom-backend model on one worker.

Source: ``gpustack/policies/candidate_selectors/custom_backend_resource_fit_selector.py``
(``CustomBackendResourceFitSelector``), with ``base_candidate_selector.py`` for manual selection.

- E is GPUStack's estimate (``estimate_model_vram``, as for vLLM: gpustack.py ``model_estimate``).
- The whole-card fraction: the LAST ``--gpu-memory-utilization`` or ``--mem-fraction-static`` of
  ``run_command`` (shell-split) followed by ``backend_parameters`` (``_find_whole_card_fraction``,
  ``find_last_parameter``), used only when it reads as a float in (0, 1]. The vLLM and SGLang
  selectors read the FIRST occurrence (``find_parameter``): a repeated flag is read differently.
- Claim on a GPU: ``max(E, int(T * fraction))`` with a fraction, else E (``_vram_claim_on``).
- Manual selection (one worker) goes first and is always taken: with no utilization ratio
  (``{"*": 0}``) every selected GPU "satisfies", each books ``int(E / n)``, and overcommit is only
  ``n * int(E / n) < E`` (accepted for one replica). Selection across several workers is refused.
- Single GPU: every GPU with ``A >= claim`` is a candidate (no world size is read: TP flags of a
  custom command are not GPUStack's business).
- Multi-GPU, one worker (>= 2 GPUs, only when no single GPU fits): with a fraction, the GPUs with
  ``A >= claim`` and ``sum(A) >= sum(claims)``; without one, every GPU and ``sum(A) >= E``. All of
  them are used, each booking ``max(E // n, claim)``.
- RAM: every candidate claims ``max(int(E * 0.1), 2 GiB)`` of its worker's RAM, and the single- and
  multi-GPU paths take a worker only when its allocatable RAM covers that (manual selection does not
  look). With ``cpu_offloading``, when no GPU path found one, every worker whose RAM covers it is a
  CPU-only candidate (no GPUs, only the RAM claim); one whose RAM does not adds the "CPU-only inference
  is supported" line. ``cluster_search`` runs these over the whole cluster, as ``select_candidates``
  does, and words its one message (``_set_messages``) for a placed instance as for a pending one.
Not modelled: the router role of a prefill/decode group (``cpu_only=True``).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ....units import GIB
from ...flags import param_pairs
from ...gpustack import (MANUAL_MULTI_REPLICA, Booking, GpuView, Placement, WorkersPlacement, WorkerView, byte_to_gib,
                         model_estimate, listed, ram_short, selector_message)
from ...model import ModelSpec, Scheduler

FRACTION_FLAGS = ("gpu-memory-utilization", "mem-fraction-static")  # _WHOLE_CARD_FRACTION_PARAMETERS


def declared_arguments(run_command: str | None, backend_parameters: Sequence[str]) -> list[str]:
    """``_declared_arguments``: the command's tokens, then the parameters (a bad quote drops the command)."""
    tokens: list[str] = []
    if run_command:
        try:
            tokens.extend(shlex.split(run_command))
        except ValueError:
            pass
    return [*tokens, *backend_parameters]


@dataclass(frozen=True, slots=True)
class WholeCardFraction:
    """What the custom selector reads, and whether the flag is written more than once."""

    value: float | None  # None: no usable fraction declared, the claim is the bare estimate
    raw_values: tuple[str, ...]  # every value written for either flag, in order

    @property
    def repeated(self) -> bool:
        return len(self.raw_values) > 1

    def note(self) -> str | None:
        """Said on the model when the flag is repeated: the readers disagree."""
        if not self.repeated:
            return None
        first, last = self.raw_values[0], self.raw_values[-1]
        return (f"the whole-card fraction is written {len(self.raw_values)} times ({', '.join(self.raw_values)}): "
                f"GPUStack's custom-backend selector reads the last ({last}), as argparse does, while its vLLM "
                f"and SGLang selectors read the first ({first}); write it once")


def whole_card_fraction(run_command: str | None, backend_parameters: Sequence[str]) -> WholeCardFraction:
    raw = tuple(value for key, value in param_pairs(declared_arguments(run_command, backend_parameters))
                if key in FRACTION_FLAGS and value is not None)
    if not raw:
        return WholeCardFraction(None, ())
    try:
        fraction = float(raw[-1])
    except ValueError:
        return WholeCardFraction(None, raw)
    return WholeCardFraction(fraction if 0 < fraction <= 1 else None, raw)


def claim_on(gpu: GpuView, estimate: int, fraction: float | None) -> int:
    """``_vram_claim_on``: the larger of the estimate and what the engine seizes."""
    if fraction is None:
        return estimate
    return max(estimate, int(gpu.total * fraction))


def claim_among(gpu: GpuView, estimate: int, fraction: float | None, n_gpus: int) -> int:
    """What one GPU of an ``n_gpus`` placement books: on one GPU ``claim_on``; on several (the multi-GPU
    path), ``max(E // n, claim_on)``, or the bare share without a fraction."""
    if n_gpus > 1:
        return max(estimate // n_gpus, claim_on(gpu, estimate, fraction) if fraction is not None else 0)
    return claim_on(gpu, estimate, fraction)


def place(gpus: Sequence[GpuView], *, estimate: int, fraction: float | None,
          pinned: Sequence[int] | None = None, replica_count: int = 1) -> Placement | None:
    """Where GPUStack puts one instance of a custom-backend model on this worker, or None (pending)."""
    if pinned:
        return _place_pinned(gpus, pinned, estimate, replica_count)
    single = [gpu for gpu in gpus if gpu.allocatable >= claim_on(gpu, estimate, fraction)]
    if single:
        # Every passing GPU is a candidate; spread (the default strategy) favours the emptiest.
        chosen = max(single, key=lambda gpu: (gpu.allocatable, -gpu.index))
        return Placement((chosen.index,), {chosen.index: claim_on(chosen, estimate, fraction)}, "single")
    return _place_multi(gpus, estimate, fraction)


def _multi_members(gpus: Sequence[GpuView], estimate: int, fraction: float | None) -> tuple[list[GpuView], int]:
    """The GPUs a multi-GPU candidate uses and what they must provide together."""
    if fraction is None:
        return list(gpus), estimate
    members = [gpu for gpu in gpus if gpu.allocatable >= claim_on(gpu, estimate, fraction)]
    return members, sum(claim_on(gpu, estimate, fraction) for gpu in members)


def _place_multi(gpus: Sequence[GpuView], estimate: int, fraction: float | None) -> Placement | None:
    if len(gpus) < 2:
        return None
    members, required = _multi_members(gpus, estimate, fraction)
    if len(members) < 2 or sum(gpu.allocatable for gpu in members) < required:
        return None
    claims = {gpu.index: claim_among(gpu, estimate, fraction, len(members)) for gpu in members}
    return Placement(tuple(gpu.index for gpu in members), claims, "multi")


def _place_pinned(gpus: Sequence[GpuView], pinned: Sequence[int], estimate: int,
                  replica_count: int) -> Placement | None:
    by_index = {gpu.index: gpu for gpu in gpus}
    if any(index not in by_index for index in pinned):
        return None
    each = int(estimate / len(pinned))  # _get_worker_resource_claim with no utilization ratio
    overcommit = each * len(pinned) < estimate
    if overcommit and replica_count > 1:
        return None
    return Placement(tuple(pinned), {index: each for index in pinned}, "pinned", overcommit)


def ram_claim(estimate: int) -> int:
    """What every candidate claims of its worker's RAM: ``max(int(E * 0.1), 2 GiB)``."""
    return max(int(estimate * 0.1), 2 * GIB)


@dataclass(frozen=True, slots=True)
class ClusterSearch:
    """``select_candidates`` over the whole cluster: its candidates and its one message."""

    placements: tuple[tuple[int, Placement], ...]  # (worker id, placement); empty: pending
    message: str  # ``_set_messages``: written for a placed instance as for a pending one
    ram: int  # the RAM claim every candidate carries


def cluster_search(spec: ModelSpec, nodes: Sequence[WorkerView], book: Booking, *,
                   pinned: Mapping[int, tuple[int, ...]] | None, cpu_offloading: bool) -> ClusterSearch:
    """Manual selection alone when GPUs are selected; else one GPU on any worker, else several GPUs of one
    worker, else (``cpu_offloading``) no GPU; each later path only when the earlier found none."""
    estimate, fraction = model_estimate(spec), book.fraction
    ram = ram_claim(estimate)
    opening = [f"The model requires approximately {byte_to_gib(estimate)} of VRAM and {byte_to_gib(ram)} of RAM."]
    events: dict[str, str] = {}  # by _set_messages' key; the first in EVENT_ORDER that is set is shown
    if pinned is not None:
        found = tuple((node.id, p) for node in nodes if pinned.get(node.id)
                      and (p := _place_pinned(node.gpus, pinned[node.id], estimate, spec.replicas)))
        if not found:
            events["manual"] = MANUAL_MULTI_REPLICA
        return ClusterSearch(found, _message(opening, events), ram)
    for path in (_single_path, _multi_path):
        found = path(nodes, estimate, fraction, ram, events)
        if found:
            return ClusterSearch(found, _message(opening, events), ram)
    if cpu_offloading:
        found = tuple((node.id, Placement((), {}, "cpu")) for node in nodes if not ram_short(ram, node))
        if any(ram_short(ram, node) for node in nodes):
            events["cpu"] = f"CPU-only inference is supported. Requires at least {byte_to_gib(ram)} RAM."
        if found:
            return ClusterSearch(found, _message(opening, events), ram)
    events["estimate"] = (f"No suitable workers found. Required VRAM {round(estimate / GIB, 2):.1f} GiB, "
                          f"RAM {round(ram / GIB, 2):.1f} GiB.")
    return ClusterSearch((), _message(opening, events), ram)


EVENT_ORDER = ("manual", "cpu", "multi", "single", "estimate")  # _set_messages: manual, CPU-only, multi, single, none


def _message(opening: Sequence[str], events: Mapping[str, str]) -> str:
    return selector_message(opening, [listed([events[key]]) for key in EVENT_ORDER if key in events])


def _single_path(nodes: Sequence[WorkerView], estimate: int, fraction: float | None, ram: int,
                 events: dict[str, str]) -> tuple[tuple[int, Placement], ...]:
    """``find_single_worker_single_gpu_candidates``: every GPU whose A covers its claim on a worker whose RAM
    covers the RAM claim; none: the largest A of any GPU, in a line."""
    found = tuple((node.id, Placement((gpu.index,), {gpu.index: c}, "single")) for node in nodes
                  if not ram_short(ram, node) for gpu in node.gpus
                  if gpu.allocatable >= (c := claim_on(gpu, estimate, fraction)))
    if not found:
        largest = max((gpu.allocatable for node in nodes for gpu in node.gpus), default=0)
        events["single"] = f"The current available GPU only has {byte_to_gib(largest)} allocatable VRAM."
    return found


def _multi_path(nodes: Sequence[WorkerView], estimate: int, fraction: float | None, ram: int,
                events: dict[str, str]) -> tuple[tuple[int, Placement], ...]:
    """``find_single_worker_multi_gpu_candidates``: each worker of two GPUs or more whose members cover what
    they must provide and whose RAM covers the RAM claim; none: the worker whose members offer most (the
    first of equals), in a line, when it has two of them or more."""
    found, best, best_count = [], 0, 0
    for node in nodes:
        if len(node.gpus) < 2:
            continue
        members, required = _multi_members(node.gpus, estimate, fraction)
        offered = sum(gpu.allocatable for gpu in members)
        if offered >= required and len(members) >= 2 and not ram_short(ram, node):
            claims = {gpu.index: claim_among(gpu, estimate, fraction, len(members)) for gpu in members}
            found.append((node.id, Placement(tuple(gpu.index for gpu in members), claims, "multi")))
        if offered > best:
            best, best_count = offered, len(members)
    if not found and best_count >= 2:
        events["multi"] = f"The largest available worker has {byte_to_gib(best)} allocatable VRAM across {best_count} GPUs."
    return tuple(found)


def pending_message(estimate: int, gpus: Sequence[GpuView], fraction: float | None, pinned: bool = False) -> str:
    """The selector's "No suitable workers" details (``_set_messages``): the multi-GPU line when a
    worker with two or more GPUs was considered, else the single-GPU one."""
    ram = max(int(estimate * 0.1), 2 * GIB)
    lines = [f"The model requires approximately {byte_to_gib(estimate)} of VRAM and {byte_to_gib(ram)} of RAM."]
    if pinned:  # manual selection is the only path tried; pending only for several replicas in overcommit
        return selector_message(lines, [listed([MANUAL_MULTI_REPLICA])])
    members, _ = _multi_members(gpus, estimate, fraction)
    if len(gpus) >= 2 and len(members) >= 2 and sum(g.allocatable for g in members) > 0:
        lines.append(f"The largest available worker has {byte_to_gib(sum(g.allocatable for g in members))} "
                     f"allocatable VRAM across {len(members)} GPUs.")
    else:
        largest = max((gpu.allocatable for gpu in gpus), default=0)
        lines.append(f"The current available GPU only has {byte_to_gib(largest)} allocatable VRAM.")
    return selector_message(lines[:1], [listed(lines[1:])])  # _set_messages: one text, "- " lines


# --- the selector contract (rules/backends/__init__.py) --------------------------------------------


def booking(spec: ModelSpec, min_total: int = 0, *, selected_per_worker: Sequence[int] = (),
            gpus_per_replica: int | None = None) -> Booking:
    """The declared fraction (the card does not matter: ``min_total`` is not read)."""
    declared = whole_card_fraction(spec.run_command, spec.backend_parameters)
    return Booking(declared.value, None, declared.value is not None, declared.note())


def place_spec(spec: ModelSpec, views: Sequence[GpuView], *, scheduler: Scheduler, book: Booking,
               pinned: Sequence[int] | None = None, replica_count: int | None = None) -> Placement | None:
    return place(views, estimate=model_estimate(spec), fraction=book.fraction,
                 pinned=pinned, replica_count=spec.replicas if replica_count is None else replica_count)


def candidates(spec: ModelSpec, views: Sequence[GpuView], *, scheduler: Scheduler, book: Booking,
               pinned: Sequence[int] | None = None) -> list[Placement]:
    """Every candidate of this worker before the placement scorer picks: one per passing GPU on the
    single-GPU path, else the one ``place`` finds."""
    estimate = model_estimate(spec)
    single = [] if pinned else [Placement((g.index,), {g.index: c}, "single") for g in views
                                if g.allocatable >= (c := claim_on(g, estimate, book.fraction))]
    if single:
        return single
    found = place_spec(spec, views, scheduler=scheduler, book=book, pinned=pinned)
    return [found] if found is not None else []


MANUAL_ACROSS_WORKERS = "Manual GPU selection across multiple workers is not supported for custom backends."


def claim_utilization(book: Booking, *, manual: bool) -> float | None:
    """Its manual path is the base selector's, handed a fraction of 0 (written as vram_utilization); its
    own candidates leave it empty."""
    return 0 if manual else None


WORKERS_BY_GPU_COUNT = False  # it keeps the order GPUStack lists its workers in
MANUAL_FRACTION_FLAG: str | None = None  # manual selection: its own (one worker; several are refused)


def workers_candidates(spec: ModelSpec, workers: Sequence[WorkerView], book: Booking
                       ) -> tuple[WorkersPlacement | None, str | None]:
    """It has no path across workers."""
    return None, None


def manual_workers_refusal(spec: ModelSpec, selected_workers: int) -> str | None:
    """``find_manual_gpu_selection_candidates``: a selection over several workers gets no candidate, only
    this event, for every instance (custom_backend_resource_fit_selector.py); the message opens with
    the estimate and the RAM it asks."""
    if selected_workers < 2:
        return None
    estimate = model_estimate(spec)
    opening = (f"The model requires approximately {byte_to_gib(estimate)} of VRAM and "
               f"{byte_to_gib(max(int(estimate * 0.1), 2 * GIB))} of RAM.")
    return selector_message([opening], [listed([MANUAL_ACROSS_WORKERS])])


def pending_message_of(spec: ModelSpec, views: Sequence[GpuView], book: Booking,
                       pinned: Sequence[int] | None = None) -> str:
    return pending_message(model_estimate(spec), views, book.fraction, pinned=bool(pinned))


def claims_of(spec: ModelSpec, totals: Mapping[int, int], book: Booking) -> dict[int, int]:
    """As the single-GPU and multi-GPU paths book (a manual one: GPUStack's claims are known)."""
    estimate = model_estimate(spec)
    views = [GpuView(i, t, 0) for i, t in totals.items()]
    return {v.index: claim_among(v, estimate, book.fraction, len(views)) for v in views}
