"""Rulebook A, GPUStack's placement: the seed scenario's numbers and fix matrix (docs/design.md#the-seed-scenario-worked),
multi-GPU placement, divisibility, pinning, claims placed before."""

from __future__ import annotations

import pytest

from fitcases import GIB, MIB, QWEN_1_5B, SEED_TOTAL, SEED_WEIGHTS, gpu, node, seed_cluster, seed_model
from vram_exporter.rules import gpustack
from vram_exporter.rules.model import Architecture, Cluster
from vram_exporter.rules.node import fit_node


def verdict(model, cluster, snapshot=None):
    return fit_node(snapshot or node(), cluster, [model]).models[0]


def test_seed_numbers_match_design():
    assert SEED_TOTAL == 6_436_159_488
    estimate = gpustack.estimate_bytes(SEED_WEIGHTS, {})
    assert estimate == 5_852_444_220  # 5.45 GiB
    allocatable = gpustack.allocatable_bytes(SEED_TOTAL, 0, GIB)
    assert f"{allocatable / GIB:.2f}" == "4.99" and f"{allocatable / SEED_TOTAL:.4f}" == "0.8332"
    assert f"{estimate / SEED_TOTAL:.4f}" == "0.9093"
    assert f"{0.9 * SEED_TOTAL / GIB:.2f}" == "5.39"


def test_seed_is_pending_with_gpustacks_own_message():
    fit = verdict(seed_model(), seed_cluster())
    assert not fit.schedulable and fit.gpus == ()
    text = fit.reasons[0]
    assert "The model requires approximately 5.45 GiB of VRAM." in text
    assert "all GPUs combined need to provide at least 6.06 GiB of total VRAM and each GPU needs 90%" in text
    assert "The current available GPU only has 4.99 GiB allocatable VRAM (83.32%)." in text
    (gpu_fit,) = fit.per_gpu
    assert gpu_fit.headroom["gpustack_estimate"] < 0 and gpu_fit.headroom["gpustack_allocatable"] < 0
    assert not gpu_fit.window_open and gpu_fit.gmu_min == 0.9094 and gpu_fit.gmu_max == 0.8331


@pytest.mark.parametrize("case, model, cluster, schedulable", [
    ("as given", seed_model(), seed_cluster(), False),
    ("reserved 0 alone", seed_model(), seed_cluster(system_reserved_vram=0), False),
    ("g 0.8 alone", seed_model("--gpu-memory-utilization=0.8"), seed_cluster(), False),
    ("reserved 0 and g 0.91", seed_model("--gpu-memory-utilization=0.91"), seed_cluster(system_reserved_vram=0), True),
    ("reserved 0 and g 0.95", seed_model("--gpu-memory-utilization=0.95"), seed_cluster(system_reserved_vram=0), True),
    ("claim 4 GiB with g 0.8", seed_model("--gpu-memory-utilization=0.8", env={"GPUSTACK_MODEL_VRAM_CLAIM": str(4 * GIB)}),
     seed_cluster(), True),
    ("pinned to GPU 0", seed_model(pinned_gpus=(0,)), seed_cluster(), True),
    ("0.6 rules, reserved 0 alone", seed_model(), seed_cluster(system_reserved_vram=0, scheduler="gpustack-0.6"), True),
    ("0.6 rules as given", seed_model(), seed_cluster(scheduler="gpustack-0.6"), False),
])
def test_seed_fix_matrix(case, model, cluster, schedulable):
    assert verdict(model, cluster).schedulable is schedulable, case


def test_pinning_is_overcommit_and_only_for_one_replica():
    assert verdict(seed_model(pinned_gpus=(0,)), seed_cluster()).overcommit
    assert not verdict(seed_model(pinned_gpus=(0,), replicas=2), seed_cluster()).schedulable


def test_claim_of_a_scheduled_instance_matches_gpustack_live():
    # Seen live (GPUSTACK_LIVE.md): reserved 0 with g 0.95 scheduled with claim {"0": 6114351513}.
    fit = fit_node(node(), seed_cluster(system_reserved_vram=0), [seed_model("--gpu-memory-utilization=0.95")])
    # A candidate's claim is predicted, not yet GPUStack's: vram_gpu_predicted_claim_bytes.
    assert fit.models[0].gpus == (0,) and (fit.gpus[0].claimed, fit.gpus[0].predicted) == (0, 6_114_351_513)


def test_second_replica_at_0_9_never_fits_on_the_same_gpu():
    big = gpu(0, 24564 * MIB)
    fit = verdict(seed_model(replicas=2), Cluster(), node(big))
    assert fit.schedulable and fit.replicas_placed == 1


def test_models_are_placed_in_order_each_seeing_claims_before():
    first, second = seed_model(name="first"), seed_model(name="second")
    fit = fit_node(node(gpu(0, 24564 * MIB), gpu(1, 24564 * MIB)), Cluster(), [first, second])
    assert [m.gpus for m in fit.models] == [(0,), (1,)]
    # Seen live: a second instance on a 24564 MiB card "only has 2.4 GiB allocatable VRAM (10.00%)".
    alone = fit_node(node(gpu(0, 24564 * MIB)), Cluster(), [first, second])
    assert not alone.models[1].schedulable
    assert "only has 2.4 GiB allocatable VRAM (10.00%)" in alone.models[1].reasons[0].replace("2.40", "2.4")


