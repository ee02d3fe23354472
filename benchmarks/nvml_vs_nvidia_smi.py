"""On a GPU machine: one NVML collection as the exporter does it, against one `nvidia-smi --query-gpu`
(what nvidia-smi based exporters run at every scrape), side by side in one run.

    python benchmarks/nvml_vs_nvidia_smi.py [--reads 500] [--smi-runs 20]

Prints JSON with p50/p99 of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

from vram_exporter.sources.nvml import NvmlReader


def timed(fn, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--smi-runs", type=int, default=20)
    args = parser.parse_args()
    reader = NvmlReader()
    first = reader.read()
    assert first.ok, first.error
    query = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,memory.reserved,memory.used,memory.free",
             "--format=csv,noheader,nounits"]
    nvml, smi = [], []
    for _ in range(5):  # interleaved rounds, so that drift hits both alike
        nvml += timed(reader.read, args.reads // 5)
        smi += timed(lambda: subprocess.run(query, capture_output=True, check=True), args.smi_runs // 5)
    nvml.sort()
    smi.sort()

    def q(xs, p):
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    print(json.dumps({
        "gpus": len(first.gpus), "processes": sum(len(g.processes) for g in first.gpus),
        "nvml_collection_us": {"p50": round(q(nvml, 0.5) * 1e6, 1), "p99": round(q(nvml, 0.99) * 1e6, 1),
                               "n": len(nvml)},
        "nvidia_smi_query_ms": {"p50": round(q(smi, 0.5) * 1e3, 2), "p99": round(q(smi, 0.99) * 1e3, 2),
                                "n": len(smi)},
        "ratio_p50": round(q(smi, 0.5) / q(nvml, 0.5), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
