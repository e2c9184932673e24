import random

import pytest

from benchmarks.compare_truths import solve_least_squares, summarise


def test_the_two_truths_give_mixed_steps_the_same_energy_but_not_the_same_split():
    component, phase = (summarise("well_mixed", truth, 240.0) for truth in ("component", "phase"))
    assert (
        component["steps"] == phase["steps"]
        and component["steps carrying a prefill"] == phase["steps carrying a prefill"] > 0
    )
    mixed = phase["... their energy, kJ"] / component["... their energy, kJ"]
    assert abs(mixed - 1) < 0.02  # what an estimator can observe of those steps barely differs
    split = phase["... oracle output, kJ"] / component["... oracle output, kJ"]
    # How the oracles split them does: under the phase truth a mixed step's decode part pays its
    # own time at decode power, and half of what prefill power draws beyond it (~10 % more here).
    assert split > 1.05
    assert phase["pure decode step, J (idle power included)"] > component["pure decode step, J (idle power included)"]
    # under the phase truth a decode token's own FLOPs cost (almost) nothing; under the component truth
    # they cost what a prompt token's do
    assert phase["least-squares output cost, J"] < 0.25 * phase["least-squares input cost, J"]
    assert component["least-squares output cost, J"] == pytest.approx(
        component["least-squares input cost, J"], rel=0.05
    )


def test_least_squares_recovers_known_costs_across_six_orders_of_magnitude():
    rng = random.Random(3)
    truth = [0.02, 0.015, 2.5, 1.5e-5]
    rows = [
        [rng.uniform(1e4, 1e5), rng.uniform(1e3, 3e4), rng.uniform(500, 5000), rng.uniform(1e6, 1e9)] for _ in range(60)
    ]
    targets = [sum(x * c for x, c in zip(r, truth)) for r in rows]
    assert solve_least_squares(rows, targets) == pytest.approx(truth, rel=1e-6)
