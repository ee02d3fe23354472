"""Rulebook A: GPUStack's placement of a vLLM model on one worker (DESIGN.md section 2).

Sources, gpustack 2.3.0 on PyPI:
- ``gpustack/policies/resource_view.py``: allocatable = max(total - claims - system_reserved, 0);
  live used/free memory is never read.
- ``gpustack/policies/utils.py::estimate_model_vram``: E = GPUSTACK_MODEL_VRAM_CLAIM, else
  int(weights * 1.2) + 2 GiB.
- ``gpustack/policies/candidate_selectors/vllm_resource_fit_selector.py``: the single-GPU tests
  (``E > total * g`` and ``allocatable / total < g`` exclude a GPU), the multi-GPU walk
  (``allocatable / total > g`` strictly, largest allocatable first, each GPU adding int(total * g),
  stopping at the first count that divides the heads and vocabulary and covers E), and the claim
  int(total * g) on every GPU used.
- ``base_candidate_selector.py::_check_tp_size_divisibility``: a tensor-parallel size that does not
  divide the attention heads (text and vision) or the vocabulary is refused outright.
v0.4-v0.6 tested ``E <= allocatable`` instead of ``E <= total * g`` (changed in v0.7.0, PR #2232).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Literal

from ..units import GIB, MIB, gib
from .model import Architecture, Scheduler

ESTIMATE_FACTOR = 1.2  # https://blog.eleuther.ai/transformer-math/#total-inference-memory
ESTIMATE_FRAMEWORK = 2 * GIB  # CUDA graphs etc., for LLMs
ENV_CLAIM = "GPUSTACK_MODEL_VRAM_CLAIM"


def total_whole_mib(total_bytes: int) -> int:
    """GPUStack workers report memory in whole MiB: the scheduler's T, in bytes."""
    return total_bytes // MIB * MIB


def allocatable_bytes(total_bytes: int, claimed: int, system_reserved: int) -> int:
    """A = max(T - claims - R_res, 0)."""
    return max(total_whole_mib(total_bytes) - claimed - system_reserved, 0)


# A GPU larger than this (4 TiB) is no GPU: the reservation search stops there, whatever the worker says.
MAX_RESERVATION_STEPS = 4096


