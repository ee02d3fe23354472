"""A manifest's workers: `vram-exporter check` answers where GPUStack would place each model in the
whole cluster, and the answer is the one the exporter gives from GPUStack's API for the same cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import exporter_command
from vram_exporter.sources import manifest_workers as manifest_cluster
from vram_exporter.sources.manifest import load_manifest, read_model_directory
from vram_exporter.sources.gpustack_api import GpuStackState, Model, ModelInstance, Worker
from vram_exporter.sources.gpustack_view import _requests, _specs, replay_state
from vram_exporter.sources.yamlfile import InputFileError

QWEN_1_5B = ("weights_bytes: 3087467144\n    config: {num_hidden_layers: 28, num_attention_heads: 12, "
             "num_key_value_heads: 2, hidden_size: 1536, vocab_size: 151936, torch_dtype: bfloat16, "
             "max_position_embeddings: 32768}")
QWEN_7B = ("weights_bytes: 15231233024\n    config: {num_hidden_layers: 28, num_attention_heads: 28, "
           "num_key_value_heads: 4, hidden_size: 3584, vocab_size: 152064, torch_dtype: bfloat16, "
           "max_position_embeddings: 32768}")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def check(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*exporter_command(), "check", "--manifest", str(path), *args],
                          capture_output=True, text=True, timeout=60)


TWO_SMALL_WORKERS = """
workers:
  - name: node-a
    gpus: [16GiB]
  - name: node-b
    gpus: [16GiB]
models:
{placed}  - name: qwen-7b
    {qwen7b}
"""


def test_a_model_too_big_for_any_worker_is_spread_over_two(tmp_path):
    path = write(tmp_path, TWO_SMALL_WORKERS.format(placed="", qwen7b=QWEN_7B))
    result = check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK  qwen-7b: 1/1 replicas placed: node-a GPU 0 + node-b GPU 0" in result.stdout
    [verdict] = json.loads(check(path, "--format", "json").stdout)["cluster"]
    claim = int(16 * 2**30 * 0.9)  # each 16 GiB card, at vLLM's 0.9 as GPUStack books it
    spread = {"worker": "node-a", "gpus": [0], "overcommit": False, "subordinates": [{"worker": "node-b", "gpus": [0]}],
              "claims": [{"worker": "node-a", "gpu": 0, "bytes": claim}, {"worker": "node-b", "gpu": 0, "bytes": claim}]}
    assert verdict["placed"] == [dict(spread, candidates=[spread])]  # the selector's only candidate


def test_a_running_model_holds_its_worker_and_the_spread_fails(tmp_path):
    placed = f"  - name: small\n    worker: node-a\n    placed_on: [0]\n    {QWEN_1_5B}\n"
    result = check(write(tmp_path, TWO_SMALL_WORKERS.format(placed=placed, qwen7b=QWEN_7B)))
    assert result.returncode == 1
    assert "NO  qwen-7b: 0/1 replicas placed: nowhere" in result.stdout
    assert "Cannot find a suitable worker combination" in result.stdout
    assert "small" not in result.stdout.split("\n", 1)[1]  # running models are not candidates


def test_binpack_fills_one_gpu_where_spread_takes_the_other(tmp_path):
    text = """
workers:
  - name: node
    gpus: [24564MiB, 24564MiB]
models:
  - name: a
    placement_strategy: {strategy}
    backend_parameters: ["--gpu-memory-utilization=0.4"]
    replicas: 2
    {qwen}
"""
    gpus = {}
    for strategy in ("spread", "binpack"):
        path = write(tmp_path, text.format(strategy=strategy, qwen=QWEN_1_5B))
        [verdict] = json.loads(check(path, "--format", "json").stdout)["cluster"]
        gpus[strategy] = [p["gpus"] for p in verdict["placed"]]
    assert gpus == {"spread": [[0], [1]], "binpack": [[0], [0]]}


def test_bad_cluster_fields_name_the_file_and_what_is_wrong(tmp_path):
    text = TWO_SMALL_WORKERS.format(placed="", qwen7b=QWEN_7B) + "    gpu_ids: [node-z:cuda:0]\n"
    result = check(write(tmp_path, text))
    assert result.returncode == 2
    assert "cluster.yaml" in result.stderr and "'node-z:cuda:0' names no GPU of the manifest's workers" in result.stderr


def test_serve_refuses_a_manifest_with_workers(tmp_path):
    path = write(tmp_path, TWO_SMALL_WORKERS.format(placed="", qwen7b=QWEN_7B))
    with pytest.raises(InputFileError, match="workers.*read by `vram-exporter check`"):
        load_manifest(path)


def test_the_manifest_answer_is_the_one_the_exporter_gives_from_gpustacks_api(tmp_path):
    """The same cluster, once as a manifest and once as GPUStack's API would list it (every instance
    pending, in creation order): the same worker and GPUs for every replica."""
    text = """
workers:
  - name: w1
    gpus: [24564MiB, 24564MiB]
  - name: w2
    gpus: [16GiB]
    system_reserved_vram: 1GiB
  - name: w3
    gpus: [16GiB]
models:
  - name: m1
    replicas: 3
    gpu_ids: [w1:cuda:0, w1:cuda:1, w2:cuda:0]
    backend_parameters: ["--gpu-memory-utilization=0.3"]
    {qwen}
  - name: m2
    placement_strategy: binpack
    {qwen7b}
  - name: m3
    replicas: 2
    backend_parameters: ["--gpu-memory-utilization=0.5"]
    {qwen}
