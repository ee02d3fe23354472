"""What the rulebooks say, as plain frozen values: a model's fit on each GPU and on the node, the fix
search's knobs. Below node.py, fixes.py and every backend (rules/backends/), which all speak in them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .model import Cluster, EngineVersion

CHECKS = ("gpustack_estimate", "gpustack_allocatable", "vllm_free_memory", "vllm_kv_cache",
          "gpustack_custom_claim", "sglang_kv_pool", "sglang_context", "sglang_free_memory",  # rules/backends/*/fit.py
          "vllm_takes_beyond_booking")  # node.py with_booking_check, from GpuFit.takes
# GPUStack's claim - what the engine will take on a GPU another instance shares (negative: the engine takes
# memory GPUStack booked for that other one). Not an engine check: the model itself starts; its neighbour fails.
BOOKING_CHECK = "vllm_takes_beyond_booking"
# GPUStack rounds its claim down (int(g x T)) and vLLM its budget up (ceil(T x u)): at the same fraction they
# are a byte apart. A take beyond the claim by no more than this is said to fit (alerts/ uses the same 1 MiB).
BOOKING_TOLERANCE = 2**20
ENGINE_CHECKS = ("vllm_kv_cache", "sglang_kv_pool", "sglang_context")


@dataclass(frozen=True, slots=True)
class GpuBooking:
    """A GPU as GPUStack books it today, and what the candidates would add to that."""

    index: int
    uuid: str
    total: int  # T, whole MiB in bytes
    system_reserved: int
    claimed: int  # instances bound to it (running, booked): GPUStack's claims of today
    allocatable: int  # from those claims
    predicted: int = 0  # what the candidates (pending instances) would add, placed as predicted


@dataclass(frozen=True, slots=True)
class Context:
    """What a model sees at its turn: bytes claimed (GPUStack) and committed (vLLM) per GPU."""

    claims: Mapping[int, int] = field(default_factory=dict)
    committed: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EngineTake:
    """What an engine will take of one GPU against what GPUStack booked for it there."""

    claim: int  # GPUStack's claim for this instance on the GPU
    takes: int  # what the engine will hold there, its own CUDA context aside
    said: str  # the engine's take, in words, for the reason
    fix: str  # what to pass so that it takes no more than the claim

    @property
    def headroom(self) -> int:
        return self.claim - self.takes


@dataclass(frozen=True, slots=True)
class GpuFit:
    """One model on one GPU: every check's headroom in bytes (>= 0 passes) and the working window."""

    index: int
    uuid: str
    budget: int  # vLLM's R on this GPU
    headroom: Mapping[str, float]  # check name -> bytes; a check that does not apply is absent
    gmu_min: float
    gmu_max: float
    max_model_len: int
    # What the free-memory dependent values are derived from (free_headroom, free_top).
    cuda_total: int = 0
    committed: int = 0  # memory candidates placed before this one will take on this GPU
    gmu_max_static: float = 1.0  # the window's top from every check but free memory
    free_need: int | None = None  # free memory vLLM's start-up check needs here (None: a running instance)
    kv_bytes: int = 0  # the KV cache vLLM gets here: R - weights - O
    weights: int = 0  # the weights vLLM loads here (its share under tensor/pipeline parallelism)
    free_check: str = "vllm_free_memory"  # the check free_need is for (SGLang: sglang_free_memory)
    # The engine's take against GPUStack's booking here (None: not judged); node.py ``with_booking_check``
    # shows it as BOOKING_CHECK where another instance shares the GPU.
    take: EngineTake | None = None

    @property
    def window_open(self) -> bool:
        return self.gmu_min <= self.gmu_max


