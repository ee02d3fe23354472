"""What the rulebooks know about a model and the cluster: plain frozen values, no I/O.

``Architecture.from_config`` reads a Hugging Face config.json mapping the way vLLM
0.33 and GPUStack 2.3.0 read the fields they need (docs/rulebooks.md#b-vllms-start-up-and-kv-cache, "config.json fields").
"""

from __future__ import annotations

from ..errors import ModelError

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Literal, TypeVar

from ..units import GIB
from . import categories as model_categories
from .flags import GpuStackParams, VllmParams, gpustack_params, vllm_params

T = TypeVar("T")
RUNTIME_OVERHEAD_FALLBACK = GIB  # O where neither manifest nor config.json gives more (docs/rulebooks.md#measured-on-a-real-gpu-issue-17)
Scheduler = Literal["gpustack", "gpustack-0.6"]
Backend = Literal["vllm", "sglang", "custom"]  # GPUStack's BackendEnum vLLM, SGLang, Custom

# torch_dtype / dtype -> bytes per element (vLLM resolves "auto" to the config's dtype).
_DTYPE_BYTES = {
    "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
    "float32": 4, "fp32": 4, "float": 4,
}


@dataclass(frozen=True, slots=True)
class Architecture:
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    vocab_size: int | None
    max_position_embeddings: int | None
    kv_lora_rank: int | None = None  # set: MLA (DeepSeek-style) attention
    qk_rope_head_dim: int = 0
    sliding_window: int | None = None  # applies to every layer when set
    # Interleaved sliding and full layers (Gemma-2/3, gpt-oss, Llama-4-style): each layer's window, None for a
    # full-attention layer; empty where every layer is alike (then sliding_window says which).
    layer_windows: tuple[int | None, ...] = ()
    vision_attention_heads: int | None = None
    # LongRoPE (Phi-3/3.5): with no --max-model-len vLLM serves original_max_position_embeddings, not
    # max_position_embeddings (vllm/config/model.py, _get_and_verify_max_len, vLLM 0.26.0: "For LongRoPE,
    # default to original_max_position_embeddings"); measured: Phi-3.5-mini started at 4096 on an H200
    # (tests/data/vllm-h200/run-2.json).
    longrope_default_len: int | None = None
    # vision_config's ViT size: GPUStack's and SGLang's --mem-fraction-static default shrinks for it
    # (sglang_resource_fit_selector.py step 3; sglang server_args.py adjust_mem_fraction_for_vlm).
    has_vision: bool = False
    vision_layers: int | None = None
    vision_hidden_size: int | None = None
    # The context SGLang derives (sglang 0.5.9 utils/hf_transformers_utils.py::get_context_length): the first of
    # its context keys, times rope_scaling.factor unless original_max_position_embeddings or llama3 is there.
    hf_context_len: int = 2048
    # The MLP's shape, for the activation peak in vLLM's runtime overhead O (rules/backends/vllm/runtime.py); None
    # where config.json lacks it (then O falls back to the cluster's constant).
    hidden_size: int | None = None
    intermediate_size: int | None = None  # dense MLP (intermediate_size; OPT: ffn_dim; GPT-2: n_inner)
    moe: MoeShape | None = None
    architectures: tuple[str, ...] = ()  # config.json's: GPUStack keys some rules on them
    # Multi-token-prediction layers in the checkpoint (DeepSeek-V3's num_nextn_predict_layers): vLLM's "mtp"
    # speculative method runs them as the draft, each with a KV cache layer of its own.
    mtp_layers: int = 0

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def default_max_model_len(self) -> int | None:
        """vLLM's max_model_len when none is given."""
        return self.longrope_default_len or self.max_position_embeddings

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Architecture:
        """Raises ValueError naming the config.json field that is missing or wrong."""
        text = config.get("text_config") or config  # multimodal models keep the LLM here
        heads = _positive_int(text, "num_attention_heads")
        kv_heads = next(
            (int(text[k]) for k in ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
             if text.get(k)),
            heads,
        )
        head_dim = text.get("head_dim") or (_positive_int(text, "hidden_size") // heads)
        dtype = str(text.get("torch_dtype") or text.get("dtype") or config.get("torch_dtype") or "bfloat16")
        if dtype not in _DTYPE_BYTES:
            raise ModelError(f"torch_dtype {dtype!r} is not one of {', '.join(sorted(_DTYPE_BYTES))}")
        window = text.get("sliding_window")
        if text.get("use_sliding_window") is False:
            window = None  # Qwen2 ships the field switched off
        layer_windows = _layer_windows(text, window, _is_gemma2(config))
        if layer_windows:
            window = None  # per layer, not every layer (all full: none)
            layer_windows = layer_windows if any(layer_windows) else ()
        vision = config.get("vision_config") or {}
        rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
        longrope = isinstance(rope, Mapping) and (rope.get("rope_type") or rope.get("type")) in ("longrope", "su")
        original = text.get("original_max_position_embeddings")  # vLLM reads the top-level field only
        return cls(
            layers=_positive_int(text, "num_hidden_layers"),
            attention_heads=heads,
            kv_heads=kv_heads,
            head_dim=int(head_dim),
            dtype_bytes=_DTYPE_BYTES[dtype],
            vocab_size=text.get("vocab_size") or config.get("vocab_size"),
            max_position_embeddings=text.get("max_position_embeddings"),
            kv_lora_rank=text.get("kv_lora_rank"),
            qk_rope_head_dim=int(text.get("qk_rope_head_dim") or 0),
            sliding_window=int(window) if window else None,
            layer_windows=layer_windows,
            vision_attention_heads=vision.get("num_attention_heads") or vision.get("num_heads"),
            longrope_default_len=int(original) if longrope and original else None,
            has_vision=config.get("vision_config") is not None,
            vision_layers=vision.get("num_hidden_layers") or vision.get("depth"),
            vision_hidden_size=vision.get("hidden_size"),
            hf_context_len=hf_context_length(text),
            hidden_size=_optional_int(text, "hidden_size"),
            intermediate_size=next((v for k in ("intermediate_size", "ffn_dim", "n_inner")
                                    if (v := _optional_int(text, k))), None),
            moe=MoeShape.from_config(text),
            architectures=tuple(a for a in config.get("architectures") or () if isinstance(a, str)),
            mtp_layers=_optional_int(text, "num_nextn_predict_layers") or 0,
        )


def _is_gemma2(config: Mapping[str, Any]) -> bool:
    return config.get("model_type") == "gemma2" or "Gemma2ForCausalLM" in (config.get("architectures") or ())


def _layer_windows(text: Mapping[str, Any], window: Any, gemma2: bool = False) -> tuple[int | None, ...]:
    """Each layer's window where sliding and full layers interleave, as transformers' configs (and vLLM
    through them) read it: ``layer_types`` written out ("sliding_attention" / "full_attention"), else
    ``sliding_window_pattern`` as Gemma-3 publishes it (every pattern-th layer full: layer i slides unless
    (i + 1) % pattern == 0). Gemma-2 publishes neither: vLLM 0.17-0.34's gemma2.py reads
    ``config.layer_types[layer_idx]``, which transformers' Gemma2Config fills as every other layer sliding
    (pattern 2: layer 0 slides, layer 1 is full). Empty where the layers are all alike."""
    if not window:
        return ()
    layers = int(text.get("num_hidden_layers") or 0)
    types = text.get("layer_types")
    pattern = text.get("sliding_window_pattern") or (2 if gemma2 else None)
    if isinstance(types, list) and len(types) == layers:
        sliding = [t == "sliding_attention" for t in types]
    elif isinstance(pattern, int) and pattern > 0:
        sliding = [bool((i + 1) % pattern) for i in range(layers)]
    else:
        return ()
    if all(sliding):
        return ()  # all sliding: the uniform rule, with sliding_window
    return tuple(int(window) if s else None for s in sliding)


_CONTEXT_KEYS = ("max_sequence_length", "seq_length", "max_seq_len", "model_max_length", "max_position_embeddings")


def hf_context_length(text: Mapping[str, Any]) -> int:
    """SGLang's ``get_context_length`` on a config.json mapping (its text part)."""
    rope = text.get("rope_scaling")
    factor = 1
    if isinstance(rope, Mapping) and rope:
        factor = rope.get("factor", 1)
        if "original_max_position_embeddings" in rope or rope.get("rope_type") == "llama3":
            factor = 1
    for key in _CONTEXT_KEYS:
        if text.get(key) is not None:
            return int(factor * text[key])
    return 2048


@dataclass(frozen=True, slots=True)
class MoeShape:
    """A mixture-of-experts MLP: what one token passes through. DeepSeek-V2/V3 (n_routed_experts,
    n_shared_experts, moe_intermediate_size, first_k_dense_replace), Qwen-MoE (num_experts,
    shared_expert_intermediate_size), Mixtral (num_local_experts; its experts are intermediate_size wide)."""

    experts: int  # routed experts
    experts_per_token: int
    expert_intermediate_size: int
    shared_intermediate_size: int = 0  # the shared experts of a token, together
    dense_layers: int = 0  # leading layers with a dense MLP (first_k_dense_replace)

    @classmethod
    def from_config(cls, text: Mapping[str, Any]) -> MoeShape | None:
        experts = next((v for k in ("n_routed_experts", "num_experts", "num_local_experts")
                        if (v := _optional_int(text, k))), None)
        per_token = _optional_int(text, "num_experts_per_tok")
        if not experts or not per_token:
            return None
        width = _optional_int(text, "moe_intermediate_size") or _optional_int(text, "intermediate_size")
        if not width:
            return None
        shared = (_optional_int(text, "shared_expert_intermediate_size")
                  or (_optional_int(text, "n_shared_experts") or 0) * width)
        return cls(experts=experts, experts_per_token=per_token, expert_intermediate_size=width,
                   shared_intermediate_size=shared, dense_layers=_optional_int(text, "first_k_dense_replace") or 0)


def _optional_int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"config field {key!r} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class EngineVersion:
    """The engine version a verdict assumes, and why (said beside every verdict: metrics, check, the page)."""

    version: str  # "0.17.1", "0.5.9"
    why: str  # "the running instance reports it", "the model's backend_version", "GPUStack's runner for CUDA 12.8"...


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """One LoRA adapter a model serves: an entry of GPUStack 2.3.0's ``Model.lora_list``
    (gpustack/schemas/models.py ``LoraListEntry``), or of the manifest's ``lora_adapters``."""

    name: str
    weights_bytes: int  # its weight files, as GPUStack sizes them (policies/utils.py::estimate_lora_weights_bytes)
    # adapter_config.json's ``r`` and the largest of its ``rank_pattern`` (None: not read). GPUStack's worker
    # passes --max-lora-rank from the larger of them (worker/backends/base.py::read_lora_max_rank).
    rank: int | None = None
    pattern_rank: int | None = None

    @property
    def max_rank(self) -> int | None:
        ranks = [r for r in (self.rank, self.pattern_rank) if r is not None]
        return max(ranks) if ranks else None


@dataclass(frozen=True, slots=True)
class DraftModel:
    """The draft model of speculative decoding (vLLM's ``--speculative-config`` ``model``; GPUStack 2.3.0's
    ``speculative_config.draft_model``, resolved as the instance's ``draft_model_source``): its weights and
    config.json where known. None of them: not known, and said (the engine's fit then cannot be judged)."""

    source: str  # where it comes from, for a person
    weights_bytes: int | None = None
    arch: Architecture | None = None


@dataclass(frozen=True, slots=True)
class Speculative:
    """Speculative decoding as the engine is started with it: vLLM's ``--speculative-config`` (the flag wins,
    as the last argument wins), else what GPUStack 2.3.0's worker passes for the model's speculative_config
    (worker/backends/vllm.py::_get_speculative_arguments: method eagle3 / mtp / ngram)."""

    method: str | None  # vLLM's method; None: detected from the draft (vllm/config/speculative.py)
    num_speculative_tokens: int | None = None
    draft_tensor_parallel_size: int | None = None
    model: str | None = None  # the draft named in the config


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the manifest, resolved: sizes in bytes, parameters parsed."""

    name: str
    # Both None only where GPUStack never reads them: a custom-backend model whose GPUSTACK_MODEL_VRAM_CLAIM
    # decides (rules/backends/__init__.py ``judged_by_claim``); unknown, never made up.
    weights_bytes: int | None
    arch: Architecture | None
    backend_parameters: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    max_model_len: int | None = None  # manifest's value; else from backend_parameters; else the model's
    placed_on: tuple[int, ...] | None = None  # GPUs it already holds; None: a candidate
    placed_claims: Mapping[int, int] | None = None  # its actual claims (GPUStack's); None: int(g * T) each
    pinned_gpus: tuple[int, ...] | None = None  # manual GPU selection (gpu_selector)
    replicas: int = 1
    runtime_overhead: int | None = None  # O for this model; None: the cluster's
    metrics_url: str | None = None  # a running model's own vLLM /metrics (read by sources/vllm_client.py)
    backend: Backend = "vllm"  # which GPUStack selector places it and which engine's rules apply
    run_command: str | None = None  # a custom backend's command line (GPUStack reads flags in it)
    # SGLang under GPUStack: the smallest GPU of the workers it may use, which GPUStack sizes its default
    # --mem-fraction-static for (None: this node's GPUs; set with GPUStack as the source)
    sizing_total: int | None = None
    engine_version: EngineVersion | None = None  # None: the cluster's default for the backend (Cluster)
    # What the engine loads beyond the base model: LoRA adapters (GPUStack adds their weights to its estimate
    # and its worker turns them on: --enable-lora, --max-loras, --max-lora-rank), the draft model of
    # speculative decoding and GPUStack's speculative_config for the model (None: the flags alone decide).
    lora_adapters: tuple[LoraAdapter, ...] = ()
    draft: DraftModel | None = None
    speculative: Speculative | None = None
    # GPUStack's categories as it schedules the model (llm, embedding, reranker, ...: rules/categories.py),
    # filled in from the architectures where the model gives none; () is an LLM
    categories: tuple[str, ...] = ()

    def read(self, reader: Callable[[tuple[str, ...]], T]) -> T:
        """``backend_parameters`` as ``reader`` (one program's flag reader: rules/flags.py and each backend's)
        reads them, parsed once per distinct list: by value, for every spec that carries it."""
        return _read(reader, tuple(self.backend_parameters))

    @property
    def gpustack(self) -> GpuStackParams:
        """As GPUStack's vLLM selector reads them (the first occurrence), whatever the model's backend (only
        the vLLM rules read them); its g is 0 where it books the estimate instead of a share of the card
        (``books_estimate``)."""
        params = self.read(gpustack_params)
        return replace(params, gpu_memory_utilization=0.0) if self.books_estimate else params

    @property
    def books_estimate(self) -> bool:
        """GPUStack's vLLM selector would book this model's estimate, not g x total (rules/categories.py
        ``vllm_books_estimate``: a non-LLM category, no --gpu-memory-utilization given)."""
        return (bool(self.categories) and not self.read(gpustack_params).gmu_given
                and model_categories.vllm_books_estimate(self.categories, self.architectures,
                                                         self.backend_parameters))

    @property
    def architectures(self) -> tuple[str, ...]:
        """config.json's architectures; () where config.json was not read (``arch`` None)."""
        return self.arch.architectures if self.arch is not None else ()

    @property
    def vllm(self) -> VllmParams:
        """As vLLM reads them (the last occurrence)."""
        return self.read(vllm_params)

    @property
    def placed(self) -> bool:
        return self.placed_on is not None


# The parameters are read at every rulebook probe: parse each distinct list once per reader (the lists
# are tuples, so their value is the key; a list that raises is parsed again, and raises again).
@lru_cache(maxsize=16384)
def _read(reader, parameters: tuple[str, ...]):
    return reader(parameters)


@dataclass(frozen=True, slots=True)
class Cluster:
    """Cluster-wide settings of the manifest (docs/design.md#manifest)."""

    scheduler: Scheduler = "gpustack"
    # GPUStack >= 2.0.2 reserves no VRAM by default; v0.5.1-v2.0.1 reserved 1 GiB.
    system_reserved_vram: int = 0
    # --gpu-memory-utilization where a model does not set it; None: its vLLM version's default
    # (rules/backends/vllm/versions.py: 0.9 before 0.20, 0.92 from 0.20, 1.0 with 0.34's extensible KV cache)
    vllm_default_gpu_memory_utilization: float | None = None
    vllm_context_overhead: int = 512 * 2**20  # C_pre: CUDA context + cuBLAS of the new process
    # O: activation peak + non-torch memory (+ CUDA graphs where the version counts them). None: the
    # fitted model of rules/backends/vllm/runtime.py for each model whose config.json has the MLP's shape, else
    # RUNTIME_OVERHEAD_FALLBACK; a value: that O for every model (a model's own runtime_overhead wins).
    vllm_runtime_overhead: int | None = None
    vllm_version: str = "0.33"  # a model's vLLM version where it names none: rules/backends/vllm/versions.py
