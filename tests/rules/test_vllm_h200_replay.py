"""Replay of real vLLM runs on an H200 against rulebook B (issue 17).

Data: tests/data/vllm-h200/run-{1..5}.json, made by ../shared/vllm-h200's probe (the payload it ran is in
tests/data/vllm-h200/payload; tools/vllm_h200_collect.py turned the device's output into these files).
Each case: vLLM 0.26.0 started with dummy weights from a config.json; the worker's own bytes were read.

For every case the rulebook predicts, from the GPU's NVML reading, the model's config.json, its weights
and the flags, alone: the verdict (starts, or which error), the KV memory, the blocks and the longest
context; O comes from rules/backends/vllm/runtime.py's fitted model, not from the case (and, side by side, from the
constant O the rulebook used before: test_fitted_overhead_beats_the_constant). Targets (issue 17): verdict
equal; KV within 2% or 256 MiB, whichever is larger; the longest context within one block.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from vram_exporter.rules.backends.vllm import engine as vllm, runtime as vllm_runtime
from vram_exporter.rules.model import RUNTIME_OVERHEAD_FALLBACK, Architecture
from vram_exporter.rules.flags import vllm_params

DATA = Path(__file__).parent.parent / "data" / "vllm-h200"
MODELS = DATA / "payload" / "models"
GIB = 2**30
MIB = 2**20


RUN_FILES = sorted(DATA.glob("run-*.json"))


def _runs():
    return [json.loads(p.read_text()) for p in RUN_FILES]


def _cases():
    out = []
    for run in _runs():
        for case in run["cases"]:
            if "rc" in case and case["rc"] != "timeout":  # skipped ones and the one cut by the deadline
                out.append((run, case))
    return out


CASES = _cases()


# What each case asked for, from the plans the probe ran (a case that failed never printed its kwargs).
PLANNED = {c["name"]: c for p in sorted((DATA / "payload").glob("plan-*.json"))
           for c in json.loads(p.read_text())["cases"]}


def _model_dir(case) -> str:
    return Path(PLANNED[case["name"]]["model"]).name


def _config(case) -> dict:
    return json.loads((MODELS / _model_dir(case) / "config.json").read_text())


def _flags(case) -> dict:
    """The engine arguments the case gave, the serve case's from its command line (vLLM's spellings)."""
    planned = PLANNED[case["name"]]
    if planned.get("mode") != "serve":
        if "llm_kwargs" in case:
            assert {k: case["llm_kwargs"][k] for k in planned["llm"]} == planned["llm"]
        return planned["llm"]
    p = vllm_params(planned["args"])
    return {"gpu_memory_utilization": p.gpu_memory_utilization, "max_model_len": p.max_model_len,
            "kv_cache_dtype": p.kv_cache_dtype, "serve": True}


def _weights_by_model() -> dict[str, int]:
    """Weights as vLLM loaded them (model_runner.model_memory_usage), per model; the serve case, whose
    worker was not read, from vLLM's own summary line (GiB, two decimals)."""
    w = {}
    for _, case in CASES:
        if (case.get("worker") or {}).get("weights"):
            w[_model_dir(case)] = case["worker"]["weights"]
    for _, case in CASES:
        m = re.search(r"Actual usage is ([\d.]+) GiB for weight", case["log"].get("usage_summary", ""))
        if m and _model_dir(case) not in w:
            w[_model_dir(case)] = round(float(m.group(1)) * GIB)
    return w


WEIGHTS = _weights_by_model()


def _context_overhead() -> int:
    """C_pre measured on this GPU: NVML free with nothing running minus the worker's free at its snapshot."""
    seen = {run["nvml_idle"]["free"] - case["worker"]["init_free"]
            for run, case in CASES if (case.get("worker") or {}).get("init_free") and case["nvml_before"]["used"] == 0}
    assert len(seen) == 1, seen  # the same in every case without a second process
    return seen.pop()


