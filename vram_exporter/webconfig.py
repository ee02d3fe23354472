"""``--web.config.file``: TLS and basic auth in Prometheus exporter-toolkit's format.

The format (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md)::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS12                             # TLS10 TLS11 TLS12 TLS13
      max_version: TLS13
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      alice: $2y$10$...                              # bcrypt hashes

Options Python's ssl module cannot express are refused at start with a message saying so, never
ignored: client_auth_type RequestClientCert and RequireAnyClientCert (Python verifies any certificate
it asks for), cipher_suites and curve_preferences (Go names), client_allowed_sans.
As exporter-toolkit does, the file is read again when it changes: users, headers, certificates and
the client-certificate policy apply to new connections without a restart (turning TLS on or off
needs one).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bcrypt
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .filestamp import file_stamp
from .yamlfile import InputFileError, load_model

log = logging.getLogger(__name__)

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's allowed response headers (web/tls_config.go).
ALLOWED_HEADERS = {"Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "X-XSS-Protection",
                   "Content-Security-Policy"}
_UNEXPRESSIBLE = {
    "cipher_suites": "Go's cipher suite names have no exact OpenSSL equivalent in Python's ssl module",
    "curve_preferences": "Python's ssl module sets a single ECDH curve, not a preference list",
    "client_allowed_sans": "checking client certificate SANs is not supported by this exporter",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None
    key: str | None = None
    client_auth_type: Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                              "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"] = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None
    prefer_server_cipher_suites: bool = True
    cipher_suites: list[str] | None = None
    curve_preferences: list[str] | None = None
    client_allowed_sans: list[str] | None = None

    @model_validator(mode="after")
    def _expressible(self) -> TLSServerConfig:
        for key, why in _UNEXPRESSIBLE.items():
            if getattr(self, key):
                raise ValueError(f"{key} is not supported: {why}; remove it")
        if self.client_auth_type in ("RequestClientCert", "RequireAnyClientCert"):
            raise ValueError(f"client_auth_type {self.client_auth_type} is not supported: Python's ssl module "
                             "verifies every client certificate it asks for; use VerifyClientCertIfGiven or "
                             "RequireAndVerifyClientCert with client_ca_file")
        if self.client_auth_type != "NoClientCert" and not self.client_ca_file:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if self.cert or self.key:
            raise ValueError("inline cert/key are not supported: use cert_file and key_file")
        if not (self.cert_file and self.key_file):
            raise ValueError("cert_file and key_file are both required for TLS")
        if self.max_version and TLS_VERSIONS[self.max_version] < TLS_VERSIONS[self.min_version]:
            raise ValueError(f"max_version {self.max_version} is below min_version {self.min_version}")
        return self


class HTTPServerConfig(_Strict):
    http2: bool = True  # aiohttp serves HTTP/1.1 only; the key is accepted (exporter-toolkit's default is true)
    headers: dict[str, str] = {}

    @field_validator("headers")
    @classmethod
    def _allowed(cls, headers: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(headers) - ALLOWED_HEADERS)
        if bad:
            raise ValueError(f"headers {bad} are not allowed; allowed: {sorted(ALLOWED_HEADERS)}")
        return headers


class WebConfigFile(_Strict):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, str] = {}

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise ValueError(f"the password of {user!r} must be a bcrypt hash ($2y$...), not plain text")
            if ":" in user:
                raise ValueError(f"user name {user!r} cannot contain ':'")
        return users


def load_web_config(path: Path) -> WebConfigFile:
    """Validate the file, including that TLS files can be loaded; InputFileError names what is wrong."""
    config = load_model(WebConfigFile, path)
    if config.tls_server_config is not None:
        try:
            _tls_context(config.tls_server_config, path.parent)
        except (OSError, ssl.SSLError) as exc:
            raise InputFileError(path, [(None, "tls_server_config", f"cannot load TLS files: {exc}")]) from None
    return config


def _resolve(base: Path, file: Path) -> str:
    return str(file if file.is_absolute() else base / file)


def _tls_context(tls: TLSServerConfig, base: Path, context: ssl.SSLContext | None = None) -> ssl.SSLContext:
    context = context or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version] if tls.max_version else ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.load_cert_chain(_resolve(base, tls.cert_file), _resolve(base, tls.key_file))
    if tls.client_ca_file:
        context.load_verify_locations(_resolve(base, tls.client_ca_file))
    context.verify_mode = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                           "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}[tls.client_auth_type]
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


# A hash to check unknown users against, so that they cost the same bcrypt work as known ones.
_DUMMY_HASH = bcrypt.hashpw(b"unknown user", bcrypt.gensalt(rounds=10))


@dataclass
class WebConfig:
    """The live web configuration: re-read when the file changes, at most once a second."""

    path: Path
    current: WebConfigFile
    ssl_context: ssl.SSLContext | None = None
    _stamp: tuple[int, int] | None = None
    _checked: float = 0.0
    _verified: dict[tuple[str, bytes], bool] = field(default_factory=dict)  # (user, sha256(password))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path: Path) -> WebConfig:
        config = load_web_config(path)
        web = cls(path, config, _stamp=file_stamp(path))
        if config.tls_server_config is not None:
            web.ssl_context = _tls_context(config.tls_server_config, path.parent)
        return web

    @property
    def auth_required(self) -> bool:
        return bool(self.current.basic_auth_users)

    @property
    def headers(self) -> dict[str, str]:
        return self.current.http_server_config.headers

    def refresh(self, now: float) -> None:
        """Apply a changed file; a bad one is logged and the last good one stays."""
        if now - self._checked < 1.0:
            return
        self._checked = now
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            config = load_web_config(self.path)
            if (config.tls_server_config is None) != (self.ssl_context is None):
                raise ValueError("turning TLS on or off needs a restart")
            if config.tls_server_config is not None:
                _tls_context(config.tls_server_config, self.path.parent, self.ssl_context)
        except (InputFileError, ValueError, OSError, ssl.SSLError) as exc:
            log.error("web config reload failed, keeping the last good one: %s", exc)
            return
        with self._lock:
            self.current = config
            self._verified.clear()
        log.info("web config reloaded from %s", self.path)

    def check_password(self, user: str, password: str) -> bool:
        """bcrypt comparison (slow on purpose: call it off the event loop); results are cached."""
        key = (user, hashlib.sha256(password.encode()).digest())
        with self._lock:
            cached = self._verified.get(key)
            users = self.current.basic_auth_users
        if cached is not None:
            return cached
        hashed = users.get(user)
        ok = bcrypt.checkpw(password.encode(), (hashed or _DUMMY_HASH.decode()).encode()) and hashed is not None
        if ok:  # only verified credentials are remembered: every wrong guess pays bcrypt's price
            with self._lock:
                if len(self._verified) > 1024:
                    self._verified.clear()
                self._verified[key] = True
        return ok
