"""A /proc of our own for the process-tree reader (sources/processes.py): processes with a parent, a container
and listening ports, written as the kernel shows them (stat, cgroup, net/tcp, fd links, ns/net)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOST_NETNS = "net:[4026531840]"
_TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")


@dataclass(frozen=True)
class FakeProcess:
    pid: int
    ppid: int
    comm: str = "python3"
    container: str | None = None  # 64 hex
    ports: tuple[int, ...] = ()  # listening on the host network
    argv: tuple[str, ...] = ()


def write_proc(root: Path, processes: list[FakeProcess]) -> Path:
    """Writes every process under ``root``; the host's listening sockets are shared through one net/tcp."""
    inodes = {(proc.pid, port): 90000 + i for i, (proc, port) in
              enumerate((proc, port) for proc in processes for port in proc.ports)}
    tcp = _TCP_HEADER + "".join(
        f"   {i}: 00000000:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} "
        "1 0000000000000000 100 0 0 10 0\n" for i, ((_, port), inode) in enumerate(inodes.items()))
    for proc in processes:
        base = root / str(proc.pid)
        (base / "net").mkdir(parents=True, exist_ok=True)
        (base / "fd").mkdir(exist_ok=True)
        (base / "ns").mkdir(exist_ok=True)
        (base / "stat").write_text(f"{proc.pid} ({proc.comm}) S {proc.ppid} {proc.pid} {proc.pid} 0 -1 4194560 0\n")
        cgroup = (f"0::/system.slice/docker-{proc.container}.scope\n" if proc.container
                  else "0::/user.slice/user-0.slice/session-1.scope\n")
        (base / "cgroup").write_text(cgroup)
        (base / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in (proc.argv or (proc.comm,))))
        (base / "net" / "tcp").write_text(tcp)
        (base / "net" / "tcp6").write_text(_TCP_HEADER)
        (base / "ns" / "net").symlink_to(HOST_NETNS)
        (base / "fd" / "0").symlink_to("/dev/null")
        for n, port in enumerate(proc.ports, start=3):
            (base / "fd" / str(n)).symlink_to(f"socket:[{inodes[(proc.pid, port)]}]")
    return root
