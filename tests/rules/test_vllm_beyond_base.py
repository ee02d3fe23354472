"""What the engine loads beyond the base model (issue 21): LoRA adapters and a speculative-decoding draft, in
the vLLM fit and in GPUStack's booking. vLLM's own numbers for each part are checked against its code in
test_vllm_lora_source.py and test_vllm_draft_source.py; here, that the fit uses them where vLLM does."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fitcases import GIB, gpu, node
from vram_exporter.rules import gpustack
from vram_exporter.rules.backends.vllm import lora, runtime as vllm_runtime, versions
from vram_exporter.rules.model import Architecture, Cluster, DraftModel, EngineVersion, LoraAdapter, ModelSpec
from vram_exporter.rules.node import fit_node

QWEN_7B = Architecture.from_config({
    "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "hidden_size": 3584, "intermediate_size": 18944, "vocab_size": 152064,
    "torch_dtype": "bfloat16", "max_position_embeddings": 32768})
QWEN_05B = Architecture.from_config({
    "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "hidden_size": 896, "intermediate_size": 4864, "vocab_size": 151936,
    "torch_dtype": "bfloat16", "max_position_embeddings": 32768})
H100 = gpu(0, 85_520_809_984, reserved=503_316_480)
WEIGHTS = 15_231_233_024


def model(*params: str, version: str = "0.33.0", **changes) -> ModelSpec:
    spec = ModelSpec("qwen", WEIGHTS, QWEN_7B, backend_parameters=("--max-model-len=8192", *params),
                     engine_version=EngineVersion(version, "the test"))
    return replace(spec, **changes)


def fit(spec: ModelSpec, cluster: Cluster = Cluster()):
    return fit_node(node(H100), cluster, [spec]).models[0]


@pytest.mark.parametrize("version", ["0.17.1", "0.33.0", "0.34.0"])
def test_lora_slots_come_out_of_the_kv_cache(version):
    """The slots are profiled as weights: with O given, the KV cache shrinks by exactly what they take."""
    cluster = Cluster(vllm_runtime_overhead=GIB)
    base = fit(model(version=version), cluster)
    with_lora = fit(model("--enable-lora", "--max-loras=4", "--max-lora-rank=64", version=version), cluster)
    params = lora.engine_params(model("--enable-lora", "--max-loras=4", "--max-lora-rank=64"))
    taken = lora.gpu_memory(QWEN_7B, params, versions.rules_for(version), tp=1, pp=1, model_dtype_bytes=2,
                            max_num_batched_tokens=8192, max_num_seqs=1024).weights
    assert base.per_gpu[0].kv_bytes - with_lora.per_gpu[0].kv_bytes == taken > 4 * 28 * 11 * 2**20


def test_lora_doubles_the_cuda_graphs_where_the_version_counts_them():
    """With the fitted O: graphs are captured without and with adapters, so O's graph part doubles where vLLM
    takes graphs out of the budget (0.32 on), and the shrink buffer joins the activation peak."""
    def overhead(version: str, *params: str) -> int:
        f = fit(model(*params, version=version))
        return f.per_gpu[0].budget - f.per_gpu[0].kv_bytes - f.per_gpu[0].weights
    flags = ("--enable-lora", "--max-lora-rank=16")
    slots = lora.gpu_memory(QWEN_7B, lora.engine_params(model(*flags)), versions.rules_for("0.33.0"), tp=1, pp=1,
                            model_dtype_bytes=2, max_num_batched_tokens=8192, max_num_seqs=1024)
    graphs = vllm_runtime.runtime_overhead(QWEN_7B, 8192).cuda_graphs
    assert overhead("0.33.0", *flags) - overhead("0.33.0") == graphs + slots.activation
    assert overhead("0.17.1", *flags) - overhead("0.17.1") == slots.activation  # graphs outside the budget


def test_gpustacks_adapters_start_the_engine_with_lora():
    """A model with adapters (GPUStack's lora_list) runs with --enable-lora, --max-loras = the adapters, and
    --max-lora-rank from their ranks; the model's own flags come last and win."""
    adapters = (LoraAdapter("a", 300_000_000, rank=8), LoraAdapter("b", 300_000_000, rank=24))
    params = lora.engine_params(model(lora_adapters=adapters))
    assert (params.max_loras, params.max_lora_rank) == (2, 32)
    params = lora.engine_params(model("--max-loras=3", "--max-lora-rank=64", lora_adapters=adapters))
    assert (params.max_loras, params.max_lora_rank) == (3, 64)
    assert lora.engine_params(model("--lora-modules", "a=/x", lora_adapters=adapters)) is None  # GPUStack adds none
    unknown = fit(model(lora_adapters=(LoraAdapter("c", 10),)))
    assert "rank" in unknown.error and "is not known" in unknown.error


def test_gpustacks_estimate_adds_the_adapters_weights_not_the_draft():
    """policies/utils.py::estimate_model_vram: the adapters' weights join the model's before the 1.2 factor;
    a draft model is not counted (gpustack #3169); GPUSTACK_MODEL_VRAM_CLAIM still wins."""
    adapters = (LoraAdapter("a", 5 * 10**8, rank=8), LoraAdapter("b", 7 * 10**8, rank=8))
    alone = model(weights_bytes=WEIGHTS + 12 * 10**8)
    assert gpustack.model_estimate(model(lora_adapters=adapters)) == gpustack.model_estimate(alone)
    assert fit(model(lora_adapters=adapters)).estimate > fit(model()).estimate
    drafted = model(draft=DraftModel("/d", 10**9, QWEN_05B))
    assert gpustack.model_estimate(drafted) == gpustack.model_estimate(model())
    claimed = model(lora_adapters=adapters, env={"GPUSTACK_MODEL_VRAM_CLAIM": "1234"})
    assert gpustack.model_estimate(claimed) == 1234


SPEC = ("--speculative-config", json.dumps({"model": "/drafts/qwen-0.5b", "num_speculative_tokens": 5}))


def test_a_draft_takes_weights_and_kv_per_token():
    base = fit(model())
    drafted = fit(model(*SPEC, draft=DraftModel("/drafts/qwen-0.5b", 988_097_824, QWEN_05B)))
    assert drafted.bytes_per_token - base.bytes_per_token == 24 * 2 * 2 * 64 * 2  # the draft's 24 layers
    assert drafted.per_gpu[0].weights - base.per_gpu[0].weights == 988_097_824
    assert drafted.kv_required > base.kv_required


def test_the_engine_takes_beyond_gpustacks_booking_with_a_draft():
    """GPUStack books the same for the model with or without its draft; with the KV cache sized directly
    the draft's weights come on top of it, and the take says so."""
    flags = ("--gpu-memory-utilization=0.9", "--kv-cache-memory-bytes=50G")
    base = fit(model(*flags))
    drafted = fit(model(*flags, *SPEC, draft=DraftModel("/drafts/qwen-0.5b", 988_097_824, QWEN_05B)))
    assert drafted.per_gpu[0].take.claim == base.per_gpu[0].take.claim
    assert drafted.per_gpu[0].take.takes - base.per_gpu[0].take.takes == 988_097_824
    assert "draft weights" in drafted.per_gpu[0].take.said


def test_an_unsized_draft_is_said_not_guessed():
    f = fit(model(*SPEC, draft=DraftModel("/drafts/qwen-0.5b")))
    assert "is not known" in f.error and "gpustack #3169" in f.error


@pytest.mark.parametrize("flags, words", [
    (("--enable-lora", "--max-lora-rank=24"), "choose from 1, 8, 16"),
    (("--enable-lora", "--max-loras=4", "--max-cpu-loras=2"), "max_cpu_loras (2) must be >= max_loras (4)"),
    (("--enable-lora", "--lora-dtype=float32"), "--lora-dtype"),
    (("--enable-lora=true",), "takes no value"),
    (("--speculative-config={model:",), "JSON object"),
])
def test_flags_vllm_refuses_are_its_refusals(flags, words):
    assert words in fit(model(*flags)).error


def test_no_enable_lora_turns_it_off_as_argparse_does():
    assert model("--enable-lora", "--no-enable-lora").vllm.lora is None
    assert model("--no-enable-lora", "--enable-lora").vllm.lora is not None


def test_architectures_whose_lora_modules_are_not_read_are_said():
    other = replace(QWEN_7B, architectures=("DeepseekV3ForCausalLM",))
    assert "not modelled for DeepseekV3ForCausalLM" in fit(model("--enable-lora", arch=other)).error
