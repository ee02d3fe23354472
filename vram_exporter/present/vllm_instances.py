"""A running model's own vLLM readings beside the prediction, as metric families: the comparisons
(sources/vllm_instance.py) and whether each instance answered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..sources.vllm_instance import InstanceComparison
from .exposition import Family


def families(comparisons: Iterable[InstanceComparison]) -> list[Family]:
    """The comparison as metric families, labels ``model`` and ``vllm_instance`` (the scraped URL's host:port)."""
    names = ("model", "vllm_instance")  # not "instance": Prometheus sets that to the exporter
    predicted = Family("vram_model_vllm_kv_cache_predicted_bytes",
                       "KV cache memory rulebook B predicts for a running vLLM instance.", "gauge", names)
    actual = Family("vram_model_vllm_kv_cache_actual_bytes",
                    "KV cache memory the running vLLM allocated (vllm:cache_config_info num_gpu_blocks x block).",
                    "gauge", names)
    tolerance = Family("vram_model_vllm_kv_cache_tolerance_bytes",
                       "Allowed |actual - predicted| KV: 2% of actual or 256 MiB, whichever is larger.", "gauge", names)
    overhead = Family("vram_model_vllm_runtime_overhead_observed_bytes",
                      "Runtime overhead O the instance really had: budget - weights - actual KV.", "gauge", names)
    for c in comparisons:
        predicted.sample(c.model, c.instance, c.predicted_kv_bytes)
        actual.sample(c.model, c.instance, c.actual_kv_bytes)
        tolerance.sample(c.model, c.instance, c.tolerance_bytes)
        if c.observed_runtime_overhead is not None:
            overhead.sample(c.model, c.instance, c.observed_runtime_overhead)
    return [predicted, actual, tolerance, overhead]


def up_family(readings: Mapping) -> Family:
    up = Family("vram_model_vllm_instance_up",
                "1 if the running model's own vLLM answered its /metrics with its KV cache at the last read "
                "(--vllm.metrics-interval), 0 if not.", "gauge", ("model", "vllm_instance"))
    for name, reading in sorted(readings.items()):
        up.sample(name, reading.instance, 1 if reading.info is not None else 0)
    return up
