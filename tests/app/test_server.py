"""The HTTP surface of the real exporter process, and the scrape path's failure handling."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import urllib.error

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from conftest import FIXTURES, ROOT, exporter_command
from vram_exporter.sources import fixture
from vram_exporter.app.exporter import Exporter
from vram_exporter.sources.fake_nvml import FakeNvml
from vram_exporter.sources.nvml import NvmlReader

SEED = str(FIXTURES / "seed-a2000.yaml")


def samples(families):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_prometheus_text_format_by_default(start_exporter):
    exporter = start_exporter("--nvml.fixture", SEED)
    with exporter.get("/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = response.read().decode()
    parsed = samples(parse_text(body))
    labels = (("gpu", "0"), ("uuid", "GPU-5eed0a20-0000-4a20-8c1e-000000006138"))
    assert parsed[("vram_gpu_memory_total_bytes", labels)] == 6_436_159_488
    assert parsed[("vram_gpu_up", labels)] == 1
    assert parsed[("vram_exporter_collect_success", (("collector", "nvml"),))] == 1


def test_openmetrics_when_the_scraper_asks_for_it(start_exporter):
    exporter = start_exporter("--nvml.fixture", SEED)
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    with exporter.get("/metrics", {"Accept": accept}) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        body = response.read().decode()
    assert body.endswith("# EOF\n")
    parsed = samples(parse_openmetrics(body))
    assert parsed[("vram_exporter_build_info", (("version", __import__("vram_exporter").__version__),))] == 1


def test_landing_page_links_metrics_and_says_what_it_reads(start_exporter):
    exporter = start_exporter("--nvml.fixture", SEED, "--web.telemetry-path", "/custom")
    page = exporter.text("/")
    assert '<a href="/custom">' in page
    assert f"fixture:{SEED}" in page and "NVIDIA RTX A2000" in page and "5.99 GiB" in page
    assert "vram_gpu_up" in exporter.text("/custom")


def test_health_and_unknown_paths(start_exporter):
    exporter = start_exporter("--nvml.fixture", SEED)
    assert exporter.text("/-/healthy") == "Healthy\n"
    with pytest.raises(urllib.error.HTTPError) as raised:
        exporter.get("/nope")
    assert raised.value.code == 404


def test_nvml_unavailable_still_answers_metrics(start_exporter):
    exporter = start_exporter("--nvml.fixture", str(FIXTURES / "driver-not-loaded.yaml"))
    parsed = samples(parse_text(exporter.text("/metrics")))
    assert parsed[("vram_exporter_collect_success", (("collector", "nvml"),))] == 0
    assert "DRIVER_NOT_LOADED" in exporter.text("/")


@pytest.mark.parametrize("args, expected", [
    (["--web.listen-address", "nonsense"], "--web.listen-address"),
    (["--web.telemetry-path", "metrics"], "--web.telemetry-path"),
])
def test_bad_flags_exit_2_with_a_message(args, expected):
    result = subprocess.run([*exporter_command(), "--nvml.fixture", SEED, *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and expected in result.stderr


def test_a_port_already_taken_exits_2_naming_the_flag():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run([*exporter_command(), "--nvml.fixture", SEED, "--web.listen-address", address],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"--web.listen-address '{address}': cannot listen there" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_fixture_exits_2_naming_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("driver_version: x\ngpus:\n  - index: 0\n    nmae: A\n")
    result = subprocess.run([*exporter_command(), "--nvml.fixture", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{bad}:4: gpus[0].nmae: unknown key" in result.stderr


def test_capture_writes_a_fixture_that_replays_identically(tmp_path):
    out = tmp_path / "captured.yaml"
    src = FIXTURES / "node-8xh100.yaml"
    result = subprocess.run([*exporter_command(), "capture", "--nvml.fixture", str(src), "-o", str(out)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert fixture.load(out) == fixture.load(src)


class HangingNvml(FakeNvml):
    """Memory reads block until released, like a driver call that hangs."""

    def __init__(self, recorded):
        super().__init__(recorded)
        self.hang = threading.Event()
        self.release = threading.Event()

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        if self.hang.is_set():
            self.release.wait(10)
        return super().nvmlDeviceGetMemoryInfo(handle, version)


def test_a_hanging_nvml_call_times_out_and_known_gpus_are_marked_down():
    fake = HangingNvml(fixture.load(FIXTURES / "node-8xh100.yaml"))
    exporter = Exporter(NvmlReader(fake, proc_root=None), nvml_timeout=0.2)

    async def scenario():
        first = await exporter.snapshot()
        fake.hang.set()
        # Three concurrent scrapes while NVML hangs: all time out, one read in flight.
        hung = await asyncio.gather(*(exporter.snapshot() for _ in range(3)))
        fake.hang.clear()
        fake.release.set()
        await asyncio.sleep(0.05)
        recovered = await exporter.snapshot()
        return first, hung, recovered

    first, hung, recovered = asyncio.run(scenario())
    exporter.close()
    assert first.ok and len(first.gpus) == 8
    for snap in hung:
        assert snap.error == "TIMEOUT"
        assert [g.uuid for g in snap.gpus] == [g.uuid for g in first.gpus]
        assert not any(g.up for g in snap.gpus)
    assert recovered.ok and all(g.up for g in recovered.gpus)


def test_gzip_when_the_scraper_accepts_it(start_exporter):
    import gzip

    exporter = start_exporter("--nvml.fixture", str(FIXTURES / "node-8xh100.yaml"))
    with exporter.get("/metrics", {"Accept-Encoding": "gzip"}) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(response.read()).decode()
    parsed = samples(parse_text(body))
    assert parsed[("vram_gpu_up", (("gpu", "3"), ("uuid", "GPU-00000003-5eed-4a11-9c00-0000000a2003")))] == 1


def test_cardinality_control_drops_per_gpu_series_of_fitting_models(start_exporter):
    from conftest import ROOT

    args = ["--nvml.fixture", str(ROOT / "examples/node-8xh100/fixture.yaml"),
            "--manifest", str(ROOT / "examples/node-8xh100/manifest.yaml")]
    counts = {}
    for detail in ("all", "relevant", "failing"):
        text = start_exporter(*args, "--model.gpu-detail", detail).text()
        per_gpu = [s for s in samples(parse_text(text)) if s[0] == "vram_model_headroom_bytes"]
        counts[detail] = len(per_gpu)
        fitting = {dict(lab)["model"] for (name, lab) in samples(parse_text(text))
                   if name == "vram_model_schedulable"}
        assert fitting  # the verdicts themselves are always there
    assert counts["all"] > counts["relevant"] > counts["failing"] > 0


def test_the_explain_page_never_holds_the_liveness_probe(start_exporter, tmp_path):
    """8 GPUs x 200 models: while `/` or /api/v1/fit is being built (tens of milliseconds, off the
    event loop), the liveness probe is answered, three times over, before the page is done."""
    import sys

    import yaml

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scenarios

    fixture_path, manifest_path = scenarios.write(tmp_path, 8, 200, 0)
    doc = yaml.safe_load(fixture_path.read_text())
    doc["memory_jitter_bytes"] = 256 * 2**20  # readings move at every read: no page is served from the last one
    fixture_path.write_text(yaml.safe_dump(doc))
    exporter = start_exporter("--nvml.fixture", str(fixture_path), "--manifest", str(manifest_path))
    exporter.text("/metrics")  # the plan exists; its fixes may still be being planned
    for path in ("/", "/api/v1/fit"):
        order: list[str] = []
        page = threading.Thread(target=lambda: (exporter.text(path), order.append(path)))
        page.start()
        for _ in range(3):
            exporter.text("/-/healthy")
            order.append("healthy")
        page.join(30)
        assert order.index(path) == len(order) - 1, order


def test_gzip_compresses_the_unchanged_part_once_and_stays_one_stream():
    """Each scrape's gzip is the kept state after the families plus its own tail: one ordinary
    gzip member (a reader that stops after the first member, as some do, still gets everything)."""
    import asyncio
    import zlib

    from vram_exporter.app.exporter import Exporter, Scrape
    from vram_exporter.snapshot import NodeSnapshot
    from vram_exporter.sources.sampler import NoNvmlReader

    exporter = Exporter(NoNvmlReader())
    snap = NodeSnapshot(driver_version="")
    gzipped = lambda content, tail: b"".join(asyncio.run(exporter.gzipped(Scrape(content, tail, "", snap))))  # noqa: E731
    content = b"".join(b'vram_gpu_memory_free_bytes{gpu="%d"} %d\n' % (i, i * 7919) for i in range(5000))
    try:
        for n in range(3):
            tail = b"vram_exporter_collect_duration_seconds %f\n" % (n / 7)
            reader = zlib.decompressobj(31)
            assert reader.decompress(gzipped(content, tail)) == content + tail
            assert reader.eof and reader.unused_data == b""
        changed = content.replace(b"7919", b"7907", 1)
        assert zlib.decompress(gzipped(changed, b"x\n"), 31) == changed + b"x\n"
    finally:
        exporter.close()
