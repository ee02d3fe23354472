"""GPUStack 2.3.0's SGLang selector across workers (issue 22): its automatic search over whole workers
(``find_multi_worker_multi_gpu_candidates``) and the base selector's manual selection spanning workers,
replayed by rules/cluster/replay.py with subordinate workers as GPUStack books them."""

from __future__ import annotations

from dataclasses import replace

from fitcases import GIB, MIB, QWEN_1_5B
from vram_exporter.rules import gpustack
from vram_exporter.rules.backends.sglang import selector
from vram_exporter.rules.cluster import replay
from vram_exporter.rules.model import ModelSpec

CARD = 16384 * MIB  # f = 0.772 at SGLang's default on a 16 GiB card (TP 1)
CLAIM = int(CARD * 0.772)


def _spec(weights: int, *params: str) -> ModelSpec:
    return ModelSpec("m", weights, QWEN_1_5B, backend_parameters=params, backend="sglang")


def _workers(*names: str, gpus: int = 2) -> list[replay.WorkerGpus]:
    return [replay.WorkerGpus(i, name, {g: CARD for g in range(gpus)}) for i, name in enumerate(names, 1)]


def _decide(request: replay.Request, workers, claims=None) -> replay.Verdict:
    return replay.decide(replay.Instance(1, "m", False, {}), request, workers, claims or {}, "gpustack")


def test_too_large_for_one_worker_is_placed_over_two_with_a_subordinate():
    spec = _spec(30 * GIB)  # E = 38 GiB: one worker's two claims (26.5 GB) fall short, two workers' do not
    verdict = _decide(replay.Request(spec, frozenset({1, 2})), _workers("a", "b"))
    assert verdict.placed and verdict.worker == 1 and verdict.gpus == (0, 1)
    assert verdict.claims == {(w, g): CLAIM for w in (1, 2) for g in (0, 1)}
    # the main worker's claim carries no vram_utilization, the subordinate's the fraction (_create_candidate)
    assert verdict.utilization is None and verdict.subordinate_utilization == 0.772


def test_without_distributed_inference_it_stays_pending():
    spec = _spec(30 * GIB)
    verdict = _decide(replay.Request(spec, frozenset({1, 2}), distributed=False), _workers("a", "b"))
    assert not verdict.placed


def test_no_combination_names_the_one_that_booked_most():
    spec = _spec(60 * GIB)
    verdict = _decide(replay.Request(spec, frozenset({1, 2})), _workers("a", "b"))
    assert not verdict.placed
    assert verdict.reason.splitlines()[2:] == [
        f"- The optimal combination ['a', 'b'] provides {gpustack.byte_to_gib(4 * CLAIM)} of allocatable VRAM.",
        "- Cannot find a suitable worker combination to run the model in distributed mode. If you are confident "
        "that the resources are sufficient, you may manually schedule the model by selecting the workers and GPUs."]


def test_the_search_takes_the_first_covering_set_whatever_the_tp_size():
    """GPUStack reads no world size on this path: --tp-size 4 on two one-GPU workers books TP 4 on two."""
    workers = [gpustack.WorkerView(i, n, (gpustack.GpuView(0, CARD, CARD),)) for i, n in ((1, "a"), (2, "b"))]
    found, event = selector.across_workers(workers, estimate=2 * CLAIM, fraction=0.772, arch=QWEN_1_5B)
    assert event is None and found is not None
    assert found.workers == ((1, (0,)), (2, (0,)))


def test_a_worker_short_of_the_fraction_is_left_out_of_the_combination():
    spec = _spec(30 * GIB)
    busy = {(2, 0): CARD // 2, (2, 1): CARD // 2}  # worker b half booked: A/T < f on both its GPUs
    verdict = _decide(replay.Request(spec, frozenset({1, 2, 3})), _workers("a", "b", "c"), busy)
    assert verdict.placed and {w for w, _ in verdict.claims} == {1, 3}


def test_the_search_runs_only_where_a_memory_group_spans_workers_evenly():
    """group_worker_gpu_by_memory: one half-booked GPU leaves the 16 GiB group with 2 + 1 + 2 GPUs per
    worker, uneven, and GPUStack never runs its worker search (pending, though a and c would do)."""
    spec = _spec(30 * GIB)
    busy = {(2, 0): CARD // 2}
    verdict = _decide(replay.Request(spec, frozenset({1, 2, 3})), _workers("a", "b", "c"), busy)
    assert not verdict.placed and "optimal combination" not in verdict.reason


def test_manual_selection_over_two_workers_has_the_main_and_a_subordinate():
    spec = _spec(10 * GIB)
    request = replay.Request(spec, frozenset({1, 2}), selection={"a": (0,), "b": (0,)}, selected_count=2)
    verdict = _decide(request, _workers("a", "b", gpus=1))
    fraction = selector.gpustack_mem_fraction_static(CARD, selector.gpustack_sglang_params(()),
                                                     selected_per_worker=(1, 1))
    assert verdict.placed and verdict.worker == 1 and verdict.gpus == (0,)
    assert verdict.claims == {(1, 0): int(CARD * fraction), (2, 0): int(CARD * fraction)}
    assert verdict.utilization is None and verdict.subordinate_utilization == fraction


def test_manual_overcommit_is_placed_with_its_lines():
    spec = replace(_spec(30 * GIB))
    request = replay.Request(spec, frozenset({1}), selection={"a": (0, 1)}, selected_count=2)
    verdict = _decide(request, _workers("a"))
    assert verdict.placed and verdict.overcommit
    assert verdict.reason.splitlines()[2] == "- Manual GPU selection resulted in resource overcommit."


def test_equal_scores_go_to_the_worker_with_most_gpus():
    """select_candidates sorts the workers by GPU count first (sort_workers_by_gpu_count): on empty cards
    the spread scorer ties, and the first candidate, on the worker with most GPUs, wins."""
    workers = [replay.WorkerGpus(1, "one", {0: CARD}), replay.WorkerGpus(2, "two", {0: CARD, 1: CARD})]
    verdict = _decide(replay.Request(_spec(GIB), frozenset({1, 2})), workers)
    assert verdict.placed and verdict.worker == 2


def test_gpus_per_replica_raises_the_tensor_parallel_size_the_fraction_assumes():
    """_get_max_tp_size: max(--tp-size, GPUs selected on a worker, gpu_selector.gpus_per_replica); the
    reserve is 512 + 1.5 x 2048 + 2 x 8 MiB, plus TP x PP / 8 GiB (PP: the two selected workers)."""
    p = selector.gpustack_sglang_params(())
    alone = selector.gpustack_mem_fraction_static(CARD, p, selected_per_worker=(1, 1))
    per_replica = selector.gpustack_mem_fraction_static(CARD, p, selected_per_worker=(1, 1), gpus_per_replica=2)
    assert (alone, per_replica) == (round((16384 - 3600 - 256) / 16384, 3), round((16384 - 3600 - 512) / 16384, 3))
