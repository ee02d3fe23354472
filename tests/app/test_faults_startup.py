"""The port answers first (issue 24, item 5).

A GPUStack that accepts connections and never answers used to keep /metrics and /-/healthy away for the
whole first read (10.7 s), with "listening on" already logged, and "port already in use" came only after
it. Now the port is bound before anything upstream is read, /-/healthy and /metrics answer at once (GPUStack
not read yet: ``vram_exporter_collect_success{collector="gpustack"} 0``), /-/ready says 503 until the first
read is over, and every start-up error comes before "listening on".
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ExporterProcess, exporter_command, free_port, ROOT
from upstream_stubs import NODE_FIXTURE, OVERLAY, WORKER, Upstreams

ANSWERS_WITHIN = 5.0  # generous: the old code took more than --gpustack.timeout (10 s)


@pytest.fixture
def silent_gpustack() -> Iterator[socket.socket]:
    """A GPUStack that accepts connections (the kernel completes the handshake) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield server


def gpustack_args(server: socket.socket, tmp_path: Path) -> list[str]:
    key = tmp_path / "key"
    key.write_text("k\n")
    return ["--nvml.fixture", str(NODE_FIXTURE), "--manifest", str(OVERLAY),
            "--gpustack.url", f"http://127.0.0.1:{server.getsockname()[1]}", "--gpustack.api-key-file", str(key),
            "--gpustack.worker-name", WORKER]


def status_of(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for_log(exporter: ExporterProcess, text: str, within: float) -> float:
    """Seconds until ``text`` shows in the log (fails past ``within``)."""
    started = time.monotonic()
    while text not in exporter.output():
        assert exporter.proc.poll() is None, exporter.output()
        assert time.monotonic() - started < within, exporter.output()
        time.sleep(0.01)
    return time.monotonic() - started


def test_healthy_and_metrics_answer_while_gpustack_never_answers(silent_gpustack, tmp_path):
    exporter = ExporterProcess(*gpustack_args(silent_gpustack, tmp_path), ready=False)
    try:
        started = time.monotonic()
        exporter.wait_ready(timeout=ANSWERS_WITHIN, path="/-/healthy")
        metrics = exporter.text("/metrics")
        assert time.monotonic() - started < ANSWERS_WITHIN
        assert 'vram_exporter_collect_success{collector="gpustack"} 0' in metrics
        assert 'vram_exporter_collect_success{collector="nvml"} 1' in metrics
        assert "vram_gpu_memory_total_bytes{" in metrics  # the NVML readings are there already
        status, text = status_of(exporter.url + "/-/ready")
        assert status == 503 and "GPUStack" in text, text
    finally:
        log = exporter.stop()
    assert "Traceback" not in log


def test_listening_is_logged_once_the_port_answers(silent_gpustack, tmp_path):
    exporter = ExporterProcess(*gpustack_args(silent_gpustack, tmp_path), ready=False)
    try:
        wait_for_log(exporter, "listening on", within=ANSWERS_WITHIN)
        # The moment it is said, it is true: a connection is taken and answered.
        with urllib.request.urlopen(exporter.url + "/-/healthy", timeout=2) as response:
            assert response.status == 200
    finally:
        exporter.stop()


def test_ready_once_the_first_gpustack_read_is_over(tmp_path):
    with Upstreams() as upstreams:
        upstreams.gpustack_fault = "hang"
        key = tmp_path / "key"
        key.write_text("k\n")
        exporter = ExporterProcess("--nvml.fixture", str(NODE_FIXTURE), "--manifest", str(OVERLAY),
                                   "--gpustack.url", upstreams.url, "--gpustack.api-key-file", str(key),
                                   "--gpustack.worker-name", WORKER, "--gpustack.refresh-interval", "1",
                                   "--gpustack.timeout", "8", ready=False)
        try:
            exporter.wait_ready(timeout=ANSWERS_WITHIN, path="/-/healthy")
            assert status_of(exporter.url + "/-/ready")[0] == 503  # the first read hangs for 8 s
            exporter.wait_ready(timeout=20)  # it failed: ready, with what can be known
            assert 'vram_exporter_collect_success{collector="gpustack"} 0' in exporter.text("/metrics")
            upstreams.gpustack_fault = "none"
            deadline = time.monotonic() + 20
            while 'vram_exporter_collect_success{collector="gpustack"} 1' not in exporter.text("/metrics"):
                assert time.monotonic() < deadline, exporter.output()
                time.sleep(0.2)
        finally:
            exporter.stop()


def test_ready_at_once_without_an_upstream_to_wait_for():
    exporter = ExporterProcess("--nvml.fixture", str(NODE_FIXTURE))
    try:
        assert status_of(exporter.url + "/-/ready") == (200, "Ready\n")
    finally:
        exporter.stop()


def run_to_exit(args: list[str], within: float = 15.0) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([*exporter_command(), *args], capture_output=True, text=True, cwd=ROOT, timeout=within)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_port_in_use_exits_2_before_any_gpustack_read(silent_gpustack, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, output, seconds = run_to_exit([*gpustack_args(silent_gpustack, tmp_path),
                                             "--web.listen-address", f"127.0.0.1:{port}"])
    assert code == 2, output
    assert "cannot listen there" in output and "listening on" not in output and "Traceback" not in output, output
    assert seconds < ANSWERS_WITHIN, output
    silent_gpustack.setblocking(False)
    with pytest.raises(BlockingIOError):  # nobody knocked: GPUStack was never read
        silent_gpustack.accept()


@pytest.mark.parametrize("flags, message", [
    (["--web.config.file", "/nonexistent/web.yml"], "/nonexistent/web.yml"),
    (["--manifest", "/nonexistent/manifest.yaml"], "/nonexistent/manifest.yaml"),
    (["--web.listen-address", "no-such-host.invalid:9845"], "--web.listen-address"),
    (["--web.max-connections", "-1"], "--web.max-connections"),
])
def test_start_up_errors_come_before_listening(flags, message):
    args = ["--nvml.fixture", str(NODE_FIXTURE), "--web.listen-address", f"127.0.0.1:{free_port()}", *flags]
    code, output, _ = run_to_exit(args)
    assert code == 2 and message in output, output
    assert "listening on" not in output and "Traceback" not in output, output
