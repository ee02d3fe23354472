"""The collector: what /metrics says about each model equals what the report (/api/v1/fit, `check`)
says, for a plan made on one reading and scraped on another (the metrics render the free-memory
samples from prefixes made with the plan; the report builds the live fit)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from fitcases import GIB, MIB, gpu, node, seed_cluster, seed_model
from vram_exporter.present.collector import fix_segment
from vram_exporter.present.exposition import Renderer
from vram_exporter.rules.node import free_memory
from vram_exporter.app.plan import NodeInputs, Planner
from vram_exporter.present.report import plan_report


def _samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_and_report_agree_after_readings_move():
    made_on = node(gpu(0), gpu(1, 24 * GIB))
    now = node(gpu(0, used=GIB), gpu(1, 24 * GIB, used=3000 * MIB))
    models = (seed_model(), seed_model("--gpu-memory-utilization=0.3", name="b", max_model_len=8192),
              seed_model("--gpu-memory-utilization=0.45", name="running", placed_on=(1,)))
    planner = Planner()
    plan = planner.submit(NodeInputs.of(seed_cluster(), models, {}, made_on), made_on).result(30)
    plan.fixes_known.result(30)
    free = free_memory(now)
    fixes = [fix_segment(fit.name, plan.fixes[fit.name].working(fit, free)) for fit in plan.node.models]
    samples = _samples(Renderer().render(plan.families.families(plan.node, free, fixes)).decode())
    report = plan_report(plan, now)
    for model in report["models"]:
        name = model["name"]
        assert samples[("vram_model_startable", (("model", name),))] == (1 if model["startable"] else 0)
        assert samples[("vram_model_schedulable", (("model", name),))] == (1 if model["schedulable"] else 0)
        for index, checks in model["checks"].items():
            where = (("gpu", index), ("model", name), ("uuid", f"GPU-{index}"))
            assert samples[("vram_model_gpu_memory_utilization_max", where)] == \
                checks["gpu_memory_utilization_window"][1]
            for check in ("gpustack_estimate", "gpustack_allocatable", "vllm_kv_cache", "vllm_free_memory"):
                key = ("vram_model_headroom_bytes", tuple(sorted((*where, ("check", check)))))
                if check in checks:
                    assert samples[key] == checks[check]["headroom_bytes"], (name, index, check)
                else:
                    assert key not in samples  # a running instance has no start-up check
        working = {(f["knob"], f["action"]) for f in model["fixes"] if f["works"]}
        exported = {(dict(labels)["knob"], dict(labels)["action"]) for (metric, labels) in samples
                    if metric == "vram_model_fix_info" and dict(labels)["model"] == name}
        assert exported == working
    assert any(m["fixes"] for m in report["models"])  # the case exercises fixes at all
    planner.close()