def test_placed_models_book_their_claims_first():
    running = seed_model(name="running", placed_on=(0,))
    candidate = seed_model(name="candidate")
    fit = fit_node(node(gpu(0, 24564 * MIB)), Cluster(), [candidate, running])
    assert fit.models[1].placed and not fit.models[0].schedulable
    assert fit.gpus[0].claimed == int(24564 * MIB * 0.9)


def test_an_error_instance_claim_counts_like_any_placed_one():
    fit = fit_node(node(gpu(0, 24564 * MIB)), Cluster(), [seed_model(name="errored", placed_on=(0,))])
    assert fit.gpus[0].allocatable == 24564 * MIB - int(24564 * MIB * 0.9)


LLAMA_70B = Architecture.from_config({
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192,
    "vocab_size": 128256, "max_position_embeddings": 131072})


def big_model(*params, weights=16 * GIB, **changes):
    return seed_model(*params, name="big", weights_bytes=weights, arch=LLAMA_70B, max_model_len=4096, **changes)


def test_tp_model_placed_across_two_gpus_with_the_override():
    # Seen live: a TP model with GPUSTACK_MODEL_VRAM_CLAIM placed on two 12288 MiB GPUs.
    model = big_model("--tensor-parallel-size=2", env={"GPUSTACK_MODEL_VRAM_CLAIM": str(20 * GIB)})
    fit = fit_node(node(gpu(0, 12288 * MIB), gpu(1, 12288 * MIB)), Cluster(), [model])
    assert fit.models[0].gpus == (0, 1)
    assert [b.predicted for b in fit.gpus] == [int(12288 * MIB * 0.9)] * 2 and [b.claimed for b in fit.gpus] == [0, 0]


def test_auto_multi_gpu_only_when_no_single_gpu_fits_and_stops_at_first_sufficient_count():
    four = node(*(gpu(i, 24 * GIB) for i in range(4)))
    assert fit_node(four, Cluster(), [big_model(weights=10 * GIB)]).models[0].gpus == (0,)
    assert fit_node(four, Cluster(), [big_model(weights=30 * GIB)]).models[0].gpus == (0, 1)
    # Three GPUs would hold 45 GiB's estimate, but 3 does not divide 64 heads: GPUStack goes on to 4.
    assert fit_node(four, Cluster(), [big_model(weights=45 * GIB)]).models[0].gpus == (0, 1, 2, 3)


def test_multi_gpu_eligibility_is_strict_and_largest_allocatable_first():
    gpus = node(gpu(0, 24 * GIB), gpu(1, 48 * GIB), gpu(2, 48 * GIB))
    fit = fit_node(gpus, Cluster(), [big_model("--tensor-parallel-size=2", weights=60 * GIB)]).models[0]
    assert fit.gpus == (1, 2)
    # At g = 1.0 no GPU has A/T > g: nothing is eligible.
    none = fit_node(gpus, Cluster(), [big_model("--tensor-parallel-size=2", "--gpu-memory-utilization=1.0")])
    assert not none.models[0].schedulable


def test_tp_size_that_does_not_divide_heads_is_a_clear_model_error():
    fit = fit_node(node(gpu(0), gpu(1), gpu(2)), Cluster(), [seed_model("--tensor-parallel-size=5")])
    assert fit.models[0].error.startswith("Total number of attention heads (12) must be divisible by tensor "
                                          "parallel size (5).")
    assert not fit.models[0].schedulable


def test_requested_world_size_one_never_goes_multi_gpu():
    two = node(gpu(0, 24 * GIB), gpu(1, 24 * GIB))
    assert not fit_node(two, Cluster(), [big_model("--tensor-parallel-size=1", weights=30 * GIB)]).models[0].schedulable


def test_estimate_honours_the_override_and_ignores_garbage_like_gpustack():
    assert gpustack.estimate_bytes(100, {"GPUSTACK_MODEL_VRAM_CLAIM": "123"}) == 123
    assert gpustack.estimate_bytes(100, {"GPUSTACK_MODEL_VRAM_CLAIM": "4GiB"}) == 120 + 2 * GIB


def test_underscore_spelling_books_0_9_while_vllm_runs_the_given_value():
    fit = verdict(seed_model("--gpu_memory_utilization=0.5"), Cluster(), node(gpu(0, 24 * GIB)))
    assert (fit.gmu_gpustack, fit.gmu_vllm, fit.gmu_mismatch) == (0.9, 0.5, True)


def test_down_gpus_are_not_placement_targets():
    lost = gpu(0)
    lost = type(lost)(0, "GPU-0", "x", "y", None, (), "GPU_IS_LOST")
    fit = fit_node(node(lost, gpu(1)), seed_cluster(system_reserved_vram=0), [seed_model("--gpu-memory-utilization=0.95")])
    assert fit.models[0].gpus == (1,) and [b.index for b in fit.gpus] == [1]


def test_qwen_architecture_is_read_from_config():
    assert (QWEN_1_5B.layers, QWEN_1_5B.kv_heads, QWEN_1_5B.head_dim, QWEN_1_5B.dtype_bytes) == (28, 2, 128, 2)


def test_pinned_gpus_must_match_the_requested_world_size():
    two = node(gpu(0, 24 * GIB), gpu(1, 24 * GIB))
    fit = fit_node(two, Cluster(), [seed_model("--tensor-parallel-size=2", pinned_gpus=(0,))]).models[0]
    assert "does not match the world size (2)" in fit.error
    skip = seed_model("--tensor-parallel-size=2", pinned_gpus=(0,), env={"GPUSTACK_SKIP_GPU_COUNT_CHECK": "1"})
    assert fit_node(two, Cluster(), [skip]).models[0].error is None
