"""SGLang's KV pool budget by version: each rule written once for the range of versions it holds in.

- 0.5.6.post2 to 0.5.9 (``model_executor/model_runner.py`` 0.5.6.post2, ``model_runner_kv_cache_mixin.py``
  0.5.9, ``profile_max_num_token``): rest = available - total x (1 - mem_fraction_static), in GiB, where
  ``total`` is the free memory before the weights; an empty pool is ``init_memory_pool``'s "Not enough memory"
  (engine.py ``not_enough_memory``).
- 0.5.18, 0.5.22, 0.5.23 (``mem_cache/kv_cache_configurator.py::_profile_available_bytes``): the same slack,
  less the multimodal memory allocated after the pool is sized (``mm_runtime_reservation_gb``: the VLM
  embedding cache, SGLANG_VLM_CACHE_SIZE_MB (100), plus SGLANG_MM_FEATURE_CACHE_MB (1024) with the cuda_ipc or
  cuda_vmm feature transport); a pool <= 0 is its own error, which names the fix: "Raise
  --mem-fraction-static above" ceil((1 - available / pre) x 1000) / 1000.

SGLang's own default ``--mem-fraction-static`` (where SGLang decides it: GPUStack 2.3.0 passes its own fraction
unless the user gave one, gpustack/worker/backends/sglang.py), reserve = what activations and CUDA graphs take:
- 0.5.6.post2 to 0.5.9 (``server_args.py::_handle_gpu_memory_settings``): engine.py ``default_mem_fraction_static``.
- 0.5.18 (``server_args.py``), 0.5.22 and 0.5.23 (``arg_groups/memory_hook.py::handle_gpu_memory_settings``):
  512 + 1.5 x max(chunked prefill, 2048) + TP x PP / 8 x 1024 + the graphs' reserve (``reserve_for_graph_mb``:
  2 x decode graph batch, and prefill CUDA graphs, on by default on CUDA: 8 MiB per captured size, 1.5 GiB
  with MLA), >= 10 GiB on cards over 60 GiB; no speculative decoding reserve any more. 0.5.22 doubled the
  chunked prefill (4096) and the decode graph batch (48, TP >= 4: 160) on 20-35 GiB cards, and caps a default
  decode graph batch at --max-running-requests; with PP > 1 it captures prefill graphs up to 8192 tokens.
Mamba (hybrid) models' pools, DP attention's padding from 0.5.18, DeepEP buffers, disaggregation, the
post-capture KV sizing (SGLANG_ENABLE_POST_CAPTURE_KV_SIZING, off by default) and Qwen3-VL's decode graph
expansion are not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# The version the rulebook was first written against: a spec that carries no version (the manifest and
# GPUStack's view always give one, rules/runner_pick.py ASSUMED where none is known) is judged by it.
REFERENCE = "0.5.9"


def _key(version: str) -> tuple[int, ...]:
    """The release numbers of "0.5.6.post2" / "v0.5.18": (0, 5, 6), (0, 5, 18). Kept here, not runner_pick's
    compare_versions: the registry imports this module, and runner_pick imports the registry."""
    parts = []
    for part in version.removeprefix("v").split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _since(rules, version: str):
    """The last range starting at or below ``version`` (the oldest for older ones)."""
    return next((r for r in reversed(rules) if _key(r.since) <= _key(version)), rules[0])

_VLM_CACHE_MB = 100  # environ.py SGLANG_VLM_CACHE_SIZE_MB
_MM_FEATURE_CACHE_MB = 1024  # environ.py SGLANG_MM_FEATURE_CACHE_MB
_GPU_TRANSPORTS = ("cuda_ipc", "cuda_vmm")


@dataclass(frozen=True, slots=True)
class PoolRule:
    since: str  # the first version of the range
    reserves_multimodal: bool  # mm_runtime_reservation_gb comes off the pool
    names_the_fraction: bool  # an empty pool raises "Raise --mem-fraction-static above X"


POOL_RULES = (
    PoolRule("0.5.6.post2", reserves_multimodal=False, names_the_fraction=False),
    PoolRule("0.5.18", reserves_multimodal=True, names_the_fraction=True),
)


@dataclass(frozen=True, slots=True)
class FractionRule:
    since: str
    graph_reserve: bool  # the reserve_for_graph_mb form (prefill CUDA graphs on); False: 0.5.9's form
    mid_card: tuple[int, int, int] = (2048, 24, 80)  # 20-35 GiB: chunked prefill, decode graph batch TP<4 / >=4
    caps_graphs_at_running_requests: bool = False
    pp_caps_prefill_graphs: bool = False  # with PP > 1 prefill graphs stop at 8192 tokens (0.5.22)


FRACTION_RULES = (
    FractionRule("0.5.6.post2", graph_reserve=False),
    FractionRule("0.5.18", graph_reserve=True),
    FractionRule("0.5.22", graph_reserve=True, mid_card=(4096, 48, 160), caps_graphs_at_running_requests=True,
                 pp_caps_prefill_graphs=True),
)

# _handle_gpu_memory_settings' tiers above the mid card (MiB below which, chunked prefill, graph batch TP<4, >=4)
_TIERS = ((60 * 1024, 4096, 32, 160), (160 * 1024, 8192, 256, 512))


def fraction_rule(version: str) -> FractionRule:
    return _since(FRACTION_RULES, version)


def prefill_graph_sizes(max_tokens: int) -> list[int]:
    """``generate_prefill_cuda_graph_batch_sizes``: the token counts prefill CUDA graphs are captured at."""
    sizes = (list(range(4, 33, 4)) + list(range(48, 257, 16)) + list(range(288, 513, 32))
             + list(range(576, 1025, 64)) + list(range(1280, 4097, 256)) + list(range(4608, max_tokens + 1, 512)))
    return [s for s in sizes if s <= max_tokens]


def graph_era_fraction(rule: FractionRule, gpu_mem_mib: float, *, tp: int, pp: int,
                       chunked_prefill_size: int | None, cuda_graph_max_bs: int | None, max_prefill_tokens: int,
                       max_total_tokens: int | None = None, max_running_requests: int | None = None,
                       mla: bool = False) -> float:
    """``handle_gpu_memory_settings`` (0.5.18 on) for a text model, no DP attention, no disaggregation
    (a model path naming llama-2 caps prefill graphs at 4096 tokens: not modelled)."""
    if gpu_mem_mib < 20 * 1024:
        chunked, graph_bs = 2048, 8
    elif gpu_mem_mib < 35 * 1024:
        chunked, graph_bs = rule.mid_card[0], rule.mid_card[1] if tp < 4 else rule.mid_card[2]
    else:
        chunked, small, large = next(((c, s, big) for limit, c, s, big in _TIERS if gpu_mem_mib < limit),
                                     (16384, 512, 512))
        graph_bs = small if tp < 4 else large
    if cuda_graph_max_bs is not None:
        graph_bs = cuda_graph_max_bs
    elif rule.caps_graphs_at_running_requests and max_running_requests is not None:
        graph_bs = min(graph_bs, max_running_requests)
    chunked = chunked_prefill_size if chunked_prefill_size is not None else chunked
    reserved = 512 + max(chunked if chunked > 0 else max_prefill_tokens, 2048) * 1.5 + tp * pp / 8 * 1024
    reserved += graph_bs * 2
    if mla:
        reserved += 1.5 * 1024
    else:
        prefill_tokens = chunked
        if rule.pp_caps_prefill_graphs and pp > 1:
            prefill_tokens = min(prefill_tokens, 8192)
        if max_total_tokens is not None:
            prefill_tokens = min(prefill_tokens, max_total_tokens)
        reserved += len(prefill_graph_sizes(prefill_tokens)) * 8
    if gpu_mem_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((gpu_mem_mib - reserved) / gpu_mem_mib, 3)


def pool_rule(version: str) -> PoolRule:
    """The rule of ``version``: the last range starting at or below it (the oldest for older ones)."""
    return _since(POOL_RULES, version)


def multimodal_reservation_gib(*, multimodal: bool, feature_transport: str | None,
                               env: Mapping[str, str] = {}) -> float:
    """``mm_runtime_reservation_gb``: what a multimodal model's caches take after the pool is sized."""
    if not multimodal:
        return 0.0
    reserved = int(env.get("SGLANG_VLM_CACHE_SIZE_MB", _VLM_CACHE_MB))
    if feature_transport in _GPU_TRANSPORTS:
        reserved += int(env.get("SGLANG_MM_FEATURE_CACHE_MB", _MM_FEATURE_CACHE_MB))
    return reserved / 1024


