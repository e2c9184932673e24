"""TLS and basic auth from a web config file, on the real exporter process: certificates made
here with the openssl command (a CA, a server certificate for 127.0.0.1 by SAN IP, a client
certificate), TLS 1.2 and newer only, the basic-auth answers, /healthz open to probes, client
certificates required and verified, a certificate rotated without a restart, and a real
Prometheus scraping over TLS with basic auth."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.e2e.vllm_server import HOST, free_port
from tests.integration.servers import Prometheus, stop_process, tool, wait_until

pytestmark = pytest.mark.integration

USER, PASSWORD = "prometheus", "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()


# ---- certificates


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.name, cwd=directory)
    openssl(
        "req", "-x509", "-new", "-key", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def issue(directory: Path, name: str, ca: tuple[Path, Path], extension: str) -> tuple[Path, Path]:
    """A key and a certificate signed by `ca`, with the given X.509v3 extensions."""
    key, csr, cert, ext = (directory / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text(extension)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.name, cwd=directory)
    openssl("req", "-new", "-key", key.name, "-out", csr.name, "-subj", f"/CN={name}", cwd=directory)
    openssl(
        "x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", cert.name, "-days", "2", "-extfile", ext.name, cwd=directory,
    )  # fmt: skip
    return cert, key


SERVER_EXT = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "other-ca")
    server = issue(directory, "server", ca, SERVER_EXT)
    rotated = issue(directory, "server-rotated", ca, SERVER_EXT)
    client = issue(directory, "client", ca, CLIENT_EXT)
    stranger = issue(directory, "stranger", other_ca, CLIENT_EXT)
    return {
        "dir": directory,
        "ca": ca[0],
        "server.crt": server[0],
        "server.key": server[1],
        "rotated.crt": rotated[0],
        "rotated.key": rotated[1],
        "client.crt": client[0],
        "client.key": client[1],
        "stranger.crt": stranger[0],
        "stranger.key": stranger[1],
    }


def client_context(pki, *, cert: str | None = None, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if version is not None:
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = version
            context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer it at all
    if cert is not None:
        context.load_cert_chain(pki[f"{cert}.crt"], pki[f"{cert}.key"])
    return context


def handshake(port: int, context: ssl.SSLContext) -> bytes:
    """The certificate the server presents to a new TLS connection (DER)."""
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def der_of(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


# ---- the exporter


class Exporter:
    """`python -m exporter run --web-config-file …` on loopback, stopped by its PID."""

    def __init__(self, workdir: Path, web_config: str, *, ready: ssl.SSLContext | None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "web.yml"
        self.config.write_text(web_config)
        self.log_path = workdir / "exporter.log"
        self.command = [
            sys.executable, "-m", "exporter", "run", "--energy-source", "phase-model", "--interval", "0.5",
            "--vllm-url", f"http://{HOST}:{free_port()}", "--listen-address", f"{HOST}:{self.port}",
            "--web-config-file", str(self.config),
        ]  # fmt: skip
        self.ready = ready
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def start(self) -> Exporter:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return httpx.get(self.url + "/healthz", verify=self.ready, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, interval=0.1, what="the exporter's /healthz over TLS")
        return self

    def stop(self) -> int | None:
        return None if self.proc is None else stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]


def tls_config(pki, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {pki['server.crt']}\n  key_file: {pki['server.key']}\n{extra}"


@pytest.fixture(scope="module")
def secured(pki, tmp_path_factory) -> Iterator[Exporter]:
    """TLS 1.2+ with basic auth and one extra header."""
    config = tls_config(pki) + (
        f"basic_auth_users:\n  {USER}: '{HASH}'\n"
        "http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\n"
    )
    exporter = Exporter(tmp_path_factory.mktemp("secured"), config, ready=client_context(pki)).start()
    yield exporter
    assert exporter.stop() == 0, exporter.log()
    assert PASSWORD not in exporter.log() and HASH not in exporter.log()


# ---- the tests


def test_the_right_password_gets_metrics_and_others_get_401(secured, pki):
    with httpx.Client(verify=client_context(pki), timeout=10) as client:
        ok = client.get(secured.url + "/metrics", auth=(USER, PASSWORD))
        assert ok.status_code == 200 and "token_economy_build_info" in ok.text
        assert ok.headers["strict-transport-security"] == "max-age=31536000"
        started = time.monotonic()
        for _ in range(20):  # remembered: the next scrapes pay no bcrypt (~50 ms each at cost 10)
            assert client.get(secured.url + "/metrics", auth=(USER, PASSWORD)).status_code == 200
        assert time.monotonic() - started < 20 * 0.05
        for auth in ((USER, "wrong"), ("nobody", PASSWORD), None):
            for path in ("/metrics", "/readyz", "/"):
                denied = client.get(secured.url + path, auth=auth)
                assert denied.status_code == 401, (auth, path)
                assert denied.headers["www-authenticate"] == 'Basic realm="token-economy-exporter"'
                assert denied.headers["strict-transport-security"] == "max-age=31536000"
                assert "token_economy" not in denied.text
        assert client.head(secured.url + "/metrics").status_code == 401  # no body: the connection stays usable
        assert client.get(secured.url + "/metrics", auth=(USER, PASSWORD)).status_code == 200


def test_healthz_stays_open_for_probes(secured, pki):
    assert httpx.get(secured.url + "/healthz", verify=client_context(pki)).text == "ok\n"


def test_tls_1_2_and_1_3_are_served_and_1_1_is_refused(secured, pki):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        assert handshake(secured.port, client_context(pki, version=version)) == der_of(pki["server.crt"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(secured.port, client_context(pki, version=ssl.TLSVersion.TLSv1_1))


def test_plain_http_to_the_tls_port_gets_nothing_and_the_server_goes_on(secured, pki):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{HOST}:{secured.port}/metrics", timeout=5)
    assert httpx.get(secured.url + "/healthz", verify=client_context(pki)).status_code == 200


def test_client_certificates_required_and_verified(pki, tmp_path):
    config = tls_config(pki, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki['ca']}\n")
    config += "  min_version: TLS13\n"
    exporter = Exporter(tmp_path, config, ready=client_context(pki, cert="client")).start()
    try:
        good = httpx.get(exporter.url + "/metrics", verify=client_context(pki, cert="client"), timeout=10)
        assert good.status_code == 200
        for refused in (client_context(pki), client_context(pki, cert="stranger")):
            with pytest.raises(httpx.HTTPError):  # no certificate, or one from another CA
                httpx.get(exporter.url + "/metrics", verify=refused, timeout=10)
        with pytest.raises((ssl.SSLError, ConnectionError)):  # min_version TLS13 holds
            handshake(exporter.port, client_context(pki, cert="client", version=ssl.TLSVersion.TLSv1_2))
    finally:
        assert exporter.stop() == 0, exporter.log()


def replace(src: Path, dest: Path) -> None:
    """As a Secret's volume updates: the new file appears whole, under the same name."""
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dest)


