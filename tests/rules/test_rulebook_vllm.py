"""Rulebook B, vLLM's start-up check and KV cache: the numbers of docs/rulebooks.md#b-vllms-start-up-and-kv-cache, checked with
vLLM 0.33's own classes, and the behaviour around them."""

from __future__ import annotations

import pytest

from fitcases import GIB, MIB, QWEN_1_5B, SEED_TOTAL, gpu, node, seed_model
from vram_exporter.rules.backends.vllm import engine as vllm
from vram_exporter.rules.model import Architecture, Cluster
from vram_exporter.rules.node import fit_node
from vram_exporter.snapshot import ProcessReading

DEEPSEEK_V2_LITE = Architecture.from_config({
    "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "hidden_size": 2048,
    "kv_lora_rank": 512, "qk_rope_head_dim": 64, "vocab_size": 102400, "torch_dtype": "bfloat16",
    "max_position_embeddings": 163840})


@pytest.mark.parametrize("tp, kv_dtype, tokens, per_token, minimum", [
    (1, "auto", 32768, 28_672, 939_982_848),   # 2,049 blocks
    (2, "fp8", 4096, 7_168, 29_474_816),
    (4, "auto", 32768, 14_336, 469_991_424),   # 2 KV heads over 4 ranks: one head each, replicated
])
def test_kv_bytes_match_vllms_own_classes(tp, kv_dtype, tokens, per_token, minimum):
    dtype_bytes = vllm.kv_dtype_bytes(QWEN_1_5B, kv_dtype, "auto")
    assert vllm.bytes_per_token(QWEN_1_5B, tp=tp, pp=1, dtype_bytes=dtype_bytes) == per_token
    assert vllm.required_kv_bytes(QWEN_1_5B, tokens, 16, per_token) == minimum


def test_mla_bytes_per_token_are_not_split_by_tp_and_use_16_token_blocks():
    # FLASH_ATTN_MLA, vLLM's MLA backend on Hopper, ran with 16-token blocks on a real H200 (run-2.json).
    for tp in (1, 2, 4):
        assert vllm.bytes_per_token(DEEPSEEK_V2_LITE, tp=tp, pp=1, dtype_bytes=2) == 27 * (512 + 64) * 2
    assert vllm.block_tokens(DEEPSEEK_V2_LITE, None) == 16 and vllm.block_tokens(QWEN_1_5B, None) == 16
    assert vllm.block_tokens(QWEN_1_5B, 32) == 32


def test_budget_is_ceil_of_cuda_total_times_u():
    # Real H100: NVML total 85520809984, reserved 503316480 -> CUDA total 85017493504.
    assert vllm.cuda_total(85_520_809_984, 503_316_480) == 85_017_493_504
    assert vllm.budget_bytes(SEED_TOTAL, 0.9) == 5_792_543_540  # ceil(5792543539.2)


def test_seed_would_start_under_vllm_alone():
    fit = fit_node(node(), Cluster(system_reserved_vram=GIB), [seed_model()]).models[0]
    (g,) = fit.per_gpu
    assert g.budget == 5_792_543_540
    assert g.headroom["vllm_free_memory"] == SEED_TOTAL - 512 * MIB - g.budget
    assert g.headroom["vllm_kv_cache"] == g.budget - 3_087_467_144 - GIB - 939_982_848
    assert g.max_model_len == 32768


def test_other_processes_make_the_start_up_check_fail_with_vllms_words():
    busy = gpu(0, SEED_TOTAL, used=300 * MIB, processes=(ProcessReading(1, "Xorg", 300 * MIB),))
    fit = fit_node(node(busy), Cluster(), [seed_model("--gpu-memory-utilization=0.95")]).models[0]
    assert fit.schedulable and not fit.startable
    assert any("on startup is less than desired GPU memory utilization (0.95," in r for r in fit.reasons)
    assert fit.per_gpu[0].headroom["vllm_free_memory"] < 0


def test_kv_check_fails_for_a_context_too_long_and_says_what_fits():
    # Pinned, so GPUStack accepts it (overcommit) and vLLM's verdict on that GPU is the news.
    model = seed_model("--gpu-memory-utilization=0.95", max_model_len=32768, runtime_overhead=1280 * MIB,
                       pinned_gpus=(0,))
    small = gpu(0, 5 * GIB)
    fit = fit_node(node(small), Cluster(), [model]).models[0]
    (g,) = fit.per_gpu
    kv = g.budget - 3_087_467_144 - 1280 * MIB
    assert kv > 0
    assert g.headroom["vllm_kv_cache"] == kv - fit.kv_required < 0
    assert g.max_model_len == (kv // (16 * 28_672) - 1) * 16
    assert any("the longest context that fits is" in r for r in fit.reasons)


def test_no_room_at_all_gives_no_available_memory_for_cache_blocks():
    model = seed_model("--gpu-memory-utilization=0.95", pinned_gpus=(0,))
    fit = fit_node(node(gpu(0, 3 * GIB)), Cluster(), [model]).models[0]
    assert any("No available memory for the cache blocks" in r for r in fit.reasons)
    assert fit.per_gpu[0].max_model_len == 0


def test_the_window_ends_themselves_pass_every_check():
    cluster = Cluster(system_reserved_vram=0)
    fit = fit_node(node(), cluster, [seed_model()]).models[0]
    lo, hi = fit.per_gpu[0].gmu_min, fit.per_gpu[0].gmu_max
    assert lo <= hi
    for g in (lo, hi, round((lo + hi) / 2, 4)):
        at = fit_node(node(), cluster, [seed_model(f"--gpu-memory-utilization={g}")]).models[0]
        assert at.fits, g
    for g in (lo - 0.001, hi + 0.001):
        assert not fit_node(node(), cluster, [seed_model(f"--gpu-memory-utilization={g}")]).models[0].fits, g


def test_candidates_placed_before_take_their_memory_from_free():
    cluster = Cluster()
    big = gpu(0, 48 * GIB)
    first = seed_model("--gpu-memory-utilization=0.45", name="first")
    second = seed_model("--gpu-memory-utilization=0.45", name="second")
    fit = fit_node(node(big), cluster, [first, second])
    a, b = (m.per_gpu[0].headroom["vllm_free_memory"] for m in fit.models)
    assert a - b == fit.models[0].per_gpu[0].budget + cluster.vllm_context_overhead


def test_sliding_window_layers_need_window_plus_batch_not_max_model_len():
    mistral = Architecture.from_config({"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                        "hidden_size": 4096, "sliding_window": 4096, "vocab_size": 32000,
                                        "max_position_embeddings": 32768})
    per_token = vllm.bytes_per_token(mistral, tp=1, pp=1, dtype_bytes=2)
    assert vllm.required_kv_bytes(mistral, 32768, 16, per_token) == (
        (-(-(4096 - 1 + vllm.SLIDING_BATCH_TOKENS) // 16) + 1 + 1) * 16 * per_token)  # + mid-block + held back
    # Qwen2 ships the field switched off: full attention.
    qwen = Architecture.from_config({"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 256,
                                     "sliding_window": 4096, "use_sliding_window": False})
    assert qwen.sliding_window is None


def test_a_running_model_is_not_held_to_the_start_up_check():
    fit = fit_node(node(gpu(0, 24 * GIB, used=20 * GIB)), Cluster(), [seed_model(placed_on=(0,))]).models[0]
    assert "vllm_free_memory" not in fit.per_gpu[0].headroom


def test_config_without_required_fields_is_named():
    with pytest.raises(ValueError, match="num_hidden_layers"):
        Architecture.from_config({"num_attention_heads": 4, "hidden_size": 64})
