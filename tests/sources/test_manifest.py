"""The manifest: sizes, model directories counted as GPUStack counts them, and errors that name
the file, the line and the field."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from vram_exporter.sources.manifest import load_manifest
from vram_exporter.units import parse_size
from vram_exporter.sources.yamlfile import InputFileError

QWEN_CONFIG = {"num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_size": 1536,
               "vocab_size": 151936, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}


@pytest.mark.parametrize("text, size", [
    (3087467144, 3087467144), ("512MiB", 512 * 2**20), ("1GiB", 2**30), ("1.5GB", 1_500_000_000),
    ("2 TiB", 2 * 2**40), ("10KB", 10_000), ("7kib", 7 * 1024), ("100", 100)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "1.5 parsecs", -1, True, "GiB", float("nan")])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def write(tmp_path, text, name="m.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def errors(tmp_path, text) -> str:
    with pytest.raises(InputFileError) as raised:
        load_manifest(write(tmp_path, text))
    return str(raised.value)


def test_shipped_examples_load():
    seed = load_manifest(ROOT / "examples/seed/manifest.yaml")
    assert seed.cluster.system_reserved_vram == 2**30 and seed.models[0].weights_bytes == 3_087_467_144
    assert len(load_manifest(ROOT / "examples/node-8xh100/manifest.yaml").models) == 8


def test_a_model_directory_is_read_like_gpustack_reads_it(tmp_path):
    model_dir = tmp_path / "Qwen2.5-1.5B-Instruct"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(QWEN_CONFIG))
    with open(model_dir / "model.safetensors", "wb") as f:  # sparse, the real size
        f.truncate(3_087_467_144)
    (model_dir / "consolidated.safetensors").write_bytes(b"x" * 1000)  # counted from a local directory
    (model_dir / "tokenizer.json").write_bytes(b"{}" * 500)  # not a weight file
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "extra.bin").write_bytes(b"x" * 10)  # not at the root: not counted
    manifest = load_manifest(write(tmp_path, f"models:\n  - name: q\n    path: {model_dir.name}\n"))
    (model,) = manifest.models
    # gpustack/scheduler/calculator.py::calculate_llm_model_weight_size: every root weight file
    assert model.weights_bytes == 3_087_467_144 + 1000 and model.arch.kv_heads == 2
    # From a hub listing GPUStack leaves consolidated.safetensors out (gpustack/utils/hub.py)
    for hub in ("huggingface", "modelscope"):
        text = f"models:\n  - name: q\n    path: {model_dir.name}\n    weights_from: {hub}\n"
        assert load_manifest(write(tmp_path, text)).models[0].weights_bytes == 3_087_467_144


def test_weights_from_needs_a_path(tmp_path):
    text = ("models:\n  - name: q\n    weights_bytes: 1GiB\n    weights_from: huggingface\n"
            "    config: {num_hidden_layers: 2, num_attention_heads: 2, hidden_size: 64}\n")
    assert "weights_from says how the files under path are counted: it needs path" in errors(tmp_path, text)


def test_unknown_key_names_file_line_and_field(tmp_path):
    text = "cluster:\n  scheduler: gpustack\n  system_reserve_vram: 1GiB\n"
    assert f"{tmp_path / 'm.yaml'}:3: cluster.system_reserve_vram: unknown key" in errors(tmp_path, text)


def test_bad_size_names_its_line(tmp_path):
    text = "cluster:\n  vllm_context_overhead: 512 MeB\n"
    assert ":2: cluster.vllm_context_overhead: Value error, not a size: '512 MeB'" in errors(tmp_path, text)


def test_reservation_must_be_whole_gib(tmp_path):
    assert "whole GiB" in errors(tmp_path, "cluster:\n  system_reserved_vram: 1.5GiB\n")


def test_model_needs_a_source(tmp_path):
    message = errors(tmp_path, "models:\n  - name: x\n    weights_bytes: 10\n")
    assert ":2: models[0]:" in message and "path" in message


def test_missing_model_directory_names_the_field(tmp_path):
    message = errors(tmp_path, "models:\n  - name: x\n    path: nowhere\n")
    assert ":3: models[0].path:" in message and "config.json does not exist" in message


def test_inline_config_missing_a_field_names_the_model(tmp_path):
    text = "models:\n  - name: x\n    weights_bytes: 10\n    config: {num_attention_heads: 4, hidden_size: 64}\n"
    message = errors(tmp_path, text)
    assert ":4: models[0].config:" in message and "num_hidden_layers" in message


def test_claim_override_must_be_bytes(tmp_path):
    text = ("models:\n  - name: x\n    weights_bytes: 10\n    config: {num_hidden_layers: 1, num_attention_heads: 1,"
            " hidden_size: 8}\n    env: {GPUSTACK_MODEL_VRAM_CLAIM: 4GiB}\n")
    assert ":5: models[0].env:" in errors(tmp_path, text)


def test_duplicate_names_are_refused(tmp_path):
    entry = ("  - name: x\n    weights_bytes: 10\n    config: {num_hidden_layers: 1, num_attention_heads: 1,"
             " hidden_size: 8}\n")
    assert "appears twice" in errors(tmp_path, "models:\n" + entry + entry)


def test_every_problem_is_listed_not_only_the_first(tmp_path):
    text = "cluster:\n  scheduler: kubernetes\n  vllm_default_gpu_memory_utilization: 1.5\n"
    message = errors(tmp_path, text)
    assert ":2: cluster.scheduler:" in message and ":3: cluster.vllm_default_gpu_memory_utilization:" in message


# --- what the engine loads beyond the model: lora_adapters and draft_model (issue 21) ----------------------
TINY = "{num_hidden_layers: 1, num_attention_heads: 1, hidden_size: 8}"


def adapter_dir(tmp_path, name="adapter", config=None, weights=1000):
    directory = tmp_path / name
    directory.mkdir()
    if config is not None:
        (directory / "adapter_config.json").write_text(json.dumps(config))
    if weights:
        (directory / "adapter_model.safetensors").write_bytes(b"x" * weights)
    return directory


def test_a_lora_adapter_directory_is_read_as_gpustack_reads_it(tmp_path):
    """adapter_config.json's r and rank_pattern (worker/backends/base.py::read_lora_max_rank), the weight files
    at its root (the estimate's share)."""
    adapter_dir(tmp_path, config={"r": 16, "rank_pattern": {"q_proj": 64, "v_proj": 32}}, weights=1234)
    text = (f"models:\n  - name: x\n    weights_bytes: 10\n    config: {TINY}\n    lora_adapters:\n"
            "      - {name: a, path: adapter}\n      - {name: b, weights_bytes: 2MiB, rank: 8}\n")
    (model,) = load_manifest(write(tmp_path, text)).models
    a, b = model.lora_adapters
    assert (a.name, a.weights_bytes, a.rank, a.pattern_rank, a.max_rank) == ("a", 1234, 16, 64, 64)
    assert (b.weights_bytes, b.max_rank) == (2 * 2**20, 8)


@pytest.mark.parametrize("adapters, where, words", [
    ("      - {name: a, path: nowhere}\n", ":7: models[0].lora_adapters[0].path:", "adapter_config.json does not exist"),
    ("      - {name: a}\n", ":7: models[0].lora_adapters[0]:", "path (its directory) or weights_bytes"),
    ("      - {name: a, path: adapter, rank: 8}\n", ":7: models[0].lora_adapters[0]:", "not both"),
    ("      - {name: a, weights_bytes: 1MiB, rank: 0}\n", ":7: models[0].lora_adapters[0].rank:", "greater than"),
    ("      - {name: a, weights_bytes: 1}\n      - {name: a, weights_bytes: 1}\n", ":2: models[0]:", "same name"),
    ("      - {name: a, path: empty}\n", ":7: models[0].lora_adapters[0].path:", "no weight files"),
])
def test_lora_adapter_errors_name_file_line_and_field(tmp_path, adapters, where, words):
    adapter_dir(tmp_path, config={"r": 8})
    adapter_dir(tmp_path, "empty", config={"r": 8}, weights=0)
    text = f"models:\n  - name: x\n    weights_bytes: 10\n    config: {TINY}\n    backend: vllm\n    lora_adapters:\n" + adapters
    message = errors(tmp_path, text)
    assert where in message and words in message, message


DRAFT = ('    backend_parameters: ["--speculative-config", \'{"model": "/d", "num_speculative_tokens": 3}\']\n')


def test_a_draft_model_is_read_from_its_directory(tmp_path):
    directory = tmp_path / "draft"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(QWEN_CONFIG))
    (directory / "model.safetensors").write_bytes(b"x" * 4321)
    text = f"models:\n  - name: x\n    weights_bytes: 10\n    config: {TINY}\n{DRAFT}    draft_model: {{path: draft}}\n"
    (model,) = load_manifest(write(tmp_path, text)).models
    assert (model.draft.weights_bytes, model.draft.arch.kv_heads) == (4321, 2)


