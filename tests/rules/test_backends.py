"""SGLang and custom-backend models (issue 15): the backend carried from the manifest and from GPUStack,
GPUStack's claim rules per backend, SGLang's pool, the fixes, and what check and /metrics say."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import replace

import pytest

from conftest import ROOT, exporter_command
from fitcases import GIB, MIB, QWEN_1_5B, SEED_TOTAL, SEED_WEIGHTS, gpu, node
from vram_exporter.sources.manifest import load_manifest
from vram_exporter.errors import BadInput
from vram_exporter.rules.cluster import replay
from vram_exporter.rules import gpustack
from vram_exporter.rules.backends.sglang import engine as sglang
from vram_exporter.rules.fixes import find_fixes
from vram_exporter.rules.model import Cluster, ModelSpec
from vram_exporter.rules.node import fit_node
from vram_exporter.sources.gpustack_api import GpuStackState, parse_page

H100 = 85_520_809_984  # NVML total; whole MiB: 81559 MiB
ESTIMATE = int(SEED_WEIGHTS * 1.2) + 2 * GIB


def model(backend: str, *params: str, **changes) -> ModelSpec:
    return replace(ModelSpec("m", SEED_WEIGHTS, QWEN_1_5B, backend_parameters=params, max_model_len=32768,
                             backend=backend), **changes)


def fit_one(spec: ModelSpec, *gpus, cluster: Cluster = Cluster()):
    return fit_node(node(*gpus), cluster, [spec]).models[0]


# --- custom backends: max(E, int(T x fraction)), the LAST flag ------------------------------------------


def test_custom_claim_is_the_estimate_without_a_fraction_and_the_larger_with_one():
    bare = fit_one(model("custom"), gpu(total=H100))
    assert bare.fits and bare.gmu_gpustack == 0.0
    assert bare.per_gpu[0].headroom["gpustack_custom_claim"] == H100 // MIB * MIB - ESTIMATE
    small = fit_one(model("custom", "--mem-fraction-static=0.01"), gpu(total=H100))  # T x f < E: E wins
    assert small.per_gpu[0].headroom == bare.per_gpu[0].headroom
    big = fit_one(model("custom", "--gpu-memory-utilization 0.8"), gpu(total=H100))
    assert big.per_gpu[0].headroom["gpustack_custom_claim"] == H100 // MIB * MIB - int(H100 // MIB * MIB * 0.8)
    # A fraction above 1 is the engine's to refuse: GPUStack ignores it and books E.
    assert fit_one(model("custom", "--gpu-memory-utilization=1.5"), gpu(total=H100)).per_gpu[0].headroom == \
        bare.per_gpu[0].headroom


def test_custom_reads_the_last_flag_of_command_then_parameters_and_says_so():
    spec = model("custom", "--gpu-memory-utilization=0.95", run_command="vllm serve /m --gpu-memory-utilization 0.5")
    fit = fit_one(spec, gpu(total=24564 * MIB))
    assert fit.gmu_gpustack == 0.95 and fit.schedulable
    assert fit.per_gpu[0].headroom["gpustack_custom_claim"] == 24564 * MIB - int(24564 * MIB * 0.95)
    assert any("reads the last (0.95)" in r and "read the first (0.5)" in r for r in fit.reasons)
    once = fit_one(model("custom", run_command="vllm serve /m --gpu-memory-utilization 0.5"), gpu(total=24564 * MIB))
    assert once.gmu_gpustack == 0.5 and not any("written" in r for r in once.reasons)
    assert any("custom backend's engine is not modelled" in r for r in once.reasons)


def test_second_custom_instance_sees_the_first_claim():
    first = model("custom", "--gpu-memory-utilization=0.6", replicas=2)
    fit = fit_one(first, gpu(total=H100))
    assert fit.schedulable and fit.replicas_placed == 1  # 0.4 T left < 0.6 T


# --- SGLang under GPUStack: the fraction by card, int(T x f) claims ------------------------------------


def test_sglang_on_the_seed_card_gpustack_assumes_0_393_and_leaves_it_pending():
    fit = fit_one(model("sglang"), gpu(total=SEED_TOTAL))
    assert fit.gmu_gpustack == 0.393 and not fit.schedulable
    text = "\n".join(fit.reasons)
    assert "With --mem-fraction-static=0.393, all GPUs combined need to provide at least 13.87 GiB" in text
    assert "The current available GPU only has 5.99 GiB allocatable VRAM (100.00%)." in text


def test_sglang_fix_is_a_fraction_both_read_and_it_works():
    spec = model("sglang", max_model_len=8192)
    fit = fit_one(spec, gpu(total=SEED_TOTAL))
    fixes = [f for f in find_fixes(spec, fit, fit_node(node(gpu(total=SEED_TOTAL)), Cluster(), [spec]),
                                   node(gpu(total=SEED_TOTAL)).gpus) if f.works]
    fraction_fix = next(f for f in fixes if f.knob == "gpu_memory_utilization")
    value = fraction_fix.action.split("=")[1].split()[0]
    fixed = fit_one(model("sglang", f"--mem-fraction-static={value}", max_model_len=8192), gpu(total=SEED_TOTAL))
    assert fixed.fits, fixed.reasons
    lower = fit_one(model("sglang", f"--mem-fraction-static={float(value) - 0.01:.2f}", max_model_len=8192),
                    gpu(total=SEED_TOTAL))
    assert not lower.fits  # the smallest change: one step closer to GPUStack's default fails
    # The window of --mem-fraction-static says the same: from E / T (GPUStack's test 1) up to A / T.
    g = fit.per_gpu[0]
    assert g.gmu_min == math.ceil(ESTIMATE / (SEED_TOTAL // MIB * MIB) * 10_000) / 10_000 and g.gmu_max == 1.0
    assert float(value) == math.ceil(g.gmu_min * 100) / 100


def test_sglang_pool_is_fraction_of_free_minus_weights_and_caps_the_context():
    cluster = Cluster()
    fit = fit_one(model("sglang", "--mem-fraction-static=0.5"), gpu(total=H100))
    g = fit.per_gpu[0]
    free = H100 - cluster.vllm_context_overhead
    cell = sglang.cell_size(QWEN_1_5B, tp=1, pp=1, kv_bytes=2)
    tokens = sglang.pool_tokens(free_at_start=free, mem_fraction_static=0.5, weights=SEED_WEIGHTS,
                                pre_pool_overhead=0, cell=cell)
    assert cell == 28_672 and g.headroom["sglang_kv_pool"] == tokens * cell
    assert g.headroom["sglang_context"] == (tokens - 32768) * cell > 0 and fit.fits
    # A 6 GiB card with a fraction GPUStack admits: SGLang starts, but caps requests below 32768 tokens.
    tight = fit_one(model("sglang", "--mem-fraction-static=0.95", weights_bytes=int(4.5 * GIB),
                          env={"GPUSTACK_MODEL_VRAM_CLAIM": str(4 * GIB)}), gpu(total=SEED_TOTAL))
    assert tight.schedulable and not tight.startable
    assert tight.per_gpu[0].headroom["sglang_kv_pool"] > 0 > tight.per_gpu[0].headroom["sglang_context"]
    assert any("requests are capped below the context length 32768" in r for r in tight.reasons)
    assert tight.per_gpu[0].max_model_len < 32768


def test_sglang_not_enough_memory_is_its_own_words():
    fit = fit_one(model("sglang", "--mem-fraction-static=0.3"), gpu(total=SEED_TOTAL), cluster=Cluster())
    assert not fit.schedulable  # GPUStack: E > 0.3 x T
    pinned = fit_one(model("sglang", "--mem-fraction-static=0.3", pinned_gpus=(0,)), gpu(total=SEED_TOTAL))
    assert pinned.schedulable and pinned.overcommit and not pinned.startable
    assert any("Not enough memory. Please try to increase --mem-fraction-static." in r for r in pinned.reasons)


def test_sglang_under_gpustack_takes_the_fraction_gpustack_books():
    """GPUStack 2.3.0's worker passes --mem-fraction-static = its claim's fraction unless the user's parameters
    name it (gpustack/worker/backends/sglang.py): SGLang's own default, which reserves 24 GiB with chunked
    prefill off where GPUStack's port reserves nothing, does not decide."""
    fit = fit_one(model("sglang", "--chunked-prefill-size=-1"), gpu(total=H100))
    assert fit.gmu_gpustack == fit.gmu_vllm == 0.874 and not fit.gmu_mismatch


