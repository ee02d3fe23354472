"""Rulebook A: what GPUStack's scheduler does alike for every backend (docs/rulebooks.md#a-gpustacks-placement).

The vLLM selector's own walk is rules/backends/vllm/selector.py, SGLang's and a custom backend's
their folders' selector.py; this module holds what they share. Sources, gpustack 2.3.0 on PyPI:
- ``gpustack/policies/resource_view.py``: allocatable = max(total - claims - system_reserved, 0);
  live used/free memory is never read.
- ``gpustack/policies/utils.py::estimate_model_vram``: E = GPUSTACK_MODEL_VRAM_CLAIM, else
  int((weights + LoRA adapters' weights) * 1.2) + 2 GiB (``model_estimate``; other categories than llm:
  rules/categories.py).
- T is the total as the worker reports it, in bytes, used as is (``int(total * g)``, ``allocatable /
  total``): a 2.3.0 worker reports NVML's total floored to whole MiB (``gpustack_runtime/detector/nvidia.py::
  _get_memory_info``, ``byte_to_mebibyte`` = total >> 20; ``detectors/runtime/runtime.py``: x 2^20), so
  ``reported_total`` floors where we read NVML ourselves; a total from GPUStack's API, a manifest worker or a
  test fixture is what a worker reported and is taken as it stands.
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

from ..errors import ModelError
from ..snapshot import GpuReading
from ..units import GIB, MIB
from . import categories as model_categories
from .model import Architecture, ModelSpec, Scheduler

ENV_CLAIM = "GPUSTACK_MODEL_VRAM_CLAIM"
MANUAL_MULTI_REPLICA = ("Found 1 candidate, manual scheduling for multi-replica model instances does not allow "
                        "overcommit or heterogeneous deployment topologies.")  # base_candidate_selector.py


def byte_to_gib(n: float) -> str:
    """``gpustack.utils.unit.byte_to_gib``: round(bytes / GiB, 2), printed as Python prints a float (the
    SGLang and custom selectors' messages; the vLLM selector's print two decimals: units.gib)."""
    return f"{round(n / GIB, 2)} GiB"


def listed(lines: Iterable[str]) -> str:
    """``policies/utils.py::ListMessageBuilder``: each line as "- line", one text."""
    return "\n".join(f"- {line}" for line in lines)


def requirement_lines(estimate: int, fraction: float, parameter: str = "gpu-memory-utilization",
                      ram: int = 0) -> list[str]:
    """The lines every selector's message opens with (``select_candidates``: the default event), the RAM an
    extended KV cache asks for (``get_model_ram_claim``) only when there is some, the fraction's line only
    when one is booked."""
    needs_ram = f" and {byte_to_gib(ram)} of RAM" if ram > 0 else ""
    lines = [f"The model requires approximately {byte_to_gib(estimate)} of VRAM{needs_ram}."]
    if fraction:
        lines.append(f"With --{parameter}={fraction}, all GPUs combined need to provide at least "
                     f"{byte_to_gib(int(estimate / fraction))} of total VRAM and each GPU needs "
                     f"{int(fraction * 100)}% of allocatable VRAM.")
    return lines


def selector_message(opening: Sequence[str], events: Iterable[str | None]) -> str:
    """``_set_messages``: the opening lines, a newline, then the first path's event that has one (the
    selector's order: manual, several workers, several GPUs, one GPU); one text for the whole cluster."""
    return listed(opening) + "\n" + next((event for event in events if event), "")


def reported_total(nvml_total_bytes: int) -> int:
    """What a GPUStack 2.3.0 worker reports of a GPU whose NVML total we read: whole MiB, in bytes (the
    module's docstring). Only for totals read from NVML: one from GPUStack's API is already reported."""
    return nvml_total_bytes // MIB * MIB


total_whole_mib = reported_total  # the name the fix searches use (rules/backends/vllm/fixes.py)


