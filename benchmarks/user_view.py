"""What a user sees, from the exporter's first second, beside the floor, in one run.

For each size (GPUs x models) it starts the real exporter process and measures over loopback:
- start: time from the process's start to the first /metrics answer, time until every model's fixes
  are known (``vram_exporter_fix_searches_pending 0``), and the p50/p99 of the scrapes meanwhile
  (sequential, as fast as they come back);
- steady: readings that do not change (a node whose instances run), p50/p99 of sequential scrapes;
- drifting: every GPU's used memory moves a few MiB twice a second (the fixture file is rewritten,
  the fake NVML follows it), p50/p99 of sequential scrapes over several seconds;
- a jump: one GPU's used memory grows by 3 GiB at once; the slowest scrape in the second after;
- pages: `/` and `/api/v1/fit`, each fetched repeatedly, while another client polls /-/healthy:
  the pages' p50/max and the liveness probe's p99/max meanwhile;
- the floor: the same bytes from a minimal aiohttp handler (floor_server.py), measured the same way;
- samples, bytes, peak RSS (VmHWM).

    .venv/bin/python benchmarks/user_view.py                # 1x10, 8x200, 16x500
    .venv/bin/python benchmarks/user_view.py --sizes 8x200

Another version side by side: check it out elsewhere and put it first on PYTHONPATH, e.g.
    git worktree add /tmp/before b63c555
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/user_view.py --sizes 8x200 --page-rounds 2
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import scenarios  # noqa: E402
from conftest import ExporterProcess, free_port  # noqa: E402
from harness import peak_rss_mib, quantile, wait_port  # noqa: E402

MIB = 2**20


def get(connection: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}")
    return time.perf_counter() - started, body


def start_phase(started: float, port: int) -> dict:
    """From the process's start: first answer, fixes known, and the scrapes in between."""
    first = None
    while first is None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            _, body = get(connection, "/metrics")
            first = time.perf_counter() - started
        except (OSError, http.client.HTTPException):
            time.sleep(0.005)
    meanwhile = []
    while b"\nvram_exporter_fix_searches_pending 0\n" not in body:
        took, body = get(connection, "/metrics")
        meanwhile.append(took)
        if time.perf_counter() - started > 300:
            raise RuntimeError("fixes not known after 300 s")
    return {"first_answer_s": first, "fixes_known_s": time.perf_counter() - started,
            "meanwhile_n": len(meanwhile), "meanwhile_p50_ms": quantile(meanwhile or [0], 0.5) * 1e3,
            "meanwhile_p99_ms": quantile(meanwhile or [0], 0.99) * 1e3}


def sequential(port: int, seconds: float, path: str = "/metrics") -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, stop = [], time.monotonic() + seconds
    while time.monotonic() < stop:
        times.append(get(connection, path)[0])
    return times


class Drift:
    """Rewrites the fixture twice a second, every GPU's used memory a few MiB off (as JSON: drift_tail.py
    ``drift`` says why)."""

    def __init__(self, path: Path) -> None:
        self.path, self.doc = path, yaml.safe_load(path.read_text())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Drift:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        rng = random.Random(1)
        base = [(g["memory"]["used"], g["memory"]["free"]) for g in self.doc["gpus"]]
        while not self._stop.wait(0.5):
            for gpu, (used, free) in zip(self.doc["gpus"], base):
                shift = rng.randrange(0, 8) * MIB
                gpu["memory"]["used"], gpu["memory"]["free"] = used + shift, free - shift
            self.path.write_text(json.dumps(self.doc))


def jump(path: Path, port: int, seconds: float) -> list[float]:
    """One GPU's used memory grows by 3 GiB at once (a new process on it); the scrapes after."""
    doc = yaml.safe_load(path.read_text())
    memory = doc["gpus"][0]["memory"]
    shift = min(3 * 2**30, memory["free"])
    memory["used"], memory["free"] = memory["used"] + shift, memory["free"] - shift
    path.write_text(json.dumps(doc))
    return sequential(port, seconds)


def pages(port: int, rounds: int) -> dict:
    out = {}
    for path in ("/", "/api/v1/fit"):
        healthy: list[float] = []
        done = threading.Event()

        def probe() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while not done.is_set():
                healthy.append(get(connection, "/-/healthy")[0])

        prober = threading.Thread(target=probe)
        prober.start()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        times = [get(connection, path)[0] for _ in range(rounds)]
        done.set()
        prober.join()
        out[path] = {"p50_ms": quantile(times, 0.5) * 1e3, "max_ms": max(times) * 1e3,
                     "healthy_p99_ms": quantile(healthy, 0.99) * 1e3, "healthy_max_ms": max(healthy) * 1e3}
    return out


