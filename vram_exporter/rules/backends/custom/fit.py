"""A custom backend's fit of one model on one node: GPUStack's custom selector (selector.py) only, through
the fit every non-vLLM backend shares (rules/backends/shared_fit.py).

Check (``vram_model_headroom_bytes{check}``, negative fails): ``gpustack_custom_claim`` =
A - max(E, int(T x fraction)). The engine is not modelled: it is "startable" wherever GPUStack places
it, and the reasons say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ....snapshot import GpuReading
from ... import gpustack
from ...model import Cluster, ModelSpec
from ...verdicts import Context, GpuFit, ModelFit, Probe
from ..shared_fit import (evaluate as shared_evaluate, placed_claims as shared_placed_claims,
                          placement as shared_placement, probe as shared_probe)
from . import selector

NOT_MODELLED = "a custom backend's engine is not modelled: only GPUStack's placement is judged"


def _no_engine(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> None:
    return None


def _gpu_fit(model, gpu, view, context, book, estimate, n, engine, running=False) -> GpuFit:
    claim = selector.claim_among(view, estimate, book.fraction, n)
    headroom = {"gpustack_custom_claim": view.allocatable - claim}
    return GpuFit(gpu.index, gpu.uuid, claim, headroom, 0.0, 1.0, 0, committed=context.committed.get(gpu.index, 0),
                  free_need=None)


def _say(fit: ModelFit, engine, book: gpustack.Booking) -> list[str]:
    return [NOT_MODELLED]


def evaluate(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context,
             placed_on: Sequence[int] | None = None) -> ModelFit:
    return shared_evaluate(selector, _no_engine, _gpu_fit, _say, model, cluster, gpus, context, placed_on)


def probe(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], context: Context) -> Probe:
    return shared_probe(evaluate, model, cluster, gpus, context)


def placement(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading], claims: Mapping[int, int],
              replica_count: int | None = None) -> gpustack.Placement | None:
    return shared_placement(selector, model, cluster, gpus, claims, replica_count)


def placed_claims(model: ModelSpec, cluster: Cluster, gpus: Sequence[GpuReading]) -> dict[int, int]:
    return shared_placed_claims(selector, model, cluster, gpus)


def committed_on(model: ModelSpec, cluster: Cluster, gpu: GpuReading, claim: int) -> int:
    """What the engine takes of a GPU it is placed on: taken as what GPUStack books, and a CUDA context."""
    return claim + cluster.vllm_context_overhead


def free_reasons(fit: ModelFit, f: GpuFit) -> list[str]:
    return []  # not modelled: free memory is never read
