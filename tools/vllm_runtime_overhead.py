#!/usr/bin/env python3
"""Print the fitted vLLM runtime overhead O for a model: what the rulebook uses when neither the model
nor the cluster sets runtime_overhead, and what to put there to pin it.

    python3 tools/vllm_runtime_overhead.py /models/Qwen2.5-1.5B-Instruct/config.json --gpu-total-gib 141 \
        [--gpu-name "NVIDIA H200"] [--max-num-batched-tokens 8192] [--vllm-version 0.26]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vram_exporter.rules.model import Architecture  # noqa: E402
from vram_exporter.rules.backends.vllm.runtime import default_scheduler_limits, fitted_runtime_overhead  # noqa: E402
from vram_exporter.rules.backends.vllm.runtime import rules_for, runtime_overhead  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--gpu-total-gib", type=float, required=True)
    ap.add_argument("--gpu-name", default="")
    ap.add_argument("--max-num-batched-tokens", type=int)
    ap.add_argument("--vllm-version", default="0.33")
    a = ap.parse_args(argv)
    arch = Architecture.from_config(json.loads(Path(a.config).read_text()))
    total = int(a.gpu_total_gib * 2**30)
    batch = a.max_num_batched_tokens or default_scheduler_limits(total, a.gpu_name, "serve")[0]
    parts = runtime_overhead(arch, batch)
    if parts is None:
        print(f"{a.config}: no hidden_size / intermediate_size (or MoE shape): the rulebook uses 1 GiB", file=sys.stderr)
        return 1
    o = fitted_runtime_overhead(arch, version=a.vllm_version, device_total_bytes=total, device_name=a.gpu_name,
                                max_num_batched_tokens=a.max_num_batched_tokens)
    print(f"batch {batch} tokens: peak activation {parts.peak_activation / 2**20:.0f} MiB, non-torch "
          f"{parts.non_torch / 2**20:.0f} MiB, CUDA graphs <= {parts.cuda_graphs / 2**20:.0f} MiB "
          f"({'in' if rules_for(a.vllm_version).graphs_in_budget else 'outside'} the budget in {a.vllm_version})")
    print(f"runtime_overhead: {o}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
