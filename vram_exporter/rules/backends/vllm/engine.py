"""Rulebook B: vLLM's start-up check and KV cache (V1 engine, vLLM 0.33; docs/rulebooks.md#b-vllms-start-up-and-kv-cache).

Sources, vllm 0.33.0 on PyPI:
- ``vllm/v1/worker/utils.py::request_memory``: the budget R = ceil(total * gpu_memory_utilization),
  where total is CUDA's (NVML total - NVML reserved), and the start-up error when free memory
  is less than R ("Free memory on device cuda:0 ... on startup is less than desired GPU memory
  utilization ...").
- ``vllm/v1/worker/gpu_worker.py``, ``vllm/utils/mem_utils.py``: KV = R - weights - peak activation
  - CUDA graphs - non-torch memory (our O).
- ``vllm/v1/core/kv_cache_planning.py``, ``vllm/v1/kv_cache_interface.py``: page size per token
  (2 * layers * kv_heads/TP * head_dim * dtype bytes; MLA: layers * (kv_lora_rank +
  qk_rope_head_dim) * dtype bytes, not split by TP) and the minimum of
  (ceil(max_model_len / block) + 1) blocks: one block is held back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...model import Architecture
from .versions import VLLM_RULES, VllmRules

# Block sizes in tokens: FlashAttention, Triton and FlashInfer use 16. For MLA on Hopper vLLM picks
# FLASH_ATTN_MLA, whose kernel takes any multiple of 16 (vllm/v1/attention/backends/mla/flashattn_mla.py,
# get_supported_kernel_block_sizes -> [MultipleOf(16)], vLLM 0.26.0), so the block stays 16: measured on an
# H200 with DeepSeek-V2-Lite (tests/data/vllm-h200/run-2.json: FLASH_ATTN_MLA, block_size 16). FLASHMLA
# (64) and CUTLASS_MLA (128) are picked only when asked for (--block-size 64 / 128 or the backend).
BLOCK_TOKENS = 16
# Sliding-window layers keep window - 1 + one batch of tokens (max_num_batched_tokens), not
# max_model_len: SlidingWindowSpec.max_memory_usage_bytes. `vllm serve`'s default batch is 8192 tokens on
# GPUs of 70 GiB or more that are not A100s, 2048 on others (vllm/engine/arg_utils.py,
# _get_default_max_num_seqs_and_batched_tokens, vLLM 0.26.0; the H200 run logged 8192).
SLIDING_BATCH_TOKENS = 2048


def default_scheduler_limits(device_total_bytes: int | None, device_name: str = "",
                             usage: str = "serve", rules: VllmRules | None = None) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM uses when neither flag is given: `vllm serve`'s are the
    version's (versions.py, 0.26 unless given); the LLM class's, as read in 0.26.0 and measured on the
    H200 (16384 tokens and 1024 sequences on GPUs of 70 GiB or more that are not A100s, else 8192 and 256).
    """
    if usage == "llm":
        large = device_total_bytes is not None and device_total_bytes >= 70 * 2**30 \
            and "a100" not in device_name.lower()
        return (16384, 1024) if large else (8192, 256)
    return (rules or VLLM_RULES["0.26"]).batch_defaults(device_total_bytes, device_name)


def default_max_num_batched_tokens(device_total_bytes: int | None, device_name: str = "",
                                   rules: VllmRules | None = None) -> int:
    """`vllm serve`'s max_num_batched_tokens when the flag is not given (see SLIDING_BATCH_TOKENS)."""
    return default_scheduler_limits(device_total_bytes, device_name, "serve", rules)[0]


def cuda_total(nvml_total: int, nvml_reserved: int | None) -> int:
    """CUDA's total memory = NVML total - driver-reserved (measured equal on an H100, 480 MiB)."""
    return nvml_total - (nvml_reserved or 0)


def budget_bytes(cuda_total_bytes: int, gmu: float) -> int:
    """R = ceil(T_cuda * u): the instance's budget, not counting its own CUDA context."""
    return math.ceil(cuda_total_bytes * gmu)


