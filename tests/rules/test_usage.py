"""Booked against used (rules/usage.py): attribution as GPUStack 2.3.0's worker makes it true, and the four
verdicts, each with the GPUStack issue it comes from."""

from __future__ import annotations

from vram_exporter.rules.usage import GpuProcess, Instance, ProcessInfo, attribute, node_usage

GIB = 1 << 30
CONTAINER_A = "a" * 64
CONTAINER_B = "b" * 64


def tree(*infos: ProcessInfo) -> dict[int, ProcessInfo]:
    return {info.pid: info for info in infos}


# The containerised engine GPUStack 2.3.0 runs: containerd-shim -> vllm serve (listens on the instance's port,
# host network) -> EngineCore -> workers; the instance's recorded pid is the worker's provisioning process,
# gone by now and in another PID namespace.
VLLM_CONTAINER = tree(
    ProcessInfo(900, 1), ProcessInfo(1000, 900, CONTAINER_A, frozenset({40001})),
    ProcessInfo(1001, 1000, CONTAINER_A), ProcessInfo(1002, 1001, CONTAINER_A), ProcessInfo(1003, 1001, CONTAINER_A))


def test_a_container_engine_is_recognised_by_the_port_its_api_server_listens_on():
    qwen = Instance("qwen-abc", "qwen", "running", {0: 20 * GIB}, pids=frozenset({77}), ports=frozenset({40001}))
    assert attribute([1002, 1003], VLLM_CONTAINER, [qwen]) == {1002: "qwen-abc", 1003: "qwen-abc"}


def test_a_process_of_the_same_container_outside_the_listeners_tree_belongs_to_it_too():
    procs = {**VLLM_CONTAINER, 1500: ProcessInfo(1500, 900, CONTAINER_A)}  # e.g. a Ray worker started by the shim
    qwen = Instance("qwen-abc", "qwen", "running", {0: 20 * GIB}, ports=frozenset({40001}))
    assert attribute([1002, 1500], procs, [qwen]) == {1002: "qwen-abc", 1500: "qwen-abc"}


def test_an_engine_run_as_a_plain_process_is_recognised_by_the_recorded_pid_as_ancestor():
    procs = tree(ProcessInfo(50, 1), ProcessInfo(77, 50), ProcessInfo(78, 77), ProcessInfo(79, 78))
    llama = Instance("llama-1", "llama", "running", {0: GIB}, pids=frozenset({77}))
    assert attribute([79], procs, [llama]) == {79: "llama-1"}


def test_the_nearest_ancestor_decides_between_nested_engines():
    procs = tree(ProcessInfo(10, 1, None, frozenset({8000})), ProcessInfo(20, 10, None, frozenset({9000})),
                 ProcessInfo(21, 20), ProcessInfo(11, 10))
    outer = Instance("outer", "m1", "running", {0: GIB}, ports=frozenset({8000}))
    inner = Instance("inner", "m2", "running", {0: GIB}, ports=frozenset({9000}))
    assert attribute([21, 11], procs, [outer, inner]) == {21: "inner", 11: "outer"}


def test_a_process_of_nobody_and_one_not_in_proc_stay_unattributed():
    qwen = Instance("qwen-abc", "qwen", "running", {0: GIB}, ports=frozenset({40001}))
    procs = {**VLLM_CONTAINER, 2000: ProcessInfo(2000, 1, CONTAINER_B)}
    assert attribute([2000, 4242], procs, [qwen]) == {}


def test_3034_a_model_placed_on_a_gpu_another_one_filled():
    """#3034: GPUStack placed a second model on a GPU whose first instance uses far more than its claim; OOM."""
    first = Instance("big-1", "big", "running", {0: 40 * GIB}, ports=frozenset({40001}))
    second = Instance("small-1", "small", "starting", {0: 30 * GIB}, ports=frozenset({40002}))
    usage = node_usage({0: 80 * GIB}, [GpuProcess(0, 1002, 70 * GIB)], VLLM_CONTAINER, [first, second])
    rows = {row.instance: row for row in usage.gpus[0].instances}
    assert rows["big-1"].used == 70 * GIB and rows["big-1"].booked == 40 * GIB and rows["big-1"].overrun
    assert not rows["small-1"].overrun and rows["small-1"].idle_claim


def test_vllm_0_34_takes_all_free_memory_while_gpustack_books_0_9_of_total():
    """Alone on its GPU, it still overruns: GPUStack has 0.1 x total left in its books and places the next one there."""
    total = 80 * GIB
    inst = Instance("q-1", "q", "running", {0: int(0.9 * total)}, ports=frozenset({40001}))
    usage = node_usage({0: total}, [GpuProcess(0, 1002, total - GIB)], VLLM_CONTAINER, [inst])
    assert usage.gpus[0].instances[0].overrun and usage.gpus[0].room > 0


