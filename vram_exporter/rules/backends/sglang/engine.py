"""Rulebook C: SGLang's start-up and KV pool (sglang 0.5.9, the version GPUStack 2.3.0's catalog runs; what
differs by version is versions.py's, chosen here by the version the model runs).

Sources, sglang 0.5.9 on PyPI (``python/sglang/srt/``):
- ``server_args.py::_handle_gpu_memory_settings``: the default ``--mem-fraction-static`` from the
  smallest card's ``nvidia-smi memory.total`` (MiB); the same arithmetic GPUStack ported
  (gpustack_sglang.py ``gpustack_mem_fraction_static``), but SGLang uses its own TP and PP sizes and
  counts 8 MiB per piecewise-CUDA-graph size (off by default) where GPUStack counts tokens // 4.
- ``model_executor/model_runner.py::init_torch_distributed``: ``total_gpu_memory`` is the FREE memory
  (GiB) once the process has its CUDA context (and NCCL), the minimum over the TP ranks.
- ``model_executor/model_runner_kv_cache_mixin.py::profile_max_num_token``: after the weights are
  loaded, ``rest = available - total_gpu_memory * (1 - mem_fraction_static)``; tokens =
  ``int(rest * 2**30) // cell_size``, rounded down to ``--page-size``, capped by ``--max-total-tokens``;
  ``init_memory_pool`` raises "Not enough memory. Please try to increase --mem-fraction-static." when
  it is <= 0.
- ``get_cell_size_per_token``: MHA/GQA ``max(1, kv_heads // tp) * (head_dim + v_head_dim) * layers * kv_size``;
  MLA ``(kv_lora_rank + qk_rope_head_dim) * layers * kv_size`` (not split by TP).
- ``managers/tp_worker.py``: ``max_req_len = min(context_len - 1, pool tokens - 1)``; SGLang starts with
  a shorter context rather than failing ("Memory pool size is too small" only when that is <= 5).
- ``configs/model_config.py::_derive_context_length``: ``--context-length`` above the model's own is
  refused unless SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1; the model's own is
  ``utils/hf_transformers_utils.py::get_context_length`` (rope_scaling.factor x max_position_embeddings
  unless rope_scaling has original_max_position_embeddings or is llama3).
The pool is therefore ``mem_fraction_static x (free at start - C_pre) - weights - O_pre`` where O_pre
(what is allocated before the pool besides the weights) is small; activations and CUDA graphs come
after it, out of the (1 - mem_fraction_static) share that SGLang's default keeps for them.
"""

from __future__ import annotations

import functools

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ....errors import ModelError
from ....units import GIB, MIB
from . import selector as gpustack_sglang, versions
from ...model import Architecture
from ...flags import last_number, param_pairs

REQ_MARGIN = 5  # max_req_input_len = max_req_len - 5 must stay positive
_KV_BYTES = {"fp8_e5m2": 1, "fp8_e4m3": 1, "bf16": 2, "bfloat16": 2}


@dataclass(frozen=True, slots=True)
class SglangParams:
    """backend_parameters as SGLang's argparse reads them (the last occurrence wins)."""

    mem_fraction_static: float | None
    tp: int
    pp: int
    context_length: int | None
    kv_cache_dtype: str
    page_size: int
    max_total_tokens: int | None
    max_prefill_tokens: int
    max_running_requests: int | None
    chunked_prefill_size: int | None
    decode_graph_max_bs: int | None  # 0.5.18 on: --cuda-graph-max-bs-decode (--cuda-graph-max-bs its alias)
    mm_feature_transport: str | None  # "cpu", "cuda_ipc", "cuda_vmm" (None: unset)
    keep_mm_feature_on_device: bool  # the older spelling of --mm-feature-transport=cuda_ipc
    gpustack: gpustack_sglang.SglangGpuStackParams  # the same flags, as GPUStack reads them


_ALIASES = {"tensor-parallel-size": "tp-size", "tp": "tp-size", "pipeline-parallel-size": "pp-size",
            "data-parallel-size": "dp-size", "dp": "dp-size"}


def sglang_params(parameters: Sequence[str]) -> SglangParams:
    last: dict[str, str | None] = {}
    for key, value in param_pairs(parameters):
        name = key.replace("_", "-")
        last[_ALIASES.get(name, name)] = value

    number = functools.partial(last_number, last, engine="SGLang")

    mfs = number("mem-fraction-static", float, None)
    if mfs is not None and not 0 < mfs <= 1:
        raise ModelError(f"SGLang: --mem-fraction-static {mfs} must be in (0, 1]")
    dtype = (last.get("kv-cache-dtype") or "auto").lower()
    if dtype != "auto" and dtype not in _KV_BYTES:
        raise ModelError(f"--kv-cache-dtype {dtype!r}: SGLang 0.5.9 takes auto, fp8_e5m2, fp8_e4m3, bf16 "
                         "(fp4_e2m1 is not modelled here)")
    return SglangParams(
        mem_fraction_static=mfs, tp=number("tp-size", int, 1), pp=number("pp-size", int, 1),
        context_length=number("context-length", int, None), kv_cache_dtype=dtype,
        page_size=number("page-size", int, 1) or 1, max_total_tokens=number("max-total-tokens", int, None),
        max_prefill_tokens=number("max-prefill-tokens", int, 16384),
        max_running_requests=number("max-running-requests", int, None),
        chunked_prefill_size=number("chunked-prefill-size", int, None),
        decode_graph_max_bs=number("cuda-graph-max-bs-decode", int, None) or number("cuda-graph-max-bs", int, None),
        mm_feature_transport=last.get("mm-feature-transport"),
        keep_mm_feature_on_device="keep-mm-feature-on-device" in last,
        gpustack=gpustack_sglang.gpustack_sglang_params(parameters),
    )


