"""Prediction beside reality: what a running vLLM really allocated, next to what rulebook B predicts.

Every vLLM serves ``vllm:cache_config_info`` on its own /metrics: an info-style gauge whose labels carry
the cache config, among them ``num_gpu_blocks`` (the KV blocks it allocated after profiling) and
``block_size`` (vllm/v1/metrics/loggers.py, ``log_metrics_info("cache_config", ...)``, vLLM 0.26.0;
recorded from a real ``vllm serve`` on an H200 in tests/data/vllm-h200/run-2.json). KV bytes really
allocated = num_gpu_blocks x block bytes (block_size x bytes per token of all layers).

The runtime overhead vLLM really had follows from it: O_observed = R - W - KV_actual, to within one block
(vLLM floors its KV to whole blocks). That is the number to put in the manifest's ``runtime_overhead``
for the model (docs/runbooks.md#vramkvcachemismatch says how).

Where the URL comes from: with a manifest, the model's ``metrics_url``; with GPUStack as the source,
the instance's worker IP and port from GPUStack's API (``http://{worker_ip}:{port}/metrics``).

The same server answers the engine's version: vLLM's ``GET /version`` -> ``{"version": "0.34.0"}``
(rules/runner_pick.py ``VERSION_PATHS``), the verdicts' version before any other (``VersionAnswer``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..rules import runner_pick
from ..rules.node import NodeFit

_INFO = re.compile(r"^vllm:cache_config_info\{(?P<labels>.*)\}\s+\S+\s*$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# The tolerance of issue 17's targets: 2% of the KV memory or 256 MiB, whichever is larger.
RELATIVE_TOLERANCE = 0.02
ABSOLUTE_TOLERANCE = 256 * 2**20


@dataclass(frozen=True, slots=True)
class CacheConfigInfo:
    """What one vLLM engine reports about its KV cache."""

    num_gpu_blocks: int
    block_size: int
    gpu_memory_utilization: float | None
    cache_dtype: str | None
    engine: str = "0"
    kv_cache_size_tokens: int | None = None


def parse_cache_config_info(metrics_text: str) -> list[CacheConfigInfo]:
    """Every ``vllm:cache_config_info`` sample of a /metrics body (one per engine). Raises ValueError
    when there is none, or its blocks are not known yet ("None" before the engine is up)."""
    found = []
    for m in _INFO.finditer(metrics_text):
        labels = dict(_LABEL.findall(m.group("labels")))
        blocks = labels.get("num_gpu_blocks", "None")
        if not blocks.isdigit() or not labels.get("block_size", "").isdigit():
            raise ValueError(f"vllm:cache_config_info has no num_gpu_blocks/block_size yet: {blocks!r}")
        gmu = labels.get("gpu_memory_utilization")
        tokens = labels.get("kv_cache_size_tokens")
        found.append(CacheConfigInfo(
            num_gpu_blocks=int(blocks), block_size=int(labels["block_size"]),
            gpu_memory_utilization=float(gmu) if gmu not in (None, "None") else None,
            cache_dtype=labels.get("cache_dtype"), engine=labels.get("engine", "0"),
            kv_cache_size_tokens=int(tokens) if tokens and tokens.isdigit() else None,
        ))
    if not found:
        raise ValueError("no vllm:cache_config_info in the /metrics answer (not a vLLM, or too old)")
    return found


@dataclass(frozen=True, slots=True)
class InstanceComparison:
    model: str
    instance: str
    predicted_kv_bytes: int
    actual_kv_bytes: int
    predicted_blocks: int
    actual_blocks: int
    observed_runtime_overhead: int | None  # R - W - KV_actual; None when R or W is unknown

    @property
    def difference_bytes(self) -> int:
        return self.actual_kv_bytes - self.predicted_kv_bytes

    @property
    def tolerance_bytes(self) -> int:
        return max(round(RELATIVE_TOLERANCE * abs(self.actual_kv_bytes)), ABSOLUTE_TOLERANCE)

    @property
    def within_tolerance(self) -> bool:
        return abs(self.difference_bytes) <= self.tolerance_bytes


def compare(model: str, instance: str, info: CacheConfigInfo, *, bytes_per_token: int, predicted_kv_bytes: int,
            budget_bytes: int | None = None, weights_bytes: int | None = None) -> InstanceComparison:
    """Our predicted KV against the instance's. ``bytes_per_token`` is ours (all layers, one GPU)."""
    block_bytes = info.block_size * bytes_per_token
    actual = info.num_gpu_blocks * block_bytes
    observed = budget_bytes - weights_bytes - actual if budget_bytes is not None and weights_bytes is not None else None
    return InstanceComparison(
        model=model, instance=instance, predicted_kv_bytes=predicted_kv_bytes, actual_kv_bytes=actual,
        predicted_blocks=max(predicted_kv_bytes, 0) // block_bytes, actual_blocks=info.num_gpu_blocks,
        observed_runtime_overhead=observed,
    )


