import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.attribution.prior import Coefficients
from exporter.attribution.split import allocate, class_weights, driver_amounts
from exporter.attribution.work import Work

ENERGY = Coefficients(input=0.2, cached_input=0.002, output=0.2, step=15.0, kv=1e-4)
TIME = Coefficients(input=1e-4, cached_input=1e-6, output=1e-4, step=0.02, kv=1e-8)


def run(energy, seconds, work, idle_watts=150.0, **kw):
    return allocate(energy, seconds, work, ENERGY, TIME, 0.002, idle_watts, idle_models=list(work) or ["m"], **kw)


def total(alloc):
    return math.fsum(alloc.energy.values())


def test_an_idle_interval_goes_wholly_to_idle():
    a = run(160.0, 1.0, {"m": Work()})
    assert a.energy == {("m", "idle"): 160.0}
    assert a.time_share == {("m", "idle"): 1.0}


def test_dynamic_energy_follows_marginal_weights_and_static_follows_occupancy():
    work = {"m": Work(input=1000, output=160, steps=10)}
    a = run(1000.0, 1.0, work)
    # busy time 0.1 s input + 0.016 output + 10 x 0.022 steps = 0.336 s of 1 s
    assert a.busy_fraction == pytest.approx(0.336)
    dynamic = 1000.0 - 150.0
    w_in, w_out = 0.2 * 1000, 0.2 * 160 + 15.0 * 10
    static_busy = 150.0 * 0.336
    assert a.energy[("m", "input")] == pytest.approx(dynamic * w_in / (w_in + w_out) + static_busy * 0.1 / 0.336)
    assert a.energy[("m", "output")] == pytest.approx(dynamic * w_out / (w_in + w_out) + static_busy * 0.236 / 0.336)
    assert a.energy[("m", "idle")] == pytest.approx(150.0 * (1 - 0.336))
    assert total(a) == pytest.approx(1000.0, rel=1e-12)


def test_kepler_like_policy_leaves_static_power_idle():
    a = run(1000.0, 1.0, {"m": Work(input=1000, output=160, steps=10)}, static_by_occupancy=False)
    assert a.energy[("m", "idle")] == pytest.approx(150.0)


def test_per_step_cost_can_be_shared_by_all_tokens():
    work = {"m": Work(input=100, output=100, steps=10)}
    own = run(1000.0, 1.0, work).energy
    shared = run(1000.0, 1.0, work, step_on_output=False).energy
    assert shared[("m", "input")] > own[("m", "input")]
    assert total(run(1000.0, 1.0, work, step_on_output=False)) == pytest.approx(1000.0, rel=1e-12)


def test_energy_below_the_idle_estimate_is_all_static():
    a = run(100.0, 1.0, {"m": Work(output=10, steps=10)})
    assert a.dynamic_joules == 0.0 and total(a) == pytest.approx(100.0)


def test_output_costs_more_per_token_than_input_under_decode_heavy_load():
    a = run(500.0, 1.0, {"m": Work(input=200, output=400, steps=100)})
    assert a.energy[("m", "output")] / 400 > a.energy[("m", "input")] / 200


work_strategy = st.builds(
    Work,
    input=st.floats(0, 1e5),
    cached_input=st.floats(0, 1e5),
    output=st.floats(0, 1e4),
    steps=st.floats(0, 1e3),
    kv_context=st.floats(0, 1e8),
)


