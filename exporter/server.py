"""HTTP: /metrics for Prometheus, /healthz (the process serves), /readyz (both sources have
answered once), and a landing page."""

from __future__ import annotations

import html
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from exporter import __version__
from exporter.ledger import Ledger


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes are not events
        pass


def _landing(vllm_url: str, energy_source: str) -> bytes:
    return f"""<!doctype html><html><head><title>Token Economy Exporter</title></head><body>
<h1>Token Economy Exporter {html.escape(__version__)}</h1>
<p>What each input and output token of the vLLM server at <code>{html.escape(vllm_url)}</code> costs,
in joules, money and CO2 (energy source: {html.escape(energy_source)}).</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li><li><a href="readyz">/readyz</a></li></ul>
</body></html>""".encode()


def make_app(registry: CollectorRegistry, ledger: Ledger, vllm_url: str, energy_source: str):
    metrics_app = make_wsgi_app(registry)
    landing = _landing(vllm_url, energy_source)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            if ledger.view().ready:
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ready\n"]
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"waiting for the first tick in which vLLM and the energy source both answered\n"]
        if path in ("/", ""):
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class HttpServer:
    def __init__(self, host: str, port: int, app) -> None:
        server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
        self._server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
