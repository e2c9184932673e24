"""The web config (exporter/webconfig.py): exporter-toolkit's format, what it refuses, the TLS
context it builds, the basic-auth decisions and their cache, and the re-read. No socket: the
same over real TLS connections is tests/integration/test_web_config.py."""

from __future__ import annotations

import base64
import os
import ssl
import textwrap
from pathlib import Path

import bcrypt
import pytest

from exporter.webconfig import (
    EXTRA_HEADERS,
    NO_WEB_CONFIG,
    UNAUTHORIZED_HEADERS,
    BasicAuth,
    WebConfigError,
    WebConfigWatcher,
    load,
    parse,
    parse_basic,
)

# A throwaway self-signed certificate and its key, for these tests only (valid until 2126).
CERT = """-----BEGIN CERTIFICATE-----
MIIBvzCCAWSgAwIBAgIUFCQVyKtIk2ucIaotqxcBaMkmIhAwCgYIKoZIzj0EAwIw
KzEpMCcGA1UEAwwgdG9rZW4tZWNvbm9teS1leHBvcnRlciB1bml0IHRlc3QwIBcN
MjYxMjAyMDIxMDQxWhgPMjEyNjExMDgwMjEwNDFaMCsxKTAnBgNVBAMMIHRva2Vu
LWVjb25vbXktZXhwb3J0ZXIgdW5pdCB0ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAE53TxZ7/HmRHpvTFtXCmV/c3+MvNhaxMupak7dfRIy9iPD2RDycBjofBF
R3tIt/GqyqhaPFsvxishx79R3AYZJaNkMGIwHQYDVR0OBBYEFKZ6J368GEc3gubA
EKx7dej1/yjQMB8GA1UdIwQYMBaAFKZ6J368GEc3gubAEKx7dej1/yjQMA8GA1Ud
EwEB/wQFMAMBAf8wDwYDVR0RBAgwBocEfwAAATAKBggqhkjOPQQDAgNJADBGAiEA
tAqwnQCeEyNf9VhPUy8+7OEY2QigKGH+nMVsYCPXdpgCIQCwvXVHKqjs8uJSy5Iy
8ulg2ApahqkoP5B3erQOolCppg==
-----END CERTIFICATE-----
"""
KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVhxyfJ1C+N3p3nNn
qI3/P8lTyiX7kdAHtkhtGGsRwf6hRANCAATndPFnv8eZEem9MW1cKZX9zf4y82Fr
Ey6lqTt19EjL2I8PZEPJwGOh8EVHe0i38arKqFo8Wy/GKyHHv1HcBhkl
-----END PRIVATE KEY-----
"""
OTHER_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFHu2/qrKVeY1aF/G
cV+Yy28pKKqL6e6npcBoIymaxBahRANCAAS05YXHmcVC65p9RDk66xLXexEvl82z
sdDM1rKo3w1XRWhNtABmkw5pg/u+7KPTZqRdDHTfQgN5ONKpTWu9GIm7
-----END PRIVATE KEY-----
"""
PASSWORD = b"s3cret-pass"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4)).decode()  # cost 4: fast tests


def basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    (tmp_path / "server.crt").write_text(CERT)
    (tmp_path / "server.key").write_text(KEY)
    (tmp_path / "ca.crt").write_text(CERT)  # self-signed: its own CA
    return tmp_path


def tls(certs: Path, extra: str = "") -> str:
    return "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" + textwrap.indent(
        textwrap.dedent(extra), "  "
    )


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, object]]] = []

    def info(self, event: str, **kw: object) -> None:
        self.events.append(("info", event, kw))

    def error(self, event: str, **kw: object) -> None:
        self.events.append(("error", event, kw))


# ---- parsing and refusals


