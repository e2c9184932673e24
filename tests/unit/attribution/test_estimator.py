import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.attribution.estimator import EstimatorSettings, MarginalCostEstimator
from exporter.attribution.prior import Coefficients
from exporter.attribution.work import Work

PRIOR = Coefficients(input=0.02, cached_input=0.0002, output=0.02, step=2.0, kv=2e-5)
TRUE = Coefficients(input=0.026, cached_input=0.0002, output=0.016, step=2.3, kv=1.6e-5)


def energy(theta, w):
    return theta.input * w.input + theta.output * w.output + theta.step * w.steps + theta.kv * w.kv_context


def mixed_window(rng, seconds=5.0):
    steps = rng.uniform(50, 400) * seconds / 5
    batch = rng.uniform(2, 64)
    return Work(
        input=rng.uniform(0, 20000) * seconds / 5,
        output=steps * batch,
        steps=steps,
        kv_context=steps * batch * rng.uniform(200, 3000),
    )


def feed(est, rng, windows, make, noise=0.03, seconds=5.0):
    for _ in range(windows):
        w = make(rng, seconds)
        est.observe(energy(TRUE, w) * (1 + rng.gauss(0, noise)), seconds, w)


def test_well_mixed_load_converges_to_the_true_costs_within_10_percent():
    est = MarginalCostEstimator(PRIOR)
    feed(est, random.Random(1), 3000, mixed_window)
    c = est.coefficients
    for name in ("input", "step"):
        assert getattr(c, name) == pytest.approx(getattr(TRUE, name), rel=0.10), name
    assert est.identified
    assert est.residual_ratio < 0.1


def test_steady_mix_stays_near_the_prior_and_says_not_identified():
    est = MarginalCostEstimator(PRIOR)

    def steady(rng, seconds):
        return Work(input=4000.0, output=3200.0, steps=100.0, kv_context=100.0 * 32 * 1000)

    feed(est, random.Random(2), 2000, steady)
    c, sd = est.coefficients, est.stddevs
    assert not est.identified
    # The total is fitted, the split is not: each coefficient stays inside the prior band.
    for name in ("input", "output", "step", "kv"):
        assert abs(getattr(c, name) - getattr(PRIOR, name)) <= 2 * 0.5 * getattr(PRIOR, name), name
    total = energy(c, steady(None, 0))
    assert total == pytest.approx(energy(TRUE, steady(None, 0)), rel=0.05)
    assert sd.input > 0.2 * PRIOR.input  # still uncertain


def test_no_wind_up_a_long_steady_spell_does_not_freeze_the_estimate():
    est = MarginalCostEstimator(PRIOR)

    def steady(rng, seconds):
        return Work(input=4000.0, output=3200.0, steps=100.0, kv_context=3.2e6)

    rng = random.Random(3)
    feed(est, rng, 20000, steady)  # 28 hours of one mix
    feed(est, rng, 3000, mixed_window)
    assert est.coefficients.input == pytest.approx(TRUE.input, rel=0.10)
    assert est.identified


def test_never_negative_even_when_the_data_say_so():
    est = MarginalCostEstimator(PRIOR)
    rng = random.Random(4)
    for _ in range(500):
        w = mixed_window(rng)
        est.observe(-abs(energy(TRUE, w)), 5.0, w)
    assert all(v >= 0 for v in est.coefficients.as_tuple())


def test_windows_gather_at_least_window_seconds_of_work():
    est = MarginalCostEstimator(PRIOR, EstimatorSettings(window_seconds=30))
    w = Work(input=100, output=100, steps=10, kv_context=1000)
    assert [est.observe(energy(TRUE, w), 5.0, w) for _ in range(6)] == [False] * 5 + [True]


