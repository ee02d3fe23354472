"""Model categories (issue 22): what GPUStack 2.3.0 fills in, estimates and books for a model that is not an
LLM (rules/categories.py), and what vLLM then takes. The selectors' numbers on whole clusters and single
nodes are held equal to GPUStack's own selectors by conformance/run.py and cluster_run.py --categories;
here each rule on its own, with the figures GPUStack's code gives."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fitcases import GIB, MIB, QWEN_1_5B, SEED_WEIGHTS, gpu, node
from vram_exporter.rules import backends, categories, gpustack
from vram_exporter.rules.cluster import replay
from vram_exporter.rules.model import Architecture, Cluster, ModelSpec
from vram_exporter.rules.node import fit_node

BERT = Architecture.from_config({
    "architectures": ["BertModel"], "num_hidden_layers": 24, "num_attention_heads": 16, "hidden_size": 1024,
    "intermediate_size": 4096, "vocab_size": 30522, "torch_dtype": "float32", "max_position_embeddings": 512})
BERT_WEIGHTS = 1_340_616_616
QWEN2_MODEL = replace(QWEN_1_5B, architectures=("Qwen2Model",))  # gte-Qwen2: a decoder used for embeddings
QWEN3 = replace(QWEN_1_5B, architectures=("Qwen3ForCausalLM",))
CARD = 24564 * MIB


@pytest.mark.parametrize("architectures, expected", [
    (["BertModel"], ("embedding",)),
    (["XLMRobertaForSequenceClassification"], ("reranker",)),
    (["WhisperForConditionalGeneration"], ("speech_to_text",)),
    (["Qwen3TTSForConditionalGeneration"], ("text_to_speech",)),
    (["Qwen2ForCausalLM"], ("llm",)),
    (["SomethingNobodyKnows"], ("llm",)),  # set_model_categories: unknown is llm
    ([], ("llm",)),
])
def test_gpustack_fills_in_the_category_from_the_architectures(architectures, expected):
    assert categories.filled_in((), architectures) == expected


def test_given_categories_win_and_vllms_hf_overrides_architectures_come_first():
    assert categories.filled_in(("reranker",), ["Qwen2ForCausalLM"]) == ("reranker",)
    overrides = ("--hf-overrides", '{"architectures": ["Qwen3ForSequenceClassification"]}')
    assert categories.filled_in((), ["Qwen3ForCausalLM"], overrides) == ("reranker",)
    assert backends.of("vllm").reads_hf_overrides and not backends.of("sglang").reads_hf_overrides


def test_the_estimate_of_a_model_that_is_not_an_llm():
    """estimate_model_vram: 2 GiB of framework overhead for an LLM, 512 MiB for the others; x3 for speech."""
    assert gpustack.estimate_bytes(SEED_WEIGHTS, {}) == int(SEED_WEIGHTS * 1.2) + 2 * GIB
    assert gpustack.estimate_bytes(SEED_WEIGHTS, {}, ("llm", "embedding")) == int(SEED_WEIGHTS * 1.2) + 2 * GIB
    assert gpustack.estimate_bytes(SEED_WEIGHTS, {}, ("embedding",)) == int(SEED_WEIGHTS * 1.2) + 512 * MIB
    assert gpustack.estimate_bytes(SEED_WEIGHTS, {}, ("text_to_speech",)) == SEED_WEIGHTS * 3 + 512 * MIB
    assert gpustack.estimate_bytes(SEED_WEIGHTS, {"GPUSTACK_MODEL_VRAM_CLAIM": "123"}, ("embedding",)) == 123


@pytest.mark.parametrize("cats, arch, params, backend, books_estimate", [
    (("embedding",), BERT, (), "vllm", True),
    (("reranker",), QWEN2_MODEL, (), "vllm", True),
    (("embedding",), QWEN3, (), "vllm", False),  # NON_LLM_GMU_EXCEPTIONS
    (("embedding",), BERT, ("--gpu-memory-utilization=0.3",), "vllm", False),  # a given g wins
    (("embedding", "llm"), BERT, (), "vllm", False),
    (("speech_to_text",), BERT, (), "vllm", False),
    ((), BERT, (), "vllm", False),  # no categories: an LLM
    (("embedding",), QWEN2_MODEL, ("--hf-overrides", '{"architectures": ["Qwen3ForCausalLM"]}'), "vllm", False),
])
def test_which_models_the_vllm_selector_books_at_their_estimate(cats, arch, params, backend, books_estimate):
    spec = ModelSpec("m", SEED_WEIGHTS, arch, backend_parameters=params, categories=cats, backend=backend)
    assert spec.books_estimate is books_estimate
    assert (spec.gpustack.gpu_memory_utilization == 0) is books_estimate


def _embedding(arch=BERT, weights=BERT_WEIGHTS, **changes) -> ModelSpec:
    return ModelSpec("embed", weights, arch, **{"max_model_len": 512, "categories": ("embedding",), **changes})


def test_on_one_node_an_embedding_model_books_its_estimate_and_vllm_takes_no_kv_cache():
    """One GPU: E <= allocatable, claim E (not 0.9 x total); vLLM builds BERT of encoder-only attention and
    allocates no KV cache: it takes weights and O, within the claim."""
    fit = fit_node(node(gpu(0, CARD)), Cluster(vllm_runtime_overhead=256 * MIB), [_embedding()]).models[0]
    estimate = int(BERT_WEIGHTS * 1.2) + 512 * MIB
    assert fit.error is None and fit.gpus == (0,) and fit.estimate == estimate
    (f,) = fit.per_gpu
    assert f.take.claim == estimate and f.take.takes == BERT_WEIGHTS + 256 * MIB
    assert f.take.headroom > 0


def test_a_decoder_embedding_model_takes_its_budget_beyond_the_estimate_gpustack_books():
    """A Qwen2Model embedding model: GPUStack books its estimate and passes no --gpu-memory-utilization;
    vLLM sizes a KV cache from its own budget, far beyond that claim."""
    fit = fit_node(node(gpu(0, CARD)), Cluster(vllm_runtime_overhead=GIB),
                   [_embedding(QWEN2_MODEL, SEED_WEIGHTS, max_model_len=4096)]).models[0]
    (f,) = fit.per_gpu
    assert f.take.claim == int(SEED_WEIGHTS * 1.2) + 512 * MIB
    assert f.take.takes > f.budget * 0.99 and f.take.headroom < 0
    assert "--kv-cache-memory-bytes" in f.take.fix and "--gpu-memory-utilization" not in f.take.fix.split("(")[0]


def test_an_embedding_model_too_large_for_the_allocatable_memory_is_pending():
    fit = fit_node(node(gpu(0, 4 * GIB)), Cluster(), [_embedding(weights=3 * GIB)]).models[0]
    assert not fit.schedulable
    reason = fit.static_reasons[0]
    assert "requires approximately 4.1 GiB of VRAM.\n- The current available GPU only has 4.0 GiB allocatable VRAM." in reason
    assert "With --gpu-memory-utilization" not in reason  # no share of the card is asked


def test_the_cluster_replay_books_the_estimate_on_one_gpu_and_the_allocatable_memory_on_several():
    """vllm_resource_fit_selector.py's non-LLM branches: one GPU claims E; several GPUs of one worker claim
    each GPU's whole allocatable memory (here the model does not fit one 8 GiB card)."""
    worker = replay.WorkerGpus(1, "w1", {0: 8 * GIB, 1: 8 * GIB})
    small = replay.Request(_embedding(), frozenset({1}))
    large = replay.Request(_embedding(weights=8 * GIB), frozenset({1}))
    verdicts = replay.replay([worker], {"small": replace(small, spec=replace(small.spec, name="small")),
                                        "large": replace(large, spec=replace(large.spec, name="large"))},
                             [replay.Instance(1, "small", False, {}), replay.Instance(2, "large", False, {})])
    estimate = int(BERT_WEIGHTS * 1.2) + 512 * MIB
    assert dict(verdicts[1].claims) == {(1, 0): estimate}
    assert dict(verdicts[2].claims) == {(1, 0): 8 * GIB - estimate, (1, 1): 8 * GIB}


