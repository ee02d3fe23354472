#!/usr/bin/env python3
"""Real-vLLM memory probe for vLLM 0.34.0's extensible KV cache (issue 25), on the device's torch 2.11.

Adapted from tests/data/vllm-h200/payload/run_probe.py (vLLM 0.26). Each case runs in its own process
group (a fresh CUDA context; vLLM's engine core is a grandchild), with dummy weights (load_format="dummy")
from a folder that holds only config.json and no tokenizer (skip_tokenizer_init=True): nothing is
downloaded. Writes one JSON line per case to OUT/results.jsonl and every case's output to OUT/log.txt.

Per case it records:
  nvml_before / nvml_engine_up / nvml_after   NVML v2 memory (total, reserved, free, used) + per-process use
  worker      the GPU worker's own numbers (collective_rpc), in bytes:
      init_total, init_free, ...   MemorySnapshot at worker start
      requested                    R = ceil(init_total * resolved gpu_memory_utilization) (1.0 when unset)
      weights, total_consumed, peak_activation, cudagraph_estimate, kv_available (the pre-warmup estimate)
      ext_*                        the ExtensibleKVCache after start-up: capacity, committed blocks,
                                   bytes per block, physical bytes, headroom kept, torch memory cap
      num_blocks, groups[block_size, page_size_bytes, spec], attn_backends
  measure     what measure_kv_cache_bytes / measure_kv_cache_blocks got and returned, one record per call
              (written by payload/plugin/vram_probe_plugin.py inside the engine core process)
  config      the front end's engine config: max_model_len, block_size, num_gpu_blocks, ...
  log         vLLM's own lines, parsed (LOG_PATTERNS): "Memory after warmup ...", KV tokens, concurrency, ...
Pair cases ("mode": "pair") start a first engine, keep it up, start a second engine beside it, then let
the first generate again: the second's numbers or its error, and whether the first still serves.

Usage (device):  python3 run_probe.py --plan plan-1.json --out $OUT [--deadline-s 540]
Case mode (internal): python3 run_probe.py --case '<json>' [--hold]
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DONE_PATH = "/tmp/vram_probe34_done.txt"   # names of cases already run on this (warm) machine

LOG_PATTERNS = {
    "weights_gib": r"Model loading took ([\d.]+) GiB memory",
    "kv_available_gib": r"Available KV cache memory: (-?[\d.]+) GiB",
    "memory_after_warmup": r"(Memory after warmup: .*?Torch may reserve up to [\d.]+ GiB\.)",
    "extended": r"(Extended KV cache to \d+ blocks \([\d.]+ GiB\)\.)",
    "remapping": r"(Remapping the KV cache from \d+ to \d+ blocks to fit the measured budget\.)",
    "util_warning": r"(gpu_memory_utilization=\S+ caps this instance at .*?GiB of free device memory out of the KV cache\.)",
    "kv_tokens": r"KV cache size: ([\d,]+) tokens",
    "max_concurrency": r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x",
    "cudagraph_estimate_gib": r"Estimated CUDA graph memory: ([\d.]+) GiB total",
    "graph_capture": r"Graph capturing finished in (\d+) secs, took ([\d.]+) GiB",
    "cudagraph_pool_gib": r"CUDA graph pool memory: ([\d.]+) GiB \(actual\), ([\d.]+) GiB \(estimated\)",
    "backend": r"Using (\S+?)\.? (?:attention )?backend",
    "startup_error": r"(Free memory on device \S+ \(.*?\) on startup is less than desired GPU memory utilization \(.*?\)\.)",
    "kv_error": r"(To serve at least one request with the model's max seq len [^\n]*)",
    "no_kv_error": r"(No available memory for the cache blocks\.)",
    "oom": r"((?:torch\.)?(?:cuda\.)?OutOfMemoryError.*|CUDA out of memory.*)",
    "autofit": r"(Auto-fit max_model_len: .*)",
    "ext_disabled": r"(Disabling the extensible KV cache: [^\n]*)",
    "sampler": r"((?:Using )?FlashInfer.*sampl.*|FlashInfer top-p/top-k sampling .*)",
    "usage_summary": r"(Actual usage is .*? GiB for CUDAGraph memory\..*?Current kv cache memory in use is [\d.]+ GiB\.)",
    "kv_mem_bytes_msg": r"(Initial free memory [\d.]+ GiB, reserved [\d.]+ GiB memory for KV Cache.*?skipped memory profiling\.)",
    "engine_config": r"(Initializing a V1 LLM engine .*?max_seq_len=\d+.*?)(?:, download_dir|$)",
    "max_seq_len": r"max_seq_len=(\d+)",
    "compile": r"(torch\.compile takes [\d.]+ s in total|Compil\w+ .*? took [\d.]+ s|Directly load the compiled graph.*)",
    "init_engine": r"(init engine \(profile, create kv cache, warmup model\) took [\d.]+ seconds.*)",
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
    cc = self.cache_config
    out = {
        "init_total": s.total_memory, "init_free": s.free_memory, "init_cuda": s.cuda_memory,
        "init_torch": s.torch_memory, "init_non_torch": s.non_torch_memory,
        "requested": getattr(self, "requested_memory", None),
        "weights": int(getattr(mr, "model_memory_usage", 0) or 0),
        "total_consumed": getattr(self, "total_consumed", None),
        "peak_activation": getattr(self, "peak_activation_memory", None),
        "cudagraph_estimate": getattr(self, "cudagraph_memory_estimate", None),
        "kv_available": getattr(self, "available_kv_cache_memory_bytes", None),
        "extensible": bool(cc.enable_extensible_kv_cache),
        "gpu_memory_utilization": cc.gpu_memory_utilization,
        "resolved_utilization": cc.resolved_gpu_memory_utilization,
        "kv_cache_memory_bytes": cc.kv_cache_memory_bytes,
        "num_gpu_blocks": cc.num_gpu_blocks,
        "block_size": cc.block_size,
        "kv_cache_size_tokens": getattr(cc, "kv_cache_size_tokens", None),
        "kv_cache_max_concurrency": getattr(cc, "kv_cache_max_concurrency", None),
        "max_model_len": self.model_config.max_model_len,
    }
    kv = getattr(mr, "extensible_kv_cache", None)
    if kv is not None:
        out.update(ext_capacity_blocks=kv.capacity_blocks, ext_committed_blocks=kv.num_committed_blocks,
                   ext_bytes_per_block=kv.bytes_per_block, ext_physical_bytes=kv.physical_bytes,
                   ext_reservation_bytes=kv.size, ext_segments=len(kv.segment_strides),
                   ext_granularity=kv.buffer.granularity,
                   ext_reserved_headroom=kv.reserved_headroom_bytes,
                   ext_torch_reserve_growth=kv.torch_reserve_growth_bytes,
                   ext_torch_memory_limit=kv.torch_memory_limit)
    kc = getattr(mr, "kv_cache_config", None)
    if kc is not None:
        out["num_blocks"] = kc.num_blocks
        out["kv_tensor_bytes"] = sum(t.size for t in kc.kv_cache_tensors)
        out["groups"] = [{"layers": len(g.layer_names), "spec": type(g.kv_cache_spec).__name__,
                          "block_size": g.kv_cache_spec.block_size,
                          "page_size_bytes": g.kv_cache_spec.page_size_bytes,
                          "sliding_window": getattr(g.kv_cache_spec, "sliding_window", None)}
                         for g in kc.kv_cache_groups]
    try:
        out["attn_backends"] = sorted({g.backend.get_name() for gs in mr.attn_groups for g in gs})
    except Exception as e:
        out["attn_backends"] = repr(e)[:200]
    free, total = torch.cuda.mem_get_info()
    out.update(after_free=free, after_total=total, torch_reserved=torch.cuda.memory_reserved(),
               torch_allocated=torch.cuda.memory_allocated(),
               torch_max_allocated=torch.cuda.max_memory_allocated(),
               torch_max_reserved=torch.cuda.max_memory_reserved())
    return out


def generate(llm, n_prompts=1, prompt_len=32, max_tokens=8):
    if isinstance(llm, _FakeLLM):
        return {"generated_tokens": 0, "fake": True}
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    prompts = [TokensPrompt(prompt_token_ids=[100 + (i + j) % 1000 for j in range(prompt_len)])
               for i in range(n_prompts)]
    t0 = time.time()
    out = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, detokenize=False, temperature=0.8,
                                               top_p=0.9, top_k=50, ignore_eos=True), use_tqdm=False)
    return {"generated_tokens": sum(len(o.outputs[0].token_ids) for o in out), "prompts": n_prompts,
            "prompt_len": prompt_len, "gen_s": round(time.time() - t0, 2)}


class _FakeLLM:
    """PROBE_FAKE_LLM=1: a stand-in engine, only to test the probe's process handling on a CPU."""

    def __init__(self, **kw):
        import types
        self.llm_engine = types.SimpleNamespace(vllm_config=None)

    def collective_rpc(self, fn):
        return [{"fake": True}]


