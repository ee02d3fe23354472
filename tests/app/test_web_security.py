"""--web.config.file with a real TLS client: TLS scrapes work and plain HTTP is refused, client
certificates, basic auth with bcrypt, response headers, live reload, and refusals at start."""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
import time

import bcrypt
import pytest

from conftest import FIXTURES, ExporterProcess, exporter_command, free_port, require_tool
from vram_exporter.app.web.config import WebConfig

SEED = str(FIXTURES / "seed-a2000.yaml")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    openssl = require_tool("openssl")
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=test-ca")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext")
    return d


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def https_get(port: int, pki, path="/metrics", auth=None, client_cert=False):
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_cert:
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read().decode()


def start_with_config(tmp_path, text: str) -> ExporterProcess:
    config = tmp_path / "web.yml"
    config.write_text(text)
    return ExporterProcess("--nvml.fixture", SEED, "--web.config.file", str(config), ready=False)


def test_tls_scrape_works_and_plain_http_is_refused(tmp_path, pki):
    exporter = start_with_config(tmp_path, f"tls_server_config:\n  cert_file: {pki}/server.crt\n"
                                           f"  key_file: {pki}/server.key\n  min_version: TLS12\n")
    try:
        exporter.wait_ready(scheme="https", cafile=pki / "ca.crt")
        status, _, body = https_get(exporter.port, pki)
        assert status == 200 and "vram_gpu_memory_total_bytes" in body
        plain = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=5)
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            plain.request("GET", "/metrics")
            response = plain.getresponse()
            assert response.status != 200  # a TLS server must not answer plain HTTP with data
            raise ConnectionError(f"refused with {response.status}")
    finally:
        exporter.stop()


def test_client_certificate_is_required_when_configured(tmp_path, pki):
    exporter = start_with_config(tmp_path, f"tls_server_config:\n  cert_file: {pki}/server.crt\n"
                                           f"  key_file: {pki}/server.key\n"
                                           f"  client_auth_type: RequireAndVerifyClientCert\n"
                                           f"  client_ca_file: {pki}/ca.crt\n")
    try:
        exporter.wait_ready(scheme="https", cafile=pki / "ca.crt", client_cert=pki)
        assert https_get(exporter.port, pki, client_cert=True)[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            https_get(exporter.port, pki, client_cert=False)
    finally:
        exporter.stop()


def test_basic_auth_and_headers_and_live_reload(tmp_path, pki):
    config = (f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
              "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
              f"basic_auth_users:\n  alice: '{hashed('wonderland')}'\n")
    exporter = start_with_config(tmp_path, config)
    try:
        exporter.wait_ready(scheme="https", cafile=pki / "ca.crt", auth="alice:wonderland")
        status, headers, _ = https_get(exporter.port, pki, auth="alice:wonderland")
        assert status == 200 and headers["X-Frame-Options"] == "deny"
        for auth in (None, "alice:wrong", "mallory:wonderland", "alice"):
            status, headers, _ = https_get(exporter.port, pki, auth=auth)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), auth
            assert headers["X-Frame-Options"] == "deny"
        # A new password applies without a restart; the old one stops working.
        (tmp_path / "web.yml").write_text(config.replace("alice:", "bob:").replace(
            "alice: ", "bob: ").split("basic_auth_users")[0] + f"basic_auth_users:\n  bob: '{hashed('builder')}'\n")
        deadline = time.monotonic() + 10
        while https_get(exporter.port, pki, auth="bob:builder")[0] != 200:
            assert time.monotonic() < deadline, "the new web config was not applied"
            time.sleep(0.2)
        assert https_get(exporter.port, pki, auth="alice:wonderland")[0] == 401
    finally:
        exporter.stop()


@pytest.mark.parametrize("text, expected", [
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequestClientCert\n",
     "Python's ssl module verifies every client certificate"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
     "web.yml:4: tls_server_config.cipher_suites: Value error, unknown cipher: TLS_RSA_WITH_RC4_128_SHA"),
    ("basic_auth_users:\n  alice: plaintext\n", "must be a bcrypt hash"),
    ("basic_auth_user:\n  alice: x\n", "web.yml:1: basic_auth_user: unknown key"),
    ("http_server_config:\n  headers: {X-Powered-By: me}\n", "can not be configured"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
     "web.yml:2: tls_server_config.cert_file: cannot read"),
    ("tls_server_config:\n  cert_file: ''\n  key_file: b\n",
     "web.yml:2: tls_server_config.cert_file: missing one of cert or cert_file"),
])
def test_bad_web_configs_are_refused_at_start(tmp_path, text, expected):
    config = tmp_path / "web.yml"
    config.write_text(text)
    result = subprocess.run([*exporter_command(), "--nvml.fixture", SEED, "--web.config.file", str(config),
                             "--web.listen-address", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and expected in result.stderr, result.stderr


def test_unknown_users_pay_the_same_bcrypt_work(tmp_path, monkeypatch):
    import asyncio

    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  alice: '{hashed('x')}'\n")
    web = WebConfig.load(config)
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: calls.append(h) or real(pw, h))

    async def checks():
        users = web.users
        assert not await web.auth.check(users, "nobody", "x")
        assert not await web.auth.check(users, "alice", "y")
        assert await web.auth.check(users, "alice", "x")
        assert await web.auth.check(users, "alice", "x")  # verified credentials are cached
        assert not await web.auth.check(users, "alice", "y")  # and so are wrong ones

    asyncio.run(checks())
    assert len(calls) == 3


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("250ms", 0.25), ("1m30s", 90.0), ("0", 0.0), (0, 0.0),
                                           (1_000_000_000, 1.0), ("1.5h", 5400.0)])
def test_rate_limit_intervals_are_go_durations(text, seconds):
    from vram_exporter.app.web.config import parse_go_duration

    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1", "1sec", "s", "", "1s2"])
def test_bad_go_durations_are_refused(text):
    from vram_exporter.app.web.config import parse_go_duration

    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_rate_limiter_is_go_token_bucket():
    from vram_exporter.app.web.auth import RateLimiter

    limiter = RateLimiter(1.0, 2)
    now = limiter._last
    assert [limiter.allow(now), limiter.allow(now), limiter.allow(now)] == [True, True, False]
    assert limiter.allow(now + 1.0) and not limiter.allow(now + 1.5)
    assert not RateLimiter(1.0, 0).allow(now + 100)  # burst 0: nothing passes, as in Go


def test_flood_beyond_the_bound_is_refused_at_once_and_identical_checks_share_one(tmp_path):
    import asyncio

    from vram_exporter.app.web.auth import BasicAuth, Overloaded

    users = {"alice": hashed("x")}
    auth = BasicAuth(workers=1, max_waiting=2)

    async def flood():
        distinct = await asyncio.gather(*(auth.check(users, "alice", f"guess{i}") for i in range(10)),
                                        return_exceptions=True)
        same = await asyncio.gather(*(auth.check(users, "alice", "x") for _ in range(50)))
        return distinct, same

    distinct, same = asyncio.run(flood())
    assert sum(isinstance(r, Overloaded) for r in distinct) == 7 and distinct.count(False) == 3
    assert all(same)
    auth.close()
