"""vLLM's LoRA adapters on the GPU (``--enable-lora``): what they take, read from vLLM 0.17.1, 0.32.0, 0.33.0
and 0.34.0 (PyPI wheels) and alike in all four where not said otherwise.

What the GPU holds (``vllm/lora/model_manager.py::LoRAModelManager``, created in the model runner's
``load_model`` inside its ``DeviceMemoryProfiler``: ``vllm/v1/worker/gpu_model_runner.py``, 0.34's
``vllm/v1/worker/gpu/model_runner.py``), so counted as weights, and the KV cache shrinks by as much:

- per wrapped module, ``max_loras`` slots of rank ``max_lora_rank`` in ``lora_dtype`` (auto: the model's
  dtype), zeroed at start-up whatever adapters are loaded later (``create_lora_weights`` of
  ``vllm/lora/layers/{base_linear,column_parallel_linear,row_parallel_linear,vocab_parallel_embedding,
  logits_processor}.py``): A is rank x input, B is output x rank, per packed slice; column-parallel B and
  row-parallel A are split by tensor parallelism, the rest not (``--fully-sharded-loras`` splits the
  column A's rank and the row B's output too);
- the punica wrapper's index tensors (``vllm/lora/punica_wrapper/punica_base.py``, ``punica_gpu.py``,
  ``vllm/lora/ops/triton_ops/lora_kernel_metadata.py``): a few per batched token and per sequence;
- with tensor parallelism, the logits' reindexing map of the lm_head wrapper (``logits_processor.py``).

Which modules are wrapped follows the model class (``vllm/lora/utils.py::get_supported_lora_modules``:
every linear layer, plus ``embedding_modules``; ``packed_modules_mapping`` says the slices): written here
per architecture for the dense decoders whose classes were read (``LAYOUTS``); any other architecture is
not modelled, and said. The adapters themselves wait in CPU memory (``--max-cpu-loras``) until a request
needs them; the profiling run's dummy adapters are built on the CPU too
(``model_manager.py::create_dummy_lora``) and copied into the slots above.

What it adds to the runtime overhead: the shrink kernel's float32 buffer, slices x tokens x rank,
alive inside the MLP's peak (``punica_gpu.py::add_lora_linear``), and a second set of CUDA graphs: graphs are
captured once per LoRA case, without adapters and with (``vllm/v1/cudagraph_dispatcher.py::_get_lora_cases``;
0.34: ``vllm/v1/worker/gpu/lora_utils.py::get_lora_capture_cases``), one per power of two of active
adapters with ``--specialize-active-lora`` (``vllm/lora/utils.py::get_captured_lora_counts``).
tests/rules/test_vllm_lora_source.py runs each version's own code for the slots, the punica tensors and the graph sets
(the shrink buffer is read, not run).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from functools import lru_cache

from ....errors import ModelError
from ...flags import VllmLoraParams, first_parameter, vllm_params
from ...model import Architecture, LoraAdapter, ModelSpec
from .versions import VllmRules


@dataclass(frozen=True, slots=True)
class LoraLayout:
    """The LoRA-wrapped modules of one vLLM model class: each decoder layer's qkv_proj, o_proj, gate_up_proj
    and down_proj, and, where ``embedding_modules`` names them, embed_tokens and the lm_head."""

    qkv_slices: int  # 3: q/k/v packed (MergedQKVParallelLinearWithLoRA); 1: one fused qkv (QKVParallelLinearWithLoRA)
    gate_up_slices: int  # 2: gate/up packed (MergedColumnParallelLinearWithLoRA); 1: one fused gate_up
    embeddings: bool  # embedding_modules = {"embed_tokens": ..., "lm_head": ...}
    lm_head: bool = True  # the class has an lm_head module (Gemma-2's logits come from embed_tokens)


# The classes' packed_modules_mapping and embedding_modules, read in vllm/model_executor/models/<name>.py
# (alike in 0.17.1-0.34.0; registry.py maps the config.json architecture to them).
LAYOUTS = {
    "LlamaForCausalLM": LoraLayout(3, 2, embeddings=True),
    "MistralForCausalLM": LoraLayout(3, 2, embeddings=False),  # mistral.py: embedding_modules = {}
    "Qwen2ForCausalLM": LoraLayout(3, 2, embeddings=False),
    "Qwen3ForCausalLM": LoraLayout(3, 2, embeddings=True),
    "Phi3ForCausalLM": LoraLayout(1, 1, embeddings=True),  # fused qkv_proj and gate_up_proj; Llama's embeddings
    "GraniteForCausalLM": LoraLayout(3, 2, embeddings=True),
    "Gemma2ForCausalLM": LoraLayout(3, 2, embeddings=False, lm_head=False),
    "Gemma3ForCausalLM": LoraLayout(3, 2, embeddings=False),
}
LM_HEAD_VOCAB_LIMIT = 258048  # logits_processor.py: "When using LoRA, vocab size must be <= 258048"
VOCAB_PADDING = 64  # vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE
ALLOCATION_ROUNDING = 512  # torch's CUDA caching allocator rounds every block up to 512 bytes
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2}


def allocated(nbytes: int) -> int:
    """What one tensor of ``nbytes`` takes of torch's allocated memory (what vLLM's profiler reads)."""
    return max(ALLOCATION_ROUNDING, math.ceil(nbytes / ALLOCATION_ROUNDING) * ALLOCATION_ROUNDING)


def layout_of(arch: Architecture) -> LoraLayout:
    for name in arch.architectures:
        if name in LAYOUTS:
            return LAYOUTS[name]
    shown = ", ".join(arch.architectures) or "a config.json without architectures"
    raise ModelError(f"vLLM's LoRA buffers are not modelled for {shown} (modelled: {', '.join(LAYOUTS)})")


def dtype_bytes(arch: Architecture, params: VllmLoraParams, model_dtype_bytes: int) -> int:
    """--lora-dtype; auto is the model's dtype (vllm/config/lora.py verify_with_model_config)."""
    return _DTYPE_BYTES.get(params.lora_dtype, model_dtype_bytes)


