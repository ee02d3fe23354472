"""Our renderer against prometheus_client's own parsers: escaping, numbers, both formats, and the
segment cache never serving stale numbers."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from fitcases import GIB, MIB, gpu, node, seed_model
from vram_exporter.present.exposition import Family, Renderer, format_value, wants_openmetrics
from vram_exporter.rules.model import Cluster
from vram_exporter.rules.node import fit_node, live_values, static_fit, with_free


def samples(text: str, openmetrics: bool = False) -> list[tuple[str, dict, float]]:
    parse = parse_openmetrics if openmetrics else parse_text
    return [(s.name, s.labels, s.value) for family in parse(text) for s in family.samples]


def one(labels: tuple[str, ...], value: float) -> Family:
    family = Family("vram_test_bytes", 'help with \\ and "quotes"\nand a newline', "gauge", ("a", "b"))
    family.sample(*labels, value)
    return family


LABEL_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
NUMBERS = st.one_of(st.integers(min_value=-(2**62), max_value=2**62), st.floats(allow_nan=True, allow_infinity=True))


@given(LABEL_TEXT, LABEL_TEXT, NUMBERS)
def test_text_format_round_trips_through_prometheus_clients_parser(a, b, value):
    text = Renderer().render([one((a, b), value)]).decode()
    ((name, labels, parsed),) = samples(text)
    assert name == "vram_test_bytes" and labels == {"a": a, "b": b}
    assert (math.isnan(parsed) and math.isnan(float(value))) or float(parsed) == float(value)


@given(LABEL_TEXT, NUMBERS)
def test_openmetrics_round_trips_and_ends_with_eof(a, value):
    info = Family("vram_thing_info", "an info family", "info", ("a",))
    info.sample(a, 1)
    text = Renderer().render([one((a, "x"), value), info], openmetrics=True).decode()
    assert text.endswith("# EOF\n") and "# TYPE vram_thing info\n" in text
    parsed = samples(text, openmetrics=True)
    assert parsed[1] == ("vram_thing_info", {"a": a}, 1)
    assert (math.isnan(parsed[0][2]) and math.isnan(float(value))) or float(parsed[0][2]) == float(value)


def test_numbers_are_exact_and_readable():
    assert format_value(6_436_159_488) == "6436159488"
    assert format_value(6436159488.0) == "6436159488"
    assert format_value(-59900680.80000019) == "-59900680.80000019"
    assert format_value(0.9094) == "0.9094"
    assert (format_value(math.inf), format_value(-math.inf), format_value(math.nan)) == ("+Inf", "-Inf", "NaN")


def test_each_render_shows_the_values_it_is_given():
    renderer = Renderer()
    labels, values = [("m", "0")], [1]
    family = Family("vram_x", "x", "gauge", ("model", "gpu"))
    family.add("m", labels, values)
    first = renderer.render([family])
    family2 = Family("vram_x", "x", "gauge", ("model", "gpu"))
    family2.add("m", labels, values)  # the same values: the same bytes
    assert renderer.render([family2]) == first
    family3 = Family("vram_x", "x", "gauge", ("model", "gpu"))
    family3.add("m", labels, [2])  # a new value: shown
    assert samples(renderer.render([family3]).decode()) == [("vram_x", {"model": "m", "gpu": "0"}, 2)]


def test_content_negotiation():
    assert wants_openmetrics("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert wants_openmetrics("application/openmetrics-text; version=0.0.1")
    assert not wants_openmetrics("text/plain;version=0.0.4")
    assert not wants_openmetrics(None)
    assert not wants_openmetrics("application/openmetrics-text; version=2.0.0")


@given(st.lists(st.integers(min_value=0, max_value=4000), min_size=2, max_size=2),
       st.lists(st.integers(min_value=0, max_value=4000), min_size=2, max_size=2))
def test_patching_free_memory_equals_a_full_fit(before, after):
    """The plan's static fit, made on other readings, with new free memory applied (the report's path,
    with_free, and the metrics', live_values) must equal a fresh fit."""
    models = [seed_model("--gpu-memory-utilization=0.45", name="a"),
              seed_model("--gpu-memory-utilization=0.3", name="b", max_model_len=8192),
              seed_model("--gpu-memory-utilization=0.45", name="c", placed_on=(1,))]
    cluster = Cluster()
    snap_before = node(*(gpu(i, 24 * GIB, used=u * MIB) for i, u in enumerate(before)))
    snap_after = node(*(gpu(i, 24 * GIB, used=u * MIB) for i, u in enumerate(after)))
    free = {g.index: g.memory.free for g in snap_after.gpus}
    static = static_fit(snap_before, cluster, models).models
    patched = [with_free(fit, free) for fit in static]
    fresh = fit_node(snap_after, cluster, models)
    for s, p, f in zip(static, patched, fresh.models):
        assert (p.schedulable, p.startable, p.gpus, p.reasons) == (f.schedulable, f.startable, f.gpus, f.reasons)
        assert [(g.headroom, g.gmu_min, g.gmu_max, g.max_model_len) for g in p.per_gpu] == \
               [(g.headroom, g.gmu_min, g.gmu_max, g.max_model_len) for g in f.per_gpu]
        live = live_values(s, free)
        assert live.startable == f.startable
        assert list(live.gmu_max) == [g.gmu_max for g in f.per_gpu]
        assert list(live.free_headroom) == [g.headroom.get("vllm_free_memory") for g in f.per_gpu]
