"""``--web.config.file``: TLS, basic auth, headers and rate limit in Prometheus exporter-toolkit's format.

The format (docs/web-configuration.md; upstream: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md)::

    tls_server_config:
      cert_file: server.crt          # or cert: inline PEM
      key_file: server.key           # or key: inline PEM
      client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), VerifyClientCertIfGiven
      client_ca_file: ca.crt         # or client_ca: inline PEM; none: the system's roots, as in Go
      client_allowed_sans: [prometheus.example]       # the verified client certificate must carry one (403)
      min_version: TLS12             # TLS10 TLS11 TLS12 TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # Go's names (TLS 1.2 suites)
      prefer_server_cipher_suites: true
      curve_preferences: [X25519, CurveP256]
    http_server_config:
      http2: true
      headers: {Strict-Transport-Security: max-age=31536000}
    rate_limit: {interval: 1s, burst: 10}
    basic_auth_users:
      alice: $2y$10$...                              # bcrypt hashes

Refused with the reason, never accepted and ignored: client_auth_type RequestClientCert and
RequireAnyClientCert (Python's ssl verifies every client certificate it asks for; docs/web-configuration.md#refused-at-start).
The file and every file it names are watched in the background (``WebConfig.poll``): the next handshake
after a change uses the new files; a broken change keeps the last good config serving, is logged once,
and ``vram_exporter_web_config_last_reload_successful`` goes to 0. Turning TLS on or off needs a restart.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import field_validator

from ...present.catalogue import family
from ...present.exposition import Family
from ...filestamp import file_stamp
from .tls import (GO_CIPHER_SUITES, GO_CURVES, HTTP2_REQUIRED, TLS_VERSIONS, VERIFY_MODES, TLSMaterial, TLSPolicy,
                  apply_policy, build_context, peer_sans)
from .auth import BasicAuth, RateLimiter
from ...sources.yamlfile import InputFileError, Strict, load_located

log = logging.getLogger(__name__)

# exporter-toolkit's configurable response headers and, where it restricts them, their values (web/handler.go).
ALLOWED_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
_NOT_EXPRESSIBLE = (
    "Python's ssl module verifies every client certificate it asks for (OpenSSL's verify callback, which Go's "
    "RequestClientCert/RequireAnyClientCert amount to, is not exposed): use VerifyClientCertIfGiven or "
    "RequireAndVerifyClientCert with client_ca_file holding the clients' CA (a self-signed client certificate "
    "can be its own CA)")
_BCRYPT = re.compile(r"^\$2[aby]?\$(\d\d)\$[./A-Za-z0-9]{53}$")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(value: Any) -> float:
    """Seconds from a Go duration (``1s``, ``1m30s``, ``250ms``, ``0``); a bare integer is nanoseconds, as
    Go's YAML decoder reads it into time.Duration."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int):
        return value * 1e-9
    text = str(value).strip()
    if text == "0":
        return 0.0
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    total, position = 0.0, 0
    for match in _DURATION.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        raise ValueError(f"invalid duration {text!r} (Go syntax, e.g. 1s, 500ms, 1m30s)")
    return sign * total


def _go_string(value: Any) -> Any:
    """Go's YAML decoder reads any scalar into a string field as written: ``1`` is "1", ``true`` "true"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class TLSServerConfig(Strict):
    cert_file: str = ""
    key_file: str = ""
    cert: str = ""
    key: str = ""
    client_ca_file: str = ""
    client_ca: str = ""
    client_auth_type: str = ""
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    prefer_server_cipher_suites: bool = True
    cipher_suites: list[str] = []
    curve_preferences: list[str] = []
    client_allowed_sans: list[str] | None = None

    @field_validator("cert_file", "key_file", "cert", "key", "client_ca_file", "client_ca", "client_auth_type",
                     mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return _go_string(value)

    @field_validator("min_version", "max_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value not in TLS_VERSIONS:
            raise ValueError(f"unknown TLS version: {value} (one of {', '.join(TLS_VERSIONS)})")
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _ciphers(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in GO_CIPHER_SUITES:
                raise ValueError(f"unknown cipher: {value} (Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
        return values

    @field_validator("curve_preferences")
    @classmethod
    def _curves(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in GO_CURVES:
                raise ValueError(f"unknown curve: {value} (one of {', '.join(GO_CURVES)})")
        return values

    @property
    def enabled(self) -> bool:
        """exporter-toolkit's IsEnabled: any of these set means TLS (and the file must then be complete)."""
        return bool(self.cert_file or self.cert or self.key_file or self.key or self.client_ca_file
                    or self.client_ca or self.client_auth_type)


