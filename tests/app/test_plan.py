"""The planner: one plan per value of the node's inputs; its version changes exactly when they do."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fitcases import GIB, MIB, gpu, node, seed_cluster, seed_model
from vram_exporter.rules.node import fit_node, with_free
from vram_exporter.app.plan import LastOne, NodeInputs, Planner
from vram_exporter.present.report import plan_report
from vram_exporter.sources.manifest import LoadedManifest
from vram_exporter.sources.vllm_instance import VersionAnswer


def _plan(planner: Planner, inputs: NodeInputs, snap):
    plan = planner.submit(inputs, snap).result(timeout=30)
    plan.fixes_known.result(timeout=30)
    return plan


def test_the_version_changes_exactly_when_the_inputs_do():
    planner = Planner()
    snap = node(gpu(0), gpu(1, 12288 * MIB))
    models = (seed_model(), seed_model("--gpu-memory-utilization=0.5", name="small"))
    first = _plan(planner, NodeInputs.of(seed_cluster(), models, {}, snap), snap)
    # Equal values, new objects (a manifest reloaded unchanged): the same plan.
    again = NodeInputs.of(seed_cluster(), tuple(replace(m) for m in models), {}, snap)
    assert _plan(planner, again, snap) is first
    # Free memory is not an input: other readings keep the plan.
    busy = node(gpu(0, used=2 * GIB), gpu(1, 12288 * MIB, used=GIB))
    assert _plan(planner, NodeInputs.of(seed_cluster(), models, {}, busy), busy) is first
    # Each input that matters makes a new version.
    changed = [
        NodeInputs.of(seed_cluster(system_reserved_vram=0), models, {}, snap),
        NodeInputs.of(seed_cluster(), models[:1], {}, snap),
        NodeInputs.of(seed_cluster(), models, {0: GIB}, snap),
        NodeInputs.of(seed_cluster(), models, {}, node(gpu(0), gpu(1, 16384 * MIB))),
        NodeInputs.of(seed_cluster(), models, {}, node(gpu(0))),
    ]
    versions = [first.version]
    for inputs in changed:
        versions.append(_plan(planner, inputs, _snap_of(inputs)).version)
    assert versions == sorted(set(versions)), versions
    planner.close()


def _snap_of(inputs: NodeInputs):
    return node(*(gpu(g.index, g.total) for g in inputs.gpus))


def test_concurrent_asks_for_new_inputs_share_one_build():
    planner = Planner()
    snap = node(gpu(0))
    inputs = NodeInputs.of(seed_cluster(), (seed_model(),), {}, snap)
    futures = [planner.submit(inputs, snap) for _ in range(5)]
    plans = {id(f.result(timeout=30)) for f in futures}
    assert len(plans) == 1
    planner.close()


def test_a_plan_with_free_memory_applied_is_the_full_fit():
    """What /api/v1/fit and `check` show (plan + free memory of now) equals both rulebooks run afresh."""
    planner = Planner()
    made_on = node(gpu(0), gpu(1, 24 * GIB))
    now = node(gpu(0, used=GIB), gpu(1, 24 * GIB, used=20 * GIB))
    models = (seed_model(), seed_model("--gpu-memory-utilization=0.3", name="b", max_model_len=8192))
    plan = _plan(planner, NodeInputs.of(seed_cluster(), models, {}, made_on), made_on)
    report = plan_report(plan, now)
    fresh = fit_node(now, seed_cluster(), models)
    for doc, fit in zip(report["models"], fresh.models):
        assert (doc["schedulable"], doc["startable"], doc["reasons"][:len(fit.reasons)]) == \
               (fit.schedulable, fit.startable, list(fit.reasons))
        assert {i: c["vllm_free_memory"]["headroom_bytes"] for i, c in doc["checks"].items()} == \
               {str(f.index): f.headroom["vllm_free_memory"] for f in fit.per_gpu}
    assert report["fixes_known"]
    planner.close()


def test_new_inputs_stop_the_old_plans_fix_search(monkeypatch):
    """A reload while a plan's fixes are being searched: the old search stops within one model (its
    fixes never come), and the new plan is made and gets its fixes."""
    import time

    import vram_exporter.app.plan as plan_module

    searched = []
    real = plan_module.plan_fixes

    def slow(spec, fit, node, gpus):
        searched.append(spec.name)
        time.sleep(0.02)
        return real(spec, fit, node, gpus)

    monkeypatch.setattr(plan_module, "plan_fixes", slow)
    planner = Planner()
    snap = node(gpu(0))
    models = tuple(seed_model(name=f"m{i}") for i in range(40))
    old = planner.submit(NodeInputs.of(seed_cluster(), models, {}, snap), snap).result(30)
    new = planner.submit(NodeInputs.of(seed_cluster(system_reserved_vram=0), models, {}, snap), snap).result(30)
    assert old.fixes_known.result(30) is None and old.fixes is None
    assert new.fixes_known.result(30) is not None and set(new.fixes) == {m.name for m in models}
    assert len(searched) < 2 * len(models)  # the old search did not run to its end
    planner.close()


def test_the_report_is_kept_while_nothing_it_is_made_of_changes():
    """/ and /api/v1/fit refreshed on unchanged readings reuse the last document; moved readings or
    new fixes make a new one."""
    import asyncio

    from conftest import ROOT
    from vram_exporter.sources.manifest import load_manifest
    from vram_exporter.app.exporter import Exporter
    from vram_exporter.sources.fake_nvml import FakeNvml
    from vram_exporter.sources.fixture import load as load_fixture
    from vram_exporter.sources.nvml import NvmlReader

    fake = FakeNvml(load_fixture(ROOT / "examples/seed/fixture.yaml"))
    exporter = Exporter(NvmlReader(fake, proc_root=None), manifest=load_manifest(ROOT / "examples/seed/manifest.yaml"))

    async def reports():
        first = await exporter.report(await exporter.snapshot())
        again = await exporter.report(await exporter.snapshot())
        return first, again

    first, again = asyncio.run(reports())
    assert again is first and first["fixes_known"]
    busy = load_fixture(ROOT / "examples/seed/fixture.yaml").model_copy(deep=True)
    gpu0 = busy.gpus[0].model_copy(update={"memory": busy.gpus[0].memory.model_copy(
        update={"used": busy.gpus[0].memory.used + GIB, "free": busy.gpus[0].memory.free - GIB})})
    fake.replace_fixture(busy.model_copy(update={"gpus": [gpu0, *busy.gpus[1:]]}))
    later = asyncio.run(exporter.report(asyncio.run(exporter.snapshot())))
    assert later is not first
    assert later["models"][0]["checks"]["0"]["vllm_free_memory"]["headroom_bytes"] == \
        first["models"][0]["checks"]["0"]["vllm_free_memory"]["headroom_bytes"] - GIB
    exporter.close()


def test_what_is_remembered_is_keyed_by_value():
    """The last body and report (``LastOne``) and each plan's live part come back for an equal key,
    whatever object it was built from, and are made again for another."""
    last: LastOne[str] = LastOne()
    made = []
    make = lambda text: lambda: made.append(text) or text  # noqa: E731
    assert last.of(("plan", 1, (0, 5)), make("first")) == "first"
    assert last.of(("plan", 1, tuple([0, 5])), make("again")) == "first"  # an equal key, another object
    assert last.of(("plan", 2, (0, 5)), make("second")) == "second"
    assert made == ["first", "second"]

    planner = Planner()
    snap = node(gpu(0), gpu(1, 12288 * MIB))
    plan = _plan(planner, NodeInputs.of(seed_cluster(), (seed_model(),), {}, snap), snap)
    assert plan.live({0: GIB, 1: 2 * GIB}) is plan.live(dict([(1, 2 * GIB), (0, GIB)]))
    assert plan.live({0: GIB, 1: 3 * GIB}) is not plan.live({0: GIB, 1: 2 * GIB})
    planner.close()


def test_inputs_are_built_again_only_when_what_they_are_made_of_changes():
    """A running model whose engine answered /version: equal answers (read again at each poll, new objects)
    give the same inputs and the same plan; another answer, or other GPUs, new inputs that say it."""
    planner = Planner()
    snap = node(gpu(0), gpu(1, 12288 * MIB))
    url = "http://127.0.0.1:8000/metrics"
    model = replace(seed_model(), placed_on=(0,), metrics_url=url)
    manifest = LoadedManifest(Path("manifest.yaml"), seed_cluster(), (model,))
    answer = lambda version: {model.name: VersionAnswer(url, url.replace("metrics", "version"), version=version)}  # noqa: E731

    first = planner.inputs(manifest, snap, answer("0.34.0"))
    assert first.models[0].engine_version.version == "0.34.0"
    assert planner.inputs(manifest, snap, answer("0.34.0")) is first
    plan = _plan(planner, first, snap)
    assert _plan(planner, planner.inputs(manifest, snap, answer("0.34.0")), snap) is plan

    other = planner.inputs(manifest, snap, answer("0.17.1"))
    assert other.models[0].engine_version.version == "0.17.1"
    assert _plan(planner, other, snap).version > plan.version
    bigger = node(gpu(0), gpu(1, 24576 * MIB))
    assert planner.inputs(manifest, bigger, answer("0.17.1")).gpus != other.gpus
    assert planner.inputs(manifest, bigger, None).models[0].engine_version == model.engine_version
    planner.close()


@functools.cache
def _plan_with_fixes():
    """Models that fail in each way (GPUStack does not place them; placed, vLLM does not start; SGLang)
    on three GPUs, with their fixes."""
    snap = node(gpu(0), gpu(1, 12 * GIB), gpu(2, 24 * GIB))
    models = (seed_model(), seed_model("--gpu-memory-utilization=0.5", name="half"),
              seed_model("--gpu-memory-utilization=0.95", name="big", max_model_len=131072),
              seed_model("--gpu-memory-utilization=0.3", name="small", max_model_len=8192),
              seed_model("--gpu-memory-utilization=0.45", name="running", placed_on=(1,)),
              seed_model("--mem-fraction-static=0.8", name="sg", backend="sglang"))
    planner = Planner()
    plan = planner.build_now(NodeInputs.of(seed_cluster(), models, {}, snap), snap)
    planner.close()
    return plan, {g.index: g.memory.total for g in snap.gpus}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_kept_pick_is_the_pick_of_now(data):
    """The plan keeps each model's picked fixes while its key (``PickKeys``: per GPU, which side of each
    need free memory is on) holds: on any readings, at a need, a byte either side of it, or anywhere,
    one after another, the fixes shown are those the full fit picks afresh."""
    plan, totals = _plan_with_fixes()
    near_a_need = st.sampled_from(sorted({n + d for needs in plan.pick_keys.needs.values() for n in needs
                                          for d in (-1, 0, 1)}))
    for _ in range(data.draw(st.integers(1, 4))):
        free = {i: data.draw(st.one_of(near_a_need, st.integers(0, total))) for i, total in totals.items()}
        shown = [label for segment in plan.fix_segments(free, plan.live(free)) for label in segment.labels]
        afresh = [(fit.name, fix.knob, fix.action) for fit in plan.node.models
                  for fix in plan.fixes[fit.name].pick(with_free(fit, free), free) if fix.works]
        assert shown == afresh, free
