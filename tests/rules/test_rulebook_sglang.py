"""Rulebook C (rules/backends/sglang/engine.py) against SGLang 0.5.9's own functions, run on the CPU (tests/sglang_source.py),
and GPUStack's SGLang fraction (rules/backends/sglang/selector.py) against SGLang's default it was ported from."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from sglang_source import TORCH, Dtype, function
from vram_exporter.errors import ModelError
from vram_exporter.rules.backends.sglang import selector as gpustack_sglang, engine as sglang
from vram_exporter.rules.model import Architecture, hf_context_length

MIB, GIB = 2**20, 2**30
QWEN_7B = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
           "vocab_size": 152064, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}
LLAMA_8B = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
            "vocab_size": 128256, "torch_dtype": "bfloat16", "max_position_embeddings": 131072,
            "rope_scaling": {"factor": 8.0, "rope_type": "llama3", "original_max_position_embeddings": 8192}}
DEEPSEEK_V2_LITE = {"num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
                    "hidden_size": 2048, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "vocab_size": 102400,
                    "torch_dtype": "bfloat16", "max_position_embeddings": 163840}
CARDS_MIB = [6138, 8192, 12288, 16384, 23028, 24564, 40960, 46068, 49140, 81559, 97871, 143771, 183359]


def sglang_default_fraction(gpu_mem_mib: float, **args) -> float:
    """ServerArgs._handle_gpu_memory_settings run on a stand-in ServerArgs with SGLang's defaults."""
    handle = function("server_args.py", "_handle_gpu_memory_settings",
                      {"envs": SimpleNamespace(SGLANG_SYMM_MEM_PREALLOC_GB_SIZE=None)}, cls="ServerArgs")
    self = SimpleNamespace(
        chunked_prefill_size=None, cuda_graph_max_bs=None, cuda_graph_bs=None, tp_size=1, pp_size=1, dp_size=1,
        enable_dp_attention=False, speculative_algorithm=None, enable_piecewise_cuda_graph=False,
        piecewise_cuda_graph_max_tokens=None, piecewise_cuda_graph_tokens=None, max_prefill_tokens=16384,
        mem_fraction_static=None, enable_symm_mem=False, language_only=False)
    for key, value in args.items():
        setattr(self, key, value)
    self._generate_cuda_graph_batch_sizes = lambda: [self.cuda_graph_max_bs]
    self._generate_piecewise_cuda_graph_tokens = lambda: []
    self.use_mla_backend = lambda: False
    self.get_model_config = lambda: SimpleNamespace(is_multimodal=False)
    handle(self, gpu_mem_mib)
    return self.mem_fraction_static


FLAG = {"tp_size": "--tp-size", "pp_size": "--pp-size", "chunked_prefill_size": "--chunked-prefill-size",
        "cuda_graph_max_bs": "--cuda-graph-max-bs", "speculative_algorithm": "--speculative-algorithm"}
VARIANTS = [{}, {"tp_size": 2}, {"tp_size": 4}, {"tp_size": 8, "pp_size": 2}, {"chunked_prefill_size": 4096},
            {"chunked_prefill_size": -1}, {"cuda_graph_max_bs": 64}, {"speculative_algorithm": "EAGLE"},
            {"speculative_algorithm": "NGRAM"}, {"speculative_algorithm": "STANDALONE", "tp_size": 2}]


@pytest.mark.parametrize("card, variant", list(itertools.product(CARDS_MIB, range(len(VARIANTS)))))
def test_default_fraction_is_sglangs_own(card, variant):
    args = VARIANTS[variant]
    params = [f"{FLAG[k]}={v}" for k, v in args.items()]
    ours = sglang.default_mem_fraction_static(card * MIB, sglang.sglang_params(params), Architecture.from_config(QWEN_7B))
    assert ours == sglang_default_fraction(float(card), **args)


def test_gpustack_fraction_differs_from_sglang_only_where_its_port_does():
    """GPUStack's port reserves nothing for prefill when chunked prefill is off; SGLang reserves 24 GiB."""
    arch = Architecture.from_config(QWEN_7B)
    for card in CARDS_MIB:
        for args in VARIANTS:
            params = [f"{FLAG[k]}={v}" for k, v in args.items()]
            theirs = gpustack_sglang.gpustack_mem_fraction_static(
                card * MIB, gpustack_sglang.gpustack_sglang_params(params))
            own = sglang.default_mem_fraction_static(card * MIB, sglang.sglang_params(params), arch)
            assert (theirs == own) is (args.get("chunked_prefill_size") != -1), (card, args)
    assert [gpustack_sglang.gpustack_mem_fraction_static(mib * MIB, gpustack_sglang.gpustack_sglang_params([]))
            for mib in (6138, 16384, 24564, 81559, 143771)] == [0.393, 0.772, 0.847, 0.835, 0.907]


def sglang_cell_size(config: dict, tp: int, kv_bytes: int) -> int:
    """ModelRunnerKVCacheMixin.get_cell_size_per_token with SGLang's ModelConfig.get_num_kv_heads."""
    get_num_kv_heads = function("configs/model_config.py", "get_num_kv_heads", {}, cls="ModelConfig")
    arch = Architecture.from_config(config)
    model_config = SimpleNamespace(
        is_hybrid_swa=False, head_dim=arch.head_dim, v_head_dim=arch.head_dim, hf_config=config,
        kv_lora_rank=config.get("kv_lora_rank"), qk_rope_head_dim=config.get("qk_rope_head_dim"),
        get_total_num_kv_heads=lambda: arch.kv_heads)
    model_config.get_num_kv_heads = lambda tp_size: get_num_kv_heads(model_config, tp_size)
    cell = function("model_executor/model_runner_kv_cache_mixin.py", "get_cell_size_per_token",
                    {"torch": TORCH, "is_float4_e2m1fn_x2": lambda dtype: False, "is_deepseek_nsa": lambda c: False,
                     "get_attention_tp_size": lambda: tp}, cls="ModelRunnerKVCacheMixin")
    runner = SimpleNamespace(kv_cache_dtype=Dtype(size=kv_bytes), use_mla_backend=arch.mla, model_config=model_config)
    return cell(runner, arch.layers)


