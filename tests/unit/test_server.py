"""The server's pure pieces: Accept and Accept-Encoding negotiation, the request parser, the
connection cap's arithmetic, the bounded exposition cache and /readyz. The same behaviours over
real sockets are tests/integration/test_http_hostile.py."""

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.attribution.attributor import TickResult
from exporter.catalogue import BUILD_LABELS
from exporter.collector import LedgerCollector
from exporter.ledger import Ledger, TickRecord
from exporter.server import (
    COUNTS,
    FORMATS,
    OPENMETRICS_1_0_0,
    TEXT_0_0_4,
    TEXT_1_0_0,
    BadRequest,
    MetricsCache,
    Routes,
    _response,
    add_header,
    body_length,
    max_connections_for,
    metrics_format,
    parse_request_line,
    wants_gzip,
)

KNOWN_CONTENT_TYPES = {choose_encoder(accept)[1] for accept in FORMATS}


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", TEXT_0_0_4),
        ("*/*", TEXT_0_0_4),
        ("application/openmetrics-text; version=1.0.0", OPENMETRICS_1_0_0),
        ("application/openmetrics-text", OPENMETRICS_1_0_0),
        ("application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5", TEXT_0_0_4),
        ("text/plain; version=1.0.0; escaping=allow-utf-8", TEXT_1_0_0),
        # Prometheus 3's header
        (
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
            "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4",
            OPENMETRICS_1_0_0,
        ),
        ("application/openmetrics-text; version=abc", TEXT_0_0_4),  # was a 500
        ("application/openmetrics-text; version=1.0.0; q=0", TEXT_0_0_4),
        ("application/openmetrics-text; version=1.0.0\nX-Injected: yes", TEXT_0_0_4),
    ],
)
def test_accept_is_reduced_to_a_known_format(accept, expected):
    assert metrics_format(accept) == expected


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("", False),
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, identity", False),
        ("GZIP;q=0.5", True),
        ("*", True),
        ("*;q=0", False),
        ("gzip;q=0, *", False),  # named beats the wildcard
        ("gzip;q=nonsense", False),
        ("gzip;q=nan", False),
        ("gzip;q=inf", False),
        ("identity", False),
    ],
)
def test_gzip_only_when_its_weight_is_above_zero(accept_encoding, expected):
    assert wants_gzip(accept_encoding) is expected


@pytest.mark.parametrize(
    "line",
    [
        b"GET /\r\n",  # HTTP/0.9
        b"GET / HTTP/1.1\n",  # bare LF
        b"\n",
        b"GET /  HTTP/1.1\r\n",
        b"GET / HTTP/2.0\r\n",
        b"GET metrics HTTP/1.1\r\n",
        b"get / HTTP/1.1\r\n",
        b"GET /a\rb HTTP/1.1\r\n",
        b"GET /\x00 HTTP/1.1\r\n",
    ],
)
def test_malformed_request_lines_are_400(line):
    with pytest.raises(BadRequest) as err:
        parse_request_line(line)
    assert err.value.status == 400


def test_request_line_and_connection_semantics():
    request = parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\n")
    assert (request.method, request.target, request.minor, request.close) == ("GET", "/metrics?x=1", 1, False)
    old = parse_request_line(b"HEAD / HTTP/1.0\r\n")
    assert old.close
    add_header(old, b"Connection: Keep-Alive\r\n")
    assert not old.close


@pytest.mark.parametrize(
    "line",
    [
        b"Accept: a\n",
        b"Accept: a\rX-Injected: yes\r\n",
        b"Accept : a\r\n",
        b" folded\r\n",
        b"Acc\x00ept: a\r\n",
        b"no colon\r\n",
        b"Accept: a\x01b\r\n",
    ],
)
def test_malformed_header_lines_are_400(line):
    request = parse_request_line(b"GET / HTTP/1.1\r\n")
    with pytest.raises(BadRequest) as err:
        add_header(request, line)
    assert err.value.status == 400


def test_headers_are_case_insensitive_trimmed_and_repeats_joined():
    request = parse_request_line(b"GET / HTTP/1.1\r\n")
    add_header(request, b"ACCEPT:  text/plain \r\n")
    add_header(request, b"accept: application/openmetrics-text\r\n")
    assert request.headers == {"accept": "text/plain, application/openmetrics-text"}


def test_repeated_body_framing_is_refused():
    request = parse_request_line(b"POST / HTTP/1.1\r\n")
    add_header(request, b"Content-Length: 3\r\n")
    with pytest.raises(BadRequest):
        add_header(request, b"Content-Length: 30\r\n")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 0), ("0", 0), ("37", 37), ("16384", 16384), ("16385", 413), ("-1", 400)]
)
def test_body_length_is_bounded(value, expected):
    request = parse_request_line(b"POST / HTTP/1.1\r\n")
    if value is not None:
        add_header(request, f"Content-Length: {value}\r\n".encode())
    if expected in (400, 413):
        with pytest.raises(BadRequest) as err:
            body_length(request)
        assert err.value.status == expected
    else:
        assert body_length(request) == expected


