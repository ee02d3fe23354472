"""`vram-exporter check` as a user runs it: verdicts, GPUStack's numbers, computed fixes, exit codes."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from vram_exporter.app.exporter import Exporter
from vram_exporter.sources.fake_nvml import FakeNvml
from vram_exporter.sources.fixture import load as load_fixture
from vram_exporter.sources.manifest import load_manifest
from vram_exporter.sources.nvml import NvmlReader

from conftest import FIXTURES, ROOT, ExporterProcess, RecordedGpuStack, exporter_command

SEED = ["--manifest", str(ROOT / "examples/seed/manifest.yaml"),
        "--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml")]
NODE8 = ["--manifest", str(ROOT / "examples/node-8xh100/manifest.yaml"),
         "--nvml.fixture", str(ROOT / "examples/node-8xh100/fixture.yaml")]


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*exporter_command(), "check", *args], capture_output=True, text=True, timeout=60)


def test_seed_text_shows_pending_with_gpustacks_numbers_and_fixes():
    result = check(*SEED)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "PENDING: GPUStack will not place it (vLLM alone would start on GPU 0)" in out
    for figure in ("5.45 GiB", "4.99 GiB", "83.32%", "6.06 GiB"):
        assert figure in out
    assert "no value of --gpu-memory-utilization from 0.50 to 0.99 makes it fit" in out
    assert "lowering the worker's --system-reserved vram alone does not help, even to 0" in out
    assert "-> lower --system-reserved vram to 0 GiB and set --gpu-memory-utilization=0.91" in out
    assert "-> pin it to GPU 0 (gpu_selector)" in out
    assert out.index("-> pin it to GPU 0") < out.index("x  lowering the worker's")  # what works first
    assert "0 of 1 models fit." in out


def test_seed_json_follows_the_design_shape():
    result = check(*SEED, "--format", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert set(report) >= {"gpus", "models"}
    (model,) = report["models"]
    assert set(model) >= {"name", "schedulable", "startable", "gpus", "checks", "reasons", "fixes"}
    assert (model["schedulable"], model["startable"], model["gpus"]) == (False, False, [])
    checks = model["checks"]["0"]
    assert not checks["gpustack_estimate"]["passed"] and not checks["gpustack_allocatable"]["passed"]
    assert checks["vllm_free_memory"]["passed"] and checks["vllm_kv_cache"]["passed"]
    assert model["estimate_bytes"] == 5_852_444_220 and model["kv_cache_required_bytes"] == 939_982_848
    working = [f["action"] for f in model["fixes"] if f["works"]]
    assert any("GPUSTACK_MODEL_VRAM_CLAIM=" in a for a in working)


def test_exit_0_when_everything_fits(tmp_path):
    fixed = (ROOT / "examples/seed/manifest.yaml").read_text().replace(
        "system_reserved_vram: 1GiB", "system_reserved_vram: 0").replace(
        '"--gpu-memory-utilization=0.9"', '"--gpu-memory-utilization=0.91"')
    manifest = tmp_path / "fixed.yaml"
    manifest.write_text(fixed)
    result = check("--manifest", str(manifest), "--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml"))
    assert result.returncode == 0, result.stdout
    assert "FITS on GPU 0" in result.stdout and "1 of 1 models fit." in result.stdout


def test_exit_2_on_a_bad_manifest_naming_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: x\n    weights_byte: 1\n")
    result = check("--manifest", str(bad), "--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml"))
    assert result.returncode == 2
    assert f"{bad}:3: models[0].weights_byte: unknown key" in result.stderr


def test_eight_gpu_node_verdicts():
    report = json.loads(check(*NODE8, "--format", "json").stdout)
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["llama-3.1-70b-instruct"]["placed"] and by_name["llama-3.1-70b-instruct"]["gpus"] == [0, 1]
    assert not by_name["qwen2.5-72b-instruct"]["schedulable"]
    deepseek = by_name["deepseek-v2-lite-chat"]
    assert deepseek["schedulable"] and not deepseek["startable"]  # the notebook on GPU 5 holds memory
    assert deepseek["kv_cache_bytes_per_token"] == 27 * (512 + 64) * 2
    phi = by_name["phi-3.5-mini-instruct"]
    assert phi["gpu_memory_utilization"] == {"gpustack": 0.9, "vllm": 0.3, "mismatch": True}
    assert by_name["llama-3.1-8b-long-context"]["kv_cache_bytes_per_token"] == 2 * 32 * 8 * 128 * 1


def test_every_working_fix_really_works(tmp_path):
    """Apply each fix the check proposes for the seed and run check again: it must then fit."""
    import yaml

    report = json.loads(check(*SEED, "--format", "json").stdout)
    fixes = {f["knob"]: f for f in report["models"][0]["fixes"] if f["works"]}
    base = yaml.safe_load((ROOT / "examples/seed/manifest.yaml").read_text())
    applied = {
        "system_reserved_vram+gpu_memory_utilization": _apply(base, reserved=0, gmu=_number_after(
            fixes["system_reserved_vram+gpu_memory_utilization"]["action"], "--gpu-memory-utilization=")),
        "vram_claim": _apply(base, env_claim=int(_number_after(fixes["vram_claim"]["action"], "CLAIM=")),
                             gmu=_number_after(fixes["vram_claim"]["action"], "--gpu-memory-utilization=")),
        "gpu_selector": _apply(base, pinned=[0]),
    }
    for knob, manifest in applied.items():
        path = tmp_path / f"{knob}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        result = check("--manifest", str(path), "--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml"))
        assert result.returncode == 0, (knob, result.stdout)


def _number_after(text: str, marker: str) -> float:
    tail = text.split(marker, 1)[1]
    return float(tail.split()[0].rstrip(",)"))


def _apply(base, *, reserved=None, gmu=None, env_claim=None, pinned=None):
    import copy

    manifest = copy.deepcopy(base)
    model = manifest["models"][0]
    if reserved is not None:
        manifest["cluster"]["system_reserved_vram"] = reserved
    if gmu is not None:
        model["backend_parameters"] = [f"--gpu-memory-utilization={gmu}"]
    if env_claim is not None:
        model["env"] = {"GPUSTACK_MODEL_VRAM_CLAIM": str(env_claim)}
    if pinned is not None:
        model["pinned_gpus"] = pinned
    return manifest


def test_check_reads_gpustack_once_as_recorded(recorded_gpustack, tmp_path):
    """With GPUStack as the source (its recorded answers; tests/test_check_gpustack_live.py runs the
    real server): every model's pending count as the API says it, ours beside it, this node's verdicts."""
    from conftest import FIXTURES

    key = tmp_path / "key"
    key.write_text("recorded\n")
    args = ["--gpustack.url", recorded_gpustack.url, "--gpustack.api-key-file", str(key),
            "--gpustack.worker-name", "seed-node", "--manifest", str(FIXTURES / "gpustack/overlay.yaml"),
            "--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml")]
    result = check(*args, "--format", "json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    models = json.loads((FIXTURES / "gpustack/models.json").read_text())["items"]
    instances = json.loads((FIXTURES / "gpustack/model-instances.json").read_text())["items"]
    truth = {m["name"]: sum(1 for i in instances if i["model_id"] == m["id"] and i["state"] == "pending")
             for m in models}
    assert {m["name"]: m["gpustack_pending"] for m in report["gpustack"]["models"]} == truth
    assert {m["name"]: m["predicted_pending"] for m in report["gpustack"]["models"]} == truth
    assert [m["name"] for m in report["models"]] == ["seed-qwen"] and report["gpustack"]["worker"] == "seed-node"
    text = check(*args).stdout
    assert "NO  seed-qwen: replicas 1, GPUStack pending 1, predicted 1: Pending, both agree" in text
    assert "7 of 11 models have instances pending; 0 where the rulebooks and GPUStack disagree." in text


def _predicted_here_state(directory) -> None:
    """The recorded API, edited: seed-node and alone-node (24 GiB each) in one cluster, and both their
    models (at utilization 0.4) pending there. GPUStack's scheduler, replayed over the cluster,
    spreads them: one instance is predicted onto seed-node, where the node alone would place both."""
    directory.mkdir()
    docs = {kind: json.loads((FIXTURES / "gpustack" / f"{kind}.json").read_text())
            for kind in ("workers", "models", "model-instances")}
    for worker in docs["workers"]["items"]:
        if worker["name"] in ("seed-node", "alone-node"):
            worker["cluster_id"] = 1
            for device in worker["status"]["gpu_devices"]:
                device["memory"]["total"] = 24 * 2**30
    moved = {m["id"] for m in docs["models"]["items"] if m["name"] in ("seed-qwen", "alone-qwen")}
    for model in docs["models"]["items"]:
        if model["id"] in moved:
            model["cluster_id"], model["backend_parameters"] = 1, ["--gpu-memory-utilization=0.4"]
    for instance in docs["model-instances"]["items"]:
        if instance["model_id"] in moved:
            instance["cluster_id"] = 1
    for kind, document in docs.items():
        (directory / f"{kind}.json").write_text(json.dumps(document))


def _without_timestamps(report: dict) -> dict:
    return {**report, "gpustack": {**report["gpustack"], "last_success_timestamp": None}}


def test_check_json_is_the_exporters_fit_document_where_the_cluster_places_a_pending_instance_here(tmp_path):
    """``check --gpustack.url`` judges the node on the inputs ``serve`` builds, the cluster-wide
    prediction included: its JSON is the exporter's /api/v1/fit for the same state and flags."""
    _predicted_here_state(tmp_path / "gpustack")
    fixture = tmp_path / "nvml.yaml"
    fixture.write_text((ROOT / "examples/seed/fixture.yaml").read_text().replace("6436159488", str(24 * 2**30)))
    key = tmp_path / "key"
    key.write_text("recorded\n")
    server = RecordedGpuStack(tmp_path / "gpustack")
    try:
        flags = ["--gpustack.url", server.url, "--gpustack.api-key-file", str(key), "--gpustack.worker-name",
                 "seed-node", "--manifest", str(FIXTURES / "gpustack/overlay.yaml"), "--nvml.fixture", str(fixture)]
        result = check(*flags, "--format", "json")
        assert result.returncode in (0, 1), result.stderr
        report = json.loads(result.stdout)
        exporter = ExporterProcess(*flags)
        try:
            with exporter.get("/api/v1/fit") as response:
                api = json.loads(response.read())
        finally:
            exporter.stop()
    finally:
        server.stop()
    [gpu] = report["gpus"]
    # The replay puts one of the two pending instances here (0.4 of the card), not both.
    assert 0 < gpu["gpustack"]["predicted_claims"] < 0.5 * 24 * 2**30
    assert _without_timestamps(report) == _without_timestamps(api)
    # Each pending instance's decision: the claim GPUStack would book (0.4 of a 24 GiB card), chosen among
    # the candidates its selector listed, and the two spread over the two workers.
    decisions = [d for m in report["gpustack"]["models"] if m["name"] in ("seed-qwen", "alone-qwen")
                 for d in m["decisions"]]
    assert len(decisions) == 2 and all(d["placed"] for d in decisions)
    for decision in decisions:
        [claim] = decision["claims"]
        assert claim["worker"] == decision["worker"] and 0.39 < claim["bytes"] / (24 * 2**30) < 0.41
        chosen = {key: decision[key] for key in ("worker", "gpus", "subordinate_workers", "claims")}
        assert chosen in decision["candidates"]
    assert len({d["worker"] for d in decisions}) == 2


