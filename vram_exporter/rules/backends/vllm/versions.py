"""The rules that differ between vLLM versions, each written once per range of versions, with the file of
vLLM's wheel (PyPI, `pip download --no-deps vllm==X`) it was read from. Nothing outside this module forks on
the version: the backend asks ``rules_of(model, cluster)`` and uses what it says.

Read from vLLM 0.17.1, 0.32.0, 0.33.0 and 0.34.0 (the versions GPUStack 2.3.0's runners start, and the
newest), and 0.26.0 (measured on an H200, tests/data/vllm-h200). A version between two read ones takes the
rules of the older one: vLLM 0.18-0.25 and 0.27-0.31 were not read (docs/rulebooks.md, "vLLM versions").
tests/rules/test_vllm_source.py runs each read version's own functions against these rules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...model import Cluster, ModelSpec


@dataclass(frozen=True, slots=True)
class BatchTier:
    """`vllm serve`'s max_num_batched_tokens and max_num_seqs on GPUs of at least ``min_bytes``."""

    min_bytes: int
    batched_tokens: int
    seqs: int
    excludes_a100: bool = False  # the tier is not for A100s ("a100" in the device name)


GIB = 2**30
# vllm/engine/arg_utils.py::_get_default_max_num_seqs_and_batched_tokens (OPENAI_API_SERVER), largest first.
_BATCH_TIERS_TO_031 = (BatchTier(70 * GIB, 8192, 1024, excludes_a100=True), BatchTier(0, 2048, 256))
# 0.32.0 added a tier for GPUs of 160 GiB or more (B200/B300): 16384 tokens.
_BATCH_TIERS_FROM_032 = (BatchTier(160 * GIB, 16384, 1024),) + _BATCH_TIERS_TO_031


@dataclass(frozen=True, slots=True)
class VllmRules:
    """What differs between the vLLM versions the rulebook knows."""

    version: str  # the oldest version these rules hold for
    held_back_blocks: int  # blocks beyond the layers' own minimum the KV check needs (BlockPool's null block)
    graphs_in_budget: bool  # CUDA graph memory is taken out of R (part of O)
    block_tokens: int  # the default KV block (--block-size unset), every layer kind
    default_gmu: float  # --gpu-memory-utilization unset, estimate-based sizing
    extensible_kv_cache: bool  # the KV cache is sized after warm-up from measured memory (unset gmu: 1.0)
    batch_tiers: tuple[BatchTier, ...]
    # batches a sliding-window layer holds beyond its window: 0.17.1's SlidingWindowSpec keeps one
    # (scheduler_config.max_num_batched_tokens); from 0.26 VllmConfig.max_in_flight_tokens, two with async
    # scheduling (max_concurrent_batches)
    in_flight_batches: int = 2
    # --num-gpu-blocks-override sizes the memory the KV check reads too (from 0.32:
    # vllm/v1/core/kv_cache_utils.py::get_kv_cache_configs "adjusted_memory"); in 0.17.1 only the allocation
    # (may_override_num_blocks after the check).
    override_checked: bool = True
    # Interleaved sliding/full layers (engine.py interleaved_required_kv_bytes): the start-up check sums every
    # KV cache group's blocks (from 0.32; 0.17.1 takes the first group's for all), and a kind's layers are
    # grouped by the most where that is under this many times the fewest (kv_cache_utils.py
    # _get_kv_cache_groups_uniform_page_size: 1.25 in 0.17.1, 1.5 from 0.32).
    hybrid_groups_summed: bool = True
    hybrid_group_ratio: float = 1.5
    # LoRA (lora.py): the punica wrapper's embeddings index is two rows of tokens in 0.17.1 and 0.26.0, one
    # from 0.32 (vllm/lora/punica_wrapper/punica_base.py); an adapter's rank is checked against --max-lora-rank
    # by its r alone in 0.17.1 and 0.26.0, by the largest of r and rank_pattern from 0.32
    # (vllm/lora/peft_helper.py).
    lora_embedding_index_rows: int = 1
    lora_rank_pattern_checked: bool = True
    # speculative decoding's "draft_model" method wants the draft's TP to be the target's (0.17.1-0.33.0:
    # vllm/v1/spec_decode/draft_model.py::_raise_if_draft_tp_mismatch; 0.34.0's drafters do not check it)
    draft_tp_must_match: bool = True

    def batch_defaults(self, device_total_bytes: int | None, device_name: str = "") -> tuple[int, int]:
        """(max_num_batched_tokens, max_num_seqs) `vllm serve` runs when neither flag is given."""
        total = device_total_bytes or 0
        for tier in self.batch_tiers:
            if total >= tier.min_bytes and not (tier.excludes_a100 and "a100" in device_name.lower()):
                return tier.batched_tokens, tier.seqs
        return self.batch_tiers[-1].batched_tokens, self.batch_tiers[-1].seqs

    def gmu(self, given: float | None) -> float:
        """The --gpu-memory-utilization vLLM runs with (vllm/config/cache.py resolved_gpu_memory_utilization
        in 0.34: unset is 1.0 with the extensible KV cache)."""
        if given is not None:
            return given
        return 1.0 if self.extensible_kv_cache else self.default_gmu


