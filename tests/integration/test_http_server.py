import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry

from exporter.attribution.attributor import TickResult
from exporter.catalogue import BUILD_LABELS
from exporter.collector import LedgerCollector
from exporter.ledger import Ledger, TickRecord
from exporter.server import HttpServer, MetricsCache, Routes


@pytest.fixture
def served():
    ledger = Ledger()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "t")))
    now = [0.0]
    server = HttpServer(
        "127.0.0.1",
        0,
        Routes(MetricsCache(registry, ledger, clock=lambda: now[0]), ledger, "http://127.0.0.1:8000", "nvml"),
    )
    server.start()
    yield f"http://127.0.0.1:{server.port}", ledger, server
    server.stop()


def test_a_scrape_after_a_tick_sees_the_tick(served):
    url, ledger, _ = served
    with httpx.Client() as client:
        assert "token_economy_tokens_total{" not in client.get(url + "/metrics").text
        ledger.publish(TickRecord({}, TickResult(tokens={("m", "output"): 5.0}, models=("m",))))
        assert (
            'token_economy_tokens_total{model_name="m",token_class="output"} 5.0' in client.get(url + "/metrics").text
        )


def test_keep_alive_serves_many_requests_on_one_connection(served):
    url, *_ = served
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        stream = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert stream.readline().startswith(b"HTTP/1.1 200")
            while stream.readline() != b"\r\n":
                pass
            assert stream.read(3) == b"ok\n"


def test_openmetrics_and_gzip_are_negotiated(served):
    url, ledger, _ = served
    ledger.publish(TickRecord({}, TickResult(tokens={("m", "input"): 1.0}, models=("m",))))
    r = httpx.get(url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text") and r.text.endswith("# EOF\n")
    raw = httpx.get(url + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip" and b"token_economy_tokens_total" in raw.content


def test_methods_and_paths(served):
    url, *_ = served
    assert httpx.head(url + "/metrics").status_code == 200
    assert httpx.post(url + "/metrics").status_code == 405
    assert httpx.get(url + "/nowhere").status_code == 404
    assert httpx.get(url + "/readyz").status_code == 503


def test_garbage_request_line_is_answered_400(served):
    url, *_ = served
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")


def test_busy_port_raises_oserror():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError):
            HttpServer("127.0.0.1", holder.getsockname()[1], None)


def test_readyz_turns_503_when_the_loop_stops_ticking():
    ledger = Ledger()
    ledger.publish(TickRecord({}, TickResult(), unixtime=1000.0, ready=True))
    now = [1010.0]
    cache = MetricsCache(CollectorRegistry(auto_describe=False), ledger)
    routes = Routes(cache, ledger, "http://127.0.0.1:8000", "nvml", stale_after_seconds=30.0, clock=lambda: now[0])
    server = HttpServer("127.0.0.1", 0, routes)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/readyz"
        assert httpx.get(url).status_code == 200
        now[0] = 1031.0
        assert httpx.get(url).status_code == 503
    finally:
        server.stop()
