"""The workers' RAM and the instances' RAM claims as GPUStack's API gives them (status.memory,
system_reserved.ram, computed_resource_claim.ram, cpu_offloading), carried into the cluster replay
(policies/resource_view.py::ResourceView.allocatable)."""

from __future__ import annotations

import json
from pathlib import Path

from test_gpustack_live import QWEN_1_5B, QWEN_1_5B_WEIGHTS
from vram_exporter.sources.gpustack_api import GpuStackState, Model, ModelInstance, Worker
from vram_exporter.sources.gpustack_view import build_view

GIB = 2**30
CLAIM_20 = {"GPUSTACK_MODEL_VRAM_CLAIM": str(20 * GIB)}  # RAM claim: 2 GiB


def _model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "qwen"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(QWEN_1_5B))
    with open(directory / "model.safetensors", "wb") as f:
        f.truncate(QWEN_1_5B_WEIGHTS)
    return directory


def _cpu_worker(ram_total: int, reserved_ram: int) -> Worker:
    return Worker.model_validate({"id": 1, "name": "cpu", "cluster_id": 1, "state": "ready",
                                  "system_reserved": {"ram": reserved_ram, "vram": 0},
                                  "status": {"gpu_devices": [], "memory": {"total": ram_total}}})


def _state(tmp_path: Path, worker: Worker, held_ram: int) -> GpuStackState:
    path = str(_model_dir(tmp_path))
    models = tuple(Model.model_validate({"id": n, "name": f"m{n}", "cluster_id": 1, "backend": "Custom",
                                         "local_path": path, "env": CLAIM_20, "cpu_offloading": True})
                   for n in (1, 2))
    instances = (ModelInstance.model_validate({"id": 1, "model_id": 1, "state": "running", "worker_id": 1,
                                               "computed_resource_claim": {"vram": {}, "ram": held_ram}}),
                 ModelInstance.model_validate({"id": 2, "model_id": 2, "state": "pending"}))
    return GpuStackState((worker,), models, instances)


def _m2(state: GpuStackState):
    return next(v for v in build_view(state, worker_name=None, source="t").verdicts if v.name == "m2")


def test_a_cpu_only_model_takes_the_ram_left_after_the_reservation_and_the_placed_claims(tmp_path):
    # 8 GiB - 1 GiB reserved - 4 GiB claimed = 3 GiB >= 2 GiB: placed without GPUs
    verdict = _m2(_state(tmp_path, _cpu_worker(8 * GIB, GIB), 4 * GIB))
    (decision,) = verdict.decisions
    assert verdict.predicted_pending == 0
    assert (decision.worker, decision.gpus, decision.ram) == (1, (), 2 * GIB)


def test_a_cpu_only_model_short_of_ram_stays_pending_with_gpustacks_line(tmp_path):
    # 8 - 1 - 6 = 1 GiB < 2 GiB
    verdict = _m2(_state(tmp_path, _cpu_worker(8 * GIB, GIB), 6 * GIB))
    assert verdict.predicted_pending == 1
    assert "CPU-only inference is supported. Requires at least 2.0 GiB RAM." in verdict.note


def _vllm_state(tmp_path: Path, kv: dict) -> GpuStackState:
    worker = Worker.model_validate({"id": 1, "name": "w", "cluster_id": 1, "state": "ready",
                                    "status": {"gpu_devices": [{"index": 0, "type": "cuda",
                                                                "memory": {"total": 24 * GIB}}],
                                               "memory": {"total": 4 * GIB}}})
    model = Model.model_validate({"id": 2, "name": "m2", "cluster_id": 1, "backend": "vLLM",
                                  "local_path": str(_model_dir(tmp_path)), "extended_kv_cache": kv})
    return GpuStackState((worker,), (model,), (ModelInstance.model_validate({"id": 2, "model_id": 2}),))


def test_a_local_extended_kv_cache_needs_its_ram_on_the_worker(tmp_path):
    verdict = _m2(_vllm_state(tmp_path, {"enabled": True, "ram_size": 8}))  # 8 GiB > the worker's 4 GiB
    assert verdict.predicted_pending == 1
    assert "of VRAM and 8.0 GiB of RAM." in verdict.note


def test_a_shared_cache_service_claims_no_ram_of_the_worker(tmp_path):
    verdict = _m2(_vllm_state(tmp_path, {"enabled": True, "ram_size": 8, "mode": "shared"}))
    (decision,) = verdict.decisions
    assert verdict.predicted_pending == 0 and decision.ram is None
