"""Property-based tests (Hypothesis): parsers never fail in unexpected ways, and the rulebooks keep
the invariants a user relies on."""

from __future__ import annotations

from dataclasses import replace

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fitcases import GIB, MIB, QWEN_1_5B, gpu, node, seed_model
from vram_exporter.sources.manifest import load_manifest
from vram_exporter.rules.model import Cluster
from vram_exporter.rules.node import fit_node
from vram_exporter.rules.flags import gpustack_params, parse_model_len, vllm_params, with_param
from vram_exporter.units import parse_size
from vram_exporter.sources.yamlfile import InputFileError

UNITS = {"": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9}


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(sorted(UNITS)))
def test_size_strings_round_trip(number, unit):
    assert parse_size(f"{number}{unit}") == number * UNITS[unit]
    assert parse_size(f"{number} {unit.lower()}") == number * UNITS[unit]


@given(st.text(max_size=20))
def test_size_parser_only_raises_value_error(text):
    try:
        assert parse_size(text) >= 0
    except ValueError:
        pass


PARAM_TOKEN = st.one_of(
    st.sampled_from(["--gpu-memory-utilization", "--gpu_memory_utilization", "--tensor-parallel-size", "-tp",
                     "--max-model-len", "--kv-cache-dtype", "--pipeline-parallel-size", "--trust-remote-code",
                     "--", "-1", "0.5", "2", "fp8", "auto", "4k"]),
    st.text(alphabet="-=_ .0123456789abcdefgkKmpu", max_size=30),
)


@given(st.lists(PARAM_TOKEN, max_size=8))
def test_parameter_readers_never_crash_with_anything_but_value_error(params):
    for reader in (gpustack_params, vllm_params):
        try:
            reader(params)
        except ValueError:
            pass


@given(st.floats(min_value=0.01, max_value=1.0).map(lambda g: round(g, 2)), st.lists(PARAM_TOKEN, max_size=5))
def test_a_dash_spelled_value_written_by_with_param_is_read_alike_by_both(g, params):
    try:
        changed = with_param(params, "gpu-memory-utilization", g)
        assert gpustack_params(changed).gpu_memory_utilization == vllm_params(changed).gpu_memory_utilization == g
    except ValueError:
        assume(False)  # other garbage in params that one reader refuses


@given(st.integers(min_value=1, max_value=10**7), st.sampled_from(["", "k", "K"]))
def test_model_len_suffixes(number, suffix):
    assert parse_model_len(f"{number}{suffix}") == number * {"": 1, "k": 1000, "K": 1024}[suffix]


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["cluster", "models", "name", "weights_bytes", "config", "path", "env", "scheduler",
                         "system_reserved_vram", "max_model_len", "backend_parameters", "replicas", "x"]),
        children, max_size=4),
    max_leaves=12)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(YAML_VALUES)
def test_manifest_loading_of_arbitrary_yaml_gives_a_manifest_or_an_input_file_error(tmp_path, document):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_manifest(path)
    except InputFileError as exc:
        assert str(exc).startswith(str(path))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100)
@given(st.binary(max_size=200))
def test_manifest_loading_of_arbitrary_bytes_never_crashes(tmp_path, raw):
    path = tmp_path / "m.yaml"
    path.write_bytes(raw)
    try:
        load_manifest(path)
    except InputFileError:
        pass


# --- rulebook invariants ----------------------------------------------------------------------------

CARD_MIB = st.sampled_from([6138, 8192, 12288, 16384, 24564, 46068, 81559])
GMU = st.floats(min_value=0.5, max_value=0.95).map(lambda g: round(g, 2))
WEIGHTS = st.integers(min_value=GIB // 4, max_value=40 * GIB)


def model_with(g: float, weights: int, spelling: str = "="):
    flag = f"--gpu-memory-utilization={g}" if spelling == "=" else f"--gpu_memory_utilization={g}"
    return seed_model(flag, weights_bytes=weights, max_model_len=4096)


@given(CARD_MIB, GMU, WEIGHTS, st.integers(0, 2), st.integers(1, 3))
def test_more_reservation_never_makes_a_model_schedulable(card, g, weights, reserved, extra):
    snapshot = node(gpu(0, card * MIB), gpu(1, card * MIB))
    less = fit_node(snapshot, Cluster(system_reserved_vram=reserved * GIB), [model_with(g, weights)]).models[0]
    more = fit_node(snapshot, Cluster(system_reserved_vram=(reserved + extra) * GIB), [model_with(g, weights)])
    assert less.schedulable or not more.models[0].schedulable


@given(CARD_MIB, GMU, WEIGHTS, st.integers(0, 4096), st.integers(1, 4096))
def test_more_free_memory_never_makes_the_start_up_check_fail(card, g, weights, used_mib, freed_mib):
    freed_mib = min(freed_mib, used_mib)
    busy = fit_node(node(gpu(0, card * MIB, used=used_mib * MIB)), Cluster(), [model_with(g, weights)]).models[0]
    calmer = fit_node(node(gpu(0, card * MIB, used=(used_mib - freed_mib) * MIB)), Cluster(),
                      [model_with(g, weights)]).models[0]
    busy_ok = busy.per_gpu[0].headroom["vllm_free_memory"] >= 0
    calm_ok = calmer.per_gpu[0].headroom["vllm_free_memory"] >= 0
    assert calm_ok or not busy_ok


@settings(max_examples=60)
@given(CARD_MIB, WEIGHTS, st.integers(0, 2), st.integers(0, 1024))
def test_the_utilization_window_always_passes_every_check(card, weights, reserved, used_mib):
    snapshot = node(gpu(0, card * MIB, used=used_mib * MIB))
    cluster = Cluster(system_reserved_vram=reserved * GIB)
    (window,) = fit_node(snapshot, cluster, [model_with(0.9, weights)]).models[0].per_gpu
    assume(window.window_open)
    for g in {window.gmu_min, window.gmu_max, round((window.gmu_min + window.gmu_max) / 2, 4)}:
        at = fit_node(snapshot, cluster, [model_with(g, weights)]).models[0]
        assert at.fits, (g, at.per_gpu[0].headroom)


@given(CARD_MIB, GMU, WEIGHTS)
def test_the_underscore_spelling_books_gpustacks_default(card, g, weights):
    fit = fit_node(node(gpu(0, card * MIB)), Cluster(), [model_with(g, weights, "_")]).models[0]
    assert fit.gmu_gpustack == 0.9 and fit.gmu_vllm == g


@given(st.lists(st.tuples(GMU, WEIGHTS), min_size=1, max_size=4), CARD_MIB)
def test_claims_never_exceed_what_placed_models_booked(models, card):
    specs = [replace(model_with(g, w), name=f"m{i}") for i, (g, w) in enumerate(models)]
    fit = fit_node(node(gpu(0, card * MIB), gpu(1, card * MIB)), Cluster(), specs)
    for booking in fit.gpus:
        assert booking.allocatable == max(booking.total - booking.claimed - booking.system_reserved, 0)
        assert booking.claimed <= booking.total * len(specs)
    assert QWEN_1_5B.layers == 28
