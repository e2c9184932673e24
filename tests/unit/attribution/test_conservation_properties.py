"""Property tests: whatever the trace — resets, missed scrapes, failing GPUs, outages — the
classes add up to the measured energy, nothing is negative or NaN, and no energy is created or
lost relative to what the counters record."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.attribution.attributor import Attributor, Policy
from exporter.attribution.estimator import EstimatorSettings, MarginalCostEstimator
from exporter.attribution.gpu_table import GPU_TABLE
from exporter.attribution.idle import IdlePowerEstimator
from exporter.attribution.model_spec import ModelSpec
from exporter.attribution.pricing import Prices
from exporter.attribution.prior import roofline_prior
from exporter.attribution.readings import EnergySnapshot, EngineSample, GpuReading, VllmSnapshot

PRIOR = roofline_prior(
    GPU_TABLE["H100"],
    2,
    ModelSpec(8e9, 8e9, 2, 131072, "t"),
    compute_efficiency=0.5,
    bandwidth_efficiency=0.7,
    step_overhead_seconds=0.002,
    relative_stddev=0.5,
)

step = st.fixed_dictionaries(
    {
        "dt": st.floats(0.05, 30),
        "power": st.tuples(st.floats(0, 1500), st.floats(0, 1500)),
        "prompt": st.integers(0, 50_000),
        "cached": st.integers(0, 5_000),
        "gen": st.integers(0, 5_000),
        "steps": st.integers(0, 2_000),
        "vllm_restart": st.booleans(),
        "vllm_down": st.booleans(),
        "missed": st.booleans(),
        "driver_reset": st.tuples(st.booleans(), st.booleans()),
        "gpu_error": st.tuples(st.booleans(), st.booleans()),
        "energy_down": st.booleans(),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    trace=st.lists(step, min_size=1, max_size=60),
    fitted=st.booleans(),
    occupancy=st.booleans(),
    on_output=st.booleans(),
)
def test_no_energy_is_created_or_lost(trace, fitted, occupancy, on_output):
    estimator = MarginalCostEstimator(PRIOR.energy, EstimatorSettings(window_seconds=10)) if fitted else None
    a = Attributor(
        PRIOR,
        IdlePowerEstimator(150, 10, 2),
        Prices(3, 0.1, 1.2, 400),
        2,
        Policy(occupancy, on_output),
        estimator=estimator,
    )
    t, created = 0.0, 1.0
    counters = {"prompt": 0, "cached": 0, "gen": 0, "steps": 0}
    meters = [0.0, 0.0]  # what each GPU's counter shows now
    recorded = 0.0  # energy the counters recorded after the first reading, resets included
    first = True
    seen = [None, None]  # last counter value the attributor saw per GPU
    allocated = measured = 0.0
    for s in trace:
        t += s["dt"]
        for k in counters:
            counters[k] += s[k]
        if s["vllm_restart"]:
            created += 1
            counters = {k: s[k] for k in counters}
        for g in range(2):
            if s["driver_reset"][g]:
                meters[g] = 0.0
                seen[g] = 0.0 if seen[g] is not None else None  # a reset restarts from zero
            meters[g] += s["power"][g] * s["dt"]
        if s["missed"]:
            continue
        page = (
            None
            if s["vllm_down"]
            else VllmSnapshot(
                t,
                (
                    EngineSample(
                        "m",
                        "0",
                        prompt_tokens=float(counters["prompt"] + counters["cached"]),
                        cached_prompt_tokens=float(counters["cached"]),
                        generation_tokens=float(counters["gen"]),
                        steps=float(counters["steps"]),
                        created=created,
                        requests_running=1.0,
                    ),
                ),
            )
        )
        energy = (
            None
            if s["energy_down"]
            else EnergySnapshot(
                t,
                tuple(
                    GpuReading(
                        g,
                        f"GPU-{g}",
                        "NVIDIA H100",
                        None if s["gpu_error"][g] else meters[g],
                        100.0,
                        "counter",
                        "nvml_error" if s["gpu_error"][g] else None,
                    )
                    for g in range(2)
                ),
            )
        )
        result = a.tick(page, energy)
        if energy is not None:
            for g in range(2):
                if not s["gpu_error"][g]:
                    if seen[g] is not None and not first:
                        recorded += meters[g] - seen[g]
                    seen[g] = meters[g]
            first = first and False if seen != [None, None] else first
        if result.allocation is not None:
            values = list(result.allocation.energy.values())
            assert all(v >= 0 and not math.isnan(v) for v in values)
            assert math.isclose(math.fsum(values), result.energy_joules, rel_tol=1e-9, abs_tol=1e-9)
            assert all(v >= 0 and not math.isnan(v) for v in result.costs.values())
            allocated += math.fsum(values)
            measured += result.energy_joules
    assert math.isclose(allocated, measured, rel_tol=1e-9, abs_tol=1e-9)
    assert measured <= recorded * (1 + 1e-9) + 1e-6  # never more than the counters recorded
