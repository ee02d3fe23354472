"""End to end: the real exporter process replays each fixture; /metrics must equal its golden file.

Regenerate after an intended change with `pytest tests/test_golden_metrics.py --update-golden`
and review the diff. Every golden file must also pass `promtool check metrics`.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from conftest import FIXTURES, GOLDEN, ROOT, require_tool

# Every fixture alone (GPU metrics), and the examples with their manifests (model metrics too).
CASES = {p.stem: ["--nvml.fixture", str(p)] for p in FIXTURES.glob("*.yaml")}
for example in ("seed", "node-8xh100", "mixed-backends", "booked-vs-used"):
    CASES[f"example-{example}"] = ["--nvml.fixture", str(ROOT / f"examples/{example}/fixture.yaml"),
                                   "--manifest", str(ROOT / f"examples/{example}/manifest.yaml")]
# Booked against used without GPUStack: the manifest's running models known by their processes, whose
# parents and command lines are a /proc of the example's own.
CASES["example-booked-vs-used"] += ["--processes.proc-root", str(ROOT / "examples/booked-vs-used/proc")]
# GPUStack as the source: its recorded API answers (served by the recorded_gpustack fixture), the
# node playing worker error-node, sizes from the overlay manifest.
RECORDED = FIXTURES / "gpustack"
CASES["gpustack-recorded"] = ["--nvml.fixture", str(RECORDED / "nvml-error-node.yaml"),
                              "--manifest", str(RECORDED / "overlay.yaml"), "--gpustack.url", "{gpustack_url}",
                              "--gpustack.worker-name", "error-node"]
# The web config's own series (--web.config.file, plain HTTP: headers only).
CASES["web-config"] = ["--nvml.fixture", str(FIXTURES / "seed-a2000.yaml"),
                       "--web.config.file", str(FIXTURES / "web" / "headers.yml")]
FIXTURE_NAMES = sorted(CASES)
# Timings differ on every scrape; everything else must be byte-for-byte stable.
_VOLATILE = re.compile(r"^((?:vram_exporter_collect_duration_seconds|"
                       r"vram_exporter_manifest_last_reload_success_timestamp_seconds|"
                       r"vram_exporter_gpustack_last_success_timestamp_seconds|"
                       r"vram_exporter_web_config_last_reload_success_timestamp_seconds)(?:\{[^}]*\})?) \S+$", re.M)


def normalise(exposition: str) -> str:
    return _VOLATILE.sub(r"\1 <volatile>", exposition)


def stable_body(exporter, timeout: float = 20.0) -> str:
    """Fixes are searched in the background: wait until two scrapes in a row agree."""
    deadline = time.monotonic() + timeout
    previous = normalise(exporter.text("/metrics"))
    while time.monotonic() < deadline:
        time.sleep(0.3)
        current = normalise(exporter.text("/metrics"))
        if current == previous:
            return current
        previous = current
    raise AssertionError("/metrics never settled")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_metrics_match_golden(name, start_exporter, update_golden, recorded_gpustack):
    exporter = start_exporter(*(arg.format(gpustack_url=recorded_gpustack.url) for arg in CASES[name]))
    body = stable_body(exporter)
    golden = GOLDEN / f"{name}.prom"
    if update_golden:
        golden.write_text(body)
    assert golden.exists(), f"no golden file for {name}: run pytest --update-golden"
    assert body == golden.read_text(), f"/metrics for {name} differs from {golden}"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_golden_passes_promtool_lint(name):
    promtool = require_tool("promtool")
    text = (GOLDEN / f"{name}.prom").read_text().replace("<volatile>", "1")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_every_fixture_has_a_golden_file_and_no_stale_ones():
    assert FIXTURE_NAMES, "no fixtures found"
    assert sorted(p.stem for p in GOLDEN.glob("*.prom")) == FIXTURE_NAMES