def reservations_below(current: int, totals_bytes: Iterable[int]) -> Iterator[int]:
    """The worker reservations a fix search tries: each whole GiB below ``current``, highest first.

    Every reservation at or above the largest GPU's T leaves every allocatable at 0, so GPUStack
    decides them all alike: the first of them stands for the rest, which could only repeat it (a
    worker reporting 2^30 GiB costs one try there, not 2^30). The work is bounded by the largest
    GPU's size in GiB, never by the reservation."""
    if current < GIB:
        return
    yield current - GIB
    ceiling = max((total_whole_mib(t) for t in totals_bytes), default=0)
    below = max(2, (current - ceiling) // GIB + 1)  # the first step under the ceiling, after the one above
    yield from islice(range(current - below * GIB, -1, -GIB), MAX_RESERVATION_STEPS)


def estimate_bytes(weights_bytes: int, env: Mapping[str, str]) -> int:
    """E. A GPUSTACK_MODEL_VRAM_CLAIM that is not an integer is ignored, as GPUStack ignores it."""
    override = env.get(ENV_CLAIM)
    if override is not None:
        try:
            return int(override)
        except ValueError:
            pass
    return int(weights_bytes * ESTIMATE_FACTOR) + ESTIMATE_FRAMEWORK


def claim_bytes(total_bytes: int, gmu: float) -> int:
    """What an instance books on each GPU it uses: int(T * g)."""
    return int(total_whole_mib(total_bytes) * gmu)


def replicas_placed(replicas: int, claims: Mapping[int, int], place) -> int:
    """How many of ``replicas`` GPUStack places on one worker, one at a time, each booking its claims
    for the next (``place(claims)`` -> a placement with ``claims``, or None)."""
    booked = dict(claims)
    for placed in range(replicas):
        placement = place(booked)
        if placement is None:
            return placed
        for index, claim in placement.claims.items():
            booked[index] = booked.get(index, 0) + claim
    return replicas


def tp_arch(arch: Architecture, params) -> Architecture:
    """The architecture as GPUStack checks tensor-parallel sizes against it: with --language-model-only
    the vision heads are not checked (vllm_resource_fit_selector.py::_should_check_vision_tp_divisibility)."""
    if getattr(params, "language_model_only", False) and arch.vision_attention_heads:
        return replace(arch, vision_attention_heads=None)
    return arch


def tp_divisibility_problem(arch: Architecture, size: int) -> str | None:
    """GPUStack's refusal text when ``size`` does not divide the heads or the vocabulary."""
    if arch.attention_heads % size:
        return (f"Total number of attention heads ({arch.attention_heads}) must be divisible "
                f"by tensor parallel size ({size}).")
    if arch.vision_attention_heads and arch.vision_attention_heads % size:
        return (f"Total number of vision attention heads ({arch.vision_attention_heads}) must be "
                f"divisible by tensor parallel size ({size}).")
    if arch.vocab_size and arch.vocab_size % size:
        return f"Vocabulary size ({arch.vocab_size}) must be divisible by tensor parallel size ({size})."
    return None


def pinned_count_problem(pinned: Sequence[int] | None, world_size: int | None, env: Mapping[str, str]) -> str | None:
    """base_candidate_selector.py::_set_gpu_count: selected GPUs must match the parallelism's world size."""
    if not pinned or not world_size or len(pinned) == world_size or env.get("GPUSTACK_SKIP_GPU_COUNT_CHECK"):
        return None
    return (f"the selected gpu count ({len(pinned)}) does not match the world size ({world_size}): GPUStack "
            "refuses the model. Adjust the selected GPUs or the parallelism backend parameters so they match, "
            "or set GPUSTACK_SKIP_GPU_COUNT_CHECK=1.")


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU as the scheduler sees it when this instance is placed."""

    index: int
    total: int  # T, whole MiB in bytes
    allocatable: int  # A, after reservation and the claims placed before


@dataclass(frozen=True, slots=True)
class SingleGpuTests:
    """Both single-GPU tests on one GPU; headroom >= 0 passes (test 2 compares ratios)."""

    estimate_headroom: float  # g*T - E (v0.7+), or A - E (v0.6)
    allocatable_headroom: float  # A - g*T

    @property
    def passes(self) -> bool:
        return self.estimate_headroom >= 0 and self.allocatable_headroom >= 0


def single_gpu_tests(gpu: GpuView, estimate: int, gmu: float, scheduler: Scheduler) -> SingleGpuTests:
    if scheduler == "gpustack-0.6":
        estimate_headroom = gpu.allocatable - estimate
    else:
        estimate_headroom = gpu.total * gmu - estimate
    return SingleGpuTests(estimate_headroom, gpu.allocatable - gpu.total * gmu)


@dataclass(frozen=True, slots=True)
class Placement:
    gpus: tuple[int, ...]
    claims: Mapping[int, int]  # GPU index -> bytes booked
    mode: Literal["single", "multi", "pinned"]
    overcommit: bool = False


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
    return Placement((chosen.index,), {chosen.index: claim_bytes(chosen.total, gmu)}, "single")


def multi_gpu_eligible(gpu: GpuView, gmu: float) -> bool:
    """A GPU may join a multi-GPU placement only with A/T > g, strictly."""
    return bool(gpu.total) and gpu.allocatable / gpu.total > gmu


def _place_multi(
    gpus: Sequence[GpuView], estimate: int, gmu: float, world_size: int | None, arch: Architecture
) -> Placement | None:
    chosen = multi_gpu_choice(gpus, estimate, gmu, world_size, arch)
    return _multi(chosen, gmu) if chosen else None


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
        booked += claim_bytes(gpu.total, gmu)
        if tp_divisibility_problem(arch, len(chosen)):
            continue
        if world_size and len(chosen) >= world_size:
            # GPUStack stops at the requested count (or the first divisible count past it).
            return chosen if booked >= estimate else None
        if not world_size and booked >= estimate:
            return chosen
    return None


def _multi(chosen: Sequence[GpuView], gmu: float) -> Placement:
    return Placement(tuple(g.index for g in chosen), {g.index: claim_bytes(g.total, gmu) for g in chosen}, "multi")


def _place_pinned(
    gpus: Sequence[GpuView], pinned: Sequence[int], estimate: int, gmu: float, scheduler: Scheduler,
    replica_count: int,
) -> Placement | None:
    by_index = {gpu.index: gpu for gpu in gpus}
    if any(index not in by_index for index in pinned):
        return None
    views = [by_index[index] for index in pinned]
    if len(views) == 1:
        fits = single_gpu_tests(views[0], estimate, gmu, scheduler).passes
    else:
        fits = (all(g.allocatable / g.total >= gmu for g in views)
                and sum(claim_bytes(g.total, gmu) for g in views) >= estimate)
    if not fits and replica_count > 1:
        return None  # overcommit is accepted only for a single replica
    return Placement(tuple(pinned), {g.index: claim_bytes(g.total, gmu) for g in views}, "pinned", not fits)


def pending_message(estimate: int, gmu: float, gpus: Sequence[GpuView], world_size: int | None) -> str:
    """GPUStack's own "No suitable workers" details (vllm_resource_fit_selector.py): the multi-GPU
    line when that path was tried (two or more GPUs and no world size of 1), else the single-GPU one."""
    lines = [
        f"The model requires approximately {gib(estimate)} of VRAM.",
        f"With --gpu-memory-utilization={gmu}, all GPUs combined need to provide at least "
        f"{gib(int(estimate / gmu))} of total VRAM and each GPU needs {int(gmu * 100)}% of allocatable VRAM.",
    ]
    if len(gpus) >= 2 and world_size != 1:
        eligible = [g for g in gpus if multi_gpu_eligible(g, gmu)]
        total = sum(g.allocatable for g in gpus)
        effective = total / GIB * gmu * len(eligible) / len(gpus)
        lines.append(f"The largest available worker has {gib(total)} allocatable VRAM, {len(eligible)}/{len(gpus)} "
                     f"of GPUs meet the VRAM utilization ratio, providing {effective:.2f} GiB of allocatable VRAM.")
    elif gpus:
        largest = max(gpus, key=lambda g: g.allocatable)
        if largest.total:
            lines.append(f"The current available GPU only has {gib(largest.allocatable)} allocatable VRAM "
                         f"({largest.allocatable / largest.total * 100:.2f}%).")
    return "\n".join(lines)
