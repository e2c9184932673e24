"""The HTTP server against the hostile clients of the hardening issue, over real loopback
sockets: idle and slow connections, a flood of them, header bytes meant to be echoed, bodies
meant to be run as a second request, HTTP/0.9 and bare-LF requests, oversized heads, and an
Accept header varied to grow the cache. The pure pieces are tests/unit/test_server.py."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from exporter.attribution.attributor import TickResult
from exporter.catalogue import BUILD_LABELS
from exporter.collector import LedgerCollector
from exporter.ledger import Ledger, TickRecord
from exporter.server import FORMATS, HttpServer, MetricsCache, Routes


@contextlib.contextmanager
def serving(**options: float) -> Iterator[tuple[HttpServer, MetricsCache]]:
    ledger = Ledger()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "t")))
    ledger.publish(TickRecord({}, TickResult(tokens={("m", "input"): 1.0}, models=("m",))))
    cache = MetricsCache(registry, ledger)
    server = HttpServer("127.0.0.1", 0, Routes(cache, ledger, "http://127.0.0.1:8000", "nvml"), **options)
    server.start()
    try:
        yield server, cache
    finally:
        server.stop()


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with serving(head_timeout=2.0, idle_timeout=2.0) as (server, _cache):
        yield server


def connect(server: HttpServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the connection open."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(server: HttpServer, data: bytes) -> bytes:
    with connect(server) as sock:
        sock.sendall(data)
        return until_closed(sock)


def statuses(raw: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout():
    with serving(head_timeout=0.5) as (server, _), connect(server) as sock:
        started = time.monotonic()
        assert until_closed(sock) == b""
        assert 0.4 < time.monotonic() - started < 5
        assert server.counts["timeouts"] == 1


def test_a_slow_head_is_cut_at_the_head_timeout():
    with serving(head_timeout=0.5) as (server, _), connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        with contextlib.suppress(OSError):
            for _ in range(50):
                sock.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.1)
        assert until_closed(sock) == b"" and time.monotonic() - started < 5


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    with serving(idle_timeout=0.5) as (server, _), connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive still serves
        assert statuses(until_closed(sock)) == [200, 200]
        assert server.open_connections == 0


def test_a_scrape_succeeds_while_many_idle_connections_are_held():
    with serving(max_connections=20) as (server, _):
        idle = [connect(server) for _ in range(100)]
        try:
            time.sleep(0.2)
            for _ in range(5):
                assert httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).status_code == 200
            assert server.open_connections <= 20
            assert server.counts["evicted"] >= 80
        finally:
            for sock in idle:
                sock.close()


def test_the_default_cap_holds_under_the_descriptor_limit():
    with serving() as (server, _):
        import resource

        assert server.max_connections < resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2


def test_thousands_of_distinct_accept_versions_leave_the_cache_bounded():
    with serving() as (server, cache), connect(server) as sock:
        stream = sock.makefile("rb")
        for i in range(2000):
            kind = "application/openmetrics-text" if i % 2 else "text/plain"
            sock.sendall(f"GET /metrics HTTP/1.1\r\nAccept: {kind}; version={i}.{i}\r\n\r\n".encode())
            assert stream.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := stream.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            stream.read(length)
        assert len(cache) <= len(FORMATS) * 2


@pytest.mark.parametrize("version", ["abc", "1.0.0.0.0.0", "", "99999999999999999999"])
def test_an_unreadable_accept_version_is_served_not_500(server, version):
    accept = f"application/openmetrics-text; version={version}"
    r = httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": accept})
    assert r.status_code == 200 and "token_economy_tokens_total" in r.text
    assert server.counts["internal_errors"] == 0


@pytest.mark.parametrize("smuggled", [b"\n", b"\r", b"\x00", b"\x0b"])
def test_header_bytes_are_never_echoed(server, smuggled):
    raw = exchange(
        server,
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0"
        + smuggled
        + b"X-Injected: yes\r\n\r\n",
    )
    assert statuses(raw) == [400]
    assert b"X-Injected" not in raw and b"version=1.0.0" + smuggled not in raw


@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_a_body_is_read_and_discarded_not_run_as_a_request(server, method):
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    request = method + b" /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled
    raw = exchange(server, request + b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(raw) == [200 if method == b"GET" else 405, 404]
    assert b"ok\n" not in raw


def test_a_chunked_body_is_answered_and_the_connection_closed(server):
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    raw = exchange(server, b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert statuses(raw) == [405] and b"Connection: close" in raw


def test_a_large_body_is_413_and_closed(server):
    raw = exchange(server, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    assert statuses(raw) == [413]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /\r\n",  # HTTP/0.9: no version, no blank line; used to hold the connection forever
        b"GET /metrics HTTP/1.1\nHost: x\n\n",  # bare LF
        b"GET /metrics HTTP/1.1\r\nHost: x\n\r\n",
        b"NONSENSE\r\n\r\n",
        b"\n",
    ],
)
def test_http09_and_bare_lf_requests_get_400_and_close(server, request_bytes):
    started = time.monotonic()
    raw = exchange(server, request_bytes)
    assert statuses(raw) == [400] and b"Connection: close" in raw
    assert time.monotonic() - started < 1.5  # at once, not at the head timeout


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"), [("gzip;q=0", False), ("gzip; q=0, *", False), ("gzip;q=0.1", True)]
)
def test_accept_encoding_weights_are_honoured(server, accept_encoding, gzipped):
    r = httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept-Encoding": accept_encoding})
    assert r.status_code == 200 and (r.headers.get("content-encoding") == "gzip") is gzipped
    assert "token_economy_tokens_total" in r.text


@pytest.mark.parametrize(
    "head",
    [
        b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X-Many: a\r\n" * 100 + b"\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"a" * 8000 + b"\r\n" + b"X-Big2: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
    ],
)
def test_an_oversized_head_is_431(server, head):
    raw = exchange(server, head)
    assert statuses(raw) == [431]


def test_hostile_connections_are_counted_not_logged(caplog):
    caplog.set_level(logging.DEBUG)
    with serving(head_timeout=0.3, max_connections=10) as (server, _):
        held = [connect(server) for _ in range(50)]
        for sock in held[:20]:
            sock.sendall(b"GET /\r\n")
        time.sleep(0.6)
        for sock in held:
            sock.close()
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200
        counts = server.counts
    assert counts["evicted"] + counts["timeouts"] + counts["bad_requests"] >= 40
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno > logging.DEBUG] == []


# The attack scaled down: a process under a small descriptor limit, the default cap,
# and more idle connections than the limit allows. Its own process, so the limit is its alone.
UNDER_A_SMALL_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from prometheus_client import CollectorRegistry
from exporter.ledger import Ledger
from exporter.server import HttpServer, MetricsCache, Routes
ledger = Ledger()
server = HttpServer("127.0.0.1", 0, Routes(MetricsCache(CollectorRegistry(), ledger), ledger, "http://v", "nvml"))
server.start()
print(server.port, server.max_connections, flush=True)
sys.stdin.read()
print(server.counts, flush=True)
server.stop()
"""


def test_the_default_cap_keeps_scrapes_working_past_the_descriptor_limit():
    child = subprocess.Popen(
        [sys.executable, "-c", UNDER_A_SMALL_LIMIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port, cap = map(int, child.stdout.readline().split())
        assert cap < 64
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(150)]
        try:
            time.sleep(0.3)
            for _ in range(5):
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        finally:
            for sock in idle:
                sock.close()
        out, err = child.communicate("", timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "'evicted': 0" not in out and "'accept_errors': 0" in out and "'loop_errors': 0" in out
    assert err == ""  # nothing logged, however many connections came