# The flags that size vLLM's KV cache; with none of them, 0.34's extensible cache takes what is free after warm-up
# (--gpu-memory-utilization unset is 1.0: vllm/config/cache.py resolved_gpu_memory_utilization; the other two
# turn the extensible cache off: vllm/config/vllm.py::_resolve_extensible_kv_cache). The fix that removes them
# (fixes.py) and the explain page's what-if that tries it remove the same ones.
KV_SIZING_FLAGS = ("gpu-memory-utilization", "kv-cache-memory-bytes", "num-gpu-blocks-override")
KV_BYTES_FLAG = "kv-cache-memory-bytes"


VLLM_RULES = {
    # vllm/config/cache.py: gpu_memory_utilization = 0.9; vllm/platforms/cuda.py: block_size 16;
    # vllm/v1/core/kv_cache_utils.py::get_kv_cache_configs checks the whole memory (no null block held
    # back); vllm/v1/worker/gpu_worker.py takes no CUDA graph estimate out of the budget.
    "0.17": VllmRules("0.17", held_back_blocks=0, graphs_in_budget=False, block_tokens=16, default_gmu=0.9,
                      extensible_kv_cache=False, batch_tiers=_BATCH_TIERS_TO_031, in_flight_batches=1,
                      override_checked=False, hybrid_groups_summed=False, hybrid_group_ratio=1.25,
                      lora_embedding_index_rows=2, lora_rank_pattern_checked=False),
    # 0.26.0 as measured on an H200 (tests/data/vllm-h200): the minimum is cdiv(max_model_len, B) pages
    # (vllm/v1/kv_cache_interface.py); CUDA graphs only with VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS.
    # gpu_memory_utilization 0.92 from 0.20 (vllm/config/cache.py).
    # Its --num-gpu-blocks-override was not read: taken as 0.17.1's.
    "0.26": VllmRules("0.26", held_back_blocks=0, graphs_in_budget=False, block_tokens=16, default_gmu=0.92,
                      extensible_kv_cache=False, batch_tiers=_BATCH_TIERS_TO_031, override_checked=False,
                      lora_embedding_index_rows=2, lora_rank_pattern_checked=False),
    # 0.32.0: get_kv_cache_configs "Reserve[s] the null block BlockPool permanently holds back" (one pool
    # block off the memory checked); gpu_worker.py takes profile_cudagraph_memory() out of the budget
    # (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS defaults to 1); arg_utils.py's 160 GiB tier.
    "0.32": VllmRules("0.32", held_back_blocks=1, graphs_in_budget=True, block_tokens=16, default_gmu=0.92,
                      extensible_kv_cache=False, batch_tiers=_BATCH_TIERS_FROM_032),
    # 0.33.0: the same rules (the check moved to vllm/v1/core/kv_cache_planning.py).
    "0.33": VllmRules("0.33", held_back_blocks=1, graphs_in_budget=True, block_tokens=16, default_gmu=0.92,
                      extensible_kv_cache=False, batch_tiers=_BATCH_TIERS_FROM_032),
    # 0.34.0: CacheConfig.DEFAULT_BLOCK_SIZE = 64; enable_extensible_kv_cache on by default on CUDA
    # (vllm/config/vllm.py::_resolve_extensible_kv_cache: off with --kv-cache-memory-bytes or
    # --num-gpu-blocks-override), unset gpu_memory_utilization then 1.0, no free-memory check at start-up
    # (vllm/v1/worker/utils.py::request_memory), KV sized after warm-up
    # (vllm/v1/worker/extensible_kv_cache.py::measure_kv_cache_bytes).
    "0.34": VllmRules("0.34", held_back_blocks=1, graphs_in_budget=True, block_tokens=64, default_gmu=0.92,
                      extensible_kv_cache=True, batch_tiers=_BATCH_TIERS_FROM_032, draft_tp_must_match=False),
}


def _key(version: str) -> tuple[int, ...]:
    """(major, minor) of "0.17.1" or "v0.17.1" (the manifest's version pattern allows the "v")."""
    return tuple(int(p) for p in version.lstrip("vV").split(".")[:2] if p.isdigit())


def rules_for(version: str) -> VllmRules:
    """The rules of a vLLM version "X.Y[.Z]": the newest known rules not newer than it (the oldest known
    for anything older)."""
    wanted = _key(version)
    chosen = _OLDEST_FIRST[0][1]
    for key, rules in _OLDEST_FIRST:
        if key <= wanted:
            chosen = rules
    return chosen


# Parsed once: the fix search asks for a version's rules hundreds of thousands of times.
_OLDEST_FIRST = sorted((_key(v), rules) for v, rules in VLLM_RULES.items())


def version_of(model: ModelSpec, cluster: Cluster) -> str:
    """The vLLM version a model's verdict assumes: its own (GPUStack's pick, the running instance's), else
    the cluster's default."""
    return model.engine_version.version if model.engine_version is not None else cluster.vllm_version


def rules_of(model: ModelSpec, cluster: Cluster) -> VllmRules:
    """The one place a model's vLLM rules are chosen: its version's, with 0.34's extensible KV cache off where
    the KV cache is sized directly (vllm/config/vllm.py::_resolve_extensible_kv_cache: "it sizes the KV cache
    from measured memory, which kv_cache_memory_bytes [num_gpu_blocks_override] overrides")."""
    rules = rules_for(version_of(model, cluster))
    sized = model.vllm.kv_cache_memory_bytes is not None or model.vllm.num_gpu_blocks_override is not None
    return replace(rules, extensible_kv_cache=False) if rules.extensible_kv_cache and sized else rules
