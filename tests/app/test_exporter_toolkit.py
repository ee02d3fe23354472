"""exporter-toolkit's own test cases (web/tls_config_test.go, web/handler_test.go at the commit named in
tests/fixtures/exporter-toolkit/ORIGIN.md), run against the real `vram-exporter` process with the
toolkit's testdata files and the same client behaviour: TLS versions, cipher suites, curves, client
certificates, credentials, request counts.

Each row is (toolkit test / case name, config file, client, what the toolkit expects, what we check).
The toolkit's client trusts tls-ca-chain.pem, which OpenSSL 3.0 refuses (its CAs carry only
anyExtendedKeyUsage): our client pins server.crt instead (the exact certificate must be presented).
Rows marked REFUSED are documented refusals (docs/web-configuration.md#refused-at-start): the file is refused at start with the
reason, never accepted and ignored.
"""

from __future__ import annotations

import base64
import http.client
import re
import shutil
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import FIXTURES, ExporterProcess

TK = FIXTURES / "exporter-toolkit"
SEED = str(FIXTURES / "seed-a2000.yaml")
PINNED = ssl.PEM_cert_to_DER_cert((TK / "server.crt").read_text())
OK = "ok"  # every request answered 200 with our metrics
TLS_ERROR = "tls-error"  # the connection fails (handshake, protocol, reset)
OPENSSL = {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
           "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
           "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA"}


@dataclass
class Case:
    name: str
    config: str | None  # a file under web/testdata, a missing file, or None (no --web.config.file)
    expect: str | int  # OK, TLS_ERROR, an HTTP status, or "start:REGEX" (refused at start, exit 2)
    tls: bool = False
    max_version: ssl.TLSVersion | None = None
    ciphers: list[str] = field(default_factory=list)
    actual_cipher: str | None = None
    curve: str | None = None
    cert: str | None = None
    user: str | None = None
    password: str = ""
    requests: int = 0  # the toolkit sends requests + 1
    refused: str | None = None  # a documented refusal: the reason
    note: str = ""


ANY_CLIENT = ("RequireAnyClientCert needs a certificate requested without verification, which Python's ssl "
              "cannot do")
