"""Reads every GPU of this node through NVML into a frozen NodeSnapshot.

This is the only module that imports pynvml (the ``nvidia-ml-py`` distribution,
not the deprecated ``pynvml`` one). The library is injected: ``NvmlReader(lib)``
takes anything with pynvml's surface, so tests pass a ``FakeNvml`` fed by a
recorded fixture instead of patching the real module.

What a 3 a.m. operator needs from it:
- one GPU that raises (GPU_IS_LOST, UNKNOWN, TIMEOUT...) is reported as down,
  with its last known identity, while the others are still read;
- NVML missing or failing to initialise gives a snapshot with ``error`` set,
  and the next ``read()`` tries to initialise again;
- nothing here blocks forever on purpose, but NVML calls can hang inside the
  driver, so the server calls ``read()`` off the event loop with a time limit.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pynvml

from ..snapshot import GpuReading, MemoryReading, NodeSnapshot, ProcessReading

log = logging.getLogger(__name__)

NVMLError = pynvml.NVMLError
MEMORY_V2 = pynvml.nvmlMemory_v2

# The v2 memory call is missing on old drivers (FUNCTION_NOT_FOUND) or refused
# with a version mismatch by drivers that know another struct version.
_V2_UNAVAILABLE = (
    pynvml.NVMLError_FunctionNotFound,
    pynvml.NVMLError_NotSupported,
    pynvml.NVMLError_ArgumentVersionMismatch,
)

_ERROR_NAMES: dict[int, str] = {
    getattr(pynvml, attr): attr.removeprefix("NVML_ERROR_")
    for attr in dir(pynvml)
    if attr.startswith("NVML_ERROR_")
}


def error_class(name: str) -> type[NVMLError]:
    """The real pynvml exception class for an NVML error name such as ``GPU_IS_LOST``."""
    try:
        code = getattr(pynvml, "NVML_ERROR_" + name)
    except AttributeError:
        raise ValueError(
            f"unknown NVML error {name!r}; known: {', '.join(sorted(_ERROR_NAMES.values()))}"
        ) from None
    return pynvml.nvmlExceptionClass(code)


def known_error_names() -> frozenset[str]:
    return frozenset(_ERROR_NAMES.values())


def error_name(exc: BaseException) -> str:
    """``GPU_IS_LOST`` for NVMLError_GpuIsLost; the class name for anything else."""
    if isinstance(exc, NVMLError):
        return _ERROR_NAMES.get(exc.value, f"CODE_{exc.value}")
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class _Identity:
    uuid: str
    name: str
    pci_bus_id: str


class NvmlReader:
    """Takes NodeSnapshots from NVML (or anything with its surface).

    ``proc_root`` is where process names are looked up (``/proc/<pid>/comm``);
    None means "ask NVML only", which is what fixture replays want, since their
    PIDs do not exist on this machine.
    """

    def __init__(
        self,
        lib: Any = pynvml,
        *,
        proc_root: Path | None = Path("/proc"),
        source: str = "nvml",
    ) -> None:
        self._lib = lib
        self._proc_root = proc_root
        self._source = source
        self._initialized = False
        self._driver_version = ""
        self._memory_v2 = True
        # Identities survive a lost GPU and a re-initialisation, so a GPU that
        # drops off the bus keeps its uuid label on ``vram_gpu_up 0``.
        self._identities: dict[int, _Identity] = {}
        # Last error per GPU index: a lost GPU is logged when it goes and when it
        # comes back, not on every scrape.
        self._gpu_errors: dict[int, str] = {}
        # Why NVML as a whole is unavailable (None: it is not): logged when it starts and when it ends.
        self._unavailable: str | None = None
        # NVML is thread-safe, but one read at a time keeps the state above simple.
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        return self._source

    def read(self) -> NodeSnapshot:
        started = time.perf_counter()
        with self._lock:
            snapshot = self._read_locked()
        return replace(snapshot, duration_seconds=time.perf_counter() - started)

    def close(self) -> None:
        with self._lock:
            if self._initialized:
                self._initialized = False
                try:
                    self._lib.nvmlShutdown()
                except NVMLError as exc:
                    log.debug("nvmlShutdown failed: %s", error_name(exc))

    def _read_locked(self) -> NodeSnapshot:
        try:
            self._ensure_initialized()
            count = self._lib.nvmlDeviceGetCount()
        except Exception as exc:  # noqa: BLE001 - NVML missing must never kill a scrape
            return self._failed(exc)
        if self._unavailable is not None:
            log.info("NVML available again (it was %s)", self._unavailable)
            self._unavailable = None
        gpus = tuple(self._read_gpu(index) for index in range(count))
        return NodeSnapshot(
            driver_version=self._driver_version, gpus=gpus, source=self._source
        )

    def _ensure_initialized(self) -> None:
        if self._initialized:
            return
        self._lib.nvmlInit()
        self._initialized = True
        self._driver_version = _text(self._lib.nvmlSystemGetDriverVersion())
        log.info("NVML initialised, driver %s", self._driver_version)

    def _failed(self, exc: BaseException) -> NodeSnapshot:
        name = error_name(exc)
        if name != self._unavailable:  # once when it starts, not at every scrape
            log.warning("NVML unavailable (%s): %s; retrying at every scrape, logged again when it changes",
                        name, exc)
            self._unavailable = name
        # Whatever went wrong, start again from nvmlInit next time.
        if self._initialized:
            self._initialized = False
            try:
                self._lib.nvmlShutdown()
            except Exception:  # noqa: BLE001 - already failing; the error above is the news
                pass
        return NodeSnapshot(driver_version=self._driver_version, error=name, source=self._source)

    def _read_gpu(self, index: int) -> GpuReading:
        try:
            handle = self._lib.nvmlDeviceGetHandleByIndex(index)
            identity = self._identity(index, handle)
            memory = self._read_memory(handle)
            processes = self._read_processes(handle)
        except Exception as exc:  # noqa: BLE001 - one broken GPU must not hide the others
            name = error_name(exc)
            if self._gpu_errors.get(index) != name:
                log.warning("GPU %d unreadable: %s (%s)", index, name, exc)
            self._gpu_errors[index] = name
            known = self._identities.get(index, _Identity("", "", ""))
            return GpuReading(index, known.uuid, known.name, known.pci_bus_id, None, (), name)
        if self._gpu_errors.pop(index, None) is not None:
            log.info("GPU %d readable again", index)
        return GpuReading(index, identity.uuid, identity.name, identity.pci_bus_id, memory, processes)

    def _identity(self, index: int, handle: Any) -> _Identity:
        identity = _Identity(
            uuid=_text(self._lib.nvmlDeviceGetUUID(handle)),
            name=_text(self._lib.nvmlDeviceGetName(handle)),
            pci_bus_id=_text(self._lib.nvmlDeviceGetPciInfo(handle).busId),
        )
        self._identities[index] = identity
        return identity

    def _read_memory(self, handle: Any) -> MemoryReading:
        if self._memory_v2:
            try:
                mem = self._lib.nvmlDeviceGetMemoryInfo(handle, version=MEMORY_V2)
                return MemoryReading(mem.total, mem.used, mem.free, mem.reserved, api_version=2)
            except _V2_UNAVAILABLE as exc:
                log.warning(
                    "nvmlDeviceGetMemoryInfo_v2 unavailable (%s): falling back to v1, "
                    "where 'used' includes driver-reserved memory",
                    error_name(exc),
                )
                self._memory_v2 = False
        mem = self._lib.nvmlDeviceGetMemoryInfo(handle)
        return MemoryReading(mem.total, mem.used, mem.free, None, api_version=1)

    def _read_processes(self, handle: Any) -> tuple[ProcessReading, ...]:
        # A process with both a compute and a graphics context appears in both
        # lists with the same usedGpuMemory: count it once.
        seen: dict[int, ProcessReading] = {}
        for listing in (
            self._lib.nvmlDeviceGetComputeRunningProcesses,
            self._lib.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            for proc in listing(handle):
                if proc.pid not in seen:
                    seen[proc.pid] = ProcessReading(
                        pid=proc.pid,
                        name=self._process_name(proc.pid),
                        used_bytes=proc.usedGpuMemory,  # None: not available, kept as None
                    )
        return tuple(seen[pid] for pid in sorted(seen))

    def _process_name(self, pid: int) -> str:
        if self._proc_root is not None:
            try:
                return (self._proc_root / str(pid) / "comm").read_text().strip()
            except OSError:
                pass  # another PID namespace, or already gone: ask NVML
        try:
            return _text(self._lib.nvmlSystemGetProcessName(pid))
        except NVMLError:
            return ""


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value

