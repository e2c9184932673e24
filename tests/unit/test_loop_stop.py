"""Stopping is bounded and signals are sorted: App.run gives the tick and the closing each a
bounded time and reports what it had to leave behind; the CLI's signal handler stops on
SIGTERM, SIGINT and SIGQUIT and only logs SIGHUP, SIGUSR1 and SIGUSR2; the loop logs a late
tick once per episode. (The same with a real process and real signals:
tests/integration/test_signals.py and test_loop_stall.py.)"""

from __future__ import annotations

import signal
import sys
import threading
import time

import pytest
import structlog
from structlog.testing import capture_logs

from exporter.app import App
from exporter.cli import IGNORED_SIGNALS, STOP_SIGNALS, Signals
from exporter.ledger import Ledger
from exporter.loop import CollectionLoop
from tests.loop_rig import ScriptedEnergy, ScriptedVllm, rig_attributor


class FakeServer:
    port = 1234

    def __init__(self) -> None:
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


class FakeLoop:
    """Ticks until stopped, or (hang) ignores the stop until released, as a read stuck in a driver."""

    def __init__(self, hang: bool = False, error: Exception | None = None) -> None:
        self.hang, self.error = hang, error
        self.release = threading.Event()

    def run(self, stop: threading.Event) -> None:
        if self.error is not None:
            raise self.error
        stop.wait()
        if self.hang:
            self.release.wait(10)


@pytest.fixture(autouse=True)
def keep_the_switch_interval(monkeypatch):
    """App.run tunes the interpreter for the exporter's process; not for the test runner's."""
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: None)


def app(loop: FakeLoop, closers=(), stop_seconds: float = 0.6, close_seconds: float = 0.3) -> App:
    return App(
        loop,  # type: ignore[arg-type]
        FakeServer(),  # type: ignore[arg-type]
        list(closers),
        structlog.get_logger(),
        Ledger(),
        None,  # type: ignore[arg-type]
        stop_seconds=stop_seconds,
        close_seconds=close_seconds,
    )


def run_until_stopped(target: App, after: float = 0.05) -> tuple[bool, float]:
    """Sets the stop `after` seconds from another thread; what run returned and how long the stop took."""
    stop = threading.Event()
    stopped_at = []

    def stop_now() -> None:
        stopped_at.append(time.monotonic())
        stop.set()

    threading.Timer(after, stop_now).start()
    clean = target.run(stop)
    return clean, time.monotonic() - stopped_at[0]


def test_a_loop_that_stops_when_told_stops_cleanly_and_everything_is_closed():
    closed = []
    target = app(FakeLoop(), closers=[lambda: closed.append("work"), lambda: closed.append("energy")])
    with capture_logs() as logs:
        clean, seconds = run_until_stopped(target)
    assert clean and seconds < 0.2
    assert target.server.started and target.server.stopped and closed == ["work", "energy"]  # type: ignore[attr-defined]
    assert [e["event"] for e in logs] == ["started", "stopped"] and logs[-1]["clean"] is True


def test_a_tick_stuck_in_a_read_is_left_behind_within_the_stop_time():
    loop = FakeLoop(hang=True)
    closed = []
    target = app(loop, closers=[lambda: closed.append("energy")], stop_seconds=0.6, close_seconds=0.3)
    with capture_logs() as logs:
        clean, seconds = run_until_stopped(target)
    loop.release.set()
    assert not clean and 0.25 <= seconds < 0.6 + 0.2
    assert closed == ["energy"] and target.server.stopped  # type: ignore[attr-defined]
    assert "stop_abandons_tick" in [e["event"] for e in logs] and logs[-1]["clean"] is False


def test_a_close_that_hangs_is_left_behind_within_the_stop_time_and_one_that_fails_does_not_stop_the_rest():
    release = threading.Event()
    closed = []

    def fails() -> None:
        raise OSError("already closed")

    target = app(FakeLoop(), closers=[fails, lambda: closed.append("work"), lambda: release.wait(10)])
    with capture_logs() as logs:
        clean, seconds = run_until_stopped(target)
    release.set()
    assert not clean and seconds < 0.6 + 0.2 and closed == ["work"]
    events = [e["event"] for e in logs]
    assert "close_failed" in events and "stop_abandons_close" in events


