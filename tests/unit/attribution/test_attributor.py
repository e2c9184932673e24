import math

import pytest

from exporter.attribution.attributor import Attributor, Policy
from exporter.attribution.gpu_table import GPU_TABLE
from exporter.attribution.idle import IdlePowerEstimator
from exporter.attribution.model_spec import ModelSpec
from exporter.attribution.pricing import Prices
from exporter.attribution.prior import roofline_prior
from exporter.attribution.readings import EnergySnapshot, EngineSample, GpuReading, VllmSnapshot

SPEC = ModelSpec(8e9, 8e9, 2.0, 131072.0, "test")
PRIOR = roofline_prior(
    GPU_TABLE["H100"],
    1,
    SPEC,
    compute_efficiency=0.5,
    bandwidth_efficiency=0.7,
    step_overhead_seconds=0.002,
    relative_stddev=0.5,
)


def make(prices=Prices(4.0, 0.0, 1.0, 0.0), min_samples=3):
    return Attributor(PRIOR, IdlePowerEstimator(75.0, 10, min_samples), prices, 1, Policy(), limit_watts_total=700.0)


def page(t, prompt=0.0, gen=0.0, steps=0.0, running=0.0, created=1.0):
    return VllmSnapshot(
        t,
        (
            EngineSample(
                "m",
                "0",
                prompt_tokens=prompt,
                generation_tokens=gen,
                cached_prompt_tokens=0.0,
                computed_prompt_tokens=prompt,
                steps=steps,
                created=created,
                kv_cache_usage=0.0,
                kv_cache_capacity_tokens=1e5,
                requests_running=running,
                requests_waiting=0.0,
            ),
        ),
    )


def gpus(t, *joules, errors=()):
    return EnergySnapshot(
        t,
        tuple(
            GpuReading(
                i,
                f"GPU-{i}",
                "NVIDIA H100 80GB HBM3",
                None if i in errors else j,
                100.0,
                "counter",
                "nvml_error" if i in errors else None,
            )
            for i, j in enumerate(joules)
        ),
    )


def energy_sum(results):
    return math.fsum(v for r in results if r.allocation for v in r.allocation.energy.values())


def test_first_tick_is_a_baseline_then_energy_is_conserved_per_tick():
    a = make()
    assert a.tick(page(0.0), gpus(0.0, 1000.0, 5000.0)).allocation is None
    r = a.tick(page(1.0, prompt=500, gen=100, steps=50, running=2), gpus(1.0, 1400.0, 5300.0))
    assert r.energy_joules == 700.0
    assert math.fsum(r.allocation.energy.values()) == pytest.approx(700.0, rel=1e-12)
    assert r.tokens[("m", "input")] == 500 and r.tokens[("m", "output")] == 100
    assert r.gpu_energy == {
        (0, "GPU-0", "NVIDIA H100 80GB HBM3"): 400.0,
        (1, "GPU-1", "NVIDIA H100 80GB HBM3"): 300.0,
    }


def test_idle_intervals_teach_the_idle_power_and_go_to_idle():
    a = make()
    a.tick(page(0), gpus(0, 0.0))
    for i in range(1, 5):
        r = a.tick(page(i), gpus(i, 60.0 * i))
        assert set(r.allocation.energy) == {("m", "idle")}
    assert a.idle.measured and a.idle.watts == pytest.approx(60.0)


def test_a_missed_energy_read_carries_its_work_to_the_next_one():
    a = make()
    a.tick(page(0), gpus(0, 0.0))
    r1 = a.tick(page(1, prompt=100, gen=10, steps=10, running=1), None)
    assert r1.allocation is None and r1.tokens[("m", "input")] == 100
    r2 = a.tick(page(2, prompt=100, gen=10, steps=10, running=1), gpus(2, 800.0))
    assert r2.seconds == 2.0 and r2.energy_joules == 800.0
    assert r2.allocation.energy[("m", "input")] > 0


def test_a_reading_no_newer_than_the_last_keeps_the_work_waiting_for_its_energy():
    # A collector slower than our ticks (dcgm-exporter) repeats its reading, stamped when it was new.
    a = make()
    a.tick(page(0), gpus(0, 0.0))
    r1 = a.tick(page(1, prompt=100, gen=10, steps=10, running=1), gpus(0, 0.0))
    assert r1.allocation is None and r1.tokens[("m", "input")] == 100 and r1.gpu_power
    r2 = a.tick(page(2, prompt=100, gen=30, steps=30, running=1), gpus(2, 900.0))
    assert r2.seconds == 2.0 and r2.energy_joules == 900.0
    assert math.fsum(r2.allocation.energy.values()) == pytest.approx(900.0, rel=1e-12)
    assert r2.allocation.energy[("m", "input")] > 0  # the first second's prefill is paid for too


def test_one_gpu_failing_does_not_lose_its_energy():
    a = make()
    results = [a.tick(page(0), gpus(0, 0.0, 0.0))]
    results.append(a.tick(page(1), gpus(1, 100.0, 100.0, errors=(1,))))
    results.append(a.tick(page(2), gpus(2, 200.0, 200.0)))
    assert energy_sum(results) == pytest.approx(400.0)


def test_vllm_outage_sends_energy_to_idle_and_tokens_resume():
    a = make()
    a.tick(page(0), gpus(0, 0.0))
    r = a.tick(None, gpus(1, 300.0))
    assert set(r.allocation.energy) == {("m", "idle")} and r.energy_joules == 300.0
    r = a.tick(page(2, prompt=40, gen=4, steps=4, running=1), gpus(2, 600.0))
    assert r.tokens[("m", "input")] == 40


