"""The backends, behind one contract: the only place that names a backend.

GPUStack 2.3.0 picks the selector by backend (``gpustack/scheduler/scheduler.py``): vLLM ->
``VLLMResourceFitSelector``, SGLang -> ``SGLangResourceFitSelector``, Custom ->
``CustomBackendResourceFitSelector``. Each books a fraction of every card it uses: vLLM's
--gpu-memory-utilization (0.9 if absent), SGLang's --mem-fraction-static (GPUStack's port of SGLang's
default if absent), a custom backend's declared fraction (none if absent: the bare estimate).

Every backend is a folder of the same shape: ``selector.py`` (GPUStack's side: the ``Selector``
contract), ``fit.py`` (the engine's side on one node: the ``Fit`` contract), ``fixes.py`` (its knobs:
``Fixes``), and ``engine.py`` where the engine's memory is modelled. Adding a backend is a folder and a
line in ``REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ...snapshot import GpuReading
from .. import gpustack
from ..gpustack import Booking, GpuView, Placement, WorkersPlacement, WorkerView
from ..model import Cluster, ModelSpec, Scheduler
from ..verdicts import Context, GpuFit, Knob, ModelFit, NodeFit, Probe
from .custom import fit as custom_fit, fixes as custom_fixes, selector as custom_selector
from .sglang import fit as sglang_fit, fixes as sglang_fixes, selector as sglang_selector
from .vllm import fit as vllm_fit, fixes as vllm_fixes, selector as vllm_selector, versions as vllm_versions


class Selector(Protocol):
    """GPUStack's side: how its selector for this backend books and places a model on one worker."""

    def booking(self, spec: ModelSpec, min_total: int, *, selected_per_worker: Sequence[int] = (),
                gpus_per_replica: int | None = None) -> Booking:
        """What it reads of the model's parameters, for GPUs whose smallest total is ``min_total``
        (rules/gpustack.py ``smallest_total``), with manual selection: the GPUs selected on each worker
        and the model's gpu_selector.gpus_per_replica; raises ModelError where GPUStack refuses the model."""

    def place_spec(self, spec: ModelSpec, views: Sequence[GpuView], *, scheduler: Scheduler, book: Booking,
                   pinned: Sequence[int] | None = None, replica_count: int | None = None) -> Placement | None:
        """Where it puts one instance on this worker, or None (pending)."""

    def candidates(self, spec: ModelSpec, views: Sequence[GpuView], *, scheduler: Scheduler, book: Booking,
                   pinned: Sequence[int] | None = None) -> list[Placement]:
        """Every candidate of this worker, as listed before the placement scorer picks."""

    def pending_message_of(self, spec: ModelSpec, views: Sequence[GpuView], book: Booking,
                           pinned: Sequence[int] | None = None) -> str:
        """Its own "No suitable workers" details."""

    def claims_of(self, spec: ModelSpec, totals: Mapping[int, int], book: Booking) -> dict[int, int]:
        """What a placed instance books on each of its GPUs when GPUStack's own claims are not known."""

    def claim_utilization(self, book: Booking, *, manual: bool) -> float | None:
        """What it writes in a one-worker candidate's claim as vram_utilization (None: left empty)."""

    def manual_workers_refusal(self, spec: ModelSpec, selected_workers: int) -> str | None:
        """Its message when it refuses a gpu_selector naming GPUs of ``selected_workers`` workers."""

    def workers_candidates(self, spec: ModelSpec, workers: Sequence[WorkerView], book: Booking
                           ) -> tuple[WorkersPlacement | None, str | None]:
        """One instance over several whole workers (tried when no worker has a candidate alone), or its
        whole pending text when that search ran and found none (None: it did not run)."""

    # Manual selection: None, its own one-worker path (``place_spec`` with ``pinned``); else GPUStack's
    # base selector's (rules/cluster/paths.py ``manual``, across workers too), its messages naming this flag.
    MANUAL_FRACTION_FLAG: str | None
    # Its select_candidates sorts the workers by GPU count, most first (stable), before every path: the
    # order decides among equal scores.
    WORKERS_BY_GPU_COUNT: bool
    # None: rules/cluster/replay.py asks ``candidates`` worker by worker; else its own search over the whole
    # cluster, ``cluster_search(spec, workers, book, *, pinned, cpu_offloading)`` -> placements per worker id,
    # its one message (placed or not) and the RAM claim (custom/selector.py ``ClusterSearch``).
    cluster_search: Callable[..., Any] | None