def run_case_inprocess(case, hold=False):
    """Child process: build the engine, read its numbers, print RESULT lines."""
    if os.environ.get("PROBE_FAKE_LLM") == "1":
        LLM = _FakeLLM
    else:
        from vllm import LLM
    kw = {"model": case["model"], "load_format": "dummy", "skip_tokenizer_init": True, "seed": 0}
    kw.update(case.get("llm", {}))
    extra = json.loads(os.environ.get("PROBE_LLM_EXTRA", "{}") or "{}")  # e.g. a compilation fallback
    kw.update(extra)
    res = {"name": case["name"], "llm_kwargs": kw}
    t0 = time.time()
    llm = LLM(**kw)
    res["init_s"] = round(time.time() - t0, 1)
    try:
        res["worker"] = llm.collective_rpc(collect)[0]
    except Exception as e:
        res["worker_error"] = repr(e)[:500]
    vc = llm.llm_engine.vllm_config
    res["config"] = {} if vc is None else {
        "max_model_len": vc.model_config.max_model_len,
        "block_size": vc.cache_config.block_size,
        "num_gpu_blocks": vc.cache_config.num_gpu_blocks,
        "gpu_memory_utilization": vc.cache_config.gpu_memory_utilization,
        "enable_extensible_kv_cache": vc.cache_config.enable_extensible_kv_cache,
        "kv_cache_dtype": str(vc.cache_config.cache_dtype),
        "max_num_batched_tokens": vc.scheduler_config.max_num_batched_tokens,
        "max_num_seqs": vc.scheduler_config.max_num_seqs,
        "cudagraph_mode": str(vc.compilation_config.cudagraph_mode),
        "compile_mode": str(vc.compilation_config.mode),
    }
    res["nvml_engine_up"] = nvml_snapshot()
    print("RESULT " + json.dumps(res, default=str), flush=True)   # before generate: a failing generate keeps the numbers
    gen = case.get("generate", {"n_prompts": 1})
    if gen:
        try:
            print("RESULT " + json.dumps({"gen": generate(llm, **gen)}, default=str), flush=True)
        except Exception as e:
            print("RESULT " + json.dumps({"generate_error": repr(e)[:800]}), flush=True)
    if hold:   # pair mode: keep the engine up until told to generate again or to stop
        print("READY", flush=True)
        for line in sys.stdin:
            if line.strip() == "GEN":
                try:
                    r = {"gen_after_second": generate(llm, **(gen or {}))}
                except Exception as e:
                    r = {"gen_after_second_error": repr(e)[:800]}
                r["nvml_gen_after_second"] = nvml_snapshot()
                print("RESULT " + json.dumps(r, default=str), flush=True)
                print("DONE", flush=True)
            else:
                break
    os._exit(0)   # skip vLLM's slow shutdown; the parent kills the process group anyway