def test_sglang_mismatch_between_gpustacks_fraction_and_sglangs_is_said():
    """GPUStack finds --mem-fraction-static with dashes only: with underscores it books its own default and
    passes it, and SGLang, reading the user's value after it, takes 0.8. Under GPUStack 0.6's scheduler SGLang's
    own default decides (its worker not read)."""
    fit = fit_one(model("sglang", "--mem_fraction_static=0.8"), gpu(total=H100))
    assert fit.gmu_gpustack == 0.835 and fit.gmu_vllm == 0.8 and fit.gmu_mismatch
    assert any("while SGLang 0.5.9 will take 0.8" in r for r in fit.reasons)
    old = fit_one(model("sglang", "--chunked-prefill-size=-1"), gpu(total=H100), cluster=Cluster(scheduler="gpustack-0.6"))
    assert old.gmu_gpustack == 0.874 and old.gmu_vllm == pytest.approx(0.685, abs=1e-9) and old.gmu_mismatch
    assert not fit_one(model("sglang"), gpu(total=H100)).gmu_mismatch


def test_sglang_multi_gpu_by_tp_claims_int_t_f_on_each():
    fit = fit_one(model("sglang", "--tp-size=2"), gpu(0, H100), gpu(1, H100), gpu(2, H100))
    assert fit.schedulable and len(fit.gpus) == 2 and fit.gmu_gpustack == 0.834  # TP 2 reserves 256 MiB more
    booked = fit_node(node(gpu(0, H100), gpu(1, H100), gpu(2, H100)), Cluster(),
                      [model("sglang", "--tp-size=2", name="a"), model("vllm", name="b")])
    assert {b.index for b in booked.gpus if b.predicted} == set(booked.models[0].gpus) | set(booked.models[1].gpus)
    assert all(b.predicted == int(b.total * 0.834) for b in booked.gpus if b.index in booked.models[0].gpus)


