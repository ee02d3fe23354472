"""Speculative decoding's draft (rules/backends/vllm/draft.py) against vLLM's own KV check, per version (0.17.1,
0.32.0, 0.33.0, 0.34.0), exact to the byte.

The draft's attention layers join the target's KV cache spec; full-attention layers of any shape are one
group, ``UniformTypeKVCacheSpecs`` (vllm/v1/kv_cache_interface.py), whose block is every layer's page. Here
vLLM's ``check_enough_kv_cache_memory`` runs over the target's and the draft's layer specs together (random
draft shapes, TP 1-8 with the draft's TP the target's or 1, fp8 KV, MTP layers of an MLA target), with
``UniformTypeKVCacheSpecs``'s own page size and memory use compiled from each version's source; ours is the
minimum for the target's max_model_len with the draft's bytes per token added.
"""

from __future__ import annotations

import random

import pytest

from test_vllm_source import Vllm, both, random_case
from vllm_source import VERSIONS, Dtype, namespace, spec, spec_class
from vram_exporter.errors import ModelError
from vram_exporter.rules.backends.vllm import draft as vllm_draft, engine as vllm, versions
from vram_exporter.rules.model import Architecture, DraftModel, ModelSpec

CASES = 40


@pytest.fixture(scope="module", params=VERSIONS)
def engine(request) -> Vllm:
    return Vllm(request.param)


def draft_config(rng: random.Random) -> dict:
    heads = rng.choice([8, 14, 16, 32])
    return {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": rng.choice([1, 1, 2, 24]),
            "num_attention_heads": heads, "num_key_value_heads": rng.choice([1, 2, heads]),
            "head_dim": rng.choice([64, 128]), "hidden_size": 2048, "max_position_embeddings": 131072}


