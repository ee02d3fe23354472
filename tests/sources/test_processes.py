"""The process-tree reader (sources/processes.py) against a /proc written as the kernel shows it."""

from __future__ import annotations

import os

from fake_proc import FakeProcess, write_proc
from vram_exporter.rules.usage import ProcessInfo
from vram_exporter.sources.processes import read_tree

CONTAINER = "c0ffee" + "0" * 58


def test_reads_parents_containers_and_listening_ports_up_the_chain(tmp_path):
    root = write_proc(tmp_path, [
        FakeProcess(900, 1, "containerd-shim"),
        FakeProcess(1000, 900, "vllm", CONTAINER, ports=(40001, 40002)),
        FakeProcess(1001, 1000, "VLLM::EngineCor", CONTAINER),
        FakeProcess(5, 1, "sshd", ports=(22,)),
    ])
    assert read_tree([1001], root) == {
        1001: ProcessInfo(1001, 1000, CONTAINER, frozenset()),
        1000: ProcessInfo(1000, 900, CONTAINER, frozenset({40001, 40002})),
        900: ProcessInfo(900, 1, None, frozenset()),
    }


def test_a_command_with_a_parenthesis_and_spaces_still_gives_the_parent(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 3, "a) b (c")])
    assert read_tree([7], root)[7].ppid == 3


def test_a_process_gone_or_in_another_namespace_is_simply_not_known(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 3)])
    assert read_tree([4242, 7], root) == {7: ProcessInfo(7, 3)}


def test_unreadable_fds_leave_the_ports_unknown_not_an_error(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 1, ports=(8000,))])
    for link in (root / "7" / "fd").iterdir():
        link.unlink()
    os.rmdir(root / "7" / "fd")
    assert read_tree([7], root) == {7: ProcessInfo(7, 1)}


def test_a_loop_in_a_torn_read_ends(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 8), FakeProcess(8, 7)])
    assert set(read_tree([7], root)) == {7, 8}


def test_the_port_on_the_command_line_counts_where_the_fds_cannot_be_read(tmp_path):
    """An exporter that is not root cannot read a root engine's fds; its --port is in the world-readable cmdline."""
    root = write_proc(tmp_path, [FakeProcess(7, 1, argv=("vllm", "serve", "/models/qwen", "--port", "40001")),
                                 FakeProcess(8, 1, argv=("python3", "-m", "sglang.launch_server", "--port=40002")),
                                 FakeProcess(9, 1, argv=("python3", "--port", "not-a-number"))])
    tree = read_tree([7, 8, 9], root)
    assert (tree[7].ports, tree[8].ports, tree[9].ports) == (frozenset({40001}), frozenset({40002}), frozenset())


def test_a_gpu_process_brings_its_container_mates_and_nothing_else(tmp_path):
    """Ray-style: the GPU process is a sibling of the listener under the shim, not its child."""
    other = "d" * 64
    root = write_proc(tmp_path, [FakeProcess(901, 1, "containerd-shim"),
                                 FakeProcess(1100, 901, "vllm", CONTAINER, ports=(40004,)),
                                 FakeProcess(1101, 901, "ray::RayWorker", CONTAINER),
                                 FakeProcess(1200, 901, "other", other), FakeProcess(5, 1, "sshd")])
    tree = read_tree([1101], root)
    assert set(tree) == {1101, 901, 1100} and tree[1100].ports == frozenset({40004})


def test_no_scan_of_proc_when_no_gpu_process_is_in_a_container(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 1), FakeProcess(8, 1, "other", CONTAINER)])
    assert set(read_tree([7], root)) == {7}
