"""Which runtime overhead O the rulebook uses (issue 17): the model's, else the cluster's, else the fitted
model of rules/backends/vllm/runtime.py (one GPU, config.json with the MLP's shape), else 1 GiB."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from fitcases import gpu, node, seed_model
from vram_exporter.sources.manifest import ClusterSettings
from vram_exporter.rules.backends.vllm import runtime as vllm_runtime
from vram_exporter.rules.model import GIB, RUNTIME_OVERHEAD_FALLBACK, Architecture, Cluster
from vram_exporter.rules.node import fit_node

MODELS = Path(__file__).parent.parent / "data" / "vllm-h200" / "payload" / "models"
QWEN_FULL = Architecture.from_config(json.loads((MODELS / "qwen2.5-1.5b" / "config.json").read_text()))
H200 = 150_754_820_096


def _kv_headroom(model, cluster=None, total=H200, name="NVIDIA H200"):
    snapshot = node(replace(gpu(0, total), name=name))
    return fit_node(snapshot, cluster or Cluster(), [model]).models[0].per_gpu[0].headroom["vllm_kv_cache"]


def test_fitted_o_is_the_default_where_config_json_has_the_mlp():
    full = seed_model(arch=QWEN_FULL)
    bare = seed_model()  # the seed's inline config: no intermediate_size
    assert bare.arch.intermediate_size is None and QWEN_FULL.intermediate_size == 8960
    fitted = vllm_runtime.fitted_runtime_overhead(QWEN_FULL, version="0.33", device_total_bytes=H200,
                                                  device_name="NVIDIA H200")
    # serve's H200 batch (8192): forward pass 8192 x 2 x 3 x (8960 + 1536) + first-start extra + non-torch
    # + the CUDA graphs' bound (0.33 takes them out of R)
    parts = vllm_runtime.runtime_overhead(QWEN_FULL, 8192)
    assert parts.peak_activation == 8192 * 2 * 3 * (8960 + 1536) + 223_883_264
    assert fitted == parts.peak_activation + parts.non_torch + parts.cuda_graphs
    # the same model, one with the MLP's shape: KV headroom differs by exactly the O's difference
    assert _kv_headroom(bare) - _kv_headroom(full) == fitted - RUNTIME_OVERHEAD_FALLBACK
    # 0.26 leaves the CUDA graphs outside R
    old = Cluster(vllm_version="0.26")
    assert _kv_headroom(full, old) - _kv_headroom(full) == parts.cuda_graphs + 16 * 28 * 2 * 2 * 128 * 2  # + held block


def test_the_batch_flag_and_the_gpu_set_the_fitted_o():
    full = seed_model(arch=QWEN_FULL)
    wide = seed_model("--gpu-memory-utilization=0.9", "--max-num-batched-tokens=32768", arch=QWEN_FULL)
    assert _kv_headroom(full) - _kv_headroom(wide) == (32768 - 8192) * 2 * 3 * (8960 + 1536)
    # an A100 (80 GiB, but not one of the "large" GPUs of vLLM's default): serve's batch is 2048
    a100 = _kv_headroom(full, total=85_899_345_920, name="NVIDIA A100-SXM4-80GB")
    h100 = _kv_headroom(full, total=85_899_345_920, name="NVIDIA H100 80GB HBM3")
    assert a100 - h100 == (8192 - 2048) * 2 * 3 * (8960 + 1536)


def test_manifest_settings_win_over_the_fit():
    full = seed_model(arch=QWEN_FULL)
    pinned_cluster = ClusterSettings(vllm_runtime_overhead="1GiB").to_cluster()
    assert ClusterSettings().to_cluster().vllm_runtime_overhead is None
    own = replace(full, runtime_overhead=3 * GIB)
    base = _kv_headroom(full, pinned_cluster)
    assert _kv_headroom(own, pinned_cluster) == base - 2 * GIB  # the model's own wins over the cluster's
    assert _kv_headroom(own) == base - 2 * GIB  # and over the fit
    # tensor parallelism was not measured: the constant
    tp2 = seed_model("--gpu-memory-utilization=0.9", "--tensor-parallel-size=2", arch=QWEN_FULL)
    tp2_pinned = fit_node(node(replace(gpu(0, H200), name="NVIDIA H200"), replace(gpu(1, H200), name="NVIDIA H200")),
                          pinned_cluster, [tp2]).models[0]
    tp2_default = fit_node(node(replace(gpu(0, H200), name="NVIDIA H200"), replace(gpu(1, H200), name="NVIDIA H200")),
                           Cluster(), [tp2]).models[0]
    assert [g.headroom.get("vllm_kv_cache") for g in tp2_pinned.per_gpu] == \
        [g.headroom.get("vllm_kv_cache") for g in tp2_default.per_gpu]