def test_a_rotated_certificate_is_served_without_a_restart(pki, tmp_path):
    live_crt, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    replace(pki["server.crt"], live_crt)
    replace(pki["server.key"], live_key)
    config = f"tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  {USER}: '{HASH}'\n"
    exporter = Exporter(tmp_path, config, ready=client_context(pki)).start()
    context = client_context(pki)
    try:
        with httpx.Client(verify=context, timeout=10) as kept:  # a keep-alive connection from before
            assert kept.get(exporter.url + "/metrics", auth=(USER, PASSWORD)).status_code == 200
            assert handshake(exporter.port, context) == der_of(pki["server.crt"])
            pid = exporter.proc.pid

            replace(pki["rotated.key"], live_key)
            replace(pki["rotated.crt"], live_crt)
            rotated = der_of(pki["rotated.crt"])
            wait_until(lambda: handshake(exporter.port, context) == rotated, 15, what="the rotated certificate")
            assert exporter.proc.pid == pid and exporter.proc.poll() is None  # no restart
            assert kept.get(exporter.url + "/metrics", auth=(USER, PASSWORD)).status_code == 200

        # A broken file keeps the config in use, logged once; SIGHUP re-reads a fixed one at once.
        exporter.config.write_text("tls_server_config: [")
        wait_until(
            lambda: any(e["event"] == "web_config_reload_failed" for e in exporter.events()), 15, what="the failure"
        )
        assert handshake(exporter.port, context) == rotated
        replace(pki["server.key"], live_key)
        replace(pki["server.crt"], live_crt)
        exporter.config.write_text(config)
        os.kill(exporter.proc.pid, signal.SIGHUP)
        original = der_of(pki["server.crt"])
        wait_until(lambda: handshake(exporter.port, context) == original, 15, what="the certificate after SIGHUP")
    finally:
        assert exporter.stop() == 0, exporter.log()
    events = [e["event"] for e in exporter.events()]
    assert events.count("web_config_reload_failed") == 1 and "signal_reload" in events
    assert events.count("web_config_reloaded") >= 2


