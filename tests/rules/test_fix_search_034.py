"""The fix search by vLLM version, vLLM 0.34's extensible KV cache most of all (issue 21).

vLLM 0.34 raises no start-up error on free memory with its extensible KV cache
(vllm/v1/worker/utils.py::request_memory); what fails is the KV check after warm-up, whose hint
(vllm/v1/core/kv_cache_planning.py::_more_kv_cache_memory_hint) names the utilization (unset: 1.0),
--max-model-len and --max-num-seqs; --kv-cache-memory-bytes sizes the cache directly and turns the extensible
cache off (vllm/config/vllm.py::_resolve_extensible_kv_cache). Where vLLM holds more of a GPU than GPUStack
booked beside another instance, the fix keeps it within the claim.

On random nodes, shapes, versions and flags: the planned search (vram_exporter/rules/fixes.py) equals the brute
force (tests/bruteforce_fixes.py), for every model of the node, running ones included; every working fix,
applied, makes the model fit by the full rulebooks, and its value is the least (or the most) that does; every
vLLM fix names the versions it holds for, and those are the versions whose rules are the model's.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import bruteforce_fixes
from fitcases import GIB, MIB, QWEN_1_5B, gpu, node, seed_model
from vram_exporter.rules.backends.vllm import versions
from vram_exporter.rules.fixes import find_fixes, plan_fixes
from vram_exporter.rules.flags import with_param
from vram_exporter.rules.model import Architecture, Cluster, EngineVersion, ModelSpec
from vram_exporter.rules.node import fit_node, static_fit, with_free
from vram_exporter.rules.verdicts import BOOKING_CHECK, BOOKING_TOLERANCE

MHA = Architecture.from_config({
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_size": 4096,
    "intermediate_size": 11008, "vocab_size": 32000, "torch_dtype": "bfloat16", "max_position_embeddings": 32768})
SLIDING = Architecture.from_config({
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
    "intermediate_size": 14336, "vocab_size": 32000, "torch_dtype": "bfloat16", "max_position_embeddings": 32768,
    "sliding_window": 4096})
MLA = Architecture.from_config({
    "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "hidden_size": 2048,
    "kv_lora_rank": 512, "qk_rope_head_dim": 64, "vocab_size": 102400, "torch_dtype": "bfloat16",
    "max_position_embeddings": 163840})
CARDS_MIB = [12288, 24564, 49140, 81559, 81559]
VERSIONS = ["0.17.1", "0.26.0", "0.32.0", "0.33.0", "0.34.0", "0.34.0", "0.34.0"]
H100 = 81559 * MIB


def _versioned(model: ModelSpec, version: str) -> ModelSpec:
    return replace(model, engine_version=EngineVersion(version, "test"))


@st.composite
def nodes(draw):
    """A node, the models on it (the last is the one the test looks at most; one may run already), and the free
    memory the plan and the pick see."""
    n_gpus = draw(st.integers(min_value=1, max_value=2))
    totals = [draw(st.sampled_from(CARDS_MIB)) * MIB for _ in range(n_gpus)]
    params = []
    gmu = draw(st.sampled_from([None, None, "--gpu-memory-utilization=0.6", "--gpu-memory-utilization=0.9",
                                "--gpu_memory_utilization=0.8", "--gpu-memory-utilization=0.95"]))
    if gmu:
        params.append(gmu)
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        params.append(f"--kv-cache-memory-bytes={draw(st.integers(min_value=1, max_value=12))}G")
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        params.append("--tensor-parallel-size=2")
    arch = draw(st.sampled_from([QWEN_1_5B, MHA, MHA, SLIDING, MLA]))
    weights = draw(st.sampled_from([2 * GIB, 2 * GIB, 7 * GIB, 7 * GIB, 14 * GIB, 30 * GIB, 60 * GIB]))
    model = _versioned(replace(seed_model(name="m", arch=arch, weights_bytes=weights,
                                          max_model_len=draw(st.sampled_from([None, 8192, 32768]))),
                               backend_parameters=tuple(params)), draw(st.sampled_from(VERSIONS)))
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        model = replace(model, pinned_gpus=(draw(st.integers(min_value=0, max_value=n_gpus - 1)),))
    neighbour = _versioned(seed_model(f"--gpu-memory-utilization={draw(st.sampled_from([0.05, 0.08, 0.08, 0.3]))}",
                                      name="b", weights_bytes=GIB, max_model_len=4096), "0.33.0")
    where = draw(st.sampled_from(["none", "after", "before", "m-runs"]))
    if where == "none":
        specs = [model]
    elif where == "after":
        specs = [model, neighbour]
    elif where == "before":
        specs = [neighbour, model]
    else:  # m runs on GPU 0 already; b is placed beside it
        specs = [replace(model, placed_on=(0,), pinned_gpus=None), neighbour]
    used = [draw(st.integers(min_value=0, max_value=6000)) * MIB for _ in range(n_gpus)]
    later = [draw(st.integers(min_value=0, max_value=6000)) * MIB for _ in range(n_gpus)]
    return totals, used, later, specs, Cluster(system_reserved_vram=draw(st.sampled_from([0, 0, GIB])))


def _node(totals, used):
    return node(*(gpu(i, t, used=u) for i, (t, u) in enumerate(zip(totals, used))))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes())
def test_planned_fixes_equal_brute_force_by_version(scenario):
    totals, used, later, specs, cluster = scenario
    before, now = _node(totals, used), _node(totals, later)
    plan_node = static_fit(before, cluster, specs)  # the plan was made on other readings
    full = fit_node(now, cluster, specs)
    free = {g.index: g.memory.free for g in now.gpus}
    for i, spec in enumerate(specs):
        expected = bruteforce_fixes.find_fixes(spec, full.models[i], full, now.gpus, specs)
        plan = plan_fixes(spec, plan_node.models[i], plan_node, before.gpus)
        assert plan.pick(with_free(plan_node.models[i], free), free) == expected, spec.name
        assert find_fixes(spec, full.models[i], full, now.gpus) == expected, spec.name
        for fix in expected:  # what the draws reach (pytest --hypothesis-show-statistics)
            fits = full.models[i].fits or spec.placed  # a fix for a model that fits: its booking
            event(f"{'booking' if fits else 'fit'}: {fix.knob} {'works' if fix.works else 'said'}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes())
def test_every_working_fix_makes_it_fit_and_is_the_least_or_most_that_does(scenario):
    totals, _, later, specs, cluster = scenario
    now = _node(totals, later)
    full = fit_node(now, cluster, specs)
    for i, spec in enumerate(specs):
        for fix in find_fixes(spec, full.models[i], full, now.gpus):
            if not fix.works or not fix.change:
                continue  # pinning, more GPUs, freeing memory: the brute force tries those by value
            fixed, fixed_cluster = _applied(spec, cluster, dict(fix.change))
            after = _fit_of(now, fixed_cluster, specs, fixed)
            assert after.fits, (fix.action, after.reasons)
            _assert_edge(fix, spec, fixed, now, fixed_cluster, specs, full.models[i])


def _applied(model: ModelSpec, cluster: Cluster, change: dict) -> tuple[ModelSpec, Cluster]:
    """A fix's change (Fix.change) made to the model or the cluster, as a person would make it."""
    params, env = tuple(model.backend_parameters), dict(model.env)
    if change.get("unset_gpu_memory_utilization"):
        params = tuple(p for p in params if p.lstrip("-").replace("_", "-").partition("=")[0] not in
                       ("gpu-memory-utilization", "kv-cache-memory-bytes", "num-gpu-blocks-override"))
    for knob, flag in (("gpu_memory_utilization", "gpu-memory-utilization"), ("kv_cache_dtype", "kv-cache-dtype"),
                       ("kv_cache_memory_bytes", "kv-cache-memory-bytes")):
        if knob in change:
            params = with_param(params, flag, change[knob])
    if "vram_claim" in change:
        env["GPUSTACK_MODEL_VRAM_CLAIM"] = str(change["vram_claim"])
    model = replace(model, backend_parameters=params, env=env,
                    max_model_len=change.get("max_model_len", model.max_model_len))
    if "system_reserved_vram" in change:
        cluster = replace(cluster, system_reserved_vram=change["system_reserved_vram"])
    return model, cluster