@pytest.mark.parametrize("text", ["", "# nothing\n", "{}\n", "tls_server_config: {}\nbasic_auth_users: {}\n"])
def test_an_empty_config_is_plain_http_without_auth(text, tmp_path):
    config = parse(text, tmp_path)
    assert config.tls is None and config.auth is None and config.headers == ()
    assert not config.needs_auth("/metrics")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: {}\nbasic_auth_user: {}\n", "unknown key 'basic_auth_user'"),
        ("tls_server_config:\n  cert_fil: x\n", "unknown key 'tls_server_config.cert_fil'"),
        ("http_server_config:\n  header: {}\n", "unknown key 'http_server_config.header'"),
        ("rate_limit:\n  burst: 1\n", "rate_limit: not supported"),
        ("tls_server_config:\n  curve_preferences: [X25519]\n", "curve_preferences: not supported"),
        ("tls_server_config:\n  client_allowed_sans: [a]\n", "client_allowed_sans: not supported"),
        ("tls_server_config:\n  cert: inline\n", "inline certificates are not supported"),
        ("- a\n- b\n", "the file must be a mapping"),
        ("tls_server_config: [1]\n", "tls_server_config must be a mapping"),
        ("basic_auth_users:\n  a: x\n  a: y\n", "the key 'a' appears twice (line 3)"),
        ("tls_server_config:\n  cert_file: [unclosed\n", "not valid YAML at line"),
        ("http_server_config:\n  http2: maybe\n", "http2 must be true or false"),
    ],
)
def test_unknown_unsupported_and_malformed_are_errors(text, message, tmp_path):
    with pytest.raises(WebConfigError, match=None) as err:
        parse(text, tmp_path)
    assert message in str(err.value)


def test_tls_with_defaults_is_tls_1_2_to_1_3_without_client_certs(certs):
    config = parse(tls(certs), certs)
    assert config.tls is not None
    assert config.tls.minimum_version is ssl.TLSVersion.TLSv1_2
    assert config.tls.maximum_version is ssl.TLSVersion.TLSv1_3
    assert config.tls.verify_mode is ssl.CERT_NONE
    assert config.files == (certs / "server.crt", certs / "server.key")  # relative to the file's folder
    assert config.summary == {"tls": True, "basic_auth_users": 0, "headers": [], "client_auth": "none"}


def test_absolute_paths_stay_absolute(certs, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("config")
    text = f"tls_server_config:\n  cert_file: {certs / 'server.crt'}\n  key_file: {certs / 'server.key'}\n"
    assert parse(text, elsewhere).tls is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("min_version: TLS11\n", "versions below TLS 1.2 are refused"),
        ("min_version: TLS10\n", "versions below TLS 1.2 are refused"),
        ("max_version: TLS11\n", "versions below TLS 1.2 are refused"),
        ("min_version: SSL3\n", "must be TLS12 or TLS13"),
        ("min_version: TLS13\nmax_version: TLS12\n", "max_version must not be below min_version"),
        ("client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
        ("client_auth_type: VerifyClientCertIfGiven\n", "needs client_ca_file"),
        ("client_ca_file: ca.crt\n", "client_auth_type does not verify"),
        ("client_auth_type: RequireAnyClientCert\nclient_ca_file: ca.crt\n", "cannot require a client certificate"),
        ("client_auth_type: Sometimes\n", "client_auth_type must be one of"),
        ("client_auth_type: RequireAndVerifyClientCert\nclient_ca_file: nope.crt\n", "no such file"),
        ("cipher_suites: [TLS_FANCY]\n", "unknown 'TLS_FANCY'"),
        ("cipher_suites: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n", "must be a list"),
        ("prefer_server_cipher_suites: 1\n", "must be true or false"),
    ],
)
def test_tls_refusals(certs, extra, message):
    with pytest.raises(WebConfigError) as err:
        parse(tls(certs, extra), certs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config:\n  cert_file: server.crt\n", "missing key_file"),
        ("tls_server_config:\n  key_file: server.key\n", "missing cert_file"),
        ("tls_server_config:\n  cert_file: gone.crt\n  key_file: server.key\n", "no such file"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n", "cannot load the certificate"),
        ('tls_server_config:\n  cert_file: "server.crt\\n"\n  key_file: server.key\n', "control characters"),
    ],
)
def test_certificate_and_key_must_both_load(certs, text, message):
    (certs / "other.key").write_text(OTHER_KEY)
    with pytest.raises(WebConfigError) as err:
        parse(text, certs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("auth", "mode"),
    [
        ("NoClientCert", ssl.CERT_NONE),
        ("RequestClientCert", ssl.CERT_NONE),  # asked for, never used: every client is served
        ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
        ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
    ],
)
def test_client_auth_types(certs, auth, mode):
    ca = "" if mode is ssl.CERT_NONE else "client_ca_file: ca.crt\n"
    config = parse(tls(certs, f"client_auth_type: {auth}\n{ca}"), certs)
    assert config.tls is not None and config.tls.verify_mode is mode


