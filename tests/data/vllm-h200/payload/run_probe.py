#!/usr/bin/env python3
"""Real-vLLM memory probe for vram-exporter's rulebook B (vLLM 0.26.0 + torch 2.11.0+cu130, one H200).

Runs each case of a plan in its own process (a fresh CUDA context each time), with dummy weights
(load_format="dummy") from a folder that holds only config.json, and no tokenizer
(skip_tokenizer_init=True), so nothing is downloaded. Writes one JSON line per case to
OUT/results.jsonl and every case's full output to OUT/log.txt.

Per case it records:
  nvml_before / nvml_after  NVML v2 memory (total, reserved, free, used) and per-process usage
  worker                    the exact bytes vLLM's GPU worker computed (collective_rpc):
      init_total, init_free       MemorySnapshot at worker start (cudaMemGetInfo: T_cuda, free after context)
      requested                   R = ceil(init_total * gpu_memory_utilization)
      weights                     model_runner.model_memory_usage
      peak_activation, non_torch, cudagraph_estimate, kv_available  (KV = R - weights - O)
      num_blocks, groups[block_size, page_size_bytes], attn_backends
  config                    max_model_len, block_size, num_gpu_blocks, max_num_batched_tokens, max_num_seqs
  log                       the INFO lines vLLM prints (weights, KV memory, KV tokens, graphs, errors)

  sweep                     (plan key "sweep") profile_run's two passes over other batches, after start-up

Usage (device):  python3 run_probe.py --plan plan-1.json --out $OUT [--deadline-s 570]
Case mode (internal): python3 run_probe.py --case '<json>'
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

LOG_PATTERNS = {
    "weights_gib": r"Model loading took ([\d.]+) GiB memory",
    "kv_available_gib": r"Available KV cache memory: (-?[\d.]+) GiB",
    "kv_tokens": r"GPU KV cache size: ([\d,]+) tokens",
    "max_concurrency": r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x",
    "cudagraph_estimate_gib": r"Estimated CUDA graph memory: ([\d.]+) GiB total",
    "graph_capture": r"Graph capturing finished in (\d+) secs, took ([\d.]+) GiB",
    "backend": r"Using (\S+?)\.? (?:attention )?backend",
    "startup_error": r"(Free memory on device \S+ \(.*?\) on startup is less than desired GPU memory utilization \(.*?\)\.)",
    "kv_error": r"(To serve at least one request with the model's max seq len .*?)(?: Try increasing|$)",
    "no_kv_error": r"(No available memory for the cache blocks\.)",
    "autofit": r"(Auto-fit max_model_len: .*)",
    "profile": r"(Memory profiling takes .*)",
    "sampler": r"((?:Using )?FlashInfer.*sampl.*)",
    "cudagraph_pool_gib": r"CUDA graph pool memory: ([\d.]+) GiB \(actual\), ([\d.]+) GiB \(estimated\)",
    "engine_config": r"(Initializing a V1 LLM engine .*?max_seq_len=\d+.*?)(?:, download_dir|$)",
    "max_seq_len": r"max_seq_len=(\d+)",
    "chunked_prefill": r"(Chunked prefill is enabled with max_num_batched_tokens=\d+.*)",
    "sched_defaults": r"((?:max_num_seqs|max_num_batched_tokens)\S*\s*[=:]\s*\d+.*)",
    "longrope": r"(.*(?:LongRoPE|longrope|original_max_position_embeddings).*)",
    "usage_summary": r"(Actual usage is .*? GiB for CUDAGraph memory\. Replace gpu_memory_utilization config with `--kv-cache-memory=\d+`.*?Current kv cache memory in use is [\d.]+ GiB\.)",
}


def nvml_snapshot():
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        d = {}
        try:
            m = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            d.update(total=m.total, reserved=m.reserved, free=m.free, used=m.used)
        except Exception:
            m = pynvml.nvmlDeviceGetMemoryInfo(h)
            d.update(total=m.total, free=m.free, used=m.used)
        d["procs"] = [{"pid": p.pid, "used": p.usedGpuMemory}
                      for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
        name = pynvml.nvmlDeviceGetName(h)
        d["name"] = name.decode() if isinstance(name, bytes) else name
        drv = pynvml.nvmlSystemGetDriverVersion()
        d["driver"] = drv.decode() if isinstance(drv, bytes) else drv
        pynvml.nvmlShutdown()
        return d
    except Exception as e:  # no NVML: a CPU dry run
        return {"error": repr(e)}


def collect(self):
    """Runs inside vLLM's GPU worker (collective_rpc): the worker's own numbers, in bytes."""
    import torch
    mr = self.model_runner
    s = self.init_snapshot
    out = {
        "init_total": s.total_memory, "init_free": s.free_memory, "init_cuda": s.cuda_memory,
        "init_torch": s.torch_memory, "init_non_torch": s.non_torch_memory,
        "requested": getattr(self, "requested_memory", None),
        "weights": int(getattr(mr, "model_memory_usage", 0) or 0),
        "peak_activation": getattr(self, "peak_activation_memory", None),
        "non_torch": getattr(self, "non_torch_memory", None),
        "cudagraph_estimate": getattr(self, "cudagraph_memory_estimate", None),
        "kv_available": getattr(self, "available_kv_cache_memory_bytes", None),
    }
    kc = getattr(mr, "kv_cache_config", None)
    if kc is not None:
        out["num_blocks"] = kc.num_blocks
        out["kv_tensor_bytes"] = sum(t.size for t in kc.kv_cache_tensors)
        out["groups"] = [{"layers": len(g.layer_names), "spec": type(g.kv_cache_spec).__name__,
                          "block_size": g.kv_cache_spec.block_size,
                          "page_size_bytes": g.kv_cache_spec.page_size_bytes}
                         for g in kc.kv_cache_groups]
    try:
        out["attn_backends"] = sorted({g.backend.get_name() for gs in mr.attn_groups for g in gs})
    except Exception as e:
        out["attn_backends"] = repr(e)
    free, total = torch.cuda.mem_get_info()
    out.update(after_free=free, after_total=total, torch_reserved=torch.cuda.memory_reserved(),
               torch_max_allocated=torch.cuda.max_memory_allocated())
    return out


def sweep(self, tokens, seqs):
    """Runs inside vLLM's GPU worker after start-up: the transient torch memory of profile_run's two
    passes, one at a time, over other batches than the engine's own (issue 17: O as a model of the
    batch). For n tokens: the forward pass's peak above what was allocated before it, and what it keeps
    (hidden states) while the sampler runs; for k rows: the sampler pass's peak (logits k x vocab).
    vLLM's own peak for (n, k) is max(forward_peak(n), held(n) + sampler_peak(k))
    (vllm/v1/worker/gpu_model_runner.py::profile_run, 0.26.0)."""
    import gc
    import torch
    mr = self.model_runner
    try:
        from vllm.config import set_current_vllm_config
        ctx = lambda: set_current_vllm_config(mr.vllm_config)
    except Exception:
        import contextlib
        ctx = contextlib.nullcontext
    out = {"forward": [], "sampler": []}
    last_kept = None
    with torch.inference_mode(), ctx():
        for n in tokens:
            rec = {"tokens": n}
            try:
                gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                a0 = torch.cuda.memory_allocated()
                h, last = mr._dummy_run(n, is_profile=True)
                torch.cuda.synchronize()
                rec.update(forward_peak=torch.cuda.max_memory_allocated() - a0,
                           held=torch.cuda.memory_allocated() - a0, rows=int(last.shape[0]))
                last_kept = last[:1].clone()
                del h, last
            except Exception as e:
                rec["error"] = repr(e)[:400]
            out["forward"].append(rec)
        for k in seqs:
            rec = {"seqs": k}
            try:
                gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()
                rows = last_kept.expand(k, -1).contiguous()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                a1 = torch.cuda.memory_allocated()
                o = mr._dummy_sampler_run(rows)
                torch.cuda.synchronize()
                rec["sampler_peak"] = torch.cuda.max_memory_allocated() - a1
                del o, rows
            except Exception as e:
                rec["error"] = repr(e)[:400]
            out["sampler"].append(rec)
        # vLLM's own profile_run again, now that the engine is up (nothing compiles any more): its peak
        # above what was allocated before it, as memory_profiling measures it
        try:
            gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            a2 = torch.cuda.memory_allocated()
            mr.profile_run()
            torch.cuda.synchronize()
            out["profile_run_peak"] = torch.cuda.max_memory_allocated() - a2
        except Exception as e:
            out["profile_run_error"] = repr(e)[:400]
    gc.collect(); torch.cuda.empty_cache()
    return out


def run_case_inprocess(case):
    """Child process: build the engine, read its numbers, print one RESULT line."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    kw = {"model": case["model"], "load_format": "dummy", "skip_tokenizer_init": True, "seed": 0}
    kw.update(case.get("llm", {}))
    res = {"name": case["name"], "llm_kwargs": kw}
    t0 = time.time()
    llm = LLM(**kw)
    res["init_s"] = round(time.time() - t0, 1)
    res["worker"] = llm.collective_rpc(collect)[0]
    vc = llm.llm_engine.vllm_config
    res["config"] = {
        "max_model_len": vc.model_config.max_model_len,
        "block_size": vc.cache_config.block_size,
        "num_gpu_blocks": vc.cache_config.num_gpu_blocks,
        "gpu_memory_utilization": vc.cache_config.gpu_memory_utilization,
        "kv_cache_dtype": str(vc.cache_config.cache_dtype),
        "max_num_batched_tokens": vc.scheduler_config.max_num_batched_tokens,
        "max_num_seqs": vc.scheduler_config.max_num_seqs,
        "cudagraph_mode": str(vc.compilation_config.cudagraph_mode),
        "compile_mode": str(vc.compilation_config.mode),
    }
    res["nvml_engine_up"] = nvml_snapshot()
    print("RESULT " + json.dumps(res), flush=True)   # before generate: a failing generate keeps the numbers
    if case.get("sweep"):
        limit = vc.scheduler_config.max_num_batched_tokens
        tokens = [n for n in case["sweep"]["tokens"] if n <= limit]
        seqs = [k for k in case["sweep"]["seqs"] if k <= vc.scheduler_config.max_num_seqs]
        t1 = time.time()
        try:
            sw = llm.collective_rpc(sweep, args=(tokens, seqs))[0]
        except Exception as e:
            sw = {"error": repr(e)[:500]}
        sw["s"] = round(time.time() - t1, 1)
        print("RESULT " + json.dumps({"sweep": sw}), flush=True)
    if case.get("generate", True):
        try:
            out = llm.generate([TokensPrompt(prompt_token_ids=list(range(100, 132)))],
                               SamplingParams(max_tokens=8, detokenize=False, temperature=0.8, top_p=0.9))
            print("RESULT " + json.dumps({"generated_tokens": len(out[0].outputs[0].token_ids)}), flush=True)
        except Exception as e:
            print("RESULT " + json.dumps({"generate_error": repr(e)[:500]}), flush=True)


