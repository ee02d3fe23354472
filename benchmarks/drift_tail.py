"""Scrapes at a steady rate while every GPU's readings move twice a second, measured from outside.

The exporter (``vram-exporter --nvml.fixture F --manifest M``) serves a node of N GPUs x M models;
a separate process rewrites the fixture file twice a second, every GPU's used/free memory a few
MiB off (the fake NVML follows the file); a client in this process scrapes /metrics at a steady
rate (``--rate`` per second) for ``--seconds`` and records each scrape's latency. The floor is the
same client against the same bytes from a minimal aiohttp handler (floor_server.py), with the
drifting process running too, measured in every round after its versions. Several versions side by
side, in one run, alternating:

    git -C /work/main worktree add --detach /tmp/before HEAD
    .venv/bin/python benchmarks/drift_tail.py --version before=/tmp/before --version after=. --rounds 2

(each ``NAME=PATH`` is put first on the exporter's PYTHONPATH; without ``--version``, this checkout).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import scenarios  # noqa: E402
from conftest import free_port  # noqa: E402
from harness import quantile, served, wait_port  # noqa: E402

MIB = 2**20


def drift(path: Path, interval: float = 0.5) -> None:
    """Run as its own process (``--drift PATH``): rewrite the fixture every ``interval`` seconds, each
    GPU's used memory 0-7 MiB off its start, free memory the opposite; replaced whole (rename), so
    that no reader meets half a file. Written as JSON (a fixture may be YAML or JSON): the fake NVML
    reads it with json, nearer a real NVML read's cost than YAML's loader (0.4 ms at 8 GPUs)."""
    doc = yaml.safe_load(path.read_text())
    base = [(g["memory"]["used"], g["memory"]["free"]) for g in doc["gpus"]]
    rng = random.Random(1)
    scratch = path.with_suffix(".tmp")
    while True:
        time.sleep(interval)
        for gpu, (used, free) in zip(doc["gpus"], base):
            shift = rng.randrange(0, 8) * MIB
            gpu["memory"]["used"], gpu["memory"]["free"] = used + shift, free - shift
        scratch.write_text(json.dumps(doc))
        os.replace(scratch, path)


def paced(port: int, rate: float, seconds: float) -> tuple[list[float], bytes]:
    """Scrape /metrics every 1/rate s (a late scrape goes at once); each one's latency, the last body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, body = [], b""
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        began = time.perf_counter()
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        times.append(time.perf_counter() - began)
    return times, body


class Drifting:
    """The drifting process, for the length of a ``with``."""

    def __init__(self, fixture: Path) -> None:
        self.fixture = fixture

    def __enter__(self) -> Drifting:
        self.proc = subprocess.Popen([sys.executable, __file__, "--drift", str(self.fixture)])
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait()


def exporter_run(pythonpath: str, fixture: Path, manifest: Path, rate: float, seconds: float) -> tuple[list, bytes]:
    with served(pythonpath, fixture, manifest) as port, Drifting(fixture):
        paced(port, rate, 2.0)  # warm: the first drifts
        return paced(port, rate, seconds)


def floor_run(body: bytes, work: Path, fixture: Path, rate: float, seconds: float) -> list[float]:
    body_file = work / "body.txt"
    body_file.write_bytes(body)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "floor_server.py"), str(body_file), str(port)])
    try:
        wait_port(port)
        with Drifting(fixture):
            paced(port, rate, 2.0)
            return paced(port, rate, seconds)[0]
    finally:
        server.terminate()
        server.wait()


def row(name: str, times: list[float], floor_p99: float) -> str:
    p50, p99 = quantile(times, 0.5) * 1e3, quantile(times, 0.99) * 1e3
    return (f"| {name} | {len(times)} | {p50:.2f} | {p99:.2f} | {max(times) * 1e3:.1f} | "
            f"{p99 / floor_p99:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drift", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="append", default=[], help="NAME=PYTHONPATH (repeatable)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="scrapes per second")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rounds", type=int, default=1, help="each version this many times, alternating")
    args = parser.parse_args()
    if args.drift is not None:
        drift(args.drift)
        return
    versions = [v.split("=", 1) for v in args.version] or [["this", str(HERE.parent)]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fixture, manifest = scenarios.write(work, args.gpus, args.models, 0)
        pristine = fixture.read_bytes()
        for round_ in range(args.rounds):
            # Each round has its own floor, measured right after its versions: on a shared machine the
            # load moves, and a ratio is only as good as the floor it was measured beside.
            results = []
            for name, path in (versions if round_ % 2 == 0 else versions[::-1]):  # neither always goes first
                fixture.write_bytes(pristine)
                times, body = exporter_run(path, fixture, manifest, args.rate, args.seconds)
                results.append((f"{name}, round {round_ + 1}", times))
                print(f"{name}: p50 {quantile(times, 0.5) * 1e3:.2f} ms, p99 {quantile(times, 0.99) * 1e3:.2f} ms, "
                      f"load {os.getloadavg()[0]:.2f}", file=sys.stderr)
            floor = floor_run(body, work, fixture, args.rate, args.seconds)
            floor_p99 = quantile(floor, 0.99) * 1e3
            rows.append(row(f"floor, round {round_ + 1}", floor, floor_p99))
            rows.extend(row(name, times, floor_p99) for name, times in results)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.gpus} GPUs x {args.models} models, {args.rate:g} scrapes/s for {args.seconds:g} s, readings "
          f"moving on every GPU twice a second; ratios against the same round's floor\n")
    print("| server | scrapes | p50 ms | p99 ms | max ms | p99 / floor p99 |\n| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
