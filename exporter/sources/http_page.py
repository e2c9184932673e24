"""One page over HTTP, bounded in time and size, every failure a typed SourceError: how the
sources fetch vLLM's page and dcgm-exporter's.

The time bound is one deadline for the whole fetch (connect, request, headers and body), not
httpx's timeout, which bounds each socket operation alone: a server that trickles a byte every
half second never trips a per-read timeout and would hold the tick for as long as it liked. The
deadline reaches every socket operation through a network backend that shortens each operation's
timeout to what is left of it, and is checked again after each chunk of the body (which is what
bounds a fetch through an injected transport)."""

from __future__ import annotations

import threading
import time
import typing
from collections.abc import Callable, Iterable

import httpcore
import httpx

from exporter.sources.errors import SourceError


class _Deadline(threading.local):
    """When the current fetch on this thread must be over (monotonic seconds); None between fetches."""

    at: float | None = None

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def remaining(
        self, timeout: float | None, late: type[httpcore.TimeoutException] = httpcore.ReadTimeout
    ) -> float | None:
        """The operation's own timeout cut to what is left of the deadline; `late` once it has passed."""
        if self.at is None:
            return timeout
        left = self.at - self.clock()
        if left <= 0:
            raise late("the page's deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.remaining(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: typing.Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._stream.start_tls(ssl_context, server_hostname, self._deadline.remaining(timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend, deadline: _Deadline) -> None:
        self._backend = backend
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline.remaining(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        left = self._deadline.remaining(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_unix_socket(path, left, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bounded_transport(deadline: _Deadline) -> httpx.HTTPTransport | None:
    """httpx's own transport with every socket operation held to the deadline. The backend sits
    on httpcore's pool, which httpx does not expose: if a future httpx moves it, None (the body
    is then bounded by the per-chunk check only) and a unit test says so."""
    transport = httpx.HTTPTransport(trust_env=False)
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):
        transport.close()
        return None
    pool._network_backend = _DeadlineBackend(backend, deadline)  # type: ignore[union-attr]
    return transport


class PageClient:
    def __init__(
        self,
        url: str,
        timeout: float,
        max_bytes: int,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`timeout`: seconds for the whole fetch, from connecting to the body's last byte."""
        self.url = url
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._clock = clock
        self._deadline = _Deadline(clock)
        if transport is None:
            transport = _bounded_transport(self._deadline)
            self.deadline_on_sockets = transport is not None
        else:
            self.deadline_on_sockets = False  # an injected transport: the per-chunk check only
        # No redirects and no proxy settings from the environment: the URL is exactly what was
        # configured. No keep-alive surprises on restarts: a refused connection surfaces at once.
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "text/plain"},
            follow_redirects=False,
            trust_env=False,
        )

    def text(self) -> str:
        body = self._fetch()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SourceError("parse", f"page is not UTF-8: {err}") from None

    def _fetch(self) -> bytes:
        self._deadline.at = self._clock() + self._timeout
        try:
            return self._fetch_by(self._deadline.at)
        finally:
            self._deadline.at = None

    def _fetch_by(self, deadline: float) -> bytes:
        try:
            with self._client.stream("GET", self.url) as response:
                if response.status_code != 200:
                    raise SourceError("http_status", f"HTTP {response.status_code} from {self.url}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self._max_bytes:
                    raise SourceError("too_large", f"{declared} bytes > {self._max_bytes}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise SourceError("too_large", f"more than {self._max_bytes} bytes")
                    chunks.append(chunk)
                    if self._clock() > deadline:
                        raise self._late(f"{size} bytes of the body")
                return b"".join(chunks)
        except SourceError:
            raise
        except httpx.TimeoutException as err:
            raise self._late(type(err).__name__) from None
        except httpx.ConnectError as err:
            raise SourceError("connection", str(err) or "connection refused") from None
        except (httpx.HTTPError, OSError) as err:
            raise SourceError("connection", f"{type(err).__name__}: {err}") from None

    def _late(self, what: str) -> SourceError:
        return SourceError("timeout", f"no whole page within {self._timeout:g} s (connect + headers + body): {what}")

    def close(self) -> None:
        self._client.close()
