"""Booked against used as metric families (present/usage_families.py) and on the page (present/page_usage.py)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families as parse_text

from vram_exporter.present.exposition import Renderer
from vram_exporter.present.page_usage import at_a_glance, by_attention, running_words, usage_report
from vram_exporter.present.usage_families import usage_families
from vram_exporter.rules.usage import GpuProcess, Instance, ProcessInfo, node_usage

GIB = 1 << 30
TREE = {1000: ProcessInfo(1000, 1, None, frozenset({40001})), 1002: ProcessInfo(1002, 1000), 3000: ProcessInfo(3000, 1)}
BIG = Instance("big-1", "big", "running", {0: 12 * GIB}, ports=frozenset({40001}))
SMALL = Instance("small-1", "small", "running", {0: 7 * GIB})
USAGE = node_usage({0: 24 * GIB, 1: 24 * GIB}, [GpuProcess(0, 1002, 20 * GIB), GpuProcess(1, 3000, 3 * GIB)], TREE,
                   [BIG, SMALL])


def samples() -> dict[tuple[str, tuple], float]:
    text = Renderer().render(usage_families(USAGE, {0: "GPU-0", 1: "GPU-1"})).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse_text(text) for s in f.samples}


def test_one_series_per_instance_and_gpu_labelled_model_instance_and_per_gpu_totals():
    found = samples()
    big = (("gpu", "0"), ("model", "big"), ("model_instance", "big-1"), ("uuid", "GPU-0"))
    small = (("gpu", "0"), ("model", "small"), ("model_instance", "small-1"), ("uuid", "GPU-0"))
    assert found[("vram_instance_booked_bytes", big)] == 12 * GIB
    assert found[("vram_instance_used_bytes", big)] == 20 * GIB
    assert found[("vram_instance_overrun", big)] == 1 and found[("vram_instance_overrun", small)] == 0
    assert found[("vram_instance_claim_idle", small)] == 1
    assert found[("vram_gpu_unattributed_used_bytes", (("gpu", "1"), ("uuid", "GPU-1")))] == 3 * GIB
    assert found[("vram_gpu_idle_claimed_bytes", (("gpu", "0"), ("uuid", "GPU-0")))] == 7 * GIB
    instance_series = [key for key in found if key[0].startswith("vram_instance_")]
    assert len(instance_series) == 4 * 2  # four families x (big, small) on GPU 0; none on GPU 1
    assert not any("pid" in dict(labels) for _, labels in found)


def report(models=(), usage=USAGE) -> dict:
    gpus = [{"index": i, "name": "H100", "uuid": f"GPU-{i}", "up": True,
             "memory": {"total": 24 * GIB, "reserved": GIB // 2, "used": 0, "free": 24 * GIB}} for i in (0, 1)]
    return {"gpus": gpus, "models": list(models), "fixes_known": True,
            **({"usage": usage_report(usage)} if usage else {})}


def model(name, *, schedulable=True, startable=True, placed=False, error=None, fixes=()):
    return {"name": name, "schedulable": schedulable, "startable": startable, "placed": placed, "error": error,
            "gpus": [0], "fixes": list(fixes)}


def test_the_glance_names_each_instance_and_the_first_working_fix_of_each_model_that_will_not_fit():
    failing = model("qwen", startable=False, fixes=[{"action": "lower it", "works": False},
                                                   {"action": "set --gpu-memory-utilization=0.8", "works": True}])
    html = at_a_glance(report([failing, model("fine")]))
    assert "big-1" in html and "small-1" in html and "uses more than booked" in html
    assert "1 model will not fit here" in html and "set --gpu-memory-utilization=0.8" in html
    assert "lower it" not in html and "fine" not in html


def test_without_gpustack_the_glance_has_no_bars_and_without_models_nothing():
    assert "<svg" not in at_a_glance(report([model("qwen", schedulable=False)], usage=None))
    assert at_a_glance(report([], usage=None)) == ""


def test_models_by_attention_and_a_running_model_is_not_a_failure():
    models = [model("a-fits"), model("b-running", placed=True, startable=False), model("c-broken", error="bad"),
              model("d-wont", schedulable=False)]
    assert [m["name"] for m in by_attention(models)] == ["c-broken", "d-wont", "b-running", "a-fits"]
    words = running_words(models[1])
    assert "running" in words and "does not re-check" in words and "would fail now" in words
    assert running_words(models[0]) is None


def test_a_manifest_model_nothing_says_how_to_know_is_booked_and_said_so_not_an_idle_claim():
    unknown = Instance("phi", "phi", "running", {1: 6 * GIB}, watched=False)
    usage = node_usage({0: 24 * GIB, 1: 24 * GIB}, [GpuProcess(1, 3000, 3 * GIB)], TREE, [BIG, unknown])
    row = usage_report(usage)[1]["instances"][0]
    assert (row["instance"], row["booked"], row["idle_claim"], row["watched"]) == ("phi", 6 * GIB, False, False)
    html = at_a_glance(report(usage=usage))
    assert "its processes are not known" in html and "<code>processes</code>" in html
