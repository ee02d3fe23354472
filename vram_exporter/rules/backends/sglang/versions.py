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
Mamba (hybrid) models' pools are not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ...runner_pick import compare_versions

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


def pool_rule(version: str) -> PoolRule:
    """The rule of ``version``: the last range starting at or below it (the oldest for older ones)."""
    return next((r for r in reversed(POOL_RULES) if compare_versions(r.since, version) <= 0), POOL_RULES[0])


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