def rest_gib(rule: PoolRule, *, available_gib: float, pre_gib: float, mem_fraction_static: float,
             multimodal: bool = False, feature_transport: str | None = None, env: Mapping[str, str] = {}) -> float:
    """The pool budget in GiB: ``available_gib`` free after the weights, ``pre_gib`` free before them."""
    rest = available_gib - pre_gib * (1 - mem_fraction_static)
    if rule.reserves_multimodal:
        rest -= multimodal_reservation_gib(multimodal=multimodal, feature_transport=feature_transport, env=env)
    return rest


def minimum_fraction(*, available_gib: float, pre_gib: float) -> float:
    """The fraction below which the weights leave no KV memory (the slack alone), as SGLang computes it."""
    return 1 - available_gib / pre_gib


def no_kv_memory(mem_fraction_static: float, *, available_gib: float, pre_gib: float) -> str:
    """``_profile_available_bytes``'s words (0.5.18 on) for an empty pool, with the fraction it names."""
    minimum = minimum_fraction(available_gib=available_gib, pre_gib=pre_gib)
    suggested = math.ceil(minimum * 1000) / 1000
    return (f"Loaded weights leave no GPU memory for the KV cache under --mem-fraction-static={mem_fraction_static}. "
            f"Raise --mem-fraction-static above {suggested:.3f} (minimum viable = 1 - available/pre = "
            f"{minimum:.4f}). If using speculative decoding, draft weights are now counted.")
