"""A model's categories (llm, embedding, reranker, ...) and what they change in GPUStack 2.3.0's booking.

Sources, gpustack 2.3.0 on PyPI:
- ``schemas/models.py``: ``CategoryEnum`` (the names) and ``is_llm_model`` (no categories, or llm among them).
- ``scheduler/scheduler.py::evaluate_pretrained_config`` / ``set_model_categories`` with
  ``scheduler/model_registry.py::detect_model_type``: a model created without categories gets one before it
  is scheduled, from config.json's architectures (for vLLM, --hf-overrides' architectures first: the last
  occurrence, ``get_vllm_override_architectures``); an architecture GPUStack does not know makes it an LLM.
- ``policies/utils.py::estimate_model_vram``: E = int(weights x 1.2) + 2 GiB for an LLM; + 512 MiB for any
  other category; the factor is 3 for text_to_speech. An image (diffusion) model is sized from its
  model_index.json instead: not modelled here.
- ``policies/candidate_selectors/vllm_resource_fit_selector.py::_set_gpu_memory_utilization`` /
  ``_disable_gpu_memory_utilization``: the vLLM selector books 0.9 x total, except for a model with
  categories none of which is llm or speech_to_text and whose architecture is not a Qwen3 (VL) one: it then
  books with g = 0, its "non LLM" branches (the estimate, not a share of the card), unless the model passes
  --gpu-memory-utilization itself. The SGLang and custom-backend selectors read categories only for the
  estimate (and SGLang's image models, not modelled).
- ``worker/backends/vllm.py`` passes no --gpu-memory-utilization: the engine then runs at its own default
  whatever GPUStack booked (rules/backends/vllm/engine.py ``allocates_kv_cache`` says what it takes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from ..errors import ModelError
from ..units import GIB, MIB
from .flags import first_parameter, param_pairs

LLM, EMBEDDING, RERANKER, IMAGE = "llm", "embedding", "reranker", "image"
SPEECH_TO_TEXT, TEXT_TO_SPEECH, UNKNOWN = "speech_to_text", "text_to_speech", "unknown"
NAMES = (LLM, EMBEDDING, IMAGE, RERANKER, SPEECH_TO_TEXT, TEXT_TO_SPEECH, UNKNOWN)  # CategoryEnum's values

# scheduler/model_registry.py (2.3.0): _EMBEDDING_MODELS (with _TRANSFORMERS_BACKEND_EMBEDDING_MODELS),
# _RERANKER_MODELS (_CROSS_ENCODER_MODELS with the transformers backend's), _SPEECH_TO_TEXT_MODELS,
# _TEXT_TO_SPEECH_MODELS. Every other architecture is an LLM for GPUStack's booking (its LLM list, or unknown,
# which set_model_categories also makes llm).
_EMBEDDING_ARCHITECTURES = frozenset({
    "BertForMaskedLM", "BertModel", "BertSpladeSparseEmbeddingModel", "HF_ColBERT", "ColBERTModernBertModel",
    "ColBERTJinaRobertaModel", "DeciLMForCausalLM", "DeepseekV3BidirectionalModel", "Gemma2Model",
    "Gemma3TextModel", "GPT2ForSequenceClassification", "GteModel", "GteNewModel", "InternLM2ForRewardModel",
    "JambaForSequenceClassification", "LlamaBidirectionalModel", "LlamaModel", "MistralModel", "ModernBertModel",
    "NomicBertModel", "Qwen2Model", "Qwen2ForRewardModel", "Qwen2ForProcessRewardModel", "RobertaForMaskedLM",
    "RobertaModel", "VoyageQwen3BidirectionalEmbedModel", "XLMRobertaModel", "BgeM3EmbeddingModel", "CLIPModel",
    "EmbeddingGemma2Model", "ColModernVBertForRetrieval", "ColQwen3", "OpsColQwen3Model",
    "Qwen3VLNemotronEmbedModel", "SiglipModel", "LlamaNemotronVLModel", "PrithviGeoSpatialMAE", "Terratorch",
    "ErnieModel", "JinaEmbeddingsV5Model", "ColBERTLfm2Model", "ColPaliForRetrieval", "ColQwen3_5",
    "TransformersEmbeddingModel", "TransformersMoEEmbeddingModel", "TransformersMultiModalEmbeddingModel",
})
_RERANKER_ARCHITECTURES = frozenset({
    "BertForSequenceClassification", "BertForTokenClassification", "ClefOmniForJointSchema",
    "GteNewForSequenceClassification", "RobertaForSequenceClassification", "RobertaForTokenClassification",
    "XLMRobertaForSequenceClassification", "XLMRobertaForTokenClassification",
    "ModernBertForSequenceClassification", "ModernBertForTokenClassification", "Qwen3ForSequenceClassification",
    "Qwen3VLForSequenceClassification", "JinaVLForRanking", "LlamaBidirectionalForSequenceClassification",
    "LlamaNemotronVLForSequenceClassification", "ErnieForTokenClassification", "ErnieForSequenceClassification",
    "Qwen3ASRForcedAlignerForTokenClassification", "OpenAIPrivacyFilterForTokenClassification", "JinaForRanking",
    "TransformersForSequenceClassification", "TransformersMoEForSequenceClassification",
    "TransformersMultiModalForSequenceClassification",
})
_SPEECH_TO_TEXT_ARCHITECTURES = frozenset({
    "FireRedASR2ForConditionalGeneration", "FunASRForConditionalGeneration", "FunAudioChatForConditionalGeneration",
    "GlmAsrForConditionalGeneration", "GraniteSpeechForConditionalGeneration",
    "GraniteSpeechPlusForConditionalGeneration", "Qwen3ASRForConditionalGeneration", "Qwen3ASRRealtimeGeneration",
    "VoxtralForConditionalGeneration", "VoxtralRealtimeGeneration", "WhisperForConditionalGeneration",
    "CohereAsrForConditionalGeneration", "FireRedLIDForConditionalGeneration", "VibeVoiceAsrForConditionalGeneration",
})
_TEXT_TO_SPEECH_ARCHITECTURES = frozenset({"Qwen3TTSForConditionalGeneration"})
_DETECTED = ((_EMBEDDING_ARCHITECTURES, EMBEDDING), (_RERANKER_ARCHITECTURES, RERANKER),
             (_SPEECH_TO_TEXT_ARCHITECTURES, SPEECH_TO_TEXT), (_TEXT_TO_SPEECH_ARCHITECTURES, TEXT_TO_SPEECH))

# vllm_resource_fit_selector.py::_disable_gpu_memory_utilization: NON_LLM_GMU_EXCEPTIONS and use_gmu_categories.
_GMU_ARCHITECTURES = frozenset({"Qwen3ForCausalLM", "Qwen3ForSequenceClassification",
                                "Qwen3VLForConditionalGeneration", "Qwen3VLForSequenceClassification"})
_GMU_CATEGORIES = frozenset({LLM, SPEECH_TO_TEXT})

ESTIMATE_FACTOR = 1.2  # https://blog.eleuther.ai/transformer-math/#total-inference-memory
TEXT_TO_SPEECH_FACTOR = 3  # "Emperical factor base on Qwen3-TTS"
LLM_FRAMEWORK = 2 * GIB  # CUDA graphs etc.
NON_LLM_FRAMEWORK = 512 * MIB  # "For non-LLM models like embedding, set a smaller overhead"


def checked(categories: Iterable[str], where: str = "categories") -> tuple[str, ...]:
    """Categories as GPUStack's API spells them (lower case); ModelError names one it does not know."""
    out = []
    for category in categories:
        name = str(category).lower()
        if name not in NAMES:
            raise ModelError(f"{where}: {category!r} is not one of {', '.join(NAMES)}")
        out.append(name)
    return tuple(out)


