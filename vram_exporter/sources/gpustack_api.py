"""What GPUStack's API says, parsed: workers, models and model instances (gpustack 2.3.0, /v2).

Pure: ``parse_page`` turns one JSON page into typed records; the HTTP client (sources/gpustack_client.py)
fetches the pages. The records keep only the fields the exporter reads and ignore the rest, since
GPUStack adds fields between releases. Field meanings (gpustack 2.3.0 ``gpustack/schemas``):
- workers.py: ``state`` (only ``ready`` takes new instances), ``system_reserved.vram`` (bytes),
  ``labels``, ``status.gpu_devices[].memory.total`` (bytes) and ``memory.allocated``, the server's own
  sum of the claims bound to that GPU, computed at each query (``policies/resource_view.py``); each GPU's
  ``type`` (cuda, rocm, cann...), ``runtime_version`` (for cuda: the CUDA version, which picks the runner)
  and ``compute_capability``.
- models.py: ``Model`` (backend, backend_parameters, env, replicas, gpu_selector.gpu_ids as
  ``"<worker>:<device>:<index>"``, worker_selector, local_path, ``lora_list`` and ``speculative_config``)
  and ``ModelInstance`` (state,
  worker_id, gpu_indexes, computed_resource_claim.vram as ``{"<index>": bytes}``,
  distributed_servers.subordinate_workers, and ``backend_version``, the version GPUStack deployed it with,
  and ``api_detected_backend_version``, what the running engine answers on /version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..rules import backends

PENDING_STATES = frozenset({"pending", "analyzing"})  # not yet bound to a worker: no claim


class _ApiRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GpuMemory(_ApiRecord):
    total: int = 0
    allocated: int | None = None


class GpuDevice(_ApiRecord):
    index: int | None = None
    uuid: str | None = None
    name: str = ""
    type: str | None = None
    memory: GpuMemory | None = None
    runtime_version: str | None = None  # cuda: the CUDA version
    compute_capability: str | None = None


class MemoryInfo(_ApiRecord):
    total: int | None = None  # the worker's RAM, bytes
    is_unified_memory: bool | None = False  # RAM and VRAM are one pool (the GPU's claims come out of RAM too)


class WorkerStatus(_ApiRecord):
    gpu_devices: list[GpuDevice] | None = None
    memory: MemoryInfo | None = None


class SystemReserved(_ApiRecord):
    vram: int | None = None
    ram: int | None = None


class Worker(_ApiRecord):
    id: int
    name: str
    hostname: str = ""
    cluster_id: int | None = None
    state: str = ""
    labels: dict[str, str] = {}
    system_reserved: SystemReserved | None = None
    status: WorkerStatus | None = None

    @property
    def gpus(self) -> list[GpuDevice]:
        return [gpu for gpu in (self.status.gpu_devices or []) if gpu.index is not None] if self.status else []

    @property
    def reserved_vram(self) -> int:
        return (self.system_reserved.vram or 0) if self.system_reserved else 0

    @property
    def reserved_ram(self) -> int:
        return (self.system_reserved.ram or 0) if self.system_reserved else 0

    @property
    def ram_total(self) -> int | None:
        """The worker's RAM as it reports it; None when it does not say (its RAM is then not judged)."""
        return self.status.memory.total if self.status and self.status.memory else None

    @property
    def unified_memory(self) -> bool:
        return bool(self.status and self.status.memory and self.status.memory.is_unified_memory)


class GpuSelector(_ApiRecord):
    gpu_ids: list[str] | None = None
    gpus_per_replica: int | None = None


class LoraEntry(_ApiRecord):
    """One entry of a model's lora_list (models.py ``LoraListEntry``; the API strips the "<model>:" prefix
    of lora_name)."""

    lora_name: str = ""
    lora_repo_name: str | None = None  # Hugging Face repo, ModelScope id, or a path (local_path's fallback)
    source: str | None = "huggingface"
    local_path: str | None = None


class SpeculativeSettings(_ApiRecord):
    """models.py ``SpeculativeConfig``: what GPUStack's worker turns into vLLM's --speculative-config."""

    enabled: bool = False
    algorithm: str | None = None  # eagle3, mtp, ngram
    draft_model: str | None = None  # a catalog name, a path, or an id of the model's own source
    num_draft_tokens: int | None = None


class ExtendedKvCacheSettings(_ApiRecord):
    """models.py ``ExtendedKVCacheConfig``: a KV cache offloaded to the worker's RAM (local) or to a cache
    service (shared). Only a local one claims RAM (policies/utils.py::get_computed_ram_claim)."""

    enabled: bool | None = False
    mode: str | None = "local"
    ram_ratio: float | None = 1.2  # RAM = ratio x the candidate's VRAM claims
    ram_size: int | None = None  # GiB; wins over ram_ratio

    @property
    def local(self) -> bool:
        return bool(self.enabled) and (self.mode or "local") != "shared"