@pytest.mark.parametrize("entry, where, words", [
    ("    draft_model: {path: nowhere}\n" + DRAFT, ":5: models[0].draft_model.path:", "config.json does not exist"),
    ("    draft_model: {weights_bytes: 1GiB}\n" + DRAFT, ":5: models[0].draft_model:", "both weights_bytes and config"),
    (f"    draft_model: {{weights_bytes: 1GiB, config: {TINY}}}\n", ":5: models[0].draft_model:",
     "backend_parameters do not pass"),
    (f"    draft_model: {{weights_bytes: 1GiB, config: {{num_hidden_layers: 1}}}}\n" + DRAFT,
     ":5: models[0].draft_model.config:", "num_attention_heads"),
    (f"    backend: sglang\n    draft_model: {{weights_bytes: 1GiB, config: {TINY}}}\n", ":2: models[0]:",
     "vLLM rules only"),
])
def test_draft_model_errors_name_file_line_and_field(tmp_path, entry, where, words):
    message = errors(tmp_path, f"models:\n  - name: x\n    weights_bytes: 10\n    config: {TINY}\n" + entry)
    assert where in message and words in message, message
INLINE = ("models:\n  - name: x\n    weights_bytes: 1000000\n"
          "    config: {{architectures: [{arch}], num_hidden_layers: 2, num_attention_heads: 4, hidden_size: 64}}\n")


