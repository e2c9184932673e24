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
