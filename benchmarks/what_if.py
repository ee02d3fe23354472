"""What a what-if costs, and what it costs the others: the real exporter, 8 GPUs x 200 models.

    .venv/bin/python benchmarks/what_if.py [--sizes 8x200] [--rounds 10]

For each size: the time of `/` (the live page), of a new what-if (a whole plan, its fix search cut
off at 2 s, the page), of the same what-if again (kept), and the p99 of `/-/healthy` and `/metrics`
polled by another client while what-ifs are computed one after another, against the same polls
with nothing else running. Performance is reported, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import scenarios  # noqa: E402
from conftest import ExporterProcess  # noqa: E402


def get(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - started


def p99(values: list[float]) -> float:
    return sorted(values)[max(int(len(values) * 0.99) - 1, 0)] * 1000


def poll(url: str, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        out.append(get(url)[1])
        time.sleep(0.01)


def measure(gpus: int, models: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fixture, manifest = scenarios.write(Path(tmp), gpus, models, 0)
        exporter = ExporterProcess("--nvml.fixture", str(fixture), "--manifest", str(manifest))
        try:
            import json

            names = [m["name"] for m in json.loads(urllib.request.urlopen(exporter.url + "/api/v1/fit").read())["models"]]
            live = [get(exporter.url + "/")[1] for _ in range(rounds)]
            quiet = {path: [] for path in ("/-/healthy", "/metrics")}
            for path, out in quiet.items():
                for _ in range(100):
                    out.append(get(exporter.url + path)[1])
            busy = {path: [] for path in quiet}
            stop = threading.Event()
            pollers = [threading.Thread(target=poll, args=(exporter.url + p, stop, busy[p])) for p in busy]
            for t in pollers:
                t.start()
            new, again, statuses = [], [], []
            for i in range(rounds):
                path = "/what-if?" + urllib.parse.urlencode({"model": names[i % len(names)],
                                                            "system_reserved_vram": str(1 + i % 3)})
                status, seconds = get(exporter.url + path)
                statuses.append(status)
                new.append(seconds)
                again.append(get(exporter.url + path)[1])
            stop.set()
            for t in pollers:
                t.join()
        finally:
            exporter.stop()
    return {"size": f"{gpus}x{models}", "live_ms": statistics.median(live) * 1000,
            "new_ms": statistics.median(new) * 1000, "new_max_ms": max(new) * 1000,
            "again_ms": statistics.median(again) * 1000, "statuses": sorted(set(statuses)),
            **{f"quiet_p99_{p}": p99(v) for p, v in quiet.items()},
            **{f"busy_p99_{p}": p99(v) for p, v in busy.items()},
            "busy_n": {p: len(v) for p, v in busy.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="8x200")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print("| GPUs x models | `/` ms | new what-if ms (max) | same again ms | statuses | "
          "/-/healthy p99 ms quiet / during | /metrics p99 ms quiet / during |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes.split(","):
        gpus, models = (int(x) for x in size.split("x"))
        r = measure(gpus, models, args.rounds)
        print(f"| {r['size']} | {r['live_ms']:.0f} | {r['new_ms']:.0f} ({r['new_max_ms']:.0f}) | {r['again_ms']:.0f} | "
              f"{r['statuses']} | {r['quiet_p99_/-/healthy']:.1f} / {r['busy_p99_/-/healthy']:.1f} "
              f"(n={r['busy_n']['/-/healthy']}) | {r['quiet_p99_/metrics']:.1f} / {r['busy_p99_/metrics']:.1f} "
              f"(n={r['busy_n']['/metrics']}) |", flush=True)


if __name__ == "__main__":
    main()
