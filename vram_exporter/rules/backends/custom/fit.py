"""A custom backend's fit of one model on one node: GPUStack's custom selector (selector.py) only, through
the fit every non-vLLM backend shares (rules/backends/shared_fit.py).

Check (``vram_model_headroom_bytes{check}``, negative fails): ``gpustack_custom_claim`` =
A - max(E, int(T x fraction)). The engine is not modelled: it is "startable" wherever GPUStack places
it, and the reasons say so.
"""

from __future__ import annotations

from collections.abc import Sequence

from ....snapshot import GpuReading
from ... import gpustack
from ...model import Cluster, ModelSpec
from ...verdicts import GpuFit, ModelFit
from ..shared_fit import SharedFit
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


FIT = SharedFit(selector, _no_engine, _gpu_fit, _say)
