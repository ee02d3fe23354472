"""The explain page in a real headless Chromium, and /api/v1/fit, against a running exporter."""

from __future__ import annotations

import json
import subprocess
import tempfile

from PIL import Image

from conftest import ROOT, exporter_command, require_tool

SEED = ["--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml"),
        "--manifest", str(ROOT / "examples/seed/manifest.yaml")]
# The flags this machine's closed network needs (and no sandbox as root).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium(*args: str) -> subprocess.CompletedProcess:
    binary = require_tool("chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def test_page_renders_the_verdicts_without_javascript(start_exporter):
    exporter = start_exporter(*SEED)
    dom = chromium("--dump-dom", exporter.url + "/").stdout
    assert "<script" not in exporter.text("/")
    assert "qwen2.5-1.5b-instruct" in dom and "will not fit" in dom
    assert "GPUStack leaves it Pending" in dom and "vLLM alone would start on GPU 0" in dom
    assert "The current available GPU only has 4.99 GiB allocatable VRAM (83.32%)." in dom
    assert "lower --system-reserved vram to 0 GiB and set --gpu-memory-utilization=0.91" in dom
    assert dom.count("<svg") == 1 and "<rect" in dom


def test_screenshot_is_not_blank_and_draws_the_memory_bars(start_exporter, tmp_path):
    exporter = start_exporter(*SEED)
    shot = tmp_path / "page.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,1000", exporter.url + "/")
    assert shot.exists(), result.stderr
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, "the page looks blank"
    count = dict((rgb, n) for n, rgb in colours)
    # The SVG bars: GPUStack's system-reserved (#5b5b9a) and allocatable (#bfe0f5), NVML's free (#cfe8cf).
    for rgb in ((0x5B, 0x5B, 0x9A), (0xBF, 0xE0, 0xF5), (0xCF, 0xE8, 0xCF)):
        assert count.get(rgb, 0) > 500, f"colour {rgb} of the memory bars is missing"


def test_api_fit_is_the_same_document_as_check_json(start_exporter):
    exporter = start_exporter(*SEED)
    with exporter.get("/api/v1/fit") as response:
        assert response.headers["Content-Type"].startswith("application/json")
        api = json.loads(response.read())
    cli = subprocess.run([*exporter_command(), "check", "--format", "json", *SEED],
                         capture_output=True, text=True, timeout=60)
    assert api == json.loads(cli.stdout)


def test_page_without_manifest_shows_gpus_only(start_exporter):
    exporter = start_exporter("--nvml.fixture", str(ROOT / "tests/fixtures/node-8xh100.yaml"))
    page = exporter.text("/")
    assert "No manifest given" in page and page.count("<svg") == 8
