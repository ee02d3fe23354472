"""A stand-in for pynvml that replays a recorded fixture, for machines without a GPU.

It implements exactly the part of pynvml's surface that ``nvml.NvmlReader`` uses,
with pynvml's own return shapes, and raises the real ``pynvml.NVMLError_*``
classes where the fixture says so. It is injected (``NvmlReader(FakeNvml(f))``),
never patched over the real module.

``replace_fixture()`` swaps the recorded state while it runs, so tests can lose a
GPU mid-run or make NVML appear later, the way a real driver does. ``FakeNvml.watching(path)``
does the same from the fixture file: edit or replace the file and the next collection replays
the new state (an invalid new file is logged and the old state kept).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydantic

from . import fixture as fixture_format
from . import nvml
from .fixture import Fixture, FixtureGpu
from ..filestamp import file_stamp
from .yamlfile import InputFileError, parse_model

log = logging.getLogger(__name__)


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

    def __init__(self, fixture: Fixture, path: Path | None = None) -> None:
        self._fixture = fixture
        self._names = {p.pid: p.name for gpu in fixture.gpus for p in gpu.processes}
        self._initialized = False
        self._lock = threading.Lock()
        self._path = path
        self._stamp = file_stamp(path) if path else None
        self.init_calls = 0
        self._reads = 0

    @classmethod
    def watching(cls, path: Path) -> FakeNvml:
        """Replay ``path``, and whatever it holds later on."""
        return cls(_load(path), path)

    def replace_fixture(self, fixture: Fixture) -> None:
        with self._lock:
            self._fixture = fixture
            self._names = {p.pid: p.name for gpu in fixture.gpus for p in gpu.processes}

    def _follow_file(self) -> None:
        if self._path is None:
            return
        stamp = file_stamp(self._path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.replace_fixture(_load(self._path))
            log.info("fixture %s changed: replaying the new state", self._path)
        except InputFileError as exc:
            log.error("fixture %s changed but is invalid, keeping the old state: %s", self._path, exc)

    # --- library life cycle -------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names from here on
        self.init_calls += 1
        self._follow_file()
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
        try:
            return self._names[pid]
        except KeyError:
            raise nvml.error_class("NOT_FOUND")() from None

    # --- devices ------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._follow_file()  # once per collection: the reader counts GPUs first
        self._require_init()
        if self._fixture.nvml_error:  # the driver went away under a running exporter
            raise nvml.error_class(self._fixture.nvml_error)()
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
        if self._fixture.call_delay_seconds:
            time.sleep(self._fixture.call_delay_seconds)
        used, free = mem.used, mem.free
        if self._fixture.memory_jitter_bytes:  # readings that move at every scrape, like a real GPU's
            self._reads += 1
            shift = min(self._reads * 7919 * 2**20 % (self._fixture.memory_jitter_bytes + 1), free)
            used, free = used + shift, free - shift
        if not version:
            # NVML v1: "used" includes the driver-reserved memory.
            return _Memory(total=mem.total, used=used + mem.reserved, free=free)
        if not self._fixture.memory_v2:
            raise nvml.error_class("FUNCTION_NOT_FOUND")()
        if version != nvml.MEMORY_V2:
            raise nvml.error_class("ARGUMENT_VERSION_MISMATCH")()
        return _Memory(mem.total, used, free, mem.reserved, version)

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


def _load(path: Path) -> Fixture:
    """``fixture.load``, with a JSON fixture that YAML's loader reads the same way read by ``json``: at
    every change of the file a drifted scrape waits for this (the benchmarks rewrite it twice a second),
    and with YAML's loader the load took 0.4 ms at 8 GPUs, ten times a real NVML read (with json: 0.04
    ms, benchmarks/RESULTS.md, "A drifted scrape in parts"). Anything else, an invalid fixture included,
    goes to YAML's loader, whose errors name the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return fixture_format.load(path)  # its error names the file
    data = _plain_json(text)
    if data is not None:
        try:
            return Fixture.model_validate(data)
        except pydantic.ValidationError:
            pass
    return parse_model(Fixture, text, path)


# JSON whose every value YAML 1.1 (PyYAML) reads as json does: printable ASCII without an escape or a
# tab, and no number but integers and floats of YAML's form (a dot; an exponent with its sign). YAML
# reads 1e5 or 1.5e10 as strings, NaN as a string, and its reader refuses some characters json takes.
_PLAIN = re.compile(r"[\n\r ]*\{[\n\r\x20-\x5b\x5d-\x7e]*")
# A line break between a key and its colon: json takes it, YAML's flow mapping refuses it (no string holds a
# raw line break, so a break followed by blanks and a colon can only stand there).
_BREAK_BEFORE_COLON = re.compile(r"[\r\n][\r\n ]*:")
_YAML_FLOAT = re.compile(r"-?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?")


class _NotPlain(ValueError):
    pass


def _plain_json(text: str) -> dict | None:
    """The document json reads from ``text`` where YAML's loader reads the same; else None."""
    if not _PLAIN.fullmatch(text) or _BREAK_BEFORE_COLON.search(text):
        return None
    try:
        data = json.loads(text, parse_float=_yaml_float, parse_constant=_not_plain)
    except ValueError:  # not JSON (json's own errors are ValueErrors too), or not plain
        return None
    return data if isinstance(data, dict) else None


def _yaml_float(text: str) -> float:
    if not _YAML_FLOAT.fullmatch(text):
        raise _NotPlain(text)
    return float(text)


def _not_plain(text: str):
    raise _NotPlain(text)