def test_request_client_cert_ignores_a_client_ca_as_exporter_toolkit_does(certs):
    config = parse(tls(certs, "client_auth_type: RequestClientCert\nclient_ca_file: ca.crt\n"), certs)
    assert config.tls is not None and config.tls.verify_mode is ssl.CERT_NONE


def test_tls13_only_and_cipher_suites(certs):
    config = parse(tls(certs, "min_version: TLS13\n"), certs)
    assert config.tls is not None and config.tls.minimum_version is ssl.TLSVersion.TLSv1_3
    suites = "cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]\n"
    config = parse(tls(certs, suites), certs)
    assert config.tls is not None
    tls12 = {c["name"] for c in config.tls.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"}


# ---- headers


def test_the_headers_exporter_toolkit_allows_are_added(tmp_path):
    text = """http_server_config:
  http2: false
  headers:
    Strict-Transport-Security: max-age=31536000; includeSubDomains
    X-Content-Type-Options: nosniff
    X-Frame-Options: deny
    X-XSS-Protection: ""
    Content-Security-Policy: default-src 'none'
"""
    config = parse(text, tmp_path)
    assert config.headers == (
        ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "deny"),
        ("Content-Security-Policy", "default-src 'none'"),
    )  # a blank value is unset


@pytest.mark.parametrize(
    "name", ["Content-Type", "Content-Length", "Authorization", "WWW-Authenticate", "Server", "Set-Cookie"]
)
def test_the_servers_own_headers_cannot_be_set(name, tmp_path):
    with pytest.raises(WebConfigError) as err:
        parse(f"http_server_config:\n  headers:\n    {name}: x\n", tmp_path)
    assert f"{name!r} cannot be set" in str(err.value)
    assert name not in EXTRA_HEADERS


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Content-Security-Policy", '"a\\r\\nSet-Cookie: x=1"'),
        ("Strict-Transport-Security", '"max-age=1\\n"'),
        ("X-XSS-Protection", '"1\\u0000"'),
        ("Content-Security-Policy", '"caf\\u00e9"'),
        ("X-Frame-Options", "allow-from x"),
        ("X-Content-Type-Options", "sniff"),
        ("Strict-Transport-Security", "42"),
    ],
)
def test_header_values_are_printable_and_from_the_allowed_set(header, value, tmp_path):
    with pytest.raises(WebConfigError):
        parse(f"http_server_config:\n  headers:\n    {header}: {value}\n", tmp_path)


# ---- users and authentication


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ("alice: hunter2", "is not a bcrypt hash"),
        ("alice: $2b$03$" + "a" * 53, "is not a bcrypt hash"),  # cost below 4
        ("alice: 42", "must be a bcrypt hash"),
        ('"al:ice": ' + "$2b$04$" + "a" * 53, "without ':'"),
    ],
)
def test_users_need_bcrypt_hashes_and_errors_never_repeat_them(users, message, tmp_path):
    with pytest.raises(WebConfigError) as err:
        parse(f"basic_auth_users:\n  {users}\n", tmp_path)
    assert message in str(err.value) and "hunter2" not in str(err.value)


def test_every_bcrypt_flavour_is_accepted(tmp_path):
    for prefix in ("$2y$", "$2b$", "$2a$"):
        config = parse(f"basic_auth_users:\n  u: '{prefix}{HASH[4:]}'\n", tmp_path)
        assert config.auth is not None and config.auth.verify(basic("u", PASSWORD))


@pytest.mark.parametrize(
    ("path", "needs"),
    [("/metrics", True), ("/", True), ("/readyz", True), ("/healthz", False), ("/healthz?x=1", False), ("/nope", True)],
)
def test_only_healthz_is_open(path, needs, tmp_path):
    config = parse(f"basic_auth_users:\n  prometheus: '{HASH}'\n", tmp_path)
    assert config.needs_auth(path) is needs
    assert not NO_WEB_CONFIG.needs_auth(path)


def test_unauthorized_answers_name_the_realm():
    assert UNAUTHORIZED_HEADERS == (("WWW-Authenticate", 'Basic realm="token-economy-exporter"'),)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic !!!notbase64", None),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        ("Basic " + base64.b64encode(b"\xff:x").decode(), None),
        ("basic " + base64.b64encode(b"u:p:q").decode(), ("u", b"p:q")),
        ("Basic " + base64.b64encode(b":").decode(), ("", b"")),
    ],
)
def test_parse_basic(header, expected):
    assert parse_basic(header) == expected