""".format(qwen=QWEN_1_5B, qwen7b=QWEN_7B)
    from_manifest, from_api = _both_answers(tmp_path, text)
    assert from_manifest == from_api
    assert len(from_manifest) == 5  # m1 x3 one GPU each, m2 spread or on w1, m3 one of two


def _both_answers(tmp_path: Path, text: str) -> tuple[list, list]:
    """Each placed replica (model, worker, GPUs, subordinates), from the manifest and from the same cluster
    as GPUStack's API lists it."""
    manifest = load_manifest(write(tmp_path, text), cluster=True)
    from_manifest = [(v.model, p.worker, p.gpus, p.subordinates) for v in manifest_cluster.place(manifest)
                     for p in v.placed]
    state = _as_gpustack_state(manifest, tmp_path)
    specs, _ = _specs(state.models, None, read_model_directory)
    names = {w.id: w.name for w in state.workers}
    from_api = []
    for verdict in sorted(replay_state(state, _requests(state, specs)).values(), key=lambda v: v.instance):
        if verdict.placed:
            others = {}
            for worker, index in sorted(verdict.claims):
                if worker != verdict.worker:
                    others.setdefault(names[worker], []).append(index)
            from_api.append((verdict.model, names[verdict.worker], tuple(sorted(verdict.gpus)),
                             tuple((w, tuple(g)) for w, g in others.items())))
    return from_manifest, from_api


def _as_gpustack_state(manifest, tmp_path: Path) -> GpuStackState:
    workers = tuple(Worker.model_validate({
        "id": n + 1, "name": w.name, "cluster_id": 1, "state": "ready",
        "system_reserved": {"vram": w.system_reserved_vram or 0},
        "status": {"gpu_devices": [{"index": i, "memory": {"total": t}} for i, t in enumerate(w.gpus)]},
    }) for n, w in enumerate(manifest.workers))
    models, instances = [], []
    for n, (spec, entry) in enumerate(zip(manifest.models, manifest.entries)):
        directory = tmp_path / spec.name
        directory.mkdir()
        config = entry.config
        (directory / "config.json").write_text(json.dumps(config))
        with open(directory / "model.safetensors", "wb") as f:
            f.truncate(spec.weights_bytes)
        models.append(Model.model_validate({
            "id": n + 1, "name": spec.name, "cluster_id": 1, "backend": "vLLM", "replicas": spec.replicas,
            "backend_parameters": list(spec.backend_parameters), "local_path": str(directory),
            "placement_strategy": entry.placement_strategy,
            "gpu_selector": {"gpu_ids": entry.gpu_ids, "gpus_per_replica": entry.gpus_per_replica}
            if entry.gpu_ids else None}))
        for _ in range(spec.replicas):
            instances.append(ModelInstance.model_validate({"id": len(instances) + 1, "model_id": n + 1}))
    return GpuStackState(workers, tuple(models), tuple(instances))


ONE_WORKER_TWO_GPUS = """
workers:
  - name: w1
    gpus: [16GiB, 16GiB]
models:
  - name: qwen
    pinned_gpus: [0, 1]
{per_replica}    {qwen}
"""


def test_gpus_per_replica_smaller_than_the_selection_takes_that_many_gpus(tmp_path):
    """Two GPUs selected: GPUStack fills in 2 (one replica, TP 2); a user-given 1 puts the replica on
    one GPU, the one the spread scorer picks."""
    placed = {}
    for given in ("", "    gpus_per_replica: 1\n"):
        path = write(tmp_path, ONE_WORKER_TWO_GPUS.format(per_replica=given, qwen=QWEN_1_5B))
        [verdict] = manifest_cluster.place(load_manifest(path, cluster=True))
        placed[given] = [len(p.gpus) for p in verdict.placed]
    assert placed == {"": [2], "    gpus_per_replica: 1\n": [1]}


@pytest.mark.parametrize("per_replica, problem", [
    ("    gpus_per_replica: 3\n", "gpus_per_replica 3 exceeds the 2 GPUs selected"),
    ("    gpus_per_replica: 0\n", "greater than or equal to 1"),
])
def test_bad_gpus_per_replica_names_the_file_and_line(tmp_path, per_replica, problem):
    result = check(write(tmp_path, ONE_WORKER_TWO_GPUS.format(per_replica=per_replica, qwen=QWEN_1_5B)))
    assert result.returncode == 2
    assert "cluster.yaml:8: models[0].gpus_per_replica" in result.stderr and problem in result.stderr, result.stderr


def test_gpus_per_replica_needs_a_selection(tmp_path):
    text = ONE_WORKER_TWO_GPUS.format(per_replica="    gpus_per_replica: 1\n", qwen=QWEN_1_5B)
    result = check(write(tmp_path, text.replace("    pinned_gpus: [0, 1]\n", "")))
    assert result.returncode == 2
    assert "cluster.yaml:7: models[0].gpus_per_replica" in result.stderr
    assert "gpus_per_replica splits a manual selection: it needs pinned_gpus or gpu_ids" in result.stderr


def test_a_given_gpus_per_replica_is_the_one_gpustacks_api_records(tmp_path):
    """The model as GPUStack's API records it (gpu_selector.gpus_per_replica 1 with four GPUs selected)
    is placed as the manifest's: one GPU per replica (GPUStack's own answer: tests/rules/test_gpus_per_replica.py)."""
    text = """
workers:
  - name: w1
    gpus: [16GiB, 16GiB, 24GiB, 24GiB]
models:
  - name: qwen
    replicas: 2
    gpu_ids: [w1:cuda:0, w1:cuda:1, w1:cuda:2, w1:cuda:3]
    gpus_per_replica: 1
    {qwen}
""".format(qwen=QWEN_1_5B)
    from_manifest, from_api = _both_answers(tmp_path, text)
    assert from_manifest == from_api == [("qwen", "w1", (0,), ()), ("qwen", "w1", (1,), ())]
