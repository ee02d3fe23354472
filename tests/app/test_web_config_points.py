"""Issue 13, points 1-6: the web-config holes found in our exporter, each checked against the real
process (each of these failed before the fix)."""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import subprocess
import threading
import time

import bcrypt
import pytest

from conftest import FIXTURES, exporter_command, free_port, require_tool
from test_exporter_toolkit import Server

SEED = str(FIXTURES / "seed-a2000.yaml")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs, a server certificate (and a second one, for rotation), a client certificate from each CA."""
    openssl = require_tool("openssl")
    d = tmp_path_factory.mktemp("pki2")

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca in ("ca1", "ca2"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
            "-subj", f"/CN={ca}")
    for name, ca in (("server", "ca1"), ("server-new", "ca1"), ("client1", "ca1"), ("client2", "ca2")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext")
    return d


def get(port, *, tls=True, cert=None, auth=None, max_version=None, path="/metrics"):
    """(status, headers, body, peer certificate DER); raises on a failed connection."""
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if cert:
            context.load_cert_chain(str(cert) + ".crt", str(cert) + ".key")
        if max_version:
            context.minimum_version = context.maximum_version = max_version
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        peer = connection.sock.getpeercert(binary_form=True) if tls else None
        return response.status, dict(response.getheaders()), response.read().decode(), peer
    finally:
        connection.close()


def fails(port, **kwargs) -> bool:
    try:
        return get(port, **kwargs)[0] != 200
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError):
        return True


def until(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.2)


def started(config, text, *extra) -> Server:
    config.write_text(text)
    server = Server(config, *extra)
    assert server.wait(), server.output()
    return server


def tls_yaml(pki, extra="", cert="server"):
    return f"tls_server_config:\n  cert_file: {pki}/{cert}.crt\n  key_file: {pki}/{cert}.key\n{extra}"


def test_1_client_ca_without_client_auth_type_is_refused(tmp_path, pki):
    config = tmp_path / "web.yml"
    config.write_text(tls_yaml(pki, f"  client_ca_file: {pki}/ca1.crt\n"))
    result = subprocess.run([*exporter_command(), "--nvml.fixture", SEED, "--web.config.file", str(config),
                             "--web.listen-address", f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2, result.stderr
    assert "web.yml:4: tls_server_config.client_ca_file: client CA's have been configured without a Client Auth " \
           "Policy" in result.stderr


def test_2_a_removed_ca_is_gone_after_reload(tmp_path, pki):
    bundle = tmp_path / "clients.pem"
    bundle.write_text((pki / "ca1.crt").read_text() + (pki / "ca2.crt").read_text())
    server = started(tmp_path / "web.yml", tls_yaml(pki, "  client_auth_type: RequireAndVerifyClientCert\n"
                                                    f"  client_ca_file: {bundle}\n"))
    try:
        assert get(server.port, cert=pki / "client2")[0] == 200
        assert get(server.port, cert=pki / "client1")[0] == 200
        bundle.write_text((pki / "ca1.crt").read_text())  # the YAML itself is untouched
        until(lambda: fails(server.port, cert=pki / "client2"), what="client2 refused once ca2 is removed")
        assert get(server.port, cert=pki / "client1")[0] == 200
    finally:
        server.stop()


def test_3_certificates_rotated_on_disk_are_served_by_the_next_handshake(tmp_path, pki):
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    server = started(tmp_path / "web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    new = ssl.PEM_cert_to_DER_cert((pki / "server-new.crt").read_text())
    try:
        assert get(server.port)[3] == ssl.PEM_cert_to_DER_cert((pki / "server.crt").read_text())
        # cert-manager style: new files renamed into place, the YAML never touched
        for name in ("server.key", "server.crt"):
            (tmp_path / f".{name}").write_bytes((pki / name.replace("server", "server-new")).read_bytes())
            os.replace(tmp_path / f".{name}", tmp_path / name)
        until(lambda: get(server.port)[3] == new, what="the rotated certificate served")
    finally:
        server.stop()


def test_3_a_policy_no_client_passes_is_still_replaced(tmp_path, pki):
    config = tmp_path / "web.yml"
    server = started(config, tls_yaml(pki, "  client_auth_type: RequireAndVerifyClientCert\n"
                                      f"  client_ca_file: {pki}/ca2.crt\n"))
    try:
        assert fails(server.port, cert=pki / "client1")  # no client can get a request through
        config.write_text(tls_yaml(pki, "  client_auth_type: RequireAndVerifyClientCert\n"
                                   f"  client_ca_file: {pki}/ca1.crt\n"))
        until(lambda: not fails(server.port, cert=pki / "client1"), what="the new policy applied")
    finally:
        server.stop()


def test_3_a_broken_change_keeps_the_last_good_config_logs_once_and_says_so(tmp_path):
    config = tmp_path / "web.yml"
    good = f"basic_auth_users:\n  alice: '{bcrypt.hashpw(b'x', bcrypt.gensalt(4)).decode()}'\n"
    server = started(config, good)
    try:
        def metrics():
            return get(server.port, tls=False, auth="alice:x")[2]

        assert "vram_exporter_web_config_last_reload_successful 1" in metrics()
        config.write_text(good + "http_server_config:\n  headers: {X-Frame-Options: foo}\n")
        until(lambda: "vram_exporter_web_config_last_reload_successful 0" in metrics(), what="the failure shown")
        time.sleep(3)  # several watch rounds over the same broken file
        assert get(server.port, tls=False, auth="alice:wrong")[0] == 401  # the last good config still serves
        log = server.output()
        assert log.count("web config reload failed") == 1, log
        assert "web.yml:4: http_server_config.headers" in log
        config.write_text(good)
        until(lambda: "vram_exporter_web_config_last_reload_successful 1" in metrics(), what="recovery shown")
    finally:
        server.stop()


@pytest.mark.parametrize("headers, error", [
    ("{X-Content-Type-Options: sniff}", "invalid value for X-Content-Type-Options"),
    ("{X-Frame-Options: foo}", "invalid value for X-Frame-Options"),
])
def test_4_restricted_header_values_are_refused(tmp_path, headers, error):
    config = tmp_path / "web.yml"
    config.write_text(f"http_server_config:\n  headers: {headers}\n")
    result = subprocess.run([*exporter_command(), "--nvml.fixture", SEED, "--web.config.file", str(config),
                             "--web.listen-address", f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and error in result.stderr, result.stderr


def test_4_an_integer_header_value_is_served_as_written(tmp_path):
    server = started(tmp_path / "web.yml", "http_server_config:\n  headers:\n    X-XSS-Protection: 1\n"
                                          "    X-Frame-Options: sameorigin\n")
    try:
        _, headers, _, _ = get(server.port, tls=False)
        assert headers["X-XSS-Protection"] == "1" and headers["X-Frame-Options"] == "sameorigin"
    finally:
        server.stop()


def test_5_a_known_user_never_waits_behind_guessers(tmp_path):
    """60 clients flood wrong passwords (bcrypt cost 10) while Prometheus scrapes with good ones: every
    scrape answers well within Prometheus's 10 s timeout (it took 22-31 s before), and the excess guesses
    are answered 429 with Retry-After at once."""
    hashed = bcrypt.hashpw(b"scrape-secret", bcrypt.gensalt(10)).decode()
    server = started(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    stop, statuses = threading.Event(), []

    def flood(n):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status, headers, _, _ = get(server.port, tls=False, auth=f"prometheus:guess-{n}-{i}", path="/-/healthy")
                statuses.append((status, headers.get("Retry-After")))
            except OSError:
                pass

    try:
        assert get(server.port, tls=False, auth="prometheus:scrape-secret")[0] == 200  # verified once
        threads = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(60)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        latencies = []
        for _ in range(10):
            started_at = time.monotonic()
            assert get(server.port, tls=False, auth="prometheus:scrape-secret")[0] == 200
            latencies.append(time.monotonic() - started_at)
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert max(latencies) < 3.0, latencies
        assert {401, 429} <= {s for s, _ in statuses}, set(statuses)
        assert all(retry == "1" for s, retry in statuses if s == 429)
    finally:
        stop.set()
        server.stop()


def test_6_min_version_tls10_is_honoured(tmp_path, pki):
    server = started(tmp_path / "web.yml", tls_yaml(pki, "  min_version: TLS10\n"))
    try:
        assert get(server.port, max_version=ssl.TLSVersion.TLSv1)[0] == 200
        assert get(server.port, max_version=ssl.TLSVersion.TLSv1_1)[0] == 200
        assert get(server.port)[0] == 200
    finally:
        server.stop()
    server = started(tmp_path / "web2.yml", tls_yaml(pki))  # the default, TLS12, still refuses them
    try:
        assert fails(server.port, max_version=ssl.TLSVersion.TLSv1)
    finally:
        server.stop()
