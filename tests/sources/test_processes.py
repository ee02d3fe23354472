"""The process-tree reader (sources/processes.py) against a /proc written as the kernel shows it."""

from __future__ import annotations

import os

import shutil
import time

from fake_proc import FakeProcess, write_proc
from vram_exporter.rules.usage import ProcessInfo
from vram_exporter.sources import processes
from vram_exporter.sources.processes import MAX_CMDLINE, read_tree

CONTAINER = "c0ffee" + "0" * 58


def test_reads_parents_containers_and_listening_ports_up_the_chain(tmp_path):
    root = write_proc(tmp_path, [
        FakeProcess(900, 1, "containerd-shim"),
        FakeProcess(1000, 900, "vllm", CONTAINER, ports=(40001, 40002)),
        FakeProcess(1001, 1000, "VLLM::EngineCor", CONTAINER),
        FakeProcess(5, 1, "sshd", ports=(22,)),
    ])
    assert read_tree([1001], root) == {
        1001: ProcessInfo(1001, 1000, CONTAINER, frozenset(), "VLLM::EngineCor"),
        1000: ProcessInfo(1000, 900, CONTAINER, frozenset({40001, 40002}), "vllm"),
        900: ProcessInfo(900, 1, None, frozenset(), "containerd-shim"),
    }


def test_a_command_with_a_parenthesis_and_spaces_still_gives_the_parent(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 3, "a) b (c")])
    assert read_tree([7], root)[7].ppid == 3


def test_a_process_gone_or_in_another_namespace_is_simply_not_known(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 3)])
    assert read_tree([4242, 7], root) == {7: ProcessInfo(7, 3, cmdline="python3")}


def test_unreadable_fds_leave_the_ports_unknown_not_an_error(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 1, ports=(8000,))])
    for link in (root / "7" / "fd").iterdir():
        link.unlink()
    os.rmdir(root / "7" / "fd")
    assert read_tree([7], root) == {7: ProcessInfo(7, 1, cmdline="python3")}


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


def test_the_command_line_is_kept_for_a_manifest_model_to_be_known_by(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 1, argv=("vllm", "serve", "/models/qwen2.5-7b", "--port", "8001")),
                                 FakeProcess(8, 1, argv=("python3", "-c", "x" * (2 * MAX_CMDLINE)))])
    tree = read_tree([7, 8], root)
    assert tree[7].cmdline == "vllm serve /models/qwen2.5-7b --port 8001"
    assert len(tree[8].cmdline) == MAX_CMDLINE  # bounded: a command line of megabytes is cut


# Robustness: whatever /proc holds, less is known, and nothing is raised.

def test_a_process_that_vanishes_between_two_reads_leaves_what_was_read(tmp_path, monkeypatch):
    root = write_proc(tmp_path, [FakeProcess(1000, 900, "vllm", CONTAINER, ports=(40001,)),
                                 FakeProcess(900, 1, "containerd-shim")])
    real_read = processes._read

    def vanishing(path, *args):
        text = real_read(path, *args)
        if path == root / "1000" / "stat":
            shutil.rmtree(root / "1000")  # the process exits right after its stat was read
        return text

    monkeypatch.setattr(processes, "_read", vanishing)
    shim = ProcessInfo(900, 1, cmdline="containerd-shim")
    assert read_tree([1000], root) == {1000: ProcessInfo(1000, 900), 900: shim}


def test_a_container_mate_that_vanishes_during_the_scan_is_skipped(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 1, "engine", CONTAINER), FakeProcess(8, 1, "mate", CONTAINER)])
    (root / "8" / "cgroup").unlink()
    (root / "8" / "stat").unlink()  # listed by the scan, gone before it is read
    assert set(read_tree([7], root)) == {7}


def test_an_unreadable_proc_entry_is_not_known(tmp_path):
    """As root the test cannot take read permission away: /proc/<pid> a file, its stat a directory, its fd a
    file fail with the same OSError a permission refusal raises."""
    root = write_proc(tmp_path, [FakeProcess(8, 1, ports=(8000,)), FakeProcess(9, 1)])
    (root / "7").write_text("not a directory")
    (root / "8" / "cgroup").unlink()
    (root / "8" / "cgroup").mkdir()
    shutil.rmtree(root / "8" / "fd")
    (root / "8" / "fd").write_text("")
    (root / "9" / "stat").unlink()
    (root / "9" / "stat").mkdir()
    assert read_tree([7, 8, 9], root) == {8: ProcessInfo(8, 1, cmdline="python3")}


def test_cgroup_files_of_odd_forms_give_no_container_or_the_right_one(tmp_path):
    odd = {
        11: b"",  # empty
        12: b"\xff\xfe\x00garbage \x80\x81\n",  # not UTF-8
        13: b"0::/docker/" + b"a" * 63 + b"\n",  # 63 hex: no container id
        14: b"0::/kubepods/pod1/" + b"a" * 65 + b"\n",  # 65 hex: no container id
        15: b"12:memory:/\n11:cpu:/\n1:name=systemd:/kubepods/burstable/pod1/cri-containerd-" + b"e" * 64
            + b".scope\n",  # cgroup v1: the id on a later line
        16: b"0::/" + b"x" * (1 << 20),  # a megabyte without a newline: read only so far
    }
    root = write_proc(tmp_path, [FakeProcess(pid, 1) for pid in odd])
    for pid, content in odd.items():
        (root / str(pid) / "cgroup").write_bytes(content)
    tree = read_tree(list(odd), root)
    assert {pid: info.container for pid, info in tree.items()} == {11: None, 12: None, 13: None, 14: None,
                                                                   15: "e" * 64, 16: None}


def test_a_stat_of_odd_form_gives_no_parent_and_no_error(tmp_path):
    root = write_proc(tmp_path, [FakeProcess(7, 1), FakeProcess(8, 1), FakeProcess(9, 1)])
    (root / "7" / "stat").write_bytes(b"7 (no closing parenthesis S 1")
    (root / "8" / "stat").write_bytes(b"8 (\xff\xfe) S 1 8 8")  # a command that is not UTF-8
    (root / "9" / "stat").write_bytes(b"9 (x) S not-a-pid")
    assert {pid: info.ppid for pid, info in read_tree([7, 8, 9], root).items()} == {8: 1}


def test_thousands_of_processes_are_scanned_for_the_one_container_mate(tmp_path):
    crowd = [FakeProcess(pid, 1, "worker", "f" * 64 if pid % 2 else None) for pid in range(2000, 5000)]
    root = write_proc(tmp_path, [*crowd, FakeProcess(901, 1, "containerd-shim"),
                                 FakeProcess(1100, 901, "vllm", CONTAINER, ports=(40004,)),
                                 FakeProcess(1101, 901, "ray::RayWorker", CONTAINER)])
    started = time.monotonic()
    tree = read_tree([1101], root)
    assert set(tree) == {1101, 901, 1100}
    assert time.monotonic() - started < 10  # some 3,000 small reads; generous on a loaded machine


def test_the_scan_for_container_mates_stops_at_its_bound(tmp_path, monkeypatch):
    root = write_proc(tmp_path, [FakeProcess(7, 1, "engine", CONTAINER)]
                      + [FakeProcess(pid, 1, "mate", CONTAINER) for pid in (20, 21, 22)])
    monkeypatch.setattr(processes, "MAX_SCANNED", 2)
    assert len(set(read_tree([7], root)) - {7}) <= 2
