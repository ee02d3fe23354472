"""The vLLM version as a cluster setting or a model's own (issues 17, 21): the rules that differ between versions
(rules/backends/vllm/versions.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from fitcases import gpu, node, seed_model
from vram_exporter.sources.manifest import ClusterSettings
from vram_exporter.rules.backends.vllm import engine as vllm, runtime as vllm_runtime
from vram_exporter.rules.backends.vllm import versions as vllm_versions
from vram_exporter.rules.model import RUNTIME_OVERHEAD_FALLBACK, Architecture, Cluster, EngineVersion
from vram_exporter.rules.node import fit_node

QWEN = Architecture.from_config({"num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                                 "hidden_size": 1536, "torch_dtype": "bfloat16", "max_position_embeddings": 32768})
MISTRAL = Architecture.from_config({"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                    "hidden_size": 4096, "torch_dtype": "bfloat16", "max_position_embeddings": 32768,
                                    "sliding_window": 4096})


def test_manifest_setting_reaches_the_rules():
    assert ClusterSettings(vllm_version="0.26").to_cluster().vllm_version == "0.26"
    assert ClusterSettings().to_cluster().vllm_version == "0.33"
    with pytest.raises(ValidationError):
        ClusterSettings(vllm_version="0.30")
    assert vllm_runtime.rules_for("0.26.0").held_back_blocks == 0
    assert vllm_runtime.rules_for("0.34.1") == vllm_runtime.VLLM_RULES["0.34"]
    assert vllm_runtime.rules_for("0.27") == vllm_runtime.VLLM_RULES["0.26"]
    assert vllm_runtime.rules_for("0.17.1") == vllm_runtime.VLLM_RULES["0.17"]
    assert vllm_runtime.rules_for("0.10.0") == vllm_runtime.VLLM_RULES["0.17"]  # older than any read: the oldest


def test_full_attention_minimum_differs_by_the_held_back_block_and_so_does_sliding_window():
    per = vllm.bytes_per_token(QWEN, tp=1, pp=1, dtype_bytes=2)
    old = vllm.required_kv_bytes(QWEN, 32768, 16, per, held_back=0)
    new = vllm.required_kv_bytes(QWEN, 32768, 16, per, held_back=1)
    assert old == 2048 * 16 * per and new - old == 16 * per
    # sliding-window layers keep one block more for a window that starts mid-block
    # (SlidingWindowSpec.max_admission_blocks_per_request), and the pool's held-back block comes on top
    per_m = vllm.bytes_per_token(MISTRAL, tp=1, pp=1, dtype_bytes=2)
    in_flight = 2 * 8192  # async scheduling: two batches of serve's H200 default
    window_blocks = -(-(4096 - 1 + in_flight) // 16) + 1
    assert vllm.required_kv_bytes(MISTRAL, 32768, 16, per_m, held_back=0, batch_tokens=in_flight) == \
        window_blocks * 16 * per_m
    assert vllm.required_kv_bytes(MISTRAL, 32768, 16, per_m, held_back=1, batch_tokens=in_flight) == \
        (window_blocks + 1) * 16 * per_m
    # issue 21's case: Mistral-7B-v0.1 at 32768 tokens on an H100 (two batches of 8192 in flight): vLLM
    # 0.33 needs 1282 blocks = cdiv(4095 + 16384, 16) + 1 (mid-block) + 1 (held back)
    assert vllm.required_kv_bytes(MISTRAL, 32768, 16, per_m, held_back=1, batch_tokens=16384) == 1282 * 16 * per_m


def test_node_fit_uses_the_clusters_version():
    snapshot = node(gpu(0, 6138 * 2**20))
    model = seed_model("--gpu-memory-utilization=0.9", weights_bytes=3_087_467_144, max_model_len=32768)
    new = fit_node(snapshot, Cluster(), [model]).models[0]
    old = fit_node(snapshot, Cluster(vllm_version="0.26"), [model]).models[0]
    assert new.kv_required - old.kv_required == 16 * new.bytes_per_token  # the held-back block
    assert old.per_gpu[0].headroom["vllm_kv_cache"] - new.per_gpu[0].headroom["vllm_kv_cache"] == 16 * new.bytes_per_token


def test_sliding_window_minimum_follows_the_batch_flag():
    """--max-num-batched-tokens sets the tokens in flight (two batches) a sliding-window layer holds;
    without it, serve's default for the GPU (8192 on an H200)."""
    snapshot = node(gpu(0, 150_754_820_096))
    per = vllm.bytes_per_token(MISTRAL, tp=1, pp=1, dtype_bytes=2)

    def required(*flags):
        model = seed_model("--gpu-memory-utilization=0.9", *flags, arch=MISTRAL, max_model_len=32768)
        return fit_node(snapshot, Cluster(vllm_runtime_overhead=2**30), [model]).models[0].kv_required

    assert required() == (-(-(4095 + 2 * 8192) // 16) + 2) * 16 * per
    assert required("--max-num-batched-tokens=2048") == (-(-(4095 + 2 * 2048) // 16) + 2) * 16 * per


H100 = 85_520_809_984


def _pair(version_a: str):
    """Two models GPUStack places on one H100 (each books int(0.45 x T)); the first runs ``version_a`` with
    --gpu-memory-utilization left unset (GPUStack never passes it), the second vLLM 0.33 at 0.45."""
    first = replace(seed_model("--tensor-parallel-size=1", name="a"), engine_version=EngineVersion(version_a, "test"),
                    env={"GPUSTACK_MODEL_VRAM_CLAIM": str(int(0.45 * H100))})
    second = replace(seed_model("--gpu-memory-utilization=0.45", name="b"), engine_version=EngineVersion("0.33", "test"))
    return fit_node(node(gpu(0, H100)), Cluster(), [first, second]).models


def test_version_034_unset_utilization_takes_the_card_and_checks_no_free_memory():
    a, b = _pair("0.34.0")
    assert a.gmu_vllm == 1.0 and a.per_gpu[0].free_need is None  # no start-up check in 0.34
    # the extensible cache is sized from what is free after warm-up, a 1 GiB margin kept
    # the seed's config.json has no MLP shape: O is the 1 GiB fallback
    assert a.per_gpu[0].kv_bytes == H100 - Cluster().vllm_context_overhead - 2**30 - a.per_gpu[0].weights \
        - RUNTIME_OVERHEAD_FALLBACK
    # issue 21 item 6: GPUStack booked 0.45 x T for it, but it takes the card; the model placed beside it
    # finds no free memory for its own start-up check
    assert b.per_gpu[0].committed >= H100 and b.per_gpu[0].headroom["vllm_free_memory"] < 0
    old_a, old_b = _pair("0.33.0")
    assert old_a.gmu_vllm == 0.92 and old_b.per_gpu[0].committed < H100


def test_version_017_defaults_to_09_and_16_token_blocks_034_to_64():
    model = seed_model("--tensor-parallel-size=1")
    fits = {v: fit_node(node(gpu(0, H100)), Cluster(), [replace(model, engine_version=EngineVersion(v, "t"))]).models[0]
            for v in ("0.17.1", "0.32.0", "0.34.0")}
    assert (fits["0.17.1"].gmu_vllm, fits["0.17.1"].block_tokens) == (0.9, 16)
    assert (fits["0.32.0"].gmu_vllm, fits["0.32.0"].block_tokens) == (0.92, 16)
    assert (fits["0.34.0"].gmu_vllm, fits["0.34.0"].block_tokens) == (1.0, 64)
    # the cluster's version where the model names none
    assert fit_node(node(gpu(0, H100)), Cluster(vllm_version="0.17"), [model]).models[0].gmu_vllm == 0.9


GEMMA3_1B = {"num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
             "hidden_size": 1152, "sliding_window": 512, "max_position_embeddings": 32768}


def test_gemma3_is_read_as_4_full_and_22_sliding_layers_either_way_it_is_written():
    published = Architecture.from_config(GEMMA3_1B | {"sliding_window_pattern": 6})
    written_out = Architecture.from_config(GEMMA3_1B | {"layer_types": [
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)]})
    assert published == written_out
    assert published.sliding_window is None
    assert [i for i, w in enumerate(published.layer_windows) if w is None] == [5, 11, 17, 23]


def test_gemma3_minimum_is_vllms_groups_by_version():
    """4 full + 22 sliding: group size 4 (22 >= 1.25 x 4 and 1.5 x 4), 1 full group + 6 sliding groups
    (the last padded), a pool block of 4 layer pages; 32768 tokens, window 512, 8192 tokens in flight."""
    arch = Architecture.from_config(GEMMA3_1B | {"sliding_window_pattern": 6})
    per_token = vllm.bytes_per_token(arch, tp=1, pp=1, dtype_bytes=2)
    pool_block = 4 * 2 * 256 * 2 * 16
    full, sliding = 32768 // 16, -(-(511 + 8192) // 16) + 1
    old, new = vllm_versions.VLLM_RULES["0.17"], vllm_versions.VLLM_RULES["0.33"]
    # 0.17.1: the first group's kind (layer 0 slides) for the request, nothing held back
    assert vllm.required_kv_bytes(arch, 32768, 16, per_token, held_back=0, batch_tokens=8192,
                                    rules=old) == pool_block * sliding
    assert vllm.required_kv_bytes(arch, 32768, 16, per_token, held_back=1, batch_tokens=8192,
                                    rules=new) == pool_block * (full + 6 * sliding + 1)


def test_gemma2_as_published_alternates_sliding_and_full_layers():
    """gemma-2-9b's config.json names no layer pattern; vLLM's gemma2.py takes transformers' default
    (layer 0 slides, layer 1 full, ...)."""
    config = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "num_hidden_layers": 42,
              "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "hidden_size": 3584,
              "sliding_window": 4096, "max_position_embeddings": 8192}
    arch = Architecture.from_config(config)
    assert arch.layer_windows == (4096, None) * 21 and arch.sliding_window is None
    # the same numbers under another family are not read as Gemma-2's
    other = Architecture.from_config(config | {"architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    assert other.layer_windows == () and other.sliding_window == 4096


def test_a_version_written_with_a_v_takes_its_own_rules():
    """The manifest's version pattern accepts "v0.17.1": it must not fall through to the newest rules."""
    rules_for = vllm_versions.rules_for
    assert rules_for("v0.17.1") is rules_for("0.17.1")
    assert rules_for("V0.32.0") is rules_for("0.32.0")
    assert rules_for("v0.17.1") is not rules_for("0.34.0")
