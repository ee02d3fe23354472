"""The process tree of the GPU processes, read from /proc: parents, containers, listening ports.

What rules/usage.py attributes by. ``root`` is injectable (tests build a /proc of their own), as
sources/nvml.py's ``proc_root`` is. The GPU processes and their ancestors are read, and where a GPU
process is in a container, the other processes of that container (its listener need not be its
ancestor): only then is every pid's cgroup file looked at, one small read each. Every read is allowed to fail: a process gone, another
PID namespace, a /proc/<pid>/fd this user may not read (another user's process without CAP_SYS_PTRACE)
each leave less known, never an error.

- ``/proc/<pid>/stat``: the parent (the field after the command, which may itself hold ``)``).
- ``/proc/<pid>/cgroup``: a container's 64-hex id where the path has one (Docker ``docker-<id>.scope``
  or ``/docker/<id>``, containerd ``cri-containerd-<id>``, Podman ``libpod-<id>``).
- ``/proc/<pid>/net/tcp`` and ``tcp6`` (the process's own network namespace) for the listening sockets'
  inodes and ports, ``/proc/<pid>/fd/*`` for which of those sockets the process holds. Reading another
  user's fds needs root with CAP_SYS_PTRACE (or the same user), so also:
- ``/proc/<pid>/cmdline`` (readable by anyone): the ``--port N`` GPUStack writes into every engine's
  command line (worker/backends/*.py ``_build_command_args``), taken as a port the process serves on;
  and the command line itself, which a manifest's model may be recognised by.

Bounded, whatever /proc holds: each file is read up to a size (a torn or odd file is cut, never read
whole), bytes that are not UTF-8 are replaced, at most ``MAX_SCANNED`` pids are looked at for container
mates and ``MAX_FDS`` fds per process. A process that vanishes between two reads leaves what was read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from itertools import islice
from pathlib import Path

from ..rules.usage import MAX_ANCESTRY, ProcessInfo

_CONTAINER_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_SOCKET = re.compile(r"socket:\[(\d+)\]")
SMALL_FILE = 64 * 1024  # stat, cgroup, cmdline: a few hundred bytes in practice
NET_TABLE = 8 * 1024 * 1024  # net/tcp: ~150 bytes a socket, some 50,000 sockets
MAX_SCANNED = 65_536  # pids looked at for container mates (/proc lists processes, not threads)
MAX_FDS = 65_536  # fds looked at per process for its listening sockets
MAX_CMDLINE = 4096  # characters of a command line kept for matching


def read_tree(pids: Iterable[int], root: Path = Path("/proc")) -> dict[int, ProcessInfo]:
    """The given processes, their ancestors and their container-mates that /proc shows, by pid."""
    tree: dict[int, ProcessInfo] = {}
    listening_by_netns: dict[str, dict[int, int]] = {}
    pids = list(pids)
    _add_with_ancestors(root, pids, tree, listening_by_netns)
    containers = {tree[pid].container for pid in pids if pid in tree} - {None}
    if containers:
        _add_with_ancestors(root, _container_mates(root, containers, tree), tree, listening_by_netns)
    return tree


def _add_with_ancestors(root: Path, pids: Iterable[int], tree: dict[int, ProcessInfo],
                        listening_by_netns: dict[str, dict[int, int]]) -> None:
    for pid in pids:
        for _ in range(MAX_ANCESTRY):
            if pid <= 0 or pid in tree:
                break
            info = _read_one(root, pid, listening_by_netns)
            if info is None:
                break
            tree[pid] = info
            pid = info.ppid


def _container_mates(root: Path, containers: set[str], known: Mapping[int, ProcessInfo]) -> list[int]:
    try:
        pids = sorted(int(entry.name) for entry in islice(root.iterdir(), MAX_SCANNED) if _is_pid(entry.name))
    except OSError:
        return []
    return [pid for pid in pids if pid not in known and _container(root / str(pid)) in containers]


def _is_pid(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _read(path: Path, limit: int = SMALL_FILE) -> str | None:
    """The file's first ``limit`` bytes as text (odd bytes replaced); None where it cannot be read."""
    try:
        with path.open("rb") as file:
            return file.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _read_one(root: Path, pid: int, listening_by_netns: dict[str, dict[int, int]]) -> ProcessInfo | None:
    base = root / str(pid)
    ppid = _parent(base)
    if ppid is None:
        return None
    argv = _argv(base)
    return ProcessInfo(pid, ppid, _container(base), _ports(base, listening_by_netns) | _command_port(argv),
                       " ".join(argv)[:MAX_CMDLINE])


def _parent(base: Path) -> int | None:
    stat = _read(base / "stat")
    try:
        return int(stat[stat.rindex(")") + 2:].split()[1]) if stat else None
    except (ValueError, IndexError):
        return None


def _container(base: Path) -> str | None:
    found = _CONTAINER_ID.search(_read(base / "cgroup") or "")
    return found.group(1) if found else None


def _ports(base: Path, listening_by_netns: dict[str, dict[int, int]]) -> frozenset[int]:
    try:
        netns = os.readlink(base / "ns" / "net")
    except OSError:
        netns = str(base)  # unknown namespace: read this process's own tables
    if netns not in listening_by_netns:
        listening_by_netns[netns] = _listening(base)
    listening = listening_by_netns[netns]
    if not listening:
        return frozenset()
    return frozenset(listening[inode] for inode in _socket_inodes(base) if inode in listening)


def _argv(base: Path) -> list[str]:
    text = _read(base / "cmdline") or ""
    return [arg for arg in text.split("\0") if arg]


def _command_port(argv: list[str]) -> frozenset[int]:
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--port" and i + 1 < len(argv) else arg.partition("=")[2]
        if (arg == "--port" or arg.startswith("--port=")) and value.isascii() and value.isdigit():
            return frozenset({int(value)})
    return frozenset()


def _listening(base: Path) -> dict[int, int]:
    """Socket inode -> port, for the listening TCP sockets of this process's network namespace."""
    found: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        text = _read(base / "net" / table, NET_TABLE)
        for line in (text or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN:
                try:
                    found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
                except (ValueError, IndexError):
                    continue
    return found


def _socket_inodes(base: Path) -> list[int]:
    inodes = []
    try:
        entries = list(islice((base / "fd").iterdir(), MAX_FDS))
    except OSError:
        return []
    for entry in entries:
        try:
            found = _SOCKET.fullmatch(os.readlink(entry))
        except OSError:
            continue
        if found:
            inodes.append(int(found.group(1)))
    return inodes