# --- the manifest and GPUStack carry the backend -------------------------------------------------------


def test_manifest_backend_and_run_command(tmp_path):
    path = tmp_path / "m.yaml"
    base = ("models:\n  - name: a\n    weights_bytes: 3087467144\n    config: {num_hidden_layers: 28, "
            "num_attention_heads: 12, hidden_size: 1536, max_position_embeddings: 32768}\n")
    path.write_text(base + "    backend: sglang\n")
    assert load_manifest(path).models[0].backend == "sglang"
    path.write_text(base)
    assert load_manifest(path).models[0].backend == "vllm"
    path.write_text(base + "    backend: llama.cpp\n")
    with pytest.raises(BadInput, match=r"m.yaml:5: models\[0\].backend"):
        load_manifest(path)
    path.write_text(base + "    run_command: vllm serve /m\n")
    with pytest.raises(BadInput, match="run_command.*needs backend: custom"):
        load_manifest(path)


def _models_page(backend: str, **extra) -> tuple:
    item = {"id": 1, "name": "m", "cluster_id": 1, "backend": backend, "backend_parameters": [], "replicas": 1,
            "source": "local_path", "local_path": "/models/m", **extra}
    return tuple(parse_page("models", {"items": [item], "pagination": {"totalPage": 1}})[0])


@pytest.mark.parametrize("backend, kind", [("SGLang", "sglang"), ("Custom", "custom"), ("vLLM", "vllm")])
def test_gpustack_models_carry_their_backend(backend, kind):
    from vram_exporter.sources.gpustack_view import _specs
    (m,) = _models_page(backend, run_command="engine --mem-fraction-static 0.5")
    specs, unknown = _specs([m], None, lambda d: ({"num_hidden_layers": 28, "num_attention_heads": 12,
                                                  "hidden_size": 1536, "max_position_embeddings": 32768}, 10**9))
    assert specs["m"].backend == kind and specs["m"].run_command == "engine --mem-fraction-static 0.5"
    (other,) = _models_page("MindIE")
    assert _specs([other], None, lambda d: ({}, 0)) == ({}, {})