YAML_FILES = [  # TestYAMLFiles: run/ and validate/ both expect the same error
    Case("path to config yml invalid", "somefile", "start:no such file"),
    Case("empty config yml", "web_config_empty.yml", OK),
    Case("invalid config yml (invalid structure)", "web_config_junk.yml", "start:web_config_junk.yml:1: .*valid dictionary"),
    Case("invalid config yml (invalid key)", "web_config_junk_key.yml", "start::2: tls_server_config.cert_filse: unknown key"),
    Case("invalid config yml (cert path empty)", "web_config_noAuth_certPath_empty.bad.yml",
         "start::2: tls_server_config.cert_file: missing one of cert or cert_file"),
    Case("invalid config yml (cert empty)", "web_config_noAuth_cert_empty.bad.yml",
         "start::2: tls_server_config.cert: missing one of cert or cert_file"),
    Case("invalid config yml (key path empty)", "web_config_noAuth_keyPath_empty.bad.yml",
         "start::3: tls_server_config.key_file: missing one of key or key_file"),
    Case("invalid config yml (key empty)", "web_config_noAuth_key_empty.bad.yml",
         "start::3: tls_server_config.key: missing one of key or key_file"),
    Case("invalid config yml (cert path and key path empty)", "web_config_noAuth_certPath_keyPath_empty.bad.yml",
         "start:missing one of cert or cert_file"),
    Case("invalid config yml (cert path invalid)", "web_config_noAuth_certPath_invalid.bad.yml",
         "start::2: tls_server_config.cert_file: cannot read .*somefile.*no such file"),
    Case("invalid config yml (key path invalid)", "web_config_noAuth_keyPath_invalid.bad.yml", "start:no such file"),
    Case("invalid config yml (cert path and key path invalid)", "web_config_noAuth_certPath_keyPath_invalid.bad.yml",
         "start:no such file"),
    Case("invalid config yml (invalid ClientAuth)", "web_config_noAuth.bad.yml",
         "start::4: tls_server_config.client_ca_file: client CA's have been configured without a Client Auth Policy"),
    Case("invalid config yml (invalid ClientCAs filepath)", "web_config_auth_clientCAs_invalid.bad.yml",
         "start::4: tls_server_config.client_ca_file: cannot read .*no such file"),
    Case("invalid config yml (invalid user list)", "web_config_auth_user_list_invalid.bad.yml",
         "start:hashedSecret too short to be a bcrypted password"),
    Case("invalid config yml (bad cipher)", "web_config_noAuth_inventedCiphers.bad.yml", "start::5: .*unknown cipher"),
    Case("invalid config yml (bad curves)", "web_config_noAuth_inventedCurves.bad.yml", "start::5: .*unknown curve"),
    Case("invalid config yml (bad TLS version)", "web_config_noAuth_wrongTLSVersion.bad.yml",
         "start::5: .*unknown TLS version"),
]
SERVER_BEHAVIOUR = [  # TestServerBehaviour
    Case("empty string YAMLConfigPath and default client", None, OK),
    Case("empty string YAMLConfigPath and TLS client", None, TLS_ERROR, tls=True),
    Case("valid tls config yml and default client", "web_config_noAuth.good.yml", TLS_ERROR),
    Case("valid tls config yml and tls client", "web_config_noAuth.good.yml", OK, tls=True),
    Case("valid tls config yml (cert and key inline) and tls client", "web_config_noAuth_tlsInline.good.yml", OK,
         tls=True),
    Case("valid tls config yml with TLS 1.1 client", "web_config_noAuth.good.yml", TLS_ERROR, tls=True,
         max_version=ssl.TLSVersion.TLSv1_1),
    Case("valid tls config yml with all ciphers", "web_config_noAuth_allCiphers.good.yml", OK, tls=True),
    Case("valid tls config yml with some ciphers", "web_config_noAuth_someCiphers.good.yml", OK, tls=True,
         ciphers=["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]),
    Case("valid tls config yml with no common cipher", "web_config_noAuth_someCiphers.good.yml", TLS_ERROR,
         tls=True, ciphers=["TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"]),
    Case("valid tls config yml with multiple client ciphers", "web_config_noAuth_someCiphers.good.yml", OK,
         tls=True, ciphers=["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"],
         actual_cipher="TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    Case("valid tls config yml with multiple client ciphers, client chooses cipher",
         "web_config_noAuth_someCiphers_noOrder.good.yml", OK, tls=True,
         ciphers=["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"],
         actual_cipher="TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    Case("valid tls config yml with all curves", "web_config_noAuth_allCurves.good.yml", OK, tls=True),
    Case("valid tls config yml with some curves", "web_config_noAuth_someCurves.good.yml", OK, tls=True,
         curve="secp521r1"),
    Case("valid tls config yml with no common curves", "web_config_noAuth_someCurves.good.yml", TLS_ERROR, tls=True,
         curve="secp384r1"),
    Case("valid tls config yml with non-http2 ciphers", "web_config_noAuth_noHTTP2.good.yml", OK, tls=True),
    Case("valid tls config yml with non-http2 ciphers but http2 enabled", "web_config_noAuth_noHTTP2Cipher.bad.yml",
         "start::5: tls_server_config.cipher_suites: http2: TLSConfig.CipherSuites is missing an HTTP/2-required"),
    Case("valid headers config", "web_config_headers.good.yml", OK),
    Case("invalid X-Content-Type-Options headers config", "web_config_headers_content_type_options.bad.yml",
         "start::2: http_server_config.headers: .*invalid value for X-Content-Type-Options"),
    Case("invalid X-Frame-Options headers config", "web_config_headers_frame_options.bad.yml",
         "start::2: http_server_config.headers: .*invalid value for X-Frame-Options"),
    Case("HTTP header that can not be overridden", "web_config_headers_extra_header.bad.yml",
         'start:HTTP header "Content-Type" can not be configured'),
    Case("valid tls config yml and tls client with RequireAnyClientCert (present certificate)",
         "tls_config_noAuth.requireanyclientcert.good.yml", "start::4: .*RequireAnyClientCert is not supported",
         tls=True, cert="client_selfsigned", refused=ANY_CLIENT),
    Case("valid tls config yml (cert from file, key inline) and tls client with RequireAnyClientCert "
         "(present certificate)", "tls_config_noAuth.requireanyclientcert.good.yml",
         "start::4: .*RequireAnyClientCert is not supported", tls=True, cert="client_selfsigned", refused=ANY_CLIENT),
    Case("valid tls config yml and tls client with RequireAndVerifyClientCert (present certificate)",
         "tls_config_noAuth.requireandverifyclientcert.good.yml", OK, tls=True, cert="client_selfsigned"),
    Case("valid tls config yml and tls client with VerifyPeerCertificate (present good SAN DNS entry)",
         "web_config_auth_client_san.good.yaml", OK, tls=True, cert="client2_selfsigned"),
    Case("valid tls config yml and tls client with VerifyPeerCertificate (present invalid SAN DNS entries)",
         "web_config_auth_client_san.bad.yaml", 403, tls=True, cert="client2_selfsigned",
         note="the toolkit fails the handshake (bad certificate); Python has no hook inside certificate "
              "verification, so the SANs are checked once the handshake is done: 403"),
    Case("valid rate limiter (no rate limiter set up) that doesn't block", "web_config_rate_limiter_nonblocking.yaml",
         OK, requests=10),
    Case("valid rate limiter with an interval of one second", "web_config_rate_limiter_one_second.yaml", 429,
         requests=10),
]
USERS = [  # TestUsers
    Case("without basic auth", "web_config_users_noTLS.good.yml", 401),
    Case("with correct basic auth", "web_config_users_noTLS.good.yml", OK, user="dave", password="dave123"),
    Case("without basic auth and TLS", "web_config_users.good.yml", 401, tls=True),
    Case("with correct basic auth and TLS", "web_config_users.good.yml", OK, tls=True, user="dave",
         password="dave123"),
    Case("with another correct basic auth and TLS", "web_config_users.good.yml", OK, tls=True, user="carol",
         password="carol123"),
    Case("with bad password and TLS", "web_config_users.good.yml", 401, tls=True, user="dave", password="bad"),
    Case("with bad username and TLS", "web_config_users.good.yml", 401, tls=True, user="nonexistent",
         password="nonexistent"),
]
TABLE = ([pytest.param(c, id=f"TestYAMLFiles/{c.name}") for c in YAML_FILES]
         + [pytest.param(c, id=f"TestServerBehaviour/{c.name}") for c in SERVER_BEHAVIOUR]
         + [pytest.param(c, id=f"TestUsers/{c.name}") for c in USERS])


class Server(ExporterProcess):
    """The real exporter with one toolkit file (relative paths resolve next to it, as in the toolkit)."""

    def __init__(self, config: Path | str | None, *extra: str) -> None:
        args = ["--web.config.file", str(config)] if config is not None else []
        super().__init__("--nvml.fixture", SEED, *args, *extra, ready=False)

    def wait(self, timeout: float = 30.0) -> bool:
        """True once the port accepts connections, False if the process exited (a refused file)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"exporter neither listened nor exited:\n{self.output()}")


def client_context(case: Case) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's certificate is pinned below instead
    if case.cert:
        context.load_cert_chain(str(TK / f"{case.cert}.pem"), str(TK / f"{case.cert}.key"))
    if case.max_version is not None:
        context.maximum_version = case.max_version
        if case.max_version < ssl.TLSVersion.TLSv1_2:  # a client that really offers TLS 1.0/1.1, as Go's does
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if case.ciphers:  # Go's client CipherSuites only concern TLS 1.2
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(":".join(OPENSSL[name] for name in case.ciphers))
    if case.curve:
        context.set_ecdh_curve(case.curve)
    return context


def request(port: int, case: Case, path: str = "/metrics", user: str | None = None, password: str | None = None):
    """(status, headers, body, cipher) or raises the connection's error."""
    user = case.user if user is None else user
    password = case.password if password is None else password
    if case.tls:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(case), timeout=15)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        cipher = None
        if case.tls:
            assert connection.sock.getpeercert(binary_form=True) == PINNED, "not the pinned server certificate"
            cipher = connection.sock.cipher()[0]
        return response.status, dict(response.getheaders()), response.read().decode(), cipher
    finally:
        connection.close()


def outcome(port: int, case: Case):
    """What the toolkit's test loop sees: the first failure among requests + 1, or OK."""
    for _ in range(case.requests + 1):
        try:
            status, _, body, cipher = request(port, case)
        except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError) as exc:
            return TLS_ERROR, repr(exc)
        if status != 200:
            return status, body
        assert "vram_gpu_memory_total_bytes" in body
        if case.actual_cipher:
            assert cipher == OPENSSL[case.actual_cipher], cipher
    return OK, ""


@pytest.mark.parametrize("case", TABLE)
def test_toolkit_case(case: Case):
    config = None if case.config is None else TK / case.config
    server = Server(config)
    try:
        listening = server.wait()
        if isinstance(case.expect, str) and case.expect.startswith("start:"):
            assert not listening, f"started although the toolkit refuses {case.config}"
            assert server.proc.wait(timeout=10) == 2
            assert re.search(case.expect.removeprefix("start:"), server.output(), re.IGNORECASE), server.output()
            return
        assert listening, server.output()
        got, detail = outcome(server.port, case)
        assert got == case.expect, f"{case.name}: got {got} ({detail}), expected {case.expect}"
    finally:
        server.stop()


def test_toolkit_config_reloading(tmp_path):
    """TestConfigReloading: a policy no client passes (RequireAndVerifyClientCert, no client cert) is
    replaced by swapping the file's contents; the next connection succeeds."""
    for name in ("server.crt", "server.key", "web_config_noAuth.good.yml", "web_config_noAuth.good.blocking.yml"):
        shutil.copy(TK / name, tmp_path / name)
    blocking = tmp_path / "web_config_noAuth.good.blocking.yml"
    server = Server(blocking)
    case = Case("reload", None, OK, tls=True)
    try:
        assert server.wait(), server.output()
        assert outcome(server.port, case)[0] == TLS_ERROR
        blocking.write_text((tmp_path / "web_config_noAuth.good.yml").read_text())
        deadline = time.monotonic() + 10
        while outcome(server.port, case)[0] != OK:
            assert time.monotonic() < deadline, f"the new web config never applied:\n{server.output()}"
            time.sleep(0.25)
    finally:
        server.stop()


def _basic_auth_server():
    # --web.max-requests 0: the toolkit's server has no concurrency limit, and this test sends 300 at once.
    server = Server(TK / "web_config_users_noTLS.good.yml", "--web.max-requests", "0")
    assert server.wait(), server.output()
    return server


def test_toolkit_basic_auth_cache():
    """TestBasicAuthCache: 150 good and 150 wrong logins at once all get their right answer."""
    server = _basic_auth_server()
    case = Case("cache", None, OK)
    try:
        assert request(server.port, case, "/-/healthy", "alice", "alice123")[0] == 200
        assert request(server.port, case, "/-/healthy", "alice", "alice1234")[0] == 401
        start, results = threading.Event(), []

        def login(password, code):
            start.wait()
            results.append((request(server.port, case, "/-/healthy", "alice", password)[0], code))

        threads = [threading.Thread(target=login, args=args) for _ in range(150)
                   for args in (("alice123", 200), ("alice1234", 401))]
        for thread in threads:
            thread.start()
        start.set()
        for thread in threads:
            thread.join()
        assert len(results) == 300 and all(got == want for got, want in results), \
            sorted({(g, w) for g, w in results})
    finally:
        server.stop()


def test_toolkit_basic_auth_with_fake_password():
    """TestBasicAuthWithFakepassword: the hash unknown users are checked against is no way in."""
    server = _basic_auth_server()
    try:
        for _ in range(2):  # cold cache, then cached
            assert request(server.port, Case("fake", None, OK), "/-/healthy", "fakeuser", "fakepassword")[0] == 401
    finally:
        server.stop()


def test_toolkit_bypass_basic_auth_vuln():
    """TestByPassBasicAuthVuln (CVE-2022-46146): a user name holding a hash cannot poison the cache."""
    server = _basic_auth_server()
    case = Case("cve", None, OK)
    try:
        assert request(server.port, case, "/-/healthy",
                       "alice$2y$12$1DpfPeqF9HzHJt.EWswy1exHluGfbhnn3yXhR7Xes6m3WJqFg0Wby", "fakepassword")[0] == 401
        assert request(server.port, case, "/-/healthy", "alice",
                       "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSifakepassword")[0] == 401
    finally:
        server.stop()


def test_toolkit_http_headers():
    """TestHTTPHeaders: the configured headers, X-XSS-Protection given as the YAML integer 1."""
    server = Server(TK / "web_config_headers.good.yml")
    try:
        assert server.wait(), server.output()
        _, headers, _, _ = request(server.port, Case("headers", None, OK))
        assert {k: headers.get(k) for k in ("Strict-Transport-Security", "X-Frame-Options", "X-Content-Type-Options",
                                            "X-XSS-Protection")} == {
            "Strict-Transport-Security": "max-age=31536000; includeSubDomains", "X-Frame-Options": "deny",
            "X-Content-Type-Options": "nosniff", "X-XSS-Protection": "1"}
    finally:
        server.stop()


def test_table_counts():
    """57 toolkit cases: 52 table rows and 5 tests; 2 of them documented refusals (RequireAnyClientCert)."""
    rows = YAML_FILES + SERVER_BEHAVIOUR + USERS
    assert (len(YAML_FILES), len(SERVER_BEHAVIOUR), len(USERS)) == (18, 27, 7)
    assert [c.name for c in rows if c.refused] == [SERVER_BEHAVIOUR[20].name, SERVER_BEHAVIOUR[21].name]
