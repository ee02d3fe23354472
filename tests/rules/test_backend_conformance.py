"""GPUStack 2.3.0's own SGLang and custom-backend selectors (gpustack==2.3.0 in .venv-gpustack) against
our ports, on random scenarios (conformance/backends.py): every verdict, GPU set, claim, fraction and
"No suitable workers" text must agree. `make conformance SCENARIOS=500` runs more of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def gpustack_python() -> Path:
    python = Path(os.environ.get("GPUSTACK_PYTHON", ROOT / ".venv-gpustack" / "bin" / "python"))
    if not python.exists():
        pytest.fail(f"{python} is missing: `make test` installs gpustack==2.3.0 in .venv-gpustack")
    return python


@pytest.mark.parametrize("selector", ["sglang", "custom"])
def test_ports_agree_with_gpustacks_own_selector(selector):
    run = subprocess.run([sys.executable, str(ROOT / "conformance" / "run.py"), "--gpustack-python",
                          str(gpustack_python()), "--scenarios", "150", "--seed", "7", "--selector", selector],
                         capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "150/150 scenarios" in run.stdout
