"""The candidate list a replayed decision carries (issue 22): every placement GPUStack's selector lists
before its placement scorer chooses, each with its own claims; the chosen one is among them."""

from __future__ import annotations

from fitcases import GIB, MIB, QWEN_1_5B
from vram_exporter.rules.cluster import replay
from vram_exporter.rules.model import ModelSpec

CARD = 16384 * MIB


def _decide(backend: str, workers: int, gpus: int) -> replay.Verdict:
    spec = ModelSpec("m", 2 * GIB, QWEN_1_5B, backend=backend)
    nodes = [replay.WorkerGpus(i, f"w{i}", {g: CARD for g in range(gpus)}) for i in range(1, workers + 1)]
    request = replay.Request(spec, frozenset(range(1, workers + 1)))
    return replay.decide(replay.Instance(1, "m", False, {}), request, nodes, {}, "gpustack")


def test_a_one_gpu_model_lists_every_gpu_of_every_worker_and_the_chosen_one_is_among_them():
    for backend in ("vllm", "sglang", "custom"):
        verdict = _decide(backend, workers=2, gpus=2)
        assert verdict.placed
        assert sorted((c.worker, c.gpus) for c in verdict.candidates) == [(1, (0,)), (1, (1,)), (2, (0,)), (2, (1,))]
        chosen = [c for c in verdict.candidates if (c.worker, c.gpus) == (verdict.worker, verdict.gpus)]
        assert [c.claims for c in chosen] == [verdict.claims], backend
        assert all(set(c.claims) == {(c.worker, c.gpus[0])} for c in verdict.candidates)


def test_ties_go_to_the_worker_listed_first_when_the_order_gpustack_saw_is_known():
    """Three one-GPU workers for pipeline parallelism over three: the main worker is the first GPUStack lists
    (its multi-worker path keeps the listed order among equal GPU counts); by default the replay takes them
    in id order, GPUStack's usual Worker.all order."""
    spec = ModelSpec("m", 1_000_000_000, QWEN_1_5B, backend_parameters=("--pipeline-parallel-size=3",))
    workers = [replay.WorkerGpus(i, f"w{i}", {0: CARD}) for i in (103, 2, 12)]
    request = {"m": replay.Request(spec, frozenset({103, 2, 12}))}
    pending = [replay.Instance(1, "m", False, {})]
    listed = replay.replay(workers, request, pending, listed_order=True)[1]
    assert (listed.worker, [w for w, _ in listed.candidates[0].subordinates]) == (103, [2, 12])
    by_id = replay.replay(workers, request, pending)[1]
    assert (by_id.worker, [w for w, _ in by_id.candidates[0].subordinates]) == (2, [12, 103])