def parse_log(text):
    found = {}
    for k, pat in LOG_PATTERNS.items():
        m = re.findall(pat, text)
        if m:
            found[k] = m[-1] if k not in ("backend", "sampler", "compile") \
                else sorted(set(map(str, m)))[:8]
    return found


def hold_memory(nbytes):
    """Start a process that holds nbytes of GPU memory."""
    code = ("import torch,time,sys; x=torch.empty(%d,dtype=torch.uint8,device='cuda'); "
            "print('HELD',flush=True); time.sleep(3600)" % nbytes)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    p.stdout.readline()
    return p


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except Exception:
        pass
    try:
        p.wait(timeout=30)
    except Exception:
        pass


IDLE_USED = None   # NVML used bytes when the plan started (no engine of ours up)


def wait_gpu_idle(timeout=30):
    """Wait until the previous case's processes (its engine core may linger) have let go of the GPU:
    NVML's used memory back within 1 GiB of what it was when the plan started, and no compute process
    listed (where NVML can list them)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        n = nvml_snapshot()
        used_ok = IDLE_USED is None or n.get("used", 0) <= IDLE_USED + (1 << 30)
        if used_ok and not n.get("procs"):
            return round(time.time() - t0, 1)
        time.sleep(1)
    return "timeout"


class Child:
    """One case process (own process group), its output read by a thread."""

    def __init__(self, case, env, hold=False):
        args = [sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)] + (["--hold"] if hold else [])
        self.p = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines = []
        self.t = threading.Thread(target=lambda: [self.lines.append(l) for l in self.p.stdout], daemon=True)
        self.t.start()

    def wait_for(self, marker, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if any(l.startswith(marker) for l in self.lines):
                return True
            if self.p.poll() is not None:
                self.t.join(timeout=5)
                return any(l.startswith(marker) for l in self.lines)
            time.sleep(0.5)
        return False

    def send(self, line):
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        except Exception:
            pass

    def finish(self, timeout):
        try:
            self.p.wait(timeout=max(timeout, 1))
            rc = self.p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        kill_group(self.p)
        self.t.join(timeout=5)
        return rc

    def text(self):
        return "".join(self.lines)

    def results(self):
        rec = {}
        for line in self.lines:
            if line.startswith("RESULT "):
                try:
                    rec.update(json.loads(line[7:]))
                except Exception:
                    pass
        return rec


FI_SITE = "/tmp/site-fi"   # packs/fi.tar.xz: FlashInfer 0.7.4 + its sampling module pre-built for sm_90a


def env_summary(env):
    return {k: v for k, v in env.items() if k.startswith(("VLLM_", "PROBE_LLM", "FLASHINFER")) or k == "PYTHONPATH"}


def case_env(case, measure_log):
    """The case's environment. "flashinfer": true puts FlashInfer on the path and lets vLLM pick its
    sampler as a stock install would (VLLM_USE_FLASHINFER_SAMPLER unset); otherwise FlashInfer is absent
    and go.sh's VLLM_USE_FLASHINFER_SAMPLER=0 holds."""
    env = dict(os.environ)
    if case.get("flashinfer"):
        env["PYTHONPATH"] = env.get("PYTHONPATH", "") + ":" + FI_SITE
        env.pop("VLLM_USE_FLASHINFER_SAMPLER", None)
    env.update({k: str(v) for k, v in case.get("env", {}).items()})
    env["PROBE_MEASURE_LOG"] = measure_log
    return env