def test_cluster_replay_places_sglang_by_the_smallest_card_of_its_workers():
    """GPUStack computes SGLang's fraction from the smallest GPU of every worker the model may use."""
    spec = model("sglang")
    workers = [replay.WorkerGpus(1, "small", {0: 16384 * MIB}), replay.WorkerGpus(2, "big", {0: H100})]
    request = replay.Request(spec, frozenset({1, 2}))
    verdict = replay.decide(replay.Instance(1, "m", False, {}), request, workers, {}, "gpustack")
    assert verdict.placed  # spread: either worker; the fraction is the 16 GiB card's on both
    assert verdict.claims == {(verdict.worker, 0): int(gpustack.total_whole_mib(workers[verdict.worker - 1]
                                                                                  .totals[0]) * 0.772)}
    alone = replay.Request(spec, frozenset({2}))
    verdict = replay.decide(replay.Instance(1, "m", False, {}), alone, workers, {}, "gpustack")
    assert verdict.claims == {(2, 0): int(gpustack.total_whole_mib(H100) * 0.835)}


def test_custom_selection_over_two_workers_is_refused_for_every_instance():
    """custom_backend_resource_fit_selector.py: manual GPU selection across workers gets no candidate."""
    spec = model("custom")
    workers = [replay.WorkerGpus(1, "a", {0: H100}), replay.WorkerGpus(2, "b", {0: H100})]
    across = replay.Request(spec, frozenset({1, 2}), selection={"a": (0,), "b": (0,)}, selected_count=2,
                            gpus_per_replica=1)
    verdict = replay.decide(replay.Instance(1, "m", False, {}), across, workers, {}, "gpustack")
    assert not verdict.placed
    assert verdict.reason.endswith("\n- Manual GPU selection across multiple workers is not supported for custom "
                                   "backends.")
    one = replace(across, selection={"a": (0,)}, selected_count=1)
    placed = replay.decide(replay.Instance(1, "m", False, {}), one, workers, {}, "gpustack")
    assert placed.placed and placed.worker == 1 and placed.utilization == 0  # its manual path writes 0


def test_only_manual_paths_write_vram_utilization():
    """GPUStack leaves vram_utilization empty on automatic vLLM candidates, main and subordinate alike."""
    spec = model("vllm")
    workers = [replay.WorkerGpus(1, "a", {0: H100})]
    auto = replay.decide(replay.Instance(1, "m", False, {}), replay.Request(spec, frozenset({1})), workers, {},
                         "gpustack")
    manual = replay.decide(replay.Instance(1, "m", False, {}), replay.Request(
        spec, frozenset({1}), selection={"a": (0,)}, selected_count=1), workers, {}, "gpustack")
    assert auto.placed and auto.utilization is None
    assert manual.placed and manual.utilization == 0.9


# --- what a user reads ----------------------------------------------------------------------------------


MIXED = """cluster: {system_reserved_vram: 0}
models:
  - {name: qwen-vllm, weights_bytes: 3087467144, config: &qwen {num_hidden_layers: 28, num_attention_heads: 12,
     num_key_value_heads: 2, hidden_size: 1536, vocab_size: 151936, torch_dtype: bfloat16,
     max_position_embeddings: 32768}, backend_parameters: ["--gpu-memory-utilization=0.3"]}
  - {name: qwen-sglang, backend: sglang, weights_bytes: 3087467144, config: *qwen}
  - {name: qwen-custom, backend: custom, weights_bytes: 3087467144, config: *qwen,
     run_command: "vllm serve /m --gpu-memory-utilization 0.2", backend_parameters: ["--gpu-memory-utilization=0.25"]}
"""
FIXTURE = """driver_version: "580.159.04"
gpus:
  - {index: 0, name: "NVIDIA H100 80GB HBM3", uuid: "GPU-0", pci_bus_id: "00000000:01:00.0",
     memory: {total: 85520809984, reserved: 503316480, used: 0, free: 85017493504}, processes: []}
"""


