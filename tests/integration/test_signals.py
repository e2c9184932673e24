"""Signals, sent to the real command as an orchestrator or an operator sends them: SIGTERM,
SIGINT and SIGQUIT stop it cleanly (exit status 0, "stopped" logged) within the 5 s Kubernetes
gives it, even while a vLLM read trickles; SIGHUP, SIGUSR1 and SIGUSR2 never kill it, each
ignored with one log line."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest

from tests.e2e.vllm_server import HOST, free_port
from tests.integration.test_loop_stall import GRACE, Trickler, exporters

pytestmark = pytest.mark.integration


@pytest.fixture
def exporter_factory(tmp_path) -> Iterator:
    yield from exporters(tmp_path)


def events(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name)
def test_a_stop_signal_stops_cleanly_within_the_grace_even_while_a_read_trickles(exporter_factory, sig):
    with Trickler() as vllm:
        exporter = exporter_factory(vllm.url)
        exporter.wait_until(lambda: vllm.requests >= 2, 20, "a read under way")
        time.sleep(0.3)  # mid-read: the trickle has begun, the deadline is not reached
        status, seconds = exporter.stop_by(sig)
    assert status == 0 and seconds < GRACE
    logged = [(e["event"], e.get("signal")) for e in events(exporter.log())]
    assert ("stopping", sig.name) in logged and logged[-1] == ("stopped", None)


def test_sighup_sigusr1_and_sigusr2_are_logged_and_never_kill(exporter_factory):
    nothing = f"http://{HOST}:{free_port()}"  # vLLM down: the exporter runs and counts it
    exporter = exporter_factory(nothing)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        exporter.proc.send_signal(sig)
        time.sleep(0.2)
    time.sleep(1.0)
    assert exporter.proc.poll() is None and exporter.get("/healthz").status_code == 200
    ignored = [e["signal"] for e in events(exporter.log()) if e["event"] == "signal_ignored"]
    assert ignored == ["SIGHUP", "SIGUSR1", "SIGUSR2", "SIGHUP"]
    status, seconds = exporter.stop_by(signal.SIGTERM)
    assert status == 0 and seconds < GRACE


def test_sigterm_leaves_behind_a_read_that_outlasts_the_stop_time(exporter_factory):
    """A read allowed 20 s (interval 30 s) is mid-trickle when SIGTERM comes: the process does not
    wait for it, it closes what it can and exits within the grace, saying what it left behind."""
    with Trickler() as vllm:
        exporter = exporter_factory(vllm.url, "--interval", "30", "--vllm-timeout", "20")
        exporter.wait_until(lambda: vllm.requests >= 1, 20, "a read under way")
        time.sleep(0.5)
        status, seconds = exporter.stop_by(signal.SIGTERM)
    assert status == 0 and seconds < GRACE
    logged = events(exporter.log())
    assert "stop_abandons_tick" in [e["event"] for e in logged]
    assert logged[-1]["event"] == "stopped" and logged[-1]["clean"] is False