@dataclass(frozen=True, slots=True)
class ModelFit:
    name: str
    error: str | None = None  # the model cannot be evaluated (bad world size, bad parameter...)
    placed: bool = False
    weights: int | None = 0  # None: not read (GPUStack judges the model by its VRAM claim alone)
    estimate: int = 0
    bytes_per_token: int = 0
    kv_required: int = 0
    max_model_len: int = 0
    block_tokens: int = 0
    gmu_gpustack: float = 0.0
    gmu_vllm: float = 0.0
    schedulable: bool = False
    startable: bool = False
    gpus: tuple[int, ...] = ()  # where GPUStack puts (or has put) the first instance
    overcommit: bool = False
    replicas_placed: int = 0
    replicas: int = 1
    per_gpu: tuple[GpuFit, ...] = ()
    reasons: tuple[str, ...] = ()
    context: Context = field(default_factory=Context, compare=False)
    # The reasons that do not depend on free memory, which with_free weaves its own into.
    static_reasons: tuple[str, ...] = field(default=(), compare=False)
    kv_reasons: Mapping[int, str] = field(default_factory=dict, compare=False)
    backend: str = "vllm"  # vllm, sglang, custom: which selector and engine (rules/backends/__init__.py)
    # The engine version the verdict assumes, and why (ModelSpec.engine_version; None: not said).
    engine_version: EngineVersion | None = field(default=None, compare=False)

    @property
    def fits(self) -> bool:
        return self.schedulable and self.startable

    @property
    def gmu_mismatch(self) -> bool:
        return abs(self.gmu_gpustack - self.gmu_vllm) > 1e-9


@dataclass(frozen=True, slots=True)
class NodeFit:
    gpus: tuple[GpuBooking, ...]
    models: tuple[ModelFit, ...]
    cluster: Cluster


@dataclass(frozen=True, slots=True)
class Probe:
    """``evaluate`` reduced to its verdict, for the fix search: would the model fit, free memory aside?"""

    fits: bool  # GPUStack places it and vLLM's KV check passes on the GPUs it picks
    needs: tuple[tuple[int, int], ...] = ()  # (GPU, free memory vLLM's start-up check needs there)


@dataclass(frozen=True, slots=True)
class Fix:
    knob: str  # system_reserved_vram, gpu_memory_utilization, vram_claim, max_model_len, kv_cache_dtype, ...
    action: str  # what to do, for a person
    works: bool  # False: this knob alone cannot make it fit (the action says why)
    # The change in values, where the explain page's what-if can make it: (knob, value) pairs, sizes in
    # bytes (system_reserved_vram, vram_claim), tokens (max_model_len); () where it cannot (pinning...).
    # Not compared: the action says the same (tests/bruteforce_fixes.py, the oracle, compares actions).
    change: tuple[tuple[str, object], ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Option:
    """One value of a knob that makes the model fit while free memory covers ``needs``."""

    fix: Fix
    needs: tuple[tuple[int, int], ...]  # (GPU, free bytes vLLM's start-up check needs there)

    def holds(self, free: Mapping[int, int]) -> bool:
        return all(free.get(index, 0) >= need for index, need in self.needs)


@dataclass(frozen=True, slots=True)
class Knob:
    """A knob's options in order of preference, and what to say when none holds (None: nothing)."""

    options: tuple[Option, ...]
    otherwise: Fix | None

    def pick(self, free: Mapping[int, int]) -> Fix | None:
        return next((o.fix for o in self.options if o.holds(free)), self.otherwise)


def passes_all(f: GpuFit) -> bool:
    return all(value >= 0 for value in f.headroom.values())


def reasons(fit: ModelFit, free_reasons: Callable[[ModelFit, GpuFit], list[str]] | None = None) -> tuple[str, ...]:
    """The reasons of ``fit``: its static ones, then per GPU it lands on what the engine says of free memory
    (``free_reasons``: the backend's words; none before free memory is applied) and of its KV cache."""
    said = list(fit.static_reasons)
    by_gpu = {f.index: f for f in fit.per_gpu}
    for index in fit.gpus:
        f = by_gpu.get(index)
        if f is None:
            continue
        if free_reasons is not None:
            said += free_reasons(fit, f)
        if index in fit.kv_reasons:
            said.append(fit.kv_reasons[index])
    if fit.schedulable and not fit.startable and len(fit.gpus) == 1 and not fit.placed:
        others = [f.index for f in fit.per_gpu if f.index not in fit.gpus and passes_all(f)]
        if others:
            said.append(f"GPUStack may pick GPU {', '.join(map(str, others))} instead (it passes GPUStack's tests "
                        "too; the placement strategy decides between them), and vLLM would start there.")
    return tuple(said)
