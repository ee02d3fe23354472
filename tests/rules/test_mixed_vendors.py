"""Clusters with NVIDIA and AMD workers (issue 22): GPUStack 2.3.0's selectors look at one GPU type at a time
(policies/utils.py::group_workers_by_gpu_type) and treat a ROCm GPU like any other; the first path with candidates
of any type wins; a worker of two types shows only one of them; one replica over GPUs of two types is refused."""

from __future__ import annotations

import pytest

from fitcases import GIB, QWEN_1_5B
from vram_exporter.rules import gpustack
from vram_exporter.rules.cluster import replay
from vram_exporter.rules.model import ModelSpec

CARD = 16 * GIB


def worker(worker_id: int, kind: str, gpus: int = 1, total: int = CARD) -> replay.WorkerGpus:
    return replay.WorkerGpus(worker_id, f"w{worker_id}", {i: total for i in range(gpus)}, gpu_type=kind)


def decide(workers, spec: ModelSpec, *, selection=None, per_replica=None, types=frozenset()):
    request = replay.Request(spec, frozenset(w.id for w in workers), selection,
                             sum(len(v) for v in (selection or {}).values()), per_replica, selected_types=types)
    return replay.replay(workers, {"m": request}, [replay.Instance(1, "m", False, {})], listed_order=True)[1]


def small(backend: str = "vllm", **changes) -> ModelSpec:
    return ModelSpec("m", 2 * GIB, QWEN_1_5B, backend=backend, max_model_len=4096, **changes)


@pytest.mark.parametrize("backend", ["vllm", "sglang", "custom"])
def test_one_gpu_candidates_of_every_type_in_the_order_the_types_first_appear(backend):
    verdict = decide([worker(1, "cuda"), worker(2, "rocm")], small(backend))
    assert [(c.worker, c.gpu_type) for c in verdict.candidates] == [(1, "cuda"), (2, "rocm")]
    assert verdict.placed and verdict.worker in (1, 2)


def test_the_first_path_with_candidates_of_any_type_wins():
    """A ROCm GPU that holds the model alone beats two CUDA GPUs that hold it together: one GPU comes first."""
    big = ModelSpec("m", 11 * GIB, QWEN_1_5B, max_model_len=4096)  # E = 15.2 GiB: more than 0.9 x 16 GiB
    verdict = decide([worker(1, "cuda", gpus=2), worker(2, "rocm", total=32 * GIB)], big)
    assert [(c.worker, c.gpus) for c in verdict.candidates] == [(2, (0,))]


def test_several_workers_are_never_combined_across_types():
    """Two one-GPU workers of different types cannot share one instance; two of the same type can."""
    pp2 = ModelSpec("m", 2 * GIB, QWEN_1_5B, backend_parameters=("--pipeline-parallel-size=2",))
    assert not decide([worker(1, "cuda"), worker(2, "rocm")], pp2).placed
    together = decide([worker(1, "cuda"), worker(2, "rocm"), worker(3, "cuda")], pp2)
    assert (together.worker, [w for w, _ in together.candidates[0].subordinates]) == (1, [3])


def test_one_replica_over_gpus_of_two_types_is_refused_with_gpustacks_words():
    selection = {"w1": (0,), "w2": (0,)}
    verdict = decide([worker(1, "cuda"), worker(2, "rocm")], small(), selection=selection, per_replica=2,
                     types=frozenset({"cuda", "rocm"}))
    assert not verdict.placed
    assert verdict.reason.endswith("- Deployment with heterogeneous GPU types is not supported, please select GPUs "
                                   "of the same type or update GPUs per replica.")
    one_each = decide([worker(1, "cuda"), worker(2, "rocm")], small(), selection=selection, per_replica=1,
                      types=frozenset({"cuda", "rocm"}))  # one GPU a replica: a candidate on each type
    assert [(c.worker, c.gpu_type) for c in one_each.candidates] == [(1, "cuda"), (2, "rocm")]


@pytest.mark.parametrize("types, visible", [
    (["rocm", "cuda"], "cuda"),
    (["cuda", "rocm", "cuda"], "rocm"),  # the last type to appear first, not the last GPU's
    (["cuda", "cuda"], "cuda"),
    ([], None),
])
def test_a_worker_of_several_types_shows_the_last_type_grouped(types, visible):
    assert gpustack.visible_gpu_type(types) == visible


@pytest.mark.parametrize("instance_type, worker_type, main, counted", [
    ("cuda", "cuda", True, True),
    (None, "cuda", True, True),  # an instance that names no type counts on its main worker
    (None, "cuda", False, False),  # but not on a subordinate (compute_worker_allocated)
    ("rocm", "cuda", True, False),
    ("rocm", None, False, True),  # a worker whose GPUs name no type: everything counts
])
def test_which_claims_a_worker_of_one_type_counts(instance_type, worker_type, main, counted):
    assert gpustack.counts_on(instance_type, worker_type, main=main) is counted
