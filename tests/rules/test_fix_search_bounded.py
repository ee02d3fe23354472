"""The reservation fix search is bounded by the GPUs' size, never by the reservation (issue 24, item 1).

A GPUStack worker reporting its reservation in bytes where GiB go (2^30 GiB) used to cost 2^30 probes on
the one planner thread. Every reservation at or above the largest GPU's size leaves every allocatable at
0, so one try stands for them all; the answers stay the brute force's (tests/bruteforce_fixes.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bruteforce_fixes
from fitcases import GIB, MIB, gpu, node, seed_cluster, seed_model
from vram_exporter.rules import gpustack
from vram_exporter.rules.backends.vllm import fit as vllm_fit
from vram_exporter.rules.fixes import plan_fixes
from vram_exporter.rules.node import fit_node, static_fit, with_free

ROOT = Path(__file__).resolve().parents[2]


def test_reservations_fold_everything_above_the_largest_gpu():
    totals = [6 * GIB, 24 * GIB]
    tried = list(gpustack.reservations_below(2**30 * GIB, totals))
    assert tried[0] == 2**30 * GIB - GIB  # the smallest change first, as before
    assert tried[1:] == list(range(23 * GIB, -1, -GIB))  # then every whole GiB under the largest GPU
    assert list(gpustack.reservations_below(3 * GIB, totals)) == [2 * GIB, GIB, 0]
    assert list(gpustack.reservations_below(0, totals)) == []


def test_an_absurd_reservation_costs_a_bounded_number_of_probes(monkeypatch):
    calls = []
    real_probe = vllm_fit.probe
    monkeypatch.setattr(vllm_fit, "probe", lambda *a: calls.append(1) or real_probe(*a))
    snap = node(gpu(0), gpu(1))
    cluster = seed_cluster(system_reserved_vram=10_000 * GIB)
    plan_node = static_fit(snap, cluster, [seed_model()])
    plan = plan_fixes(seed_model(), plan_node.models[0], plan_node, snap.gpus)
    assert len(calls) < 2_000  # the old search probed 10,000 reservations, each over the whole g grid
    assert plan.knobs["reservation"].options[0].fix.action.endswith("from 10000 to 0 GiB [vLLM 0.32-0.33]")  # as the brute force says


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reserved_gib=st.integers(min_value=0, max_value=14), cards=st.lists(st.sampled_from([6138, 12288]),
       min_size=1, max_size=2), pinned=st.booleans(), used=st.integers(min_value=0, max_value=3000))
def test_reservations_past_the_gpus_answer_as_the_brute_force(reserved_gib, cards, pinned, used):
    snap = node(*(gpu(i, c * MIB, used=used * MIB) for i, c in enumerate(cards)))
    model = seed_model(pinned_gpus=(0,)) if pinned else seed_model()
    cluster = seed_cluster(system_reserved_vram=reserved_gib * GIB)
    full = fit_node(snap, cluster, [model])
    expected = bruteforce_fixes.find_fixes(model, full.models[0], full, snap.gpus)
    plan_node = static_fit(snap, cluster, [model])
    free = {g.index: g.memory.free for g in snap.gpus}
    plan = plan_fixes(model, plan_node.models[0], plan_node, snap.gpus)
    assert plan.pick(with_free(plan_node.models[0], free), free) == expected


def test_check_answers_at_50_and_1000_tib_reserved(tmp_path):
    manifest = (ROOT / "examples/seed/manifest.yaml").read_text()
    for tib in (50, 1000):
        path = tmp_path / f"manifest-{tib}.yaml"
        path.write_text(manifest.replace("system_reserved_vram: 1GiB", f"system_reserved_vram: {tib}TiB"))
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "vram_exporter.cli", "check", "--manifest", str(path),
                               "--nvml.fixture", str(ROOT / "examples/seed/fixture.yaml")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert f"{tib * 1024} GiB" in done.stdout, done.stdout
        assert time.monotonic() - started < 20  # liveness only: it used to take 3.9 s at 50 TiB, > 30 s at 1000
