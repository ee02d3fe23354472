"""Turns a NodeSnapshot into Prometheus metric families (names from DESIGN.md section 5).

Pure functions of their inputs: the server takes a snapshot, then asks this
module for fresh families at scrape time, the way client_python collectors do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from . import __version__
from .fit.fixes import Fix
from .fit.node import CHECKS, GpuBooking, NodeFit
from .snapshot import GpuReading, NodeSnapshot

GPU_LABELS = ("gpu", "uuid")


@dataclass(frozen=True, slots=True)
class CollectResult:
    """How one collector fared in this scrape."""

    success: bool
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class ManifestStatus:
    """The outcome of the last manifest (re)load."""

    successful: bool
    success_timestamp: float  # 0: never loaded successfully


def gpu_labels(gpu: GpuReading) -> list[str]:
    return [str(gpu.index), gpu.uuid]


def gpu_families(snapshot: NodeSnapshot, bookings: Mapping[int, GpuBooking]) -> Iterator[Metric]:
    """The per-GPU metrics; ``bookings`` (GPUStack's view, by GPU index) come from the fit model."""
    info = InfoMetricFamily(
        "vram_gpu", "GPU identity as NVML reports it; value is always 1.",
        labels=[*GPU_LABELS, "name", "pci_bus_id", "driver_version"],
    )
    up = _gauge("vram_gpu_up", "1 if NVML answered for this GPU in this scrape, 0 if it raised.")
    total = _gauge("vram_gpu_memory_total_bytes", "Framebuffer memory total (NVML).")
    reserved = _gauge(
        "vram_gpu_memory_reserved_bytes",
        "Memory the driver reserves for itself (NVML v2 memory info; absent where only v1 answered).",
    )
    used = _gauge(
        "vram_gpu_memory_used_bytes",
        "Memory in use (NVML v2: driver-reserved excluded; with the v1 fallback it is included).",
    )
    free = _gauge("vram_gpu_memory_free_bytes", "Memory free (NVML).")
    api = _gauge(
        "vram_gpu_memory_nvml_api_version",
        "Which NVML memory call answered: 2 (nvmlDeviceGetMemoryInfo_v2) or 1 (v1 fallback).",
    )
    proc = GaugeMetricFamily(
        "vram_gpu_process_memory_used_bytes",
        "GPU memory used by one process (NVML); absent where NVML cannot say, never 0 for unknown.",
        labels=[*GPU_LABELS, "pid", "process"],
    )
    sys_reserved = _gauge(
        "vram_gpu_system_reserved_bytes", "VRAM the GPUStack worker reserves (--system-reserved)."
    )
    claimed = _gauge(
        "vram_gpu_claimed_bytes",
        "Sum of GPUStack claims of instances bound to this GPU (any state but Pending).",
    )
    alloc = _gauge(
        "vram_gpu_allocatable_bytes",
        "GPUStack's allocatable VRAM: max(total in whole MiB - claims - system reserved, 0).",
    )
    for gpu in snapshot.gpus:
        labels = gpu_labels(gpu)
        if gpu.uuid:  # a GPU lost before it was ever read has no identity to show
            info.add_metric(
                labels, {"name": gpu.name, "pci_bus_id": gpu.pci_bus_id,
                         "driver_version": snapshot.driver_version},
            )
        up.add_metric(labels, 1 if gpu.up else 0)
        if gpu.memory is None:
            continue
        mem = gpu.memory
        total.add_metric(labels, mem.total)
        if mem.reserved is not None:
            reserved.add_metric(labels, mem.reserved)
        used.add_metric(labels, mem.used)
        free.add_metric(labels, mem.free)
        api.add_metric(labels, mem.api_version)
        for process in gpu.processes:
            if process.used_bytes is not None:
                proc.add_metric([*labels, str(process.pid), process.name], process.used_bytes)
        booking = bookings.get(gpu.index)
        if booking is not None:
            sys_reserved.add_metric(labels, booking.system_reserved)
            claimed.add_metric(labels, booking.claimed)
            alloc.add_metric(labels, booking.allocatable)
    yield from (info, up, total, reserved, used, free, api, proc, sys_reserved, claimed, alloc)


def model_families(node: NodeFit, fixes: Mapping[str, Sequence[Fix]] | None = None) -> Iterator[Metric]:
    """The per-model metrics of the catalogue (DESIGN.md section 5)."""
    def model_gauge(name: str, doc: str, *extra: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["model", *extra])

    weights = model_gauge("vram_model_weights_bytes", "Model weights: root-level weight files, as GPUStack sums them.")
    estimate = model_gauge("vram_model_estimate_bytes",
                           "GPUStack's estimate E: GPUSTACK_MODEL_VRAM_CLAIM, else int(weights * 1.2) + 2 GiB.")
    per_token = model_gauge("vram_model_kv_cache_bytes_per_token",
                            "KV cache bytes one token needs on one GPU (vLLM page size per token).")
    required = model_gauge("vram_model_kv_cache_required_bytes",
                           "vLLM's minimum KV cache for max_model_len: (ceil(len / block) + 1) blocks.")
    gmu = model_gauge("vram_model_gpu_memory_utilization",
                      "gpu_memory_utilization as each reader sees it (GPUStack ignores the underscore spelling).",
                      "reader")
    budget = model_gauge("vram_model_vllm_budget_bytes", "vLLM's budget R = ceil((total - reserved) * u).",
                         *GPU_LABELS)
    headroom = model_gauge("vram_model_headroom_bytes", "Room left by each check; negative means it fails.",
                           *GPU_LABELS, "check")
    lo = model_gauge("vram_model_gpu_memory_utilization_min",
                     "Smallest gpu_memory_utilization passing every check on this GPU (min > max: none).", *GPU_LABELS)
    hi = model_gauge("vram_model_gpu_memory_utilization_max",
                     "Largest gpu_memory_utilization passing every check on this GPU.", *GPU_LABELS)
    max_len = model_gauge("vram_model_max_model_len_tokens", "Longest context whose KV cache fits on this GPU.",
                          *GPU_LABELS)
    assigned = model_gauge("vram_model_assigned_gpu",
                           "1 for each GPU GPUStack places (or has placed) the model's first instance on.", *GPU_LABELS)
    schedulable = model_gauge("vram_model_schedulable", "1 if GPUStack would place the model on this node.")
    startable = model_gauge("vram_model_startable",
                            "1 if vLLM would start and serve max_model_len on the GPUs the scheduler picks.")
    replicas = model_gauge("vram_model_replicas_placeable", "How many of the model's replicas this node can place.")
    invalid = model_gauge("vram_model_config_error",
                          "1 if the model cannot be judged (e.g. a tensor-parallel size GPUStack refuses).")
    fix_info = model_gauge("vram_model_fix_info",
                           "A change that would make the model fit on this node (value always 1).", "knob", "action")
    for name, found in (fixes or {}).items():
        for fix in found:
            if fix.works:
                fix_info.add_metric([name, fix.knob, fix.action], 1)
    uuids = {b.index: b.uuid for b in node.gpus}
    for fit in node.models:
        m = [fit.name]
        invalid.add_metric(m, 1 if fit.error else 0)
        schedulable.add_metric(m, 1 if fit.schedulable and not fit.error else 0)
        startable.add_metric(m, 1 if fit.startable and not fit.error else 0)
        if fit.error:
            continue
        weights.add_metric(m, fit.weights)
        estimate.add_metric(m, fit.estimate)
        per_token.add_metric(m, fit.bytes_per_token)
        required.add_metric(m, fit.kv_required)
        gmu.add_metric([*m, "gpustack"], fit.gmu_gpustack)
        gmu.add_metric([*m, "vllm"], fit.gmu_vllm)
        replicas.add_metric(m, fit.replicas_placed)
        for index in fit.gpus:
            assigned.add_metric([*m, str(index), uuids.get(index, "")], 1)
        for f in fit.per_gpu:
            labels = [*m, str(f.index), f.uuid]
            budget.add_metric(labels, f.budget)
            for check in CHECKS:
                if check in f.headroom:
                    headroom.add_metric([*labels, check], f.headroom[check])
            lo.add_metric(labels, f.gmu_min)
            hi.add_metric(labels, f.gmu_max)
            max_len.add_metric(labels, f.max_model_len)
    yield from (weights, estimate, per_token, required, gmu, budget, headroom, lo, hi, max_len, assigned,
                schedulable, startable, replicas, invalid, fix_info)


def exporter_families(
    results: Mapping[str, CollectResult], manifest: ManifestStatus | None = None
) -> Iterator[Metric]:
    build = InfoMetricFamily(
        "vram_exporter_build", "vram-exporter build information; value is always 1.",
        labels=["version"],
    )
    build.add_metric([__version__], {})
    success = GaugeMetricFamily(
        "vram_exporter_collect_success",
        "1 if the collector succeeded in this scrape, 0 if it failed.", labels=["collector"],
    )
    duration = GaugeMetricFamily(
        "vram_exporter_collect_duration_seconds",
        "How long the collector took in this scrape.", labels=["collector"], unit="seconds",
    )
    for name, result in sorted(results.items()):
        success.add_metric([name], 1 if result.success else 0)
        duration.add_metric([name], result.duration_seconds)
    yield from (build, success, duration)
    if manifest is not None:
        ok = GaugeMetricFamily("vram_exporter_manifest_last_reload_successful",
                               "1 if the last manifest (re)load succeeded, 0 if it failed.")
        ok.add_metric([], 1 if manifest.successful else 0)
        when = GaugeMetricFamily("vram_exporter_manifest_last_reload_success_timestamp_seconds",
                                 "When the manifest was last loaded successfully (Unix time).")
        when.add_metric([], manifest.success_timestamp)
        yield from (ok, when)


class FamiliesCollector:
    """Adapts prepared families to prometheus_client's ``registry.collect()`` protocol."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(GPU_LABELS))
