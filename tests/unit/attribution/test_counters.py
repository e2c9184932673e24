from exporter.attribution.counters import CounterTracker


def test_first_sight_is_a_baseline_then_increases():
    t = CounterTracker()
    assert t.increase("a", 100.0) is None
    inc = t.increase("a", 130.0)
    assert (inc.value, inc.reset) == (30.0, False)


def test_a_counter_that_goes_down_restarted_and_its_new_value_is_the_increase():
    t = CounterTracker()
    t.increase("a", 500.0)
    inc = t.increase("a", 20.0)
    assert (inc.value, inc.reset) == (20.0, True)
    assert t.increase("a", 25.0).value == 5.0


def test_a_new_created_time_is_a_restart_even_when_the_value_grew():
    t = CounterTracker()
    t.increase("a", 10.0, created=1000.0)
    inc = t.increase("a", 50.0, created=2000.0)
    assert (inc.value, inc.reset) == (50.0, True)


def test_absent_or_nan_is_unknown_and_keeps_the_baseline():
    t = CounterTracker()
    t.increase("a", 10.0)
    assert t.increase("a", None) is None
    assert t.increase("a", float("nan")) is None
    assert t.increase("a", 15.0).value == 5.0


def test_series_are_independent():
    t = CounterTracker()
    t.increase(("m", "0"), 10.0)
    t.increase(("m", "1"), 100.0)
    assert t.increase(("m", "0"), 11.0).value == 1.0
    assert t.increase(("m", "1"), 5.0).reset


# -- EngineCounters: one engine's counters read together ----------------------------------------

import math  # noqa: E402

import pytest  # noqa: E402

from exporter.attribution.counters import GLITCH_LIMIT, HOLD_LIMIT, EngineCounters  # noqa: E402

RATES = {"a": 1000.0, "b": 1000.0}


def test_values_no_counter_can_hold_are_unknown_in_the_plain_tracker():
    t = CounterTracker()
    t.increase("a", 10.0)
    for bad in (math.inf, -math.inf, -1.0, 1e308):
        assert t.increase("a", bad) is None
    assert t.increase("a", 12.0).value == 2.0


def test_a_decrease_of_one_counter_is_a_glitch_that_counts_nothing_and_keeps_the_baseline():
    e = EngineCounters(RATES)
    e.update("s", {"a": 100.0, "b": 50.0}, 1.0, 0.0)
    glitch = e.update("s", {"a": 40.0, "b": 60.0}, 1.0, 1.0)  # "a" went down, "b" on
    assert not glitch.restart and glitch.decreases == 1
    assert glitch.increases == {"b": 10.0}
    back = e.update("s", {"a": 110.0, "b": 70.0}, 1.0, 2.0)
    assert back.increases == {"a": 10.0, "b": 10.0}  # the lifetime total is not counted again


def test_a_restart_needs_evidence_created_changed_or_every_counter_went_down():
    e = EngineCounters(RATES)
    e.update("s", {"a": 100.0, "b": 50.0}, None, 0.0)
    step = e.update("s", {"a": 3.0, "b": 2.0}, None, 1.0)
    assert step.restart and step.increases == {"a": 3.0, "b": 2.0}
    step = e.update("s", {"a": 5.0, "b": 4.0}, 7.0, 2.0)  # created now known: not a change
    assert not step.restart and step.increases == {"a": 2.0, "b": 2.0}
    step = e.update("s", {"a": 9.0, "b": 9.0}, 8.0, 3.0)  # a new process that already counted more
    assert step.restart and step.increases == {"a": 9.0, "b": 9.0}


def test_a_rise_faster_than_any_engine_counts_is_a_leap_that_adds_nothing():
    e = EngineCounters(RATES)
    e.update("s", {"a": 100.0}, 1.0, 0.0)
    step = e.update("s", {"a": 1e15}, 1.0, 1.0)
    assert step.leaps == 1 and step.increases == {}
    assert e.update("s", {"a": 150.0}, 1.0, 2.0).increases == {"a": 50.0}


def test_a_counter_that_keeps_disagreeing_is_followed_again_from_its_new_level():
    e = EngineCounters(RATES)
    e.update("s", {"a": 100.0, "b": 1.0}, 1.0, 0.0)
    for t in range(1, GLITCH_LIMIT):
        assert e.update("s", {"a": 10.0 + t, "b": 1.0 + t}, 1.0, float(t)).increases == {"b": 1.0}
    b = 1.0 + GLITCH_LIMIT
    accepted = e.update("s", {"a": 20.0, "b": b}, 1.0, float(GLITCH_LIMIT))
    assert accepted.increases == {"a": 0.0, "b": 1.0}  # the gap is lost, never doubled
    assert e.update("s", {"a": 25.0, "b": b + 1}, 1.0, 9.0).increases == {"a": 5.0, "b": 1.0}


def test_an_engine_missing_a_counter_it_had_is_held_whole_until_it_returns():
    e = EngineCounters(RATES)
    e.update("s", {"a": 100.0, "b": 10.0}, 1.0, 0.0)
    held = e.update("s", {"a": 150.0, "b": None}, 1.0, 1.0)
    assert held.held and held.increases == {}
    # Back: each counts its whole increase once, in the same interval.
    assert e.update("s", {"a": 160.0, "b": 30.0}, 1.0, 2.0).increases == {"a": 60.0, "b": 20.0}


def test_a_counter_gone_for_good_is_let_go_after_a_few_reads():
    e = EngineCounters(RATES)
    e.update("s", {"a": 100.0, "b": 10.0}, 1.0, 0.0)
    for t in range(1, HOLD_LIMIT + 2):
        assert e.update("s", {"a": 100.0 + t}, 1.0, float(t)).held
    assert e.update("s", {"a": 200.0}, 1.0, 20.0).increases == {"a": pytest.approx(200.0 - 100.0 - HOLD_LIMIT - 1)}
