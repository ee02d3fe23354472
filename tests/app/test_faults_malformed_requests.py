"""No remote party can make the exporter log a traceback (issue 24, item 7).

Malformed requests (a 64 KB header, a 16 KB request line, a bad chunk, a non-HTTP greeting) are answered
400 as before; the log gets no traceback and no error line for them.
"""

from __future__ import annotations

import socket

import pytest

from conftest import FIXTURES

MALFORMED = {
    "64 KB header": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n",
    "16 KB request line": b"GET /" + b"a" * 16384 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad chunk": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\nhello\r\n0\r\n\r\n"),
    "bad chunk, body read": (b"GET /api/v1/fit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\nnot-hex\r\n"),
    "invalid header name": b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    "second request garbage": (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n" b"\x16\x03\x01garbage\r\n\r\n"),
}


def send_raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.fixture(scope="module")
def exporter():
    from conftest import ExporterProcess

    process = ExporterProcess("--nvml.fixture", str(FIXTURES / "h100-idle.yaml"))
    yield process
    process.stop()


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_request_is_400_and_no_traceback(exporter, name):
    before = len(exporter.output())
    answer = send_raw(exporter.port, MALFORMED[name])
    if name != "second request garbage":
        assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    assert exporter.text("/-/healthy")  # still serving
    written = exporter.output()[before:]
    assert "Traceback" not in written and "level=error" not in written, written
