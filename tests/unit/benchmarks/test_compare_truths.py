from benchmarks.compare_truths import summarise


def test_the_two_truths_give_mixed_steps_the_same_energy_but_not_the_same_split():
    component, phase = (summarise("well_mixed", truth, 240.0) for truth in ("component", "phase"))
    assert component["steps"] == phase["steps"] and component["mixed steps"] == phase["mixed steps"] > 0
    mixed = phase["mixed steps: energy, kJ"] / component["mixed steps: energy, kJ"]
    assert abs(mixed - 1) < 0.02  # what an estimator can observe of those steps barely differs
    split = phase["mixed steps: oracle output, kJ"] / component["mixed steps: oracle output, kJ"]
    assert split > 1.5  # how the oracles split them does
    assert phase["decode steps: J per step"] > component["decode steps: J per step"]
