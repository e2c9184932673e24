"""Time to trust: the cumulative split's errors against the oracle's, and from when on both stay
within ±10 %; and `simulate`'s live line of it, on a simulation without sockets."""

import math
import re

import pytest

from exporter.attribution.token_class import CACHED_INPUT, IDLE, INPUT, OUTPUT, TokenClass
from exporter.sim import CLASSES, LLAMA_3_8B, OracleTotals, Simulation, TrustClock, split_errors, well_mixed
from exporter.simulate import SplitCheck, TruthAtReads


def truth(input_j: float, output_j: float, idle_j: float = 0.0, time: float = 0.0) -> OracleTotals:
    energy = {INPUT: input_j, CACHED_INPUT: 0.0, OUTPUT: output_j, IDLE: idle_j}
    return OracleTotals(time, input_j + output_j + idle_j, energy, dict.fromkeys(CLASSES, 0.0), {}, 0)


def allocated(input_j: float, output_j: float, idle_j: float = 0.0) -> dict[TokenClass, float]:
    return {INPUT: input_j, CACHED_INPUT: 0.0, OUTPUT: output_j, IDLE: idle_j}


def test_the_errors_are_of_shares_so_a_gain_error_cancels():
    assert split_errors(allocated(30.0, 70.0), truth(25.0, 75.0)) == pytest.approx((0.2, 70 / 75 - 1))
    assert split_errors(allocated(33.0, 77.0), truth(30.0, 70.0)) == pytest.approx((0.0, 0.0))  # 10 % more of all
    # Idle counts in the whole: shares are of all the energy.
    assert split_errors(allocated(25.0, 25.0, 50.0), truth(25.0, 25.0, 50.0)) == pytest.approx((0.0, 0.0))


def test_an_error_is_unknown_until_both_sides_have_some_of_the_class():
    assert all(math.isnan(e) for e in split_errors(allocated(0.0, 0.0), truth(1.0, 1.0)))
    error_in, error_out = split_errors(allocated(1.0, 1.0), truth(0.0, 2.0))
    assert math.isnan(error_in) and error_out == pytest.approx(-0.5)


def test_trust_starts_after_the_last_tick_outside_the_band_and_an_unknown_error_is_outside():
    clock = TrustClock(start=10.0)
    steps = [
        (15.0, allocated(0.0, 0.0), None),  # nothing allocated yet: unknown
        (20.0, allocated(32.0, 68.0), 20.0),  # -8.6 % / +4.6 %: inside
        (25.0, allocated(40.0, 60.0), None),  # +14 %: outside again
        (30.0, allocated(36.0, 64.0), 30.0),
        (35.0, allocated(35.0, 65.0), 30.0),  # stays: since does not move
    ]
    for time, alloc, since in steps:
        clock.update(time, alloc, truth(35.0, 65.0, time=time))
        assert clock.since == since
    assert clock.seconds == pytest.approx(20.0)  # from the start at 10 s
    assert clock.errors == pytest.approx((0.0, 0.0))
    assert TrustClock().seconds is None


def test_simulates_line_compares_the_exporters_allocation_since_its_first_reading():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1)
    meter = TruthAtReads(sim)
    check = SplitCheck(meter)
    assert "waiting" in check.line(0, allocated(0.0, 0.0))
    sim.advance_to(3.0)
    meter.read()  # the exporter's first reading: its allocation starts here
    first = sim.oracle_totals()
    sim.advance_to(30.0)
    meter.read()
    window = sim.oracle_totals().minus(first)
    exact = {cls: window.energy[cls] for cls in CLASSES}
    line = check.line(2, exact)
    assert re.match(r"split error vs oracle since start: input  [+-]0\.0%  output  [+-]0\.0%", line), line
    assert line.endswith("trusted since t=30 s")
    assert meter.at_read(1).time == 3.0 and meter.at_read(3) is None
    # A tick later, the input share 20 % high: no longer trusted.
    sim.advance_to(35.0)
    meter.read()
    window = sim.oracle_totals().minus(first)
    off = {cls: window.energy[cls] * (1.2 if cls == INPUT else 1.0) for cls in CLASSES}
    assert check.line(3, off).endswith("not trusted yet (outside ±10%)")