def _fit_of(snapshot, cluster, specs, model):
    fits = fit_node(snapshot, cluster, [model if s.name == model.name else s for s in specs]).models
    return next(f for f in fits if f.name == model.name)


def _assert_edge(fix, spec, fixed, snapshot, cluster, specs, before):
    """The value is the edge: one step past it (a token, a MiB) fails the check it answers."""
    change = dict(fix.change)
    if fix.knob == "max_model_len":
        cap = spec.arch.max_position_embeddings
        if change["max_model_len"] < cap:
            longer = _fit_of(snapshot, cluster, specs, replace(fixed, max_model_len=change["max_model_len"] + 1))
            assert any(f.headroom["vllm_kv_cache"] < 0 for f in longer.per_gpu if f.index in longer.gpus)
    elif fix.knob == "kv_cache_memory_bytes" and (before.fits or before.placed):
        # within GPUStack's claim: a MiB more holds more than the claim where it held more before
        more = _fit_of(snapshot, cluster, specs, replace(fixed, backend_parameters=with_param(
            fixed.backend_parameters, "kv-cache-memory-bytes", change["kv_cache_memory_bytes"] + MIB)))
        over = [f.index for f in before.per_gpu if f.headroom.get(BOOKING_CHECK, 0) < -BOOKING_TOLERANCE]
        assert any(f.take.headroom < 0 for f in more.per_gpu if f.index in over)
        assert all(f.headroom[BOOKING_CHECK] >= -BOOKING_TOLERANCE for f in _fit_of(
            snapshot, cluster, specs, fixed).per_gpu if f.index in over)
    elif fix.knob == "kv_cache_memory_bytes":
        less = _fit_of(snapshot, cluster, specs, replace(fixed, backend_parameters=with_param(
            fixed.backend_parameters, "kv-cache-memory-bytes", change["kv_cache_memory_bytes"] - MIB)))
        assert any(f.headroom["vllm_kv_cache"] < 0 for f in less.per_gpu if f.index in less.gpus)
    elif before.fits or before.placed:  # the booked utilization: within the claim
        after = _fit_of(snapshot, cluster, specs, fixed)
        assert all(f.headroom.get(BOOKING_CHECK, 0) >= -BOOKING_TOLERANCE for f in after.per_gpu)


