"""Shared test helpers: the real exporter process, free ports, and required external tools."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import settings

# The property tests check behaviour, not speed: on a shared CI machine one example can take longer
# than hypothesis' 200 ms default and would fail as "flaky" for a reason no user sees.
settings.register_profile("vram-exporter", deadline=None)
settings.load_profile("vram-exporter")

ROOT = Path(__file__).resolve().parent.parent
# The tests mirror the package's wings (tests/rules, tests/sources, ...); some borrow another's helpers
# (test_backends.py the collector's sample reader): every wing's folder is importable, whichever runs alone.
sys.path[1:1] = [str(ROOT / "tests" / wing) for wing in ("rules", "sources", "present", "app")]
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = ROOT / "tests" / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/*.prom from the current exporter output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def require_tool(name: str) -> str:
    """The path of an external tool the tests need. Missing is a failure, never a skip:
    `make test` installs every one of them."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make test` installs it (Debian package list in Makefile)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exporter_command() -> list[str]:
    script = Path(sys.executable).parent / "vram-exporter"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vram_exporter.cli"]


class ExporterProcess:
    """A real `vram-exporter` process on a free loopback port."""

    def __init__(self, *args: str, ready: bool = True, preexec_fn=None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Output goes to a file, not a pipe: a pipe nobody reads fills up and blocks the exporter.
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [*exporter_command(), *args, "--web.listen-address", f"127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, text=True, cwd=ROOT, preexec_fn=preexec_fn,
        )
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0, *, scheme: str = "http", cafile=None, client_cert=None,
                   auth: str | None = None, path: str = "/-/ready") -> None:
        """Until ``path`` answers 200: /-/ready, once the first read of every upstream is over (the
        port answers /-/healthy before that)."""
        import base64
        import ssl

        context = None
        if scheme == "https":
            context = ssl.create_default_context(cafile=str(cafile))
            if client_cert is not None:
                context.load_cert_chain(str(client_cert / "client.crt"), str(client_cert / "client.key"))
        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        url = f"{scheme}://127.0.0.1:{self.port}{path}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1,
                                            context=context):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("exporter did not become healthy in time")

    def get(self, path: str, headers: dict[str, str] | None = None):
        request = urllib.request.Request(self.url + path, headers=headers or {})
        return urllib.request.urlopen(request, timeout=10)

    def text(self, path: str = "/metrics", headers: dict[str, str] | None = None) -> str:
        with self.get(path, headers) as response:
            return response.read().decode()

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output()


@pytest.fixture
def start_exporter():
    started: list[ExporterProcess] = []

    def start(*args: str) -> ExporterProcess:
        process = ExporterProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class RecordedGpuStack:
    """GPUStack's API answered from tests/fixtures/gpustack (recorded from the real server), or from
    ``directory``: the same three documents, edited by a test."""

    def __init__(self, directory: Path = FIXTURES / "gpustack") -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                kind = self.path.split("?")[0].removeprefix("/v2/")
                document = directory / f"{kind}.json"
                if "/" in kind or not document.exists():
                    self.send_error(404)
                    return
                data = document.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def recorded_gpustack():
    server = RecordedGpuStack()
    yield server
    server.stop()
