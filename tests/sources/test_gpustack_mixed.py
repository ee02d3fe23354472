"""A worker with an AMD and an NVIDIA GPU, as GPUStack's API lists it: both are index 0; its selectors see the
type grouped last only, and count an instance's claims only for the type it names (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

from test_gpustack_live import QWEN_1_5B, QWEN_1_5B_WEIGHTS
from vram_exporter.sources.gpustack_api import GpuStackState, Model, ModelInstance, Worker
from vram_exporter.sources.gpustack_view import build_view

GIB = 2**30
CARD = 16 * GIB


def _state(tmp_path: Path, held_type: str) -> GpuStackState:
    directory = tmp_path / "qwen"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(QWEN_1_5B))
    with open(directory / "model.safetensors", "wb") as f:
        f.truncate(QWEN_1_5B_WEIGHTS)
    mixed = Worker.model_validate({"id": 1, "name": "mix", "cluster_id": 1, "state": "ready", "status": {
        "gpu_devices": [{"index": 0, "type": "rocm", "memory": {"total": CARD}},
                        {"index": 0, "type": "cuda", "memory": {"total": CARD}}]}})
    models = tuple(Model.model_validate({"id": n, "name": f"m{n}", "cluster_id": 1, "backend": "vLLM",
                                         "local_path": str(directory)}) for n in (1, 2))
    held = ModelInstance.model_validate({"id": 1, "model_id": 1, "state": "running", "worker_id": 1,
                                         "gpu_indexes": [0], "gpu_type": held_type,
                                         "computed_resource_claim": {"vram": {"0": int(CARD * 0.9)}}})
    return GpuStackState((mixed,), models, (held, ModelInstance.model_validate({"id": 2, "model_id": 2})))


def _m2(state: GpuStackState):
    return next(v for v in build_view(state, worker_name=None, source="t").verdicts if v.name == "m2")


def test_a_claim_on_the_hidden_type_leaves_the_visible_gpu_free(tmp_path):
    verdict = _m2(_state(tmp_path, "rocm"))
    (decision,) = verdict.decisions
    assert verdict.predicted_pending == 0
    assert (decision.worker, decision.gpus, decision.candidates[0].gpu_type) == (1, (0,), "cuda")


def test_a_claim_on_the_visible_type_takes_its_gpu(tmp_path):
    assert _m2(_state(tmp_path, "cuda")).predicted_pending == 1
