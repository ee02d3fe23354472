"""Soak test: one exporter process under steady scrapes, churn and injected faults for a long time;
reports RSS, open file descriptors and threads (start, after warm-up, end, max) and every failed scrape.

    python tools/soak.py --duration 3600 --rate 10 --out soak.json             # manifest mode
    python tools/soak.py --gpustack --duration 3600 --out soak-gpustack.json   # GPUStack mode (make soak)
    python tools/soak.py --gpustack --duration 600 --trace-memory              # where Python memory goes

``--trace-memory``: the exporter runs under tracemalloc and writes a snapshot every minute; the result
gives the Python memory traced at each (``traced_mib``) and the lines that grew most from the snapshot
after warm-up to the last (``traced_growth``). RSS that grows while the traced memory stays flat is the
allocator keeping freed memory, not objects kept alive. tracemalloc slows the exporter and roughly doubles
its RSS: compare RSS figures only between runs without it.

GPUStack mode (``--gpustack``): the exporter reads a GPUStack stub and a vLLM stub on 127.0.0.1
(tests/upstream_stubs.py); the GPU's readings move every second, GPUStack's models and instances change
every 10 s, and every 30 s both stubs misbehave for 10 s (hang, trickle, garbage, not UTF-8, endless
bodies, 500, a model with gmu=inf, a worker reserving 2^60 bytes, in turn). tests/test_soak.py runs it
for two minutes in CI.

What it does, all on loopback with the fake NVML (examples/node-8xh100):
- scrapes /metrics `--rate` times a second; a scrape fails if it is not a 200 with the build info;
- every 60 s writes a broken manifest, and 20 s later a good one again (the exporter must keep
  serving the last good one and then apply the new one);
- cycles NVML faults through the fixture file: GPU 3 lost, then every call slow enough to hit
  --nvml.timeout, then the driver gone, then healthy again;
- samples the exporter's RSS (/proc/PID/status VmRSS) every 10 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import ExporterProcess  # noqa: E402  (the same launcher the tests use)
import upstream_stubs  # noqa: E402  (the misbehaving GPUStack and vLLM of the fault tests)

FAULTS = ("healthy", "gpu-lost", "hang", "driver-gone")


def rss_kib(pid: int) -> int:
    return _status(pid, "VmRSS:")


def threads(pid: int) -> int:
    return _status(pid, "Threads:")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def sample(elapsed: float, pid: int) -> dict:
    return {"t": round(elapsed, 1), "rss_kib": rss_kib(pid), "fds": open_fds(pid), "threads": threads(pid)}


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def fixture_for(state: str, healthy: dict) -> str:
    doc = json.loads(json.dumps(healthy))
    if state == "gpu-lost":
        doc["gpus"][3]["error"] = "GPU_IS_LOST"
    elif state == "hang":
        doc["call_delay_seconds"] = 0.3  # 8 GPUs: 2.4 s per read, over the 1 s --nvml.timeout
    elif state == "driver-gone":
        doc["nvml_error"] = "DRIVER_NOT_LOADED"
    return yaml.safe_dump(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3600)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=30, help="seconds before the 'after warm-up' sample")
    parser.add_argument("--gpustack", action="store_true", help="GPUStack mode (see above)")
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    parser.add_argument("--trace-memory", action="store_true", help="tracemalloc snapshots every minute (above)")
    args = parser.parse_args(argv)
    snapshots = trace_memory() if args.trace_memory else None
    result = (soak_gpustack if args.gpustack else soak_manifest)(args)
    if snapshots is not None:
        result.update(memory_growth(snapshots, args.warmup))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("failures", "samples")}, indent=2))
    return 0 if not result["failures"] else 1


# Loaded by the exporter at start (Python imports sitecustomize from PYTHONPATH): a snapshot every minute.
TRACER = """import os, threading, time, tracemalloc
tracemalloc.start(8)
def _dump():
    for minute in range(10**6):
        tracemalloc.take_snapshot().dump(os.path.join(os.environ["VRAM_SOAK_SNAPSHOTS"], f"{minute:05d}.snapshot"))
        time.sleep(60)