def missing_pack(case):
    subs = [case] + [case[k] for k in ("first", "second") if k in case]
    if any(c.get("flashinfer") for c in subs) and not os.path.exists(os.path.join(FI_SITE, ".ok-fi")):
        return "flashinfer case without packs/fi.tar.xz unpacked on this machine"
    return None


def read_measure(path):
    recs = []
    if os.path.exists(path):
        for line in open(path):
            try:
                recs.append(json.loads(line))
            except Exception:
                pass
    return recs


def run_single(case, timeout, tmp):
    mlog = os.path.join(tmp, case["name"] + ".measure.jsonl")
    holder = hold_memory(int(case["hold_bytes"])) if case.get("hold_bytes") else None
    rec = {"name": case["name"], "gpu_idle_wait_s": wait_gpu_idle(), "nvml_before": nvml_snapshot()}
    env = case_env(case, mlog)
    rec["case_env"] = env_summary(env)
    c = Child(case, env)
    rc = c.finish(timeout)
    rec.update(c.results())
    rec["nvml_after"] = nvml_snapshot()
    if holder:
        kill_group(holder)
    rec.update(rc=rc, measure=read_measure(mlog), log=parse_log(c.text()))
    return rec, c.text()


def run_pair(case, timeout, tmp):
    """First engine up (held), then the second beside it, then the first generates again."""
    t0 = time.time()
    first, second = dict(case["first"]), dict(case["second"])
    for sub, tag in ((first, "first"), (second, "second")):
        sub.setdefault("name", case["name"] + "." + tag)
        sub["model"] = abs_model(sub["model"])
    rec = {"name": case["name"], "mode": "pair", "gpu_idle_wait_s": wait_gpu_idle(), "nvml_before": nvml_snapshot()}
    m1, m2 = (os.path.join(tmp, s["name"] + ".measure.jsonl") for s in (first, second))
    env1, env2 = case_env(first, m1), case_env(second, m2)
    rec["case_env"] = {"first": env_summary(env1), "second": env_summary(env2)}
    a = Child(first, env1, hold=True)
    up = a.wait_for("READY", timeout * 0.5)
    rec["first"] = a.results()
    rec["first"]["up"] = up
    rec["nvml_first_up"] = nvml_snapshot()
    text = ""
    if up:
        b = Child(second, env2)
        rc2 = b.finish(max(timeout - (time.time() - t0) - 30, 30))
        rec["second"] = b.results()
        rec["second"].update(rc=rc2, measure=read_measure(m2), log=parse_log(b.text()))
        text = b.text()
        a.send("GEN")
        a.wait_for("DONE", 30)
        rec["first"] = a.results()
        rec["first"]["up"] = up
    a.send("STOP")
    rc1 = a.finish(10)
    rec["first"].update(rc=rc1, measure=read_measure(m1), log=parse_log(a.text()))
    rec["nvml_after"] = nvml_snapshot()
    rec["rc"] = rec.get("second", {}).get("rc", "first-not-up")
    full = "----- first -----\n" + a.text() + "\n----- second -----\n" + text
    return rec, full