def node_comparisons(node: NodeFit, readings: Mapping) -> list[InstanceComparison]:
    """Each running model with a reading (vllm_client.InstanceReading) against its static fit, on the
    first GPU it holds (vLLM's worker 0)."""
    out = []
    for fit in node.models:
        reading = readings.get(fit.name)
        if reading is None or reading.info is None or not fit.placed or fit.error or not fit.per_gpu:
            continue
        gpu = next((f for f in fit.per_gpu if f.index in fit.gpus), fit.per_gpu[0])
        out.append(compare(fit.name, reading.instance, reading.info, bytes_per_token=fit.bytes_per_token,
                           predicted_kv_bytes=gpu.kv_bytes, budget_bytes=gpu.budget, weights_bytes=gpu.weights))
    return out


def metrics_url(model: Mapping, instance: Mapping | None = None) -> str | None:
    """The /metrics URL of a model's vLLM: the manifest's ``metrics_url``, else a GPUStack instance's
    ``worker_ip`` and ``port`` (GPUStack's model-instance API)."""
    if model.get("metrics_url"):
        return str(model["metrics_url"])
    if instance and instance.get("worker_ip") and instance.get("port"):
        return f"http://{instance['worker_ip']}:{instance['port']}/metrics"
    return None


# A /version answer is some 25 bytes; anything past this is not one.
VERSION_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class VersionAnswer:
    """What a running engine, read through ``metrics_url``, answered on its version path: ``version`` (a
    version: the verdicts assume it) or ``not_a_version`` (what it answered instead, in words: said beside
    the version the next source gives); ``error``: no answer this time (logged), beside what the same URL
    answered before, if anything (sources/vllm_client.py keeps it)."""

    metrics_url: str  # the model's, which the answer is for
    url: str  # where it was asked (``version_url``)
    version: str | None = None
    not_a_version: str | None = None
    error: str | None = None

    @property
    def problem(self) -> str | None:
        return self.error or (f"answered {self.not_a_version}, not a version" if self.not_a_version else None)


def version_url(metrics_url: str, path: str) -> str:
    """The URL of ``path`` on the server of ``metrics_url``: its last path segment replaced (a prefix a proxy
    adds is kept), its query dropped. ``http://h:8000/metrics`` -> ``http://h:8000/version``."""
    parts = urlsplit(metrics_url)
    directory = parts.path.rstrip("/").rpartition("/")[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{directory}/{path}", "", ""))


def parse_version_answer(body: bytes) -> str:
    """The version in a /version answer (``{"version": "0.34.0"}``); ValueError saying, in words that follow
    "answered", what it is instead."""
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("bytes that are not UTF-8") from None
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        raise ValueError("text that is not JSON") from None
    version = document.get("version") if isinstance(document, dict) else None
    if not isinstance(version, str):
        raise ValueError('JSON without a "version" string')
    if not runner_pick.is_version(version):
        raise ValueError(repr(version[:40]))
    return version
