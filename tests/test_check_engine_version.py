"""`vram-exporter check` says the engine version every verdict assumes, chosen as GPUStack chooses it: the
seed scenario on a CUDA 12.8 node (GPUStack's runner: vLLM 0.17.1) and a CUDA 13.0 node (vLLM 0.32.0), from a
manifest and from GPUStack's API (each GPU's runtime_version, the instance's and the model's versions)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import FIXTURES, ROOT, RecordedGpuStack
from test_check_command import check

SEED_FIXTURE = str(ROOT / "examples/seed/fixture.yaml")
RUNNER = "GPUStack's runner for CUDA {cuda} (cuda{cuda}, gpustack-runner 0.1.31.post4)"


def _seed_manifest(tmp_path, cluster: dict, model: dict | None = None):
    manifest = yaml.safe_load((ROOT / "examples/seed/manifest.yaml").read_text())
    manifest["cluster"].update(cluster)
    manifest["models"][0].update(model or {})
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


@pytest.mark.parametrize("cuda, vllm", [("12.8", "0.17.1"), ("13.0", "0.32.0")])
def test_seed_on_a_cuda_node_says_gpustacks_runner_version(tmp_path, cuda, vllm):
    manifest = _seed_manifest(tmp_path, {"cuda_version": cuda})
    report = json.loads(check("--manifest", manifest, "--nvml.fixture", SEED_FIXTURE, "--format", "json").stdout)
    (model,) = report["models"]
    assert model["engine_version"] == {"version": vllm, "why": RUNNER.format(cuda=cuda)}
    text = check("--manifest", manifest, "--nvml.fixture", SEED_FIXTURE).stdout
    assert f"    assumes vLLM {vllm}: {RUNNER.format(cuda=cuda)}\n" in text


def test_seed_without_a_cuda_version_says_the_version_is_unknown():
    text = check("--manifest", str(ROOT / "examples/seed/manifest.yaml"), "--nvml.fixture", SEED_FIXTURE).stdout
    assert "    assumes vLLM 0.33: version unknown: the rules of vLLM 0.33 are assumed\n" in text


def test_a_models_engine_version_wins_over_the_clusters(tmp_path):
    manifest = _seed_manifest(tmp_path, {"cuda_version": "12.8", "engine_version": {"vllm": "0.20.2"}},
                              {"engine_version": "0.22.1"})
    (model,) = json.loads(check("--manifest", manifest, "--nvml.fixture", SEED_FIXTURE,
                                "--format", "json").stdout)["models"]
    assert model["engine_version"] == {"version": "0.22.1", "why": "the manifest's engine_version for the model"}


def _gpustack_state(directory, cuda: str, instance: dict | None = None, model: dict | None = None) -> None:
    """The recorded API with seed-node's GPU on ``cuda``, and fields of seed-qwen's model and instance set."""
    directory.mkdir()
    docs = {kind: json.loads((FIXTURES / "gpustack" / f"{kind}.json").read_text())
            for kind in ("workers", "models", "model-instances")}
    for worker in docs["workers"]["items"]:
        for device in worker["status"]["gpu_devices"]:
            device["runtime_version"] = cuda
    for record in docs["models"]["items"]:
        if record["name"] == "seed-qwen":
            record.update(model or {})
    for record in docs["model-instances"]["items"]:
        if record["model_name"] == "seed-qwen":
            record.update(instance or {})
    for kind, document in docs.items():
        (directory / f"{kind}.json").write_text(json.dumps(document))


@pytest.mark.parametrize("cuda, state, expected", [
    ("12.8", {}, ("0.17.1", RUNNER.format(cuda="12.8"))),
    ("13.0", {}, ("0.32.0", RUNNER.format(cuda="13.0"))),
    ("13.0", {"model": {"backend_version": "0.20.2"}}, ("0.20.2", "the model's backend_version")),
])
def test_seed_from_gpustack_says_the_version_gpustack_deploys(tmp_path, cuda, state, expected):
    _gpustack_state(tmp_path / "gpustack", cuda, **state)
    key = tmp_path / "key"
    key.write_text("recorded\n")
    server = RecordedGpuStack(tmp_path / "gpustack")
    try:
        result = check("--gpustack.url", server.url, "--gpustack.api-key-file", str(key), "--gpustack.worker-name",
                       "seed-node", "--manifest", str(FIXTURES / "gpustack/overlay.yaml"), "--nvml.fixture",
                       SEED_FIXTURE, "--format", "json")
    finally:
        server.stop()
    (model,) = json.loads(result.stdout)["models"]
    assert (model["engine_version"]["version"], model["engine_version"]["why"]) == expected
