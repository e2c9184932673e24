"""HTTP: /metrics for Prometheus, /healthz (the process serves), /readyz (both sources have
answered once, and recently when a staleness bound is set), and a landing page.

The ledger changes once per tick, so the exposition is formatted on the first scrape after a
change and reused by the scrapes that follow (at most `max_age` seconds, for the process
self-metrics); many concurrent scrapers then cost a dictionary lookup each, not a render.
Keep-alive HTTP/1.1, as Prometheus scrapes, TCP_NODELAY, and a deep accept backlog so that a
burst of scrapers is not answered by SYN retransmits.

The server faces whatever can reach its port, so it is strict and bounded: a request head must
arrive within `head_timeout`, an idle keep-alive connection is closed after `idle_timeout`, the
open connections are capped below the file-descriptor limit (the oldest idle one makes room for
a new one), heads and bodies are size-limited, anything that is not a well-formed HTTP/1.x
request is answered 400 and closed, no byte of a request is ever written back, and the cache
holds only the few exposition formats prometheus_client writes. Trouble is counted (`counts`),
never logged per connection.

With a web config (exporter/webconfig.py), each new connection gets the TLS context of the
config current when it is accepted (so a rotated certificate serves the next connection), its
handshake bounded by `head_timeout` inside the connection's own task (a slow handshake never
holds up the accept loop), and every request but /healthz needs the basic auth. bcrypt runs on
a worker thread, never on the event loop; a remembered (user, password) costs a lookup."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.landing import HEADERS as LANDING_HEADERS
from exporter.landing import History, Setting, page
from exporter.ledger import Ledger
from exporter.webconfig import NO_WEB_CONFIG, UNAUTHORIZED_HEADERS, BasicAuth, CurrentConfig, WebConfig

# The exposition formats served, as the Accept values prometheus_client's choose_encoder maps to
# them. A request's Accept is reduced to one of these before anything else reads it, so a cache
# keyed on the format holds at most len(FORMATS) x 2 (gzip or not) entries, and the Content-Type
# written back is always one of prometheus_client's constants, never the client's bytes.
TEXT_0_0_4, TEXT_1_0_0, OPENMETRICS_1_0_0 = 0, 1, 2
FORMATS = (
    "",
    "text/plain; version=1.0.0; escaping=underscores",
    "application/openmetrics-text; version=1.0.0; escaping=underscores",
)
_VERSION = re.compile(r"\d{1,9}(\.\d{1,9}){0,3}")


def _params(media_range: str) -> tuple[str, dict[str, str]]:
    kind, *rest = media_range.split(";")
    params = {}
    for item in rest:
        name, _, value = item.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def _version(params: Mapping[str, str]) -> tuple[int, ...] | None:
    """The version parameter as numbers; None when absent or not a version (never an error)."""
    value = params.get("version", "")
    return tuple(int(p) for p in value.split(".")) if _VERSION.fullmatch(value) else None


def _quality(params: Mapping[str, str]) -> float:
    try:
        q = float(params.get("q", "1"))
    except ValueError:
        return 0.0  # an unreadable weight is no acceptance
    return q if 0.0 <= q <= 1.0 else 0.0  # nor is one out of range (nan, inf, negative)


def metrics_format(accept: str) -> int:
    """The index in FORMATS answering `accept`: the first acceptable OpenMetrics (version 1.x or
    none) or text (version >= 1) range, in the header's order as prometheus_client picks; text
    0.0.4 otherwise. Ranges with q=0 or an unreadable version are skipped."""
    for media_range in accept.split(",")[:32]:  # a scraper lists a handful; the rest is noise
        kind, params = _params(media_range)
        if _quality(params) <= 0:
            continue
        version = _version(params)
        if kind == "application/openmetrics-text" and ("version" not in params or (version or (0,)) >= (1,)):
            return OPENMETRICS_1_0_0
        if kind == "text/plain" and version is not None and version >= (1,):
            return TEXT_1_0_0
    return TEXT_0_0_4


def wants_gzip(accept_encoding: str) -> bool:
    """gzip only when the client gave it (or `*`, when gzip is not named) a weight above 0."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(",")[:32]:
        coding, params = _params(item)
        weights.setdefault(coding, _quality(params))
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


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
        self._entries: dict[tuple[int, bool], tuple[tuple[int, int], bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def warm(self) -> None:
        """Render again every format a scraper has asked for, for the ledger's new version: called
        by the loop right after it publishes, so the tick's thread pays for the render and the
        first scrape after a tick finds its page ready (it waited on the render, GIL and all)."""
        key = (self._ledger.version, int(self._clock() / self._max_age))
        with self._lock:
            for (fmt, compressed), (made, _) in list(self._entries.items()):
                if made != key:
                    encoder, _content_type = choose_encoder(FORMATS[fmt])
                    body = encoder(self._registry)
                    self._entries[(fmt, compressed)] = (
                        key,
                        gzip.compress(body, compresslevel=1) if compressed else body,
                    )

    def render(self, accept: str, accept_encoding: str) -> tuple[bytes, str, bool]:
        fmt = metrics_format(accept)
        encoder, content_type = choose_encoder(FORMATS[fmt])
        compressed = wants_gzip(accept_encoding)
        key = (self._ledger.version, int(self._clock() / self._max_age))
        with self._lock:  # one render per change, however many scrapers arrive at once
            entry = self._entries.get((fmt, compressed))
            if entry is None or entry[0] != key:
                body = encoder(self._registry)
                entry = (key, gzip.compress(body, compresslevel=1) if compressed else body)
                self._entries[(fmt, compressed)] = entry
        return entry[1], content_type, compressed


class Routes:
    """What each path answers; the HTTP plumbing below only moves bytes.

    `stale_after_seconds`: when set, /readyz also answers 503 once the last completed tick
    (the ledger view's `last_tick_unixtime`, by `clock`) is older than that: a loop that has
    stopped ticking should not keep the pod ready. `history`: the last minutes the landing page
    charts (fed by the wiring after each tick); `currency`: the cost's, as the page names it."""

    def __init__(
        self,
        cache: MetricsCache,
        ledger: Ledger,
        vllm_url: str,
        energy_source: str,
        *,
        stale_after_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        history: History | None = None,
        currency: str = "",
    ) -> None:
        self._cache = cache
        self._ledger = ledger
        self._setting = Setting(__version__, vllm_url, energy_source, currency)
        self._history = history or History()
        self._stale_after = stale_after_seconds
        self._clock = clock

    def answer(self, path: str, headers: Mapping[str, str]) -> tuple[int, str, bytes, bool]:
        path = path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type, compressed = self._cache.render(
                headers.get("accept", ""), headers.get("accept-encoding", "")
            )
            return 200, content_type, body, compressed
        if path == "/healthz":
            return 200, _TEXT, b"ok\n", False
        if path == "/readyz":
            return self._readiness()
        if path == "/":
            body = page(self._ledger.view(), self._setting, self._history.samples(), self._history.window_seconds)
            return 200, "text/html; charset=utf-8", body, False
        return 404, _TEXT, b"not found\n", False

    def headers(self, target: str) -> tuple[tuple[str, str], ...]:
        """Headers a path's answer carries besides the framing: the landing page's content policy."""
        return LANDING_HEADERS if target.split("?", 1)[0] == "/" else ()

    def _readiness(self) -> tuple[int, str, bytes, bool]:
        view = self._ledger.view()
        if not view.ready:
            return 503, _TEXT, b"waiting for the first tick in which vLLM and the energy source both answered\n", False
        age = self._clock() - view.last_tick_unixtime
        if self._stale_after is not None and age > self._stale_after:
            return 503, _TEXT, f"the last completed tick is {age:.0f} s old\n".encode(), False
        return 200, _TEXT, b"ready\n", False


def _merged(configured: tuple[tuple[str, str], ...], own: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The web config's headers, less those the path sets itself (the landing page's policy is
    stricter than any a config would give it): each header once."""
    names = {name.lower() for name, _ in own}
    return tuple(h for h in configured if h[0].lower() not in names) + own


_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
MAX_HEAD = 16 * 1024  # a scrape's head is a few hundred bytes
MAX_HEADERS = 64
MAX_BODY = 16 * 1024  # read and thrown away; a scraper sends none
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[\x21-\x7e]*|\*) HTTP/1\.([0-9])\r\n")
# Linear-time patterns only: a head is the client's, and a backtracking pattern is a CPU bomb.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # anything but HTAB below a space, and DEL


def max_connections_for(nofile: int) -> int:
    """Connections to hold under a soft RLIMIT_NOFILE of `nofile`: at most half of what is left
    after a reserve for the rest of the process, and never more than 1024 (each costs a task)."""
    reserve = max(64, nofile // 4)
    return max(8, min(1024, (nofile - reserve) // 2))


def _default_max_connections() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max_connections_for(1 << 20 if soft == resource.RLIM_INFINITY else soft)


class BadRequest(Exception):
    """A request answered with `status` and a closed connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Request:
    method: str
    target: str
    minor: int  # HTTP/1.<minor>
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def close(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        return connection == "close" or (self.minor == 0 and connection != "keep-alive")


def parse_request_line(line: bytes) -> Request:
    """A request line ending in CRLF, strictly; HTTP/0.9 and bare-LF lines are BadRequest."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise BadRequest(400, "request_line")
    method, target, minor = match.groups()
    return Request(method.decode(), target.decode("ascii"), int(minor))


def add_header(request: Request, line: bytes) -> None:
    """One `name: value` line into the request; repeated body framing is BadRequest (smuggling)."""
    raw_name, colon, raw_value = line.partition(b":")
    if not colon or not line.endswith(b"\r\n") or _TOKEN.fullmatch(raw_name) is None:
        raise BadRequest(400, "header_line")
    raw_value = raw_value[:-2].strip(b" \t")
    if _CONTROL.search(raw_value):
        raise BadRequest(400, "header_line")
    name, value = raw_name.decode("ascii").lower(), raw_value.decode("latin-1")
    if name in request.headers:
        if name in ("content-length", "transfer-encoding", "host"):
            raise BadRequest(400, "duplicate_framing")
        value = request.headers[name] + ", " + value
    request.headers[name] = value


def body_length(request: Request) -> int:
    """The bytes of body to read and discard; Transfer-Encoding is not read (the caller closes)."""
    value = request.headers.get("content-length")
    if value is None:
        return 0
    if not value.isdigit() or len(value) > 12:
        raise BadRequest(400, "content_length")
    if int(value) > MAX_BODY:
        raise BadRequest(413, "body_too_large")
    return int(value)


# What `HttpServer.counts` counts: trouble is counted here, never logged per connection, so a
# hostile client cannot grow the log.
COUNTS = (
    "connections",
    "evicted",
    "refused",
    "accept_errors",
    "timeouts",
    "bad_requests",
    "internal_errors",
    "loop_errors",
    "tls_errors",  # handshakes that failed or timed out (a plain-HTTP client, a refused certificate)
    "unauthorized",  # requests answered 401
)


@dataclass(slots=True, eq=False)
class _Connection:
    writer: asyncio.StreamWriter | None  # None while its TLS handshake runs
    waiting_since: float | None  # loop time since it waits for a request; None while answering
    served: bool = False  # has completed a request: a scraper's keep-alive is evicted last
    task: asyncio.Task[None] | None = None

    def eviction_order(self) -> tuple[bool, float]:
        return self.served, self.waiting_since or 0.0

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        elif self.task is not None:  # in its handshake: cancelling it closes the socket
            self.task.cancel()


class HttpServer:
    """A small asyncio HTTP/1.1 server on its own thread. One event loop serves every scraper in
    turn, so concurrent scrapes never fight each other for the GIL; keep-alive as Prometheus uses it.

    `head_timeout`: seconds for a request's head (and body) from its first byte, or from the
    connection's start (and for a TLS handshake); `idle_timeout`: seconds a keep-alive connection
    may wait for its next request; `max_connections`: the cap (default from RLIMIT_NOFILE,
    `max_connections_for`); `web`: the current web config (TLS, basic auth, extra headers),
    asked once per connection and once per request."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Routes,
        *,
        head_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        max_connections: int | None = None,
        web: CurrentConfig | None = None,
    ) -> None:
        self._routes = routes
        self._web: CurrentConfig = web or (lambda: NO_WEB_CONFIG)
        self._bcrypt: asyncio.Semaphore | None = None  # made on the loop's thread
        self._head_timeout = head_timeout
        self._idle_timeout = idle_timeout
        self.max_connections = max_connections or _default_max_connections()
        self._open: set[_Connection] = set()  # touched on the loop's thread only
        self._counts = dict.fromkeys(COUNTS, 0)
        self._sock = _listening_socket(host, port)
        self._loop = asyncio.new_event_loop()
        # asyncio would log each failed accept or lost write; a flood of them is counted instead.
        self._loop.set_exception_handler(lambda _loop, _context: self._count("loop_errors"))
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._started = threading.Event()
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # one a connection

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def _count(self, what: str) -> None:
        self._counts[what] += 1

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._accept_forever())
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _accept_forever(self) -> None:
        """One connection at a time, making room under the cap before the next: asyncio's own
        server accepts up to a hundred in one go before any can be refused, which is what ran
        the process out of descriptors."""
        loop = asyncio.get_running_loop()
        self._accepting = asyncio.current_task()
        self._started.set()
        try:
            while True:
                try:
                    client, _ = await loop.sock_accept(self._sock)
                except OSError:  # out of descriptors (EMFILE) all the same: free one, retry shortly
                    self._count("accept_errors")
                    self._evict()
                    await asyncio.sleep(0.05)
                    continue
                await self._open_connection(client)
                await asyncio.sleep(0)  # an evicted connection releases its descriptor now
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _open_connection(self, client: socket.socket) -> None:
        self._count("connections")
        if len(self._open) >= self.max_connections and not self._evict():
            self._count("refused")
            client.close()  # refused at once: every connection is being answered
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self._web().tls  # this connection's: a certificate rotated later serves the next
        if context is not None:
            conn = _Connection(None, asyncio.get_running_loop().time())
            self._start(conn, self._tls_connection(conn, client, context))
            return
        try:
            reader, writer = await asyncio.open_connection(sock=client, limit=MAX_HEAD)
        except OSError:
            client.close()
            return
        conn = _Connection(writer, asyncio.get_running_loop().time())
        self._start(conn, self._connection(conn, reader))

    def _start(self, conn: _Connection, work: Coroutine[Any, Any, None]) -> None:
        self._open.add(conn)
        task = asyncio.create_task(work)
        conn.task = task
        self._tasks.add(task)  # a reference, or the task may be collected mid-request
        task.add_done_callback(self._tasks.discard)

    async def _tls_connection(self, conn: _Connection, client: socket.socket, context: ssl.SSLContext) -> None:
        """The handshake, within head_timeout, on this connection's own task; then its requests."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            async with asyncio.timeout(self._head_timeout):
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, client, ssl=context, ssl_handshake_timeout=self._head_timeout
                )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            self._count("tls_errors")
            self._open.discard(conn)
            client.close()
            return
        except asyncio.CancelledError:  # evicted mid-handshake, or the server stops
            self._open.discard(conn)
            client.close()
            raise
        conn.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._connection(conn, reader)

    def _evict(self) -> bool:
        """Aborts the connection that has waited longest for a request (one that never completed
        a request first); False when every connection is being answered."""
        waiting = [c for c in self._open if c.waiting_since is not None]
        if not waiting:
            return False
        victim = min(waiting, key=_Connection.eviction_order)
        self._open.discard(victim)
        victim.abort()
        self._count("evicted")
        return True

    async def _connection(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        try:
            await self._requests(conn, reader)
        except BadRequest as err:
            self._count("bad_requests")
            await self._send_last(conn, _response(err.status, _TEXT, f"{err.reason}\n".encode(), False, close=True))
        except TimeoutError:
            self._count("timeouts")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went, or was evicted
        finally:
            self._open.discard(conn)
            if conn.writer is not None:
                conn.writer.close()

    async def _requests(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._head_timeout
        while True:
            request = await self._read_request(reader, deadline, fresh=not conn.served)
            conn.waiting_since = None
            # A Transfer-Encoding body is never read, so nothing after it can be trusted as a request.
            close = request.close or "transfer-encoding" in request.headers
            web = self._web()  # once per request: a re-read config applies to the next one
            if web.needs_auth(request.target):
                await self._send(conn, await self._authenticated(web, request, close))
            else:  # _respond's fast path inline: no coroutine more than before for a scrape without a password
                await self._send(conn, self._answer(request, close, web))
            if close:
                return
            conn.served = True
            conn.waiting_since = loop.time()
            deadline = conn.waiting_since + self._idle_timeout

    async def _read_request(self, reader: asyncio.StreamReader, first_byte_by: float, fresh: bool) -> Request:
        """The next request's head, its small body read and discarded; the head must be whole
        by `first_byte_by` on a fresh connection, else within head_timeout of its first byte."""
        async with asyncio.timeout_at(first_byte_by):
            first = await reader.readexactly(1)
        head_by = first_byte_by if fresh else asyncio.get_running_loop().time() + self._head_timeout
        async with asyncio.timeout_at(head_by):
            line = first if first == b"\n" else first + await _line(reader)
            request = parse_request_line(line)
            await _read_headers(reader, request, len(line))
            length = body_length(request)
            if length:
                await reader.readexactly(length)
        return request

    async def _respond(self, request: Request, close: bool) -> bytes:
        """The answer to one request under the current web config (what _requests does inline)."""
        web = self._web()
        if web.needs_auth(request.target):
            return await self._authenticated(web, request, close)
        return self._answer(request, close, web)

    async def _authenticated(self, web: WebConfig, request: Request, close: bool) -> bytes:
        """The answer, once the request has shown the basic auth its path needs; 401 otherwise."""
        auth = web.auth
        if auth is not None and not await self._authorized(auth, request.headers.get("authorization")):
            self._count("unauthorized")
            headers = web.headers + UNAUTHORIZED_HEADERS
            body = b"unauthorized\n"
            sent = b"" if request.method == "HEAD" else body
            return _response(401, _TEXT, sent, False, close, length=len(body), headers=headers)
        return self._answer(request, close, web)

    async def _authorized(self, auth: BasicAuth, authorization: str | None) -> bool:
        decided = auth.cached(authorization)
        if decided is not None:
            return decided
        if self._bcrypt is None:
            self._bcrypt = asyncio.Semaphore(2)
        async with self._bcrypt:  # bcrypt holds a core ~0.1 s: off the event loop, two at a time at most
            return await asyncio.get_running_loop().run_in_executor(None, auth.verify, authorization)

    def _answer(self, request: Request, close: bool, web: WebConfig = NO_WEB_CONFIG) -> bytes:
        if request.method not in ("GET", "HEAD"):
            return _response(405, _TEXT, b"method not allowed\n", False, close, headers=web.headers)
        try:
            status, content_type, body, gzipped = self._routes.answer(request.target, request.headers)
        except Exception:  # a rendering bug must not take the server down
            self._count("internal_errors")
            status, content_type, body, gzipped = 500, _TEXT, b"internal error\n", False
        body_sent = b"" if request.method == "HEAD" else body
        headers = _merged(web.headers, self._routes.headers(request.target))
        return _response(status, content_type, body_sent, gzipped, close, length=len(body), headers=headers)

    async def _send(self, conn: _Connection, data: bytes) -> None:
        if conn.writer is None or conn.writer.is_closing():  # evicted while its answer was being made
            raise ConnectionResetError
        conn.writer.write(data)
        async with asyncio.timeout(self._head_timeout):  # a client that does not read is dropped
            await conn.writer.drain()

    async def _send_last(self, conn: _Connection, data: bytes) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):  # it is closed next either way
            await self._send(conn, data)

    def stop(self) -> None:
        def shutdown() -> None:
            if self._accepting is not None:
                self._accepting.cancel()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(shutdown)
            self._thread.join(5)
        self._sock.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "head_too_large") from None


async def _read_headers(reader: asyncio.StreamReader, request: Request, size: int) -> None:
    for _ in range(MAX_HEADERS + 1):
        line = await _line(reader)
        if line == b"\r\n":
            return
        size += len(line)
        if size > MAX_HEAD:
            raise BadRequest(431, "head_too_large")
        add_header(request, line)
    raise BadRequest(431, "too_many_headers")


def _response(
    status: int,
    content_type: str,
    body: bytes,
    gzipped: bool,
    close: bool,
    length: int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
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
    if headers:  # the web config's, checked there
        head.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
