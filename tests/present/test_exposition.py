"""Our renderer against prometheus_client's own parsers: escaping, numbers, both formats, and the
segment cache never serving stale numbers."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from fitcases import GIB, MIB, gpu, node, seed_model
from vram_exporter.present.exposition import (Family, Renderer, Segment, format_value, render_samples,
                                              wants_openmetrics)
from vram_exporter.rules.model import Cluster
from vram_exporter.present.catalogue import MODEL_GPU
from vram_exporter.present.collector import ModelFamilies
from vram_exporter.rules.node import (apply_free, fit_node, free_for_static_top, static_fit, top_moves, window_top,
                                      with_free)
from vram_exporter.rules.verdicts import NodeFit


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


@given(st.lists(st.tuples(LABEL_TEXT, NUMBERS), min_size=1, max_size=4), st.booleans())
def test_prepared_bytes_are_sent_as_they_are_among_the_rendered_parts(rows, openmetrics):
    """A segment prepared as bytes (once per plan) is a part of the body by itself, the same object,
    and the parts say what rendering every sample afresh says, in both formats."""
    def families(prepare: bool) -> list[Family]:
        out = []
        for n, (label, value) in enumerate(rows):
            family = Family(f"vram_f{n}_info" if n % 2 else f"vram_f{n}", "h", "info" if n % 2 else "gauge", ("a",))
            family.sample(label, value)
            if prepare and n % 2 == 0:
                text = render_samples(family.name, ("a",), [(label,)], [value]).encode()
                family.segments = [family.segments[0], Segment("prepared", (), (), text)]
                family.sample("last", 1)
            elif n % 2 == 0:
                family.sample(label, value)
                family.sample("last", 1)
            out.append(family)
        return out

    prepared = families(True)
    parts = Renderer().render_parts(prepared, openmetrics)
    assert b"".join(parts) == Renderer().render(families(False), openmetrics)
    kept = [f.segments[1].text for f in prepared[::2]]
    assert all(any(part is text for part in parts) for text in kept)
    assert all(parts)


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
    with_free, and the metrics', the collector's live part) must equal a fresh fit."""
    models = [seed_model("--gpu-memory-utilization=0.45", name="a"),
              seed_model("--gpu-memory-utilization=0.3", name="b", max_model_len=8192),
              seed_model("--gpu-memory-utilization=0.45", name="c", placed_on=(1,)),
              seed_model("--mem-fraction-static=0.5", name="d", backend="sglang", max_model_len=8192)]
    cluster = Cluster()
    snap_before = node(*(gpu(i, 24 * GIB, used=u * MIB) for i, u in enumerate(before)))
    snap_after = node(*(gpu(i, 24 * GIB, used=u * MIB) for i, u in enumerate(after)))
    free = {g.index: g.memory.free for g in snap_after.gpus}
    static = static_fit(snap_before, cluster, models)
    patched = [with_free(fit, free) for fit in static.models]
    fresh = fit_node(snap_after, cluster, models)
    for p, f in zip(patched, fresh.models):
        assert (p.schedulable, p.startable, p.gpus, p.reasons) == (f.schedulable, f.startable, f.gpus, f.reasons)
        assert [(g.headroom, g.gmu_min, g.gmu_max, g.max_model_len) for g in p.per_gpu] == \
               [(g.headroom, g.gmu_min, g.gmu_max, g.max_model_len) for g in f.per_gpu]
    assert live_lines(ModelFamilies(static).live(free)) == fresh_live_lines(fresh)


def live_lines(live) -> dict[str, str]:
    return {name: segment.text for name, segment in live.segments.items()}


def fresh_live_lines(fit: NodeFit) -> dict[str, str]:
    """The live samples as the full fit says them, rendered sample by sample."""
    headroom, top = [], []
    for m in fit.models:
        for g in (() if m.error else m.per_gpu):
            labels = (m.name, str(g.index), g.uuid)
            top.append(render_samples("vram_model_gpu_memory_utilization_max", MODEL_GPU, [labels], [g.gmu_max]))
            if g.free_need is not None:
                headroom.append(render_samples("vram_model_headroom_bytes", (*MODEL_GPU, "check"),
                                               [(*labels, g.free_check)], [g.headroom[g.free_check]]))
    startable = render_samples("vram_model_startable", ("model",), [(m.name,) for m in fit.models],
                               [1 if m.startable else 0 for m in fit.models])
    return {"vram_model_headroom_bytes": "".join(headroom), "vram_model_gpu_memory_utilization_max": "".join(top),
            "vram_model_startable": startable}


def test_the_live_part_is_the_full_fit_on_each_side_of_every_tops_edge():
    """Where free memory reaches a top's edge (free_for_static_top) the live part writes the static top
    without computing it: one byte either side of each edge, it still says what a fresh fit says."""
    models = [seed_model(f"--gpu-memory-utilization={g}", name=f"m{g}") for g in (0.3, 0.45, 0.6, 0.9)]
    sizes = node(gpu(0, 24 * GIB), gpu(1, 16 * GIB))
    static = static_fit(sizes, Cluster(), models)
    edges = {(f.index, edge) for m in static.models for f in m.per_gpu if top_moves(f)
             and (edge := free_for_static_top(f.free_need - f.budget, f.cuda_total, f.gmu_max_static)) is not None}
    assert len(edges) >= 4
    families = ModelFamilies(static)
    for index, edge in sorted(edges):
        for free_there in (edge - 1, edge, edge + 1):
            free = {g.index: g.memory.free for g in sizes.gpus} | {index: free_there}
            fresh = apply_free(static, free)
            assert live_lines(families.live(free)) == fresh_live_lines(fresh), (index, free_there)


@given(st.integers(min_value=-(2**40), max_value=2**40), st.integers(min_value=2**20, max_value=2**38),
       st.floats(min_value=1e-4, max_value=1.0), st.integers(min_value=-(2**30), max_value=2**30))
def test_a_tops_edge_is_where_the_window_top_becomes_static(beside_budget, cuda_total, static, offset):
    edge = free_for_static_top(beside_budget, cuda_total, static)
    assert window_top(edge, beside_budget, cuda_total, static) == static
    assert window_top(edge - 1, beside_budget, cuda_total, static) != static
    free = edge + offset
    assert (window_top(free, beside_budget, cuda_total, static) == static) == (free >= edge)