def test_an_error_that_ends_the_loop_stops_the_app_and_is_raised():
    target = app(FakeLoop(error=RuntimeError("ledger bug")))
    stop = threading.Event()
    with pytest.raises(RuntimeError, match="ledger bug"):
        target.run(stop)
    assert stop.is_set() and target.server.stopped  # type: ignore[attr-defined]


# -- signals --------------------------------------------------------------------------------


def test_the_signals_are_sorted_into_stop_and_ignore():
    assert set(STOP_SIGNALS) == {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
    assert set(IGNORED_SIGNALS) == {signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}


def test_install_handles_every_one_of_them_and_restore_puts_back_what_was_there(monkeypatch):
    before = {sig: f"handler of {sig.name}" for sig in (*STOP_SIGNALS, *IGNORED_SIGNALS)}
    before[signal.SIGUSR2] = None  # a handler set outside Python
    installed = dict(before)

    def swap(sig, handler):
        previous, installed[sig] = installed[sig], handler
        return previous

    monkeypatch.setattr(signal, "signal", swap)
    signals = Signals()
    signals.install()
    assert set(installed) == {*STOP_SIGNALS, *IGNORED_SIGNALS}
    assert all(handler == signals.handle for handler in installed.values())
    signals.restore()
    assert installed == {**before, signal.SIGUSR2: signal.SIG_DFL}


def wait_for(predicate, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
def test_an_ignored_signal_is_logged_once_and_never_stops(sig):
    signals = Signals()
    with capture_logs() as logs:
        stop = signals.serve(structlog.get_logger())
        signals.handle(sig)
        wait_for(lambda: logs)
    assert not stop.is_set()
    assert logs == [
        {"event": "signal_ignored", "signal": sig.name, "reason": IGNORED_SIGNALS[sig], "log_level": "warning"}
    ]


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_a_stop_signal_sets_the_stop_and_a_second_one_is_only_logged(sig):
    signals = Signals()
    with capture_logs() as logs:
        stop = signals.serve(structlog.get_logger())
        signals.handle(signal.SIGHUP)
        signals.handle(sig)
        wait_for(stop.is_set)
        signals.handle(signal.SIGTERM)
        wait_for(lambda: len(logs) == 3)
    assert [(e["event"], e["signal"]) for e in logs] == [
        ("signal_ignored", "SIGHUP"),
        ("stopping", sig.name),
        ("signal_while_stopping", "SIGTERM"),
    ]


def test_before_the_exporter_runs_a_stop_signal_ends_start_up_and_sighup_still_does_not():
    signals = Signals()
    signals.handle(signal.SIGHUP)  # queued, logged once the exporter runs
    with pytest.raises(SystemExit) as ended:
        signals.handle(signal.SIGTERM)
    assert ended.value.code == 0
    with capture_logs() as logs:
        signals.serve(structlog.get_logger())
        wait_for(lambda: logs)
    assert logs[0]["event"] == "signal_ignored" and not signals.stop.is_set()


# -- a late tick ----------------------------------------------------------------------------


class SlowVllm(ScriptedVllm):
    """Reads that take `delays[i]` seconds of a fake clock; sets the stop after the last."""

    def __init__(self, clock: list[float], delays: list[float], stop: threading.Event) -> None:
        super().__init__()
        self.clock, self.delays, self.stop = clock, list(delays), stop

    def read(self):
        self.clock[0] += self.delays.pop(0)
        if not self.delays:
            self.stop.set()
        return super().read()


def test_a_late_tick_is_logged_once_per_episode():
    now = [0.0]
    stop = threading.Event()
    interval = 0.001  # real waits stay short; the fake clock says how long each read took
    with capture_logs() as logs:
        loop = CollectionLoop(
            SlowVllm(now, [0.005, 0.005, 0.0, 0.0, 0.005], stop),
            ScriptedEnergy(),
            rig_attributor(),
            Ledger(),
            structlog.get_logger(),
            interval,
            clock=lambda: now[0],
        )
        loop.run(stop)
    lateness = [(e["event"], e.get("late_ticks")) for e in logs if e["event"].startswith("tick_")]
    assert lateness == [("tick_late", None), ("tick_on_time", 2), ("tick_late", None)]
    assert next(e for e in logs if e["event"] == "tick_late")["seconds"] == pytest.approx(0.005)