@pytest.mark.parametrize(("nofile", "cap"), [(64, 8), (256, 96), (1024, 384), (4096, 1024), (1 << 20, 1024)])
def test_connection_cap_leaves_descriptors_for_the_process(nofile, cap):
    assert max_connections_for(nofile) == cap
    assert max_connections_for(nofile) < nofile - 32


def _registry_and_ledger():
    ledger = Ledger()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "t")))
    ledger.publish(TickRecord({}, TickResult(tokens={("m", "input"): 1.0}, models=("m",)), unixtime=100.0, ready=True))
    return registry, ledger


def test_cache_holds_only_the_known_formats_whatever_the_accept_header():
    registry, ledger = _registry_and_ledger()
    cache = MetricsCache(registry, ledger, clock=lambda: 0.0)
    for i in range(3000):
        for kind in ("application/openmetrics-text", "text/plain"):
            _body, content_type, _ = cache.render(f"{kind}; version={i}.{i}.{i}", "gzip" if i % 2 else "")
            assert content_type in KNOWN_CONTENT_TYPES
    assert len(cache) <= len(FORMATS) * 2


def _routes(ledger, now, stale_after=None):
    cache = MetricsCache(CollectorRegistry(auto_describe=False), ledger)
    return Routes(cache, ledger, "http://v", "nvml", stale_after_seconds=stale_after, clock=lambda: now[0])


def test_readyz_turns_503_when_the_last_tick_is_stale():
    _, ledger = _registry_and_ledger()
    now = [105.0]
    routes = _routes(ledger, now, stale_after=30.0)
    assert routes.answer("/readyz", {})[0] == 200
    now[0] = 131.0
    status, _, body, _ = routes.answer("/readyz", {})
    assert status == 503 and b"31 s old" in body


def test_readyz_without_a_bound_ignores_the_clock():
    _, ledger = _registry_and_ledger()
    assert _routes(ledger, [1e12]).answer("/readyz", {})[0] == 200
    assert _routes(Ledger(), [0.0], stale_after=30.0).answer("/readyz", {})[0] == 503


@pytest.mark.parametrize(
    "line",
    [
        b"X: " + b" " * 16000 + b"\x01\r\n",
        b"X: " + b"a " * 8000 + b"\x01\r\n",
        b"X" * 16000 + b"\x01: a\r\n",
    ],
)
def test_a_hostile_header_line_is_refused_in_one_pass(line):
    # A backtracking pattern took minutes of the event loop on these; the parser is linear, so
    # this test ends at once (it would hang rather than fail, were that to come back).
    with pytest.raises(BadRequest):
        add_header(parse_request_line(b"GET / HTTP/1.1\r\n"), line)


def test_the_web_configs_headers_follow_the_servers_own():
    head = _response(401, "text/plain", b"x", False, False, headers=(("WWW-Authenticate", 'Basic realm="r"'),))
    lines = head.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 401 Unauthorized"
    assert lines[1:3] == [b"Content-Type: text/plain", b"Content-Length: 1"]
    assert lines[-1] == b'WWW-Authenticate: Basic realm="r"'
    assert _response(200, "text/plain", b"", False, False) == _response(
        200, "text/plain", b"", False, False, headers=()
    )


def test_a_paths_own_header_replaces_the_web_configs_of_the_same_name():
    from exporter.server import _merged

    configured = (("Content-Security-Policy", "default-src *"), ("Strict-Transport-Security", "max-age=1"))
    own = (("content-security-policy", "default-src 'none'"),)
    assert _merged(configured, own) == (("Strict-Transport-Security", "max-age=1"), *own)
    assert _merged(configured, ()) == configured


def test_tls_and_auth_trouble_is_counted():
    assert {"tls_errors", "unauthorized"} <= set(COUNTS)


class CountingRegistry(CollectorRegistry):
    """A registry that counts how often it is collected, i.e. how often a page is rendered."""

    def __init__(self):
        super().__init__(auto_describe=False)
        self.renders = 0

    def collect(self):
        self.renders += 1
        yield from super().collect()


def test_the_tick_renders_the_page_a_scraper_asked_for_so_the_next_scrape_finds_it_ready():
    ledger = Ledger()
    registry = CountingRegistry()
    registry.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "t")))
    cache = MetricsCache(registry, ledger, clock=lambda: 0.0)
    first, _, _ = cache.render("text/plain", "gzip")
    assert registry.renders == 1
    ledger.publish(TickRecord({}, TickResult(tokens={("m", "input"): 5.0}, models=("m",)), unixtime=1.0))
    cache.warm()  # the loop calls it right after publishing
    assert registry.renders == 2
    body, _, _ = cache.render("text/plain", "gzip")
    assert registry.renders == 2 and body != first  # the new view, rendered on the tick's thread
    cache.warm()  # nothing new: nothing rendered
    assert registry.renders == 2
