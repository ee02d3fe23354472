"""Scrapes of a node whose every running model's vLLM answers /version, measured from outside.

The exporter (``vram-exporter --nvml.fixture F --manifest M``) serves N GPUs x M models, every model
running with a ``metrics_url``; a stub process answers each one's ``/metrics`` and ``/version``
(vLLM 0.34.0), so the verdicts assume the answered version. Once every model's engine info says so,
a client scrapes /metrics one request after another for ``--seconds`` and reports p50 and p99.
Several versions side by side, in one run, alternating:

    git worktree add --detach /tmp/before HEAD~1
    .venv/bin/python benchmarks/answered_versions.py --version before=/tmp/before --version after=. --rounds 3

(each ``NAME=PATH`` is put first on the exporter's PYTHONPATH; without ``--version``, this checkout).
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
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
from harness import quantile, served, wait_for_fixes, wait_port  # noqa: E402

METRICS = ('vllm:cache_config_info{block_size="16",cache_dtype="auto",gpu_memory_utilization="0.9",'
           'num_gpu_blocks="1000"} 1.0\n')
ANSWERED = b'why="the running vLLM answered 0.34.0 on /version"'


def stub(port: int) -> None:
    """Run as its own process (``--stub PORT``): every model's vLLM, /metrics and /version."""
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=METRICS)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.34.0"})

    app = web.Application()
    app.router.add_get("/{model}/metrics", metrics)
    app.router.add_get("/{model}/version", version)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def write(work: Path, gpus: int, models: int, stub_port: int) -> tuple[Path, Path]:
    """The benchmarks' usual node, every model placed on a GPU with its vLLM at the stub."""
    fixture, manifest = scenarios.write(work, gpus, models, 0)
    document = yaml.safe_load(manifest.read_text())
    for i, entry in enumerate(document["models"]):
        entry["placed_on"] = entry.get("placed_on") or [i % gpus]
        entry["metrics_url"] = f"http://127.0.0.1:{stub_port}/{entry['name']}/metrics"
    manifest.write_text(yaml.safe_dump(document))
    return fixture, manifest


def get(connection: http.client.HTTPConnection) -> tuple[float, bytes]:
    began = time.perf_counter()
    connection.request("GET", "/metrics")
    body = connection.getresponse().read()
    return time.perf_counter() - began, body


def exporter_run(pythonpath: str, fixture: Path, manifest: Path, models: int, seconds: float) -> list[float]:
    with served(pythonpath, fixture, manifest) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + 120
        while get(connection)[1].count(ANSWERED) < models:  # every engine asked, every answer taken
            if time.monotonic() > deadline:
                raise RuntimeError("not every model's answer taken in 120 s")
            time.sleep(0.2)
        wait_for_fixes(port)  # the answers made a new plan: its fixes first
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            times.append(get(connection)[0])
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="append", default=[], help="NAME=PYTHONPATH (repeatable)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1, help="each version this many times, alternating")
    args = parser.parse_args()
    if args.stub:
        stub(args.stub)
        return
    versions = [v.split("=", 1) for v in args.version] or [["this", str(HERE.parent)]]
    stub_port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--stub", str(stub_port)])
    rows = []
    try:
        wait_port(stub_port)
        with tempfile.TemporaryDirectory() as tmp:
            fixture, manifest = write(Path(tmp), args.gpus, args.models, stub_port)
            for round_ in range(args.rounds):
                order = versions if round_ % 2 == 0 else versions[::-1]
                for name, path in order:
                    times = exporter_run(path, fixture, manifest, args.models, args.seconds)
                    p50, p99 = quantile(times, 0.5) * 1e3, quantile(times, 0.99) * 1e3
                    print(f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms", file=sys.stderr)
                    rows.append(f"| {name}, round {round_ + 1} | {len(times)} | {p50:.2f} | {p99:.2f} |")
    finally:
        server.terminate()
        server.wait()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.gpus} GPUs x {args.models} models, each running with a vLLM that answers /version; "
          f"sequential scrapes for {args.seconds:g} s")
    print()
    print("| server | scrapes | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