def test_right_password_passes_and_is_remembered_wrong_ones_are_not():
    auth = BasicAuth({"prometheus": HASH.encode()})
    right, wrong = basic("prometheus", PASSWORD), basic("prometheus", b"nope")
    assert auth.cached(right) is None  # bcrypt must decide the first time
    assert auth.verify(right) is True
    assert auth.cached(right) is True and len(auth) == 1  # the next scrape pays a lookup
    assert auth.verify(wrong) is False and auth.cached(wrong) is None and len(auth) == 1
    assert auth.verify(basic("mallory", PASSWORD)) is False  # unknown user, decoy hash
    assert auth.cached(None) is False and auth.verify(None) is False
    assert auth.cached("Basic ???") is False


def test_the_cache_is_bounded_and_keyed_on_the_stored_hash_too():
    auth = BasicAuth({f"u{i}": HASH.encode() for i in range(5)}, cache_size=3)
    for i in range(5):
        assert auth.verify(basic(f"u{i}", PASSWORD))
    assert len(auth) == 3
    assert auth.cached(basic("u0", PASSWORD)) is None and auth.cached(basic("u4", PASSWORD)) is True
    changed = BasicAuth({"u4": bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4))})
    assert changed.cached(basic("u4", PASSWORD)) is None  # another generation, another cache


def test_the_cache_keeps_no_password():
    auth = BasicAuth({"prometheus": HASH.encode()})
    auth.verify(basic("prometheus", PASSWORD))
    (key,) = auth._cache
    assert PASSWORD not in key and len(key) == 32


# ---- loading and re-reading


def test_load_names_an_unreadable_file(tmp_path):
    with pytest.raises(WebConfigError, match="cannot read"):
        load(tmp_path / "absent.yml")


def bump(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))


def test_the_watcher_rereads_a_changed_file_and_keeps_the_old_on_failure(certs):
    path = certs / "web.yml"
    path.write_text(tls(certs))
    log = Log()
    watcher = WebConfigWatcher(path, log)  # type: ignore[arg-type]
    first = watcher.current()
    assert first.tls is not None and first.auth is None and log.events[0][1] == "web_config_loaded"
    assert watcher.check() is False  # nothing changed

    bump(path, tls(certs) + f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    assert watcher.check() is True
    second = watcher.current()
    assert second.auth is not None and second is not first and watcher.generation == 2

    for _ in range(3):  # a broken file: the previous config stays, logged once
        bump(path, "tls_server_config: [")
        assert watcher.check() is False
    assert watcher.current() is second
    failures = [e for e in log.events if e[1] == "web_config_reload_failed"]
    assert len(failures) == 1 and "not valid YAML" in str(failures[0][2]["error"])

    bump(path, tls(certs))
    assert watcher.check() is True and watcher.current().auth is None


def test_a_rotated_certificate_is_a_new_context(certs):
    path = certs / "web.yml"
    path.write_text(tls(certs))
    watcher = WebConfigWatcher(path, Log())  # type: ignore[arg-type]
    before = watcher.current().tls
    bump(certs / "server.crt", CERT)  # same bytes, new mtime: what a rotation looks like to a poll
    assert watcher.check() is True
    assert watcher.current().tls is not before

    bump(certs / "server.key", OTHER_KEY)  # half-way through a rotation: the key no longer matches
    assert watcher.check() is False and watcher.current().tls is not None


def test_reload_rereads_even_without_a_change(certs):
    path = certs / "web.yml"
    path.write_text(tls(certs))
    log = Log()
    watcher = WebConfigWatcher(path, log)  # type: ignore[arg-type]
    assert watcher.reload() is True and watcher.generation == 2
    assert log.events[-1][1] == "web_config_reloaded" and log.events[-1][2]["reason"] == "signal"


def test_the_log_never_shows_a_hash_or_password(certs):
    path = certs / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    log = Log()
    WebConfigWatcher(path, log)  # type: ignore[arg-type]
    assert HASH not in repr(log.events) and "basic_auth_users" in repr(log.events)


def test_a_start_up_error_never_shows_a_pasted_password(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  prometheus: correct-horse-battery\n")
    with pytest.raises(WebConfigError) as err:
        WebConfigWatcher(path, Log())  # type: ignore[arg-type]
    assert "correct-horse-battery" not in str(err.value) and "basic_auth_users.prometheus" in str(err.value)