def _measured(run, case) -> dict:
    log, worker, config = case["log"], case.get("worker") or {}, case.get("config") or {}
    if "startup_error" in log:
        verdict = "free_memory"
    elif "no_kv_error" in log:
        verdict = "no_kv"
    elif "kv_error" in log:
        verdict = "kv_short"
    else:
        assert case["rc"] == 0, case["name"]
        verdict = "starts"
    kv = worker.get("kv_available")
    if kv is None and "kv_available_gib" in log:
        kv = float(log["kv_available_gib"]) * GIB  # printed with two decimals
    blocks = worker.get("num_blocks")
    if blocks is None:
        for line in case.get("cache_config_info", []):
            blocks = int(re.search(r'num_gpu_blocks="(\d+)"', line).group(1))
    return {"verdict": verdict, "kv": kv, "blocks": blocks, "max_model_len": config.get("max_model_len"),
            "engine_max_seq_len": case.get("engine_max_seq_len")}


def _predict(run, case, overhead: str = "fitted") -> dict:
    rules = vllm_runtime.rules_for(run["vllm"])
    cfg, flags = _config(case), _flags(case)
    arch = Architecture.from_config(cfg)
    idle = run["nvml_idle"]
    t_cuda = vllm.cuda_total(idle["total"], idle["reserved"])
    gmu = flags.get("gpu_memory_utilization") or 0.92
    budget = vllm.budget_bytes(t_cuda, gmu)
    usage = "serve" if flags.get("serve") else "llm"
    batch = flags.get("max_num_batched_tokens") or vllm_runtime.default_scheduler_limits(
        idle["total"], run["gpu"], usage)[0]
    per_token = vllm.bytes_per_token(arch, tp=1, pp=1, dtype_bytes=vllm.kv_dtype_bytes(
        arch, flags.get("kv_cache_dtype") or "auto", "auto"))
    block = vllm.block_tokens(arch, None)
    wanted = flags.get("max_model_len")
    target = arch.default_max_model_len if wanted in (None, -1) else wanted
    overhead = (vllm_runtime.runtime_overhead(arch, batch).total(rules) if overhead == "fitted"
                else RUNTIME_OVERHEAD_FALLBACK)
    kv = budget - WEIGHTS[_model_dir(case)] - overhead
    free = case["nvml_before"]["free"] - _context_overhead()
    held = rules.held_back_blocks
    if free < budget:
        verdict = "free_memory"
    elif kv <= 0:
        verdict = "no_kv"
    elif wanted != -1 and kv < vllm.required_kv_bytes(arch, target, block, per_token, held_back=held,
                                                      batch_tokens=2 * batch):  # async: 2 batches in flight
        verdict = "kv_short"
    else:
        verdict = "starts"
    longest = vllm.longest_context(arch, kv, block, per_token, arch.max_position_embeddings, held_back=held)
    return {"verdict": verdict, "kv": kv, "budget": budget, "blocks": kv // (block * per_token) if kv > 0 else 0,
            "block_bytes": block * per_token, "max_model_len": min(longest, target) if wanted == -1 else target,
            "longest": longest, "free": free, "arch": arch, "per_token": per_token, "block": block, "batch": batch}