class Model(_ApiRecord):
    id: int
    name: str
    cluster_id: int | None = None
    backend: str | None = None
    backend_parameters: list[str] | None = None
    run_command: str | None = None  # Custom backend: its command line
    env: dict[str, str] | None = None
    replicas: int = 1
    source: str | None = None
    local_path: str | None = None
    huggingface_repo_id: str | None = None
    model_scope_model_id: str | None = None
    worker_selector: dict[str, str] | None = None
    gpu_selector: GpuSelector | None = None
    backend_version: str | None = None
    image_name: str | None = None
    placement_strategy: str = "spread"  # spread or binpack: how its scorer ranks candidates
    categories: list[str] | None = None  # llm, embedding, reranker, ... (GPUStack fills it in when empty)
    distributed_inference_across_workers: bool | None = None  # None: GPUStack's default, on for vLLM
    roles: list[Any] | None = None  # prefill/decode disaggregation: not modelled
    lora_list: list[LoraEntry] | None = None  # LoRA adapters: GPUStack adds their weights to its estimate
    speculative_config: SpeculativeSettings | None = None
    disaggregation: Any = None
    cpu_offloading: bool | None = None  # custom backend: a CPU-only placement is tried after the GPU paths
    extended_kv_cache: ExtendedKvCacheSettings | None = None

    @property
    def backend_kind(self) -> str | None:
        """vllm, sglang or custom (the backends the rulebooks judge); None for the others (MindIE, VoxBox)."""
        kind = (self.backend or "").lower()
        return kind if kind in backends.NAMES else None


class ResourceClaim(_ApiRecord):
    vram: dict[int, int] | None = None  # JSON keys are strings; pydantic turns them into ints
    ram: int | None = None  # bytes of the worker's RAM (a CPU-only placement, an extended KV cache)


class SubordinateWorker(_ApiRecord):
    worker_id: int | None = None
    worker_ip: str | None = None  # where its engine listens, with port: its own /metrics
    port: int | None = None
    ports: list[int] | None = None  # where its engine listens on its host (host network): attribution
    pid: int | None = None  # the worker's provisioning process, in the worker's PID namespace (rules/usage.py)
    state: str | None = None
    gpu_indexes: list[int] | None = None
    computed_resource_claim: ResourceClaim | None = None


class DistributedServers(_ApiRecord):
    subordinate_workers: list[SubordinateWorker] | None = None


class ModelInstance(_ApiRecord):
    id: int
    name: str = ""
    model_id: int
    model_name: str = ""
    state: str = "pending"
    state_message: str | None = None
    worker_id: int | None = None
    worker_ip: str | None = None  # where its engine listens, with port: its own /metrics
    port: int | None = None
    ports: list[int] | None = None  # every port its engine listens on (host network): attribution
    pid: int | None = None  # the worker's provisioning process, in the worker's PID namespace (rules/usage.py)
    gpu_indexes: list[int] | None = None
    gpu_type: str | None = None  # cuda, rocm, ...: whose GPUs of a mixed worker its claims are on (None: any)
    computed_resource_claim: ResourceClaim | None = None
    distributed_servers: DistributedServers | None = None
    backend_version: str | None = None  # the version GPUStack resolved when it deployed it
    api_detected_backend_version: str | None = None  # what the running engine answers on /version

    @property
    def placed(self) -> bool:
        return self.state not in PENDING_STATES

    @property
    def stuck(self) -> bool:
        """Pending with a worker still bound: what a failed re-schedule of a scheduled instance leaves
        (scheduler.py::_schedule_one clears only its main claim). ``_should_schedule`` wants no worker
        for a pending instance, so GPUStack never decides it again."""
        return self.state == "pending" and self.worker_id is not None

    @property
    def subordinates(self) -> list[SubordinateWorker]:
        return (self.distributed_servers.subordinate_workers or []) if self.distributed_servers else []

    @property
    def ram_claim(self) -> int:
        """The RAM it books on its main worker (subordinates' RAM is not counted: resource_view.py)."""
        if not self.placed and not self.stuck:
            return 0
        claim = self.computed_resource_claim
        return (claim.ram or 0) if claim else 0

    def claims(self) -> dict[tuple[int, int], int]:
        """(worker id, GPU index) -> bytes this instance holds, on its worker and its subordinates. Pending
        instances hold nothing, but for a stuck one's subordinate claims, which GPUStack's resource view
        still counts (policies/resource_view.py::compute_worker_allocated)."""
        if not self.placed and not self.stuck:
            return {}
        held: dict[tuple[int, int], int] = {}
        parts = [(self.worker_id, self.computed_resource_claim)]
        parts += [(sub.worker_id, sub.computed_resource_claim) for sub in self.subordinates]
        for worker_id, claim in parts:
            if worker_id is None or claim is None:
                continue
            for index, size in (claim.vram or {}).items():
                held[(worker_id, index)] = held.get((worker_id, index), 0) + size
        return held


Kind = Literal["workers", "models", "model-instances"]
RECORDS: dict[str, type[_ApiRecord]] = {"workers": Worker, "models": Model, "model-instances": ModelInstance}


class ApiFormatError(ValueError):
    """A page GPUStack sent that does not have the shape of its 2.x API."""


def parse_page(kind: Kind, document: Any) -> tuple[list[Any], int]:
    """The records of one page of ``/v2/<kind>`` and the number of pages."""
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise ApiFormatError(f"/v2/{kind}: expected an object with a list of items")
    pagination = document.get("pagination") or {}
    record = RECORDS[kind]
    records = []
    for i, item in enumerate(document["items"]):
        try:
            records.append(record.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in ("items", i, *first["loc"]))
            raise ApiFormatError(f"/v2/{kind}: {where}: {first['msg']}") from None
    pages = pagination.get("totalPage", 1)
    return records, pages if isinstance(pages, int) and pages > 0 else 1


@dataclass(frozen=True, slots=True)
class GpuStackState:
    """Everything the exporter reads from GPUStack, from one refresh."""

    workers: tuple[Worker, ...]
    models: tuple[Model, ...]
    instances: tuple[ModelInstance, ...]
