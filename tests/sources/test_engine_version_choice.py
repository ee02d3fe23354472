"""The engine version of each model GPUStack runs or would place here, as GPUStack knows or picks it: the running
engine's own answer, the version GPUStack deployed, the model's backend_version, else the runner for the GPU's
CUDA; unknown (and said) where no CUDA runner applies. From a manifest: the model's, the cluster's, the node's CUDA."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from test_gpustack_view import recorded_models, recorded_state
from vram_exporter.rules.model import EngineVersion
from vram_exporter.sources.gpustack_api import GpuStackState
from vram_exporter.sources.gpustack_view import build_view
from vram_exporter.sources.manifest import ClusterSettings


def _node_versions(state: GpuStackState, worker: str = "error-node") -> dict[str, EngineVersion]:
    view = build_view(state, worker_name=worker, source="recorded", read_model=recorded_models)
    return {m.name: m.engine_version for m in view.node_models.models}


def _edited(*, gpu: dict | None = None, instance: dict | None = None, model: dict | None = None) -> GpuStackState:
    state = recorded_state()
    workers = tuple(w.model_copy(update={"status": w.status.model_copy(update={"gpu_devices": [
        g.model_copy(update=gpu or {}) for g in w.status.gpu_devices]})}) for w in state.workers)
    instances = tuple(i.model_copy(update=instance or {}) if i.model_name == "error-first" else i
                      for i in state.instances)
    models = tuple(m.model_copy(update=model or {}) if m.name == "error-first" else m for m in state.models)
    return GpuStackState(workers, models, instances)


RUNNER_13 = EngineVersion("0.32.0", "GPUStack's runner for CUDA 13.0 (cuda13.0, gpustack-runner 0.1.31.post4)")


def test_recorded_workers_on_cuda_13_get_vllm_0_32():
    assert _node_versions(recorded_state()) == {"error-first": RUNNER_13, "error-second": RUNNER_13}


def test_a_running_instance_says_its_own_version_first():
    versions = _node_versions(_edited(instance={"api_detected_backend_version": "0.18.0",
                                                "backend_version": "0.17.1"}, model={"backend_version": "0.17.1"}))
    assert versions["error-first"] == EngineVersion("0.18.0", "the running engine reports it")
    assert versions["error-second"] == RUNNER_13  # another model: its own choice
    deployed = _node_versions(_edited(instance={"backend_version": "0.17.1"}, model={"backend_version": "0.22.1"}))
    assert deployed["error-first"] == EngineVersion("0.17.1", "the version GPUStack deployed the instance with")


def test_the_gpus_cuda_picks_the_runner_and_no_cuda_runner_is_said_unknown():
    assert _node_versions(_edited(gpu={"runtime_version": "12.8"}))["error-second"].version == "0.17.1"
    assert _node_versions(_edited(gpu={"runtime_version": None}))["error-second"] == EngineVersion(
        "0.32.0", "GPUStack's runner for no CUDA version known: the newest (cuda13.0, gpustack-runner 0.1.31.post4)")
    rocm = _node_versions(_edited(gpu={"type": "rocm", "runtime_version": "6.2"}))["error-second"]
    assert rocm.why == "version unknown: the rules of vLLM 0.33 are assumed"


def test_manifest_cluster_versions():
    assert ClusterSettings(engine_version={"sglang": "0.5.23"}).engine_version_of("sglang") == EngineVersion(
        "0.5.23", "the manifest's cluster engine_version")
    assert ClusterSettings(cuda_version="12.9").engine_version_of("sglang").version == "0.5.18"
    assert ClusterSettings(vllm_version="0.26", cuda_version="12.9").engine_version_of("vllm") == EngineVersion(
        "0.26", "the manifest's cluster vllm_version")
    with pytest.raises(ValidationError, match="give the vLLM version once"):
        ClusterSettings(vllm_version="0.26", engine_version={"vllm": "0.17.1"})
    with pytest.raises(ValidationError):
        ClusterSettings(engine_version={"custom": "1.0"})


def test_a_manifest_leaves_the_default_utilization_to_the_vllm_version():
    """No cluster vllm_default_gpu_memory_utilization: each model's vLLM runs its version's own default (0.9 in
    0.17.1 on CUDA 12.8, 0.92 in 0.32.0 on 13.0); a value given still applies to every version."""
    from vram_exporter.rules.backends.vllm import versions
    settings = {"12.8": ClusterSettings(cuda_version="12.8"), "13.0": ClusterSettings(cuda_version="13.0")}
    assert all(s.to_cluster().vllm_default_gpu_memory_utilization is None for s in settings.values())
    gmu = {cuda: versions.rules_for(s.engine_version_of("vllm").version).gmu(None) for cuda, s in settings.items()}
    assert gmu == {"12.8": 0.9, "13.0": 0.92}
    given = ClusterSettings(cuda_version="12.8", vllm_default_gpu_memory_utilization=0.8).to_cluster()
    assert given.vllm_default_gpu_memory_utilization == 0.8