def test_manual_selection_books_the_estimate_shared_and_overcommits_on_the_remainder():
    """_get_worker_resource_claim: int(E / n) on each selected GPU; their sum falls short of E whenever n does
    not divide it, which _generate_manual_selected_gpus_overcommit_message counts as overcommit."""
    worker = replay.WorkerGpus(1, "w1", {0: 24 * GIB, 1: 24 * GIB})
    spec = _embedding(env={"GPUSTACK_MODEL_VRAM_CLAIM": str(10 * GIB + 1)})
    verdict = replay.replay([worker], {"embed": replay.Request(spec, frozenset({1}), {"w1": (0, 1)}, 2)},
                            [replay.Instance(1, "embed", False, {})])[1]
    assert dict(verdict.claims) == {(1, 0): 5 * GIB, (1, 1): 5 * GIB}
    assert verdict.overcommit and "Selected GPUs have 48.0 GiB of VRAM." in verdict.reason


def test_totals_from_gpustack_are_used_as_reported_and_nvml_totals_are_floored():
    """A 2.3.0 worker reports NVML's total >> 20 << 20; a total GPUStack's API gives is used as it stands
    (its own tests' H200 fixture: 151,511,121,920 bytes, not a whole MiB)."""
    total = 151_511_121_920
    worker = replay.WorkerGpus(1, "w1", {0: total})
    spec = ModelSpec("qwen", SEED_WEIGHTS, QWEN_1_5B, max_model_len=4096)
    verdict = replay.replay([worker], {"qwen": replay.Request(spec, frozenset({1}))},
                            [replay.Instance(1, "qwen", False, {})])[1]
    assert dict(verdict.claims) == {(1, 0): int(total * 0.9)}
    fit = fit_node(node(gpu(0, total)), Cluster(), [spec]).models[0]
    assert fit.per_gpu[0].take.claim == int(total // MIB * MIB * 0.9) != int(total * 0.9)
