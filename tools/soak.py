"""Soak test (not in CI): one exporter process under steady scrapes, manifest reloads and injected
GPU faults for a long time; reports RSS at start and end and every failed scrape.

    python tools/soak.py --duration 3600 --rate 10 --out soak.json

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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import ExporterProcess  # noqa: E402  (the same launcher the tests use)

FAULTS = ("healthy", "gpu-lost", "hang", "driver-gone")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3600)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vram-soak-"))
    fixture, manifest = work / "fixture.yaml", work / "manifest.yaml"
    shutil.copy(ROOT / "examples/node-8xh100/fixture.yaml", fixture)
    shutil.copy(ROOT / "examples/node-8xh100/manifest.yaml", manifest)
    healthy = yaml.safe_load(fixture.read_text())
    good_manifest = manifest.read_text()
    exporter = ExporterProcess("--nvml.fixture", str(fixture), "--manifest", str(manifest),
                               "--manifest.check-interval", "1", "--nvml.timeout", "1", "--log.level", "warn")
    pid = exporter.proc.pid
    latencies: list[float] = []
    failures: list[str] = []
    rss: list[tuple[float, int]] = []
    reloads = fault_cycles = 0
    started = time.monotonic()
    next_scrape = started
    try:
        while (elapsed := time.monotonic() - started) < args.duration:
            if not rss or elapsed - rss[-1][0] >= 10:
                rss.append((elapsed, rss_kib(pid)))
            minute = int(elapsed) % 60
            want_bad = 0 <= minute < 20 and elapsed > 30
            if want_bad != (manifest.read_text() != good_manifest):
                write(manifest, good_manifest.replace("weights_bytes:", "weights_byte:", 1) if want_bad else good_manifest)
                reloads += 1
            state = FAULTS[int(elapsed // 15) % len(FAULTS)] if elapsed > 30 else "healthy"
            wanted = fixture_for(state, healthy)
            if fixture.read_text() != wanted:
                write(fixture, wanted)
                fault_cycles += state == "healthy"
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
        rss.append((time.monotonic() - started, rss_kib(pid)))
    finally:
        exporter.stop()
    warm = [kib for t, kib in rss if t >= 30] or [rss[0][1]]
    latencies.sort()
    result = {
        "duration_s": round(time.monotonic() - started, 1), "scrapes": len(latencies), "failed": len(failures),
        "failures": failures[:50], "rss_kib_start": rss[0][1], "rss_kib_after_warmup": warm[0],
        "rss_kib_end": rss[-1][1], "rss_kib_max": max(k for _, k in rss),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "manifest_writes": reloads, "fault_cycles": fault_cycles,
        "exporter_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                          text=True, cwd=ROOT).stdout.strip(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=2))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
