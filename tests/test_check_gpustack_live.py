"""`vram-exporter check --gpustack.*` against a real GPUStack 2.3.0 server (the harness of
test_gpustack_live.py, one server for this module): the cluster view and this node's verdicts once,
text or JSON, the exporter's own /api/v1/fit document, exit 0/1/2, and clear errors."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import exporter_command, free_port
from gpustack_live.harness import GIB, nvml_fixture, wait_for
from test_gpustack_live import (QWEN_1_5B, QWEN_1_5B_WEIGHTS, QWEN_7B, QWEN_7B_WEIGHTS, gpustack_pending,  # noqa: F401
                               live)

pytestmark = pytest.mark.gpustack_live


def check(live, *args: str, key=None) -> subprocess.CompletedProcess:  # noqa: F811 - live is the fixture's value
    return subprocess.run([*exporter_command(), "check", "--gpustack.url", live.server.url,
                           "--gpustack.api-key-file", str(key or live.key_file), *args],
                          capture_output=True, text=True, timeout=120)


def fixture_of(live, worker) -> str:  # noqa: F811
    path = live.work / f"nvml-{worker.name}.yaml"  # where live.exporter writes it: the same source label
    path.write_text(nvml_fixture(worker))
    return str(path)


def without_timestamps(report: dict) -> dict:
    return {**report, "gpustack": {**report["gpustack"], "last_success_timestamp": None}}


# First in this module: the server then holds only this model, so nothing anywhere is Pending.
def test_exit_0_when_gpustack_placed_everything(live):  # noqa: F811
    cluster = live.cluster("check-fits")
    worker = live.worker(cluster, "check-fits-node", [24564])
    model_id = live.server.create_model(cluster, "check-fits-qwen",
                                        live.model("check-fits-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS))
    assert gpustack_pending(live.server, model_id) == 0
    result = check(live, "--gpustack.worker-name", worker.name, "--nvml.fixture", fixture_of(live, worker))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok  check-fits-qwen: replicas 1, GPUStack pending 0, predicted 0: placed, both agree" in result.stdout
    assert "RUNNING on GPU 0" in result.stdout  # this node runs it, with GPUStack's own claim
    assert "0 of 1 models have instances pending" in result.stdout


def test_seed_pending_as_gpustack_decides_in_text_and_json(live):  # noqa: F811
    """The seed scenario (docs/design.md#the-seed-scenario-worked) on a real server: Pending there, Pending in check, with the same numbers and
    the fixes; the JSON is the exporter's /api/v1/fit for the same worker."""
    cluster = live.cluster("check-seed")
    worker = live.worker(cluster, "check-seed-node", [6138], reserved_gib=1)
    model_id = live.server.create_model(cluster, "check-seed-qwen",
                                        live.model("check-seed-qwen", QWEN_1_5B, QWEN_1_5B_WEIGHTS),
                                        backend_parameters=["--gpu-memory-utilization=0.9"])
    assert gpustack_pending(live.server, model_id) == 1
    fixture = fixture_of(live, worker)
    text = check(live, "--gpustack.worker-name", worker.name, "--nvml.fixture", fixture)
    assert text.returncode == 1, text.stderr
    out = text.stdout
    assert "NO  check-seed-qwen: replicas 1, GPUStack pending 1, predicted 1: Pending, both agree" in out
    assert "- The model requires approximately 5.45 GiB of VRAM." in out  # GPUStack's one text, no worker prefix
    assert "NO  check-seed-qwen: PENDING: GPUStack will not place it (vLLM alone would start on GPU 0)" in out
    assert "-> lower --system-reserved vram to 0 GiB and set --gpu-memory-utilization=0.91" in out
    assert "1 of 2 models have instances pending; 0 where the rulebooks and GPUStack disagree." in out

    result = check(live, "--gpustack.worker-name", worker.name, "--nvml.fixture", fixture, "--format", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    truth = {m["name"]: gpustack_pending(live.server, m["id"])
             for m in live.server.request("GET", "/v2/models?perPage=100")["items"]}
    assert {m["name"]: m["gpustack_pending"] for m in report["gpustack"]["models"]} == truth
    assert {m["name"]: m["predicted_pending"] for m in report["gpustack"]["models"]} == truth
    [model] = report["models"]
    assert (model["name"], model["schedulable"], model["estimate_bytes"]) == (
        "check-seed-qwen", False, int(QWEN_1_5B_WEIGHTS * 1.2) + 2 * GIB)
    assert report["gpus"][0]["gpustack"]["system_reserved"] == GIB
    exporter = live.exporter(worker)
    try:
        api = json.loads(exporter.text("/api/v1/fit"))
    finally:
        exporter.stop()
    assert without_timestamps(report) == without_timestamps(api)


def test_json_is_the_exporters_fit_where_the_cluster_places_a_pending_instance_here(live):  # noqa: F811
    """A 7B model waits while a small one holds one of two 16 GiB workers; once that is deleted the
    replay of GPUStack's scheduler places the pending instance over both workers, so part of it on this
    one: check's JSON is still the exporter's /api/v1/fit (the cluster's prediction included)."""
    cluster = live.cluster("check-predicted")
    workers = [live.worker(cluster, f"check-predicted-{n}", [16384]) for n in ("a", "b")]
    small = live.server.create_model(cluster, "check-predicted-small",
                                     live.model("check-predicted-small", QWEN_1_5B, QWEN_1_5B_WEIGHTS))
    big = live.server.create_model(cluster, "check-predicted-big",
                                   live.model("check-predicted-big", QWEN_7B, QWEN_7B_WEIGHTS))
    assert gpustack_pending(live.server, big) == 1
    live.server.request("DELETE", f"/v2/models/{small}")
    wait_for(lambda: not live.server.instances(small), "the small model's instance gone")
    worker = workers[0]
    fixture = fixture_of(live, worker)
    result = check(live, "--gpustack.worker-name", worker.name, "--nvml.fixture", fixture, "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    [gpu] = report["gpus"]
    assert gpu["gpustack"]["predicted_claims"] > 0  # the replay places the pending instance here
    exporter = live.exporter(worker)
    try:
        api = json.loads(exporter.text("/api/v1/fit"))
    finally:
        exporter.stop()
    assert without_timestamps(report) == without_timestamps(api)
    live.server.request("DELETE", f"/v2/models/{big}")  # nothing of this test left Pending for the next


def test_without_this_nodes_worker_the_cluster_view_alone(live):  # noqa: F811
    """From a terminal that is no worker (the default worker name is the host's name): every model of
    the server, GPUStack's verdict and ours; exit 1 since the seed model above stays Pending."""
    result = check(live, "--nvml.fixture", str(live.work / "nvml-check-seed-node.yaml"))
    assert result.returncode == 1, result.stderr
    assert "no GPUStack worker is named" in result.stdout and "the cluster view only" in result.stdout
    assert "check-seed-qwen: replicas 1, GPUStack pending 1, predicted 1" in result.stdout
    report = json.loads(check(live, "--format", "json", "--nvml.fixture",
                              str(live.work / "nvml-check-seed-node.yaml")).stdout)
    assert report["models"] == [] and report["gpustack"]["worker"] is None


def test_clear_errors_exit_2(live, tmp_path):  # noqa: F811
    wrong = tmp_path / "wrong-key"
    wrong.write_text("gpustack_0123456789abcdef_wrongwrongwrong\n")
    cases = {
        "a wrong key": (check(live, key=wrong),
                        "GPUStack refused the API key (401 on /v2/workers): check --gpustack.api-key-file"),
        "an unreadable key file": (check(live, key=tmp_path / "missing"),
                                   f"cannot read the GPUStack API key file {tmp_path / 'missing'}: No such file"),
        "an unknown worker": (check(live, "--gpustack.worker-name", "no-such-node"),
                              "--gpustack.worker-name 'no-such-node': no worker of"),
    }
    closed = f"http://127.0.0.1:{free_port()}"
    cases["nothing listening"] = (subprocess.run(
        [*exporter_command(), "check", "--gpustack.url", closed, "--gpustack.api-key-file", str(live.key_file)],
        capture_output=True, text=True, timeout=60), f"GET {closed}/v2/workers: Cannot connect to host")
    cases["not a URL"] = (subprocess.run(
        [*exporter_command(), "check", "--gpustack.url", "127.0.0.1:80", "--gpustack.api-key-file",
         str(live.key_file)], capture_output=True, text=True, timeout=60),
        "--gpustack.url '127.0.0.1:80': expected http(s)://HOST[:PORT]")
    for what, (result, message) in cases.items():
        assert result.returncode == 2, what
        assert message in result.stderr, f"{what}: {result.stderr}"
        assert "Traceback" not in result.stderr and result.stdout == "", what
    assert "check-seed-node" in cases["an unknown worker"][0].stderr  # it lists the workers there are
