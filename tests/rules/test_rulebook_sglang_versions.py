"""SGLang's KV pool budget by version (rules/backends/sglang/versions.py) against SGLang's own code, per version
(tests/sglang_source.py; the wheels: `pip download --no-deps sglang==<version>`): from 0.5.18 its
``_profile_available_bytes`` and ``mm_runtime_reservation_gb`` run on the CPU, its "Raise --mem-fraction-static
above X" error word for word; before, the slack rule of ``profile_max_num_token`` (0.5.9's is run in
test_rulebook_sglang.py)."""

from __future__ import annotations

import ast
import gc
import math
import random
from types import SimpleNamespace

import pytest

from sglang_source import function, source, wheel_of
from vram_exporter.rules.backends.sglang import versions

CONFIGURATOR = "mem_cache/kv_cache_configurator.py"
NEW = ("0.5.18", "0.5.22", "0.5.23")


def _class_of(module: str, method: str, wheel_file) -> str:
    tree = ast.parse(source(module, wheel_file))
    return next(node.name for node in tree.body if isinstance(node, ast.ClassDef)
                and any(isinstance(n, ast.FunctionDef) and n.name == method for n in node.body))


def _sglangs_budget(version: str):
    """SGLang ``version``'s ``_profile_available_bytes`` with stand-ins for the GPU and its global state:
    (free after the weights GiB, free before GiB, fraction, multimodal, transport, env) -> bytes or ValueError."""
    wheel_file = wheel_of(version)
    state = SimpleNamespace()
    envs = SimpleNamespace(SGLANG_VLM_CACHE_SIZE_MB=SimpleNamespace(get=lambda: state.vlm_mb),
                           SGLANG_MM_FEATURE_CACHE_MB=SimpleNamespace(get=lambda: state.feature_mb))
    reservation = function(CONFIGURATOR, "mm_runtime_reservation_gb",
                           {"envs": envs, "logger": SimpleNamespace(info=lambda *a: None), "Optional": None},
                           wheel_file=wheel_file)
    world = SimpleNamespace(world_size=1, cpu_group=None, launch_world_size=1,
                            world_group=SimpleNamespace(cpu_group=None))
    graph = SimpleNamespace(cuda_graph_config=SimpleNamespace(prefill=SimpleNamespace(full_prefill_max_req=None,
                                                                                      backend=None)))
    namespace = {
        "gc": gc, "math": math, "mm_runtime_reservation_gb": reservation,
        "get_available_gpu_memory": lambda *a, **k: state.available,
        "get_world_group": lambda: world, "get_parallel": lambda: world,
        "get_schedule": lambda: SimpleNamespace(mem_fraction_static=state.fraction, prefill_max_requests=None,
                                                max_mamba_cache_size=None),
        "get_exec": lambda: SimpleNamespace(graph=graph), "get_disagg": lambda: SimpleNamespace(disaggregation_mode="null"),
        "get_mm": lambda: SimpleNamespace(mm_feature_transport=state.transport), "Backend": SimpleNamespace(FULL="full"),
    }
    budget = function(CONFIGURATOR, "_profile_available_bytes", namespace,
                      cls=_class_of(CONFIGURATOR, "_profile_available_bytes", wheel_file), wheel_file=wheel_file)

    def run(available, pre, fraction, multimodal, transport, env):
        state.available, state.fraction, state.transport = available, fraction, transport
        state.vlm_mb = int(env.get("SGLANG_VLM_CACHE_SIZE_MB", 100))
        state.feature_mb = int(env.get("SGLANG_MM_FEATURE_CACHE_MB", 1024))
        runner = SimpleNamespace(device="cuda", gpu_id=0, mambaish_config=None, post_capture_kv_active=False,
                                 model_config=SimpleNamespace(is_multimodal=multimodal),
                                 server_args=SimpleNamespace(mm_feature_transport=transport))
        return budget(runner, pre)

    return run


def _cases(n: int = 300):
    rng = random.Random(21)
    for _ in range(n):
        pre = rng.uniform(5, 140)
        available = pre * rng.uniform(0.02, 0.95)
        env = rng.choice([{}, {"SGLANG_VLM_CACHE_SIZE_MB": "512"}, {"SGLANG_MM_FEATURE_CACHE_MB": "2048"}])
        yield (available, pre, round(rng.uniform(0.3, 0.95), 3), rng.random() < 0.5,
               rng.choice([None, "shm", "cuda_ipc", "cuda_vmm"]), env)


@pytest.mark.parametrize("version", NEW)
def test_pool_budget_and_its_error_are_sglangs_own(version):
    theirs = _sglangs_budget(version)
    rule = versions.pool_rule(version)
    empty = 0
    for available, pre, fraction, multimodal, transport, env in _cases():
        ours = versions.rest_gib(rule, available_gib=available, pre_gib=pre, mem_fraction_static=fraction,
                                 multimodal=multimodal, feature_transport=transport, env=env)
        if ours <= 0:
            empty += 1
            with pytest.raises(ValueError) as raised:
                theirs(available, pre, fraction, multimodal, transport, env)
            assert str(raised.value) == versions.no_kv_memory(fraction, available_gib=available, pre_gib=pre)
        else:
            assert theirs(available, pre, fraction, multimodal, transport, env) == int(ours * (1 << 30))
    assert 20 < empty < 280  # both sides of the error are reached


def test_the_named_fraction_gives_a_pool():
    """SGLang's suggested fraction ("Raise --mem-fraction-static above X"), for a text model, leaves a pool."""
    for available, pre, fraction, _, _, _ in _cases():
        minimum = versions.minimum_fraction(available_gib=available, pre_gib=pre)
        above = math.ceil(minimum * 1000) / 1000 + 0.001
        if above < 1:
            assert versions.rest_gib(versions.pool_rule("0.5.23"), available_gib=available, pre_gib=pre,
                                     mem_fraction_static=above) > 0


@pytest.mark.parametrize("version, module", [("0.5.6.post2", "model_executor/model_runner.py"),
                                             ("0.5.9", "model_executor/model_runner_kv_cache_mixin.py")])
def test_older_versions_keep_the_plain_slack_rule(version, module):
    text = source(module, wheel_of(version))
    assert "rest_memory = available_gpu_memory - total_gpu_memory * (\n            1 - self.mem_fraction_static" \
        in text
    assert "mm_runtime_reservation_gb" not in text and "Loaded weights leave no GPU memory" not in text
    rule = versions.pool_rule(version)
    assert not rule.reserves_multimodal and not rule.names_the_fraction


def test_rule_ranges():
    assert versions.pool_rule("0.5.9") is versions.POOL_RULES[0]  # 0.5.10-0.5.15: not read, the older rule
    assert versions.pool_rule("0.5.18") is versions.pool_rule("0.5.23") is versions.POOL_RULES[1]
    assert versions.pool_rule("0.5.4") is versions.POOL_RULES[0]
