"""backend_parameters as GPUStack reads them and as vLLM reads them (table-driven)."""

from __future__ import annotations

import pytest

from vram_exporter.rules.flags import gpustack_params, parse_model_len, vllm_params, with_param


@pytest.mark.parametrize("params, gpustack_g, vllm_g", [
    ([], 0.9, None),
    (["--gpu-memory-utilization=0.8"], 0.8, 0.8),
    (["--gpu-memory-utilization 0.8"], 0.8, 0.8),
    (["--gpu-memory-utilization", "0.8"], 0.8, 0.8),
    (["--gpu_memory_utilization=0.5"], 0.9, 0.5),          # GPUStack does not see the underscore spelling
    (["--device-memory-utilization=0.7"], 0.9, 0.7),       # vLLM's alias
    (["--gpu-memory-utilization=0.6", "--gpu-memory-utilization=0.7"], 0.6, 0.7),  # first vs last wins
    (["--max-model-len 4096 --gpu-memory-utilization=0.85"], 0.85, 0.85),  # a pasted command line
])
def test_gpu_memory_utilization_by_reader(params, gpustack_g, vllm_g):
    assert gpustack_params(params).gpu_memory_utilization == gpustack_g
    assert vllm_params(params).gpu_memory_utilization == vllm_g


def test_underscore_spelling_is_flagged():
    assert vllm_params(["--gpu_memory_utilization=0.5"]).spelled_with_underscore
    assert not vllm_params(["--gpu-memory-utilization=0.5"]).spelled_with_underscore


@pytest.mark.parametrize("params, world, tp", [
    ([], None, None),
    (["--tensor-parallel-size=2"], 2, 2),
    (["-tp", "4"], 4, 4),
    (["--tensor-parallel-size 2", "--pipeline-parallel-size=2"], 4, 2),
    (["--data-parallel-size=2"], 2, None),
])
def test_world_size_as_gpustack_computes_it(params, world, tp):
    parsed = gpustack_params(params)
    assert (parsed.world_size, parsed.tensor_parallel_size) == (world, tp)
    assert vllm_params(params).tensor_parallel_size == (tp or 1)


def test_gpustack_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="must be positive"):
        gpustack_params(["--tensor-parallel-size=0"])
    with pytest.raises(ValueError, match="cannot read"):
        gpustack_params(["--gpu-memory-utilization=lots"])


@pytest.mark.parametrize("text, tokens", [
    ("32768", 32768), ("4k", 4000), ("1K", 1024), ("128K", 131072), ("auto", -1), ("-1", -1), ("1.5k", 1500)])
def test_max_model_len_forms(text, tokens):
    assert parse_model_len(text) == tokens


def test_max_model_len_garbage_is_an_error():
    with pytest.raises(ValueError, match="max-model-len"):
        parse_model_len("lots")


def test_vllm_reads_kv_cache_dtype_and_block_size():
    parsed = vllm_params(["--kv-cache-dtype", "fp8_e4m3", "--block-size=32", "--max-model-len=8k"])
    assert (parsed.kv_cache_dtype, parsed.block_size, parsed.max_model_len) == ("fp8_e4m3", 32, 8000)


def test_with_param_replaces_every_spelling_so_both_readers_agree():
    params = ["--gpu_memory_utilization", "0.5", "--max-model-len=4096", "--gpu-memory-utilization=0.6"]
    changed = with_param(params, "gpu-memory-utilization", 0.85)
    assert changed == ("--max-model-len=4096", "--gpu-memory-utilization=0.85")
    assert gpustack_params(changed).gpu_memory_utilization == vllm_params(changed).gpu_memory_utilization == 0.85


# GPUStack's world size and executor, as vllm_resource_fit_selector.py and utils/command.py read them.

def test_hybrid_lb_sizes_the_deployment_by_its_local_ranks():
    from vram_exporter.rules.flags import gpustack_params

    assert gpustack_params(["--dp", "4", "--dpl", "2", "--data-parallel-hybrid-lb"]).world_size == 2
    assert gpustack_params(["--dp", "2", "--data-parallel-hybrid-lb"]).world_size is None  # nothing inferred
    assert gpustack_params(["--dp", "2", "--data-parallel-hybrid-lb=false"]).world_size == 2
    assert gpustack_params(["--tp", "2", "--dp", "2"]).world_size == 4


def test_non_positive_local_ranks_and_mp_arguments_are_refused():
    from vram_exporter.errors import ModelError
    from vram_exporter.rules.flags import gpustack_params

    with pytest.raises(ModelError, match="data-parallel-size-local 0 must be positive"):
        gpustack_params(["--data-parallel-size-local=0"])
    assert "multiple of --data-parallel-size-local 4" in gpustack_params(["--dp", "2", "--dpl", "4"]).mp_arguments_problem
    assert gpustack_params(["--dp", "4", "--dpl", "2"]).mp_arguments_problem is None


@pytest.mark.parametrize("params, version, image, mp", [
    ([], None, None, False),  # GPUStack's runner images bundle Ray
    (["--distributed-executor-backend=mp"], None, None, True),
    (["--distributed-executor-backend", "ray"], "0.20.0-custom", "img", False),  # explicit wins
    ([], None, "my/vllm:latest", True),  # a pinned image may lack Ray
    ([], "0.11.0-custom", None, False),  # custom below 0.18.0 bundles Ray
    ([], "0.18.0-custom", None, True),
    ([], "v0.19.1-custom", None, True),
])
def test_executor_as_gpustack_resolves_it(params, version, image, mp):
    from vram_exporter.rules.flags import executor_is_mp

    assert executor_is_mp(params, version, image) is mp


def test_language_model_only_skips_the_vision_heads():
    from vram_exporter.rules import gpustack
    from vram_exporter.rules.model import Architecture
    from vram_exporter.rules.flags import gpustack_params

    from dataclasses import replace

    arch = replace(Architecture.from_config({"num_hidden_layers": 2, "num_attention_heads": 32,
                                             "num_key_value_heads": 8, "hidden_size": 4096, "vocab_size": 128256,
                                             "torch_dtype": "bfloat16", "max_position_embeddings": 4096}),
                   vision_attention_heads=12)
    both = gpustack_params(["--tp", "8"])
    text = gpustack_params(["--tp", "8", "--language-model-only"])
    assert "vision attention heads (12)" in gpustack.tp_divisibility_problem(gpustack.tp_arch(arch, both), 8)
    assert gpustack.tp_divisibility_problem(gpustack.tp_arch(arch, text), 8) is None