@settings(max_examples=300, deadline=None)
@given(
    energy=st.floats(0, 1e5),
    seconds=st.floats(0, 60),
    works=st.dictionaries(st.sampled_from(["a", "b", "c"]), work_strategy, max_size=3),
    idle_watts=st.floats(0, 2000),
    occupancy=st.booleans(),
    on_output=st.booleans(),
)
def test_classes_always_sum_to_the_measured_energy_and_are_never_negative(
    energy, seconds, works, idle_watts, occupancy, on_output
):
    a = allocate(
        energy,
        seconds,
        works,
        ENERGY,
        TIME,
        0.002,
        idle_watts,
        idle_models=list(works),
        static_by_occupancy=occupancy,
        step_on_output=on_output,
    )
    assert all(v >= 0 and not math.isnan(v) for v in a.energy.values())
    assert math.isclose(total(a), energy, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(math.fsum(a.time_share.values()), 1.0, rel_tol=1e-9)
    assert all(v >= 0 for v in a.time_share.values())


def _only_input_uncertain(g, h):
    # The input cost is uncertain (variance 1e-4 per token²), every other cost is pinned.
    return 1e-4 * g[0] * h[0]


def test_the_measured_surprise_goes_to_the_uncertain_class():
    work = {"m": Work(input=1000, output=160, steps=10)}
    predicted_in, predicted_out = 0.2 * 1000, 0.2 * 160 + 15.0 * 10
    measured_dynamic = predicted_in + predicted_out + 50.0  # 50 J more than the costs predict
    a = run(150.0 + measured_dynamic, 1.0, work, covariance=_only_input_uncertain, static_by_occupancy=False)
    # the pinned output keeps its prediction; input takes the whole 50 J
    assert a.energy[("m", "output")] == pytest.approx(predicted_out)
    assert a.energy[("m", "input")] == pytest.approx(predicted_in + 50.0)
    proportional = run(150.0 + measured_dynamic, 1.0, work, static_by_occupancy=False)
    assert proportional.energy[("m", "output")] > predicted_out  # without it, every class scales


def test_a_surprise_larger_than_a_class_empties_it_without_going_negative():
    work = {"m": Work(input=1000, output=160, steps=10)}
    a = run(150.0 + 100.0, 1.0, work, covariance=_only_input_uncertain, static_by_occupancy=False)
    assert a.energy[("m", "input")] == 0.0
    assert a.energy[("m", "output")] == pytest.approx(100.0)


@settings(max_examples=300, deadline=None)
@given(
    energy=st.floats(0, 1e5),
    works=st.dictionaries(st.sampled_from(["a", "b"]), work_strategy, max_size=2),
    factor=st.lists(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4), min_size=4, max_size=4),
    on_output=st.booleans(),
)
def test_conditioning_on_the_measurement_still_conserves(energy, works, factor, on_output):
    # A covariance L Lᵀ with any correlations, negative ones included, as a fitted estimator has.
    cov = [[sum(factor[i][k] * factor[j][k] for k in range(4)) * 1e-4 for j in range(4)] for i in range(4)]

    def covariance(g, h):
        return sum(g[i] * cov[i][j] * h[j] for i in range(4) for j in range(4))

    a = allocate(
        energy,
        5.0,
        works,
        ENERGY,
        TIME,
        0.002,
        150.0,
        idle_models=list(works),
        step_on_output=on_output,
        covariance=covariance,
    )
    assert all(v >= 0 and not math.isnan(v) for v in a.energy.values())
    assert math.isclose(total(a), energy, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=300, deadline=None)
@given(work=work_strategy, on_output=st.booleans())
def test_driver_amounts_are_what_the_class_weights_are_made_of(work, on_output):
    fitted = (ENERGY.input, ENERGY.output, ENERGY.step, ENERGY.kv)
    weights = class_weights(work, ENERGY, on_output)
    for cls, weight in zip(("input", "cached_input", "output"), weights):
        own = ENERGY.cached_input * work.cached_input if cls == "cached_input" else 0.0
        made_of = math.fsum(x * c for x, c in zip(driver_amounts(work, cls, on_output), fitted)) + own
        assert made_of == pytest.approx(weight, rel=1e-9, abs=1e-9)


def test_the_mixed_step_interaction_is_shared_equally_by_input_and_output():
    work = Work(input=1000, output=160, steps=10, prefill_steps=4)
    with_interaction = Coefficients(**{**{k: getattr(ENERGY, k) for k in ENERGY.__slots__}, "prefill_step": 3.0})
    w_in, _, w_out = class_weights(work, with_interaction, step_on_output=True)
    base_in, _, base_out = class_weights(work, ENERGY, step_on_output=True)
    assert w_in - base_in == pytest.approx(0.5 * 4 * 3.0) and w_out - base_out == pytest.approx(0.5 * 4 * 3.0)
    assert driver_amounts(work, "input", True)[-1] == driver_amounts(work, "output", True)[-1] == 2.0


def test_a_negative_interaction_never_takes_a_class_below_zero():
    work = Work(input=10, output=160, steps=10, prefill_steps=10)
    negative = Coefficients(**{**{k: getattr(ENERGY, k) for k in ENERGY.__slots__}, "prefill_step": -50.0})
    w_in, _, w_out = class_weights(work, negative, step_on_output=True)
    assert w_in == 0.0 and w_out >= 0.0
