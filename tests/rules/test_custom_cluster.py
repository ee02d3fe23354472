"""The custom backend over a whole cluster (issue 22): its RAM claim and the workers' RAM, the CPU-only path of a
cpu_offloading model, and the one message GPUStack's selector words whether it places the instance or not
(custom_backend_resource_fit_selector.py, 2.3.0)."""

from __future__ import annotations

import pytest

from fitcases import GIB, QWEN_1_5B
from vram_exporter.rules.cluster import replay
from vram_exporter.rules.model import ModelSpec

CLAIM = {"GPUSTACK_MODEL_VRAM_CLAIM": str(20 * GIB)}  # E = 20 GiB: the RAM claim is max(2 GiB, E x 0.1) = 2 GiB
OPENING = "- The model requires approximately 20.0 GiB of VRAM and 2.0 GiB of RAM.\n"


def custom(env=CLAIM, replicas: int = 1) -> ModelSpec:
    return ModelSpec("m", 10 * GIB, QWEN_1_5B, backend="custom", env=dict(env), replicas=replicas)


def decide(workers, *, cpu_offloading=False, spec=None, instances=()):
    request = replay.Request(spec or custom(), frozenset(w.id for w in workers), cpu_offloading=cpu_offloading)
    pending = replay.Instance(100, "m", False, {})
    return replay.replay(workers, {"m": request}, [*instances, pending])[100]


def test_a_gpu_worker_short_of_ram_gets_no_gpu_candidate():
    short = replay.WorkerGpus(1, "short", {0: 80 * GIB}, ram_total=GIB)  # 1 GiB < the 2 GiB RAM claim
    roomy = replay.WorkerGpus(2, "roomy", {0: 24 * GIB}, ram_total=64 * GIB)
    verdict = decide([short, roomy])
    assert (verdict.placed, verdict.worker, verdict.gpus) == (True, 2, (0,))
    assert verdict.ram == 2 * GIB  # every custom candidate writes its RAM claim
    assert [c.worker for c in verdict.candidates] == [2]


def test_a_worker_whose_ram_is_unknown_is_not_judged_short():
    verdict = decide([replay.WorkerGpus(1, "w", {0: 24 * GIB})])
    assert (verdict.placed, verdict.gpus) == (True, (0,))


def test_cpu_offloading_places_on_a_worker_without_gpus_when_its_ram_covers_the_claim():
    cpu = replay.WorkerGpus(1, "cpu", {}, ram_total=64 * GIB, reserved_ram=GIB)
    verdict = decide([cpu], cpu_offloading=True)
    assert (verdict.placed, verdict.worker, verdict.gpus, dict(verdict.claims)) == (True, 1, (), {})
    assert verdict.ram == 2 * GIB
    # placed, with the single-GPU line of the path that found nothing (_set_messages)
    assert verdict.placed_message == OPENING + "- The current available GPU only has 0.0 GiB allocatable VRAM."


def test_without_cpu_offloading_a_worker_without_gpus_leaves_it_pending():
    verdict = decide([replay.WorkerGpus(1, "cpu", {}, ram_total=64 * GIB)])
    assert not verdict.placed
    assert verdict.reason == OPENING + "- The current available GPU only has 0.0 GiB allocatable VRAM."


def test_cpu_only_short_of_ram_says_so_before_the_gpu_lines():
    """GPUStack's own case: 700 GiB claimed, 64 GiB of RAM: the CPU-only line wins over the single-GPU one."""
    big = custom(env={"GPUSTACK_MODEL_VRAM_CLAIM": str(700 * GIB)})
    verdict = decide([replay.WorkerGpus(1, "cpu", {}, ram_total=64 * GIB)], cpu_offloading=True, spec=big)
    assert not verdict.placed
    assert verdict.reason == ("- The model requires approximately 700.0 GiB of VRAM and 70.0 GiB of RAM.\n"
                              "- CPU-only inference is supported. Requires at least 70.0 GiB RAM.")


def test_ram_booked_by_an_instance_counts_on_its_main_worker():
    cpu = replay.WorkerGpus(1, "cpu", {}, ram_total=3 * GIB)
    held = replay.Instance(1, "other", True, {}, worker=1, ram=2 * GIB)  # 3 - 2 = 1 GiB left < 2 GiB
    verdict = decide([cpu], cpu_offloading=True, instances=[held])
    assert not verdict.placed
    assert "CPU-only inference is supported. Requires at least 2.0 GiB RAM." in verdict.reason


def test_two_pending_cpu_only_instances_book_the_ram_between_them():
    cpu = replay.WorkerGpus(1, "cpu", {}, ram_total=5 * GIB)  # room for two 2 GiB claims, not three
    request = replay.Request(custom(replicas=3), frozenset({1}), cpu_offloading=True)
    verdicts = replay.replay([cpu], {"m": request}, [replay.Instance(i, "m", False, {}) for i in (1, 2, 3)])
    assert [verdicts[i].placed for i in (1, 2, 3)] == [True, True, False]


@pytest.mark.parametrize("totals, expected", [
    # one GPU covers E: placed on it, nothing after the opening
    ({0: 24 * GIB}, OPENING),
    # no GPU alone does, two together do: the single-GPU path's line stays in the message
    ({0: 16 * GIB, 1: 16 * GIB}, OPENING + "- The current available GPU only has 16.0 GiB allocatable VRAM."),
])
def test_the_message_of_a_placed_instance(totals, expected):
    verdict = decide([replay.WorkerGpus(1, "w", totals, ram_total=64 * GIB)])
    assert verdict.placed and verdict.placed_message == expected


def test_no_path_at_all_ends_with_the_multi_gpu_line_when_a_worker_has_two_gpus():
    verdict = decide([replay.WorkerGpus(1, "w", {0: 8 * GIB, 1: 8 * GIB}, ram_total=64 * GIB)])
    assert not verdict.placed
    assert verdict.reason == OPENING + "- The largest available worker has 16.0 GiB allocatable VRAM across 2 GPUs."
