"""Scrape cost at cluster scale, side by side with two references, in one run.

For each scenario (GPUs x models x processes per GPU) it writes a fixture and a manifest
(benchmarks/scenarios.py), starts the real exporter process, and measures over HTTP on loopback:
p50/p99 latency of sequential scrapes, scrapes per second with concurrent clients, bytes per
scrape and the exporter's peak RSS. In the same run, on the same series:
- floor: the same bytes served by a minimal aiohttp handler returning a prebuilt body
  (benchmarks/floor_server.py), measured the same way;
- prometheus_client: `generate_latest` rendering the same families (parsed back from our output),
  in process, against our own in-process render of the same scrape.
Memory readings move at every scrape (the fixture's memory_jitter_bytes), as on a real node.

    python benchmarks/harness.py                 # the full grid, writes benchmarks/RESULTS.md
    python benchmarks/harness.py --quick         # 8 GPUs x 200 models only
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
import scenarios  # noqa: E402
from conftest import ExporterProcess, exporter_command, free_port  # noqa: E402

from vram_exporter.sources.manifest import load_manifest  # noqa: E402
from vram_exporter.app.exporter import Exporter  # noqa: E402
from vram_exporter.sources.fake_nvml import FakeNvml  # noqa: E402
from vram_exporter.sources.nvml import NvmlReader  # noqa: E402

JITTER = 256 * 2**20


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def http_latencies(port: int, count: int) -> tuple[list[float], int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, size = [], 0
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        times.append(time.perf_counter() - started)
        assert response.status == 200
        size = len(body)
    return times, size


def throughput(port: int, clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            connection.request("GET", "/metrics")
            connection.getresponse().read()
            done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def in_process(fixture_path: Path, manifest_path: Path, rounds: int, detail: str) -> tuple[float, float, int]:
    """Median seconds of: our whole scrape (read + fit + render), prometheus_client's generate_latest
    of the same families; and the number of samples."""
    exporter = Exporter(NvmlReader(FakeNvml.watching(fixture_path), proc_root=None),
                        manifest=load_manifest(manifest_path), gpu_detail=detail)

    async def ours() -> list[float]:
        plan = await exporter.plan(await exporter.snapshot())
        plan.fixes_known.result(timeout=120)  # the plan's first fix search is not a scrape's cost
        await exporter.scrape()
        out = []
        for _ in range(rounds):
            started = time.perf_counter()
            await exporter.scrape()
            out.append(time.perf_counter() - started)
        return out

    our_times = asyncio.run(ours())  # fixes are searched in the background: not in these times
    body = asyncio.run(exporter.scrape()).body.decode()
    exporter.close()
    families = []
    for parsed in text_string_to_metric_families(body):
        label_names = sorted({k for s in parsed.samples for k in s.labels})
        family = GaugeMetricFamily(parsed.name, parsed.documentation, labels=label_names)
        for s in parsed.samples:
            family.add_metric([s.labels.get(k, "") for k in label_names], s.value)
        families.append(family)

    class Registry:
        def collect(self):
            return iter(families)

    theirs = []
    for _ in range(max(3, rounds // 5)):
        started = time.perf_counter()
        generate_latest(Registry())
        theirs.append(time.perf_counter() - started)
    return statistics.median(our_times), statistics.median(theirs), body.count("\n") - body.count("\n#")


def run_scenario(work: Path, gpus: int, models: int, procs: int, scrapes: int, clients: int,
                 moving: bool = True, detail: str = "all") -> dict:
    fixture_path, manifest_path = scenarios.write(work, gpus, models, procs)
    doc = yaml.safe_load(fixture_path.read_text())
    doc["memory_jitter_bytes"] = JITTER if moving else 0
    fixture_path.write_text(yaml.safe_dump(doc))
    exporter = ExporterProcess("--nvml.fixture", str(fixture_path), "--manifest", str(manifest_path),
                               "--log.level", "warn", "--model.gpu-detail", detail)
    try:
        http_latencies(exporter.port, 5)  # warm-up: first fit
        wait_for_fixes(exporter.port)  # the background fix search's first round
        ours, size = http_latencies(exporter.port, scrapes)
        ours_rate = throughput(exporter.port, clients, 2.0)
        rss = peak_rss_mib(exporter.proc.pid)
        body = urllib_get(exporter.port)
    finally:
        exporter.stop()
    body_file = work / "body.txt"
    body_file.write_bytes(body)
    floor_port = free_port()
    floor = subprocess.Popen([sys.executable, str(HERE / "floor_server.py"), str(body_file), str(floor_port)])
    try:
        wait_port(floor_port)
        http_latencies(floor_port, 5)
        floor_times, _ = http_latencies(floor_port, scrapes)
        floor_rate = throughput(floor_port, clients, 2.0)
    finally:
        floor.terminate()
        floor.wait()
    our_render, client_render, samples = in_process(fixture_path, manifest_path, max(10, scrapes // 5), detail)
    return {
        "gpus": gpus, "models": models, "procs": procs, "readings": "moving" if moving else "steady",
        "detail": detail, "samples": samples, "bytes": size,
        "p50_ms": quantile(ours, 0.5) * 1e3, "p99_ms": quantile(ours, 0.99) * 1e3,
        "floor_p50_ms": quantile(floor_times, 0.5) * 1e3, "floor_p99_ms": quantile(floor_times, 0.99) * 1e3,
        "rate": ours_rate, "floor_rate": floor_rate, "rss_mib": rss,
        "ours_inproc_ms": our_render * 1e3, "client_render_ms": client_render * 1e3,
    }


@contextmanager
def served(pythonpath: str, fixture: Path, manifest: Path) -> Iterator[int]:
    """The real exporter of the checkout at ``pythonpath`` serving ``--nvml.fixture fixture --manifest
    manifest`` on a free port, yielded once its first plan's fixes are known; stopped after."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.path.abspath(pythonpath)}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([*exporter_command(), "--nvml.fixture", str(fixture), "--manifest", str(manifest),
                                 "--log.level", "warn", "--web.listen-address", f"127.0.0.1:{port}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(port)
            wait_for_fixes(port)
            yield port
        finally:
            proc.terminate()
            proc.wait()


