"""Builders for rulebook tests: GPUs and models in a few words, no files."""

from __future__ import annotations

from dataclasses import replace

from vram_exporter.rules.model import Architecture, Cluster, ModelSpec
from vram_exporter.snapshot import GpuReading, MemoryReading, NodeSnapshot, ProcessReading

MIB, GIB = 2**20, 2**30
QWEN_1_5B = Architecture.from_config({
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_size": 1536,
    "vocab_size": 151936, "torch_dtype": "bfloat16", "max_position_embeddings": 32768})
SEED_WEIGHTS = 3_087_467_144
SEED_TOTAL = 6138 * MIB


def gpu(index: int = 0, total: int = SEED_TOTAL, *, reserved: int = 0, used: int = 0,
        processes: tuple[ProcessReading, ...] = ()) -> GpuReading:
    return GpuReading(index, f"GPU-{index}", "test GPU", f"0000:{index:02x}:00.0",
                      MemoryReading(total, used, total - reserved - used, reserved, 2), processes)


def node(*gpus: GpuReading) -> NodeSnapshot:
    return NodeSnapshot("580.159.04", tuple(gpus) or (gpu(),))


def seed_model(*params: str, **changes) -> ModelSpec:
    model = ModelSpec("qwen2.5-1.5b-instruct", SEED_WEIGHTS, QWEN_1_5B,
                      backend_parameters=params or ("--gpu-memory-utilization=0.9",), max_model_len=32768)
    return replace(model, **changes)


def seed_cluster(**changes) -> Cluster:
    return replace(Cluster(system_reserved_vram=GIB), **changes)