@pytest.mark.parametrize(("args", "message"), [
    ([], "check needs --manifest FILE (the models) or --gpustack.url URL (GPUStack's models)"),
    (["--gpustack.worker-name", "node"], "--gpustack.worker-name needs --gpustack.url"),
    (["--gpustack.url", "http://127.0.0.1:1"], "--gpustack.url needs --gpustack.api-key-file FILE"),
    (["--gpustack.url", "gpustack.example", "--gpustack.api-key-file", "k"],
     "--gpustack.url 'gpustack.example': expected http(s)://HOST[:PORT]"),
])
def test_check_gpustack_flag_errors_exit_2(args, message):
    result = check(*args, "--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml"))
    assert result.returncode == 2 and message in result.stderr, result.stderr


BOOKED_VS_USED = ["--manifest", str(ROOT / "examples/booked-vs-used/manifest.yaml"),
                  "--nvml.fixture", str(ROOT / "examples/booked-vs-used/fixture.yaml"),
                  "--processes.proc-root", str(ROOT / "examples/booked-vs-used/proc")]


def test_check_manifest_shows_booked_against_used_as_the_exporters_fit_document():
    """A manifest whose running models say their ``processes``: ``check`` gives the ``usage`` that the
    exporter's /api/v1/fit gives for the same files, and says the overrun and the idle claim in text."""
    result = check(*BOOKED_VS_USED, "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    usage = json.loads(result.stdout)["usage"]
    exporter = ExporterProcess(*BOOKED_VS_USED)
    try:
        with exporter.get("/api/v1/fit") as response:
            api = json.loads(response.read())
    finally:
        exporter.stop()
    assert usage == api["usage"]
    rows = {row["instance"]: row for gpu in usage for row in gpu["instances"]}
    assert rows["qwen2.5-7b-instruct"]["overrun"] and rows["mistral-7b-v0.1"]["idle_claim"]
    text = check(*BOOKED_VS_USED).stdout
    assert "qwen2.5-7b-instruct: booked 35.84 GiB, used 60.00 GiB OVERRUN" in text
    assert "mistral-7b-v0.1: booked 31.86 GiB, used 0.00 GiB CLAIM WITHOUT PROCESS" in text


def test_check_manifest_without_processes_has_no_usage():
    assert "usage" not in json.loads(check(*SEED, "--format", "json").stdout)


def test_a_custom_model_judged_by_its_claim_alone_is_checked_and_served(tmp_path):
    """GPUStack reads nothing of a custom-backend model whose env gives GPUSTACK_MODEL_VRAM_CLAIM: neither
    does the exporter, and every output copes with a weights size it never read."""
    manifest = tmp_path / "claim.yaml"
    manifest.write_text("models:\n  - name: omni\n    backend: custom\n"
                        "    env: {GPUSTACK_MODEL_VRAM_CLAIM: '2147483648'}\n")
    fixture = ROOT / "examples/seed/fixture.yaml"
    result = check("--manifest", str(manifest), "--nvml.fixture", str(fixture), "--format", "json")
    assert result.returncode == 0, result.stderr
    (model,) = json.loads(result.stdout)["models"]
    assert model["name"] == "omni" and model["estimate_bytes"] == 2**31
    exporter = Exporter(NvmlReader(FakeNvml(load_fixture(fixture)), proc_root=None), manifest=load_manifest(manifest))
    try:
        body = asyncio.run(exporter.scrape()).content.decode()
    finally:
        exporter.close()
    assert 'vram_model_estimate_bytes{model="omni"} 2147483648' in body
    assert 'vram_model_weights_bytes{model="omni"}' not in body