def test_vllm_restart_counts_new_values_and_never_negative():
    a = make()
    a.tick(page(0, prompt=1000, gen=1000, steps=100), gpus(0, 0.0))
    r = a.tick(page(1, prompt=30, gen=20, steps=5, created=2.0), gpus(1, 200.0))
    assert r.vllm_resets == 1 and r.tokens[("m", "input")] == 30 and r.tokens[("m", "output")] == 20


def test_driver_reload_resets_the_energy_counter_without_negative_energy():
    a = make()
    a.tick(page(0), gpus(0, 10_000.0))
    r = a.tick(page(1), gpus(1, 50.0))
    assert r.energy_resets == 1 and r.energy_joules == 50.0


def test_rental_follows_time_and_sums_to_the_price():
    a = make(prices=Prices(3.6, 0.0, 1.0, 0.0))
    a.tick(page(0), gpus(0, 0.0))
    r = a.tick(page(10, prompt=5000, gen=2000, steps=1000, running=4), gpus(10, 4000.0))
    assert math.fsum(r.costs.values()) == pytest.approx(3.6 * 10 / 3600)
    assert r.costs[("m", "output", "rental")] > r.costs[("m", "input", "rental")]


def test_electricity_and_carbon_follow_energy_times_pue():
    a = make(prices=Prices(0.0, 0.36, 1.5, 400.0))
    a.tick(page(0), gpus(0, 0.0))
    r = a.tick(page(1, prompt=10, gen=10, steps=10, running=1), gpus(1, 3.6e6))
    assert math.fsum(r.costs.values()) == pytest.approx(0.36 * 1.5)
    assert math.fsum(r.emissions.values()) == pytest.approx(400.0 * 1.5)
    assert all(component == "electricity" for _, _, component in r.costs)


def test_phase_model_energy_is_idle_plus_declared_work_capped_at_the_board_limit():
    a = make()

    def modelled(t):
        return EnergySnapshot(t, (GpuReading(0, "unknown", "H100 (declared)", None, None, "phase_model"),), True)

    a.tick(page(0), modelled(0))
    idle = a.tick(page(1), modelled(1))
    assert idle.energy_joules == pytest.approx(75.0)
    busy = a.tick(page(2, prompt=100, gen=100, steps=100, running=1), modelled(2))
    expected = 75.0 + PRIOR.energy.input * 100 + PRIOR.energy.output * 100 + PRIOR.energy.step * 100
    assert busy.energy_joules == pytest.approx(min(expected, 700.0))
    flood = a.tick(page(3, prompt=1e7, gen=100, steps=200, running=1), modelled(3))
    assert flood.energy_joules == pytest.approx(700.0)


def test_marginal_output_cost_amortises_steps_over_output_tokens():
    a = make()
    a.tick(page(0), gpus(0, 0.0))
    r = a.tick(page(1, prompt=10, gen=64, steps=1, running=1), gpus(1, 500.0))
    value, sd = r.marginal[("m", "output")]
    assert value == pytest.approx(PRIOR.energy.output + PRIOR.energy.step / 64)
    assert sd == pytest.approx(0.5 * value)


def test_with_the_estimator_the_split_still_conserves_and_the_fit_moves():
    from exporter.attribution.estimator import EstimatorSettings, MarginalCostEstimator

    est = MarginalCostEstimator(PRIOR.energy, EstimatorSettings(window_seconds=5))
    a = Attributor(
        PRIOR,
        IdlePowerEstimator(75.0, 10, 3),
        Prices(4.0, 0.0, 1.0, 0.0),
        1,
        Policy(),
        limit_watts_total=700.0,
        estimator=est,
    )
    a.tick(page(0), gpus(0, 0.0))
    joules, prompt, gen, steps = 0.0, 0.0, 0.0, 0.0
    for t in range(1, 200):
        p, g, s = (t % 7) * 300.0, (t % 5) * 200.0 + 100, 50.0 + (t % 3) * 20
        prompt, gen, steps = prompt + p, gen + g, steps + s
        joules += 75.0 + 0.03 * p + 0.01 * g + 1.5 * s
        r = a.tick(page(float(t), prompt=prompt, gen=gen, steps=steps, running=1), gpus(float(t), joules))
        assert math.fsum(r.allocation.energy.values()) == pytest.approx(r.energy_joules, rel=1e-12)
    assert est.updates > 10
    assert set(r.coefficients) == {"input", "output", "step", "kv", "prefill_step"}
    assert r.coefficients["step"][0] != pytest.approx(PRIOR.energy.step, rel=0.01)
    assert r.residual_ratio is not None


def test_a_capped_modelled_interval_is_split_by_the_costs_not_by_their_uncertainty():
    from exporter.attribution.estimator import MarginalCostEstimator

    a = Attributor(
        PRIOR,
        IdlePowerEstimator(75.0, 10, 3),
        Prices(4.0, 0.0, 1.0, 0.0),
        1,
        Policy(),
        limit_watts_total=300.0,
        estimator=MarginalCostEstimator(PRIOR.energy),
    )

    def modelled(t):
        return EnergySnapshot(t, (GpuReading(0, "unknown", "H100 (declared)", None, None, "phase_model"),), True)

    a.tick(page(0), modelled(0))
    r = a.tick(page(30, prompt=5e5, gen=2000, steps=200, running=1), modelled(30))
    assert r.energy_joules == pytest.approx(300.0 * 30)  # capped: below what the costs predict
    alloc = r.allocation
    dynamic_in = alloc.energy[("m", "input")] - alloc.static_joules * alloc.time_share[("m", "input")]
    w_in = PRIOR.energy.input * 5e5
    w_out = PRIOR.energy.output * 2000 + PRIOR.energy.step * 200
    # the shortfall is shared in proportion to the costs, as the phase model declares them
    assert dynamic_in / alloc.dynamic_joules == pytest.approx(w_in / (w_in + w_out), rel=1e-9)
