"""The simulator's /metrics page served over HTTP on loopback and read by the real vLLM source,
through a vLLM restart, and a real-time driver that moves the served page with the wall clock."""

import time

import httpx
import pytest

from exporter.sim import (
    LLAMA_3_8B,
    Faults,
    RealTimeDriver,
    Simulation,
    serve_metrics,
    well_mixed,
)
from exporter.sources.errors import SourceError
from exporter.sources.vllm import VllmSource


def test_the_page_is_served_over_http_and_read_by_the_real_vllm_source():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1, faults=Faults(vllm_restarts=(20.0,)))
    sim.advance_to(10.0)
    with serve_metrics(sim) as server:
        assert server.url.startswith("http://127.0.0.1:")
        source = VllmSource(server.url, timeout=2.0)
        snapshot = source.read()
        assert snapshot.engines[0].generation_tokens == sim.counters.generation_tokens > 0
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/nothing").status_code == 404
        sim.advance_to(21.0)  # vLLM is down
        with pytest.raises(SourceError) as err:
            source.read()
        assert err.value.reason == "connection"
        sim.advance_to(30.0)
        assert source.read().engines[0].created == pytest.approx(sim.epoch + 25.0, abs=1e-3)
        source.close()


def test_a_real_time_driver_moves_the_served_page_with_the_wall_clock():
    # On a scripted clock: tests/unit/sim/test_sources.py.
    real = RealTimeDriver(Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1), speed=50.0)
    with serve_metrics(real.sim, driver=real) as server:
        httpx.get(server.url + "/metrics")
        first = real.sim.now
        time.sleep(0.2)
        httpx.get(server.url + "/metrics")
        assert real.sim.now - first >= 10.0
