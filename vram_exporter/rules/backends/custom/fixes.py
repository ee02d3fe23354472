"""The fix search for a custom-backend model: its declared fraction, the worker's reservation and pinning,
each value confirmed by its full rulebook (fit.py) through the shared search (rules/backends/shared_fixes.py).
Its engine is not modelled: no engine flag is searched.
"""

from __future__ import annotations

from collections.abc import Sequence

from ....snapshot import GpuReading
from ...model import ModelSpec
from ...verdicts import Knob, ModelFit, NodeFit
from ..shared_fixes import NO_KNOB, Search
from . import fit as custom_fit


def knobs(model: ModelSpec, fit: ModelFit, node: NodeFit, gpus: Sequence[GpuReading]) -> dict[str, Knob]:
    search = Search(custom_fit.FIT.evaluate, model, fit, node.cluster, [g for g in gpus if g.up])
    return {"reservation": search.reservation(), "utilization": search.fraction("gpu-memory-utilization"),
            "reservation_and_utilization": NO_KNOB, "claim": NO_KNOB, "pin": search.pin(),
            "max_model_len": NO_KNOB, "kv_cache_dtype": NO_KNOB, "gpu_count": NO_KNOB}
