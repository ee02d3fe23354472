"""The what-if's parsing and application, and its bounds: one computation at a time, results kept."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from urllib.parse import parse_qsl

import pytest

from conftest import ROOT
from vram_exporter.sources.manifest import load_manifest
from vram_exporter.sources.fake_nvml import FakeNvml
from vram_exporter.sources.nvml import NvmlReader
from vram_exporter.app.plan import NodeInputs, Planner
from vram_exporter.app.whatif import Busy, WhatIf, WhatIfError, WhatIfs, parse

MODEL = "qwen2.5-1.5b-instruct"


def seed():
    manifest = load_manifest(ROOT / "examples/seed/manifest.yaml")
    reader = NvmlReader(FakeNvml.watching(ROOT / "examples/seed/fixture.yaml"), proc_root=None, source="seed")
    snapshot = reader.read()
    inputs = NodeInputs.of(manifest.cluster, manifest.models, manifest.booked, snapshot)
    return Planner().build_now(inputs, snapshot), snapshot


def test_parse_normalises_and_the_query_reproduces_it():
    what = parse([("model", MODEL), ("gpu_memory_utilization", "0.850"), ("system_reserved_vram", "0"),
                  ("max_model_len", "4k"), ("kv_cache_dtype", "fp8"), ("vram_claim", "4GiB")])
    assert what == WhatIf(MODEL, 0.85, 0, 4000, "fp8", 4 * 2**30)
    assert parse(parse_qsl(what.query())) == what
    assert parse([("model", MODEL), ("max_model_len", "auto"), ("vram_claim", "None")]) == WhatIf(
        MODEL, max_model_len=-1, vram_claim="none")


def test_every_problem_is_reported_with_its_field():
    with pytest.raises(WhatIfError) as caught:
        parse([("gpu_memory_utilization", "0"), ("x", "1"), ("vram_claim", "-1")])
    assert [field for field, _ in caught.value.problems] == ["x", "gpu_memory_utilization", "vram_claim", "model"]


def test_apply_changes_one_model_and_leaves_the_live_inputs_alone():
    plan, _ = seed()
    live = plan.inputs
    changed = parse([("model", MODEL), ("gpu_memory_utilization", "0.91"), ("system_reserved_vram", "0"),
                     ("vram_claim", "123")]).apply(live)
    [spec] = changed.models
    assert spec.backend_parameters == ("--gpu-memory-utilization=0.91",)  # the old spelling replaced
    assert spec.env == {"GPUSTACK_MODEL_VRAM_CLAIM": "123"} and changed.cluster.system_reserved_vram == 0
    assert live.models[0].backend_parameters == ("--gpu-memory-utilization=0.9",) and live.models[0].env == {}
    assert live.cluster.system_reserved_vram == 2**30
    with pytest.raises(WhatIfError, match="'other' is not one of this node's models"):
        WhatIf("other").apply(live)


def test_the_kv_caches_own_flags_are_set_or_removed_in_every_spelling():
    plan, _ = seed()
    live = plan.inputs
    given = ("--gpu_memory_utilization", "0.5", "--kv-cache-memory-bytes=2G", "--num_gpu_blocks_override=100",
             "--max-num-seqs=8")
    live = replace(live, models=(replace(live.models[0], backend_parameters=given),))
    assert live.models[0].vllm.kv_cache_memory_bytes == 2 * 2**30
    [unset] = parse([("model", MODEL), ("unset_gpu_memory_utilization", "YES")]).apply(live).models
    assert unset.backend_parameters == ("--max-num-seqs=8",)
    assert (unset.vllm.gpu_memory_utilization, unset.vllm.kv_cache_memory_bytes, unset.vllm.num_gpu_blocks_override) == \
        (None, None, None)
    [sized] = parse([("model", MODEL), ("kv_cache_memory_bytes", "8589934592")]).apply(live).models
    assert sized.vllm.kv_cache_memory_bytes == 8 * 2**30 and "--kv-cache-memory-bytes=8192M" in sized.backend_parameters
    assert sized.vllm.num_gpu_blocks_override == 100  # only the size given changes
    with pytest.raises(WhatIfError) as caught:
        parse([("model", MODEL), ("unset_gpu_memory_utilization", "on"), ("kv_cache_memory_bytes", "1.5G")])
    assert [field for field, _ in caught.value.problems] == ["kv_cache_memory_bytes", "unset_gpu_memory_utilization"]


def test_one_what_if_at_a_time_and_the_last_ones_kept():
    plan, snapshot = seed()
    runner = WhatIfs()
    release, started, computed = threading.Event(), threading.Event(), []
    real = runner._report

    def slow(inputs, snap):
        computed.append(inputs)
        started.set()
        release.wait(30)
        return real(inputs, snap)

    runner._report = slow

    async def scenario():
        fixed = WhatIf(MODEL, gpu_memory_utilization=0.91, system_reserved_vram=0)
        first = asyncio.create_task(runner.run(fixed, plan, snapshot))
        await asyncio.to_thread(started.wait, 30)
        with pytest.raises(Busy):  # refused at once, not queued behind the first
            await runner.run(WhatIf(MODEL, gpu_memory_utilization=0.8), plan, snapshot)
        release.set()
        outcome = await first
        again = await runner.run(fixed, plan, snapshot)  # the same plan and readings: kept, not recomputed
        return outcome, again

    outcome, again = asyncio.run(scenario())
    assert again is outcome and len(computed) == 1
    [model] = outcome.report["models"]
    assert model["schedulable"] and model["startable"]