def abs_model(m):
    return m if m.startswith("/") else os.path.join(HERE, m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--deadline-s", type=float, default=540)
    ap.add_argument("--case")
    ap.add_argument("--hold", action="store_true")
    a = ap.parse_args()
    if a.case:
        return run_case_inprocess(json.loads(a.case), hold=a.hold)
    start = time.time()
    plan = json.load(open(a.plan))
    os.makedirs(a.out, exist_ok=True)
    tmp = "/tmp/vram_probe34"
    os.makedirs(tmp, exist_ok=True)
    results = open(os.path.join(a.out, "results.jsonl"), "a")
    log = open(os.path.join(a.out, "log.txt"), "a")
    global IDLE_USED
    idle = nvml_snapshot()
    IDLE_USED = idle.get("used")
    results.write(json.dumps({"name": "_machine", "nvml": idle, "python": sys.version.split()[0],
                              "plan": os.path.basename(a.plan),
                              "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "PROBE_"))}})
                  + "\n")
    results.flush()
    for case in plan["cases"]:
        done = set(open(DONE_PATH).read().split()) if os.path.exists(DONE_PATH) else set()
        if case["name"] in done:
            continue
        left = a.deadline_s - (time.time() - start)
        need = case.get("min_s", 60)
        if left < need:
            results.write(json.dumps({"name": case["name"], "skipped": "deadline", "left_s": round(left)}) + "\n")
            results.flush()
            continue
        why = missing_pack(case)
        if why:
            results.write(json.dumps({"name": case["name"], "skipped": why}) + "\n")
            results.flush()
            continue
        t0 = time.time()
        timeout = min(case.get("timeout_s", 240), left - 5)
        if case.get("mode") == "pair":
            rec, text = run_pair(case, timeout, tmp)
        else:
            case["model"] = abs_model(case["model"])
            rec, text = run_single(case, timeout, tmp)
        rec["wall_s"] = round(time.time() - t0, 1)
        results.write(json.dumps(rec, default=str) + "\n")
        results.flush()
        with open(DONE_PATH, "a") as f:
            f.write(case["name"] + "\n")
        log.write("\n===== %s (rc=%s, %.0fs) =====\n" % (case["name"], rec.get("rc"), time.time() - t0))
        log.write(text[-1_500_000:])
        log.flush()
        summary = rec.get("log", {}) if rec.get("mode") != "pair" else \
            {"first": rec["first"].get("log", {}).get("memory_after_warmup"),
             "second": rec.get("second", {}).get("log", {})}
        print("case %s rc=%s %.0fs %s" % (case["name"], rec.get("rc"), time.time() - t0,
                                         json.dumps(summary)[:700]), flush=True)


if __name__ == "__main__":
    main()