def _divide(a: int, b: int, what: str) -> int:
    if a % b:  # vllm/distributed/utils.py::divide asserts it
        raise ModelError(f"vLLM fails: {what} {a} is not divisible by the tensor-parallel size {b}")
    return a // b


def stacked_tensors(arch: Architecture, params: VllmLoraParams, *, tp: int, pp: int,
                    dtype: int) -> Iterator[tuple[str, int]]:
    """(module, bytes) of every A and B tensor of the LoRA slots on one GPU (the busiest pipeline rank: the
    most layers, and embed_tokens or the lm_head, whichever is larger, when the stages split them)."""
    layout = layout_of(arch)
    if arch.moe is not None or arch.mla:
        raise ModelError("vLLM's LoRA buffers are not modelled for MoE or MLA models")
    if arch.hidden_size is None or arch.intermediate_size is None or arch.vocab_size is None:
        raise ModelError("vLLM's LoRA buffers need hidden_size, intermediate_size and vocab_size in config.json")
    slots, rank, hidden, width = params.max_loras, params.max_lora_rank, arch.hidden_size, arch.intermediate_size
    sharded = params.fully_sharded_loras
    column_a = _divide(rank, tp, "the LoRA rank") if sharded and tp > 1 else rank
    row_b = _divide(hidden, tp, "hidden_size") if sharded and tp > 1 else hidden
    q_out = arch.attention_heads // tp * arch.head_dim
    kv_out = max(1, arch.kv_heads // tp) * arch.head_dim  # QKVParallelLinear replicates KV heads past TP
    qkv_b = (q_out, kv_out, kv_out) if layout.qkv_slices == 3 else (q_out + 2 * kv_out,)
    gate_up_b = (width // tp,) * 2 if layout.gate_up_slices == 2 else (2 * width // tp,)
    layer = ([("qkv_proj", column_a * hidden)] * layout.qkv_slices + [("qkv_proj", out * rank) for out in qkv_b]
             + [("o_proj", rank * (arch.attention_heads * arch.head_dim // tp)), ("o_proj", row_b * rank)]
             + [("gate_up_proj", column_a * hidden)] * layout.gate_up_slices
             + [("gate_up_proj", out * rank) for out in gate_up_b]
             + [("down_proj", rank * (width // tp)), ("down_proj", row_b * rank)])
    for _ in range(math.ceil(arch.layers / pp)):
        for module, elements in layer:
            yield module, allocated(slots * elements * dtype)
    ends = []
    if layout.embeddings:  # VocabParallelEmbeddingWithLoRA: A is vocab x rank, not split by TP
        ends.append([("embed_tokens", allocated(slots * arch.vocab_size * rank * dtype)),
                     ("embed_tokens", allocated(slots * hidden * rank * dtype))])
        if layout.lm_head:  # LogitsProcessorWithLoRA: the full vocabulary on every rank
            head = [("lm_head", allocated(slots * rank * hidden * dtype)),
                    ("lm_head", allocated(slots * arch.vocab_size * rank * dtype))]
            if tp > 1:  # sharded_to_full_mapping_gpu: one int64 per padded vocabulary entry
                head.append(("lm_head", allocated(math.ceil(arch.vocab_size / VOCAB_PADDING) * VOCAB_PADDING * 8)))
            ends.append(head)
    if pp == 1:
        for end in ends:
            yield from end
    elif ends:
        yield from max(ends, key=lambda end: sum(size for _, size in end))


def punica_bytes(rules: VllmRules, *, max_loras: int, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """The punica wrapper's GPU index tensors (PunicaWrapperBase: four per batched token, int64, the
    embeddings' two rows deep in 0.17.1; three per sequence; PunicaWrapperGPU's two LoRAKernelMeta: two int32
    per token and three per adapter slot)."""
    tokens, seqs = max_num_batched_tokens, max_num_seqs
    base = 3 * allocated(tokens * 8) + allocated(rules.lora_embedding_index_rows * tokens * 8) \
        + 3 * allocated(seqs * 8)
    meta = 2 * allocated(tokens * 4) + 2 * allocated((max_loras + 1) * 4) + allocated((max_loras + 2) * 4)
    return base + 2 * meta


def graph_sets(params: VllmLoraParams) -> int:
    """How many times each CUDA graph is captured: once without adapters and once per captured count of
    active ones (max_loras + 1 alone, or every power of two up to it with --specialize-active-lora)."""
    n = params.max_loras + 1
    counts = [c for c in range(1, n + 1) if c & (c - 1) == 0 or c == n] if params.specialize_active_lora else [n]
    return 1 + len(counts)


def shrink_buffer_bytes(arch: Architecture, params: VllmLoraParams, tokens: int) -> int:
    """add_lora_linear's float32 buffer (slices, tokens, rank) for gate_up_proj, alive inside the MLP's peak."""
    return layout_of(arch).gate_up_slices * tokens * params.max_lora_rank * 4


@dataclass(frozen=True, slots=True)
class LoraMemory:
    """What --enable-lora adds on one GPU."""

    weights: int  # the slots and the punica tensors, profiled as the model's weights
    graph_sets: int  # CUDA graph sets captured (1 without LoRA)
    activation: int  # added to the activation peak


@lru_cache(maxsize=1024)  # the fit search asks again for every value it tries; all arguments are values
def gpu_memory(arch: Architecture, params: VllmLoraParams, rules: VllmRules, *, tp: int, pp: int,
               model_dtype_bytes: int, max_num_batched_tokens: int, max_num_seqs: int) -> LoraMemory:
    if (arch.vocab_size or 0) > LM_HEAD_VOCAB_LIMIT and layout_of(arch).embeddings and layout_of(arch).lm_head:
        raise ModelError(f"vLLM fails: When using LoRA, vocab size must be <= {LM_HEAD_VOCAB_LIMIT}")
    if params.target_modules is not None:
        raise ModelError("--lora-target-modules is not modelled (vLLM's LoRA buffers for all modules are)")
    dtype = dtype_bytes(arch, params, model_dtype_bytes)
    stacked = sum(size for _, size in stacked_tensors(arch, params, tp=tp, pp=pp, dtype=dtype))
    punica = punica_bytes(rules, max_loras=params.max_loras, max_num_batched_tokens=max_num_batched_tokens,
                          max_num_seqs=max_num_seqs)
    return LoraMemory(stacked + punica, graph_sets(params), shrink_buffer_bytes(arch, params, max_num_batched_tokens))


def rank_refusal(adapters: tuple[LoraAdapter, ...], params: VllmLoraParams, rules: VllmRules) -> str | None:
    """vLLM's refusal of an adapter whose rank exceeds --max-lora-rank (vllm/lora/peft_helper.py validate_legal:
    ``r`` alone in 0.17.1, the largest of ``r`` and ``rank_pattern`` from 0.32)."""
    for adapter in adapters:
        rank = adapter.max_rank if rules.lora_rank_pattern_checked else adapter.rank
        if rank is not None and rank > params.max_lora_rank:
            return (f"vLLM fails to load LoRA adapter {adapter.name}: LoRA rank {rank} is greater than "
                    f"max_lora_rank {params.max_lora_rank}.")
    return None


# --- what GPUStack 2.3.0's worker passes for a model's lora_list ---------------------------------------------
# gpustack/worker/backends/vllm.py::extend_vllm_mounted_lora_arguments: --enable-lora, --max-loras <adapters>,
# --lora-modules, and --max-lora-rank rounded up to vLLM's choices from the adapters' adapter_config.json
# (unless the model's own parameters set it), all before the model's backend_parameters (the last one wins).
GPUSTACK_RANK_CHOICES = (8, 16, 32, 64, 128, 256, 320, 512)  # _VLLM_LORA_RANK_CHOICES


def gpustack_rank(rank: int) -> int:
    """_round_up_vllm_lora_rank: the next allowed rank; beyond 512 passed through (vLLM then refuses it)."""
    return next((choice for choice in GPUSTACK_RANK_CHOICES if rank <= choice), rank)


def gpustack_flags(adapters: tuple[LoraAdapter, ...], user_sets_rank: bool) -> tuple[str, ...]:
    """The flags GPUStack's worker puts before the model's own for its adapters. Raises ModelError where the
    rank it reads from the adapters' files is not known here."""
    if not adapters:
        return ()
    flags = ("--enable-lora", f"--max-loras={len(adapters)}")
    if user_sets_rank:
        return flags
    unknown = [a.name for a in adapters if a.max_rank is None]
    if unknown:
        raise ModelError(f"LoRA adapter {', '.join(unknown)}: its rank (adapter_config.json's r) is not known, and "
                         "GPUStack passes --max-lora-rank from it: give the adapter's rank or path in the manifest, "
                         "or --max-lora-rank in backend_parameters")
    return (*flags, f"--max-lora-rank={gpustack_rank(max(a.max_rank for a in adapters))}")


def engine_params(model: ModelSpec) -> VllmLoraParams | None:
    """vLLM's LoRAConfig as the engine starts: GPUStack's flags for the model's adapters, then the model's
    own (the last one wins); none are added where the model passes --lora-modules itself."""
    user = tuple(model.backend_parameters)
    if not model.lora_adapters or first_parameter(user, ["lora-modules", "lora_modules"]) is not None:
        return model.vllm.lora
    sets_rank = first_parameter(user, ["max-lora-rank", "max_lora_rank"]) is not None
    return _lora_of((*gpustack_flags(model.lora_adapters, sets_rank), *user))


@lru_cache(maxsize=1024)
def _lora_of(parameters: tuple[str, ...]) -> VllmLoraParams | None:
    return vllm_params(parameters).lora
