"""HTTP: /metrics for Prometheus, /healthz (the process serves), /readyz (both sources have
answered once), and a landing page.

The ledger changes once per tick, so the exposition is formatted on the first scrape after a
change and reused by the scrapes that follow (at most `max_age` seconds, for the process
self-metrics); many concurrent scrapers then cost a dictionary lookup each, not a render.
Keep-alive HTTP/1.1, as Prometheus scrapes, TCP_NODELAY, and a deep accept backlog so that a
burst of scrapers is not answered by SYN retransmits."""

from __future__ import annotations

import asyncio
import gzip
import html
import socket
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.ledger import Ledger


class MetricsCache:
    def __init__(
        self,
        registry: CollectorRegistry,
        ledger: Ledger,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._ledger = ledger
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, bool], tuple[tuple[int, int], bytes]] = {}

    def render(self, accept: str, accept_encoding: str) -> tuple[bytes, str, bool]:
        encoder, content_type = choose_encoder(accept)
        compressed = "gzip" in accept_encoding
        key = (self._ledger.version, int(self._clock() / self._max_age))
        with self._lock:  # one render per change, however many scrapers arrive at once
            entry = self._entries.get((content_type, compressed))
            if entry is None or entry[0] != key:
                body = encoder(self._registry)
                entry = (key, gzip.compress(body, compresslevel=1) if compressed else body)
                self._entries[(content_type, compressed)] = entry
        return entry[1], content_type, compressed


def _landing(vllm_url: str, energy_source: str, origins: Mapping[str, str], modelled: bool | None) -> bytes:
    work = origins.get("vllm", "none yet")
    energy = origins.get("energy", "none yet")
    kind = {True: "modelled, not measured", False: "measured", None: "no reading yet"}[modelled]
    return f"""<!doctype html><html><head><title>Token Economy Exporter</title></head><body>
<h1>Token Economy Exporter {html.escape(__version__)}</h1>
<p>What each input and output token of the vLLM server at <code>{html.escape(vllm_url)}</code> costs,
in joules, money and CO2 (energy source setting: {html.escape(energy_source)}).</p>
<p>Work counts from: <b>{html.escape(work)}</b>. Energy from: <b>{html.escape(energy)}</b> ({kind}).</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul>
</body></html>""".encode()


class Routes:
    """What each path answers; the HTTP plumbing below only moves bytes."""

    def __init__(self, cache: MetricsCache, ledger: Ledger, vllm_url: str, energy_source: str) -> None:
        self._cache = cache
        self._ledger = ledger
        self._vllm_url = vllm_url
        self._energy_source = energy_source

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, str, bytes, bool]:
        path = path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type, compressed = self._cache.render(
                headers.get("accept", ""), headers.get("accept-encoding", "")
            )
            return 200, content_type, body, compressed
        if path == "/healthz":
            return 200, _TEXT, b"ok\n", False
        if path == "/readyz":
            if self._ledger.ready:
                return 200, _TEXT, b"ready\n", False
            return 503, _TEXT, b"waiting for the first tick in which vLLM and the energy source both answered\n", False
        if path == "/":
            view = self._ledger.view()
            page = _landing(self._vllm_url, self._energy_source, view.origins, view.energy_modelled)
            return 200, "text/html; charset=utf-8", page, False
        return 404, _TEXT, b"not found\n", False


_TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_HEAD = 16 * 1024


class HttpServer:
    """A small asyncio HTTP/1.1 server on its own thread. One event loop serves every scraper in
    turn, so concurrent scrapes never fight each other for the GIL; keep-alive as Prometheus uses it."""

    def __init__(self, host: str, port: int, routes: Routes) -> None:
        self._routes = routes
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(512)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._started = threading.Event()
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._connection, sock=self._sock, limit=_MAX_HEAD)
            self._started.set()
            await self._server.serve_forever()

        try:
            self._loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    writer.write(_response(400, _TEXT, b"bad request\n", False, close=True))
                    return
                method, target, version = parts
                close = headers.get("connection", "").lower() == "close" or (
                    version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive"
                )
                if method not in ("GET", "HEAD"):
                    writer.write(_response(405, _TEXT, b"method not allowed\n", False, close))
                else:
                    try:
                        status, content_type, body, gzipped = self._routes.answer(target, headers)
                    except Exception:  # a rendering bug must not take the server down
                        status, content_type, body, gzipped = 500, _TEXT, b"internal error\n", False
                    writer.write(
                        _response(
                            status, content_type, b"" if method == "HEAD" else body, gzipped, close, length=len(body)
                        )
                    )
                await writer.drain()
                if close:
                    return
        finally:
            writer.close()

    def stop(self) -> None:
        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(shutdown)
            self._thread.join(5)
        self._sock.close()


def _response(
    status: int, content_type: str, body: bytes, gzipped: bool, close: bool, length: int | None = None
) -> bytes:
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body) if length is None else length}",
        f"Server: token-economy-exporter/{__version__}",
    ]
    if gzipped:
        head.append("Content-Encoding: gzip")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
