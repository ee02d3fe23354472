"""Prediction beside reality for a running vLLM (issue 17), against the recorded /metrics answer of a
real `vllm serve` (vLLM 0.26.0, Phi-3.5-mini, H200: tests/data/vllm-h200/run-2.json)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, require_tool
from test_vllm_h200_replay import CASES, _predict, WEIGHTS
from vram_exporter.present import vllm_instances
from vram_exporter.sources import vllm_instance
from vram_exporter.present.exposition import Renderer

DATA = Path(__file__).parent.parent / "data" / "vllm-h200"


def _serve():
    (run, case), = [(r, c) for r, c in CASES if c["name"] == "serve-phi3.5-underscore-u0.5"]
    return run, case


def test_parse_the_real_vllm_metrics_answer():
    _, case = _serve()
    (info,) = vllm_instance.parse_cache_config_info(case["metrics_text"])
    assert (info.num_gpu_blocks, info.block_size, info.gpu_memory_utilization) == (10568, 16, 0.5)
    assert info.kv_cache_size_tokens == 168430  # vLLM's own count: (blocks x 16) / 1.0039 (its rounding)
    assert info.cache_dtype == "auto"


@pytest.mark.parametrize("text", ["", "vllm:num_requests_running 0\n",
                                  'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0\n'])
def test_no_usable_cache_config_info_is_an_error(text):
    with pytest.raises(ValueError):
        vllm_instance.parse_cache_config_info(text)


def test_prediction_beside_the_real_instance_is_within_tolerance_and_calibrates_o():
    run, case = _serve()
    (info,) = vllm_instance.parse_cache_config_info(case["metrics_text"])
    got = _predict(run, case)
    c = vllm_instance.compare("phi-3.5-mini", "127.0.0.1:8011", info, bytes_per_token=got["per_token"],
                              predicted_kv_bytes=got["kv"], budget_bytes=got["budget"], weights_bytes=WEIGHTS["phi-3.5-mini"])
    assert c.actual_kv_bytes == 10568 * 16 * 393216  # MHA: 2 x 32 layers x 32 heads x 96 x 2 bytes per token
    assert c.within_tolerance and abs(c.predicted_blocks - c.actual_blocks) <= c.tolerance_bytes // (16 * 393216)
    # vLLM's own log: 0.61 GiB peak activation + 0.22 GiB non-torch; ours from the blocks is within a block
    # (plus the log's two-decimal rounding of the weights we take from it)
    assert abs(c.observed_runtime_overhead - (0.61 + 0.22) * 2**30) <= 16 * 393216 + 0.015 * 2**30


def test_a_wrong_prediction_is_flagged():
    run, case = _serve()
    (info,) = vllm_instance.parse_cache_config_info(case["metrics_text"])
    got = _predict(run, case)
    # the manifest believes u = 0.45 while the instance runs 0.5: 7 GiB less KV predicted
    c = vllm_instance.compare("phi", "x:1", info, bytes_per_token=got["per_token"],
                              predicted_kv_bytes=got["kv"] - 7 * 2**30)
    assert not c.within_tolerance and c.observed_runtime_overhead is None


def test_families_render_and_lint(tmp_path):
    run, case = _serve()
    (info,) = vllm_instance.parse_cache_config_info(case["metrics_text"])
    got = _predict(run, case)
    c = vllm_instance.compare("phi-3.5-mini", "127.0.0.1:8011", info, bytes_per_token=got["per_token"],
                              predicted_kv_bytes=got["kv"], budget_bytes=got["budget"], weights_bytes=WEIGHTS["phi-3.5-mini"])
    body = Renderer().render(vllm_instances.families([c])).decode()
    assert f'vram_model_vllm_kv_cache_actual_bytes{{model="phi-3.5-mini",vllm_instance="127.0.0.1:8011"}} {c.actual_kv_bytes}' in body
    result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=body, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_url_from_manifest_or_gpustack():
    assert vllm_instance.metrics_url({"metrics_url": "http://h:8000/metrics"}) == "http://h:8000/metrics"
    assert vllm_instance.metrics_url({}, {"worker_ip": "10.0.0.5", "port": 40001}) == "http://10.0.0.5:40001/metrics"
    instance = json.loads((ROOT / "tests/fixtures/gpustack/model-instances.json").read_text())["items"][0]
    assert {"worker_ip", "port"} <= set(instance)  # GPUStack's real instance API has both fields
    assert vllm_instance.metrics_url({}, {"worker_ip": None, "port": None}) is None


def test_instance_alert_rules_with_promtool():
    rules = ROOT / "alerts" / "vram-exporter.rules.yml"
    out = subprocess.run([require_tool("promtool"), "check", "rules", str(rules)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    tests = ROOT / "tests" / "promtool" / "instances.test.yml"
    out = subprocess.run([require_tool("promtool"), "test", "rules", tests.name], capture_output=True, text=True,
                         cwd=tests.parent)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_the_exporter_reads_a_running_vllm_and_shows_it_beside_the_prediction(start_exporter, tmp_path):
    """End to end: a manifest model running on GPU 0 with a metrics_url; a server answers that URL with
    the recorded /metrics of the real `vllm serve` (Phi-3.5-mini, u = 0.5, H200). The exporter's own
    /metrics then carries the KV cache vLLM allocated next to the predicted one, the observed O, and
    the instance's up, and the verdicts assume the version it answers on /version (0.26.0, the recorded
    run's); when the vLLM stops answering, up goes to 0 and the comparison goes away."""
    import http.server
    import threading
    import time

    import yaml

    from conftest import free_port

    run, case = _serve()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            # vLLM's two routes (vllm/entrypoints/serve/instrumentator/basic.py and metrics.py)
            version = self.path == "/version"
            body = json.dumps({"version": run["vllm"]}).encode() if version else case["metrics_text"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json" if version else "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    vllm = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=vllm.serve_forever, daemon=True).start()
    idle = run["nvml_idle"]
    used = case["nvml_engine_up"]["used"] if "used" in case.get("nvml_engine_up", {}) else 0
    fixture = {"driver_version": run["driver"], "gpus": [{
        "index": 0, "name": run["gpu"], "uuid": "GPU-h200-0000", "pci_bus_id": "00000000:01:00.0",
        "memory": {"total": idle["total"], "reserved": idle["reserved"], "used": used,
                   "free": idle["total"] - idle["reserved"] - used}, "processes": [], "error": None}]}
    config = json.loads((DATA / "payload/models/phi-3.5-mini/config.json").read_text())
    manifest = {"models": [{"name": "phi-3.5-mini", "weights_bytes": WEIGHTS["phi-3.5-mini"], "config": config,
                            "backend_parameters": ["--gpu_memory_utilization=0.5"], "placed_on": [0],
                            "metrics_url": f"http://127.0.0.1:{port}/metrics"}]}
    (tmp_path / "fixture.yaml").write_text(yaml.safe_dump(fixture))
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    exporter = start_exporter("--nvml.fixture", str(tmp_path / "fixture.yaml"), "--manifest",
                              str(tmp_path / "manifest.yaml"), "--vllm.metrics-interval", "0.2")
    where = f'model="phi-3.5-mini",vllm_instance="127.0.0.1:{port}"'
    deadline = time.monotonic() + 10
    text = exporter.text()
    while f"vram_model_vllm_instance_up{{{where}}} 1" not in text and time.monotonic() < deadline:
        time.sleep(0.1)
        text = exporter.text()
    assert f"vram_model_vllm_kv_cache_actual_bytes{{{where}}} {10568 * 16 * 393216}" in text
    fit = json.loads(exporter.text("/api/v1/fit"))["models"][0]
    predicted = fit["checks"]["0"]["vllm_kv_cache"]["headroom_bytes"] + fit["kv_cache_required_bytes"]
    assert f"vram_model_vllm_kv_cache_predicted_bytes{{{where}}} {predicted}" in text
    assert f"vram_model_vllm_runtime_overhead_observed_bytes{{{where}}}" in text
    assert run["vllm"] == "0.26.0" and ('vram_model_engine_info{model="phi-3.5-mini",backend="vllm",version="0.26.0",'
                                        'why="the running vLLM answered 0.26.0 on /version"} 1') in text
    assert fit["engine_version"] == {"version": "0.26.0", "why": "the running vLLM answered 0.26.0 on /version"}
    vllm.shutdown()
    vllm.server_close()
    deadline = time.monotonic() + 10
    while f"vram_model_vllm_instance_up{{{where}}} 0" not in text and time.monotonic() < deadline:
        time.sleep(0.1)
        text = exporter.text()
    assert f"vram_model_vllm_instance_up{{{where}}} 0" in text
    assert "vram_model_vllm_kv_cache_actual_bytes{" not in text
    log = exporter.stop()
    assert log.count("vLLM of model phi-3.5-mini") == 1, log  # the error logged once, not at every read
