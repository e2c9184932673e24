"""The DCGM energy source against a real HTTP server on loopback serving the fixture pages of
tests/fixtures/dcgm: a read, dcgm-exporter restarting on its port (refused, then a page without
pod labels, then its counters going on), a driver reload, the bounds in time and size, and an
exporter that starts before dcgm-exporter answers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from exporter.sources.dcgm import DcgmEnergySource, DcgmUnavailable
from exporter.sources.errors import SourceError
from tests.dcgm_pages import H100, NAMESPACE, POD, h100_page, without_pod_labels
from tests.e2e.vllm_server import HOST, free_port


class DcgmExporter:
    """A stand-in dcgm-exporter on a fixed loopback port that can be stopped and started again."""

    def __init__(self, port: int, page: str) -> None:
        self.port = port
        self.page = page.encode()
        self.delay = 0.0
        self.chunked = False
        self._httpd: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/metrics"

    def serve(self, page: str) -> None:
        self.page = page.encode()

    def start(self) -> DcgmExporter:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                owner._connections.add(self.connection)

            def do_GET(self):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client may give up
                    time.sleep(owner.delay)
                    self.send_response(200 if self.path == "/metrics" else 404)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    if owner.chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        for start in range(0, len(owner.page), 65536):
                            chunk = owner.page[start : start + 65536]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self.send_header("Content-Length", str(len(owner.page)))
                        self.end_headers()
                        self.wfile.write(owner.page)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients hang up on purpose here (size cap, timeout)

        self._httpd = Server((HOST, self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """As the process dies: the port closes, and so do the kept-alive connections."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._connections.clear()


@pytest.fixture
def dcgm():
    server = DcgmExporter(free_port(), h100_page(50_000_000, 70_000_000)).start()
    yield server
    server.stop()


def open_source(url: str, **kw) -> DcgmEnergySource:
    return DcgmEnergySource(url, pod=POD, namespace=NAMESPACE, timeout=kw.pop("timeout", 2.0), **kw)


def reason_of(source: DcgmEnergySource) -> str:
    with pytest.raises(SourceError) as caught:
        source.read()
    return caught.value.reason


def test_reads_this_pods_gpus_over_http(dcgm):
    with open_source(dcgm.url) as source:
        snapshot = source.read()
    assert [(g.uuid, g.energy_joules) for g in snapshot.gpus] == [(H100[0], 50_000.0), (H100[1], 70_000.0)]
    assert snapshot.origin == "dcgm" and snapshot.gpus[0].power_watts == pytest.approx(402.117)


def test_a_restart_of_dcgm_exporter_then_a_driver_reload(dcgm):
    with open_source(dcgm.url) as source:
        assert [g.energy_joules for g in source.read().gpus] == [50_000.0, 70_000.0]
        dcgm.stop()  # dcgm-exporter restarts: its port refuses
        assert reason_of(source) == "connection"
        dcgm.serve(without_pod_labels(h100_page(51_500_000, 71_200_000)))  # first scrape: no pod labels yet
        dcgm.start()
        assert [g.energy_joules for g in source.read().gpus] == [51_500.0, 71_200.0]  # the counter went on
        dcgm.serve(h100_page(52_000_000, 71_900_000))  # pod labels are back
        assert [g.energy_joules for g in source.read().gpus] == [52_000.0, 71_900.0]
        dcgm.serve(h100_page(3_000, 72_400_000))  # the driver reloaded on GPU 0
        assert [g.energy_joules for g in source.read().gpus] == [3.0, 72_400.0]


def test_a_page_over_the_size_bound_is_refused_declared_or_chunked(dcgm):
    with open_source(dcgm.url) as source:
        source._page._max_bytes = 16 * 1024  # the fixture is ~90 KB; opening needed the whole page
        assert reason_of(source) == "too_large"
        dcgm.chunked = True
        assert reason_of(source) == "too_large"


def test_a_slow_page_times_out(dcgm):
    with open_source(dcgm.url, timeout=0.3) as source:
        dcgm.delay = 1.0
        assert reason_of(source) == "timeout"
        dcgm.delay = 0.0
        time.sleep(0.8)  # let the slow answer finish before the fixture stops the server
        assert len(source.read().gpus) == 2


def test_the_exporter_may_start_before_dcgm_exporter_answers():
    server = DcgmExporter(free_port(), h100_page(50_000_000, 70_000_000))
    timer = threading.Timer(0.6, server.start)
    timer.start()
    try:
        started = time.monotonic()
        with open_source(server.url, open_wait=10.0, retry_period=0.2) as source:
            assert len(source.gpus) == 2 and time.monotonic() - started < 5.0
    finally:
        timer.join()
        server.stop()


def test_nothing_listening_fails_the_open_after_the_wait():
    with pytest.raises(DcgmUnavailable) as caught:
        open_source(f"http://{HOST}:{free_port()}/metrics", open_wait=0.5, retry_period=0.2)
    assert caught.value.reason == "connection" and "still so after 0.5 s" in str(caught.value)
