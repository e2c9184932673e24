"""SIGHUP re-reads the web config where there is one (exporter/cli.py's Signals), and is only
logged where there is none; a reload that raises never kills the thread that stops the process."""

from __future__ import annotations

import signal
import time

import structlog
from structlog.testing import capture_logs

from exporter.cli import IGNORED_SIGNALS, Signals


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_sighup_reloads_the_web_config_and_does_not_stop():
    calls = []
    signals = Signals()
    with capture_logs() as logs:
        stop = signals.serve(structlog.get_logger(), lambda: calls.append("reload"))
        signals.handle(signal.SIGHUP)
        signals.handle(signal.SIGHUP)
        wait_for(lambda: len(calls) == 2)
    assert not stop.is_set()
    assert [(e["event"], e["signal"]) for e in logs] == [("signal_reload", "SIGHUP")] * 2


def test_without_a_web_config_sighup_is_still_only_logged():
    signals = Signals()
    with capture_logs() as logs:
        signals.serve(structlog.get_logger())
        signals.handle(signal.SIGHUP)
        wait_for(lambda: logs)
    assert logs[0]["event"] == "signal_ignored" and logs[0]["reason"] == IGNORED_SIGNALS[signal.SIGHUP]
    assert "web-config-file" in logs[0]["reason"]


def test_a_reload_that_raises_leaves_the_stop_working():
    def broken() -> None:
        raise RuntimeError("surprise")

    signals = Signals()
    with capture_logs() as logs:
        stop = signals.serve(structlog.get_logger(), broken)
        signals.handle(signal.SIGHUP)
        signals.handle(signal.SIGTERM)
        wait_for(stop.is_set)
    assert [e["event"] for e in logs] == ["signal_reload", "reload_failed", "stopping"]