def hold_memory(nbytes):
    """Start a process that holds nbytes of GPU memory (for the start-up check)."""
    code = ("import torch,time,sys; x=torch.empty(%d,dtype=torch.uint8,device='cuda'); "
            "print('HELD',flush=True); time.sleep(3600)" % nbytes)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    return p


def parse_log(text):
    found = {}
    for k, pat in LOG_PATTERNS.items():
        m = re.findall(pat, text)
        if m:
            found[k] = m[-1] if k not in ("backend", "sampler") else sorted(set(map(str, m)))
    return found


def run_serve(case, env, timeout):
    """`vllm serve` end to end; numbers come from its log and /metrics."""
    import threading
    port = str(case.get("port", 8011))
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", case["model"],
           "--load-format", "dummy", "--skip-tokenizer-init", "--port", port] + case.get("args", [])
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines, metrics, t0 = [], "", time.time()
    reader = threading.Thread(target=lambda: [lines.append(l) for l in p.stdout], daemon=True)
    reader.start()
    while time.time() - t0 < timeout:
        if any("Application startup complete" in l for l in lines[-50:]):
            try:
                metrics = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=10).read().decode()
            except Exception as e:
                metrics = "metrics error: %r" % e
            break
        if p.poll() is not None:
            break
        time.sleep(1)
    nv = nvml_snapshot()
    try:
        os.killpg(p.pid, signal.SIGINT)
        p.wait(timeout=30)
    except Exception:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except Exception:
            pass
    reader.join(timeout=5)
    info = [l for l in metrics.splitlines() if l.startswith("vllm:cache_config_info")]
    return "".join(lines), {"nvml_engine_up": nv, "cache_config_info": info, "serve_cmd": cmd,
                            "metrics_text": metrics[:400_000]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--deadline-s", type=float, default=570)
    ap.add_argument("--case")
    a = ap.parse_args()
    if a.case:
        return run_case_inprocess(json.loads(a.case))
    start = time.time()
    plan = json.load(open(a.plan))
    os.makedirs(a.out, exist_ok=True)
    results = open(os.path.join(a.out, "results.jsonl"), "a")
    log = open(os.path.join(a.out, "log.txt"), "a")
    results.write(json.dumps({"name": "_machine", "nvml": nvml_snapshot(),
                              "python": sys.version.split()[0]}) + "\n")
    results.flush()
    done_path = "/tmp/vram_probe_done.txt"   # names of cases already run on this (warm) machine
    for case in plan["cases"]:
        done = set(open(done_path).read().split()) if os.path.exists(done_path) else set()
        if case["name"] in done:
            continue
        left = a.deadline_s - (time.time() - start)
        need = case.get("min_s", 60)
        if left < need:
            results.write(json.dumps({"name": case["name"], "skipped": "deadline", "left_s": round(left)}) + "\n")
            continue
        case["model"] = os.path.join(HERE, case["model"]) if not case["model"].startswith("/") else case["model"]
        env = dict(os.environ)
        env.update({k: str(v) for k, v in case.get("env", {}).items()})
        holder = hold_memory(int(case["hold_bytes"])) if case.get("hold_bytes") else None
        rec = {"name": case["name"], "nvml_before": nvml_snapshot()}
        t0 = time.time()
        timeout = min(case.get("timeout_s", 240), left - 5)
        if case.get("mode") == "serve":
            text, extra = run_serve(case, env, timeout)
            rec.update(extra)
            rc = 0
        else:
            try:
                cp = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)],
                                    env=env, capture_output=True, text=True, timeout=timeout)
                text, rc = cp.stdout + cp.stderr, cp.returncode
            except subprocess.TimeoutExpired as e:
                dec = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
                text = dec(e.stdout) + dec(e.stderr)
                rc = "timeout"
            for line in text.splitlines():
                if line.startswith("RESULT "):
                    rec.update(json.loads(line[7:]))
        if holder:
            holder.kill()
            holder.wait()
        rec.update(rc=rc, wall_s=round(time.time() - t0, 1), log=parse_log(text))
        results.write(json.dumps(rec) + "\n")
        results.flush()
        with open(done_path, "a") as f:
            f.write(case["name"] + "\n")
        log.write("\n===== %s (rc=%s, %.0fs) =====\n" % (case["name"], rc, time.time() - t0))
        log.write(text[-1_500_000:])  # 8 files of at most 16 MiB come back
        log.flush()
        print("case %s rc=%s %.0fs %s" % (case["name"], rc, time.time() - t0,
                                         json.dumps(rec.get("log", {}))[:600]), flush=True)


if __name__ == "__main__":
    main()
