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
