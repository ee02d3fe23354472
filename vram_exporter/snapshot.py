"""Frozen readings of a node's GPUs, in bytes: what every later stage works from.

A snapshot is taken once per scrape and never changes afterwards, so the fit
rulebooks and the metric builders can be pure functions of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One GPU's framebuffer memory as NVML reports it.

    With NVML's v2 call, ``used`` excludes the driver-reserved memory and
    ``reserved`` is known. With the v1 fallback ``used`` includes it and
    ``reserved`` is None (unknown), which ``api_version`` records.
    """

    total: int
    used: int
    free: int
    reserved: int | None
    api_version: int  # 2: nvmlDeviceGetMemoryInfo_v2, 1: the v1 fallback


@dataclass(frozen=True, slots=True)
class ProcessReading:
    pid: int
    name: str
    # None when NVML cannot say (e.g. inside a container without the host PID
    # namespace); such a process is listed but its memory is never reported as 0.
    used_bytes: int | None


@dataclass(frozen=True, slots=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    memory: MemoryReading | None
    processes: tuple[ProcessReading, ...] = ()
    # The NVML error name (e.g. "GPU_IS_LOST") when this GPU could not be read.
    error: str | None = None

    @property
    def up(self) -> bool:
        return self.error is None and self.memory is not None


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """Everything read from NVML in one collection."""

    driver_version: str
    gpus: tuple[GpuReading, ...] = ()
    # Set when NVML itself could not be used (library missing, init failed):
    # then ``gpus`` is empty and the collection counts as failed.
    error: str | None = None
    source: str = "nvml"  # "nvml" or "fixture:<path>", shown on the landing page
    duration_seconds: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None