def test_check_names_each_backend_and_its_knob(tmp_path):
    (tmp_path / "m.yaml").write_text(MIXED)
    (tmp_path / "f.yaml").write_text(FIXTURE)
    args = [*exporter_command(), "check", "--manifest", str(tmp_path / "m.yaml"), "--nvml.fixture",
            str(tmp_path / "f.yaml")]
    text = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert text.returncode == 1, text.stderr
    assert "qwen-sglang: PENDING: GPUStack will not place it (SGLang alone would start on GPU 0)" in text.stdout
    assert "SGLang backend, --mem-fraction-static: GPUStack 0.835, SGLang 0.835" in text.stdout
    assert "-> set --mem-fraction-static=0.7 (GPUStack books it and SGLang takes it" in text.stdout
    assert "custom backend, declared fraction (GPUStack's custom selector): 0.25" in text.stdout
    report = json.loads(subprocess.run([*args, "--format", "json"], capture_output=True, text=True,
                                       timeout=60).stdout)
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["qwen-sglang"]["backend"] == "sglang"
    assert set(by_name["qwen-sglang"]["checks"]["0"]) >= {"gpustack_estimate", "gpustack_allocatable",
                                                          "sglang_kv_pool", "sglang_context"}
    assert by_name["qwen-sglang"]["gpu_memory_utilization"] == {"gpustack": 0.835, "sglang": 0.835,
                                                                "mismatch": False}
    assert by_name["qwen-custom"]["gpu_memory_utilization"] == {"gpustack": 0.25, "mismatch": False}
    assert by_name["qwen-custom"]["schedulable"] and by_name["qwen-vllm"]["schedulable"]


def test_sglang_pool_shrinks_with_what_other_processes_hold():
    """SGLang sizes its pool from the free memory at start (model_runner.py init_torch_distributed), so a
    process holding memory shortens the pool instead of failing a start-up check as vLLM's does."""
    spec = model("sglang", "--mem-fraction-static=0.6", weights_bytes=int(4.5 * GIB), max_model_len=32768,
                 env={"GPUSTACK_MODEL_VRAM_CLAIM": str(4 * GIB)})
    empty = fit_node(node(gpu(total=SEED_TOTAL * 2)), Cluster(), [spec]).models[0]
    assert empty.fits
    need = empty.per_gpu[0].free_need
    busy = fit_node(node(gpu(total=SEED_TOTAL * 2, used=SEED_TOTAL * 2 - need + MIB)), Cluster(), [spec]).models[0]
    assert busy.schedulable and not busy.startable  # GPUStack never reads free memory
    assert -MIB <= busy.per_gpu[0].headroom["sglang_free_memory"] < 0
    assert any("SGLang sizes its KV pool from the free memory at start" in r for r in busy.reasons)
    exact = fit_node(node(gpu(total=SEED_TOTAL * 2, used=SEED_TOTAL * 2 - need)), Cluster(), [spec]).models[0]
    assert exact.startable
    # At exactly that free memory SGLang's own arithmetic holds one full request.
    cell = sglang.cell_size(QWEN_1_5B, tp=1, pp=1, kv_bytes=2)
    assert sglang.pool_tokens(free_at_start=need - Cluster().vllm_context_overhead, mem_fraction_static=0.6,
                              weights=int(4.5 * GIB), pre_pool_overhead=0, cell=cell) >= 32768


