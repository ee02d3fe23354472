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


def test_4210_a_distributed_instances_subordinate_part_booked_against_its_own_processes():
    """#4210: "in distributed deployments the assigned VRAM does not match the actual usage". On a subordinate
    worker the instance books its share per GPU (subordinate_workers[].computed_resource_claim) and its follower
    engine (a Ray worker in a container listening on the subordinate's ports) holds what it holds: each GPU
    shows both, the first GPU over its booking, the second well under."""
    follower = tree(ProcessInfo(900, 1), ProcessInfo(1200, 900, CONTAINER_A, frozenset({40100})),
                    ProcessInfo(1201, 900, CONTAINER_A), ProcessInfo(1202, 900, CONTAINER_A))
    part = Instance("llama-70b-x", "llama-70b", "running", {0: 36 * GIB, 1: 36 * GIB}, ports=frozenset({40100}))
    usage = node_usage({0: 40 * GIB, 1: 40 * GIB}, [GpuProcess(0, 1201, 39 * GIB), GpuProcess(1, 1202, 20 * GIB)],
                       follower, [part])
    (first,), (second,) = (gpu.instances for gpu in usage.gpus)
    assert (first.booked, first.used, first.overrun) == (36 * GIB, 39 * GIB, True)
    assert (second.booked, second.used, second.overrun) == (36 * GIB, 20 * GIB, False)
    assert usage.gpus[0].unattributed == usage.gpus[1].unattributed == 0


# A manifest's running model, known by a piece of its command line (no GPUStack, no recorded pid).

def test_a_manifest_model_is_known_by_its_command_line_on_an_ancestor():
    procs = tree(ProcessInfo(50, 1, cmdline="vllm serve /models/qwen2.5-7b --port 8001"),
                 ProcessInfo(51, 50, cmdline="python3 -c from multiprocessing.spawn import spawn_main"),
                 ProcessInfo(60, 1, cmdline="python3 notebook.py"))
    qwen = Instance("qwen", "qwen", "running", {0: GIB}, cmdline="/models/qwen2.5-7b")
    assert attribute([51, 60], procs, [qwen]) == {51: "qwen"}


def test_where_several_command_line_pieces_match_the_longest_wins():
    procs = tree(ProcessInfo(50, 1, cmdline="vllm serve /models/qwen2.5-7b-instruct"),
                 ProcessInfo(70, 1, cmdline="vllm serve /models/qwen2.5-7b"))
    short = Instance("qwen", "qwen", "running", {0: GIB}, cmdline="qwen2.5-7b")
    long = Instance("qwen-instruct", "qwen-i", "running", {0: GIB}, cmdline="qwen2.5-7b-instruct")
    assert attribute([50, 70], procs, [short, long]) == {50: "qwen-instruct", 70: "qwen"}


def test_a_port_on_a_nearer_ancestor_beats_a_command_line_further_up():
    procs = tree(ProcessInfo(10, 1, cmdline="supervisor --models all-qwen"),
                 ProcessInfo(20, 10, None, frozenset({8002})), ProcessInfo(21, 20))
    by_cmdline = Instance("a", "a", "running", {0: GIB}, cmdline="all-qwen")
    by_port = Instance("b", "b", "running", {0: GIB}, ports=frozenset({8002}))
    assert attribute([21], procs, [by_cmdline, by_port]) == {21: "b"}


def test_a_running_model_nothing_says_how_to_know_books_its_claim_but_no_idle_claim():
    """A manifest's running model without ``processes``: its claim counts in GPUStack's books (overbooked,
    room) but finding none of its processes is no finding."""
    unwatched = Instance("old", "old", "running", {0: 20 * GIB}, watched=False)
    watched = Instance("new", "new", "running", {0: 10 * GIB}, ports=frozenset({40001}))
    usage = node_usage({0: 24 * GIB}, [GpuProcess(0, 1002, 9 * GIB)], VLLM_CONTAINER, [unwatched, watched])
    rows = {row.instance: row for row in usage.gpus[0].instances}
    assert usage.gpus[0].overbooked and not rows["old"].idle_claim and rows["new"].used == 9 * GIB
