"""The NVML fixture format: a recorded snapshot of a node's GPUs (YAML or JSON).

Format (docs/design.md#nvml-fixture), with the optional keys this project adds::

    driver_version: "580.159.04"
    nvml_error: null          # an NVML error name raised by nvmlInit (e.g. DRIVER_NOT_LOADED)
    memory_v2: true           # false: a driver without nvmlDeviceGetMemoryInfo_v2
    call_delay_seconds: 0     # the fake sleeps this long in each memory call (a slow or hung driver)
    memory_jitter_bytes: 0    # the fake moves up to this much between used and free at every read
    gpus:
      - {index: 0, name: "NVIDIA RTX A2000", uuid: "GPU-...", pci_bus_id: "00000000:01:00.0",
         memory: {total: 6436159488, reserved: 0, used: 0, free: 6436159488},
         processes: [{pid: 1234, name: Xorg, used: 104857600, type: graphics}],
         error: null}         # or an NVML error name raised by every call on this GPU

``used`` of a process may be null: NVML could not say (containers).
Memory follows NVML v2: ``total = reserved + used + free``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, NonNegativeInt, field_validator, model_validator

from . import nvml
from ..snapshot import NodeSnapshot
from .yamlfile import Strict, load_model


def _check_error_name(name: str | None) -> str | None:
    if name is not None and name not in nvml.known_error_names():
        known = ", ".join(sorted(nvml.known_error_names()))
        raise ValueError(f"unknown NVML error {name!r}; one of: {known}")
    return name


class FixtureMemory(Strict):
    total: NonNegativeInt
    reserved: NonNegativeInt = 0
    used: NonNegativeInt
    free: NonNegativeInt

    @model_validator(mode="after")
    def _adds_up(self) -> FixtureMemory:
        if self.reserved + self.used + self.free != self.total:
            raise ValueError(
                f"reserved + used + free = {self.reserved + self.used + self.free} "
                f"but total = {self.total} (NVML v2 readings add up exactly)"
            )
        return self


class FixtureProcess(Strict):
    pid: NonNegativeInt
    name: str = ""
    used: NonNegativeInt | None = None
    type: Literal["compute", "graphics"] = "compute"


class FixtureGpu(Strict):
    index: NonNegativeInt
    name: str
    uuid: str
    pci_bus_id: str
    memory: FixtureMemory
    processes: tuple[FixtureProcess, ...] = ()
    error: str | None = None

    _error_known = field_validator("error")(_check_error_name)


class Fixture(Strict):
    driver_version: str
    nvml_error: str | None = None
    memory_v2: bool = True
    call_delay_seconds: float = Field(default=0.0, ge=0, le=3600)
    memory_jitter_bytes: NonNegativeInt = 0
    gpus: tuple[FixtureGpu, ...] = Field(default=())

    _error_known = field_validator("nvml_error")(_check_error_name)

    @model_validator(mode="after")
    def _indexes_are_nvmls(self) -> Fixture:
        indexes = [gpu.index for gpu in self.gpus]
        if sorted(indexes) != list(range(len(indexes))):
            raise ValueError(f"GPU indexes must be 0..{len(indexes) - 1}, each once; got {indexes}")
        uuids = [gpu.uuid for gpu in self.gpus]
        if len(set(uuids)) != len(uuids):
            raise ValueError("GPU uuids must be unique")
        return self


def load(path: Path | str) -> Fixture:
    """Read and validate a fixture; InputFileError names the file, line and field."""
    return load_model(Fixture, path)


def from_snapshot(snapshot: NodeSnapshot) -> dict:
    """The fixture document that replays ``snapshot`` (what ``vram-exporter capture`` writes)."""
    gpus = []
    memory_v2 = True
    for gpu in snapshot.gpus:
        if gpu.memory is None:
            # An unreadable GPU is recorded with its error and an empty memory block.
            memory = {"total": 0, "reserved": 0, "used": 0, "free": 0}
        elif gpu.memory.reserved is None:
            memory_v2 = False
            # v1 folds reserved into used; the fixture keeps v2's split with reserved 0.
            memory = {"total": gpu.memory.total, "reserved": 0, "used": gpu.memory.used,
                      "free": gpu.memory.free}
        else:
            memory = {"total": gpu.memory.total, "reserved": gpu.memory.reserved,
                      "used": gpu.memory.used, "free": gpu.memory.free}
        gpus.append({
            "index": gpu.index, "name": gpu.name, "uuid": gpu.uuid, "pci_bus_id": gpu.pci_bus_id,
            "memory": memory,
            "processes": [{"pid": p.pid, "name": p.name, "used": p.used_bytes} for p in gpu.processes],
            "error": gpu.error,
        })
    return {"driver_version": snapshot.driver_version, "nvml_error": snapshot.error,
            "memory_v2": memory_v2, "gpus": gpus}


def dump(document: dict) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=110)