def test_a_real_prometheus_scrapes_over_tls_with_basic_auth(secured, pki, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    prometheus = Prometheus(
        tmp_path / "prometheus",
        [f"{HOST}:{secured.port}"],
        scrape_options={
            "scheme": "https",
            "tls_config": {"ca_file": str(pki["ca"])},
            "basic_auth": {"username": USER, "password_file": str(password_file)},
        },
    ).start()
    try:
        wait_until(
            lambda: [s for s in prometheus.query('up{job="token-economy"}') if s["value"][1] == "1"],
            30,
            what="up == 1 over TLS with basic auth",
        )
        (build,) = wait_until(lambda: prometheus.query("token_economy_build_info"), 30, what="the exporter's series")
        assert build["metric"]["instance"] == f"{HOST}:{secured.port}"
    finally:
        prometheus.stop()


def test_a_bad_web_config_stops_start_up_with_exit_2(tmp_path):
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config:\n  min_version: TLS11\n  cert_file: a\n  key_file: b\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "run", "--energy-source", "phase-model",
         "--listen-address", f"{HOST}:0", "--web-config-file", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "token-economy-exporter: error: setting web_config_file (--web-config-file / TOKEN_ECONOMY_WEB_CONFIG_FILE): "
    )


# ---- the server's bounds hold with TLS on (in process: the counts are read directly)


def test_clients_that_never_finish_a_handshake_neither_block_scrapes_nor_outlive_the_timeout(pki):
    from prometheus_client import CollectorRegistry

    from exporter.ledger import Ledger
    from exporter.server import HttpServer, MetricsCache, Routes
    from exporter.webconfig import parse

    config = parse(tls_config(pki), pki["dir"])
    ledger = Ledger()
    routes = Routes(MetricsCache(CollectorRegistry(), ledger), ledger, "http://127.0.0.1:8000", "nvml")
    server = HttpServer(HOST, 0, routes, head_timeout=1.0, max_connections=20, web=lambda: config)
    server.start()
    stalled = [socket.create_connection((HOST, server.port), timeout=10) for _ in range(60)]  # no ClientHello
    try:
        context = client_context(pki)
        for _ in range(5):  # a new connection each: the handshakes waiting are evicted to make room
            assert httpx.get(f"https://{HOST}:{server.port}/healthz", verify=context, timeout=5).status_code == 200
        assert server.open_connections <= 20 and server.counts["evicted"] >= 40
        wait_until(lambda: server.open_connections == 0, 10, what="the stalled handshakes to time out")
        assert server.counts["tls_errors"] >= 1
    finally:
        for sock in stalled:
            sock.close()
        server.stop()
