"""Speculative decoding in vLLM (``--speculative-config``): what the draft adds on each GPU, read from vLLM
0.17.1, 0.32.0, 0.33.0 and 0.34.0 (PyPI wheels), alike in all four where not said otherwise.

- The method (``vllm/config/speculative.py`` ``SpeculativeConfig.__post_init__``): the one given, else
  "ngram" for the model "ngram" / "[ngram]", else detected from the draft: "eagle" when its name holds
  "eagle-", "eagle3" when it holds "eagle3", else "draft_model"; the MTP model types are "mtp".
- The draft's weights are loaded by the drafter in the model runner's ``load_model``, inside the profiler
  that measures the weights (``vllm/v1/worker/gpu_model_runner.py``, 0.34's ``gpu/model_runner.py``), so the
  KV cache shrinks by them: its files split over ``draft_tensor_parallel_size``, the target's TP unless set
  to 1 (``_verify_and_get_draft_tp``: nothing else is allowed; the "draft_model" method wants the target's
  in 0.17.1-0.33.0, ``vllm/v1/spec_decode/draft_model.py``). "mtp" runs the checkpoint's own MTP layers,
  whose weights are among the model's files already.
- The draft's attention layers join the target's in ``get_kv_cache_spec``; full-attention layers of any
  shape form one KV cache group (``UniformTypeKVCacheSpecs``, ``get_kv_cache_groups`` in
  ``vllm/v1/core/kv_cache_utils.py`` / 0.33's ``kv_cache_planning.py``) whose block holds every layer's page:
  a token's KV bytes are the target's plus the draft's, and so is the minimum for max_model_len. The draft
  runs in the target's dtype (``SpeculativeConfig`` builds its ModelConfig with the target's), so its KV
  takes the target's KV dtype. "mtp": num_nextn_predict_layers layers of the target's shape.
- "ngram" and "suffix" load no model: nothing is added.

Not modelled, and said: other methods (medusa, mlp_speculator, ...), a sliding-window or interleaved target
(its groups would mix with the draft's), pipeline parallelism, and a draft whose size or config.json is not
known (GPUStack 2.3.0 does not say it: gpustack #3169).
tests/rules/test_vllm_draft_source.py checks the KV rule against each version's own check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ....errors import ModelError
from ...model import DraftModel, ModelSpec, Speculative
from . import engine
from .versions import VllmRules

NO_MODEL = frozenset({"ngram", "suffix"})
DRAFT_CHECKPOINT = frozenset({"draft_model", "eagle", "eagle3"})
# vllm/config/speculative.py MTPModelTypes (0.17.1; deprecated names, replaced by "mtp")
MTP_NAMES = frozenset({"mtp", "deepseek_mtp", "mimo_mtp", "glm4_moe_mtp", "glm4_moe_lite_mtp", "glm_ocr_mtp",
                       "ernie_mtp", "nemotron_h_mtp", "exaone_moe_mtp", "qwen3_next_mtp", "qwen3_5_mtp",
                       "longcat_flash_mtp", "pangu_ultra_moe_mtp", "step3p5_mtp"})


@dataclass(frozen=True, slots=True)
class DraftLoad:
    """What the draft adds on one GPU."""

    method: str
    weights_per_gpu: int
    per_token: int  # KV bytes a token adds in the draft's layers
    said: str  # for a person: the method and what it adds


def speculative_of(model: ModelSpec) -> Speculative | None:
    """The engine's speculative decoding: --speculative-config (after GPUStack's own, so it wins), else
    GPUStack's speculative_config for the model."""
    given = model.vllm.speculative_config
    if given is None:
        return model.speculative
    return Speculative(method=_str(given, "method"), num_speculative_tokens=_int(given, "num_speculative_tokens"),
                       draft_tensor_parallel_size=_int(given, "draft_tensor_parallel_size"),
                       model=_str(given, "model"))


def _str(config: Mapping[str, object], key: str) -> str | None:
    value = config.get(key)
    return None if value is None else str(value)