def allocatable_bytes(total_bytes: int, claimed: int, system_reserved: int) -> int:
    """A = max(T - claims - R_res, 0), T as the worker reports it."""
    return max(total_bytes - claimed - system_reserved, 0)


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
    ceiling = max(totals_bytes, default=0)
    below = max(2, (current - ceiling) // GIB + 1)  # the first step under the ceiling, after the one above
    yield from islice(range(current - below * GIB, -1, -GIB), MAX_RESERVATION_STEPS)


def env_claim(env: Mapping[str, str]) -> int | None:
    """GPUSTACK_MODEL_VRAM_CLAIM as GPUStack reads it (policies/utils.py::get_vram_claim_from_model_env:
    ``int(value)``, anything ``int`` refuses ignored); None where absent or ignored."""
    value = env.get(ENV_CLAIM)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def estimate_bytes(weights_bytes: int | None, env: Mapping[str, str], categories: Sequence[str] = ()) -> int:
    """E. A GPUSTACK_MODEL_VRAM_CLAIM that is not an integer is ignored, as GPUStack ignores it; else by the
    model's categories (rules/categories.py ``estimate``: no categories is an LLM). ``weights_bytes`` None
    (never read: the claim decides) with no claim is a caller's error."""
    claim = env_claim(env)
    if claim is not None:
        return claim
    if weights_bytes is None:
        raise ModelError(f"weights size unknown and no {ENV_CLAIM} to stand for it")
    return model_categories.estimate(weights_bytes, categories)


def model_estimate(spec: ModelSpec) -> int:
    """E of one model: its weights and its LoRA adapters' together (policies/utils.py::estimate_model_vram:
    int((weights + estimate_lora_weights_bytes) * factor) + framework, by categories; GPUSTACK_MODEL_VRAM_CLAIM
    still wins, returned before the weights are looked at). A
    draft model for speculative decoding is not counted: GPUStack 2.3.0 ignores it (gpustack #3169)."""
    if spec.weights_bytes is None:
        return estimate_bytes(None, spec.env, spec.categories)
    return estimate_bytes(spec.weights_bytes + sum(a.weights_bytes for a in spec.lora_adapters), spec.env,
                          spec.categories)


def claim_bytes(total_bytes: int, gmu: float) -> int:
    """What an instance books on each GPU it uses: int(T * g), T as the worker reports it."""
    return int(total_bytes * gmu)


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


def tp_divisibility_problem(arch: Architecture, size: int, *, check_vision: bool = True) -> str | None:
    """GPUStack's refusal text when ``size`` does not divide the heads (the vision heads too, unless
    ``check_vision`` is off) or the vocabulary (``_check_tp_size_divisibility``)."""
    if arch.attention_heads % size:
        return (f"Total number of attention heads ({arch.attention_heads}) must be divisible "
                f"by tensor parallel size ({size}).")
    if check_vision and arch.vision_attention_heads and arch.vision_attention_heads % size:
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


def skips_gpu_count_check(env: Mapping[str, str]) -> bool:
    """policies/utils.py::should_skip_gpu_count_check."""
    return str(env.get("GPUSTACK_SKIP_GPU_COUNT_CHECK", "")).strip().lower() in {"1", "true", "yes", "on"}


def filled_gpus_per_replica(selected_count: int, replicas: int, world_size: int | None, skip_count_check: bool) -> int:
    """What GPUStack writes into gpu_selector.gpus_per_replica when it is not given
    (``scheduler/scheduler.py::set_model_gpus_per_replica``): the world size the parameters ask, else the
    largest power of 2 <= the selected GPUs per replica (``utils/math.py::largest_power_of_2_leq``); with
    GPUSTACK_SKIP_GPU_COUNT_CHECK, the selected GPUs per replica."""
    per_replica = selected_count // max(replicas, 1)
    if skip_count_check:
        return per_replica
    if world_size and world_size > 0:
        return world_size
    return 1 << (per_replica.bit_length() - 1) if per_replica >= 1 else 0


def selection_split(pinned: Sequence[int], replicas: int, world_size: int | None, skip_count_check: bool,
                    given: int | None = None) -> int | None:
    """How many of the ``pinned`` GPUs one replica takes when that is fewer than all of them (GPUStack's manual
    selection then picks them per replica: ``_set_gpu_count``, gpus_per_replica ``given`` or filled in), else
    None: every replica is judged on the whole selection."""
    count = given or filled_gpus_per_replica(len(pinned), replicas, world_size, skip_count_check)
    return count if 0 < count < len(pinned) else None


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU as the scheduler sees it when this instance is placed."""

    index: int
    total: int  # T as the worker reports it (``reported_total`` of what we read from NVML)
    allocatable: int  # A, after reservation and the claims placed before


@dataclass(frozen=True, slots=True)
class Booking:
    """What a selector reads of one model's parameters to place it on a worker (rules/backends/)."""

    fraction: float | None  # booked of each card's total; None: custom without one (claims E)
    world_size: int | None
    fraction_given: bool = True
    note: str | None = None  # said on the model (a repeated flag read differently)
    ram: int = 0  # the RAM a worker must have left (``KvOffload.fixed``), said in the messages' opening line


@dataclass(frozen=True, slots=True)
class KvOffload:
    """A model's extended KV cache kept in its worker's RAM (models.py ``ExtendedKVCacheConfig``, enabled and
    not "shared": a cache service's RAM is the service's own). policies/utils.py, 2.3.0."""

    ram_size: int | None = None  # GiB; wins over ram_ratio
    ram_ratio: float | None = None  # RAM = ratio x the candidate's VRAM claims

    @property
    def fixed(self) -> int:
        """``get_model_ram_claim``: what the vLLM and SGLang selectors require of a worker's allocatable RAM
        before they look at its GPUs (``ram_not_enough``): ram_size GiB, else 0 (no check)."""
        return self.ram_size * GIB if self.ram_size and self.ram_size > 0 else 0

    def claim(self, vram: Mapping[int, int]) -> int | None:
        """``get_computed_ram_claim``: what a candidate writes as its RAM claim, from the VRAM it claims on that
        worker: ram_size GiB, else int(sum x ram_ratio), else none."""
        if self.fixed:
            return self.fixed
        if self.ram_ratio and self.ram_ratio > 0 and vram:
            return int(sum(vram.values()) * self.ram_ratio)
        return None


def views_of(gpus: Sequence[GpuReading], claims: Mapping[int, int], system_reserved: int) -> list[GpuView]:
    """This node's GPUs as the scheduler sees them, with ``claims`` booked."""
    return [GpuView(gpu.index, total := reported_total(gpu.memory.total),
                    allocatable_bytes(total, claims.get(gpu.index, 0), system_reserved))
            for gpu in gpus]


def smallest_total(totals: Mapping[int, Mapping[int, int]], pinned: Mapping[int, Sequence[int]] | None) -> int:
    """``_get_min_gpu_sum``, the card a fraction that depends on the card is sized for (SGLang's default):
    ``totals`` worker -> GPU index -> bytes (the ready workers the model may use); with manual selection
    only the selected GPUs count. ``totals`` as the workers report them."""
    chosen = [t for w, gpus in totals.items() for i, t in gpus.items()
              if pinned is None or i in pinned.get(w, ())]
    return min(chosen, default=0)


@dataclass(frozen=True, slots=True)
class SingleGpuTests:
    """GPUStack's two tests on one GPU at a booked fraction g (vLLM's --gpu-memory-utilization, SGLang's
    --mem-fraction-static); headroom >= 0 passes."""

    estimate_headroom: float  # g*T - E (v0.7+), or A - E (v0.6)
    allocatable_headroom: float  # A - g*T

    @property
    def passes(self) -> bool:
        return self.estimate_headroom >= 0 and self.allocatable_headroom >= 0


def single_gpu_tests(gpu: GpuView, estimate: int, gmu: float, scheduler: Scheduler) -> SingleGpuTests:
    if gmu <= 0:  # the vLLM selector's non-LLM branch: E <= allocatable, no share of the card asked
        return SingleGpuTests(gpu.allocatable - estimate, gpu.allocatable)
    if scheduler == "gpustack-0.6":
        estimate_headroom = gpu.allocatable - estimate
    else:
        estimate_headroom = gpu.total * gmu - estimate
    return SingleGpuTests(estimate_headroom, gpu.allocatable - gpu.total * gmu)


def gpu_tests(gpu: GpuView, estimate: int, gmu: float, n_gpus: int, scheduler: Scheduler) -> SingleGpuTests:
    """The tests as headroom on one GPU of an ``n_gpus`` placement: on one GPU the single-GPU tests;
    on several, each GPU contributes int(g * T) towards E and books g * T of its allocatable."""
    if n_gpus == 1:
        return single_gpu_tests(gpu, estimate, gmu, scheduler)
    if gmu <= 0:  # non-LLM: each GPU books (and contributes) its whole allocatable memory
        return SingleGpuTests(gpu.allocatable - estimate / n_gpus, gpu.allocatable)
    return SingleGpuTests(claim_bytes(gpu.total, gmu) - estimate / n_gpus, gpu.allocatable - gpu.total * gmu)


def single_gpu_claim(gpu: GpuView, gmu: float, estimate: int) -> int:
    """The one-GPU path's claim: int(T * g); with g = 0 (the vLLM selector's non-LLM booking,
    rules/categories.py) the estimate itself."""
    return claim_bytes(gpu.total, gmu) if gmu > 0 else int(estimate)


def multi_gpu_claim(gpu: GpuView, gmu: float) -> int:
    """The several-GPU path's claim on each GPU: int(T * g); with g = 0 the GPU's whole allocatable memory
    (vllm_resource_fit_selector.py ``_find_single_worker_multi_gpu_full_offloading_candidates``)."""
    return claim_bytes(gpu.total, gmu) if gmu > 0 else gpu.allocatable


def manual_claims(gpus: Sequence[GpuView], gmu: float, estimate: int) -> dict[int, int]:
    """Manual selection's claims on one worker's GPUs (``_get_worker_resource_claim``): int(T * g) each;
    with g = 0, int(E / the number of that worker's GPUs) each."""
    return {g.index: claim_bytes(g.total, gmu) if gmu > 0 else int(estimate / len(gpus)) for g in gpus}


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as a selector sees it when an instance is decided: its GPUs in device order."""

    id: int
    name: str
    gpus: tuple[GpuView, ...]
    ram: int | None = None  # its allocatable RAM (``ram_allocatable``); None: not known, never judged short
    gpu_type: str | None = None  # cuda, rocm, ... of the GPUs above (None: not said)


def visible_gpu_type(types: Sequence[str | None]) -> str | None:
    """The one GPU type of a worker that GPUStack 2.3.0's selectors use: the last type its gpu_devices list.
    ``policies/utils.py::group_workers_by_gpu_type`` gives each type a shallow ``model_copy`` of the worker
    and sets ``w.status.gpu_devices`` to that type's GPUs: the copies share one status, so the worker (the
    caller's object too) keeps the last type's GPUs alone, and every path and later call sees only those.
    A worker of one type is unaffected."""
    return list(dict.fromkeys(types))[-1] if types else None  # the last key of its grouping: first appearances


def counts_on(instance_type: str | None, worker_type: str | None, *, main: bool) -> bool:
    """``resource_view.py::compute_worker_allocated`` for the worker's visible type: an instance's claims on its
    main worker count unless it names another type; on a subordinate worker only when it names this one."""
    if worker_type is None:
        return True
    return instance_type == worker_type or (main and instance_type is None)


def ram_allocatable(total: int | None, booked: int, reserved_ram: int, *, unified: bool = False,
                    reserved_vram: int = 0, vram_booked: int = 0) -> int | None:
    """``policies/resource_view.py::ResourceView.allocatable``'s RAM: max(total - the RAM claims of the instances
    whose main worker it is - system_reserved.ram, 0); with unified memory the GPU reservation and every VRAM
    claim on the worker come out of it too. None when the worker reports no RAM."""
    if total is None:
        return None
    ram = max(total - booked - reserved_ram, 0)
    return max(ram - reserved_vram - vram_booked, 0) if unified else ram


def ram_short(needed: int | None, node: WorkerView) -> bool:
    """``policies/utils.py::ram_not_enough`` (and the custom selector's ``allocatable.ram >= ram_claim``):
    a claim of 0 or none never is; a worker whose RAM is unknown is not judged."""
    return bool(needed) and node.ram is not None and node.ram < needed


@dataclass(frozen=True, slots=True)
class WorkersPlacement:
    """One instance over several whole workers: the main worker first, then its subordinates."""

    workers: tuple[tuple[int, tuple[int, ...]], ...]  # (worker id, GPU indexes)
    claims: Mapping[tuple[int, int], int]  # (worker id, GPU index) -> bytes


def combination_lines(names: Sequence[str], booked: int, group_size: int, per_worker: int) -> list[str]:
    """The multi-worker path's event when no combination covers E (vLLM's and SGLang's
    ``auto_select_multi_worker_multi_gpu_candidates`` say it alike): the combination that booked most,
    then the advice to select GPUs by hand."""
    lines = []
    if names:
        shown = str(list(names[:3])).rstrip("]") + f"...(more {len(names) - 3})]" if len(names) > 3 else str(list(names))
        line = f"The optimal combination {shown} provides {byte_to_gib(booked)} of allocatable VRAM."
        if (left := group_size - len(names)) > 0:
            line += (f" There are {left} {'workers' if left > 1 else 'worker'} that can provide {per_worker} "
                     f"{'GPUs' if per_worker > 1 else 'GPU'}, as the workers in the combination, but some GPUs "
                     "among them fail to meet requirements.")
        lines.append(line)
    lines.append("Cannot find a suitable worker combination to run the model in distributed mode. If you are "
                 "confident that the resources are sufficient, you may manually schedule the model by selecting the "
                 "workers and GPUs.")
    return lines


@dataclass(frozen=True, slots=True)
class Placement:
    gpus: tuple[int, ...]  # none: a CPU-only placement (the custom backend's cpu_offloading)
    claims: Mapping[int, int]  # GPU index -> bytes booked
    mode: Literal["single", "multi", "pinned", "cpu"]
    overcommit: bool = False


