"""TLS server contexts for ``--web.config.file``: Go's names mapped onto OpenSSL's, and the two halves of a
context that a reload must replace.

OpenSSL copies some settings into each connection when it is accepted (the client-certificate policy, TLS
versions, cipher list and order, curves) and reads others from whichever context the connection points at
during the handshake (certificate, key, CA store). A reload therefore builds a fresh context holding
everything (so that a removed CA is really gone: ``load_verify_locations`` only ever adds), switches each
new connection to it in ``sni_callback`` (OpenSSL calls it on every ClientHello, with or without SNI), and
applies the policy to the listening context as well.

A refused handshake ends with OpenSSL's alert (``certificate required`` for a TLS 1.3 client that sends
no certificate, ``protocol version``...), as exporter-toolkit's Go server sends it: OpenSSL writes it, but
asyncio's SSL transport closes without sending it before Python 3.15 (CPython gh-98078), so
``send_handshake_alerts`` makes the transport send what OpenSSL left for the peer first.
"""

from __future__ import annotations

import asyncio.sslproto
import ctypes
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass

# Every name Go's tls.CipherSuites() lists (the suites exporter-toolkit accepts) with its OpenSSL name;
# None for the TLS 1.3 suites, which neither Go nor Python lets a server configure.
GO_CIPHER_SUITES: dict[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# Go's HTTP/2 server refuses a cipher list without one of these (golang.org/x/net/http2).
HTTP2_REQUIRED = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
# exporter-toolkit's curve names -> OpenSSL group names.
GO_CURVES = {"CurveP256": "P-256", "CurveP384": "P-384", "CurveP521": "P-521", "X25519": "X25519"}
_ECDH_NAMES = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1", "X25519": "X25519"}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
VERIFY_MODES = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class TLSPolicy:
    """What OpenSSL copies into each connection at accept time (so: set on the listening context too)."""

    verify_mode: ssl.VerifyMode
    min_version: str
    max_version: str
    ciphers: tuple[str, ...]  # OpenSSL names of the TLS 1.2 suites, in order; () = OpenSSL's default
    prefer_server_ciphers: bool
    groups: tuple[str, ...]  # OpenSSL group names, in order; () = OpenSSL's default


@dataclass(frozen=True)
class TLSMaterial:
    """The bytes a context is built from, read once per (re)load."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None  # None: the system's roots (as Go does when no client CA is given)
    policy: TLSPolicy


def build_context(material: TLSMaterial) -> ssl.SSLContext:
    """A complete server context; raises ssl.SSLError/ValueError with OpenSSL's reason."""
    send_handshake_alerts()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_key_pair(context, material.cert_pem, material.key_pem)
    if material.policy.verify_mode != ssl.CERT_NONE:
        if material.ca_pem is None:
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        else:
            context.load_verify_locations(cadata=material.ca_pem.decode("ascii", "replace"))
    apply_policy(context, material.policy)
    return context


def send_handshake_alerts() -> None:
    """Send the alert OpenSSL wrote for a failed handshake before asyncio closes the connection (the
    fix of CPython gh-98078, for the Pythons without it; idempotent, and a no-op where asyncio's SSL
    transport is not the one it knows)."""
    protocol = asyncio.sslproto.SSLProtocol
    complete = getattr(protocol, "_on_handshake_complete", None)
    if complete is None or not hasattr(protocol, "_process_outgoing") or getattr(complete, "sends_alerts", False):
        return

    def on_handshake_complete(self, handshake_exc):
        if handshake_exc is not None:
            try:
                self._process_outgoing()  # the alert, while the transport is still open
            except Exception:  # noqa: BLE001 - the connection is failing anyway; closing it is what matters
                pass
        return complete(self, handshake_exc)

    on_handshake_complete.sends_alerts = True
    protocol._on_handshake_complete = on_handshake_complete


def apply_policy(context: ssl.SSLContext, policy: TLSPolicy) -> None:
    legacy = TLS_VERSIONS[policy.min_version] < ssl.TLSVersion.TLSv1_2
    # OpenSSL 3 refuses TLS 1.0/1.1 at its default security level 1 and above: a file that asks for them
    # gets them (level 0), as in Go; docs/web-configuration.md says what else level 0 allows.
    cipher_string = ":".join(policy.ciphers) or "DEFAULT"
    context.set_ciphers(cipher_string + (":@SECLEVEL=0" if legacy else ""))
    context.minimum_version = TLS_VERSIONS[policy.min_version]
    context.maximum_version = TLS_VERSIONS[policy.max_version]
    if policy.prefer_server_ciphers:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # No session resumption: a resumed session would skip the client-certificate check of a reloaded policy.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    context.verify_mode = policy.verify_mode
    if policy.groups:
        set_groups(context, policy.groups)


def set_groups(context: ssl.SSLContext, groups: tuple[str, ...]) -> None:
    """Restrict (and order) the key-exchange groups. One group: Python's own set_ecdh_curve. Several:
    Python 3.11-3.14 has no API for a list, so OpenSSL's SSL_CTX_set1_groups_list is called on the context
    Python holds, after checking that the pointer found really is that SSL_CTX."""
    if len(groups) == 1:
        context.set_ecdh_curve(_ECDH_NAMES[groups[0]])
        return
    if hasattr(context, "set_groups"):  # Python 3.15
        context.set_groups(":".join(groups))  # type: ignore[attr-defined]
        return
    import _ssl

    lib = ctypes.CDLL(_ssl.__file__)
    get_options = lib.SSL_CTX_get_options
    get_options.restype, get_options.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
    ctrl = lib.SSL_CTX_ctrl
    ctrl.restype, ctrl.argtypes = ctypes.c_long, [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    # The SSL_CTX follows PyObject_HEAD in CPython's PySSLContext; prove it by its options, changed twice.
    probe = ssl.OP_NO_COMPRESSION
    ok = pointer is not None and get_options(pointer) == int(context.options)
    if ok:
        context.options ^= probe
        ok = get_options(pointer) == int(context.options)
        context.options ^= probe
    if not ok:
        raise ValueError("this Python cannot set a list of curves; give a single curve")
    SSL_CTRL_SET_GROUPS_LIST = 92
    if ctrl(pointer, SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(groups).encode()) != 1:
        raise ValueError(f"OpenSSL refused the curves {':'.join(groups)}")


def _load_key_pair(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """load_cert_chain reads files only: inline PEM goes through files only this process can read
    (a private directory, mode 0600), removed as soon as OpenSSL has read them."""
    directory = tempfile.mkdtemp(prefix="vram-exporter-tls-")  # mode 0700
    paths = [os.path.join(directory, name) for name in ("cert.pem", "key.pem")]
    try:
        for path, data in zip(paths, (cert_pem, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        context.load_cert_chain(paths[0], paths[1])
    finally:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.rmdir(directory)


def peer_sans(peercert: dict | None) -> list[str]:
    """The verified peer certificate's SAN values as Go lists them: DNS names, e-mails, IPs, URIs."""
    if not peercert:
        return []
    values = []
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "IP Address":
            try:  # Python writes IPv6 uncompressed and upper case; Go as 2001:db8::1
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                pass
        if kind in ("DNS", "email", "IP Address", "URI"):
            values.append(value)
    return values