def kv_dtype_bytes(arch: Architecture, kv_cache_dtype: str, dtype: str) -> int:
    if kv_cache_dtype.startswith("fp8"):
        return 1
    if dtype in ("float32", "fp32", "float"):
        return 4
    if dtype in ("bfloat16", "float16", "half", "bf16", "fp16"):
        return 2
    return arch.dtype_bytes


def bytes_per_token(arch: Architecture, *, tp: int, pp: int, dtype_bytes: int) -> int:
    """KV bytes one token needs on one GPU."""
    layers = math.ceil(arch.layers / pp)
    if arch.mla:
        return layers * (arch.kv_lora_rank + arch.qk_rope_head_dim) * dtype_bytes
    # With more TP ranks than KV heads, vLLM replicates heads: at least one per rank.
    return 2 * layers * max(1, arch.kv_heads // tp) * arch.head_dim * dtype_bytes


def block_tokens(arch: Architecture, requested: int | None, default: int = BLOCK_TOKENS) -> int:
    """--block-size, else the version's default (versions.py VllmRules.block_tokens): 16 before 0.34, 64
    from 0.34, for MLA too (the default is CacheConfig's, whatever the layer kind)."""
    if requested:
        return requested
    return default


def tokens_held(arch: Architecture, max_model_len: int, batch_tokens: int = SLIDING_BATCH_TOKENS) -> int:
    """Tokens of KV one max-length request keeps per layer."""
    if arch.sliding_window:
        return min(max_model_len, arch.sliding_window - 1 + batch_tokens)
    return max_model_len


# Blocks vLLM holds back beyond ceil(max_model_len / B): 1 in vLLM 0.33 (docs/rulebooks.md, section B); 0 in vLLM
# 0.26.0, whose minimum is cdiv(max_model_len, block_size) pages (vllm/v1/kv_cache_interface.py,
# AttentionSpec.max_memory_usage_bytes): its error for Llama-3.1-8B at 131072 tokens asks for exactly
# 16.0 GiB = 8192 blocks of 2 MiB (tests/data/vllm-h200/run-1.json). See rules/backends/vllm/runtime.py.
HELD_BACK_BLOCKS = 1


def required_kv_bytes(arch: Architecture, max_model_len: int, block: int, per_token: int,
                      held_back: int = HELD_BACK_BLOCKS, batch_tokens: int = SLIDING_BATCH_TOKENS,
                      rules: VllmRules | None = None) -> int:
    """vLLM's minimum: (ceil(max_model_len / B) + held_back) blocks of B tokens; interleaved layers as vLLM
    groups them (``interleaved_required_kv_bytes``)."""
    if arch.layer_windows:
        return interleaved_required_kv_bytes(arch, max_model_len, block, per_token, held_back, batch_tokens,
                                             rules or VLLM_RULES["0.33"])
    return (math.ceil(tokens_held(arch, max_model_len, batch_tokens) / block) + _extra_blocks(arch, held_back)) \
        * block * per_token


def _extra_blocks(arch: Architecture, held_back: int) -> int:
    # A sliding window may not start at a block boundary: its layers always need one block more
    # (vllm/v1/kv_cache_interface.py, SlidingWindowSpec.max_admission_blocks_per_request, 0.17.1-0.34.0:
    # cdiv(min(window - 1 + in-flight tokens, max_model_len), B) + 1), on top of the block the pool
    # holds back (Mistral-7B-v0.1 at 32768 tokens in 0.33: 1282 blocks = 1280 + 1 + 1).
    return held_back + 1 if arch.sliding_window else held_back


def longest_context(arch: Architecture, kv_bytes: int, block: int, per_token: int, cap: int | None,
                    held_back: int = HELD_BACK_BLOCKS, batch_tokens: int = SLIDING_BATCH_TOKENS,
                    rules: VllmRules | None = None) -> int:
    """The longest max_model_len whose minimum fits in kv_bytes (capped at the model's own maximum)."""
    if arch.layer_windows:
        return _longest_by_search(arch, kv_bytes, block, per_token, cap, held_back, batch_tokens,
                                  rules or VLLM_RULES["0.33"])
    blocks = kv_bytes // (block * per_token) if kv_bytes > 0 else 0
    held_back = _extra_blocks(arch, held_back)
    if blocks < 1 + held_back:
        return 0
    fits = (blocks - held_back) * block
    if arch.sliding_window and fits >= arch.sliding_window - 1 + batch_tokens:
        fits = cap or fits  # the window, not the context, bounds what is kept
    return min(fits, cap) if cap else fits


# --- Interleaved sliding and full layers (Architecture.layer_windows) ------------------------------------
# vllm/v1/core/kv_cache_utils.py::_get_kv_cache_groups_uniform_page_size (0.17.1-0.33.0): the layers of one
# kind are split into groups of group_size layers (the fewest of any kind, or the most where that is under
# 1.25x the fewest in 0.17.1, 1.5x from 0.32: VllmRules.hybrid_group_ratio), the last group of a kind padded; every group is a block table of its own over one pool
# whose block is group_size layer pages. The start-up check (get_kv_cache_configs,
# _max_memory_usage_bytes_from_groups): 0.17.1 takes the first group's blocks for a request times
# group_size pages (the first layer's kind decides); from 0.32 the blocks of every group are summed, times
# the pool's block, plus the null block held back.


def _groups(arch: Architecture, ratio: float) -> tuple[int, list[tuple[int | None, int]]]:
    """(group_size, [(window, groups of that kind)]) in vLLM's order (kinds as the layers first show them)."""
    counts: dict[int | None, int] = {}
    for window in arch.layer_windows:
        counts[window] = counts.get(window, 0) + 1
    fewest, most = min(counts.values()), max(counts.values())
    size = most if most < fewest * ratio else fewest
    return size, [(window, math.ceil(n / size)) for window, n in counts.items()]


def _layer_blocks(window: int | None, max_model_len: int, block: int, batch_tokens: int) -> int:
    """Blocks one layer of that kind needs for one request (the spec's max_memory_usage_bytes / page)."""
    if window is None:
        return math.ceil(max_model_len / block)
    return math.ceil(min(max_model_len, window - 1 + batch_tokens) / block) + 1


def interleaved_required_kv_bytes(arch: Architecture, max_model_len: int, block: int, per_token: int,
                                  held_back: int, batch_tokens: int, rules: VllmRules) -> int:
    layer_page = per_token // arch.layers * block  # per_token is every layer's, all alike in bytes
    size, kinds = _groups(arch, rules.hybrid_group_ratio)
    pool_block = size * layer_page
    if not rules.hybrid_groups_summed:  # 0.17.1: the first group's kind, for every group
        return pool_block * _layer_blocks(kinds[0][0], max_model_len, block, batch_tokens)
    blocks = sum(groups * _layer_blocks(window, max_model_len, block, batch_tokens) for window, groups in kinds)
    return pool_block * (blocks + held_back)


def _longest_by_search(arch: Architecture, kv_bytes: int, block: int, per_token: int, cap: int | None,
                       held_back: int, batch_tokens: int, rules: VllmRules) -> int:
    """vLLM's _estimate_max_model_len_from_groups: the longest length from 1 to the cap whose minimum fits."""
    def fits(length: int) -> bool:
        return interleaved_required_kv_bytes(arch, length, block, per_token, held_back, batch_tokens,
                                             rules) <= kv_bytes
    lo, hi = 0, cap or 2**31
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


@dataclass(frozen=True, slots=True)
class VllmGpuCheck:
    """vLLM's arithmetic on one GPU; headroom >= 0 passes."""

    budget: int  # R
    kv_cache_bytes: int  # R - W_gpu - O
    kv_cache_headroom: int  # KV - required
    max_model_len: int  # longest context that fits


def check_gpu(
    *,
    cuda_total_bytes: int,
    gmu: float,
    weights_per_gpu: int,
    runtime_overhead: int,
    required_kv: int,
    arch: Architecture,
    block: int,
    per_token: int,
    max_len_cap: int | None,
    held_back: int = HELD_BACK_BLOCKS,
    batch_tokens: int = SLIDING_BATCH_TOKENS,
    rules: VllmRules | None = None,
) -> VllmGpuCheck:
    budget = budget_bytes(cuda_total_bytes, gmu)
    kv = budget - weights_per_gpu - runtime_overhead
    return VllmGpuCheck(
        budget=budget,
        kv_cache_bytes=kv,
        kv_cache_headroom=kv - required_kv,  # KV <= 0 fails too: required is never 0
        max_model_len=longest_context(arch, kv, block, per_token, max_len_cap, held_back, batch_tokens, rules),
    )


def startup_error(free: int, total: int, gmu: float, budget: int) -> str:
    """vLLM's start-up error, verbatim in form."""
    return (f"Free memory on device cuda:0 ({free / 2**30:.2f}/{total / 2**30:.2f} GiB) on startup is less "
            f"than desired GPU memory utilization ({gmu}, {budget / 2**30:.2f} GiB). Decrease GPU memory "
            "utilization or reduce GPU memory used by other processes.")


# --- vLLM 0.34's extensible KV cache (versions.py extensible_kv_cache) ----------------------------------
# vllm/v1/worker/extensible_kv_cache.py (0.34.0): what the KV cache may take is measured after warm-up and
# CUDA graph capture; a margin of max(1 GiB, 0.75 x the transient peak) stays free on CUDA.
KV_CACHE_MARGIN_FLOOR_BYTES = 1 << 30
KV_CACHE_MARGIN_FRACTION = 0.75


def extensible_kv_bytes(*, init_free: int, free: int, committed: int, requested: int, transient_peak: int = 0,
                        torch_growth: int = 0) -> int:
    """measure_kv_cache_bytes: min(R - non-KV used, free + committed - margin) - max(transient peak, torch
    growth), never below 0; non-KV used = free at start - free now - the KV committed so far."""
    non_kv_used = init_free - free - committed
    margin = max(KV_CACHE_MARGIN_FLOOR_BYTES, int(transient_peak * KV_CACHE_MARGIN_FRACTION))
    available = min(requested - non_kv_used, free + committed - margin) - max(transient_peak, torch_growth)
    return max(available, 0)


def extensible_kv_static(*, budget: int, device_room: int, weights_per_gpu: int, runtime_overhead: int,
                         transient_peak: int) -> int:
    """The KV 0.34 sizes on a GPU where ``device_room`` bytes are free when it starts (CUDA total less its own
    context and what others hold): ``extensible_kv_bytes`` with the engine's own use, weights and O (the
    transient peak is part of O), measured after warm-up."""
    non_kv = weights_per_gpu + runtime_overhead - transient_peak
    return extensible_kv_bytes(init_free=device_room, free=device_room - non_kv, committed=0, requested=budget,
                               transient_peak=transient_peak)


# --- models without a KV cache ----------------------------------------------------------------------------
# vllm/v1/worker/gpu_model_runner.py::get_kv_cache_spec: "encoder-only attention does not need KV cache" (the
# layers of AttentionType.ENCODER / ENCODER_ONLY get no spec); vllm/v1/engine/core.py::_initialize_kv_caches:
# with no spec at all, no memory is profiled and none is allocated for a KV cache. The start-up check on free
# memory (v1/worker/utils.py::request_memory, in init_device) still runs at --gpu-memory-utilization. The
# architectures vLLM builds from encoder-only attention: its bert.py, roberta.py, bert_with_rope.py and
# modernbert.py families and the bidirectional (non-causal) variants of decoders. Decoder-based embedding and
# reranker models (Qwen3-Embedding, LlamaModel, Qwen2Model...) keep a KV cache sized from the budget. Read in
# vLLM's V1 sources (the skip is there since V1 ran encoder-only models); not re-read for each version here.
_ENCODER_ONLY_PREFIXES = ("Bert", "Roberta", "XLMRoberta", "ModernBert", "NomicBert", "Gte", "SnowflakeGte",
                          "JinaRoberta", "BgeM3", "HF_ColBERT", "ColBERTModernBert", "ColBERTJinaRoberta")


def allocates_kv_cache(arch: Architecture) -> bool:
    """Whether vLLM allocates a KV cache for this model: not for one built of encoder-only attention alone."""
    names = arch.architectures
    encoder_only = bool(names) and all(name.startswith(_ENCODER_ONLY_PREFIXES) or "Bidirectional" in name
                                       for name in names)
    return not encoder_only