@pytest.mark.parametrize("run,case", CASES, ids=[c["name"] for _, c in CASES])
def test_verdict_kv_and_blocks_match_real_vllm(run, case):
    got, want = _predict(run, case), _measured(run, case)
    assert got["verdict"] == want["verdict"], (case["name"], got["verdict"], want["verdict"])
    if want["kv"] is None:  # refused before profiling: nothing allocated to compare
        return
    tolerance = max(0.02 * abs(want["kv"]), 256 * MIB)
    assert abs(got["kv"] - want["kv"]) <= tolerance, (case["name"], (got["kv"] - want["kv"]) / MIB)
    if want["blocks"] is not None:
        assert abs(got["blocks"] - want["blocks"]) <= tolerance // got["block_bytes"] + 1
    if want["max_model_len"] is not None and want["verdict"] == "starts":
        # auto-fit: the longest context from our KV is within the KV tolerance of vLLM's; given vLLM's own
        # KV it is within one block (test_longest_context_from_vllms_own_kv_is_exact).
        assert abs(got["max_model_len"] - want["max_model_len"]) <= (tolerance // got["block_bytes"] + 1) * got["block"]


@pytest.mark.parametrize("run,case", CASES, ids=[c["name"] for _, c in CASES])
def test_budget_is_exactly_vllms(run, case):
    got = _predict(run, case)
    worker = case.get("worker") or {}
    if worker.get("requested") is not None:
        assert got["budget"] == worker["requested"]
    m = re.search(r"\(([\d.]+), ([\d.]+) GiB\)", case["log"].get("startup_error", ""))
    if m:  # the error's own numbers: u and R, and the free memory after the new process's context
        assert f"{got['budget'] / GIB:.1f}" == m.group(2)
        free = re.search(r"\(([\d.]+)/([\d.]+) GiB\)", case["log"]["startup_error"]).group(1)
        assert f"{got['free'] / GIB:.2f}" == free


@pytest.mark.parametrize("run,case", [(r, c) for r, c in CASES if (c.get("worker") or {}).get("num_blocks")],
                         ids=lambda x: x["name"] if isinstance(x, dict) and "name" in x else "")
def test_blocks_and_page_size_from_vllms_own_kv_are_exact(run, case):
    """Given vLLM's own KV bytes, our bytes per token and block size give its blocks to the block:
    GQA (Qwen, Llama), fp8 KV (Llama), MLA (DeepSeek-V2-Lite, FLASH_ATTN_MLA)."""
    got, worker = _predict(run, case), case["worker"]
    (group,) = worker["groups"]
    assert group["block_size"] == got["block"]
    assert group["page_size_bytes"] * _config(case)["num_hidden_layers"] == got["block_bytes"]
    assert worker["kv_available"] // got["block_bytes"] == worker["num_blocks"]


def test_longest_context_from_vllms_own_kv_is_exact_and_shows_no_held_back_block_in_026():
    (run, case), = [(r, c) for r, c in CASES if c["name"] == "llama8b-u0.20-autofit"]
    got, worker = _predict(run, case), case["worker"]
    args = (got["arch"], worker["kv_available"], got["block"], got["per_token"], 131072)
    assert vllm.longest_context(*args, held_back=vllm_runtime.rules_for(run["vllm"]).held_back_blocks) \
        == case["config"]["max_model_len"] == 97120
    # 0.33's rule (one block held back) would give one block less: the version is a real setting.
    assert vllm.longest_context(*args, held_back=1) == 97120 - 16
    assert vllm_runtime.rules_for("0.33.0").held_back_blocks == 1


@pytest.mark.parametrize("name", ["llama8b-u0.20-128k-kvshort", "mistral7b-sw4096-u0.1085-32k-kvshort"])
def test_kv_short_error_numbers(name):
    """vLLM 0.26's "To serve at least one request" error: the KV it needs is our minimum (full attention:
    ceil(L/B) blocks, no held-back block; sliding window 4096: ceil((window - 1 + 2 x 8192) / B) + 1
    blocks, two batches in flight), and its estimated maximum length is our longest context for the KV
    it printed (to the two decimals it prints)."""
    (run, case), = [(r, c) for r, c in CASES if c["name"] == name]
    got = _predict(run, case)
    held = vllm_runtime.rules_for(run["vllm"]).held_back_blocks
    text = case["log"]["kv_error"]
    length = int(re.search(r"max seq len \((\d+)\)", text).group(1))
    needed = vllm.required_kv_bytes(got["arch"], length, got["block"], got["per_token"], held_back=held,
                                    batch_tokens=2 * got["batch"])
    assert f"({needed / GIB:.1f} GiB KV cache is needed" in text
    estimate = int(re.search(r"estimated maximum model length is (\d+)", text).group(1))
    kv_printed = float(re.search(r"available KV cache memory \(([\d.]+) GiB\)", text).group(1))
    fitting = [b for b in range(1, 20000)
               if vllm.longest_context(got["arch"], b * got["block_bytes"], got["block"], got["per_token"], None,
                                       held_back=held, batch_tokens=2 * got["batch"]) == estimate]
    assert fitting, "no KV gives vLLM's estimate under our rules"
    lo, hi = min(fitting) * got["block_bytes"], (max(fitting) + 1) * got["block_bytes"]
    assert lo / GIB - 0.005 <= kv_printed <= hi / GIB + 0.005


def test_default_context_and_batch_are_vllms():
    """The three suspected rulebook errors, against what vLLM did: LongRoPE's default context, serve's
    and the LLM class's default batch on an H200, and MLA's block size."""
    by_name = {c["name"]: (r, c) for r, c in CASES}
    run, phi = by_name["serve-phi3.5-underscore-u0.5"]
    arch = Architecture.from_config(_config(phi))
    assert arch.max_position_embeddings == 131072
    assert phi["engine_max_seq_len"] == arch.default_max_model_len == 4096
    serve_batch, serve_seqs = vllm_runtime.default_scheduler_limits(run["nvml_idle"]["total"], run["gpu"], "serve")
    assert f"max_num_batched_tokens={serve_batch}." in phi["log"]["chunked_prefill"]
    assert vllm.default_max_num_batched_tokens(run["nvml_idle"]["total"], run["gpu"]) == serve_batch == 8192
    # the underscore spelling reached vLLM (GPUStack does not read it: docs/rulebooks.md#a-gpustacks-placement)
    assert vllm_params(phi["serve_cmd"][5:]).spelled_with_underscore
    assert any('gpu_memory_utilization="0.5"' in line for line in phi["cache_config_info"])
    _, q05 = by_name["qwen0.5b-u0.9-llmdefaults"]
    assert "max_num_batched_tokens" not in q05["llm_kwargs"]
    assert (q05["config"]["max_num_batched_tokens"], q05["config"]["max_num_seqs"]) == \
        vllm_runtime.default_scheduler_limits(run["nvml_idle"]["total"], run["gpu"], "llm")
    assert serve_seqs == q05["config"]["max_num_seqs"] == 1024
    _, ds = by_name["dsv2lite-u0.90-default-len"]
    assert ds["worker"]["attn_backends"] == ["FLASH_ATTN_MLA"]
    assert ds["worker"]["groups"][0]["block_size"] == vllm.block_tokens(Architecture.from_config(_config(ds)), None)


def test_memory_held_by_another_process_changes_only_the_start_up_check():
    by_name = {c["name"]: c for _, c in CASES}
    held, alone = by_name["qwen1.5b-u0.5-hold40g"], by_name["qwen1.5b-u0.5-b2048-s256"]
    assert held["nvml_before"]["used"] > 40 * GIB
    assert held["worker"]["requested"] == alone["worker"]["requested"]  # R ignores the other process
    assert held["worker"]["non_torch"] == alone["worker"]["non_torch"]


def _fresh_peaks():
    return [(Architecture.from_config(_config(c)), c["config"]["max_num_batched_tokens"], c["worker"]["peak_activation"])
            for _, c in CASES if c.get("compile") == "fresh" and (c.get("worker") or {}).get("peak_activation")]


def test_peak_model_is_the_fit_of_the_measurements():
    fitted = vllm_runtime.fit_peak_model(_fresh_peaks())
    model = vllm_runtime.H200_VLLM_026_PEAK
    assert math.isclose(fitted.first_start_extra, model.first_start_extra, rel_tol=0.005)
    assert math.isclose(fitted.moe_first_start_extra, model.moe_first_start_extra, rel_tol=0.005)
    # the batch matters: Qwen2.5-1.5B's first starts peak higher with more tokens, and the model says so
    qwen = sorted((n, p) for a, n, p in _fresh_peaks() if a.hidden_size == 1536)
    assert len({n for n, _ in qwen}) == 4 and [p for _, p in qwen] == sorted(p for _, p in qwen)
    # every first start within the half-range of the extras: 122 MiB dense, 17 MiB MoE
    for arch, n, peak in _fresh_peaks():
        assert abs(model.predict(arch, n) - peak) <= (17 if arch.moe else 122) * MIB, (arch, n)
    # seven shapes, five batch sizes, MHA among them (Llama-2-7B, Phi-3.5-mini)
    shapes = {(a.hidden_size, a.intermediate_size, a.moe) for a, _, _ in _fresh_peaks()}
    assert len(shapes) == 7 and len({n for _, n, _ in _fresh_peaks()}) == 5
    assert {a.hidden_size for a, _, _ in _fresh_peaks() if a.kv_heads == a.attention_heads and not a.mla} == {4096, 3072}


def _sweeps():
    return [(c, Architecture.from_config(_config(c))) for _, c in CASES if c.get("sweep")]


def test_forward_pass_is_three_times_mlp_plus_hidden_per_token():
    """The sweep inside each started worker (payload/run_probe.py::sweep): profile_run's forward pass at
    512-32768 tokens peaks at tokens x dtype x 3 x (MLP width + hidden) (+ at most the router's logits), to
    2 bytes a token (4 MiB at the fewest tokens). The first point of each sweep also pays for a one-off allocation, so it is left out."""
    assert len(_sweeps()) == 11
    for case, arch in _sweeps():
        points = [r for r in case["sweep"]["forward"] if "error" not in r][1:]
        assert len(points) >= 2, case["name"]
        for r in points:
            extra = r["forward_peak"] - vllm_runtime.forward_peak_bytes(arch, r["tokens"])
            router = arch.dtype_bytes * arch.moe.experts * r["tokens"] if arch.moe else 0
            assert 0 <= extra <= max(2.1 * r["tokens"], 4 * MIB) + router, (case["name"], r)


def test_vllms_peak_is_the_forward_pass_plus_a_compile_extra():
    """The worker's own peak, against the forward pass at the engine's batch: 32-218 MiB above it when
    torch.compile loads its cache (33 MiB but for Qwen2.5-1.5B at 2048 tokens), 92-335 MiB (dense) and
    479-513 MiB (MoE) on a first start."""
    for _, c in CASES:
        w = c.get("worker") or {}
        if not w.get("peak_activation"):
            continue
        extra = w["peak_activation"] - vllm_runtime.forward_peak_bytes(
            Architecture.from_config(_config(c)), c["config"]["max_num_batched_tokens"])
        moe = Architecture.from_config(_config(c)).moe is not None
        lo, hi = {"cache-hit": (31, 219), "fresh": (478, 514) if moe else (91, 336)}[c["compile"]]
        assert lo * MIB <= extra <= hi * MIB, (c["name"], extra / MIB)


def test_cache_hit_starts_peak_lower_than_first_starts():
    """torch.compile loading its cache instead of compiling: same model and batch, lower peak. The model
    predicts the first start (the higher one)."""
    by = {}
    for _, c in CASES:
        w = c.get("worker") or {}
        if w.get("peak_activation"):
            by.setdefault((_model_dir(c), c["config"]["max_num_batched_tokens"]), {})[c["compile"]] = w["peak_activation"]
    pairs = [v for v in by.values() if len(v) == 2]
    assert pairs and all(v["cache-hit"] < v["fresh"] for v in pairs)


def test_non_torch_and_graph_bound():
    for _, c in CASES:
        w = c.get("worker") or {}
        if w.get("non_torch") is not None:
            assert abs(w["non_torch"] - vllm_runtime.H200_VLLM_026_NON_TORCH) <= 4 * MIB
        if "graph_capture" in c["log"]:
            took = float(c["log"]["graph_capture"][1]) * GIB
            assert vllm_runtime.runtime_overhead(Architecture.from_config(_config(c)), 8192).cuda_graphs \
                >= took - 0.005 * GIB


def test_suggested_runtime_overhead_tool():
    import subprocess
    import sys

    cfg = MODELS / "qwen2.5-32b" / "config.json"
    out = subprocess.run([sys.executable, "tools/vllm_runtime_overhead.py", str(cfg), "--gpu-total-gib", "139.8",
                          "--gpu-name", "NVIDIA H200", "--vllm-version", "0.26"], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent.parent, check=True).stdout
    o = int(re.search(r"runtime_overhead: (\d+)", out).group(1))
    (_, case), = [(r, c) for r, c in CASES if c["name"] == "qwen32b-u0.90"]
    measured = case["worker"]["peak_activation"] + case["worker"]["non_torch"]
    assert abs(o - measured) <= 122 * MIB and "batch 8192 tokens" in out
    # 0.33 counts the CUDA graphs in O: more
    assert vllm_runtime.fitted_runtime_overhead(Architecture.from_config(json.loads(cfg.read_text())),
                                                device_total_bytes=int(139.8 * GIB), device_name="NVIDIA H200",
                                                version="0.33") > o


def side_by_side() -> list[dict]:
    """Per measured case that allocated KV: vLLM's KV and our prediction's miss with the fitted O and with
    the 1 GiB constant (print it: python3 -c 'from tests.test_vllm_h200_replay import main; main()')."""
    rows = []
    for run, case in CASES:
        want = _measured(run, case)
        if want["kv"] is None:
            continue
        fitted, constant = _predict(run, case), _predict(run, case, overhead="constant")
        tolerance = max(0.02 * abs(want["kv"]), 256 * MIB)
        rows.append({"case": case["name"], "kv": want["kv"], "blocks": want["blocks"], "tolerance": tolerance,
                     "fitted": fitted["kv"] - want["kv"], "constant": constant["kv"] - want["kv"],
                     "fitted_blocks": fitted["blocks"], "constant_blocks": constant["blocks"],
                     "verdicts": (want["verdict"], fitted["verdict"], constant["verdict"])})
    return rows


def main() -> None:
    print(f"{'case':42s} {'vLLM KV GiB':>11s} {'blocks':>7s} {'fitted O: miss MiB':>19s} {'constant O: miss MiB':>21s}"
          f"  verdict vLLM/fitted/constant")
    for r in side_by_side():
        print(f"{r['case']:42s} {r['kv'] / GIB:11.2f} {r['blocks'] or 0:7d} {r['fitted'] / MIB:19.0f} "
              f"{r['constant'] / MIB:21.0f}  {'/'.join(r['verdicts'])}")


def test_fitted_overhead_beats_the_constant():
    """The fitted O meets the KV target on every case; the constant (1 GiB) misses it on the large batches
    (Llama-3.1-8B and Qwen2.5-32B at 16k-32k tokens peak at 3.1-3.5 GiB) and is worse in total."""
    rows = side_by_side()
    assert len(rows) >= 20
    assert all(abs(r["fitted"]) <= r["tolerance"] for r in rows)
    missed_by_constant = {r["case"] for r in rows if abs(r["constant"]) > r["tolerance"]}
    assert {"llama8b-u0.5-b32768-s512", "qwen32b-u0.9-b16384-s256"} <= missed_by_constant
    assert sum(abs(r["fitted"]) for r in rows) < sum(abs(r["constant"]) for r in rows) / 2


def test_vllm_serve_with_no_flags_runs_the_defaults_the_rulebook_assumes():
    """`vllm serve MODEL` alone (run-4): u = 0.92, serve's H200 batch of 8192 tokens, max_model_len =
    max_position_embeddings; its KV is predicted within target (test_verdict_kv_and_blocks_match_real_vllm)."""
    (run, case), = [(r, c) for r, c in CASES if c["name"] == "serve-qwen1.5b-noflags"]
    assert case["serve_cmd"][5:] == ["--load-format", "dummy", "--skip-tokenizer-init", "--port", "8011"]
    assert any('gpu_memory_utilization="0.92"' in line for line in case["cache_config_info"])
    got = _predict(run, case)
    assert f"max_num_batched_tokens={got['batch']}." in case["log"]["chunked_prefill"] and got["batch"] == 8192
    assert case["engine_max_seq_len"] == got["arch"].default_max_model_len == 32768
    assert got["blocks"] - _measured(run, case)["blocks"] in range(-got["blocks"] // 50, 1)  # at most 2% fewer


def test_the_first_start_extra_is_the_start_ups_own_not_the_samplers():
    """run-6: the extra over the forward pass is reproducible to the byte (the same case on two machines),
    does not follow max_num_seqs (Llama-3.1-8B at 8192 tokens, 256 and 1024 sequences), and is gone when
    vLLM's own profile_run runs again in the started worker (it then peaks at exactly the larger of the
    forward pass and the sweep's sampler pass over what the forward pass keeps)."""
    by = {c["name"]: c for _, c in CASES}
    assert by["qwen1.5b-u0.5-b2048-s256"]["worker"]["peak_activation"] == \
        by["qwen1.5b-u0.5-b2048-s256-again"]["worker"]["peak_activation"]
    assert abs(by["llama8b-u0.5-b8192-s256"]["worker"]["peak_activation"]
               - by["llama8b-u0.45-64k"]["worker"]["peak_activation"]) < MIB
    for name in ("qwen1.5b-u0.5-b2048-s256-again", "qwen1.5b-u0.5-b2048-s1024", "llama8b-u0.5-b8192-s256"):
        sweep = by[name]["sweep"]
        top = max(sweep["forward"], key=lambda r: r["tokens"])
        rows = min(top["tokens"], by[name]["config"]["max_num_seqs"])
        (sampler,) = [r["sampler_peak"] for r in sweep["sampler"] if r["seqs"] == rows]
        assert sweep["profile_run_peak"] == max(top["forward_peak"], top["held"] + sampler), name
    # after start-up the sampler leads Qwen2.5-1.5B at 2048 tokens (622 MB at 256 rows, 16 bytes a row x
    # vocabulary entry); at start-up it never did: vLLM's peak there stayed below that
    assert by["qwen1.5b-u0.5-b2048-s256-again"]["worker"]["peak_activation"] < \
        by["qwen1.5b-u0.5-b2048-s256-again"]["sweep"]["profile_run_peak"]
