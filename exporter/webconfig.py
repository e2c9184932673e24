"""TLS and basic authentication from a web config file in the format of Prometheus's
exporter-toolkit (`--web.config.file` of node_exporter and friends), so one file serves both.

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to the file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12               # TLS12 (default) or TLS13; nothing older
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2's; Go's names
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2b$12$...           # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':')

A key this exporter does not know, or knows but cannot honour as exporter-toolkit does, is an
error: a security setting must never be ignored quietly. (`http_server_config.http2` is read
and has no effect: HTTP/1.1 is served either way, which is all a scraper needs.) `WebConfigWatcher` re-reads the file
and the files it names when they change (or on `reload()`, SIGHUP), so a rotated certificate is
used by the next TLS connection without a restart; a re-read that fails keeps the previous
configuration. Nothing here logs a password or a hash."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from structlog.typing import FilteringBoundLogger

REALM = "token-economy-exporter"
UNAUTHORIZED_HEADERS = (("WWW-Authenticate", f'Basic realm="{REALM}"'),)
# Paths answered without authentication: the kubelet's probes carry no credentials.
OPEN_PATHS = frozenset({"/healthz"})

TOP_KEYS = frozenset({"tls_server_config", "http_server_config", "basic_auth_users"})
TLS_KEYS = frozenset(
    {
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
    }
)
HTTP_KEYS = frozenset({"http2", "headers"})
# exporter-toolkit keys this exporter refuses rather than ignores, and why.
UNSUPPORTED = {
    "rate_limit": "not supported by this exporter (its connection cap and timeouts bound the load)",
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "inline client CAs are not supported; use client_ca_file",
    "tls_server_config.curve_preferences": "not supported by this exporter; OpenSSL's defaults apply",
    "tls_server_config.client_allowed_sans": "not supported by this exporter; use a client CA of its own",
}

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    # The exporter never uses a client's identity, so a certificate asked for but neither required
    # nor verified changes nothing: every client is served, as exporter-toolkit serves them.
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNSUPPORTED_CLIENT_AUTH = {
    "RequireAnyClientCert": "Python's TLS cannot require a client certificate without verifying it; "
    "use RequireAndVerifyClientCert with client_ca_file",
    "RequireClientCert": "Python's TLS cannot require a client certificate without verifying it; "
    "use RequireAndVerifyClientCert with client_ca_file",
}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
OLD_TLS_VERSIONS = ("TLS10", "TLS11")

# Go's names of TLS 1.2 cipher suites (what exporter-toolkit's cipher_suites takes) in OpenSSL's.
# TLS 1.3's suites are not configurable, in Go as here.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}

# The headers exporter-toolkit lets a web config add, with the values it accepts (None: any).
# Nothing else can be set: Content-Type, Content-Length, Authorization, WWW-Authenticate and
# the rest are the server's.
EXTRA_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

_BCRYPT_HASH = re.compile(r"\$2[aby]?\$(\d\d)\$[./A-Za-z0-9]{53}")
# A hash no password matches in practice; unknown users are checked against it, so a wrong user
# name costs the time a wrong password does and user names cannot be told by timing.
_DECOY_HASH = b"$2b$10$RfHZmKGO89sd4yvoVlaY6.5XHbqkTLrTV6yPcA2OMJAxJwWbWcRea"
CACHE_SIZE = 256  # successful (user, password) verifications kept, most recent first


class WebConfigError(ValueError):
    """The web config cannot be used; the message names the key at fault, never a secret."""


class _StrictLoader(yaml.SafeLoader):
    """YAML where a repeated key is an error (exporter-toolkit's parser refuses one too)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise WebConfigError(f"the key {key!r} appears twice (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes. bcrypt costs ~0.1-0.3 s on purpose,
    so a verified (user, password) pair is remembered (as a SHA-256 of the user, the stored hash
    and the password: never the password) and the next scrape pays a dictionary lookup. Wrong
    passwords are not remembered, and verifications run one at a time."""

    def __init__(self, users: Mapping[str, bytes], cache_size: int = CACHE_SIZE) -> None:
        self._users = dict(users)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the cache
        self._bcrypt = threading.Lock()  # one verification at a time: each takes a core for 0.1 s

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._users)

    def _key(self, user: str, password: bytes) -> bytes:
        stored = self._users.get(user, _DECOY_HASH)
        return hashlib.sha256(b"\0".join((user.encode(), stored, password))).digest()

    def cached(self, authorization: str | None) -> bool | None:
        """True: a remembered pair; False: no usable credentials at all; None: bcrypt must decide."""
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        key = self._key(*credentials)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True
        return None

    def verify(self, authorization: str | None) -> bool:
        """The full check (slow: bcrypt), remembering a success."""
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        known = user in self._users
        stored = self._users.get(user, _DECOY_HASH)
        with self._bcrypt:
            try:
                matches = bcrypt.checkpw(password, stored)  # constant-time comparison inside
            except ValueError:
                matches = False
        if not (known and matches):
            return False
        key = self._key(user, password)
        with self._lock:
            self._cache[key] = None
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._cache)


def parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    """(user, password) from an `Authorization: Basic ...` value; None when it is not one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not token or len(token) > 4096:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class WebConfig:
    """One generation of the web config: the TLS context new connections get (None: plain HTTP),
    the users (None: no authentication) and the extra response headers."""

    tls: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    headers: tuple[tuple[str, str], ...] = ()
    files: tuple[Path, ...] = ()  # what it was read from, watched for changes
    summary: Mapping[str, object] = field(default_factory=dict)  # for the log: no secrets

    def needs_auth(self, path: str) -> bool:
        return self.auth is not None and path.split("?", 1)[0] not in OPEN_PATHS


NO_WEB_CONFIG = WebConfig()


def load(path: Path) -> WebConfig:
    """The web config in `path`, with its certificates loaded; WebConfigError if unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise WebConfigError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    return parse(text, path.parent, source=path)


def parse(text: str, directory: Path, source: Path | None = None) -> WebConfig:
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed"
        raise WebConfigError(f"not valid YAML{where}: {problem}") from None
    if document is None:
        document = {}  # an empty file: plain HTTP, no authentication (as exporter-toolkit)
    top = _section(document, "the file")
    _known_keys(top, TOP_KEYS, "")
    files: list[Path] = [] if source is None else [source]
    tls = _tls(_section(top.get("tls_server_config"), "tls_server_config"), directory, files)
    headers = _headers(_section(top.get("http_server_config"), "http_server_config"))
    users = _users(top.get("basic_auth_users"))
    summary: dict[str, object] = {
        "tls": tls is not None,
        "basic_auth_users": len(users),
        "headers": [name for name, _ in headers],
    }
    if tls is not None:
        summary["client_auth"] = {ssl.CERT_NONE: "none", ssl.CERT_OPTIONAL: "optional", ssl.CERT_REQUIRED: "required"}[
            tls.verify_mode
        ]
    return WebConfig(tls, BasicAuth(users) if users else None, headers, tuple(files), summary)


def _section(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WebConfigError(f"{name} must be a mapping of names to values")
    return value


def _known_keys(section: Mapping[str, object], known: frozenset[str], prefix: str) -> None:
    for key in section:
        qualified = prefix + key
        if qualified in UNSUPPORTED:
            raise WebConfigError(f"{qualified}: {UNSUPPORTED[qualified]}")
        if key not in known:
            raise WebConfigError(f"unknown key {qualified!r}; known: {', '.join(sorted(prefix + k for k in known))}")


def _string(section: Mapping[str, object], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebConfigError(f"{where}.{key} must be a string")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise WebConfigError(f"{where}.{key} must not contain control characters")
    return value


def _file(section: Mapping[str, object], key: str, directory: Path, files: list[Path]) -> Path | None:
    value = _string(section, key, "tls_server_config")
    if value is None:
        return None
    path = directory / value  # an absolute value stays absolute
    if not path.is_file():
        raise WebConfigError(f"tls_server_config.{key}: no such file: {path}")
    files.append(path)
    return path


def _tls(section: Mapping[str, object], directory: Path, files: list[Path]) -> ssl.SSLContext | None:
    _known_keys(section, TLS_KEYS, "tls_server_config.")
    if not any(
        section.get(k) not in (None, "") for k in ("cert_file", "key_file", "client_ca_file", "client_auth_type")
    ):
        return None  # exporter-toolkit's rule: no certificate, key or client auth, no TLS
    cert = _file(section, "cert_file", directory, files)
    key = _file(section, "key_file", directory, files)
    if cert is None or key is None:
        missing = "cert_file" if cert is None else "key_file"
        raise WebConfigError(f"tls_server_config needs both cert_file and key_file (missing {missing})")
    ca = _file(section, "client_ca_file", directory, files)
    minimum = _version(section, "min_version", ssl.TLSVersion.TLSv1_2)
    maximum = _version(section, "max_version", ssl.TLSVersion.TLSv1_3)
    if maximum < minimum:
        raise WebConfigError("tls_server_config.max_version must not be below min_version")
    auth = _string(section, "client_auth_type", "tls_server_config") or "NoClientCert"
    if auth in UNSUPPORTED_CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth}: {UNSUPPORTED_CLIENT_AUTH[auth]}")
    if auth not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"tls_server_config.client_auth_type must be one of {', '.join(CLIENT_AUTH_TYPES)}; got {auth!r}"
        )
    verify = CLIENT_AUTH_TYPES[auth]
    if ca is not None and auth == "NoClientCert":  # exporter-toolkit's rule; RequestClientCert ignores the CA
        raise WebConfigError(
            "tls_server_config.client_ca_file is set but client_auth_type does not verify client certificates "
            "(use VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
        )
    if ca is None and verify is not ssl.CERT_NONE:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth} needs client_ca_file")
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError("tls_server_config.prefer_server_cipher_suites must be true or false")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = minimum
    context.maximum_version = maximum
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ciphers = _ciphers(section.get("cipher_suites"))
    if ciphers:
        try:
            context.set_ciphers(":".join(ciphers))
        except ssl.SSLError:
            raise WebConfigError("tls_server_config.cipher_suites: OpenSSL offers none of them") from None
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as err:
        raise WebConfigError(
            f"tls_server_config: cannot load the certificate {cert} with the key {key}: {_ssl_reason(err)}"
        ) from None
    if ca is not None and verify is not ssl.CERT_NONE:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as err:
            raise WebConfigError(f"tls_server_config.client_ca_file {ca}: {_ssl_reason(err)}") from None
        context.verify_mode = verify
    context.set_alpn_protocols(["http/1.1"])
    return context


def _ssl_reason(err: Exception) -> str:
    return str(getattr(err, "reason", None) or getattr(err, "strerror", None) or err)


def _version(section: Mapping[str, object], key: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    value = _string(section, key, "tls_server_config")
    if value is None:
        return default
    if value in OLD_TLS_VERSIONS:
        raise WebConfigError(f"tls_server_config.{key} {value}: versions below TLS 1.2 are refused; use TLS12 or TLS13")
    if value not in TLS_VERSIONS:
        raise WebConfigError(f"tls_server_config.{key} must be TLS12 or TLS13; got {value!r}")
    return TLS_VERSIONS[value]


def _ciphers(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WebConfigError("tls_server_config.cipher_suites must be a list of names")
    unknown = [v for v in value if v not in CIPHER_SUITES]
    if unknown:
        raise WebConfigError(
            f"tls_server_config.cipher_suites: unknown {unknown[0]!r}; known: {', '.join(sorted(CIPHER_SUITES))}"
        )
    return [CIPHER_SUITES[v] for v in value]


def _headers(section: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    _known_keys(section, HTTP_KEYS, "http_server_config.")
    if not isinstance(section.get("http2", True), bool):
        raise WebConfigError("http_server_config.http2 must be true or false")  # HTTP/1.1 is served either way
    headers = _section(section.get("headers"), "http_server_config.headers")
    out = []
    for name, value in headers.items():
        if name not in EXTRA_HEADERS:
            raise WebConfigError(
                f"http_server_config.headers: {name!r} cannot be set; allowed: {', '.join(EXTRA_HEADERS)}"
            )
        if not isinstance(value, str):
            raise WebConfigError(f"http_server_config.headers.{name} must be a string")
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value) or not value.isascii():
            raise WebConfigError(f"http_server_config.headers.{name} must be printable ASCII (no CR, LF or controls)")
        allowed = EXTRA_HEADERS[name]
        if allowed is not None and value not in allowed:
            raise WebConfigError(
                f"http_server_config.headers.{name} must be one of {', '.join(allowed)}; got {value!r}"
            )
        if value:  # blank: unset, as exporter-toolkit
            out.append((name, value))
    return tuple(out)


def _users(value: object) -> dict[str, bytes]:
    users = _section(value, "basic_auth_users")
    out = {}
    for user, hashed in users.items():
        if not user or ":" in user or any(ord(c) < 32 or ord(c) == 127 for c in user):
            raise WebConfigError(f"basic_auth_users: user name {user!r} must be non-empty, without ':' or controls")
        if not isinstance(hashed, str):
            raise WebConfigError(f"basic_auth_users.{user} must be a bcrypt hash (a string)")
        match = _BCRYPT_HASH.fullmatch(hashed)
        if match is None or not 4 <= int(match.group(1)) <= 31:
            # The value is a hash, yet it may be a password pasted by mistake: never repeated.
            raise WebConfigError(
                f"basic_auth_users.{user} is not a bcrypt hash ($2y$, $2b$ or $2a$, cost 04-31, 60 characters); "
                "make one with `htpasswd -nBC 12 '' | tr -d ':'`"
            )
        out[user] = hashed.encode()
    return out


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a Kubernetes Secret's volume swaps a link
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class WebConfigWatcher:
    """The current web config, re-read when the config file or a file it names changes (polled
    every `poll_seconds` on a thread of its own) or on `reload()`. A re-read that fails keeps
    the previous config and logs once per distinct failure."""

    def __init__(self, path: Path, log: FilteringBoundLogger, poll_seconds: float = 3.0) -> None:
        self.path = path
        self._log = log
        self._poll = poll_seconds
        self._config = load(path)  # WebConfigError: start-up stops
        self._stamps = self._stamp(self._config)
        self._failure: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.generation = 1
        log.info("web_config_loaded", path=str(path), **self._config.summary)

    def current(self) -> WebConfig:
        return self._config  # one reference, swapped whole: never half a config

    def _stamp(self, config: WebConfig) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_stat(p) for p in (self.path, *config.files))

    def check(self) -> bool:
        """Re-reads if a watched file changed; True when a new config is now in use."""
        with self._lock:
            stamps = self._stamp(self._config)
            if stamps == self._stamps:
                return False
            return self._reload(stamps, "changed")

    def reload(self, reason: str = "signal") -> bool:
        with self._lock:
            return self._reload(self._stamp(self._config), reason)

    def _reload(self, stamps: tuple[tuple[int, int, int] | None, ...], reason: str) -> bool:
        try:
            config = load(self.path)
        except WebConfigError as err:
            self._stamps = stamps  # not retried until something changes again
            if str(err) != self._failure:
                self._failure = str(err)
                self._log.error("web_config_reload_failed", path=str(self.path), reason=reason, error=str(err))
            return False
        self._config = config
        self._stamps = self._stamp(config)
        self._failure = None
        self.generation += 1
        self._log.info("web_config_reloaded", path=str(self.path), reason=reason, **config.summary)
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="web-config", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.check()
            except Exception as err:  # the watch must outlive any surprise
                self._log.error("web_config_watch_failed", error=repr(err))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


def open_watcher(path: Path | None, log: FilteringBoundLogger) -> WebConfigWatcher | None:
    return None if path is None else WebConfigWatcher(path, log)


CurrentConfig = Callable[[], WebConfig]