SAID = re.compile(r" \[vLLM (\d+\.\d+)(?:-(\d+\.\d+)|(\+))?(?:, read for [\w.]+)?\]$")


def _minor(version: str) -> tuple[int, int]:
    return tuple(int(x) for x in version.split(".")[:2])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes())
def test_every_vllm_fix_names_the_versions_it_holds_for(scenario):
    """Each fix ends with the range of versions whose rules are the model's version's: the version assumed is
    in it, and every read version in it has the same rules (versions.py), and none just outside does."""
    totals, _, later, specs, cluster = scenario
    now = _node(totals, later)
    full = fit_node(now, cluster, specs)
    for i, spec in enumerate(specs):
        version = versions.version_of(spec, cluster)
        for fix in find_fixes(spec, full.models[i], full, now.gpus):
            said = SAID.search(fix.action)
            assert said, fix.action
            first, last, open_ended = said.group(1), said.group(2) or said.group(1), said.group(3)
            assert _minor(first) <= _minor(version) and (open_ended or _minor(version) <= _minor(last))
            own = _alike(versions.rules_for(version))
            known = sorted(versions.VLLM_RULES, key=_minor)
            inside = [v for v in known if _minor(first) <= _minor(v) and (open_ended or _minor(v) <= _minor(last))]
            assert inside and all(_alike(versions.VLLM_RULES[v]) == own for v in inside)
            edges = [known[known.index(inside[0]) - 1]] if known.index(inside[0]) else []
            edges += [v for v in known if _minor(v) > _minor(last)][:1] if not open_ended else []
            assert all(_alike(versions.VLLM_RULES[v]) != own for v in edges)  # the range is all of them


def _alike(rules: versions.VllmRules) -> versions.VllmRules:
    return replace(rules, version="")


# --- what the extensible KV cache changes, on one H100 ---------------------------------------------------


def _kv_short(version: str, *flags: str, used: int = 0):
    """MHA at 32768 tokens (16 GiB of KV) with 50 GiB of weights: the KV check fails at 0.8."""
    model = _versioned(replace(seed_model(*flags, name="m", arch=MHA, weights_bytes=50 * GIB, max_model_len=32768)),
                       version)
    snap = node(gpu(0, H100, used=used))
    full = fit_node(snap, Cluster(), [model])
    return model, full, snap, {f.knob: f for f in find_fixes(model, full.models[0], full, snap.gpus)}


def test_034_removing_the_utilization_lets_the_extensible_cache_take_what_is_free():
    model, full, snap, fixes = _kv_short("0.34.0", "--gpu-memory-utilization=0.8")
    assert full.models[0].schedulable and not full.models[0].startable
    unset = fixes["unset_gpu_memory_utilization"]
    assert unset.works and unset.action.startswith("remove --gpu-memory-utilization:")
    assert unset.action.endswith("[vLLM 0.34+]")
    without = replace(model, backend_parameters=())
    assert fit_node(snap, Cluster(), [without]).models[0].fits
    # vLLM 0.33 has no extensible cache: unset is 0.92 there, and no such fix is offered
    _, _, _, fixes_033 = _kv_short("0.33.0", "--gpu-memory-utilization=0.8")
    assert "unset_gpu_memory_utilization" not in fixes_033 and "kv_cache_memory_bytes" not in fixes_033