def floor(body: bytes, work: Path, seconds: float) -> list[float]:
    body_file = work / "body.txt"
    body_file.write_bytes(body)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "floor_server.py"), str(body_file), str(port)])
    try:
        wait_port(port)
        sequential(port, 0.5)
        return sequential(port, seconds)
    finally:
        server.terminate()
        server.wait()


def run(work: Path, gpus: int, models: int, seconds: float, page_rounds: int = 10) -> dict:
    fixture_path, manifest_path = scenarios.write(work, gpus, models, 0)
    started = time.perf_counter()
    exporter = ExporterProcess("--nvml.fixture", str(fixture_path), "--manifest", str(manifest_path),
                               "--log.level", "warn", ready=False)
    try:
        result = {"gpus": gpus, "models": models, **start_phase(started, exporter.port)}
        steady = sequential(exporter.port, seconds)
        with Drift(fixture_path):
            drifting = sequential(exporter.port, max(seconds, 4.0))
        jumped = jump(fixture_path, exporter.port, 1.0)
        result["pages"] = pages(exporter.port, page_rounds)
        connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=30)
        body = get(connection, "/metrics")[1]
        result["rss_mib"] = peak_rss_mib(exporter.proc.pid)
    finally:
        exporter.stop()
    floor_times = floor(body, work, seconds)
    result.update(
        samples=body.count(b"\n") - body.count(b"\n#"), bytes=len(body),
        steady_p50_ms=quantile(steady, 0.5) * 1e3, steady_p99_ms=quantile(steady, 0.99) * 1e3,
        drifting_p50_ms=quantile(drifting, 0.5) * 1e3, drifting_p99_ms=quantile(drifting, 0.99) * 1e3,
        jump_max_ms=max(jumped) * 1e3, jump_p99_ms=quantile(jumped, 0.99) * 1e3,
        floor_p50_ms=quantile(floor_times, 0.5) * 1e3, floor_p99_ms=quantile(floor_times, 0.99) * 1e3)
    return result


def table(results: list[dict]) -> str:
    rows = ["| GPUs x models | samples | KiB | first answer s | fixes known s | p99 meanwhile ms (n) | steady p99 ms | "
            "drifting p99 ms | 3 GiB jump: max ms in the next second | floor p99 ms | steady / floor | drifting / floor | meanwhile / floor | `/` p50 / max ms "
            "| `/api/v1/fit` p50 / max ms | /-/healthy max ms meanwhile | peak RSS MiB |",
            "| --- " * 17 + "|"]
    for r in results:
        f = r["floor_p99_ms"]
        page, api = r["pages"]["/"], r["pages"]["/api/v1/fit"]
        rows.append(
            f"| {r['gpus']} x {r['models']} | {r['samples']} | {r['bytes'] // 1024} | {r['first_answer_s']:.2f} | "
            f"{r['fixes_known_s']:.2f} | {r['meanwhile_p99_ms']:.1f} ({r['meanwhile_n']}) | {r['steady_p99_ms']:.2f} | "
            f"{r['drifting_p99_ms']:.2f} | {r['jump_max_ms']:.1f} | {f:.2f} | {r['steady_p99_ms'] / f:.2f}x | {r['drifting_p99_ms'] / f:.2f}x | "
            f"{r['meanwhile_p99_ms'] / f:.2f}x | {page['p50_ms']:.0f} / {page['max_ms']:.0f} | "
            f"{api['p50_ms']:.0f} / {api['max_ms']:.0f} | "
            f"{max(page['healthy_max_ms'], api['healthy_max_ms']):.1f} | {r['rss_mib']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1x10,8x200,16x500")
    parser.add_argument("--seconds", type=float, default=3.0, help="per steady/drifting/floor phase")
    parser.add_argument("--page-rounds", type=int, default=10, help="fetches of each page")
    args = parser.parse_args()
    import tempfile

    results = []
    for size in args.sizes.split(","):
        gpus, models = map(int, size.split("x"))
        with tempfile.TemporaryDirectory() as work:
            results.append(run(Path(work), gpus, models, args.seconds, args.page_rounds))
            print(results[-1], file=sys.stderr)
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}\n")
    print(table(results))


if __name__ == "__main__":
    main()
