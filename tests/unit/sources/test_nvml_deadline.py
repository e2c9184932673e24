"""A hung NVML call cannot freeze the tick: the read waits at most its deadline, later reads are
refused at once while the call is stuck, and the source recovers when the call returns. The
hang is a fake NVML function blocking on an Event (real time, short deadlines)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from exporter.sources.errors import SourceError
from exporter.sources.nvml import AbandonableCalls, NvmlEnergySource
from tests.fakes.pynvml_fake import FakeGpu, FakeNvml

UUID0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
UUID1 = "GPU-bbbbbbbb-1111-1111-1111-111111111111"
DEADLINE = 0.2


class Hang:
    """While `on`, the wrapped NVML function blocks until `release` (as a driver in recovery would)."""

    def __init__(self) -> None:
        self.on = False
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, value: float) -> float:
        if self.on:
            self.entered.set()
            self.release.wait(10)
        return value

    def end(self) -> None:
        self.on = False
        self.release.set()


@pytest.fixture
def hang() -> Iterator[Hang]:
    hang = Hang()
    yield hang
    hang.end()  # never leave a thread blocked behind a test


def counter_gpus(hang: Hang) -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(uuid=UUID0, energy_mj=lambda t: hang(5_000_000 + 1000 * t), power_mw=300_000),
            FakeGpu(uuid=UUID1, energy_mj=lambda t: 9_000_000 + 1000 * t, power_mw=100_000),
        ],
        clock=time.monotonic,
    )


def timed(fn):
    started = time.monotonic()
    try:
        fn()
    except SourceError as err:
        return err.reason, time.monotonic() - started
    return None, time.monotonic() - started


def test_a_hung_call_fails_the_read_at_its_deadline_then_reads_are_refused_at_once(hang):
    source = NvmlEnergySource(counter_gpus(hang), None, 20.0, time.monotonic, read_timeout=DEADLINE)
    assert source.read().gpus[0].energy_joules is not None
    hang.on = True
    reason, seconds = timed(source.read)
    assert reason == "timeout" and DEADLINE <= seconds < DEADLINE + 0.5
    assert hang.entered.is_set()
    for _ in range(3):  # the tick goes on: each later read is refused without waiting
        reason, seconds = timed(source.read)
        assert reason == "nvml_hung" and seconds < 0.05
    hang.end()
    deadline = time.monotonic() + 2
    while True:  # the stuck call returns; the next read goes through again
        try:
            snapshot = source.read()
            break
        except SourceError as err:
            assert err.reason == "nvml_hung" and time.monotonic() < deadline
            time.sleep(0.01)
    assert [g.error for g in snapshot.gpus] == [None, None] and snapshot.gpus[0].energy_joules > 5000
    source.close()


def test_reads_run_on_one_long_lived_thread():
    threads = []

    def energy(t: float) -> float:
        threads.append(threading.current_thread())
        return 5_000_000 + 1000 * t

    nvml = FakeNvml([FakeGpu(uuid=UUID0, energy_mj=energy)], clock=time.monotonic)
    source = NvmlEnergySource(nvml, None, 20.0, time.monotonic, read_timeout=DEADLINE)
    threads.clear()  # the probe at start-up ran on the caller's
    for _ in range(20):
        source.read()
    assert len(threads) == 20 and len(set(threads)) == 1
    assert source.read_cpu_seconds > 0  # what the reads cost on the worker, for the plugin's own CPU count
    assert threads[0] is not threading.current_thread() and threads[0].daemon and threads[0].name == "nvml-reads"
    source.close()


def test_close_while_a_call_hangs_is_bounded_and_leaves_nvml_alone(hang):
    nvml = counter_gpus(hang)
    source = NvmlEnergySource(nvml, None, 20.0, time.monotonic, read_timeout=DEADLINE)
    hang.on = True
    assert timed(source.read)[0] == "timeout"
    _, seconds = timed(source.close)
    assert seconds < 0.1 and nvml.shutdown_calls == 0  # nvmlShutdown would wait behind the stuck call
    assert timed(source.read)[0] == "closed"


def test_close_of_a_healthy_source_still_shuts_nvml_down(hang):
    nvml = counter_gpus(hang)
    source = NvmlEnergySource(nvml, None, 20.0, time.monotonic, read_timeout=DEADLINE)
    source.read()
    source.close()
    assert (nvml.shutdown_calls, nvml.initialised) == (1, 0)


def test_a_hung_power_sampler_marks_its_gpu_failed_not_idle(hang):
    nvml = FakeNvml(
        [
            FakeGpu(uuid=UUID0, energy_counter=False, power_mw=lambda t: hang(300_000)),
            FakeGpu(uuid=UUID1, energy_mj=lambda t: 9_000_000 + 1000 * t, power_mw=100_000),
        ],
        clock=time.monotonic,
    )
    source = NvmlEnergySource(nvml, None, 50.0, time.monotonic, read_timeout=DEADLINE)
    time.sleep(0.1)
    assert source.read().gpus[0].error is None
    hang.on = True
    assert hang.entered.wait(2)
    time.sleep(DEADLINE + 0.1)  # past the deadline plus two sampling periods
    reason, seconds = timed(source.read)
    assert reason is None and seconds < 0.05  # the tick's read is not held by the sampler
    stuck = source.read()
    assert [g.error for g in stuck.gpus] == ["timeout", None] and stuck.gpus[1].energy_joules is not None
    before = stuck.gpus[1].energy_joules
    hang.end()
    time.sleep(0.1)
    recovered = source.read()
    assert [g.error for g in recovered.gpus] == [None, None] and recovered.gpus[1].energy_joules >= before
    source.close()


def test_a_calls_exception_reaches_the_caller_and_the_thread_serves_on():
    calls = AbandonableCalls("test-calls")

    def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        calls.call(fails, 1.0)
    assert calls.call(lambda: 42, 1.0) == 42
    assert calls.stuck_seconds is None
    calls.close()


def test_the_deadline_must_be_positive(hang):
    with pytest.raises(ValueError, match="read_timeout"):
        NvmlEnergySource(counter_gpus(hang), None, 20.0, time.monotonic, read_timeout=0)
