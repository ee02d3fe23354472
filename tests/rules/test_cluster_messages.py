"""GPUStack's one pending message for the whole cluster (``_set_messages``), as rules/cluster/paths.py
words it: the requirement lines, then the event of the path GPUStack reads first, never per worker."""

from vram_exporter.rules.cluster.paths import Ask, Node, search
from vram_exporter.rules.gpustack import GpuView
from vram_exporter.rules.model import Architecture
from vram_exporter.units import GIB

QWEN3_32B = Architecture(layers=64, attention_heads=64, kv_heads=8, head_dim=128, dtype_bytes=2, vocab_size=151936,
                         max_position_embeddings=40960)
ESTIMATE = 80777385574  # int(weights x 1.2) + 2 GiB for Qwen3-32B: "75.23 GiB"


def _worker(worker_id: int, name: str, gpus: int, allocatable: int = 16 * GIB) -> Node:
    return Node(worker_id, name, tuple(GpuView(i, 16 * GIB, allocatable) for i in range(gpus)))


def test_two_workers_too_small_name_the_combination_that_booked_most():
    found = search([_worker(1, "a", 2), _worker(2, "b", 2)], Ask(ESTIMATE, 0.9, None, QWEN3_32B))
    assert not found.candidates
    assert found.reason == (
        "- The model requires approximately 75.23 GiB of VRAM.\n"
        "- With --gpu-memory-utilization=0.9, all GPUs combined need to provide at least 83.59 GiB of total VRAM "
        "and each GPU needs 90% of allocatable VRAM.\n"
        "- The optimal combination ['a', 'b'] provides 57.6 GiB of allocatable VRAM.\n"
        "- Cannot find a suitable worker combination to run the model in distributed mode. If you are confident "
        "that the resources are sufficient, you may manually schedule the model by selecting the workers and GPUs.")


def test_one_worker_of_several_gpus_says_its_tensor_parallel_refusal():
    heads_25 = Architecture(layers=28, attention_heads=25, kv_heads=5, head_dim=128, dtype_bytes=2,
                            vocab_size=None, max_position_embeddings=None)
    found = search([_worker(1, "a", 4)], Ask(ESTIMATE, 0.9, None, heads_25))
    lines = found.reason.splitlines()
    assert lines[2:] == [
        "- Total number of attention heads (25) must be divisible by tensor parallel size (4).",
        "- The largest available worker has 64.0 GiB allocatable VRAM, 4/4 of GPUs meet the VRAM utilization "
        "ratio, providing 57.60 GiB of allocatable VRAM."]


def test_single_gpu_event_takes_the_largest_allocatable_of_the_whole_cluster():
    found = search([_worker(1, "a", 1, 10 * GIB), _worker(2, "b", 1, 12 * GIB)], Ask(ESTIMATE, 0.9, 1, QWEN3_32B, distributed=False))
    assert found.reason.splitlines()[2] == "- The current available GPU only has 12.0 GiB allocatable VRAM (75.00%)."
