"""SIGTERM ends the exporter within seconds whatever a worker thread is doing (issue 24)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml

from conftest import ExporterProcess
from upstream_stubs import NODE_FIXTURE, OVERLAY, WORKER, Upstreams


def terminate_within(exporter: ExporterProcess, seconds: float) -> float:
    started = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    try:
        exporter.proc.wait(timeout=seconds)
    finally:
        exporter.stop()
    return time.monotonic() - started


@pytest.mark.parametrize("fault", ["nvml-hung", "gpustack-hung", "huge-reservation"])
def test_sigterm_ends_the_process_whatever_the_threads_do(tmp_path: Path, fault):
    fixture = tmp_path / "fixture.yaml"
    doc = yaml.safe_load(NODE_FIXTURE.read_text())
    fixture.write_text(yaml.safe_dump(doc))
    key = tmp_path / "key"
    key.write_text("k\n")
    with Upstreams() as upstreams:
        exporter = ExporterProcess("--nvml.fixture", str(fixture), "--manifest", str(OVERLAY),
                                   "--gpustack.url", upstreams.url, "--gpustack.api-key-file", str(key),
                                   "--gpustack.worker-name", WORKER, "--gpustack.refresh-interval", "1",
                                   "--nvml.timeout", "1")
        if fault == "nvml-hung":
            doc["call_delay_seconds"] = 120  # the NVML thread sleeps inside a call
            fixture.write_text(yaml.safe_dump(doc))
        elif fault == "gpustack-hung":
            upstreams.gpustack_fault = "hang"
        else:
            upstreams.gpustack_fault = "huge-reservation"
        time.sleep(3)
        exporter.text("/-/healthy")  # a scrape meanwhile: the threads are busy
        exporter.get("/metrics").read()
        assert terminate_within(exporter, 15) < 15
