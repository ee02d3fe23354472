"""Synthetic nodes and manifests for the benchmarks: N GPUs, M models, P processes per GPU.

The models are realistic (a few real architectures, a mix of running and candidate models, TP
sizes, both spellings of the utilization flag) so that the fit model does its full work.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

MIB, GIB = 2**20, 2**30
H100_TOTAL, H100_RESERVED = 85_520_809_984, 503_316_480
ARCHS = [
    {"num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_size": 1536,
     "vocab_size": 151936, "torch_dtype": "bfloat16", "max_position_embeddings": 32768},
    {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
     "vocab_size": 128256, "torch_dtype": "bfloat16", "max_position_embeddings": 131072},
    {"num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8, "hidden_size": 5120,
     "vocab_size": 152064, "torch_dtype": "bfloat16", "max_position_embeddings": 32768},
    {"num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "hidden_size": 2048,
     "kv_lora_rank": 512, "qk_rope_head_dim": 64, "vocab_size": 102400, "torch_dtype": "bfloat16",
     "max_position_embeddings": 163840},
]


def fixture(gpus: int, processes: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    out = []
    for i in range(gpus):
        procs = [{"pid": 10000 + i * 100 + p, "name": rng.choice(["vllm", "python3", "jupyter-kernel"]),
                  "used": rng.randrange(100, 600) * MIB, "type": "compute"} for p in range(processes)]
        used = sum(p["used"] for p in procs)
        out.append({"index": i, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-bench-{i:04d}-0000-0000-000000000000",
                    "pci_bus_id": f"00000000:{i + 1:02X}:00.0",
                    "memory": {"total": H100_TOTAL, "reserved": H100_RESERVED, "used": used,
                               "free": H100_TOTAL - H100_RESERVED - used},
                    "processes": procs, "error": None})
    return {"driver_version": "580.159.04", "gpus": out}


def manifest(models: int, gpus: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    out = []
    for m in range(models):
        params = [f"--gpu-memory-utilization={rng.choice([0.3, 0.45, 0.9])}"]
        if rng.random() < 0.2:
            params = [f"--gpu_memory_utilization={rng.choice([0.3, 0.5])}"]
        if rng.random() < 0.15 and gpus >= 2:
            params.append("--tensor-parallel-size=2")
        entry = {"name": f"model-{m:03d}", "weights_bytes": rng.randrange(1, 70) * GIB,
                 "config": rng.choice(ARCHS), "max_model_len": rng.choice([4096, 8192, 32768]),
                 "backend_parameters": params}
        if m < gpus // 2:  # a few running models
            entry["placed_on"] = [m]
        out.append(entry)
    return {"cluster": {"scheduler": "gpustack", "system_reserved_vram": 0}, "models": out}


def write(directory: Path, gpus: int, models: int, processes: int) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    fixture_path = directory / f"fixture-{gpus}g-{processes}p.yaml"
    manifest_path = directory / f"manifest-{models}m-{gpus}g.yaml"
    fixture_path.write_text(yaml.safe_dump(fixture(gpus, processes)))
    manifest_path.write_text(yaml.safe_dump(manifest(models, gpus)))
    return fixture_path, manifest_path
