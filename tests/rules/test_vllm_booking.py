"""What vLLM holds of a GPU against what GPUStack booked for it, where another instance shares the GPU
(issue 21 item 6: check ``vllm_takes_beyond_booking``), and the flags that size the KV cache directly
(--kv-cache-memory-bytes, --num-gpu-blocks-override)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from fitcases import gpu, node, seed_model
from vram_exporter.errors import ModelError
from vram_exporter.rules.backends.vllm import runtime, versions
from vram_exporter.rules.flags import human_readable_int, vllm_params
from vram_exporter.rules.model import Architecture, Cluster, EngineVersion
from vram_exporter.rules.node import fit_node
from vram_exporter.rules.verdicts import BOOKING_CHECK

H100 = 85_520_809_984
GIB = 2**30


def _beside(version: str, *flags: str):
    """Model a (``version``, GPUStack books 0.9 and passes no fraction) and a small model b that GPUStack places
    in the rest of the card (--gpu-memory-utilization=0.08, vLLM 0.33)."""
    first = replace(seed_model("--tensor-parallel-size=1", *flags, name="a"),
                    engine_version=EngineVersion(version, "test"))
    second = replace(seed_model("--gpu-memory-utilization=0.08", name="b", max_model_len=4096),
                     engine_version=EngineVersion("0.33.0", "test"))
    return fit_node(node(gpu(0, H100)), Cluster(), [first, second]).models


def test_034_with_the_fraction_unset_takes_what_gpustack_booked_for_its_neighbour():
    a, b = _beside("0.34.0")
    assert a.fits and a.gpus == b.gpus == (0,)
    claim = int(0.9 * H100)
    # the extensible KV cache fills the card but its 1 GiB margin and the process's CUDA context
    held = H100 - Cluster().vllm_context_overhead - GIB
    assert a.per_gpu[0].headroom[BOOKING_CHECK] == claim - held
    assert not b.fits and b.per_gpu[0].headroom["vllm_free_memory"] < 0
    said = next(r for r in a.reasons if BOOKING_CHECK.startswith("vllm") and "booked on that GPU" in r)
    assert "vLLM 0.34.0" in said and "b is booked on that GPU" in said
    assert "--gpu-memory-utilization=0.9" in said and "--kv-cache-memory-bytes=" in said


@pytest.mark.parametrize("fix", ["gpu-memory-utilization", "kv-cache-memory-bytes"])
def test_either_fix_the_reason_names_keeps_it_within_the_booking_and_its_neighbour_starts(fix):
    a, _ = _beside("0.34.0")
    flag = re.search(rf"--{fix}=\d+(\.\d+)?M?", " ".join(a.reasons)).group(0)
    fixed_a, fixed_b = _beside("0.34.0", flag)
    assert fixed_a.fits and fixed_b.fits
    assert fixed_a.per_gpu[0].headroom[BOOKING_CHECK] >= -2**20  # the claim's and the budget's rounding
    assert not any("booked on that GPU" in r for r in fixed_a.reasons)


def test_033_default_fraction_above_gpustacks_is_named_too():
    a, b = _beside("0.33.0")
    assert -2 * GIB < a.per_gpu[0].headroom[BOOKING_CHECK] < -GIB  # 0.92 vs 0.9 of 79.6 GiB
    assert not b.fits and any("b is booked on that GPU" in r for r in a.reasons)


def test_0171_reads_gpustacks_default_so_the_check_passes_without_a_reason():
    a, b = _beside("0.17.1")
    assert a.fits and b.fits
    assert abs(a.per_gpu[0].headroom[BOOKING_CHECK]) <= 1 and not any("booked on that GPU" in r for r in a.reasons)


def test_no_check_without_a_neighbour():
    alone = replace(seed_model("--tensor-parallel-size=1"), engine_version=EngineVersion("0.34.0", "test"))
    fit = fit_node(node(gpu(0, H100)), Cluster(), [alone]).models[0]
    assert BOOKING_CHECK not in fit.per_gpu[0].headroom and fit.fits


def test_kv_cache_flags_read_as_vllm_reads_them():
    assert human_readable_int("1k") == 1000 and human_readable_int("1K") == 1024
    assert human_readable_int("25.6k") == 25_600 and human_readable_int("2G") == 2 * GIB
    with pytest.raises(ValueError):
        human_readable_int("1.5G")  # vLLM: no decimals with binary suffixes
    vp = vllm_params(["--kv-cache-memory-bytes", "1G", "--kv_cache_memory_bytes=2G", "--num-gpu-blocks-override=7"])
    assert (vp.kv_cache_memory_bytes, vp.num_gpu_blocks_override) == (2 * GIB, 7)  # the last one wins
    with pytest.raises(ModelError):
        seed_model("--kv-cache-memory-bytes=lots").vllm
    refused = fit_node(node(gpu(0, H100)), Cluster(), [seed_model("--kv-cache-memory-bytes=lots")]).models[0]
    assert refused.error == "vLLM cannot read --kv-cache-memory-bytes 'lots'"


@pytest.mark.parametrize("flag", ["--kv-cache-memory-bytes=4G", "--num-gpu-blocks-override=100"])
def test_sizing_the_kv_cache_turns_034s_extensible_cache_off(flag):
    model = replace(seed_model("--tensor-parallel-size=1", flag), engine_version=EngineVersion("0.34.0", "t"))
    rules = versions.rules_of(model, Cluster())
    assert not rules.extensible_kv_cache and rules.gmu(None) == 0.92
    fit = fit_node(node(gpu(0, H100)), Cluster(), [model]).models[0]
    expected = 4 * GIB if "bytes" in flag else 100 * fit.block_tokens * fit.bytes_per_token
    assert fit.per_gpu[0].kv_bytes == expected
    assert "vllm_free_memory" in fit.per_gpu[0].headroom  # request_memory checks free memory again


def test_0171_checks_the_profiled_memory_and_allocates_the_override():
    model = replace(seed_model("--num-gpu-blocks-override=100"), engine_version=EngineVersion("0.17.1", "t"))
    fit = fit_node(node(gpu(0, H100)), Cluster(), [model]).models[0]
    assert fit.per_gpu[0].kv_bytes > 100 * fit.block_tokens * fit.bytes_per_token  # the check's memory
    assert fit.fits


QWEN_MLP = Architecture.from_config({"num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                                     "hidden_size": 1536, "intermediate_size": 8960, "torch_dtype": "bfloat16",
                                     "max_position_embeddings": 32768})


def test_034_margin_is_three_quarters_of_the_fitted_activation_peak_above_its_floor():
    """measure_kv_cache_bytes keeps max(1 GiB, 0.75 x transient peak) free and the peak itself; the peak is O's
    fitted activation peak at the batch vLLM runs (the 1 GiB floor alone where O is given)."""
    model = replace(seed_model("--max-num-batched-tokens=32768", arch=QWEN_MLP),
                    engine_version=EngineVersion("0.34.0", "t"))
    fit = fit_node(node(gpu(0, H100)), Cluster(), [model]).models[0]
    peak = runtime.fitted_transient_peak(QWEN_MLP, version="0.34.0", device_total_bytes=H100,
                                         max_num_batched_tokens=32768)
    overhead = runtime.fitted_runtime_overhead(QWEN_MLP, version="0.34.0", device_total_bytes=H100,
                                               max_num_batched_tokens=32768)
    assert 0.75 * peak > GIB  # the fraction, not the floor, decides here
    room = H100 - Cluster().vllm_context_overhead
    assert fit.per_gpu[0].kv_bytes == room - fit.per_gpu[0].weights - overhead - int(0.75 * peak)
    given = fit_node(node(gpu(0, H100)), Cluster(vllm_runtime_overhead=overhead), [model]).models[0]
    assert given.per_gpu[0].kv_bytes == room - fit.per_gpu[0].weights - overhead - GIB
