"""A running model's own vLLM readings beside the prediction, as metric families: the comparisons
(sources/vllm_instance.py) and whether each instance answered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..sources.vllm_instance import InstanceComparison
from .catalogue import family
from .exposition import Family


def families(comparisons: Iterable[InstanceComparison]) -> list[Family]:
    """The comparison as metric families, labels ``model`` and ``vllm_instance`` (the scraped URL's host:port)."""
    predicted = family("vram_model_vllm_kv_cache_predicted_bytes")
    actual = family("vram_model_vllm_kv_cache_actual_bytes")
    tolerance = family("vram_model_vllm_kv_cache_tolerance_bytes")
    overhead = family("vram_model_vllm_runtime_overhead_observed_bytes")
    for c in comparisons:
        predicted.sample(c.model, c.instance, c.predicted_kv_bytes)
        actual.sample(c.model, c.instance, c.actual_kv_bytes)
        tolerance.sample(c.model, c.instance, c.tolerance_bytes)
        if c.observed_runtime_overhead is not None:
            overhead.sample(c.model, c.instance, c.observed_runtime_overhead)
    return [predicted, actual, tolerance, overhead]


def up_family(readings: Mapping) -> Family:
    up = family("vram_model_vllm_instance_up")
    for name, reading in sorted(readings.items()):
        up.sample(name, reading.instance, 1 if reading.info is not None else 0)
    return up
