"""The simulator behind the exporter's own interfaces: the sources' snapshots and the attribution
core driven unchanged, and the real-time driver on a scripted clock. The page over HTTP is
tests/integration/test_sim_page_server.py."""

import pytest

from exporter.attribution.attributor import Attributor
from exporter.attribution.gpu_table import GPU_TABLE, lookup
from exporter.attribution.idle import IdlePowerEstimator
from exporter.attribution.pricing import Prices
from exporter.attribution.prior import roofline_prior
from exporter.attribution.readings import EnergySnapshot, VllmSnapshot
from exporter.sim import (
    LLAMA_3_8B,
    Faults,
    RealTimeDriver,
    SimEnergySource,
    Simulation,
    SimVllmSource,
    well_mixed,
)
from exporter.sources.errors import SourceError


def test_a_real_time_driver_moves_virtual_time_with_its_clock():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1)
    wall = [100.0]
    driver = RealTimeDriver(sim, speed=20.0, clock=lambda: wall[0])
    energy = SimEnergySource(sim, driver=driver)
    wall[0] += 0.5
    assert energy.read().timestamp == pytest.approx(10.0)
    wall[0] += 0.25
    assert SimVllmSource(sim, driver=driver).read().timestamp == pytest.approx(15.0)


def test_the_sources_return_what_the_real_ones_return_stamped_with_virtual_time():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, gpus=2, seed=1, model_name="m")
    vllm, energy = SimVllmSource(sim), SimEnergySource(sim)
    sim.advance_to(12.5)
    page, joules = vllm.read(), energy.read()
    assert isinstance(page, VllmSnapshot) and isinstance(joules, EnergySnapshot)
    assert page.timestamp == joules.timestamp == 12.5
    assert [(e.model_name, e.engine) for e in page.engines] == [("m", "0")]
    assert not joules.modelled
    assert [g.index for g in joules.gpus] == [0, 1]
    assert len({g.uuid for g in joules.gpus}) == 2 and all(g.uuid.startswith("GPU-") for g in joules.gpus)
    assert all(lookup(g.name) is GPU_TABLE["H100"] and g.method == "counter" for g in joules.gpus)
    assert [(i, u, n) for i, u, n in energy.gpus] == [(g.index, g.uuid, g.name) for g in joules.gpus]
    assert energy.methods == {0: "counter", 1: "counter"}


def test_the_attribution_core_runs_on_the_simulator_unchanged_through_restarts_and_resets():
    faults = Faults(
        vllm_restarts=(60.0,), restart_downtime_seconds=8.0, driver_resets=(100.0,), nvml_error_rate=0.05, gain=1.03
    )
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=3, faults=faults)
    prior = roofline_prior(
        GPU_TABLE["H100"],
        1,
        LLAMA_3_8B,
        compute_efficiency=0.5,
        bandwidth_efficiency=0.7,
        step_overhead_seconds=0.002,
        relative_stddev=0.5,
    )
    attributor = Attributor(prior, IdlePowerEstimator(75.0, 120, 5), Prices(0.0, 0.0, 1.0, 0.0), 1)
    vllm, energy = SimVllmSource(sim), SimEnergySource(sim)
    vllm_resets = energy_resets = 0
    measured = allocated = output_tokens = 0.0
    for tick in range(1, 181):
        sim.advance_to(tick * 1.0)
        try:
            page = vllm.read()
        except SourceError:
            page = None
        result = attributor.tick(page, energy.read())
        vllm_resets += result.vllm_resets
        energy_resets += result.energy_resets
        output_tokens += sum(v for (_, cls), v in result.tokens.items() if cls == "output")
        if result.allocation is not None:
            measured += result.energy_joules
            allocated += sum(result.allocation.energy.values())
    assert vllm_resets == 1 and energy_resets == 1
    assert allocated == pytest.approx(measured, rel=1e-9)
    truth = sim.oracle_totals()
    # The first read is a baseline and a driver reset loses what was counted since the read
    # before it: about 1 s each of 180 s. The gain error passes straight through.
    assert 0.985 < measured / (1.03 * truth.energy_joules) < 1.0
    # Tokens of the first second, and those emitted just before the restart, are not seen.
    assert 0.98 < output_tokens / truth.tokens["output"] < 1.0
