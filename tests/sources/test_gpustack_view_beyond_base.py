"""GPUStack's API on what a model loads beyond its weights (issue 21): ``lora_list`` (GPUStack adds the adapters'
weights to its estimate, policies/utils.py::estimate_lora_weights_bytes) and ``speculative_config`` (its worker
passes --speculative-config; the draft's size is nowhere in the API, gpustack #3169)."""

from __future__ import annotations

import json
from pathlib import Path

from test_gpustack_view import recorded_document, recorded_models
from test_gpustack_live import QWEN_1_5B
from vram_exporter.rules import gpustack
from vram_exporter.sources.gpustack_api import GpuStackState, parse_page
from vram_exporter.sources.gpustack_view import build_view
from vram_exporter.sources.manifest import load_manifest


def state_with(**seed_changes) -> GpuStackState:
    """The recorded server, its seed-qwen model (a local_path model, one pending instance) changed."""
    models = recorded_document("models")
    models["items"] = [dict(m, **seed_changes) if m["name"] == "seed-qwen" else m for m in models["items"]]
    return GpuStackState(tuple(parse_page("workers", recorded_document("workers"))[0]),
                         tuple(parse_page("models", models)[0]),
                         tuple(parse_page("model-instances", recorded_document("model-instances"))[0]))


def seed_spec(state: GpuStackState, overlay=None):
    view = build_view(state, worker_name="seed-node", source="recorded", read_model=recorded_models, overlay=overlay)
    verdict = next(v for v in view.verdicts if v.name == "seed-qwen")
    spec = next((m for m in view.node_models.models if m.name == "seed-qwen"), None)
    return spec, verdict


def adapter(tmp_path: Path, name: str, rank: int, weights: int) -> str:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (directory / "adapter_model.safetensors").write_bytes(b"x" * weights)
    return str(directory)


def test_local_adapters_of_a_local_model_are_read_and_estimated(tmp_path):
    path = adapter(tmp_path, "a", 16, 5000)
    spec, verdict = seed_spec(state_with(lora_list=[{"lora_name": "a", "source": "local_path", "local_path": path}]))
    (a,) = spec.lora_adapters
    assert (a.name, a.weights_bytes, a.rank) == ("a", 5000, 16) and verdict.size_known
    base, _ = seed_spec(state_with())
    assert gpustack.model_estimate(spec) == gpustack.estimate_bytes(base.weights_bytes + 5000, {})


def test_a_local_adapter_of_a_hub_model_counts_nothing_as_gpustack_counts_it(tmp_path):
    """estimate_lora_weights_bytes sizes a local adapter only for a local_path model."""
    path = adapter(tmp_path, "a", 16, 5000)
    spec, _ = seed_spec(state_with(source="huggingface", huggingface_repo_id="Qwen/Qwen2.5-1.5B-Instruct",
                                   lora_list=[{"lora_name": "a", "source": "local_path", "local_path": path}]))
    assert (spec.lora_adapters[0].weights_bytes, spec.lora_adapters[0].rank) == (0, 16)


def test_a_hub_adapter_without_a_size_is_said_and_the_overlay_gives_it(tmp_path):
    hub = [{"lora_name": "a", "lora_repo_name": "user/adapter", "source": "huggingface"},
           {"lora_name": "", "lora_repo_name": "skipped"}]  # no name: GPUStack skips it
    spec, verdict = seed_spec(state_with(lora_list=hub))
    assert spec is None and verdict.size_known is False and "LoRA adapter a (user/adapter on huggingface)" in verdict.note
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("models:\n  - name: seed-qwen\n    weights_bytes: 3087467144\n"
                       f"    config: {json.dumps(QWEN_1_5B)}\n    lora_adapters:\n"
                       "      - {name: a, weights_bytes: 600MB, rank: 32}\n")
    spec, verdict = seed_spec(state_with(lora_list=hub), load_manifest(overlay))
    assert [(a.name, a.weights_bytes, a.rank) for a in spec.lora_adapters] == [("a", 600 * 10**6, 32)]
    assert verdict.size_known


def test_speculative_config_is_what_gpustacks_worker_passes(tmp_path):
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "config.json").write_text(json.dumps(QWEN_1_5B))

    def read(directory: Path):
        if directory == draft:
            return QWEN_1_5B, 777
        return recorded_models(directory)

    settings = {"enabled": True, "algorithm": "eagle3", "draft_model": str(draft), "num_draft_tokens": 4}
    view = build_view(state_with(speculative_config=settings), worker_name="seed-node", source="recorded",
                      read_model=read)
    spec = next(m for m in view.node_models.models if m.name == "seed-qwen")
    assert (spec.speculative.method, spec.speculative.num_speculative_tokens) == ("eagle3", 4)
    assert (spec.draft.source, spec.draft.weights_bytes) == (str(draft), 777)
    catalog = dict(settings, draft_model="Qwen3-8B-EAGLE3")  # a catalog name: no size anywhere in the API
    spec, _ = seed_spec(state_with(speculative_config=catalog))
    assert spec.draft.weights_bytes is None
    off = dict(settings, enabled=False)
    spec, _ = seed_spec(state_with(speculative_config=off))
    assert spec.speculative is None and spec.draft is None


def test_an_unreadable_local_adapter_of_a_local_model_is_said(tmp_path):
    lora_list = [{"lora_name": "a", "source": "local_path", "local_path": str(tmp_path / "gone")}]
    spec, verdict = seed_spec(state_with(lora_list=lora_list))
    assert spec is None and "LoRA adapter a" in verdict.note and "does not exist" in verdict.note