def case_with_draft(engine: Vllm, rng: random.Random):
    """A random target (no sliding window) and its draft: vLLM's config and specs of both, our model."""
    while True:
        case = random_case(rng)
        if "sliding_window" not in case["config"]:
            break
    config, specs, o = both(engine, case)
    mtp = o["arch"].mla and rng.random() < 0.5
    fp8 = "fp8" if case["fp8"] else "auto"
    kv_dtype = vllm.kv_dtype_bytes(o["arch"], fp8, "auto")
    if mtp:  # the checkpoint's own MTP layers, shaped as the target's
        arch = Architecture.from_config(case["config"] | {"num_nextn_predict_layers": rng.choice([1, 2])})
        model = ModelSpec("m", 1, arch, backend_parameters=("--speculative-config", '{"method": "mtp"}'))
        draft_specs = {f"mtp.layers.{i}": next(iter(specs.values())) for i in range(arch.mtp_layers)}
    else:
        draft_arch = Architecture.from_config(draft_config(rng))
        draft_tp = rng.choice([None, 1])
        given = {"model": "/drafts/small", "num_speculative_tokens": 4}
        if draft_tp:
            given["draft_tensor_parallel_size"] = draft_tp
        model = ModelSpec("m", 1, o["arch"], backend_parameters=("--speculative-config", __import__("json").dumps(given)),
                          draft=DraftModel("/drafts/small", 10**9, draft_arch))
        heads = max(1, draft_arch.kv_heads // (draft_tp or case["tp"]))
        one = spec(engine.full, block_size=o["block"], num_kv_heads=heads, head_size=draft_arch.head_dim,
                   dtype=Dtype(size=kv_dtype), sliding_window=None, attention_chunk_size=None)
        draft_specs = {f"draft_model.layers.{i}.self_attn": one for i in range(draft_arch.layers)}
    rules = versions.rules_for("0.34.0")  # the draft TP check is not what is compared here
    load = vllm_draft.load_of(model, rules, tp=case["tp"], pp=1, kv_dtype_bytes=kv_dtype)
    return config, specs | draft_specs, o | {"per_token": o["per_token"] + load.per_token}


def test_minimum_with_the_draft_is_vllms_to_the_byte(engine):
    rng = random.Random(f"draft-{engine.version}")
    for _ in range(CASES):
        config, specs, o = case_with_draft(engine, rng)
        ours = vllm.required_kv_bytes(o["arch"], o["length"], o["block"], o["per_token"], held_back=o["held"],
                                      batch_tokens=o["in_flight"])
        assert ours == engine.minimum(config, specs)


def test_one_group_holds_every_layer_page(engine):
    """UniformTypeKVCacheSpecs (the group full-attention layers of any shape make): its page is the sum of
    the layers' pages, its memory for a request that many pages times the pages a layer needs."""
    group_class = spec_class(engine.version, ("KVCacheSpec", "UniformTypeKVCacheSpecs"), namespace())
    rng = random.Random(f"draft-group-{engine.version}")
    for _ in range(CASES // 2):
        config, specs, o = case_with_draft(engine, rng)
        if o["arch"].mla:
            continue
        group = group_class(block_size=o["block"], kv_cache_specs=specs)
        assert group.page_size_bytes == o["per_token"] * o["block"]
        assert group.max_memory_usage_bytes(config) == vllm.required_kv_bytes(
            o["arch"], o["length"], o["block"], o["per_token"], held_back=0, batch_tokens=o["in_flight"])


def _model(parameters: tuple[str, ...], draft: DraftModel | None = None, **config) -> ModelSpec:
    arch = Architecture.from_config({"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
                                     "hidden_size": 1024, "max_position_embeddings": 4096} | config)
    return ModelSpec("m", 10**9, arch, backend_parameters=parameters, draft=draft)


SMALL = Architecture.from_config({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                                  "hidden_size": 256, "max_position_embeddings": 4096})


def test_methods_as_vllm_detects_them():
    """vllm/config/speculative.py: ngram by name, eagle / eagle3 by the draft's name, else draft_model."""
    def method(config: str) -> str:
        spec = vllm_draft.speculative_of(_model(("--speculative-config", config)))
        return vllm_draft.method_of(spec, None)
    assert method('{"model": "[ngram]", "num_speculative_tokens": 3}') == "ngram"
    assert method('{"model": "yuhuili/EAGLE-LLaMA3-Instruct-8B"}') == "eagle"
    assert method('{"model": "AngelSlim/Qwen3-8B_eagle3"}') == "eagle3"
    assert method('{"model": "Qwen/Qwen2.5-0.5B"}') == "draft_model"
    assert method('{"method": "deepseek_mtp"}') == "mtp"


def test_what_is_not_known_is_said_not_guessed():
    rules = versions.rules_for("0.33.0")
    unsized = _model(("--speculative-config", '{"model": "/d", "num_speculative_tokens": 3}'), DraftModel("/d"))
    with pytest.raises(ModelError, match="size of /d is not known"):
        vllm_draft.load_of(unsized, rules, tp=1, pp=1, kv_dtype_bytes=2)
    with pytest.raises(ModelError, match="not modelled"):
        vllm_draft.load_of(_model(("--speculative-config", '{"method": "medusa", "model": "/m"}')), rules, tp=1, pp=1,
                           kv_dtype_bytes=2)
    ngram = vllm_draft.load_of(_model(("--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}')),
                               rules, tp=1, pp=1, kv_dtype_bytes=2)
    assert (ngram.weights_per_gpu, ngram.per_token) == (0, 0)


def test_draft_tp_as_each_version_allows_it():
    """draft_tensor_parallel_size: 1 or the target's; the draft_model method wants the target's before 0.34."""
    model = _model(("--speculative-config", '{"model": "/d", "draft_tensor_parallel_size": 1}'),
                   DraftModel("/d", 4 * 10**8, SMALL))
    with pytest.raises(ModelError, match="must be the same"):
        vllm_draft.load_of(model, versions.rules_for("0.33.0"), tp=2, pp=1, kv_dtype_bytes=2)
    load = vllm_draft.load_of(model, versions.rules_for("0.34.0"), tp=2, pp=1, kv_dtype_bytes=2)
    assert load.weights_per_gpu == 4 * 10**8  # not split: the draft runs whole on each rank
    assert load.per_token == vllm.bytes_per_token(SMALL, tp=1, pp=1, dtype_bytes=2)
    three = _model(("--speculative-config", '{"model": "/d", "draft_tensor_parallel_size": 3}'),
                   DraftModel("/d", 10**8, SMALL))
    with pytest.raises(ModelError, match="cannot be other value than 1"):
        vllm_draft.load_of(three, versions.rules_for("0.34.0"), tp=2, pp=1, kv_dtype_bytes=2)


@pytest.mark.parametrize("version", VERSIONS)
def test_draft_tp_rule_is_where_the_source_has_it(version):
    from vllm_source import SOURCES
    path = SOURCES / version / "vllm" / "v1" / "spec_decode" / "draft_model.py"
    checks = path.exists() and "must be the same" in path.read_text()
    assert checks == versions.rules_for(version).draft_tp_must_match
