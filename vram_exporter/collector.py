"""Turns a NodeSnapshot into Prometheus metric families (names from DESIGN.md section 5).

Pure functions of their inputs: the server takes a snapshot, then asks this
module for fresh families at scrape time, the way client_python collectors do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from . import __version__
from .snapshot import GpuReading, NodeSnapshot

GPU_LABELS = ("gpu", "uuid")


@dataclass(frozen=True, slots=True)
class CollectResult:
    """How one collector fared in this scrape."""

    success: bool
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class GpuBooking:
    """What GPUStack books on a GPU besides the model being placed (Rulebook A)."""

    system_reserved: int = 0
    claimed: int = 0


def gpu_labels(gpu: GpuReading) -> list[str]:
    return [str(gpu.index), gpu.uuid]


def gpu_families(
    snapshot: NodeSnapshot,
    bookings: Mapping[int, GpuBooking] | None = None,
    allocatable: Mapping[int, int] | None = None,
) -> Iterator[Metric]:
    """The per-GPU metrics. ``bookings``/``allocatable`` are keyed by GPU index."""
    bookings = bookings or {}
    allocatable = allocatable or {}
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
        booking = bookings.get(gpu.index, GpuBooking())
        sys_reserved.add_metric(labels, booking.system_reserved)
        claimed.add_metric(labels, booking.claimed)
        if gpu.index in allocatable:
            alloc.add_metric(labels, allocatable[gpu.index])
    yield from (info, up, total, reserved, used, free, api, proc, sys_reserved, claimed, alloc)


def exporter_families(results: Mapping[str, CollectResult]) -> Iterator[Metric]:
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


class FamiliesCollector:
    """Adapts prepared families to prometheus_client's ``registry.collect()`` protocol."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(GPU_LABELS))
