"""What the exporter served on a real H100 agrees with nvidia-smi at the same moment.

tests/data/h100-verify/ was recorded by tools/device_verify.sh on a real NVIDIA H100 80GB HBM3
(driver 580.159.04): /metrics and nvidia-smi's CSV, idle and with two processes holding memory.
"""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from compare_nvidia_smi import compare  # noqa: E402

DATA = ROOT / "tests" / "data" / "h100-verify"


@pytest.mark.parametrize("state, figures", [("idle", 4), ("loaded", 6)])
def test_every_figure_agrees_with_nvidia_smi(state, figures):
    rows = compare(*((DATA / name).read_text() for name in
                     (f"{state}.prom", f"{state}-smi-gpu.csv", f"{state}-smi-apps.csv")))
    assert len(rows) == figures
    assert [row for row in rows if not row[3]] == []


def test_a_wrong_figure_is_caught():
    metrics = (DATA / "loaded.prom").read_text().replace("5.039456256e+09", "5.2e+09")
    rows = compare(metrics, (DATA / "loaded-smi-gpu.csv").read_text(), (DATA / "loaded-smi-apps.csv").read_text())
    assert [row[0] for row in rows if not row[3]] == ["pid 684 (python3) used"]
