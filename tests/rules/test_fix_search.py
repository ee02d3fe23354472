"""The fix search planned from the rulebooks' algebra equals the brute-force search over the whole grid.

The reference (tests/bruteforce_fixes.py) re-runs the full rulebooks, free memory included, at every
value of every knob. The planned search (vram_exporter/rules/fixes.py) lists candidates from the
closed-form windows on the static fit, confirms each with one probe, and picks per free memory.
On random nodes and models, with the plan made on one set of readings and picked on another, both
must give the same fixes, word for word.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bruteforce_fixes
from fitcases import GIB, MIB, QWEN_1_5B, SEED_WEIGHTS, gpu, node, seed_cluster, seed_model
from vram_exporter.rules.fixes import find_fixes, plan_fixes
from vram_exporter.rules.model import Architecture, Cluster, EngineVersion
from vram_exporter.rules.node import Context, evaluate, fit_node, probe, static_fit, with_free

MLA = Architecture.from_config({
    "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "hidden_size": 2048,
    "kv_lora_rank": 512, "qk_rope_head_dim": 64, "vocab_size": 102400, "torch_dtype": "bfloat16",
    "max_position_embeddings": 163840})
CARDS_MIB = [6138, 12288, 16384, 24564, 81559]

gmu_flag = st.one_of(
    st.none(),
    st.builds(lambda g: f"--gpu-memory-utilization={g}", st.sampled_from([0.3, 0.5, 0.8, 0.85, 0.9, 0.95])),
    st.builds(lambda g: f"--gpu_memory_utilization={g}", st.sampled_from([0.5, 0.9, 0.95])),
)


@st.composite
def scenarios(draw):
    n_gpus = draw(st.integers(min_value=1, max_value=4))
    card = draw(st.sampled_from(CARDS_MIB)) * MIB
    mixed = draw(st.booleans())
    totals = [draw(st.sampled_from(CARDS_MIB)) * MIB if mixed else card for _ in range(n_gpus)]
    used = [draw(st.integers(min_value=0, max_value=4000)) * MIB for _ in range(n_gpus)]
    params = [p for p in (draw(gmu_flag),) if p]
    tp = draw(st.sampled_from([None, None, 2, 4]))
    if tp:
        params.append(f"--tensor-parallel-size={tp}")
    if draw(st.booleans()):
        params.append("--kv-cache-dtype=fp8")
    weights = draw(st.sampled_from([SEED_WEIGHTS, 1 * GIB, 7 * GIB, 15 * GIB, 40 * GIB]))
    changes = {"weights_bytes": weights, "arch": draw(st.sampled_from([QWEN_1_5B, MLA])),
               "max_model_len": draw(st.sampled_from([None, 4096, 32768])),
               "replicas": draw(st.sampled_from([1, 1, 2]))}
    version = draw(st.sampled_from([None, None, "0.17.1", "0.26.0", "0.32.0", "0.34.0", "0.34.0"]))
    if version:  # else the cluster's default, 0.33
        changes["engine_version"] = EngineVersion(version, "test")
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        changes["pinned_gpus"] = (draw(st.integers(min_value=0, max_value=n_gpus - 1)),)
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        changes["env"] = {"GPUSTACK_MODEL_VRAM_CLAIM": str(draw(st.integers(min_value=1, max_value=20)) * GIB)}
    model = seed_model(*params, **changes) if params else replace(seed_model(**changes), backend_parameters=())
    cluster = Cluster(scheduler=draw(st.sampled_from(["gpustack", "gpustack-0.6"])),
                      system_reserved_vram=draw(st.integers(min_value=0, max_value=3)) * GIB)
    neighbour = None
    if draw(st.booleans()):  # a model placed before it: claims and committed memory on the way
        neighbour = seed_model("--gpu-memory-utilization=0.45", name="before", weights_bytes=GIB)
    later_used = [draw(st.integers(min_value=0, max_value=4000)) * MIB for _ in range(n_gpus)]
    return totals, used, later_used, model, cluster, neighbour


def _node(totals, used):
    return node(*(gpu(i, t, used=u) for i, (t, u) in enumerate(zip(totals, used))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_planned_fixes_equal_brute_force(scenario):
    totals, used, later_used, model, cluster, neighbour = scenario
    models = [m for m in (neighbour, model) if m]
    before, now = _node(totals, used), _node(totals, later_used)
    plan_node = static_fit(before, cluster, models)  # the plan was made on other readings
    full = fit_node(now, cluster, models)
    expected = bruteforce_fixes.find_fixes(model, full.models[-1], full, now.gpus, models)
    fix_plan = plan_fixes(model, plan_node.models[-1], plan_node, before.gpus)
    free = {g.index: g.memory.free for g in now.gpus}
    assert fix_plan.pick(with_free(plan_node.models[-1], free), free) == expected
    assert fix_plan.working(plan_node.models[-1], free) == [f for f in expected if f.works]  # the metrics' path
    assert find_fixes(model, full.models[-1], full, now.gpus) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_probe_is_evaluate_reduced_to_its_verdict(scenario):
    totals, used, _, model, cluster, _ = scenario
    snap = _node(totals, used)
    context = Context({g.index: 0 for g in snap.gpus}, {g.index: 0 for g in snap.gpus})
    fit = evaluate(model, cluster, list(snap.gpus), context)
    verdict = probe(model, cluster, list(snap.gpus), context)
    assert verdict.fits == (fit.schedulable and fit.startable and not fit.error)
    if verdict.fits:
        by_gpu = {f.index: f for f in fit.per_gpu}
        # vLLM 0.34's extensible KV cache needs no free memory at start-up (free_need None): no need is named
        assert dict(verdict.needs) == {i: by_gpu[i].free_need for i in fit.gpus if by_gpu[i].free_need is not None}


def test_seed_fix_matrix_from_the_plan():
    """docs/design.md#the-seed-scenario-worked: reserved 0 and g >= 0.91 schedules the seed model; the claim and the pin
    work; no g alone does. The plan is made once and picked on two free memories."""
    snap = node(gpu())
    plan_node = static_fit(snap, seed_cluster(), [seed_model()])
    fix_plan = plan_fixes(seed_model(), plan_node.models[0], plan_node, snap.gpus)
    idle = {0: snap.gpus[0].memory.free}
    fixes = {f.knob: f for f in fix_plan.pick(with_free(plan_node.models[0], idle), idle)}
    assert not fixes["gpu_memory_utilization"].works
    assert fixes["system_reserved_vram+gpu_memory_utilization"].action.endswith(
        "--gpu-memory-utilization=0.91 [vLLM 0.32-0.33]")  # the cluster's default version, 0.33
    assert fixes["gpu_selector"].works
    # A desktop holding 1 GiB: vLLM's start-up check now fails wherever g >= 0.91, so the combined
    # fix is gone and the pin no longer works, as the full search says too.
    busy_snap = node(gpu(used=GIB))
    busy = {0: busy_snap.gpus[0].memory.free}
    picked = fix_plan.pick(with_free(plan_node.models[0], busy), busy)
    assert "system_reserved_vram+gpu_memory_utilization" not in {f.knob for f in picked}
    assert not any(f.works for f in picked if f.knob == "gpu_selector")
    full = fit_node(busy_snap, seed_cluster(), [seed_model()])
    assert picked == bruteforce_fixes.find_fixes(seed_model(), full.models[0], full, busy_snap.gpus)


def test_a_value_at_the_exact_edge_of_vllms_kv_check_is_found():
    """vLLM's budget is ceil(T_cuda x g): a grid value whose budget is exactly weights + overhead + the
    minimum KV passes, while the window's rounded-up lower end (gmu_min) says one step more. The fix
    search must use the exact check, as the brute force does (found in review)."""
    import math

    total, g = 6138 * MIB, 0.85
    required = (math.ceil(4096 / 16) + 1) * 16 * 28672
    weights = math.ceil(total * g) - required - GIB
    model = seed_model("--gpu-memory-utilization=0.9", weights_bytes=weights, max_model_len=4096,
                       runtime_overhead=GIB, env={"GPUSTACK_MODEL_VRAM_CLAIM": str(GIB)})
    snap = node(gpu(0, total, used=400 * MIB))
    full = fit_node(snap, Cluster(), [model])
    assert full.models[0].per_gpu[0].gmu_min > g  # the window alone would rule 0.85 out
    expected = bruteforce_fixes.find_fixes(model, full.models[0], full, snap.gpus)
    assert "set --gpu-memory-utilization=0.85 (dashes, so GPUStack and vLLM both read it) [vLLM 0.32-0.33]" in \
        [f.action for f in expected]
    assert find_fixes(model, full.models[0], full, snap.gpus) == expected
