"""The soak with churn, two minutes of it (issue 24): GPUStack mode of tools/soak.py.

Readings move every second, GPUStack's models and instances change every 10 s, and both upstreams
misbehave 10 s in every 30; a scrape every 100 ms. After warm-up, memory, open file descriptors and
threads stay flat, and every scrape answers. `make soak` runs the same for an hour.
"""

from __future__ import annotations

import json
import os
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import soak  # noqa: E402

MIB_IN_KIB = 1024


def test_two_minutes_of_churn_and_faults_leave_the_exporter_flat(tmp_path):
    out = tmp_path / "soak.json"
    duration = float(os.environ.get("VRAM_SOAK_SECONDS", "120"))
    assert soak.main(["--gpustack", "--duration", str(duration), "--warmup", "30", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["failed"] == 0 and result["scrapes"] > 5 * duration
    assert result["faults"] >= duration // 30 - 1 and result["churn_steps"] >= duration // 10 - 1
    assert result["rss_kib_max_after_warmup"] - result["rss_kib_after_warmup"] < 40 * MIB_IN_KIB, result
    # The endless bodies read up to their limits are given back (app/memory.py): it was +18 to +20 MiB.
    assert result["rss_kib_end"] - result["rss_kib_after_warmup"] < 10 * MIB_IN_KIB, result
    assert result["fds_end"] <= result["fds_after_warmup"] + 4, result
    assert result["threads_end"] <= result["threads_after_warmup"] + 4, result
    assert result["log_tracebacks"] == 0
