"""A seeded discrete-event simulator of one vLLM engine with a ground-truth oracle.

    from exporter.sim import Simulation, SimVllmSource, SimEnergySource, well_mixed, LLAMA_3_8B

    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, gpus=1, truth="component", seed=1)
    vllm, energy = SimVllmSource(sim), SimEnergySource(sim)
    for _ in range(600):
        sim.advance(1.0)                        # virtual seconds; CPU time is far less
        page, joules = vllm.read(), energy.read()   # what the real sources return
    truth = sim.oracle_totals()                 # true J and seconds per input/cached_input/output/idle

Modules: `workload` (arrivals, lengths, prefixes, scenario presets), `engine` (scheduling, KV
blocks, prefix cache, preemption), `hardware` (roofline step time, ground truths A and B),
`oracle` (the split's semantics and `OracleTotals`), `telemetry` (vLLM's page and NVML's counter
with their real semantics), `sources` (the exporter's source interfaces and an HTTP page server),
`run` (`Simulation`, `Faults`; `plugin=True` adds the vLLM plugin's families to the page, counted
by the plugin's own code), `trust` (time to trust: when the exporter's cumulative split settles
within ±10 % of the oracle's). Pure Python; nothing here reads the wall clock except the
real-time driver and the HTTP server.
"""

from exporter.sim.engine import EngineConfig
from exporter.sim.hardware import COMPONENT, LLAMA_2_70B, LLAMA_3_8B, PHASE, HardwareModel, Roofline
from exporter.sim.oracle import CLASSES, OracleTotals
from exporter.sim.run import Faults, Simulation, StepTrace
from exporter.sim.sources import MetricsServer, RealTimeDriver, SimEnergySource, SimVllmSource, serve_metrics
from exporter.sim.trust import TRUST_BAND, TrustClock, split_errors
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
    bursty_idle,
    decode_heavy,
    prefill_heavy,
    prefix_cache_heavy,
    steady_mix,
    well_mixed,
)

__all__ = [
    "CLASSES",
    "COMPONENT",
    "LLAMA_2_70B",
    "LLAMA_3_8B",
    "PHASE",
    "SCENARIOS",
    "TRUST_BAND",
    "ClosedLoop",
    "EngineConfig",
    "Faults",
    "Fixed",
    "HardwareModel",
    "LogNormal",
    "MetricsServer",
    "OnOff",
    "OracleTotals",
    "Poisson",
    "Prefixes",
    "RealTimeDriver",
    "RequestClass",
    "Roofline",
    "Scenario",
    "SimEnergySource",
    "SimVllmSource",
    "Simulation",
    "StepTrace",
    "Trace",
    "TraceRequest",
    "TrustClock",
    "Uniform",
    "bursty_idle",
    "decode_heavy",
    "prefill_heavy",
    "prefix_cache_heavy",
    "serve_metrics",
    "split_errors",
    "steady_mix",
    "well_mixed",
]
