"""One bad model from GPUStack is set aside with the reason; the rest of the cluster view goes on (issue 24, 3).

Anyone who can create a model in GPUStack's UI can give it ``--gpu-memory-utilization=inf``: that used to
raise OverflowError in the replay and fail every refresh, freezing the whole view on its last good state.
"""

from __future__ import annotations

import pytest

from test_gpustack_view import recorded_models, recorded_state
from vram_exporter.rules.cluster import replay
from vram_exporter.sources.gpustack_api import GpuStackState
from vram_exporter.sources.gpustack_view import build_view

BAD = "seed-qwen"


def _with_parameters(state: GpuStackState, name: str, *parameters: str) -> GpuStackState:
    models = tuple(m.model_copy(update={"backend_parameters": list(parameters)}) if m.name == name else m
                   for m in state.models)
    return GpuStackState(state.workers, models, state.instances)


def _others(view) -> dict:
    return {v.name: v for v in view.verdicts if v.name != BAD}


@pytest.mark.parametrize("value", ["inf", "nan", "1e308", "-inf", "1e300"])
@pytest.mark.parametrize("worker", ["nobody", "error-node", "seed-node"])
def test_a_model_with_an_absurd_utilization_is_refused_alone(value, worker):
    good = build_view(recorded_state(), worker_name=worker, source="recorded", read_model=recorded_models)
    state = _with_parameters(recorded_state(), BAD, f"--gpu-memory-utilization={value}")
    view = build_view(state, worker_name=worker, source="recorded", read_model=recorded_models)
    bad = next(v for v in view.verdicts if v.name == BAD)
    assert f"--gpu-memory-utilization={value} is no fraction of a card" in bad.note
    assert bad.gpustack_pending == 1
    assert _others(view) == _others(good)  # every other model judged exactly as before


def test_a_finite_utilization_above_one_is_still_replayed_as_gpustack_does():
    state = _with_parameters(recorded_state(), BAD, "--gpu-memory-utilization=1.5")
    view = build_view(state, worker_name="nobody", source="recorded", read_model=recorded_models)
    bad = next(v for v in view.verdicts if v.name == BAD)
    assert "--gpu-memory-utilization=1.5, all GPUs combined" in bad.note


def test_any_failure_judging_one_model_is_that_models_note(monkeypatch):
    """Whatever the rules trip on for one model (here a fault injected into the replay), the others
    keep their verdicts and the model says why it is not modelled."""
    good = build_view(recorded_state(), worker_name="seed-node", source="recorded", read_model=recorded_models)
    real_decide = replay.decide

    def decide(inst, request, *args, **kwargs):
        if request.spec.name == BAD:
            raise ZeroDivisionError("injected")
        return real_decide(inst, request, *args, **kwargs)

    monkeypatch.setattr(replay, "decide", decide)
    view = build_view(recorded_state(), worker_name="seed-node", source="recorded", read_model=recorded_models)
    bad = next(v for v in view.verdicts if v.name == BAD)
    assert bad.note == "not modelled: judging it failed (ZeroDivisionError: injected)"
    assert bad.predicted_pending is None and bad.size_known is None
    assert _others(view) == _others(good)
    assert BAD not in {m.name for m in view.node_models.models}
