"""Replay of real vLLM 0.34.0 runs on an H100 against the 0.34 rules (issue 25): what the runs measured.

Data: tests/data/vllm34-h100/run-{1,2}.json (tools/vllm_h200_collect.py from the device's output), made by
tools/vllm34-kit's probe with plan-1 and plan-2 on 2026-12-05: vLLM 0.34.0 on the device's torch 2.11.0+cu130
(0.34 pins 2.14: the kit's README says why its stable-ABI extensions load on 2.11), dummy weights from each
model's published config.json (tools/vllm34-kit/payload/models), `LLM(...)` with the plan's arguments.

What the runs reached: every engine loaded its weights, profiled and printed "Available KV cache memory"
(vllm/v1/worker/gpu_worker.py ``determine_available_memory``: R - the profiled non-KV memory - the CUDA
graphs' estimate), then stopped in kernel warm-up: vLLM 0.34's ``kernel_warmup`` imports the MiniMax M3
warm-up on every CUDA start, which imports the CuTe DSL (``cutlass``), left out of the kit's packs. So the
extensible KV cache's own sizing after warm-up (``measure_kv_cache_bytes``) and the start-up verdicts were
not observed; the kit's plugin now stands in the no-op that warm-up is for these models, for the next run.

Asserted here, from the profile stage: R with the flag unset is the whole card (1.0, not 0.92); the KV a
``kv_cache_memory_bytes`` gives is vLLM's to the token; and the KV the rules predict (R - W - O, O the fitted
model) is never above vLLM's by more than issue 17's tolerance, so the rules never promise memory this
vLLM does not find.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from vram_exporter.rules.backends.vllm import engine as vllm, runtime as vllm_runtime
from vram_exporter.rules.model import Architecture

DATA = Path(__file__).parent.parent / "data" / "vllm34-h100"
KIT = Path(__file__).parent.parent.parent / "tools" / "vllm34-kit" / "payload"
GIB = 2**30
MIB = 2**20
ROUNDING = 10 * MIB  # vLLM prints GiB with two decimals: each printed figure is within 5.12 MiB

RUNS = [json.loads(p.read_text()) for p in sorted(DATA.glob("run-*.json"))]
PROFILED = [(run, case) for run in RUNS for case in run["cases"] if "kv_available_gib" in case.get("log", {})]


def _arch(case) -> Architecture:
    return Architecture.from_config(json.loads((KIT / case["planned"]["model"] / "config.json").read_text()))


def _flags(case) -> dict:
    """The arguments the case ran with, as its plan said then (kept in the run's file at collection)."""
    return case["planned"]["llm"]


def _budget(run, case) -> int:
    idle = run["nvml_idle"]
    gmu = vllm_runtime.rules_for(run["vllm"]).gmu(_flags(case).get("gpu_memory_utilization"))
    return vllm.budget_bytes(vllm.cuda_total(idle["total"], idle["reserved"]), gmu)


def _weights(case) -> int:
    return round(float(case["log"]["weights_gib"]) * GIB)


def _measured_kv(case) -> int:
    return round(float(case["log"]["kv_available_gib"]) * GIB)


def _predicted_kv(run, case) -> int:
    overhead = vllm_runtime.fitted_runtime_overhead(
        _arch(case), version=run["vllm"], device_total_bytes=run["nvml_idle"]["total"], device_name=run["gpu"],
        max_num_batched_tokens=_flags(case)["max_num_batched_tokens"])
    return _budget(run, case) - _weights(case) - overhead


def test_the_runs_are_vllm_034_on_an_h100():
    assert RUNS and all(run["vllm"] == "0.34.0" and "H100" in run["gpu"] for run in RUNS)
    printed = {}  # each case's "non-default args" line, from the run's whole log
    for log_file in sorted(DATA.glob("run-*.log.gz")):
        for name, section in re.findall(r"===== (\S+) \(rc=[^)]*\) =====\n(.*?)(?=\n===== |\Z)",
                                         gzip.decompress(log_file.read_bytes()).decode(), re.S):
            printed[name] = re.search(r"non-default args: (\{.*\})", section).group(1)
    for _, case in PROFILED:  # the arguments kept are the ones vLLM printed as its non-default ones
        assert all(f"'{k}': {v}" in printed[case["name"]] for k, v in _flags(case).items()), case["name"]
    assert len(PROFILED) == 9  # every single-engine case but the one whose KV its flag sizes


def test_unset_utilization_is_the_whole_card():
    """Qwen2.5-1.5B with the flag unset, 0.5 and 0.9: vLLM's non-KV memory (R - W - its KV) is the same in
    all three only if R is 1.0 x the card when unset (at 0.92, the 0.20-0.33 default, it would be 6.3 GiB off)."""
    cases = {case["name"]: (run, case) for run, case in PROFILED}
    implied = {name: _budget(*cases[name]) - _weights(cases[name][1]) - _measured_kv(cases[name][1])
               for name in ("qwen1.5b-unset", "qwen1.5b-u0.5", "qwen1.5b-u0.9")}
    assert max(implied.values()) - min(implied.values()) <= 2 * ROUNDING, {k: v / MIB for k, v in implied.items()}


def test_kv_cache_memory_bytes_gives_vllms_tokens():
    """8 GiB of --kv-cache-memory-bytes: vLLM's "GPU KV cache size" in tokens is ours to the token (bytes per
    token of Qwen2.5-1.5B, 0.34's 64-token blocks: 4,681 of them)."""
    (run, case), = [(run, case) for run in RUNS for case in run["cases"] if case["name"] == "qwen1.5b-kvbytes-8g"]
    arch = _arch(case)
    assert re.search(r"reserved 8\.0 GiB memory for KV Cache", case["log"]["kv_mem_bytes_msg"])
    per_token = vllm.bytes_per_token(arch, tp=1, pp=1, dtype_bytes=vllm.kv_dtype_bytes(arch, "auto", "auto"))
    block = vllm.block_tokens(arch, None, vllm_runtime.rules_for(run["vllm"]).block_tokens)
    assert block == 64
    blocks = _flags(case)["kv_cache_memory_bytes"] // (block * per_token)
    assert blocks * block == int(case["log"]["kv_tokens"].replace(",", ""))


@pytest.mark.parametrize("run,case", PROFILED, ids=[c["name"] for _, c in PROFILED])
def test_predicted_kv_is_never_above_vllms(run, case):
    """Ours (R - W - fitted O) against vLLM's profiled KV: at most issue 17's tolerance above it (2% or
    256 MiB). Below it is the fitted O being larger than 0.34's on this card (0.04-1.6 GiB: the refit
    waits for the post-warm-up measurements)."""
    ours, theirs = _predicted_kv(run, case), _measured_kv(case)
    assert ours - theirs <= max(0.02 * theirs, 256 * MIB), (case["name"], (ours - theirs) / MIB)
