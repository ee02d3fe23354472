"""gpu_selector.gpus_per_replica given smaller than the selection (issue 22): GPUStack uses it as given
(``set_model_gpus_per_replica`` fills it in only when unset), so each replica takes that many of the
selected GPUs. The expected placements and claims are GPUStack 2.3.0's own, from its selector, scorer and
pick (conformance/gpustack_cluster.py) on the same worker and model."""

from __future__ import annotations

from fitcases import MIB, QWEN_1_5B, SEED_WEIGHTS
from vram_exporter.rules.cluster import replay
from vram_exporter.rules.model import ModelSpec

SMALL, LARGE = 16384 * MIB, 24576 * MIB
WORKER = replay.WorkerGpus(1, "w1", {0: SMALL, 1: SMALL, 2: LARGE, 3: LARGE})
CLAIM_SMALL, CLAIM_LARGE = 15_461_882_265, 23_192_823_398  # GPUStack's: int(total x 0.9)


def _placed(gpus_per_replica: int | None) -> list[tuple[tuple[int, ...], dict]]:
    """Two replicas of a 1.5B model with all four GPUs selected, as GPUStack's API records the model."""
    spec = ModelSpec("qwen", SEED_WEIGHTS, QWEN_1_5B, replicas=2)
    request = replay.Request(spec, frozenset({1}), {"w1": (0, 1, 2, 3)}, 4, gpus_per_replica)
    instances = [replay.Instance(i, "qwen", False, {}) for i in (1, 2)]
    verdicts = replay.replay([WORKER], {"qwen": request}, instances)
    assert all(v.placed for v in verdicts.values())
    return [(tuple(sorted(v.gpus)), dict(v.claims)) for _, v in sorted(verdicts.items())]


def test_a_given_gpus_per_replica_of_one_puts_each_replica_on_one_selected_gpu():
    assert _placed(1) == [((0,), {(1, 0): CLAIM_SMALL}), ((1,), {(1, 1): CLAIM_SMALL})]


def test_left_out_gpustack_fills_in_half_the_selection_per_replica():
    assert _placed(None) == [((0, 1), {(1, 0): CLAIM_SMALL, (1, 1): CLAIM_SMALL}),
                             ((2, 3), {(1, 2): CLAIM_LARGE, (1, 3): CLAIM_LARGE})]