def _int(config: Mapping[str, object], key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"vLLM refuses --speculative-config's {key} {value!r}: it must be a positive integer")
    return value


def method_of(spec: Speculative, draft: DraftModel | None) -> str:
    """vLLM's method for ``spec`` (SpeculativeConfig.__post_init__)."""
    method = spec.method
    if method is None:
        name = (spec.model or (draft.source if draft else "")).lower()
        if name in ("ngram", "[ngram]"):
            return "ngram"
        method = "eagle" if "eagle-" in name else "eagle3" if "eagle3" in name else "draft_model"
    if method == "[ngram]":
        return "ngram"
    return "mtp" if method in MTP_NAMES else method


def load_of(model: ModelSpec, rules: VllmRules, *, tp: int, pp: int, kv_dtype_bytes: int) -> DraftLoad | None:
    """What the draft adds on each GPU (None: no speculative decoding). Raises ModelError where it is not
    modelled or not known."""
    spec = speculative_of(model)
    if spec is None:
        return None
    method = method_of(spec, model.draft)
    if method in NO_MODEL:
        return DraftLoad(method, 0, 0, f"speculative decoding ({method}) loads no draft model")
    if pp > 1:
        raise ModelError("speculative decoding with pipeline parallelism is not modelled")
    if model.arch.sliding_window or model.arch.layer_windows:
        raise ModelError("speculative decoding on a sliding-window model is not modelled (its KV groups would mix "
                         "with the draft's)")
    if method == "mtp":
        if model.arch.mtp_layers < 1:
            raise ModelError("speculative decoding (mtp): config.json names no num_nextn_predict_layers")
        mtp = replace(model.arch, layers=model.arch.mtp_layers)
        per_token = engine.bytes_per_token(mtp, tp=tp, pp=1, dtype_bytes=kv_dtype_bytes)
        return DraftLoad(method, 0, per_token, f"speculative decoding (mtp): {model.arch.mtp_layers} MTP layer(s) "
                                               "of its own checkpoint, each with KV cache")
    if method not in DRAFT_CHECKPOINT:
        raise ModelError(f"speculative decoding with the {method} method is not modelled "
                         f"(modelled: {', '.join(sorted(DRAFT_CHECKPOINT | NO_MODEL | {'mtp'}))})")
    return _checkpoint_load(model, spec, method, rules, tp=tp, kv_dtype_bytes=kv_dtype_bytes)


def _checkpoint_load(model: ModelSpec, spec: Speculative, method: str, rules: VllmRules, *, tp: int,
                     kv_dtype_bytes: int) -> DraftLoad:
    draft = model.draft
    name = spec.model or (draft.source if draft else "its draft model")
    if draft is None or draft.weights_bytes is None or draft.arch is None:
        raise ModelError(f"speculative decoding ({method}): the size of {name} is not known (GPUStack does not book "
                         "it, gpustack #3169): give draft_model with path, or weights_bytes and config, in the "
                         "manifest")
    draft_tp = spec.draft_tensor_parallel_size or tp
    if draft_tp not in (1, tp):
        raise ModelError(f"vLLM fails: speculative_draft_tensor_parallel_size={draft_tp} cannot be other value than "
                         "1 or target model tensor_parallel_size")
    if method == "draft_model" and rules.draft_tp_must_match and draft_tp != tp:
        raise ModelError("vLLM fails: Currently, 'draft_tensor_parallel_size' and 'tensor_parallel_size' must be the "
                         f"same. Got {draft_tp} and {tp}.")
    arch = draft.arch
    if arch.sliding_window or arch.layer_windows:
        raise ModelError("speculative decoding with a sliding-window draft is not modelled")
    per_token = engine.bytes_per_token(arch, tp=draft_tp, pp=1, dtype_bytes=kv_dtype_bytes)
    weights = math.ceil(draft.weights_bytes / draft_tp)
    return DraftLoad(method, weights, per_token,
                     f"speculative decoding ({method}): draft {name}, {arch.layers} layer(s) with KV cache")