def detected(architectures: Sequence[str]) -> tuple[str, ...]:
    """``detect_model_type``: the first architecture GPUStack lists decides; none it lists outside its LLM
    list: llm. (Its LLM list is not copied: an LLM architecture before a non-LLM one in the same config.json,
    which no published config has, would still stop its loop at llm; here the non-LLM one wins.)"""
    for architecture in architectures:
        for known, category in _DETECTED:
            if architecture in known:
                return (category,)
    return (LLM,)


def filled_in(given: Sequence[str], architectures: Sequence[str], overriding: Sequence[str] = ()) -> tuple[str, ...]:
    """The categories GPUStack schedules a model with: its own, else detected from its architectures, those
    of an --hf-overrides in ``overriding`` first (the backend parameters of a backend whose overrides
    GPUStack reads: rules/backends ``reads_hf_overrides``)."""
    if given:
        return tuple(given)
    return detected(_overridden(overriding, "last") or architectures)


def is_llm(categories: Sequence[str]) -> bool:
    """``is_llm_model``."""
    return not categories or LLM in categories


def estimate(weights_bytes: int, categories: Sequence[str] = ()) -> int:
    """``estimate_model_vram`` without GPUSTACK_MODEL_VRAM_CLAIM: int(weights x factor) + framework."""
    factor = TEXT_TO_SPEECH_FACTOR if TEXT_TO_SPEECH in categories else ESTIMATE_FACTOR
    return int(weights_bytes * factor) + (LLM_FRAMEWORK if is_llm(categories) else NON_LLM_FRAMEWORK)


def not_modelled(categories: Sequence[str]) -> str | None:
    """Why a model's categories put it out of reach, or None."""
    if IMAGE in categories:
        return ("an image (diffusion) model: GPUStack sizes it from its model_index.json components and SGLang "
                "runs it as a diffusion pipeline; not modelled")
    return None


def vllm_books_estimate(categories: Sequence[str], architectures: Sequence[str],
                        backend_parameters: Sequence[str]) -> bool:
    """``_disable_gpu_memory_utilization`` (before a given --gpu-memory-utilization, which wins): the vLLM
    selector books the estimate (g = 0) for a model none of whose categories is llm or speech_to_text, unless
    its architectures (--hf-overrides' first, as ``_set_model_parameters`` reads them) name a Qwen3 one."""
    if not categories or _GMU_CATEGORIES & set(categories):
        return False
    return not _GMU_ARCHITECTURES & set(_overridden(backend_parameters, "first") or architectures)


def _overridden(backend_parameters: Sequence[str], which: str) -> tuple[str, ...]:
    """--hf-overrides' architectures: the first occurrence as the selector reads it (json.loads), the last as
    the scheduler's category detection does; () where absent or not a JSON object with a list there. (The
    flag readers do not mask JSON as GPUStack's safe_split does: an --hf-overrides={...} written in one entry
    with spaces inside is split; as its own entry, the JSON is read whole.)"""
    if which == "first":
        raw = first_parameter(backend_parameters, ["hf-overrides"])
    else:
        raw = next((v for k, v in reversed(list(param_pairs(backend_parameters)))
                    if k in ("hf-overrides", "hf_overrides") and v is not None), None)
    try:
        architectures = json.loads(raw).get("architectures") if raw else None
    except (ValueError, AttributeError):
        return ()
    return tuple(a for a in architectures if isinstance(a, str)) if isinstance(architectures, list) else ()
