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