def test_metrics_and_report_agree_for_every_backend():
    from test_collector import _samples
    from vram_exporter.present.collector import fix_segment
    from vram_exporter.present.exposition import Renderer
    from vram_exporter.rules.node import CHECKS, free_memory
    from vram_exporter.app.plan import NodeInputs, Planner
    from vram_exporter.present.report import plan_report

    made_on = node(gpu(0, H100), gpu(1, SEED_TOTAL))
    now = node(gpu(0, H100, used=40 * GIB), gpu(1, SEED_TOTAL, used=GIB))
    models = (model("sglang", name="s"), model("sglang", "--mem-fraction-static=0.9", name="s2", max_model_len=8192),
              model("custom", "--gpu-memory-utilization=0.2", name="c"), model("vllm", name="v"),
              model("sglang", "--mem-fraction-static=0.5", name="s-running", placed_on=(0,)))
    planner = Planner()
    plan = planner.submit(NodeInputs.of(Cluster(), models, {}, made_on), made_on).result(30)
    plan.fixes_known.result(30)
    free = free_memory(now)
    fixes = [fix_segment(fit.name, plan.fixes[fit.name].working(fit, free)) for fit in plan.node.models]
    samples = _samples(Renderer().render(plan.families.families(plan.node, free, fixes)).decode())
    report = plan_report(plan, now)
    readers = {(dict(labels)["model"], dict(labels)["reader"]) for (metric, labels) in samples
               if metric == "vram_model_gpu_memory_utilization"}
    assert readers == {("s", "gpustack"), ("s", "sglang"), ("s2", "gpustack"), ("s2", "sglang"), ("c", "gpustack"),
                       ("v", "gpustack"), ("v", "vllm"), ("s-running", "gpustack"), ("s-running", "sglang")}
    for m in report["models"]:
        name = m["name"]
        assert samples[("vram_model_startable", (("model", name),))] == (1 if m["startable"] else 0), name
        for index, checks in m["checks"].items():
            where = (("gpu", index), ("model", name), ("uuid", f"GPU-{index}"))
            for check in CHECKS:
                key = ("vram_model_headroom_bytes", tuple(sorted((*where, ("check", check)))))
                if check in checks:
                    assert samples[key] == checks[check]["headroom_bytes"], (name, index, check)
                else:
                    assert key not in samples, (name, check)
        exported = {dict(labels)["action"] for (metric, labels) in samples
                    if metric == "vram_model_fix_info" and dict(labels)["model"] == name}
        assert exported == {f["action"] for f in m["fixes"] if f["works"]}, name
    by_name = {m["name"]: m for m in report["models"]}
    assert "sglang_free_memory" in by_name["s2"]["checks"]["0"] and "sglang_free_memory" not in \
        by_name["s-running"]["checks"]["0"]
    # GPUStack sizes SGLang's fraction by the smallest card of the GPU type: the 6 GiB one, for both.
    assert by_name["s"]["gpu_memory_utilization"]["gpustack"] == 0.393
    assert by_name["s"]["gpus"] == [0] and not by_name["s2"]["schedulable"]
    assert by_name["s2"]["fixes"][0]["action"].startswith("set --mem-fraction-static=0.91")
    planner.close()


MIXED_EXAMPLE = ["--nvml.fixture", str(ROOT / "examples/mixed-backends/fixture.yaml"),
                 "--manifest", str(ROOT / "examples/mixed-backends/manifest.yaml")]


def test_explain_page_names_each_backend_and_its_knob(start_exporter):
    from test_explain_page import chromium
    exporter = start_exporter(*MIXED_EXAMPLE)
    dom = chromium("--dump-dom", exporter.url + "/").stdout
    assert "qwen-sglang <small>(SGLang backend)</small>" in dom and "(custom backend)" in dom
    assert "--mem-fraction-static booked by GPUStack 0.835, taken by SGLang 0.835" in dom
    assert "SGLang alone would start on GPU 0" in dom and "sglang_kv_pool" in dom
    assert "With --mem-fraction-static=0.835, all GPUs combined need to provide at least 6.53 GiB" in dom
    assert "set --mem-fraction-static=0.7" in dom
    assert "reads the last (0.25)" in dom and "a custom backend's engine is not modelled" in dom
    metrics = exporter.text("/metrics")
    assert 'vram_model_gpu_memory_utilization{model="qwen-sglang",reader="sglang"} 0.835' in metrics
    assert 'check="sglang_free_memory"' in metrics and 'check="gpustack_custom_claim"' in metrics


def test_sglang_tp_fix_is_read_alike_by_gpustack_and_sglang():
    from vram_exporter.rules.backends.sglang.fixes import _tp
    from vram_exporter.rules.backends.sglang.selector import gpustack_sglang_params
    params = _tp(("--tp 2", "--mem-fraction-static=0.8"), 4)
    assert gpustack_sglang_params(params).tp == 4 and sglang.sglang_params(params).tp == 4
    big = model("sglang", weights_bytes=40 * GIB, max_model_len=8192)
    gpus = node(*(gpu(i, 24564 * MIB) for i in range(4)))
    fit = fit_node(gpus, Cluster(), [big]).models[0]
    tp_fix = next(f for f in find_fixes(big, fit, fit_node(gpus, Cluster(), [big]), gpus.gpus)
                  if f.knob == "tensor_parallel_size")
    assert tp_fix.works and tp_fix.action.startswith("set --tp-size 4")  # 2 x 0.842 x 24 GiB < E = 50 GiB


