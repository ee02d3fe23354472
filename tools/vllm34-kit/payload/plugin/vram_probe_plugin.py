"""vLLM general plugin (loaded in every vLLM process, incl. the engine core that hosts the GPU worker).

Measurement only: wraps vllm.v1.worker.extensible_kv_cache.measure_kv_cache_bytes (0.34.0) so each call's
inputs and result are appended, as one JSON line, to $PROBE_MEASURE_LOG. The wrapped function is called
unchanged with the same arguments and its result returned as is. measure_kv_cache_blocks looks the name
up in its module's globals at call time, so replacing the module attribute is enough. The module is
patched when it is first imported (a meta-path hook), so loading this plugin imports nothing heavy.
"""
import importlib.abc
import importlib.util
import json
import os
import sys
import time
import types

TARGET = "vllm.v1.worker.extensible_kv_cache"


def _log(rec):
    path = os.environ.get("PROBE_MEASURE_LOG")
    if not path:
        return
    rec.update(pid=os.getpid(), t=round(time.time(), 3))
    with open(path, "a") as f:
        f.write(json.dumps(rec, default=str) + "\n")


def _patch(mod):
    if getattr(mod, "_vram_probe_patched", False):
        return
    orig = mod.measure_kv_cache_bytes

    def measure_kv_cache_bytes(**kw):
        out = orig(**kw)
        rec = {"fn": "measure_kv_cache_bytes", "kwargs": kw, "result": out}
        try:
            import torch
            rec["torch_reserved"] = torch.cuda.memory_reserved()
            rec["torch_allocated"] = torch.cuda.memory_allocated()
            rec["cuda_free"], rec["cuda_total"] = torch.cuda.mem_get_info()
        except Exception as e:  # measurement only
            rec["torch_error"] = repr(e)
        _log(rec)
        return out

    mod.measure_kv_cache_bytes = measure_kv_cache_bytes
    orig_blocks = mod.measure_kv_cache_blocks

    def measure_kv_cache_blocks(kv_cache, vllm_config, device, **kw):
        n = orig_blocks(kv_cache, vllm_config, device, **kw)
        _log({"fn": "measure_kv_cache_blocks", "kwargs": kw, "result": n,
              "bytes_per_block": kv_cache.bytes_per_block, "capacity_blocks": kv_cache.capacity_blocks,
              "physical_bytes": kv_cache.physical_bytes, "physical_bytes_for_result": kv_cache.physical_bytes_for(n),
              "granularity": kv_cache.buffer.granularity, "segments": len(kv_cache.segment_strides),
              "reserved_headroom_bytes": kv_cache.reserved_headroom_bytes,
              "torch_reserve_growth_bytes": kv_cache.torch_reserve_growth_bytes,
              "torch_memory_limit": kv_cache.torch_memory_limit})
        return n

    mod.measure_kv_cache_blocks = measure_kv_cache_blocks
    # gpu_worker imported the name directly; point it at the wrapper if it is already loaded.
    gw = sys.modules.get("vllm.v1.worker.gpu_worker")
    if gw is not None and getattr(gw, "measure_kv_cache_blocks", None) is orig_blocks:
        gw.measure_kv_cache_blocks = measure_kv_cache_blocks
    mod._vram_probe_patched = True
    _log({"fn": "patched", "module": TARGET})


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


MINIMAX_WARMUP = "vllm.model_executor.warmup.minimax_m3_msa_warmup"


def _stand_in_minimax_warmup():
    """vLLM 0.34's kernel_warmup imports the MiniMax M3 warm-up on every CUDA start, and that module imports
    the CuTe DSL (``cutlass``, nvidia-cutlass-dsl), which the packs leave out: the first run (2026-12-05)
    stopped there in every case. For a model without MiniMaxM3SparseAttention, and on any card but SM100,
    ``minimax_m3_msa_warmup`` returns at once (minimax_m3_msa_warmup.py): a module with that no-op stands in,
    only where ``cutlass`` cannot be imported."""
    if MINIMAX_WARMUP in sys.modules or importlib.util.find_spec("cutlass") is not None:
        return
    stand_in = types.ModuleType(MINIMAX_WARMUP)
    stand_in.minimax_m3_msa_warmup = lambda worker: None
    sys.modules[MINIMAX_WARMUP] = stand_in


def register():
    _stand_in_minimax_warmup()
    if not os.environ.get("PROBE_MEASURE_LOG"):
        return
    if TARGET in sys.modules:
        _patch(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