def test_using_more_than_booked_is_no_overrun_when_gpustack_can_place_nothing_more_there():
    inst = Instance("q-1", "q", "running", {0: 80 * GIB}, ports=frozenset({40001}))
    usage = node_usage({0: 80 * GIB}, [GpuProcess(0, 1002, 80 * GIB + 1)], VLLM_CONTAINER, [inst])
    assert not usage.gpus[0].instances[0].overrun


def test_within_its_booking_is_no_overrun():
    first = Instance("a-1", "a", "running", {0: 40 * GIB}, ports=frozenset({40001}))
    other = Instance("b-1", "b", "running", {0: 30 * GIB})
    usage = node_usage({0: 80 * GIB}, [GpuProcess(0, 1002, 39 * GIB)], VLLM_CONTAINER, [first, other])
    assert not any(row.overrun for row in usage.gpus[0].instances)


def test_5513_a_claim_with_no_process_behind_it():
    """#5513: 23 GB stayed allocated on a GPU after scaling to 0; no process of the instance is there."""
    stale = Instance("gone-1", "gone", "pending", {0: 23 * GIB}, pids=frozenset({555}), ports=frozenset({40009}))
    usage = node_usage({0: 24 * GIB}, [], {}, [stale])
    row = usage.gpus[0].instances[0]
    assert row.idle_claim and row.booked == 23 * GIB and row.used == 0


def test_4151_memory_held_by_no_instance():
    """#4151: GPUStack says insufficient resources while usage is low; here the other way round, memory held
    by a process GPUStack does not know about (a leftover engine, someone's notebook)."""
    inst = Instance("q-1", "q", "running", {0: 10 * GIB}, ports=frozenset({40001}))
    procs = {**VLLM_CONTAINER, 3000: ProcessInfo(3000, 1)}
    usage = node_usage({0: 24 * GIB}, [GpuProcess(0, 1002, 9 * GIB), GpuProcess(0, 3000, 12 * GIB)], procs, [inst])
    assert usage.gpus[0].unattributed == 12 * GIB
    assert usage.gpus[0].instances[0].used == 9 * GIB


def test_4703_an_embedding_and_a_reranker_book_twice_the_card():
    """#4703: an embedding and a reranker at 0.5 each booked 47.98 of 23.99 GiB."""
    total = int(23.99 * GIB)
    embed = Instance("embed-1", "bge-m3", "running", {0: int(23.99 * GIB)})
    rerank = Instance("rerank-1", "bge-reranker", "running", {0: int(23.99 * GIB)})
    usage = node_usage({0: total}, [], {}, [embed, rerank])
    assert usage.gpus[0].overbooked and usage.gpus[0].booked == 2 * int(23.99 * GIB)


def test_memory_on_a_gpu_it_did_not_book_shows_with_booked_zero():
    inst = Instance("q-1", "q", "running", {0: 10 * GIB}, ports=frozenset({40001}))
    usage = node_usage({0: 24 * GIB, 1: 24 * GIB}, [GpuProcess(1, 1003, 2 * GIB)], VLLM_CONTAINER, [inst])
    row = usage.gpus[1].instances[0]
    assert (row.instance, row.booked, row.used) == ("q-1", 0, 2 * GIB)
    assert usage.gpus[0].instances[0].idle_claim


def test_a_process_nvml_cannot_size_counts_as_present_not_as_memory():
    inst = Instance("q-1", "q", "running", {0: 10 * GIB}, ports=frozenset({40001}))
    usage = node_usage({0: 24 * GIB}, [GpuProcess(0, 1002, None)], VLLM_CONTAINER, [inst])
    row = usage.gpus[0].instances[0]
    assert row.used == 0 and not row.idle_claim


def test_no_idle_claim_while_gpustack_says_the_engine_is_not_started_yet():
    rows = [node_usage({0: 24 * GIB}, [], {}, [Instance("d-1", "d", state, {0: GIB})]).gpus[0].instances[0]
            for state in ("scheduled", "downloading", "initializing", "starting", "running", "error")]
    assert [row.idle_claim for row in rows] == [False, False, False, True, True, True]


def test_a_listener_that_is_only_a_container_mate_gives_the_container_to_its_instance():
    procs = tree(ProcessInfo(901, 1), ProcessInfo(1100, 901, CONTAINER_B, frozenset({40004})),
                 ProcessInfo(1101, 901, CONTAINER_B))
    rerank = Instance("rerank-1", "r", "running", {1: GIB}, ports=frozenset({40004}))
    assert attribute([1101], procs, [rerank]) == {1101: "rerank-1"}
