"""GPUStack 2.3.0's own records, built offline for the conformance drivers (run in the virtual
environment with gpustack==2.3.0, beside them; vram_exporter never imports this): a worker with
made-up NVIDIA GPUs, and a model directory GPUStack sizes itself (the real config.json and sparse
weight files of the real sizes)."""

import json

from gpustack.schemas.workers import (
    GPUCoreInfo,
    GPUDeviceStatus,
    MemoryInfo,
    SystemReserved,
    Worker,
    WorkerStateEnum,
    WorkerStatus,
)


def make_worker(ident, name, totals, system_reserved):
    """A ready worker of cluster 1 whose GPU ``i`` has ``totals[i]`` bytes."""
    gpus = [
        GPUDeviceStatus(
            vendor="nvidia", type="cuda", index=i, device_index=i, device_chip_index=0, name="GPU",
            uuid=f"GPU-{ident}-{i}", core=GPUCoreInfo(total=0, utilization_rate=0),
            memory=MemoryInfo(total=total, used=0, utilization_rate=0, is_unified_memory=False),
        )
        for i, total in enumerate(totals)
    ]
    status = WorkerStatus.model_construct(gpu_devices=gpus, memory=MemoryInfo(total=512 * 2**30, used=0,
                                                                             utilization_rate=0))
    return Worker.model_construct(
        id=ident, name=name, hostname=name, ip=f"10.0.0.{ident}", ifname="eth0", port=10150, cluster_id=1,
        labels={}, state=WorkerStateEnum.READY, status=status, unreachable=False,
        system_reserved=SystemReserved(ram=0, vram=system_reserved),
    )


def model_directory(directory, config, files):
    """config.json and sparse weight files ({name: bytes}) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    for name, size in files.items():
        with open(directory / name, "wb") as f:
            f.truncate(size)
    return directory
