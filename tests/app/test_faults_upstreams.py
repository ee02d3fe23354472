"""Hostile upstreams with a scraper running (issue 24): every scrape answers, memory stays bounded.

A GPUStack stub and a vLLM stub on 127.0.0.1 (tests/upstream_stubs.py) switch through every fault: they
hang, trickle a byte at a time, send garbage, bytes that are not UTF-8 and endless bodies, answer 500,
carry a model with --gpu-memory-utilization=inf and a worker reserving 2^60 bytes, each followed by a
recovery; a scraper reads /metrics every 100 ms throughout. The GPUs' readings move every second and the
cluster's models and instances change at every step.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import yaml

from conftest import ExporterProcess
from upstream_stubs import FAULTS, NODE_FIXTURE, OVERLAY, VLLM_VERSION, WORKER, Upstreams

MIB = 2**20
HOLD_SECONDS, RECOVER_SECONDS = 3.0, 2.5
# The running model's verdicts assume what its vLLM answers on /version (sources/vllm_client.py).
ANSWERED = f'version="{VLLM_VERSION}",why="the running vLLM answered {VLLM_VERSION} on /version"}} 1'


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Scraper(threading.Thread):
    """GET /metrics every 100 ms; keeps every failure and the slowest answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.count, self.failures, self.slowest = url, threading.Event(), 0, [], 0.0
        self.last_body = ""

    def run(self) -> None:
        while not self.stop.wait(0.1):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
                    body = response.read().decode()
                    if response.status != 200 or "vram_exporter_build_info" not in body:
                        self.failures.append(f"status {response.status}")
                    self.last_body = body
            except Exception as exc:  # noqa: BLE001 - every failure is the news
                self.failures.append(repr(exc))
            self.count += 1
            self.slowest = max(self.slowest, time.monotonic() - started)


class MovingGpu:
    """The node's NVML fixture, its used memory moving every second."""

    def __init__(self, path: Path) -> None:
        self.path, self.doc, self.step = path, yaml.safe_load(NODE_FIXTURE.read_text()), 0
        self.move()

    def move(self) -> None:
        self.step += 1
        memory = self.doc["gpus"][0]["memory"]
        memory["used"] = (self.step % 7) * 256 * MIB
        memory["free"] = memory["total"] - memory["used"]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.doc))
        tmp.replace(self.path)


def exporter_args(upstreams: Upstreams, tmp_path: Path, fixture: Path) -> list[str]:
    key = tmp_path / "key"
    key.write_text("gpustack_test_key\n")
    return ["--nvml.fixture", str(fixture), "--manifest", str(OVERLAY), "--gpustack.url", upstreams.url,
            "--gpustack.api-key-file", str(key), "--gpustack.worker-name", WORKER,
            "--gpustack.refresh-interval", "1", "--gpustack.timeout", "1", "--gpustack.read-deadline", "3",
            "--vllm.metrics-interval", "1", "--vllm.max-body-bytes", "1MiB", "--gpustack.max-body-bytes", "4MiB"]


def hold(seconds: float, upstreams: Upstreams, gpu: MovingGpu) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        gpu.move()
        upstreams.move_readings()


def test_every_scrape_answers_through_every_upstream_fault(tmp_path):
    with Upstreams() as upstreams:
        gpu = MovingGpu(tmp_path / "fixture.yaml")
        exporter = ExporterProcess(*exporter_args(upstreams, tmp_path, gpu.path))
        scraper = Scraper(exporter.url)
        try:
            hold(3, upstreams, gpu)  # warm-up: GPUStack and vLLM read, the plan made
            assert 'vram_exporter_collect_success{collector="gpustack"} 1' in exporter.text()
            assert f'vllm_instance="127.0.0.1:{upstreams.port}"}} 1' in exporter.text()  # the vLLM is read
            assert ANSWERED in exporter.text()
            scraper.start()
            warm_rss = peak_rss = rss_bytes(exporter.proc.pid)
            for fault in FAULTS[1:]:
                upstreams.gpustack_fault = upstreams.vllm_fault = fault
                upstreams.churn()
                hold(HOLD_SECONDS, upstreams, gpu)
                peak_rss = max(peak_rss, rss_bytes(exporter.proc.pid))
                upstreams.gpustack_fault = upstreams.vllm_fault = "none"
                hold(RECOVER_SECONDS, upstreams, gpu)
                peak_rss = max(peak_rss, rss_bytes(exporter.proc.pid))
                text = exporter.text()
                assert 'vram_exporter_collect_success{collector="gpustack"} 1' in text, (fault, exporter.output())
                assert ANSWERED in text, (fault, [line for line in text.splitlines() if "engine_info{" in line])
            scraper.stop.set()
            scraper.join(10)
            log = exporter.output()
        finally:
            scraper.stop.set()
            exporter.stop()
    assert scraper.failures == [] and scraper.count > 100, scraper.failures[:5]
    assert scraper.slowest < 5  # liveness only
    assert peak_rss - warm_rss < 150 * MIB, (warm_rss, peak_rss)
    assert "Traceback" not in log and "err=" not in log, log[-3000:]
    assert len(log.splitlines()) < 20 * len(FAULTS), log  # a few lines per fault: never one per scrape or read