class Fit(Protocol):
    """The engine's side on one node: the model's verdict, GPU by GPU, at its turn."""

    def evaluate(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context,
                 placed_on: Sequence[int] | None = None) -> ModelFit: ...

    def probe(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context) -> Probe:
        """``evaluate`` reduced to its verdict (a property test holds them equal)."""

    def placement(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading],
                  claims: Mapping[int, int]) -> Placement | None: ...

    def placed_claims(self, model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> dict[int, int]: ...

    def committed_on(self, model: ModelSpec, cluster: Cluster, gpu: GpuReading, claim: int) -> int:
        """What the engine takes of a GPU it is placed on (the models after it see it gone)."""

    def free_reasons(self, fit: ModelFit, f: GpuFit) -> list[str]:
        """What the engine says of this GPU's free memory, where it falls short."""


class Fixes(Protocol):
    def knobs(self, model: ModelSpec, fit: ModelFit, node: NodeFit,
              gpus: Sequence[GpuReading]) -> dict[str, Knob]: ...


@dataclass(frozen=True)
class Backend:
    """One backend: its GPUStack selector, its engine's fit and fixes, and what is said of it."""

    name: str  # GPUStack's BackendEnum, lower case; ModelSpec.backend
    display_name: str  # the engine, in words
    short_name: str  # the engine, in a heading: "(<short_name> backend)"
    window_knob: str  # the knob whose working window the explain page shows
    fraction_flag: str  # the flag(s) GPUStack books a card's fraction by
    engine_reader: str | None  # the ``reader`` label of the engine's own fraction; None: not modelled
    what_if_flags: tuple[str, str]  # the flags a what-if writes for (the booked fraction, the context length)
    engine_sizes_own_fraction: bool  # the engine sizes its default fraction for its own card, GPUStack ports it
    fraction_spelling_matters: bool  # GPUStack and the engine read the one flag by different spellings
    checks_shown_always: bool  # its checks are shown on every model, n/a where one does not apply
    reads_run_command: bool  # GPUStack reads its flags in the model's run_command too
    selector: Selector
    fit: Fit
    fixes: Fixes
    draft_modelled: bool = False  # its rules load a speculative-decoding draft (the manifest's draft_model)
    # GPUStack takes its --hf-overrides' architectures to fill in the model's categories
    # (scheduler.py::get_vllm_override_architectures)
    reads_hf_overrides: bool = False
    # The flag that sizes its KV cache in bytes, and the flags removed to let the engine size it from what is
    # free (vLLM 0.34's extensible cache): the fixes' knobs, which the explain page's what-if also tries.
    kv_bytes_flag: str | None = None
    kv_sizing_flags: tuple[str, ...] = ()

    @property
    def engine_modelled(self) -> bool:
        return self.engine_reader is not None


VLLM = "vllm"
REGISTRY: Mapping[str, Backend] = {b.name: b for b in (
    Backend(VLLM, "vLLM", "vLLM", "gpu_memory_utilization", "--gpu-memory-utilization", "vllm", ("gpu-memory-utilization", "max-model-len"),
            engine_sizes_own_fraction=False, fraction_spelling_matters=True, checks_shown_always=True,
            reads_run_command=False, selector=vllm_selector, fit=vllm_fit, fixes=vllm_fixes, draft_modelled=True,
            reads_hf_overrides=True, kv_bytes_flag=vllm_versions.KV_BYTES_FLAG,
            kv_sizing_flags=vllm_versions.KV_SIZING_FLAGS),
    Backend("sglang", "SGLang", "SGLang", "--mem-fraction-static (GPUStack's tests)", "--mem-fraction-static", "sglang", ("mem-fraction-static", "context-length"),
            engine_sizes_own_fraction=True, fraction_spelling_matters=False, checks_shown_always=False,
            reads_run_command=False, selector=sglang_selector, fit=sglang_fit.FIT, fixes=sglang_fixes),
    Backend("custom", "the custom backend", "custom", "fraction", "--gpu-memory-utilization / --mem-fraction-static", None,
            ("gpu-memory-utilization", "max-model-len"), engine_sizes_own_fraction=False,
            fraction_spelling_matters=False, checks_shown_always=False, reads_run_command=True,
            selector=custom_selector, fit=custom_fit.FIT, fixes=custom_fixes),
)}
NAMES = tuple(REGISTRY)  # the backends the rulebooks judge
# Every backend's KV-sizing flags (vLLM's alone today): what the what-if's "unset" removes, said in words
KV_SIZING_FLAGS = tuple(dict.fromkeys(name for backend in REGISTRY.values() for name in backend.kv_sizing_flags))


def of(name: str) -> Backend:
    """The backend named ``name`` (ModelSpec.backend)."""
    return REGISTRY[name]


def judged_by_claim(backend: str, env: Mapping[str, str]) -> bool:
    """Whether GPUStack judges this model by its GPUSTACK_MODEL_VRAM_CLAIM alone, never reading its config.json
    or weights: a backend whose engine is not modelled (custom: custom_backend_resource_fit_selector.py reads
    nothing of the model but ``estimate_model_vram``, which returns a valid claim first, policies/utils.py)
    with a claim GPUStack accepts. The vLLM and SGLang rules model the engine, which needs both."""
    return not of(backend).engine_modelled and gpustack.env_claim(env) is not None