def test_what_if_writes_sglangs_own_flags():
    from vram_exporter.app.plan import NodeInputs
    from vram_exporter.app.whatif import WhatIf
    inputs = NodeInputs.of(Cluster(), (model("sglang", name="s"), model("vllm", name="v")), {}, node(gpu()))
    changed = WhatIf("s", gpu_memory_utilization=0.9, max_model_len=8192).apply(inputs)
    s = next(m for m in changed.models if m.name == "s")
    assert s.backend_parameters == ("--mem-fraction-static=0.9", "--context-length=8192")
    assert sglang.sglang_params(s.backend_parameters).mem_fraction_static == 0.9
    v = next(m for m in WhatIf("v", gpu_memory_utilization=0.8).apply(inputs).models if m.name == "v")
    assert v.backend_parameters == ("--gpu-memory-utilization=0.8",)


# --- SGLang by version (rules/backends/sglang/versions.py) ---------------------------------------------------


def _sglang_on(version: str, *params: str, **changes):
    from vram_exporter.rules.model import EngineVersion
    return model("sglang", *params, engine_version=EngineVersion(version, "test"), **changes)


def test_sglang_pool_follows_the_version_multimodal_caches_from_0_5_18():
    vision = replace(QWEN_1_5B, has_vision=True)
    pools = {(v, t): fit_one(_sglang_on(v, "--mem-fraction-static=0.8", *t, arch=vision), gpu(total=H100)).per_gpu[0]
             for v in ("0.5.9", "0.5.18") for t in ((), ("--mm-feature-transport=cuda_ipc",))}
    cell = fit_one(_sglang_on("0.5.9", "--mem-fraction-static=0.8"), gpu(total=H100)).bytes_per_token
    kv = {k: f.kv_bytes for k, f in pools.items()}
    assert kv[("0.5.9", ())] == kv[("0.5.9", ("--mm-feature-transport=cuda_ipc",))]
    assert abs(kv[("0.5.9", ())] - kv[("0.5.18", ())] - 100 * MIB) < cell  # SGLANG_VLM_CACHE_SIZE_MB
    assert abs(kv[("0.5.9", ())] - kv[("0.5.18", ("--mm-feature-transport=cuda_ipc",))] - 1124 * MIB) < cell
    text = fit_one(_sglang_on("0.5.18", "--mem-fraction-static=0.8"), gpu(total=H100)).per_gpu[0].kv_bytes
    assert text == kv[("0.5.9", ())]  # a text model: the same rule


def test_sglang_0_5_23_names_the_fraction_and_the_fix_search_tries_it_first():
    spec = _sglang_on("0.5.23", "--mem-fraction-static=0.3", pinned_gpus=(0,), max_model_len=64)
    fit = fit_one(spec, gpu(total=SEED_TOTAL))
    said = next(r for r in fit.reasons if "Raise --mem-fraction-static above" in r)
    named = float(said.split("Raise --mem-fraction-static above ")[1].split()[0])
    assert "Not enough memory" not in " ".join(fit.reasons)
    old = fit_one(replace(spec, engine_version=None), gpu(total=SEED_TOTAL))
    assert any("Not enough memory. Please try to increase" in r for r in old.reasons)
    fixes = [f for f in find_fixes(spec, fit, fit_node(node(gpu(total=SEED_TOTAL)), Cluster(), [spec]),
                                   node(gpu(total=SEED_TOTAL)).gpus) if f.knob == "gpu_memory_utilization"]
    assert fixes[0].works and fixes[0].action.startswith(f"set --mem-fraction-static={named + 0.001:.3f} (SGLang 0.5.23")
    assert fit_one(replace(spec, backend_parameters=(f"--mem-fraction-static={named + 0.001:.3f}",)),
                   gpu(total=SEED_TOTAL)).per_gpu[0].headroom["sglang_kv_pool"] > 0
