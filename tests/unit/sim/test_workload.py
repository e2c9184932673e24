"""Workload: seeded draws, clamped lengths, on/off gaps, shared prefixes, closed loops, presets."""

import math
import random

import pytest

from exporter.sim.workload import (
    SCENARIOS,
    ClosedLoop,
    Fixed,
    LogNormal,
    OnOff,
    Poisson,
    Prefixes,
    RequestClass,
    Scenario,
    Trace,
    TraceRequest,
    Uniform,
    Workload,
    steady_mix,
    well_mixed,
)


def draw(workload: Workload, until: float):
    return workload.pop_until(until)


def as_tuples(requests):
    return [(r.arrival, r.prompt_len, r.output_len, r.prefix_id) for r in requests]


def test_the_same_seed_draws_the_same_requests_and_another_seed_does_not():
    a = as_tuples(draw(Workload(well_mixed(), 5), 60))
    b = as_tuples(draw(Workload(well_mixed(), 5), 60))
    c = as_tuples(draw(Workload(well_mixed(), 6), 60))
    assert a == b
    assert a != c
    assert len(a) > 100


def test_lengths_are_clamped_and_centred_on_the_median():
    rng = random.Random(1)
    dist = LogNormal(200, 1.5, low=50, high=400)
    values = [dist.sample(rng) for _ in range(5000)]
    assert min(values) == 50 and max(values) == 400
    assert 150 <= sorted(values)[2500] <= 250
    assert {Uniform(3, 5).sample(rng) for _ in range(200)} == {3, 4, 5}
    assert Fixed(7).sample(rng) == 7


def test_arrivals_come_in_order_at_about_the_rate():
    requests = draw(Workload(Scenario("p", Poisson(10.0), (RequestClass(Fixed(10), Fixed(10)),)), 1), 100)
    times = [r.arrival for r in requests]
    assert times == sorted(times)
    assert 900 <= len(times) <= 1100
    assert [r.rid for r in requests] == list(range(len(requests)))


def test_on_off_arrivals_leave_the_off_windows_empty():
    scenario = Scenario("b", OnOff(20.0, on_seconds=10.0, off_seconds=30.0), (RequestClass(Fixed(10), Fixed(10)),))
    requests = draw(Workload(scenario, 2), 400)
    assert len(requests) > 1000
    assert all((r.arrival % 40.0) < 10.0 for r in requests)
    assert {int(r.arrival // 40) for r in requests} == set(range(10))


def test_a_share_of_requests_starts_with_a_shared_prefix_from_a_fixed_pool():
    scenario = Scenario(
        "x",
        Poisson(50.0),
        (RequestClass(Fixed(100), Fixed(5)),),
        Prefixes(count=3, length=Uniform(200, 300), reuse=0.7),
    )
    workload = Workload(scenario, 3)
    requests = draw(workload, 100)
    shared = [r for r in requests if r.prefix_id >= 0]
    assert 0.65 <= len(shared) / len(requests) <= 0.75
    pool = workload.prefix_lengths
    assert len(pool) == 3
    for r in shared:
        assert r.prefix_len == pool[r.prefix_id]
        assert r.prompt_len == r.prefix_len + 100
    assert all(r.prompt_len == 100 and r.prefix_len == 0 for r in requests if r.prefix_id < 0)


def test_a_closed_loop_sends_the_next_request_when_one_finishes():
    workload = Workload(Scenario("c", ClosedLoop(4, think_seconds=2.0), (RequestClass(Fixed(10), Fixed(10)),)), 1)
    assert len(draw(workload, 0.0)) == 4
    assert workload.next_arrival() == math.inf
    workload.on_finish(5.0)
    assert workload.next_arrival() == 7.0
    assert len(draw(workload, 7.0)) == 1


def test_a_trace_is_replayed_as_given():
    trace = Trace((TraceRequest(2.0, 100, 5), TraceRequest(1.0, 50, 3, prefix_id=4, prefix_len=32)))
    requests = draw(Workload(Scenario("t", trace), 0), 10)
    assert [(r.arrival, r.prompt_len, r.output_len, r.prefix_id, r.prefix_len) for r in requests] == [
        (1.0, 50, 3, 4, 32),
        (2.0, 100, 5, -1, 0),
    ]


def test_a_restart_refuses_open_loop_arrivals_while_down():
    workload = Workload(Scenario("p", Poisson(10.0), (RequestClass(Fixed(10), Fixed(10)),)), 1)
    draw(workload, 10.0)
    workload.on_restart(10.0, 20.0, lost=3)
    assert workload.next_arrival() >= 20.0


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_preset_draws_valid_requests(name):
    requests = draw(Workload(SCENARIOS[name](), 11), 300)
    assert len(requests) > 100
    assert all(r.prompt_len >= 1 and r.output_len >= 1 for r in requests)


def window_ratios(scenario, windows=10, width=30.0):
    requests = draw(Workload(scenario, 4), windows * width)
    ratios = []
    for w in range(windows):
        inside = [r for r in requests if w * width <= r.arrival < (w + 1) * width]
        ratios.append(sum(r.prompt_len for r in inside) / sum(r.output_len for r in inside))
    return ratios


def test_well_mixed_swings_the_input_output_mix_and_steady_mix_does_not():
    mixed = window_ratios(well_mixed())
    steady = window_ratios(steady_mix())
    assert max(mixed) / min(mixed) > 3
    assert max(steady) / min(steady) < 1.01