def test_amortised_output_cost_includes_the_step_share():
    est = MarginalCostEstimator(PRIOR)
    value, sd = est.output_per_token(Work(output=64, steps=1, kv_context=0))
    assert value == pytest.approx(PRIOR.output + PRIOR.step / 64)
    assert sd == pytest.approx(0.5 * math.hypot(PRIOR.output, PRIOR.step / 64))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-1e4, 1e6),
            st.floats(0, 1e5),
            st.floats(0, 1e5),
            st.floats(0, 1e3),
            st.floats(0, 1e8),
            st.floats(0, 1e3),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_any_trace_keeps_finite_non_negative_coefficients_and_a_valid_covariance(trace):
    est = MarginalCostEstimator(PRIOR, EstimatorSettings(window_seconds=1))
    for y, p, g, s, k, m in trace:
        est.observe(y, 1.0, Work(input=p, output=g, steps=s, kv_context=k, prefill_steps=min(m, s)))
    coefficients, stddevs = est.coefficients.as_tuple(), est.stddevs.as_tuple()
    assert all(math.isfinite(v) for v in coefficients + stddevs)
    # Costs never go negative; the mixed-step interaction may have either sign.
    assert all(v >= 0 for v in coefficients[:-1] + stddevs)
    # never more uncertain than the prior (the interaction's prior: 0 ± one step cost)
    assert all(sd <= 0.5 * base * 1.000001 for sd, base in zip(stddevs[:-1], PRIOR.as_tuple()[:-1]))
    assert stddevs[-1] <= PRIOR.step * 1.000001


def test_covariance_of_a_single_driver_is_its_variance_and_is_symmetric():
    est = MarginalCostEstimator(PRIOR)
    feed(est, random.Random(4), 200, mixed_window)
    sd = est.stddevs
    assert est.covariance([1, 0, 0, 0], [1, 0, 0, 0]) == pytest.approx(sd.input**2)
    assert est.covariance([0, 0, 1, 0], [0, 0, 1, 0]) == pytest.approx(sd.step**2)
    g, h = [300.0, 50.0, 2.0, 1e5], [10.0, 400.0, 20.0, 4e6]
    assert est.covariance(g, h) == pytest.approx(est.covariance(h, g))


# -- the mixed-step interaction (the plugin's prefill-step counts) -------------------------------


def test_with_prefill_step_counts_the_interaction_is_fitted_of_either_sign():
    # J per prefill-carrying step beyond its parts' own costs. The pull back to the prior (0) and
    # the interaction's correlation with the step count leave it shrunk towards 0, never flipped.
    for interaction in (1.2, -0.6):
        est = MarginalCostEstimator(PRIOR, EstimatorSettings(exact_window_seconds=5.0))  # a window a read
        rng = random.Random(7)
        for _ in range(3000):
            w = mixed_window(rng)
            w.prefill_steps = w.steps * rng.uniform(0.05, 0.6)
            y = energy(TRUE, w) + interaction * w.prefill_steps
            est.observe(y * (1 + rng.gauss(0, 0.02)), 5.0, w, exact=True)
        assert est.coefficients.prefill_step == pytest.approx(interaction, rel=0.35)
        assert est.coefficients.input == pytest.approx(TRUE.input, rel=0.10)


def test_without_prefill_step_counts_the_interaction_stays_at_its_prior():
    est = MarginalCostEstimator(PRIOR)
    feed(est, random.Random(3), 500, mixed_window)
    assert est.coefficients.prefill_step == 0.0
    assert est.stddevs.prefill_step == pytest.approx(PRIOR.step)  # not identifiable from aggregates


def test_exact_work_closes_short_windows():
    est = MarginalCostEstimator(PRIOR, EstimatorSettings(exact_window_seconds=5.0))  # counters: 30 s
    w = Work(input=1000.0, output=500.0, steps=50.0, kv_context=5e5)
    assert est.observe(energy(TRUE, w), 5.0, w, exact=True)
    assert not est.observe(energy(TRUE, w), 5.0, w, exact=False)


def test_decode_tokens_not_generated_tokens_drive_the_output_cost():
    # Each request's first token comes from its last prefill chunk: with the plugin's decode count
    # the fit is not misled by the tokens that no decode computed.
    est = MarginalCostEstimator(PRIOR, EstimatorSettings(exact_window_seconds=5.0))
    rng = random.Random(11)
    for _ in range(2000):
        w = mixed_window(rng)
        decode = w.output
        w.output, w.decode = decode + rng.uniform(0, 0.5) * decode, decode  # + first tokens
        y = TRUE.input * w.input + TRUE.output * decode + TRUE.step * w.steps + TRUE.kv * w.kv_context
        est.observe(y * (1 + rng.gauss(0, 0.01)), 5.0, w, exact=True)
    assert est.coefficients.output == pytest.approx(TRUE.output, rel=0.10)
    # Per generated token, the decode cost is spread over every token the user got.
    w = Work(input=0.0, output=200.0, steps=10.0, kv_context=0.0, decode=150.0)
    value, _ = est.output_per_token(w)
    c = est.coefficients
    assert value == pytest.approx((c.output * 150.0 + c.step * 10.0) / 200.0)