threading.Thread(target=_dump, name="soak-tracemalloc", daemon=True).start()
"""


def trace_memory() -> Path:
    """Make the exporter started next run under tracemalloc; its snapshots go to the folder returned."""
    work = Path(tempfile.mkdtemp(prefix="vram-soak-trace-"))
    (work / "site").mkdir()
    (work / "site" / "sitecustomize.py").write_text(TRACER)
    (work / "snapshots").mkdir()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work / "site"), os.environ.get("PYTHONPATH")]))
    os.environ["VRAM_SOAK_SNAPSHOTS"] = str(work / "snapshots")
    return work / "snapshots"


def memory_growth(folder: Path, warmup: float) -> dict:
    snapshots = [tracemalloc.Snapshot.load(str(path)) for path in sorted(folder.glob("*.snapshot"))]
    if len(snapshots) < 2:
        return {"traced_mib": []}
    traced = [round(sum(stat.size for stat in snap.statistics("filename")) / 2**20, 2) for snap in snapshots]
    after_warmup = snapshots[min(len(snapshots) - 1, max(1, math.ceil(warmup / 60)))]
    growth = snapshots[-1].compare_to(after_warmup, "lineno")[:10]
    return {"traced_mib": traced, "traced_growth": [str(stat) for stat in growth]}


def soak_manifest(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="vram-soak-"))
    fixture, manifest = work / "fixture.yaml", work / "manifest.yaml"
    shutil.copy(ROOT / "examples/node-8xh100/fixture.yaml", fixture)
    shutil.copy(ROOT / "examples/node-8xh100/manifest.yaml", manifest)
    healthy = yaml.safe_load(fixture.read_text())
    good_manifest = manifest.read_text()
    exporter = ExporterProcess("--nvml.fixture", str(fixture), "--manifest", str(manifest),
                               "--manifest.check-interval", "1", "--nvml.timeout", "1", "--log.level", "warn")
    counts = {"manifest_writes": 0, "fault_cycles": 0}

    def step(elapsed: float) -> None:
        minute = int(elapsed) % 60
        want_bad = 0 <= minute < 20 and elapsed > 30
        if want_bad != (manifest.read_text() != good_manifest):
            write(manifest, good_manifest.replace("weights_bytes:", "weights_byte:", 1) if want_bad else good_manifest)
            counts["manifest_writes"] += 1
        state = FAULTS[int(elapsed // 15) % len(FAULTS)] if elapsed > 30 else "healthy"
        wanted = fixture_for(state, healthy)
        if fixture.read_text() != wanted:
            write(fixture, wanted)
            counts["fault_cycles"] += state == "healthy"

    return {**run(exporter, args, step), **counts}


def soak_gpustack(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="vram-soak-"))
    fixture, key = work / "fixture.yaml", work / "key"
    key.write_text("soak_key\n")
    node = yaml.safe_load(upstream_stubs.NODE_FIXTURE.read_text())
    counts = {"churn_steps": 0, "faults": 0}
    with upstream_stubs.Upstreams() as upstreams:
        moving = {"second": -1}

        def move_readings(second: int) -> None:
            memory = node["gpus"][0]["memory"]
            memory["used"] = (second % 7) * 256 * 2**20
            memory["free"] = memory["total"] - memory["used"]
            write(fixture, yaml.safe_dump(node))
            upstreams.move_readings()

        move_readings(0)
        exporter = ExporterProcess(
            "--nvml.fixture", str(fixture), "--manifest", str(upstream_stubs.OVERLAY),
            "--gpustack.url", upstreams.url, "--gpustack.api-key-file", str(key),
            "--gpustack.worker-name", upstream_stubs.WORKER, "--gpustack.refresh-interval", "2",
            "--gpustack.timeout", "2", "--gpustack.read-deadline", "5", "--vllm.metrics-interval", "2",
            "--nvml.timeout", "1", "--log.level", "warn", ready=False)
        exporter.wait_ready(timeout=120)  # under --trace-memory the start is slow

        def step(elapsed: float) -> None:
            second = int(elapsed)
            if second != moving["second"]:
                moving["second"] = second
                move_readings(second)
                if second and second % 10 == 0:
                    upstreams.churn()
                    counts["churn_steps"] += 1
            faults = upstream_stubs.FAULTS[1:]
            fault = faults[(second // 30) % len(faults)] if second >= args.warmup and second % 30 < 10 else "none"
            if fault != upstreams.gpustack_fault:
                counts["faults"] += fault != "none"
                upstreams.gpustack_fault = upstreams.vllm_fault = fault

        return {**run(exporter, args, step), **counts}


def run(exporter: ExporterProcess, args, step) -> dict:
    """Scrape ``args.rate`` times a second for ``args.duration`` s, calling ``step(elapsed)`` before each."""
    pid = exporter.proc.pid
    latencies: list[float] = []
    failures: list[str] = []
    samples: list[dict] = []
    started = time.monotonic()
    next_scrape = started
    try:
        while (elapsed := time.monotonic() - started) < args.duration:
            if not samples or elapsed - samples[-1]["t"] >= 10:
                samples.append(sample(elapsed, pid))
            step(elapsed)
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(exporter.url + "/metrics", timeout=5) as response:
                    body = response.read()
                    if response.status != 200 or b"vram_exporter_build_info" not in body:
                        failures.append(f"{elapsed:.1f}s: status {response.status}")
            except Exception as exc:  # noqa: BLE001 - every failure is the news
                failures.append(f"{elapsed:.1f}s: {exc!r}")
            latencies.append(time.perf_counter() - t0)
            next_scrape += 1 / args.rate
            time.sleep(max(0.0, next_scrape - time.monotonic()))
        samples.append(sample(time.monotonic() - started, pid))
    finally:
        log = exporter.stop()
    warm = next((s for s in samples if s["t"] >= args.warmup), samples[0])
    latencies.sort()
    return {
        "duration_s": round(time.monotonic() - started, 1), "scrapes": len(latencies), "failed": len(failures),
        "failures": failures[:50],
        **{f"{key}_{when}": s[key] for key in ("rss_kib", "fds", "threads")
           for when, s in (("start", samples[0]), ("after_warmup", warm), ("end", samples[-1]))},
        **{f"{key}_max_after_warmup": max(s[key] for s in samples if s["t"] >= warm["t"])
           for key in ("rss_kib", "fds", "threads")},
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "log_lines": len((log or "").splitlines()), "log_tracebacks": (log or "").count("Traceback"),
        "samples": samples,
        "exporter_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                          text=True, cwd=ROOT).stdout.strip(),
    }


if __name__ == "__main__":
    sys.exit(main())
