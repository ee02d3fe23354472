"""A stand-in for pynvml that replays a recorded fixture, for machines without a GPU.

It implements exactly the part of pynvml's surface that ``nvml.NvmlReader`` uses,
with pynvml's own return shapes, and raises the real ``pynvml.NVMLError_*``
classes where the fixture says so. It is injected (``NvmlReader(FakeNvml(f))``),
never patched over the real module.

``replace_fixture()`` swaps the recorded state while it runs, so tests can lose a
GPU mid-run or make NVML appear later, the way a real driver does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from . import nvml
from .fixture import Fixture, FixtureGpu


@dataclass(frozen=True, slots=True)
class _Memory:
    total: int
    used: int
    free: int
    reserved: int = 0
    version: int = 0


@dataclass(frozen=True, slots=True)
class _PciInfo:
    busId: str  # noqa: N815 - pynvml's field name


@dataclass(frozen=True, slots=True)
class _Process:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - pynvml's field name


@dataclass(frozen=True, slots=True)
class _Handle:
    index: int


class FakeNvml:
    """pynvml's surface, answered from a Fixture."""

    nvmlMemory_v2 = nvml.MEMORY_V2  # noqa: N815 - pynvml's name

    def __init__(self, fixture: Fixture) -> None:
        self._fixture = fixture
        self._initialized = False
        self._lock = threading.Lock()
        self.init_calls = 0

    def replace_fixture(self, fixture: Fixture) -> None:
        with self._lock:
            self._fixture = fixture

    # --- library life cycle -------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names from here on
        self.init_calls += 1
        if self._fixture.nvml_error:
            raise nvml.error_class(self._fixture.nvml_error)()
        self._initialized = True

    def nvmlShutdown(self) -> None:
        self._require_init()
        self._initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._require_init()
        return self._fixture.driver_version

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        self._require_init()
        for gpu in self._fixture.gpus:
            for proc in gpu.processes:
                if proc.pid == pid:
                    return proc.name
        raise nvml.error_class("NOT_FOUND")()

    # --- devices ------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._require_init()
        return len(self._fixture.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._gpu(_Handle(index))
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> _PciInfo:
        return _PciInfo(self._gpu(handle).pci_bus_id)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> _Memory:
        gpu = self._gpu(handle)
        mem = gpu.memory
        if not version:
            # NVML v1: "used" includes the driver-reserved memory.
            return _Memory(total=mem.total, used=mem.used + mem.reserved, free=mem.free)
        if not self._fixture.memory_v2:
            raise nvml.error_class("FUNCTION_NOT_FOUND")()
        if version != nvml.MEMORY_V2:
            raise nvml.error_class("ARGUMENT_VERSION_MISMATCH")()
        return _Memory(mem.total, mem.used, mem.free, mem.reserved, version)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[_Process]:
        return self._processes(handle, "compute")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: _Handle) -> list[_Process]:
        return self._processes(handle, "graphics")

    # --- helpers ------------------------------------------------------------
    def _processes(self, handle: _Handle, kind: str) -> list[_Process]:
        gpu = self._gpu(handle)
        return [_Process(p.pid, p.used) for p in gpu.processes if p.type == kind]

    def _gpu(self, handle: _Handle) -> FixtureGpu:
        self._require_init()
        gpus = self._fixture.gpus
        if not 0 <= handle.index < len(gpus):
            raise nvml.error_class("INVALID_ARGUMENT")()
        gpu = gpus[handle.index]
        if gpu.error:
            raise nvml.error_class(gpu.error)()
        return gpu

    def _require_init(self) -> None:
        if not self._initialized:
            raise nvml.error_class("UNINITIALIZED")()