def test_034_kv_cache_memory_bytes_is_the_least_the_check_passes():
    model, full, snap, fixes = _kv_short("0.34.0", "--gpu-memory-utilization=0.8")
    fix = fixes["kv_cache_memory_bytes"]
    n = dict(fix.change)["kv_cache_memory_bytes"]
    assert fix.works and n == -(-full.models[0].kv_required // MIB) * MIB
    assert f"--kv-cache-memory-bytes={n // MIB}M" in fix.action
    for value, fits in ((n, True), (n - MIB, False)):
        sized = replace(model, backend_parameters=with_param(model.backend_parameters, "kv-cache-memory-bytes", value))
        assert fit_node(snap, Cluster(), [sized]).models[0].fits is fits


def test_034_kv_cache_memory_bytes_is_not_offered_where_it_would_not_fit_beside_the_weights():
    """64 GiB of weights on an H100 (GPUStack books 0.99): the least KV cache that passes does not fit beside
    them and O, though the rules' own KV check (which vLLM does not bound by memory) would pass."""
    model = _versioned(seed_model("--gpu-memory-utilization=0.99", name="m", arch=MHA, weights_bytes=64 * GIB,
                                  max_model_len=32768), "0.34.0")
    snap = node(gpu(0, H100))
    full = fit_node(snap, Cluster(), [model])
    fix = next(f for f in find_fixes(model, full.models[0], full, snap.gpus) if f.knob == "kv_cache_memory_bytes")
    assert not fix.works and "does not make it fit" in fix.action
    n = -(-full.models[0].kv_required // MIB)
    sized = replace(model, backend_parameters=with_param(model.backend_parameters, "kv-cache-memory-bytes", f"{n}M"))
    assert fit_node(snap, Cluster(), [sized]).models[0].startable  # the check alone would pass


def test_034_kv_cache_memory_bytes_needs_free_memory_for_what_it_allocates_not_only_for_r():
    """At 0.8 the start-up check wants R = 0.8 x T free; the KV cache the flag gives (16 GiB beside 50 GiB of
    weights) needs more than R: with 13 GiB held by another process the check passes, the allocation would not."""
    _, _, _, idle = _kv_short("0.34.0", "--gpu-memory-utilization=0.8")
    model, _, snap, busy = _kv_short("0.34.0", "--gpu-memory-utilization=0.8", used=13 * GIB)
    assert idle["kv_cache_memory_bytes"].works and not busy["kv_cache_memory_bytes"].works
    n = dict(idle["kv_cache_memory_bytes"].change)["kv_cache_memory_bytes"]
    sized = replace(model, backend_parameters=with_param(model.backend_parameters, "kv-cache-memory-bytes", n))
    assert fit_node(snap, Cluster(), [sized]).models[0].fits  # the rules' checks pass it; the allocation would not


def test_034_says_nothing_of_free_memory_at_start_up_where_033_does():
    """Another process holds 20 GiB: vLLM 0.33 fails its start-up check at 0.9 (free memory fix), vLLM 0.34's
    extensible cache raises no such error (vllm/v1/worker/utils.py::request_memory)."""
    for version, said in (("0.33.0", True), ("0.34.0", False)):
        model = _versioned(seed_model("--gpu-memory-utilization=0.9", name="m", weights_bytes=7 * GIB), version)
        snap = node(gpu(0, H100, used=20 * GIB))
        full = fit_node(snap, Cluster(), [model])
        fixes = find_fixes(model, full.models[0], full, snap.gpus)
        assert ("other_processes" in {f.knob for f in fixes}) is said
        assert full.models[0].fits is not said


def test_034_names_max_num_seqs_but_offers_no_value():
    _, _, _, fixes = _kv_short("0.34.0", "--gpu-memory-utilization=0.8")
    assert not fixes["max_num_seqs"].works and "--max-num-seqs" in fixes["max_num_seqs"].action
    _, _, _, sized = _kv_short("0.34.0", "--gpu-memory-utilization=0.8", "--kv-cache-memory-bytes=4G")
    assert "max_num_seqs" not in sized  # the extensible cache is off: vLLM's hint does not name it


# --- vLLM holding more than GPUStack booked, beside another instance -------------------------------------


def _beside(version: str, running: bool, *flags: str):
    """a (GPUStack books 0.9) and b, placed in the rest of an H100 after it; ``running``: a runs, and holds what
    it takes (and its CUDA context) of the GPU's memory."""
    a = _versioned(seed_model("--tensor-parallel-size=1", *flags, name="a"), version)
    b = _versioned(seed_model("--gpu-memory-utilization=0.08", name="b", max_model_len=4096), "0.33.0")
    snap = node(gpu(0, H100))
    if running:
        a = replace(a, placed_on=(0,))
        held = fit_node(snap, Cluster(), [a]).models[0].per_gpu[0].take.takes + Cluster().vllm_context_overhead
        snap = node(gpu(0, H100, used=held))
    return a, b, snap, fit_node(snap, Cluster(), [a, b])


@pytest.mark.parametrize("running", [False, True])
@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_the_booking_fixes_keep_vllm_within_its_claim_and_its_neighbour_starts(version, running):
    a, b, snap, full = _beside(version, running)
    assert full.models[0].per_gpu[0].headroom[BOOKING_CHECK] < -BOOKING_TOLERANCE and not full.models[1].fits
    fixes = find_fixes(a, full.models[0], full, snap.gpus)
    assert [f.knob for f in fixes] == ["gpu_memory_utilization", "kv_cache_memory_bytes"]
    assert all(f.works for f in fixes)
    assert fixes[0].action.startswith("set --gpu-memory-utilization=0.9 (what GPUStack books")
    # vLLM reads 0.92 (0.33) or 1.0 (0.34) unset; with the KV cache sized, 0.92: the booked value goes too, so that
    # its start-up check asks no more free memory than GPUStack books
    assert "and --gpu-memory-utilization=0.9 " in fixes[1].action
    for fix in fixes:
        fixed, _ = _applied(a, Cluster(), dict(fix.change))
        if running:  # restarted with the fix: it holds what it takes now
            fixed_alone = fit_node(node(gpu(0, H100)), Cluster(), [fixed]).models[0]
            snap = node(gpu(0, H100, used=fixed_alone.per_gpu[0].take.takes + Cluster().vllm_context_overhead))
        a_fit, b_fit = fit_node(snap, Cluster(), [fixed, b]).models
        assert a_fit.fits and b_fit.fits, fix.action
        assert a_fit.per_gpu[0].headroom[BOOKING_CHECK] >= -BOOKING_TOLERANCE


def test_a_running_instance_within_its_booking_has_no_fixes():
    a, _, snap, full = _beside("0.34.0", True, "--gpu-memory-utilization=0.9")
    assert full.models[0].per_gpu[0].headroom[BOOKING_CHECK] >= -BOOKING_TOLERANCE
    assert find_fixes(a, full.models[0], full, snap.gpus) == []


def test_the_booked_kv_cache_too_small_for_the_context_is_said_not_offered():
    """MHA at 32768 tokens needs 16 GiB of KV: beside 54 GiB of weights, GPUStack's claim of 0.9 leaves less, and
    the extensible KV cache takes what b was booked."""
    a = _versioned(seed_model(name="a", arch=MHA, weights_bytes=54 * GIB, max_model_len=32768), "0.34.0")
    a = replace(a, backend_parameters=())
    b = _versioned(seed_model("--gpu-memory-utilization=0.08", name="b", max_model_len=4096), "0.33.0")
    snap = node(gpu(0, H100))
    full = fit_node(snap, Cluster(), [a, b])
    assert full.models[0].fits and full.models[0].per_gpu[0].headroom[BOOKING_CHECK] < -BOOKING_TOLERANCE
    fixes = find_fixes(a, full.models[0], full, snap.gpus)
    assert fixes and not any(f.works for f in fixes)
    assert fixes == bruteforce_fixes.find_fixes(a, full.models[0], full, snap.gpus, [a, b])


def test_034_a_lower_utilization_is_not_ruled_out_where_free_memory_bounds_the_kv_cache():
    """With the flag unset vLLM 0.34 reads 1.0 and the extensible cache is bounded by what is free, not by R:
    at 0.98 (what GPUStack must book to place it) the KV cache is the same. The candidates' closed form took KV
    to follow R down (found in review): it must only bound it."""
    for mib in range(57 * 1024, 62 * 1024, 128):
        m = _versioned(replace(seed_model(name="m", arch=MHA, weights_bytes=mib * MIB, max_model_len=32768),
                               backend_parameters=()), "0.34.0")
        snap = node(gpu(0, H100))
        full = fit_node(snap, Cluster(), [m])
        fit = full.models[0]
        if not fit.schedulable and 0 <= fit.per_gpu[0].headroom["vllm_kv_cache"] < H100 // 100:
            break
    else:
        pytest.fail("no such shape")
    fixes = find_fixes(m, fit, full, snap.gpus)
    assert fixes[0].works and fixes[0].action.startswith("set --gpu-memory-utilization=0.9")
    assert fixes == bruteforce_fixes.find_fixes(m, fit, full, snap.gpus, [m])