def default_mem_fraction_static(min_total_bytes: int, p: SglangParams, arch: Architecture,
                                version: str = versions.REFERENCE) -> float:
    """The fraction SGLang ``version`` itself takes when none is given (``_handle_gpu_memory_settings``), on a
    node whose smallest card is ``min_total_bytes`` (nvidia-smi's memory.total, whole MiB)."""
    if p.mem_fraction_static is not None:
        return p.mem_fraction_static
    rule = versions.fraction_rule(version)
    if rule.graph_reserve:
        fraction = versions.graph_era_fraction(
            rule, float(min_total_bytes // MIB), tp=p.tp, pp=p.pp, chunked_prefill_size=p.chunked_prefill_size,
            cuda_graph_max_bs=p.decode_graph_max_bs, max_prefill_tokens=p.max_prefill_tokens,
            max_total_tokens=p.max_total_tokens, max_running_requests=p.max_running_requests, mla=arch.mla)
        return fraction * _vision_factor(p, arch)
    own = gpustack_sglang.SglangGpuStackParams(
        tp=p.tp, pp=p.pp, dp=p.gpustack.dp, dp_attention=p.gpustack.dp_attention, mem_fraction_static=None,
        chunked_prefill_size=p.gpustack.chunked_prefill_size, cuda_graph_max_bs=p.gpustack.cuda_graph_max_bs,
        speculative_algorithm=p.gpustack.speculative_algorithm, piecewise_cuda_graph_tokens=None,
        language_only=p.gpustack.language_only)
    fraction = gpustack_sglang.gpustack_mem_fraction_static(min_total_bytes // MIB * MIB, own, None,
                                                            unchunked_prefill_tokens=p.max_prefill_tokens)
    return fraction * _vision_factor(p, arch)


def _vision_factor(p: SglangParams, arch: Architecture) -> float:
    """``adjust_mem_fraction_for_vlm``: a vision model keeps less static memory (SGLang does not round after it)."""
    if not arch.has_vision or p.gpustack.language_only:
        return 1.0
    return gpustack_sglang._vit_factor({"num_hidden_layers": arch.vision_layers or 24,
                                        "hidden_size": arch.vision_hidden_size or 1024})


def feature_transport(p: SglangParams, env: Mapping[str, str]) -> str:
    """``_resolve_mm_feature_transport`` (0.5.18 on) on one node: the flag, else cuda_ipc for
    --keep-mm-feature-on-device or the legacy SGLANG_USE_CUDA_IPC_TRANSPORT, else cpu."""
    if p.mm_feature_transport:
        return p.mm_feature_transport
    if p.keep_mm_feature_on_device:
        return "cuda_ipc"
    legacy = env.get("SGLANG_USE_CUDA_IPC_TRANSPORT")
    if legacy is not None:
        return "cuda_ipc" if legacy.strip().lower() in ("1", "true", "yes", "y", "on") else "cpu"
    return "cpu"


def kv_bytes_per_element(arch: Architecture, kv_cache_dtype: str) -> int:
    return arch.dtype_bytes if kv_cache_dtype == "auto" else _KV_BYTES[kv_cache_dtype]


def cell_size(arch: Architecture, *, tp: int, pp: int, kv_bytes: int, v_head_dim: int | None = None) -> int:
    """``get_cell_size_per_token`` for the layers of one pipeline stage (the first, the largest)."""
    layers = math.ceil(arch.layers / pp)
    if arch.mla:
        return (arch.kv_lora_rank + arch.qk_rope_head_dim) * layers * kv_bytes
    return max(1, arch.kv_heads // tp) * (arch.head_dim + (v_head_dim or arch.head_dim)) * layers * kv_bytes


def context_length(derived: int, given: int | None, env: Mapping[str, str]) -> int:
    """The context SGLang serves: ``--context-length``, else the model's own (``derived``:
    model.py ``hf_context_length``, SGLang's ``get_context_length``)."""
    if given is None:
        return derived
    if given > derived and env.get("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN") not in ("1", "true", "True"):
        raise ModelError(f"SGLang: User-specified context_length ({given}) is greater than the derived "
                         f"context_length ({derived}). To allow overriding this maximum, set the env var "
                         "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1")
    return given


def pool_tokens(*, free_at_start: int, mem_fraction_static: float, weights: int, pre_pool_overhead: int,
                cell: int, page_size: int = 1, max_total_tokens: int | None = None,
                rule: versions.PoolRule = versions.POOL_RULES[0], multimodal: bool = False,
                transport: str | None = None, env: Mapping[str, str] = {}) -> int:
    """``profile_max_num_token`` then ``init_memory_pool``'s rounding; free memory in bytes (SGLang
    works in GiB floats: total = free / 2**30, rest in GiB, tokens = int(rest * 2**30) // cell); the
    version's budget (versions.py ``rest_gib``)."""
    rest = versions.rest_gib(rule, available_gib=(free_at_start - weights - pre_pool_overhead) / GIB,
                             pre_gib=free_at_start / GIB, mem_fraction_static=mem_fraction_static,
                             multimodal=multimodal, feature_transport=transport, env=env)
    tokens = int(rest * (1 << 30)) // cell
    if max_total_tokens is not None:
        tokens = min(tokens, max_total_tokens)
    return tokens // page_size * page_size


def not_enough_memory(mem_fraction_static: float) -> str:
    """init_memory_pool's words when the pool is empty (0.5.18 on, an empty budget: versions.no_kv_memory)."""
    return ("Not enough memory. Please try to increase --mem-fraction-static. "
            f"Current value: self.server_args.mem_fraction_static={mem_fraction_static}")

