"""The landing page `/` in a real headless Chromium (Debian's `chromium`), served by the real
exporter process (`python -m exporter run`) reading the simulator's vLLM-like page, behind a web
config's basic auth:

- it renders: the DOM Chromium built holds every figure, the layout gives the chart and the
  tables their size, and a screenshot is drawn;
- its figures are the ratios of the /metrics counters of the same tick (the tick timestamp the
  page shows equals `token_economy_last_tick_timestamp_seconds`), to the last bit;
- it loads nothing from outside: Chromium, driven over the DevTools protocol, reports every
  request the page made (the document alone), and every request it sends at all goes through a
  recording proxy, loopback included, where the exporter is asked for the page alone; the
  page's content policy would refuse anything else;
- `/` without the password answers 401, and with it the page.

The proxy adds the basic auth to what it forwards to the exporter and refuses everything else
(the browser's own background calls, an update check or an account probe, are not the page's).
Chromium runs as root in CI, so without its sandbox, with a profile of the test's own."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.landing import HEADERS
from exporter.sim import LLAMA_3_8B, RealTimeDriver, Simulation, serve_metrics, well_mixed
from tests.e2e.vllm_server import HOST, free_port
from tests.integration.servers import stop_process, wait_until

pytestmark = pytest.mark.integration

USER, PASSWORD = "viewer", "port-forwarded but not public"
AUTHORIZATION = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
HOSTILE_MODEL = '<b>"llama" & </b><script>alert(1)</script>'  # vLLM's label, shown as text
CLASSES = ("input", "cached_input", "output")
INTERVAL = 2.0  # seconds between ticks: long beside a page load, so one read of each sees one tick
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1024,1400",
)


# ---- the exporter, on the simulator's page, with basic auth


@dataclass
class Exporter:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, *, auth: bool = True) -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(self.url + path, headers={"Authorization": AUTHORIZATION} if auth else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers.items()), answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers.items()), err.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, text = self.get("/metrics")
        assert status == 200, text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def exporter(tmp_path_factory) -> Iterator[Exporter]:
    workdir = tmp_path_factory.mktemp("landing")
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=3, model_name=HOSTILE_MODEL)
    web = workdir / "web.yml"
    web.write_text(f"basic_auth_users:\n  {USER}: '{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()}'\n")
    port = free_port()
    with (
        serve_metrics(sim, driver=RealTimeDriver(sim, speed=10.0)) as page,
        (workdir / "exporter.log").open("wb") as log,
    ):
        command = [
            sys.executable, "-m", "exporter", "run", "--vllm-url", page.url, "--energy-source", "phase-model",
            "--gpu-type", "H100", "--interval", str(INTERVAL), "--listen-address", f"{HOST}:{port}",
            "--gpu-hourly-price", "2.5", "--electricity-price-per-kwh", "0.3", "--electricity-with-rental", "true",
            "--currency", "EUR", "--web-config-file", str(web),
        ]  # fmt: skip
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        running = Exporter(f"http://{HOST}:{port}", port, proc, workdir / "exporter.log")
        try:
            wait_until(lambda: _ready(running), 60, interval=0.2, what="the exporter's /readyz with the password")
            yield running
        finally:
            assert stop_process(proc) == 0, running.log()


def _ready(exporter: Exporter) -> bool:
    assert exporter.proc.poll() is None, exporter.log()
    try:
        return exporter.get("/readyz")[0] == 200
    except OSError:
        return False


# ---- a proxy that records every request Chromium makes and forwards only the exporter's


@dataclass
class Proxy:
    exporter_port: int
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, target) as Chromium asked
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self) -> ThreadingHTTPServer:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.forward(self)

            do_HEAD = do_POST = do_GET

            def do_CONNECT(self) -> None:  # a tunnel to anywhere: recorded and refused
                proxy.record(self)
                self.send_error(403)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer((HOST, 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="recording-proxy", daemon=True).start()
        return server

    def record(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append((handler.command, handler.path))

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        self.record(handler)
        target = urlsplit(handler.path)
        if (target.hostname, target.port) != (HOST, self.exporter_port):
            handler.send_error(403)
            return
        upstream = http.client.HTTPConnection(HOST, self.exporter_port, timeout=10)
        path = target.path + (f"?{target.query}" if target.query else "")
        upstream.request(handler.command, path, headers={"Authorization": AUTHORIZATION})
        answer = upstream.getresponse()
        body = answer.read()
        handler.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        upstream.close()


@pytest.fixture(scope="module")
def proxy(exporter) -> Iterator[tuple[Proxy, int]]:
    recorder = Proxy(exporter.port)
    server = recorder.serve()
    yield recorder, int(server.server_address[1])
    server.shutdown()
    server.server_close()


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: it
    reads NUL-terminated JSON on fd 3 and writes on fd 4), so the test knows every request the
    page itself made, apart from the browser's own background calls that the proxy sees too."""

    def __init__(self, binary: str, profile: Path, proxy_port: int) -> None:
        to_chromium, self._out = os.pipe()
        self._in, from_chromium = os.pipe()

        def on_fds_3_and_4() -> None:  # by way of high numbers, as either pipe end may be 3 or 4 already
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chromium, from_chromium)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        command = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--proxy-server=http://{HOST}:{proxy_port}",
            "--proxy-bypass-list=<-loopback>",  # loopback through the proxy too: nothing escapes its record
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            command,
            pass_fds=(3, 4),  # kept open in the child: its fds 3 and 4 are set before the others close
            preexec_fn=on_fds_3_and_4,  # noqa: PLW1509 - the child is not threaded before exec
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Network", "Page", "Log"):
            self.call(f"{domain}.enable", session=self.session)

    def call(self, method: str, session: str | None = None, **params: object) -> dict:
        self._next_id += 1
        message: dict[str, object] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._next_id:
                assert "error" not in answer, (method, answer)
                return answer["result"]
            self.events.append(answer)

    def _receive(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "chromium did not answer in time"
            chunk = os.read(self._in, 1 << 16)
            assert chunk, "chromium closed its pipe"
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def load(self, url: str) -> str:
        """The DOM Chromium built from `url`, once its load event fired."""
        self.events.clear()
        self.call("Page.navigate", session=self.session, url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._receive())
        root = self.call("DOM.getDocument", session=self.session)["root"]["nodeId"]
        return self.call("DOM.getOuterHTML", session=self.session, nodeId=root)["outerHTML"]

    def requested(self) -> list[str]:
        """Every URL the page asked for since the last load (the document, its subresources)."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def logged(self) -> list[dict]:
        return [e["params"]["entry"] for e in self.events if e.get("method") == "Log.entryAdded"]

    def box(self, selector: str) -> tuple[float, float]:
        """Width and height the layout gave the first element matching `selector`."""
        root = self.call("DOM.getDocument", session=self.session)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session=self.session, nodeId=root, selector=selector)["nodeId"]
        model = self.call("DOM.getBoxModel", session=self.session, nodeId=node)["model"]
        return model["width"], model["height"]

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=self.session, format="png")["data"])

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        stop_process(self.proc)
        os.close(self._out)
        os.close(self._in)


@pytest.fixture(scope="module")
def browser(proxy, tmp_path_factory) -> Iterator[Browser]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not on PATH (scripts/test.sh installs Debian's chromium package)")
    _recorder, proxy_port = proxy
    running = Browser(binary, tmp_path_factory.mktemp("chromium-profile"), proxy_port)
    yield running
    running.close()


# ---- what the page shows, read from the DOM Chromium built


@dataclass
class Shown:
    tick: str | None = None
    figures: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (model, class, figure) -> data-value
    headings: list[str] = field(default_factory=list)  # the models' headings, as text
    elements: list[str] = field(default_factory=list)  # every element's tag
    urls: list[str] = field(default_factory=list)  # every src and href
    intervals: int = -1  # the chart's


class PageReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.shown = Shown()
        self._model: str | None = None
        self._class: str | None = None
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        self.shown.elements.append(tag)
        self.shown.urls += [found[name] for name in ("src", "href") if name in found]
        if tag == "section" and "data-model" in found:
            self._model = found["data-model"]
        if tag == "p" and found.get("id") == "tick":
            self.shown.tick = found["data-unixtime"]
        if tag == "svg" and found.get("id") == "chart":
            self.shown.intervals = int(found["data-intervals"])
        if tag == "tr" and "data-class" in found:
            self._class = found["data-class"]
        if tag == "td" and "data-figure" in found and self._model is not None and self._class is not None:
            self.shown.figures[(self._model, self._class, found["data-figure"])] = found["data-value"]
        self._in_heading = tag == "h3" and self._model is not None

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._model = None
        if tag == "table":
            self._class = None

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.shown.headings.append(data)
            self._in_heading = False


def read_page(html: str) -> Shown:
    reader = PageReader()
    reader.feed(html)
    return reader.shown


# ---- the figures as a reader of /metrics computes them


def expected(metrics: dict, model: str) -> dict[tuple[str, str, str], float | None]:
    def value(name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, series), v in metrics.items() if n == name and wanted <= set(series))

    def energy(cls: str) -> float:
        return value("token_economy_energy_joules_total", model_name=model, token_class=cls)

    def cost(cls: str) -> float:  # rental + electricity
        return value("token_economy_cost_total", model_name=model, token_class=cls)

    def ratio(amount: float, whole: float, scale: float) -> float | None:
        return amount / whole * scale if whole > 0 else None

    out: dict[tuple[str, str, str], float | None] = {}
    for cls in CLASSES:
        tokens = value("token_economy_tokens_total", model_name=model, token_class=cls)
        out[(model, cls, "tokens")] = tokens
        out[(model, cls, "joules_per_million_tokens")] = ratio(energy(cls), tokens, 1e6)
        out[(model, cls, "cost_per_million_tokens")] = ratio(cost(cls), tokens, 1e6)
    every = ("idle", *CLASSES)  # the order the page sums them in: a float sum is exact only in one order
    out[(model, "idle", "idle_energy_share")] = ratio(energy("idle"), sum(energy(c) for c in every), 1.0)
    out[(model, "idle", "idle_cost_share")] = ratio(cost("idle"), sum(cost(c) for c in every), 1.0)
    return out


def last_tick(metrics: dict) -> float:
    return metrics[("token_economy_last_tick_timestamp_seconds", ())]


def page_and_its_tick(exporter: Exporter, browser: Browser) -> tuple[Shown, dict, str]:
    """The page as Chromium rendered it and the /metrics of the same tick: /metrics is read just
    before and just after the page; one of them is the page's tick unless a tick fell between
    both reads and the page's (then again; with 2 s between ticks, rarely)."""
    for _ in range(10):
        before = exporter.metrics()
        dom = browser.load(exporter.url + "/")
        after = exporter.metrics()
        shown = read_page(dom)
        assert shown.tick, dom[:3000]
        for metrics in (before, after):
            if float(shown.tick) == last_tick(metrics):
                return shown, metrics, dom
    raise AssertionError("no /metrics read saw the page's tick in ten tries")


def _complete(page: str) -> bool:
    shown = read_page(page)
    return shown.intervals > 0 and bool(shown.figures) and all(shown.figures.values())


def test_the_page_renders_in_chromium_with_the_figures_of_the_same_ticks_metrics(exporter, browser):
    # Until the chart has an interval to draw (samples are kept every 5 s) and every class has tokens.
    wait_until(lambda: _complete(exporter.get("/")[2]), 60, what="a chart with data and every figure defined")
    shown, metrics, dom = page_and_its_tick(exporter, browser)

    assert shown.headings == [HOSTILE_MODEL]  # the label is text: no <b> or <script> came of it
    assert "script" not in shown.elements and "b" not in shown.elements[shown.elements.index("section") :]
    wanted = expected(metrics, HOSTILE_MODEL)
    assert set(shown.figures) == set(wanted)
    for key, value in wanted.items():
        assert value is not None, key
        assert float(shown.figures[key]) == value, (key, shown.figures[key], value)
    assert wanted[(HOSTILE_MODEL, "output", "joules_per_million_tokens")] > 0  # the counters were not all zero
    assert not re.search(r"\b(nan|inf|infinity)\b", dom, re.IGNORECASE)

    # Drawn: the chart has its layers and the layout its size; the screenshot is a page, not a blank.
    assert shown.intervals >= 1 and dom.count("<polygon") >= 1
    assert browser.box("#chart")[0] > 300 and browser.box("table")[1] > 50
    shot = browser.screenshot()
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000


def test_the_page_loads_nothing_from_outside(exporter, browser, proxy):
    recorder, _port = proxy
    with recorder.lock:
        recorder.requests.clear()
    page = exporter.url + "/"
    dom = browser.load(page)
    assert "data-figure" in dom
    # What the page asked for, as the browser saw it: the document alone (the icon is a data: URL).
    assert browser.requested() == [page]
    assert not [entry for entry in browser.logged() if entry["level"] == "error"]  # no refused load either
    # What reached the network, through the proxy that sees every request, loopback included: of the
    # exporter, the page alone. The browser's own background calls (an update check, an account
    # probe) are refused there; none of them is the page's, as the list above shows.
    with recorder.lock:
        to_exporter = [target for _method, target in recorder.requests if target.startswith(exporter.url)]
    assert to_exporter and set(to_exporter) <= {page, exporter.url + "/favicon.ico"}
    assert all(url.startswith(("data:", "metrics", "healthz", "readyz")) for url in read_page(dom).urls)


def test_the_content_policy_lets_the_page_load_nothing_else(exporter):
    status, headers, body = exporter.get("/")
    assert status == 200 and "data-figure" in body
    policy = headers["Content-Security-Policy"]
    assert policy == dict(HEADERS)["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["img-src"] == "data:"
    assert "script-src" not in directives and "connect-src" not in directives  # both fall back to 'none'


def test_without_the_password_the_page_answers_401(exporter):
    status, headers, body = exporter.get("/", auth=False)
    assert status == 401 and "data-figure" not in body and "llama" not in body
    assert headers["WWW-Authenticate"].startswith("Basic ")
    status, headers, body = exporter.get("/")
    assert status == 200 and "data-figure" in body and "Content-Security-Policy" in headers
