"""The page client's one deadline: connect, headers and body together within the timeout, however
slowly the server trickles, on a fake clock and without a socket (a fake network backend under
httpx's own transport, or a mock transport whose body trickles)."""

from __future__ import annotations

from collections.abc import Iterator

import httpcore
import httpx
import pytest

from exporter.sources import http_page
from exporter.sources.errors import SourceError
from tests.fakes.pynvml_fake import FakeClock

URL = "http://vllm.test:8000/metrics"
PAGE = b'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n' * 20


class TricklingBody(httpx.SyncByteStream):
    """One byte per chunk, `seconds` of the fake clock apart; counts what was pulled."""

    def __init__(self, body: bytes, clock: FakeClock, seconds: float) -> None:
        self.body, self.clock, self.seconds = body, clock, seconds
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self.body)):
            self.clock.advance(self.seconds)
            self.pulled += 1
            yield self.body[i : i + 1]


def trickling(clock: FakeClock, seconds: float, body: bytes = PAGE) -> tuple[httpx.MockTransport, TricklingBody]:
    stream = TricklingBody(body, clock, seconds)
    return httpx.MockTransport(lambda request: httpx.Response(200, stream=stream)), stream


def test_a_body_trickled_a_byte_every_half_second_fails_as_timeout_at_the_deadline(clock):
    transport, stream = trickling(clock, 0.5)
    client = http_page.PageClient(URL, 2.0, 1 << 20, transport, clock=clock)
    started = clock()
    with pytest.raises(SourceError) as err:
        client.text()
    assert err.value.reason == "timeout" and "2 s" in err.value.detail
    # Every chunk arrived well within httpx's per-read timeout; the deadline stopped it after 2 s.
    assert stream.pulled == 5 and clock() - started == pytest.approx(2.5)


def test_a_page_whose_chunks_arrive_within_the_deadline_is_read_whole(clock):
    transport, _ = trickling(clock, 0.001)
    assert http_page.PageClient(URL, 2.0, 1 << 20, transport, clock=clock).text() == PAGE.decode()


def test_the_deadline_is_per_fetch_so_a_slow_read_does_not_shorten_the_next(clock):
    slow, _ = trickling(clock, 0.5)
    client = http_page.PageClient(URL, 2.0, 1 << 20, slow, clock=clock)
    with pytest.raises(SourceError):
        client.text()
    fast, _ = trickling(clock, 0.001)
    assert http_page.PageClient(URL, 2.0, 1 << 20, fast, clock=clock).text() == PAGE.decode()


class FakeStream(httpcore.NetworkStream):
    """A connection whose server answers `response` `step` bytes a read, `seconds` apart."""

    def __init__(self, response: bytes, clock: FakeClock, seconds: float, step: int = 1) -> None:
        self.response, self.clock, self.seconds, self.step = response, clock, seconds, step
        self.timeouts: list[float | None] = []  # of every operation
        self.read_timeouts: list[float | None] = []
        self.sent = b""
        self.closed = False

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.timeouts.append(timeout)
        self.read_timeouts.append(timeout)
        if timeout is not None and timeout < self.seconds:  # the real socket would time out here
            self.clock.advance(timeout)
            raise httpcore.ReadTimeout("timed out")
        self.clock.advance(self.seconds)
        out, self.response = self.response[: self.step], self.response[self.step :]
        return out

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)
        self.sent += buffer

    def close(self) -> None:
        self.closed = True


class FakeBackend(httpcore.NetworkBackend):
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream
        self.connect_timeouts: list[float | None] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connect_timeouts.append(timeout)
        return self.stream


def response(body: bytes = PAGE) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def client_over(stream: FakeStream, clock: FakeClock, timeout: float = 2.0) -> tuple[http_page.PageClient, FakeBackend]:
    """The client exactly as the sources build it (httpx's own transport), on a fake backend."""
    client = http_page.PageClient(URL, timeout, 1 << 20, clock=clock)
    assert client.deadline_on_sockets
    backend = FakeBackend(stream)
    client._client._transport._pool._network_backend._backend = backend  # type: ignore[attr-defined]
    return client, backend


def test_the_client_holds_every_socket_operation_to_the_deadline_without_an_injected_transport(clock):
    client = http_page.PageClient(URL, 2.0, 1 << 20, clock=clock)
    pool = client._client._transport._pool  # type: ignore[attr-defined]
    # If an httpx upgrade moves the pool, this fails rather than silently losing the bound on headers.
    assert client.deadline_on_sockets and isinstance(pool._network_backend, http_page._DeadlineBackend)


def test_headers_trickled_a_byte_every_half_second_fail_at_the_deadline(clock):
    stream = FakeStream(response(), clock, 0.5)
    client, backend = client_over(stream, clock)
    started = clock()
    with pytest.raises(SourceError) as err:
        client.text()
    assert err.value.reason == "timeout"
    assert clock() - started <= 2.0 + 1e-9  # the last read waited only for what was left
    assert backend.connect_timeouts == [2.0]
    assert b"GET /metrics" in stream.sent
    assert stream.timeouts[-1] == pytest.approx(0.0, abs=0.5)


def test_each_read_waits_only_for_what_is_left_of_the_deadline(clock):
    stream = FakeStream(response(), clock, 0.3, step=256)
    client, _ = client_over(stream, clock, timeout=5.0)
    assert client.text() == PAGE.decode()
    reads = stream.read_timeouts
    assert None not in reads and len(reads) > 2
    assert reads == sorted(reads, reverse=True) and reads[0] == pytest.approx(5.0) and max(reads) <= 5.0
    assert reads[-1] == pytest.approx(5.0 - 0.3 * (len(reads) - 1))


def test_a_deadline_already_passed_refuses_the_operation_without_waiting(clock):
    deadline = http_page._Deadline(clock)
    stream = FakeStream(b"x", clock, 0.1)
    bounded = http_page._DeadlineStream(stream, deadline)
    assert bounded.read(10, 3.0) == b"x" and stream.timeouts == [3.0]  # no fetch under way: as asked
    deadline.at = clock() + 1.0
    bounded.write(b"GET", 3.0)
    assert stream.timeouts[-1] == pytest.approx(1.0)
    clock.advance(1.0)
    with pytest.raises(httpcore.ReadTimeout):
        bounded.read(10, 3.0)
    with pytest.raises(httpcore.WriteTimeout):
        bounded.write(b"x", None)
    assert len(stream.timeouts) == 2  # neither reached the socket
