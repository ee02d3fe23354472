"""Compare the exporter's /metrics with nvidia-smi's CSV for the same moment, figure by figure.

Usage: python tools/compare_nvidia_smi.py METRICS.prom SMI-GPU.csv SMI-APPS.csv
(the files tools/device_verify.sh writes). nvidia-smi prints whole MiB and does not say how it
rounds (seen on an H100: used 25818.44 MiB printed as 25819, free 55260.56 as 55261), so a figure
agrees when the exporter's bytes are less than 1 MiB away from nvidia-smi's number.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

MIB = 2**20
GPU_FIELDS = ("index", "uuid", "name", "pci_bus_id", "driver", "total", "reserved", "used", "free")


def compare(metrics: str, smi_gpu: str, smi_apps: str) -> list[tuple[str, float, int, bool]]:
    """Rows of (figure, exporter MiB, nvidia-smi MiB, agree)."""
    values = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            key = (s.name, s.labels.get("uuid"), s.labels.get("pid"))
            values[key] = s.value
    rows = []
    for line in smi_gpu.strip().splitlines():
        gpu = dict(zip(GPU_FIELDS, (part.strip() for part in line.split(","))))
        for field in ("total", "reserved", "used", "free"):
            ours = values[(f"vram_gpu_memory_{field}_bytes", gpu["uuid"], None)] / MIB
            rows.append((f"GPU {gpu['index']} memory.{field}", ours, int(gpu[field]), _agrees(ours, gpu[field])))
    for line in smi_apps.strip().splitlines():
        uuid, pid, name, used = (part.strip() for part in line.split(","))
        ours = values[("vram_gpu_process_memory_used_bytes", uuid, pid)] / MIB
        rows.append((f"pid {pid} ({name}) used", ours, int(used), _agrees(ours, used)))
    return rows


def _agrees(ours_mib: float, smi_mib: str) -> bool:
    return abs(ours_mib - int(smi_mib)) < 1


def main(argv: list[str]) -> int:
    rows = compare(*(Path(p).read_text() for p in argv))
    print("| figure | exporter (MiB) | nvidia-smi (MiB) | agree |\n| --- | ---: | ---: | --- |")
    for name, ours, smi, ok in rows:
        print(f"| {name} | {ours:.2f} | {smi} | {'yes' if ok else 'NO'} |")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