def test_categories_are_given_or_filled_in_from_the_architectures(tmp_path):
    """As GPUStack's scheduler fills in a model created without categories (detect_model_type)."""
    assert load_manifest(write(tmp_path, INLINE.format(arch="BertModel"))).models[0].categories == ("embedding",)
    assert load_manifest(write(tmp_path, INLINE.format(arch="Qwen2ForCausalLM"))).models[0].categories == ("llm",)
    given = INLINE.format(arch="Qwen2ForCausalLM") + "    categories: [reranker]\n"
    assert load_manifest(write(tmp_path, given)).models[0].categories == ("reranker",)


def test_a_bad_category_names_its_line(tmp_path):
    message = errors(tmp_path, INLINE.format(arch="BertModel") + "    categories: [embeding]\n")
    assert ":5: models[0].categories[0]:" in message and "'embedding'" in message


def test_an_image_model_is_refused_where_it_is_named(tmp_path):
    message = errors(tmp_path, INLINE.format(arch="BertModel") + "    categories: [image]\n")
    assert ":5: models[0].categories:" in message and "diffusion" in message and "not modelled" in message


def test_gpus_per_replica_needs_the_workers_and_says_why(tmp_path):
    text = INLINE.format(arch="Qwen2ForCausalLM") + "    pinned_gpus: [0, 1]\n    gpus_per_replica: 1\n"
    message = errors(tmp_path, text)
    assert "gpus_per_replica need the manifest's workers" in message and "judges a replica on every pinned GPU" in message


@pytest.mark.parametrize("pinned, replicas, params, refused", [
    ("[0, 1, 2, 3]", 2, "[]", True),  # GPUStack fills in 2 per replica
    ("[0, 1, 2]", 1, "[]", True),  # the largest power of 2 <= 3: 2 of the 3
    ("[0, 1, 2, 3]", 1, "[]", False),
    ("[0, 1]", 1, "[--tensor-parallel-size=2]", False),
    ("[0, 1, 2]", 1, "[]\n    env: {GPUSTACK_SKIP_GPU_COUNT_CHECK: '1'}", False),  # then all 3 per replica
])
def test_a_selection_gpustack_splits_per_replica_is_refused_on_one_nodes_view(tmp_path, pinned, replicas, params,
                                                                            refused):
    """set_model_gpus_per_replica gives each replica fewer GPUs than pinned: the node's view (no workers)
    would judge each replica on all of them, so it says so; a manifest with workers places them."""
    text = (INLINE.format(arch="Qwen2ForCausalLM")
            + f"    pinned_gpus: {pinned}\n    replicas: {replicas}\n    backend_parameters: {params}\n")
    if refused:
        message = errors(tmp_path, text)
        assert ":5: models[0].pinned_gpus:" in message and "Describe this node under `workers:`" in message
    else:
        load_manifest(write(tmp_path, text))


CLAIMED = "    backend: custom\n    env: {GPUSTACK_MODEL_VRAM_CLAIM: 28991029248}\n"


def test_a_custom_model_with_a_vram_claim_needs_no_config_or_weights(tmp_path):
    """GPUStack's custom selector takes the claim as its estimate and reads neither (policies/utils.py
    estimate_model_vram): the model is judged with both unknown, not made up."""
    from vram_exporter.rules import gpustack
    (model,) = load_manifest(write(tmp_path, "models:\n  - name: omni\n" + CLAIMED)).models
    assert model.arch is None and model.weights_bytes is None
    assert gpustack.model_estimate(model) == 28991029248


@pytest.mark.parametrize("text", [
    "models:\n  - name: omni\n    backend: custom\n",  # no claim: the estimate needs the weights
    "models:\n  - name: omni\n    backend: custom\n    env: {OTHER: 1}\n",
    "models:\n  - name: omni\n    env: {GPUSTACK_MODEL_VRAM_CLAIM: 28991029248}\n",  # vLLM's engine needs both
    "models:\n  - name: omni\n    backend: sglang\n    env: {GPUSTACK_MODEL_VRAM_CLAIM: 28991029248}\n",
    "models:\n  - name: omni\n" + CLAIMED + "    weights_bytes: 1GiB\n",  # half a source is still refused
])
def test_without_a_claim_a_custom_model_still_needs_config_and_weights(tmp_path, text):
    said = errors(tmp_path, text)
    assert ":2: models[0]:" in said and "both weights_bytes and config" in said
