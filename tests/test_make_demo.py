"""`make demo` as the README promises: it serves the seed scenario with its manifest on :9845."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request

from conftest import ROOT, free_port, require_tool


def test_make_demo_serves_the_seed_verdict():
    make = require_tool("make")
    port = free_port()
    # The repository's own .venv, which `make test` has just made (so nothing is installed again).
    proc = subprocess.Popen([make, "demo", f"LISTEN=127.0.0.1:{port}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a first run installs the venv
        body = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
                    break
            except OSError:
                time.sleep(0.3)
        assert 'vram_gpu_info{gpu="0",uuid="GPU-5eed0a20-0000-4a20-8c1e-000000006138",name="NVIDIA RTX A2000"' in body
        assert 'vram_model_schedulable{model="qwen2.5-1.5b-instruct"} 0' in body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=20)[0]
    assert "http://localhost" in output and "the explain page" in output
