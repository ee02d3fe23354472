"""A TLS 1.3 client that sends no certificate where one is required is told why (issue 24, item 10).

exporter-toolkit's Go server answers it with the "certificate required" alert (116); OpenSSL writes the same
alert, and the exporter now sends it instead of closing the connection without a word.
"""

from __future__ import annotations

import http.client
import ssl

import pytest

from test_web_security import pki, start_with_config  # noqa: F401 - pki is a fixture


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_client_without_certificate_gets_the_alert(tmp_path, pki, version):  # noqa: F811
    exporter = start_with_config(tmp_path, f"tls_server_config:\n  cert_file: {pki}/server.crt\n"
                                           f"  key_file: {pki}/server.key\n"
                                           f"  client_auth_type: RequireAndVerifyClientCert\n"
                                           f"  client_ca_file: {pki}/ca.crt\n")
    try:
        exporter.wait_ready(scheme="https", cafile=pki / "ca.crt", client_cert=pki)
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.minimum_version = context.maximum_version = version
        connection = http.client.HTTPSConnection("127.0.0.1", exporter.port, context=context, timeout=10)
        with pytest.raises(ssl.SSLError) as refused:
            connection.request("GET", "/metrics")
            connection.getresponse()
        # TLS 1.3: the alert arrives after the client's side of the handshake; TLS 1.2: during it.
        expected = "CERTIFICATE_REQUIRED" if version == ssl.TLSVersion.TLSv1_3 else "HANDSHAKE_FAILURE"
        assert expected in refused.value.reason, refused.value
        assert "Traceback" not in exporter.output()
    finally:
        exporter.stop()
