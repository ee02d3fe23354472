"""A Prometheus-like scraper with good basic-auth credentials while other clients flood wrong passwords.

    .venv/bin/python benchmarks/auth_flood.py                       # 60 flooders, 20 s, bcrypt cost 10
    .venv/bin/python benchmarks/auth_flood.py --flooders 60 --duration 20 --json flood.json
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/auth_flood.py  # another checkout's exporter

The real exporter serves the seed fixture behind basic auth (one user, a bcrypt hash of the given cost).
The scraper asks /metrics as Prometheus does (gzip, its Accept header, a 10 s timeout: Prometheus's default
scrape_timeout) every --interval seconds: first alone (the baseline), then while --flooders clients in a
separate process send wrong passwords as fast as they are answered. It reports the scrape latency p50,
p99 and max in both phases, the scrapes that missed the 10 s timeout, and how the flood was answered.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bcrypt

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "seed-a2000.yaml"
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;"
                     "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
SCRAPE_TIMEOUT = 10.0


def auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get(port: int, path: str, auth: str, timeout: float, headers: dict | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Authorization": auth, **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def flood(port: int, flooders: int, stop, counts) -> None:
    """In its own process: ``flooders`` threads sending wrong passwords back to back."""
    lock = threading.Lock()
    local: dict[str, int] = {}

    def run(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status = str(get(port, "/metrics", auth_header("prometheus", f"guess-{n}-{i}"), 30))
            except OSError:
                status = "error"
            with lock:
                local[status] = local.get(status, 0) + 1

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(flooders)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(timeout=35)
    counts.update(local)


def scrape_for(port: int, auth: str, duration: float, interval: float) -> tuple[list[float], int, dict]:
    latencies, missed, statuses = [], 0, {}
    end = time.monotonic() + duration
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            status = get(port, "/metrics", auth, SCRAPE_TIMEOUT,
                         {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append(time.monotonic() - started)
        except (TimeoutError, socket.timeout):
            missed += 1
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return latencies, missed, statuses


def summary(latencies: list[float]) -> dict:
    if not latencies:
        return {"n": 0}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def exporter_command() -> list[str]:
    script = Path(sys.executable).parent / "vram-exporter"
    if os.environ.get("PYTHONPATH") or not script.exists():
        return [sys.executable, "-m", "vram_exporter.cli"]
    return [str(script)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flooders", type=int, default=60)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of scraping under the flood")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between scrapes")
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the user's hash")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    password = "scrape-secret"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(args.cost)).decode()
    workdir = Path(tempfile.mkdtemp(prefix="auth-flood-"))
    (workdir / "web.yml").write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(workdir / "exporter.log", "w")
    proc = subprocess.Popen([*exporter_command(), "--nvml.fixture", str(SEED), "--web.config.file",
                             str(workdir / "web.yml"), "--web.listen-address", f"127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)  # not ROOT: -m would import it
    auth = auth_header("prometheus", password)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(port, "/metrics", auth, 5) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"exporter did not start; see {workdir / 'exporter.log'}")
            time.sleep(0.1)
        alone, _, _ = scrape_for(port, auth, min(5.0, args.duration), args.interval)
        stop, counts = multiprocessing.Event(), multiprocessing.Manager().dict()
        flooder = multiprocessing.Process(target=flood, args=(port, args.flooders, stop, counts))
        flooder.start()
        time.sleep(1.0)  # the flood is running before the first measured scrape
        started = time.monotonic()
        flooded, missed, statuses = scrape_for(port, auth, args.duration, args.interval)
        flood_seconds = time.monotonic() - started + 1.0
        stop.set()
        flooder.join(timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "flooders": args.flooders, "bcrypt_cost": args.cost, "cpus": os.cpu_count(),
        "alone": summary(alone), "under_flood": summary(flooded), "missed_10s_timeout": missed,
        "scrape_statuses": statuses,
        "flood_answers": dict(counts), "flood_answers_per_s": round(sum(counts.values()) / flood_seconds, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