def wait_for_fixes(port: int, timeout: float = 180) -> None:
    """Until the exporter's background fix search has nothing queued."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b"\nvram_exporter_fix_searches_pending 0\n" in urllib_get(port):
            return
        time.sleep(0.5)
    raise RuntimeError("the fix search did not finish")


def urllib_get(port: int) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    return connection.getresponse().read()


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("floor server did not start")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def table(rows: list[dict]) -> str:
    head = ("| GPUs | models | procs/GPU | readings | --model.gpu-detail | samples | KiB/scrape | p50 ms | p99 ms | floor p99 ms | p99 / floor | "
            "scrapes/s (4 clients) | floor scrapes/s | in-process ms | prometheus_client ms | "
            "prometheus_client / ours | peak RSS MiB |\n" + "| " + " | ".join(["---:"] * 17) + " |\n")
    lines = [
        f"| {r['gpus']} | {r['models']} | {r['procs']} | {r['readings']} | {r['detail']} | {r['samples']} | {r['bytes'] / 1024:.0f} | "
        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['floor_p99_ms']:.2f} | {r['p99_ms'] / r['floor_p99_ms']:.2f} | "
        f"{r['rate']:.0f} | {r['floor_rate']:.0f} | {r['ours_inproc_ms']:.2f} | {r['client_render_ms']:.1f} | "
        f"{r['client_render_ms'] / r['ours_inproc_ms']:.0f}x | {r['rss_mib']:.0f} |"
        for r in rows]
    return head + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only 8 GPUs x 200 models (with and without processes)")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    grid = [(g, m, p, True, "all") for g in (1, 8, 16) for m in (10, 50, 200) for p in (0, 64)]
    grid += [(8, 200, 0, False, "all"), (8, 200, 0, True, "failing"), (8, 200, 0, False, "failing")]
    if args.quick:
        grid = [(8, 200, 0, True, "all"), (8, 200, 0, False, "all"), (8, 200, 0, True, "failing")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gpus, models, procs, moving, detail in grid:
            row = run_scenario(Path(tmp), gpus, models, procs, args.scrapes, args.clients, moving, detail)
            rows.append(row)
            print(f"{gpus:>2} GPUs {models:>3} models {procs:>2} procs {row['readings']} {detail}: p99 {row['p99_ms']:.2f} ms "
                  f"(floor {row['floor_p99_ms']:.2f}), {row['rate']:.0f}/s, rss {row['rss_mib']:.0f} MiB", flush=True)
    text = table(rows)
    print(text)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    args.out.write_text(
        "# Benchmark results\n\n"
        f"Machine: {machine()}. Commit {commit.strip()}. Command: `python benchmarks/harness.py"
        f"{' --quick' if args.quick else ''}` ({args.scrapes} sequential scrapes per scenario after 5 warm-up "
        f"ones, then 2 s with {args.clients} concurrent clients; memory readings move at every scrape).\n\n"
        "- p99 / floor: our p99 latency over the floor's (the same bytes from a minimal aiohttp handler).\n"
        "- prometheus_client / ours: prometheus_client's `generate_latest` of the same families against our whole\n"
        "  in-process scrape (NVML read through the fake, fit, render).\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
