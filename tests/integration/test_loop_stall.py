"""The loop cannot stall: the real command (`python -m exporter run`, interval 1 s) against a vLLM
page trickled one byte every 0.5 s, each byte well within any per-read timeout. Every read ends
at the deadline and is counted as a timeout, the ticks keep their cadence, and SIGTERM stops the
process within the 5 s Kubernetes gives it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.exporter_process import total
from tests.e2e.vllm_server import HOST, free_port

pytestmark = pytest.mark.integration

PAGE = (Path(__file__).parents[1] / "fixtures" / "vllm-0.32-cpu-metrics.txt").read_bytes()
BYTE_EVERY = 0.5
INTERVAL = 1.0
DEADLINE = 0.8  # the default vllm_timeout at this interval: min(2 s, 0.8 x interval)
GRACE = 5.0  # Kubernetes' terminationGracePeriodSeconds here


class Trickler:
    """vLLM's page on 127.0.0.1, one byte every BYTE_EVERY seconds: of the body only, or of the
    whole response from its status line on (`head`)."""

    def __init__(self, head: bool = False) -> None:
        self.head = head
        self.requests = 0
        self._closing = threading.Event()
        trickler = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                trickler.requests += 1
                head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(PAGE)}\r\n\r\n".encode()
                if not trickler.head:
                    self.wfile.write(head)
                    head = b""
                with contextlib.suppress(OSError):  # the exporter hangs up at its deadline
                    for byte in (head + PAGE)[:200]:
                        if trickler._closing.wait(BYTE_EVERY):
                            return
                        self.wfile.write(bytes((byte,)))
                        self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._httpd.server_address[1]}"

    def __enter__(self) -> Trickler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class Exporter:
    """`python -m exporter run` in its own session on a free loopback port; stopped by its PID."""

    def __init__(self, workdir: Path, vllm_url: str, *args: str) -> None:
        self.port = free_port()
        self.log_path = workdir / "exporter.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "run",
                "--vllm-url",
                vllm_url,
                "--listen-address",
                f"{HOST}:{self.port}",
                "--energy-source",
                "phase-model",
                "--gpu-type",
                "H100",
                "--interval",
                str(INTERVAL),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.wait_until(lambda: self.get("/healthz").status_code == 200, 60, "the exporter to serve")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[tuple[str, tuple], float]:
        out = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"the exporter exited {self.proc.returncode}:\n{self.log()[-4000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if predicate():
                    return
            assert time.monotonic() < deadline, (
                f"timed out after {timeout:.0f} s waiting for {what}:\n{self.log()[-4000:]}"
            )
            time.sleep(0.1)

    def stop_by(self, sig: signal.Signals) -> tuple[int, float]:
        """Sends `sig`; the exit status and the seconds until the process was gone (or fails past GRACE)."""
        started = time.monotonic()
        os.kill(self.proc.pid, sig)
        try:
            status = self.proc.wait(GRACE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{sig.name} did not stop the exporter within {GRACE:.0f} s:\n{self.log()[-4000:]}")
        return status, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


def exporters(workdir: Path) -> Iterator:
    """Starts exporters for a test (`start(vllm_url, *args)`) and kills what is left of them after it."""
    started: list[Exporter] = []

    def start(vllm_url: str, *args: str) -> Exporter:
        started.append(Exporter(workdir, vllm_url, *args))
        return started[-1]

    yield start
    for exporter in started:
        exporter.kill()


@pytest.fixture
def exporter_factory(tmp_path) -> Iterator:
    yield from exporters(tmp_path)


@pytest.mark.parametrize("head", [False, True], ids=["body", "whole-response"])
def test_a_trickled_page_ends_at_the_deadline_every_tick_and_sigterm_still_stops(exporter_factory, head):
    with Trickler(head=head) as vllm:
        exporter = exporter_factory(vllm.url)

        def timeouts() -> float:
            return total(exporter.metrics(), "token_economy_source_errors_total", source="vllm", reason="timeout")

        exporter.wait_until(lambda: timeouts() >= 2, 20, "two timed-out reads")
        first, first_at = exporter.metrics(), time.monotonic()
        time.sleep(4.0)
        later, later_at = exporter.metrics(), time.monotonic()

        def gained(name: str, **labels: str) -> float:
            return total(later, name, **labels) - total(first, name, **labels)

        # A tick a second, each read cut at the deadline and counted as a timeout, none stalled.
        ticks = gained("token_economy_tick_duration_seconds_count")
        assert ticks >= (later_at - first_at) / INTERVAL - 1.5, exporter.log()[-3000:]
        assert gained("token_economy_source_errors_total", source="vllm", reason="timeout") >= ticks - 1
        reads = gained("token_economy_source_read_duration_seconds_count", source="vllm")
        read_seconds = gained("token_economy_source_read_duration_seconds_sum", source="vllm")
        assert reads >= 3 and read_seconds / reads <= DEADLINE + 0.2
        assert gained("token_economy_tick_duration_seconds_sum") / ticks <= INTERVAL + 0.2
        assert total(later, "token_economy_source_up", source="vllm") == 0
        assert abs(total(later, "token_economy_last_tick_timestamp_seconds") - time.time()) < 3 * INTERVAL
        assert exporter.get("/readyz").status_code == 503  # vLLM never answered a whole page
        assert vllm.requests >= 4  # each tick asked again: no read is left queued behind another

        status, seconds = exporter.stop_by(signal.SIGTERM)
    assert status == 0 and seconds < GRACE
    log = exporter.log()
    assert '"reason": "timeout"' in log and '"event": "stopped"' in log


def test_readyz_turns_503_when_the_last_tick_is_older_than_three_intervals():
    """A loop that stopped ticking (here: ticks stamped in the past) takes the pod out of the
    endpoints, through the wiring the command uses."""
    from exporter.app import build, stale_after_seconds
    from exporter.config import Settings
    from exporter.loop import CollectionLoop
    from tests.loop_rig import ScriptedEnergy, ScriptedVllm

    settings = Settings(
        listen_address=f"{HOST}:0", energy_source="phase-model", gpu_type="H100", interval=2.0, log_level="error"
    )
    app = build(settings)
    assert stale_after_seconds(2.0) == 6.0
    wall = [time.time()]
    vllm, energy = ScriptedVllm(), ScriptedEnergy()
    loop = CollectionLoop(vllm, energy, app.attributor, app.ledger, app.log, 2.0, wall_clock=lambda: wall[0])
    app.server.start()
    try:
        readyz = f"http://{HOST}:{app.server.port}/readyz"
        for t, age, expected in ((1.0, 0.0, 200), (2.0, 5.0, 200), (3.0, 7.0, 503), (4.0, 0.0, 200)):
            vllm.t = energy.t = t
            vllm.tokens = energy.joules = 100.0 * t
            wall[0] = time.time() - age
            loop.tick()
            assert httpx.get(readyz, timeout=5).status_code == expected, (t, age)
    finally:
        app.server.stop()
        for close in app.closers:
            close()
