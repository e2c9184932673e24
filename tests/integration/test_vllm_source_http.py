import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exporter.sources.errors import SourceError
from exporter.sources.vllm import VllmSource

PAGE = (Path(__file__).parents[1] / "fixtures" / "vllm-0.32-cpu-metrics.txt").read_bytes()


class Behaviour:
    status = 200
    body = PAGE
    delay = 0.0
    chunked = False
    trickle = 0.0  # seconds between bytes, each well within any per-read timeout
    trickle_head = False  # the status line and headers too, not only the body
    pieces = 1  # the body in this many writes, `delay` apart


@pytest.fixture
def server():
    behaviour = Behaviour()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            # The client may give up on purpose (size cap, timeout).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer()

        def _answer(self):
            if behaviour.trickle:
                return self._trickle()
            if behaviour.pieces > 1:
                return self._in_pieces()
            time.sleep(behaviour.delay)
            self.send_response(behaviour.status)
            self.send_header("Content-Type", "text/plain; version=1.0.0")
            if behaviour.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(behaviour.body), 65536):
                    chunk = behaviour.body[start : start + 65536]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(behaviour.body)))
                self.end_headers()
                self.wfile.write(behaviour.body)

        def _head(self):
            return (
                f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(behaviour.body)}\r\n\r\n".encode()
            )

        def _trickle(self):
            out = behaviour.body
            if behaviour.trickle_head:
                out = self._head() + out
            else:
                self.wfile.write(self._head())
            for i in range(len(out)):
                self.wfile.write(out[i : i + 1])
                self.wfile.flush()
                time.sleep(behaviour.trickle)

        def _in_pieces(self):
            self.wfile.write(self._head())
            size = -(-len(behaviour.body) // behaviour.pieces)
            for start in range(0, len(behaviour.body), size):
                time.sleep(behaviour.delay)
                self.wfile.write(behaviour.body[start : start + size])
                self.wfile.flush()

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # clients hang up on purpose here (size cap, timeout)

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield behaviour, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def reason_of(source):
    with pytest.raises(SourceError) as err:
        source.read()
    return err.value.reason


def test_reads_the_real_page(server):
    _, url = server
    snap = VllmSource(url, clock=lambda: 42.0).read()
    assert snap.timestamp == 42.0 and snap.engines[0].generation_tokens == 1576


def test_non_200_is_counted_as_http_status(server):
    behaviour, url = server
    behaviour.status, behaviour.body = 503, b"overloaded"
    assert reason_of(VllmSource(url)) == "http_status"


def test_garbage_is_a_parse_error(server):
    behaviour, url = server
    behaviour.body = b"<html><body>hello</body></html>"
    assert reason_of(VllmSource(url)) == "parse"
    behaviour.body = b"\xff\xfe\x00 not utf-8"
    assert reason_of(VllmSource(url)) == "parse"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_page_over_the_cap_is_refused(server, chunked):
    behaviour, url = server
    behaviour.chunked = chunked
    behaviour.body = PAGE * 4
    assert reason_of(VllmSource(url, max_bytes=len(PAGE) * 2)) == "too_large"


def test_a_slow_server_times_out(server):
    behaviour, url = server
    behaviour.delay = 1.0
    started = time.monotonic()
    assert reason_of(VllmSource(url, timeout=0.2)) == "timeout"
    assert time.monotonic() - started < 0.9


def test_a_refused_connection_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert reason_of(VllmSource(f"http://127.0.0.1:{port}")) == "connection"


@pytest.mark.parametrize("head", [False, True], ids=["body", "whole-response"])
def test_a_trickled_page_times_out_at_the_deadline_for_the_whole_read(server, head):
    """A byte every 0.1 s never trips a per-read timeout; the one deadline for connect + headers
    + body ends the read at 1 s all the same."""
    behaviour, url = server
    behaviour.trickle, behaviour.trickle_head = 0.1, head
    source = VllmSource(url, timeout=1.0)
    for _ in range(2):  # a second read gets its own full deadline
        started = time.monotonic()
        assert reason_of(source) == "timeout"
        assert 0.9 <= time.monotonic() - started < 1.4
    source.close()


def test_a_page_that_arrives_in_slow_pieces_within_the_deadline_is_read_whole(server):
    behaviour, url = server
    behaviour.pieces, behaviour.delay = 8, 0.1  # 0.8 s in all, under a 2 s deadline
    assert VllmSource(url, timeout=2.0, clock=lambda: 42.0).read().engines[0].generation_tokens == 1576