class HTTPServerConfig(Strict):
    http2: bool = True  # aiohttp serves HTTP/1.1 only; the key is accepted, and checked as Go checks it
    headers: dict[str, str] = {}

    @field_validator("headers", mode="before")
    @classmethod
    def _scalars(cls, headers: Any) -> Any:
        if isinstance(headers, dict):
            return {key: _go_string(value) for key, value in headers.items()}
        return {} if headers is None else headers

    @field_validator("headers")
    @classmethod
    def _allowed(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if name not in ALLOWED_HEADERS:
                raise ValueError(f'HTTP header "{name}" can not be configured; allowed: {", ".join(ALLOWED_HEADERS)}')
            values = ALLOWED_HEADERS[name]
            if values and value not in values:
                raise ValueError(f"invalid value for {name}. Expected one of: {list(values)}, but got: {value!r}")
        return headers


class RateLimitConfig(Strict):
    interval: float = 0.0  # seconds (Go duration in the file)
    burst: int = 0

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_go_duration(value)
        if seconds < 0:
            raise ValueError(f"interval must not be negative, got {value!r}")
        return seconds


class WebConfigFile(Strict):
    tls_server_config: TLSServerConfig = TLSServerConfig()
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    basic_auth_users: dict[str, str] = {}

    @field_validator("tls_server_config", "http_server_config", "rate_limit", mode="before")
    @classmethod
    def _null_section(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("basic_auth_users", mode="before")
    @classmethod
    def _null_users(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(user): _go_string(hashed) for user, hashed in value.items()}
        return {} if value is None else value

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            match = _BCRYPT.match(hashed)
            if not match:
                raise ValueError(f"the password of {user!r} must be a bcrypt hash ($2y$10$ and 53 more characters): "
                                 "hashedSecret too short to be a bcrypted password" if len(hashed) < 59 else
                                 f"the password of {user!r} is not a valid bcrypt hash")
            if not 4 <= int(match.group(1)) <= 31:
                raise ValueError(f"the password of {user!r} has bcrypt cost {match.group(1)}, outside 4-31")
            if ":" in user:
                raise ValueError(f"user name {user!r} cannot contain ':' (basic auth splits at the first ':')")
        return users


@dataclass(frozen=True)
class LoadedWebConfig:
    path: Path
    file: WebConfigFile
    tls: TLSMaterial | None  # None: plain HTTP
    watched: tuple[Path, ...]  # the YAML and every file it names

    def stamps(self) -> tuple:
        return tuple(file_stamp(path) for path in self.watched)


def load_web_config(path: Path) -> LoadedWebConfig:
    """Validate the file and read every file it names; InputFileError names the file, line and field."""
    path = Path(path)
    config, line_of = load_located(WebConfigFile, path)
    tls = config.tls_server_config
    base = path.parent
    named = [base / name for name in (tls.cert_file, tls.key_file, tls.client_ca_file) if name]
    watched = (path, *named)
    if not tls.enabled:
        return LoadedWebConfig(path, config, None, watched)

    def problem(key: str | None, message: str) -> InputFileError:
        loc: Sequence[str] = ("tls_server_config", key) if key else ("tls_server_config",)
        return InputFileError(path, [(line_of(loc), ".".join(loc), message)])

    if not (tls.cert_file or tls.cert):
        raise problem(next((k for k in ("cert_file", "cert") if k in tls.model_fields_set), None),
                      "missing one of cert or cert_file (an empty value counts as missing)")
    if not (tls.key_file or tls.key):
        raise problem(next((k for k in ("key_file", "key") if k in tls.model_fields_set), None),
                      "missing one of key or key_file (an empty value counts as missing)")
    for pair in (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file")):
        if getattr(tls, pair[0]) and getattr(tls, pair[1]):
            raise problem(pair[0], f"give {pair[0]} or {pair[1]}, not both")

    def read(key: str) -> bytes | None:
        inline, name = getattr(tls, key.removesuffix("_file")), getattr(tls, key)
        if inline:
            return inline.encode()
        if not name:
            return None
        file = base / name
        try:
            return file.read_bytes()
        except OSError as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
            raise problem(key, f"cannot read {str(file)!r}: {reason}") from None

    auth = tls.client_auth_type or "NoClientCert"
    if auth in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
        raise problem("client_auth_type", f"client_auth_type {auth} is not supported: {_NOT_EXPRESSIBLE}")
    cert_pem, key_pem, ca_pem = read("cert_file"), read("key_file"), read("client_ca_file")
    if auth not in CLIENT_AUTH_TYPES:
        raise problem("client_auth_type", f"invalid ClientAuth: {auth} (one of {', '.join(CLIENT_AUTH_TYPES)})")
    has_ca = ca_pem is not None
    ca_key = "client_ca_file" if tls.client_ca_file else "client_ca"
    if has_ca and auth == "NoClientCert":
        raise problem(ca_key, "client CA's have been configured without a Client Auth Policy: clients would "
                      "never be asked for a certificate; set client_auth_type: RequireAndVerifyClientCert "
                      "(or VerifyClientCertIfGiven), or remove the CA")
    if has_ca and b"-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise problem(ca_key, "holds no PEM certificate: no client could be verified")
    if tls.client_allowed_sans is not None and auth == "NoClientCert":
        raise problem("client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert or "
                      "VerifyClientCertIfGiven: without a verified client certificate there are no SANs to check")
    if TLS_VERSIONS[tls.max_version] < TLS_VERSIONS[tls.min_version]:
        raise problem("max_version", f"max_version {tls.max_version} is below min_version {tls.min_version}: "
                      "no supported versions satisfy MinVersion and MaxVersion")
    ciphers = tuple(dict.fromkeys(c for c in (GO_CIPHER_SUITES[n] for n in tls.cipher_suites) if c))
    if tls.cipher_suites and not ciphers and tls.min_version != "TLS13":
        raise problem("cipher_suites", "lists only TLS 1.3 suites, which are not configurable (in Go either): "
                      "TLS 1.2 would have no cipher; add TLS 1.2 suites or set min_version: TLS13")
    if (config.http_server_config.http2 and tls.cipher_suites
            and not any(name in tls.cipher_suites for name in HTTP2_REQUIRED)):
        raise problem("cipher_suites", "http2: TLSConfig.CipherSuites is missing an HTTP/2-required "
                      f"AES_128_GCM_SHA256 cipher (need at least one of {' or '.join(HTTP2_REQUIRED)}); add one, "
                      "or set http_server_config.http2: false, as exporter-toolkit requires")
    policy = TLSPolicy(VERIFY_MODES[auth], tls.min_version, tls.max_version, ciphers,
                       tls.prefer_server_cipher_suites, tuple(dict.fromkeys(GO_CURVES[c] for c in tls.curve_preferences)))
    material = TLSMaterial(cert_pem, key_pem, ca_pem, policy)
    try:
        build_context(material)
    except ssl.SSLError as exc:
        raise problem("cert_file" if tls.cert_file else "cert",
                      f"cannot load the certificate and key ({tls.cert_file or 'cert'}, {tls.key_file or 'key'}; "
                      f"client CA {tls.client_ca_file or ('inline' if tls.client_ca else 'none')}): "
                      f"{exc.reason or exc}") from None
    except ValueError as exc:
        raise problem("curve_preferences" if tls.curve_preferences else None, str(exc)) from None
    return LoadedWebConfig(path, config, material, watched)


class WebConfig:
    """The live web configuration. ``poll()`` (run every second by the server) reloads it when the file, or
    any file it names, changes."""

    def __init__(self, loaded: LoadedWebConfig) -> None:
        self.path = loaded.path
        self.loaded = loaded
        self.auth = BasicAuth()
        self._stamps = loaded.stamps()
        self.last_reload_successful = True
        self.last_success_timestamp = time.time()
        self._limiter = self._make_limiter(loaded.file)
        self.ssl_context: ssl.SSLContext | None = None  # the listening context (fixed for the process)
        self._current: ssl.SSLContext | None = None  # the context each new handshake switches to
        if loaded.tls is not None:
            self._current = build_context(loaded.tls)
            self.ssl_context = build_context(loaded.tls)
            self.ssl_context.sni_callback = self._switch
            if TLS_VERSIONS[loaded.tls.policy.min_version] < ssl.TLSVersion.TLSv1_2:
                log.warning("web config: min_version %s lowers OpenSSL's security level to 0 for this listener",
                            loaded.tls.policy.min_version)

    @classmethod
    def load(cls, path: Path) -> WebConfig:
        return cls(load_web_config(path))

    @staticmethod
    def _make_limiter(file: WebConfigFile) -> RateLimiter | None:
        limit = file.rate_limit
        return RateLimiter(limit.interval, limit.burst) if limit.interval > 0 else None

    def _switch(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if self._current is not None and connection.context is not self._current:
            connection.context = self._current

    # What the HTTP edge reads, per request.
    @property
    def users(self) -> dict[str, str]:
        return self.loaded.file.basic_auth_users

    @property
    def headers(self) -> dict[str, str]:
        return self.loaded.file.http_server_config.headers

    @property
    def limiter(self) -> RateLimiter | None:
        return self._limiter

    def client_allowed(self, peercert: dict | None) -> bool:
        """client_allowed_sans: the verified client certificate must carry one of them."""
        allowed = self.loaded.file.tls_server_config.client_allowed_sans
        if allowed is None or self.loaded.tls is None:
            return True
        return any(value in allowed for value in peer_sans(peercert))

    def poll(self) -> bool | None:
        """Reload if the YAML or a file it names changed: True applied, False refused (the last good one
        stays; logged once per change), None nothing changed."""
        stamps = self.loaded.stamps()
        if stamps == self._stamps:
            return None
        self._stamps = stamps
        try:
            loaded = load_web_config(self.path)
            if (loaded.tls is None) != (self.loaded.tls is None):
                raise InputFileError(self.path, [(None, "tls_server_config",
                                                  "turning TLS on or off needs a restart")])
        except InputFileError as exc:
            self.last_reload_successful = False
            log.error("web config reload failed, the last good one keeps serving: %s", exc)
            return False
        # Watch what the new file names from now on; a change of any of them counts from this reading.
        self._stamps = loaded.stamps()
        if loaded.tls is not None:
            self._current = build_context(loaded.tls)
            apply_policy(self.ssl_context, loaded.tls.policy)
        if loaded.file.rate_limit != self.loaded.file.rate_limit:
            self._limiter = self._make_limiter(loaded.file)
        self.loaded = loaded
        self.last_reload_successful = True
        self.last_success_timestamp = time.time()
        log.info("web config reloaded from %s", self.path)
        return True

    def families(self) -> Iterator[Family]:
        ok = family("vram_exporter_web_config_last_reload_successful")
        ok.sample(1 if self.last_reload_successful else 0)
        when = family("vram_exporter_web_config_last_reload_success_timestamp_seconds")
        when.sample(self.last_success_timestamp)
        yield from (ok, when)

    def close(self) -> None:
        self.auth.close()

