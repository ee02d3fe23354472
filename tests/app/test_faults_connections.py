"""File-descriptor exhaustion is survived (issue 24, item 6).

Past the open-files limit new connections used to be refused until idle ones timed out (up to 75 s), and
asyncio logged "socket.accept() out of system resource" with a traceback tens of thousands of times. Now the
connections are bounded (``--web.max-connections``, and below the open-files limit whatever the flag says),
the idle ones are closed first when the bound is reached, and the problem is logged once when it starts.
All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import time
import urllib.request

from conftest import ExporterProcess, FIXTURES, ROOT, exporter_command
from vram_exporter.app.web import connections
from vram_exporter.app.web.connections import Bound, Connections

OPEN_FILES = 128  # the exporter's RLIMIT_NOFILE here (systemd's default is 1,024: the same story, later)
IDLE_CONNECTIONS = 300


def low_open_files_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def open_idle(port: int, count: int) -> list[socket.socket]:
    """Connections that say nothing (as a slow or hostile client's do); some may be cut as they come."""
    idle = []
    for _ in range(count):
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return idle


def scrape_within(url: str, seconds: float) -> bytes:
    """A fresh connection's scrape, retried until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=2) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_scrape_answers_past_the_open_files_limit_and_the_log_stays_short():
    exporter = ExporterProcess("--nvml.fixture", str(FIXTURES / "h100-idle.yaml"), preexec_fn=low_open_files_limit,
                               ready=False)
    exporter.wait_ready(path="/-/healthy")
    idle: list[socket.socket] = []
    try:
        before = len(exporter.output().splitlines())
        idle = open_idle(exporter.port, IDLE_CONNECTIONS)
        time.sleep(0.5)
        for _ in range(3):  # each a new connection, while the idle ones are still open
            assert b"vram_exporter_build_info" in scrape_within(exporter.url, 5)
        assert exporter.text("/-/healthy") == "Healthy\n"
    finally:
        for sock in idle:
            sock.close()
        log = exporter.stop()
    written = log.splitlines()[before:]
    assert "Traceback" not in log and "out of system resource" not in log, log[-3000:]
    assert len(written) <= 6, written  # once when it starts (and once when it ends), not a storm


def test_the_bound_holds_below_the_flag_and_closes_idle_connections_first():
    exporter = ExporterProcess("--nvml.fixture", str(FIXTURES / "h100-idle.yaml"), "--web.max-connections", "8")
    idle: list[socket.socket] = []
    try:
        idle = open_idle(exporter.port, 20)
        time.sleep(0.5)
        assert b"vram_exporter_build_info" in scrape_within(exporter.url, 5)
        closed = 0
        for sock in idle:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= len(idle) - 8, closed  # the oldest idle ones went to make room
        log = exporter.output()
        assert log.count("connections at the limit") == 1, log
    finally:
        for sock in idle:
            sock.close()
        exporter.stop()


def test_max_connections_is_a_whole_number():
    done = subprocess.run([*exporter_command(), "--nvml.fixture", str(FIXTURES / "h100-idle.yaml"),
                           "--web.max-connections", "many"], capture_output=True, text=True, cwd=ROOT, timeout=15)
    assert done.returncode == 2 and "--web.max-connections: expected a whole number" in done.stderr, done.stderr


class FakeTransport:
    def __init__(self, unsent: int = 0) -> None:
        self.aborted = False
        self.unsent = unsent

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.unsent


def test_at_the_bound_the_oldest_idle_connection_goes_never_one_answering():
    tracked = Connections(Bound(3, 1))
    answering, writing, idle, newer = (object() for _ in range(4))
    transports = {c: FakeTransport(unsent=100 if c is writing else 0) for c in (answering, writing, idle, newer)}
    for connection in (answering, writing, idle):
        tracked.made(connection, transports[connection])
    tracked.answering(answering)
    tracked.made(newer, transports[newer])  # one too many: the idle one makes room
    assert [c for c, t in transports.items() if t.aborted] == [idle]
    late = object()
    transports[late] = FakeTransport()
    tracked.made(late, transports[late])  # the oldest idle now is `newer`
    assert transports[newer].aborted and not transports[late].aborted
    tracked.answering(late)
    last = object()
    transports[last] = FakeTransport()
    tracked.made(last, transports[last])  # none idle: the newcomer itself is closed
    assert transports[last].aborted
    assert not transports[answering].aborted and not transports[writing].aborted


def test_the_bound_stays_below_the_open_files_limit(monkeypatch):
    for soft, flag, expected in ((1024, 512, 512), (128, 512, 40), (128, 0, 40), (64, 8, 8)):
        monkeypatch.setattr(resource, "getrlimit", lambda _, soft=soft: (soft, soft))
        bound = connections.bound(flag)
        assert bound.connections == expected, (soft, flag, bound)
        assert bound.connections + 3 * bound.backlog + connections.FILES_KEPT // 2 <= soft