@pytest.mark.parametrize("config, tp, kv_dtype", [
    (QWEN_7B, 1, "auto"), (QWEN_7B, 2, "auto"), (QWEN_7B, 8, "fp8_e4m3"), (LLAMA_8B, 4, "auto"),
    (LLAMA_8B, 1, "fp8_e5m2"), (DEEPSEEK_V2_LITE, 1, "auto"), (DEEPSEEK_V2_LITE, 2, "fp8_e4m3")])
def test_kv_bytes_per_token_are_sglangs_own(config, tp, kv_dtype):
    arch = Architecture.from_config(config)
    kv_bytes = sglang.kv_bytes_per_element(arch, kv_dtype)
    assert sglang.cell_size(arch, tp=tp, pp=1, kv_bytes=kv_bytes) == sglang_cell_size(config, tp, kv_bytes)
    if config is QWEN_7B and tp == 1:
        assert sglang.cell_size(arch, tp=1, pp=1, kv_bytes=2) == 57_344  # 2 x 28 layers x 4 heads x 128 x 2 bytes


def sglang_pool_tokens(free: int, weights: int, fraction: float, cell: int) -> int:
    """ModelRunnerKVCacheMixin.profile_max_num_token: free at init = total_gpu_memory (GiB); the free
    memory it measures after loading is what is left once the weights are in."""
    profile = function("model_executor/model_runner_kv_cache_mixin.py", "profile_max_num_token", {
        "get_available_gpu_memory": lambda *a, **k: (free - weights) / GIB,
        "get_world_group": lambda: SimpleNamespace(world_size=1, cpu_group=None)}, cls="ModelRunnerKVCacheMixin")
    runner = SimpleNamespace(device="cuda", gpu_id=0, is_draft_worker=False, mambaish_config=None,
                             num_effective_layers=1, get_cell_size_per_token=lambda layers: cell,
                             mem_fraction_static=fraction)
    return profile(runner, free / GIB)


@pytest.mark.parametrize("free, weights, fraction, cell", [
    (80 * GIB, 15_231_233_024, 0.835, 57_344), (140 * GIB, 16_060_522_496, 0.907, 131_072),
    (6138 * MIB - 512 * MIB, 3_087_467_144, 0.393, 28_672), (24 * GIB, 15_231_233_024, 0.6, 57_344),
    (24 * GIB, 3_087_467_144, 0.847, 28_672)])
def test_pool_tokens_are_sglangs_own(free, weights, fraction, cell):
    ours = sglang.pool_tokens(free_at_start=free, mem_fraction_static=fraction, weights=weights, pre_pool_overhead=0,
                              cell=cell)
    assert ours == sglang_pool_tokens(free, weights, fraction, cell)


def test_a_small_card_at_sglangs_default_has_no_pool():
    """On a 6 GiB card SGLang's default keeps 0.393 for weights + KV: Qwen2.5-1.5B's 2.9 GiB does not fit."""
    tokens = sglang.pool_tokens(free_at_start=6138 * MIB - 512 * MIB, mem_fraction_static=0.393,
                                weights=3_087_467_144, pre_pool_overhead=0, cell=28_672)
    assert tokens < 0 and "increase --mem-fraction-static" in sglang.not_enough_memory(0.393)


def test_context_length_is_sglangs_own():
    get_context_length = function("utils/hf_transformers_utils.py", "get_context_length", {
        "CONTEXT_LENGTH_KEYS": ["max_sequence_length", "seq_length", "max_seq_len", "model_max_length",
                                "max_position_embeddings"]})
    for config in (QWEN_7B, LLAMA_8B, {**QWEN_7B, "rope_scaling": {"factor": 4.0, "type": "yarn"}},
                   {"seq_length": 8192, **QWEN_7B}):
        assert hf_context_length(config) == get_context_length(SimpleNamespace(rope_scaling=None, **config)
                                                                     if "rope_scaling" not in config
                                                                     else SimpleNamespace(**config))
    with pytest.raises(ModelError, match="SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"):
        sglang.context_length(32768, 65536, {})
    assert sglang.context_length(32768, 65536, {"SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": "1"}) == 65536
    yarn = Architecture.from_config({**QWEN_7B, "rope_scaling": {"factor": 4.0, "type": "yarn"}})
    assert yarn.hf_context_len == 131072 and Architecture.from_config(LLAMA_8B).hf_context_len == 131072


def test_sglang_reads_the_last_flag_gpustack_the_first():
    params = ["--mem-fraction-static=0.8", "--mem-fraction-static 0.7", "--tp 2", "--tp-size=4"]
    assert sglang.sglang_params(params).mem_fraction_static == 0.7 and sglang.sglang_params(params).tp == 4
    theirs = gpustack_sglang.gpustack_sglang_params(params)
    assert theirs.mem_fraction_static == 0.8 and theirs.tp == 2 and theirs.world_size == 2
    with pytest.raises(ModelError, match="--kv-cache-dtype"):
        sglang.sglang_params(["--kv-cache-dtype=fp4_e2m1"])
