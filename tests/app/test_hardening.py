"""The exporter must never be what breaks: HTTP limits, NVML faults at run time, manifest reloads,
graceful shutdown. Everything here runs the real exporter process unless it says otherwise."""

from __future__ import annotations

import asyncio
import ctypes.util
import http.client
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import FIXTURES, ROOT, ExporterProcess
from vram_exporter.sources import fixture
from vram_exporter.app.exporter import Exporter
from vram_exporter.sources.fake_nvml import FakeNvml
from vram_exporter.sources.nvml import NvmlReader

SEED_MANIFEST = ROOT / "examples" / "seed" / "manifest.yaml"


def values(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(text: str, name: str, **labels) -> float | None:
    for (n, lab), value in values(text).items():
        if n == name and all(dict(lab).get(k) == v for k, v in labels.items()):
            return value
    return None


def wait_until(predicate, timeout=15.0, message="condition not reached"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(message)


def swap(path, source_or_doc) -> None:
    """Replace a file atomically, as an editor or a ConfigMap update does."""
    tmp = path.with_suffix(".tmp")
    if isinstance(source_or_doc, dict):
        tmp.write_text(yaml.safe_dump(source_or_doc))
    else:
        shutil.copy(source_or_doc, tmp)
    tmp.replace(path)


# --- HTTP surface -------------------------------------------------------------------------------


def raw(exporter: ExporterProcess, method: str, path: str, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=10)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def test_head_404_405_and_oversized_headers(start_exporter):
    exporter = start_exporter("--nvml.fixture", str(FIXTURES / "seed-a2000.yaml"))
    assert raw(exporter, "HEAD", "/metrics") == (200, b"")
    assert raw(exporter, "GET", "/nope")[0] == 404
    assert raw(exporter, "POST", "/metrics")[0] == 405
    assert raw(exporter, "DELETE", "/")[0] == 405
    status, _ = raw(exporter, "GET", "/metrics", {"X-Huge": "x" * 20_000})
    assert status in (400, 431)
    assert raw(exporter, "GET", "/-/healthy")[0] == 200  # still serving afterwards


def test_concurrent_requests_beyond_the_cap_get_503(tmp_path):
    slow = tmp_path / "slow.yaml"
    doc = yaml.safe_load((FIXTURES / "seed-a2000.yaml").read_text())
    doc["call_delay_seconds"] = 1.0
    slow.write_text(yaml.safe_dump(doc))
    exporter = ExporterProcess("--nvml.fixture", str(slow), "--web.max-requests", "2")
    try:
        with ThreadPoolExecutor(6) as pool:
            statuses = sorted(pool.map(lambda _: raw(exporter, "GET", "/metrics")[0], range(6)))
        assert statuses.count(200) >= 2 and 503 in statuses and set(statuses) <= {200, 503}
    finally:
        exporter.stop()


def test_concurrent_scrapes_share_one_nvml_read():
    class Counting(FakeNvml):
        reads = 0

        def nvmlDeviceGetMemoryInfo(self, handle, version=None):  # noqa: N802
            Counting.reads += 1
            time.sleep(0.2)
            return super().nvmlDeviceGetMemoryInfo(handle, version)

    exporter = Exporter(NvmlReader(Counting(fixture.load(FIXTURES / "seed-a2000.yaml")), proc_root=None))

    async def scrapes():
        return await asyncio.gather(*(exporter.scrape() for _ in range(10)))

    results = asyncio.run(scrapes())
    exporter.close()
    assert len(results) == 10 and all(b"vram_gpu_up" in r.body for r in results)
    assert Counting.reads == 1


def test_sigterm_lets_an_in_flight_scrape_finish(tmp_path):
    slow = tmp_path / "slow.yaml"
    doc = yaml.safe_load((FIXTURES / "seed-a2000.yaml").read_text())
    slow.write_text(yaml.safe_dump(doc))
    exporter = ExporterProcess("--nvml.fixture", str(slow), "--nvml.timeout", "10")
    doc["call_delay_seconds"] = 2.0
    swap(slow, doc)
    result = {}

    def scrape():
        result["status"], result["body"] = raw(exporter, "GET", "/metrics")

    thread = threading.Thread(target=scrape)
    thread.start()
    time.sleep(0.7)
    exporter.proc.send_signal(signal.SIGTERM)
    thread.join(15)
    assert result.get("status") == 200 and b"vram_gpu_up" in result["body"]
    assert exporter.proc.wait(15) == 0


# --- NVML faults at run time ----------------------------------------------------------------------


@pytest.fixture
def live_fixture(tmp_path):
    path = tmp_path / "node.yaml"
    shutil.copy(FIXTURES / "node-8xh100.yaml", path)
    exporter = ExporterProcess("--nvml.fixture", str(path), "--nvml.timeout", "0.5")
    yield path, exporter
    exporter.stop()


def test_gpu_lost_mid_run_then_back(live_fixture):
    path, exporter = live_fixture
    uuid = yaml.safe_load(path.read_text())["gpus"][4]["uuid"]
    assert sample(exporter.text(), "vram_gpu_up", gpu="4", uuid=uuid) == 1
    doc = yaml.safe_load(path.read_text())
    doc["gpus"][4]["error"] = "GPU_IS_LOST"
    swap(path, doc)
    wait_until(lambda: sample(exporter.text(), "vram_gpu_up", gpu="4", uuid=uuid) == 0)
    text = exporter.text()
    assert sample(text, "vram_gpu_up", gpu="3") == 1 and sample(text, "vram_exporter_collect_success",
                                                                 collector="nvml") == 1
    swap(path, FIXTURES / "node-8xh100.yaml")
    wait_until(lambda: sample(exporter.text(), "vram_gpu_up", gpu="4", uuid=uuid) == 1)


def test_a_hanging_call_is_cut_off_and_the_exporter_recovers(live_fixture):
    path, exporter = live_fixture
    assert sample(exporter.text(), "vram_gpu_up", gpu="0") == 1  # seen once, so known from now on
    doc = yaml.safe_load(path.read_text())
    doc["call_delay_seconds"] = 1.0  # per GPU call: a read of 8 GPUs hangs 8 s
    swap(path, doc)
    wait_until(lambda: sample(exporter.text(), "vram_exporter_collect_success", collector="nvml") == 0)
    text = exporter.text()
    assert sample(text, "vram_gpu_up", gpu="0") == 0  # known GPUs stay visible, marked down
    assert exporter.text("/-/healthy") == "Healthy\n"
    swap(path, FIXTURES / "node-8xh100.yaml")
    wait_until(lambda: sample(exporter.text(), "vram_exporter_collect_success", collector="nvml") == 1, 20)
    assert sample(exporter.text(), "vram_gpu_up", gpu="0") == 1


def test_nvml_failing_then_coming_up(live_fixture):
    path, exporter = live_fixture
    assert sample(exporter.text(), "vram_gpu_up", gpu="7") == 1
    swap(path, FIXTURES / "driver-not-loaded.yaml")
    wait_until(lambda: sample(exporter.text(), "vram_exporter_collect_success", collector="nvml") == 0)
    assert sample(exporter.text(), "vram_gpu_up", gpu="7") == 0
    swap(path, FIXTURES / "node-8xh100.yaml")
    wait_until(lambda: sample(exporter.text(), "vram_exporter_collect_success", collector="nvml") == 1)
    assert sample(exporter.text(), "vram_gpu_up", gpu="7") == 1


def test_an_invalid_fixture_change_keeps_the_last_state(live_fixture):
    path, exporter = live_fixture
    path.write_text("gpus: [oops\n")
    time.sleep(0.5)
    assert sample(exporter.text(), "vram_gpu_up", gpu="0") == 1


def test_the_real_nvml_library_missing_or_present(start_exporter):
    """Without --nvml.fixture the real pynvml is used: on a machine without the driver it must
    answer /metrics with collect_success 0; with one, with 1."""
    exporter = start_exporter()
    text = exporter.text()
    has_driver = ctypes.util.find_library("nvidia-ml") is not None
    assert sample(text, "vram_exporter_collect_success", collector="nvml") == (1 if has_driver else 0)
    assert "vram_exporter_build_info" in text and exporter.text("/-/healthy") == "Healthy\n"


# --- manifest reload ------------------------------------------------------------------------------


def test_bad_manifest_keeps_the_last_good_one_and_sighup_reloads(tmp_path):
    manifest = tmp_path / "manifest.yaml"
    shutil.copy(SEED_MANIFEST, manifest)
    exporter = ExporterProcess("--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml"), "--manifest",
                               str(manifest), "--manifest.check-interval", "0.2")
    try:
        assert sample(exporter.text(), "vram_exporter_manifest_last_reload_successful") == 1
        good_time = sample(exporter.text(), "vram_exporter_manifest_last_reload_success_timestamp_seconds")
        manifest.write_text(SEED_MANIFEST.read_text().replace("weights_bytes:", "weights_byte:"))
        wait_until(lambda: sample(exporter.text(), "vram_exporter_manifest_last_reload_successful") == 0)
        text = exporter.text()
        assert sample(text, "vram_model_schedulable", model="qwen2.5-1.5b-instruct") == 0  # still judged
        assert sample(text, "vram_exporter_manifest_last_reload_success_timestamp_seconds") == good_time
        # A fixed manifest applies on SIGHUP as well as on the file change.
        fixed = SEED_MANIFEST.read_text().replace("system_reserved_vram: 1GiB", "system_reserved_vram: 0").replace(
            "--gpu-memory-utilization=0.9", "--gpu-memory-utilization=0.91")
        manifest.write_text(fixed)
        exporter.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: sample(exporter.text(), "vram_model_schedulable", model="qwen2.5-1.5b-instruct") == 1)
        assert sample(exporter.text(), "vram_exporter_manifest_last_reload_successful") == 1
    finally:
        output = exporter.stop()
    assert "manifest reload failed, keeping the last good one" in output and "weights_byte" in output


