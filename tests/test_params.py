"""backend_parameters as GPUStack reads them and as vLLM reads them (table-driven)."""

from __future__ import annotations

import pytest

from vram_exporter.fit.params import gpustack_params, parse_model_len, vllm_params, with_param


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
