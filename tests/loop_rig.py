"""The collection loop wired as start-up wires it, over scripted sources whose counters a test
sets tick by tick: for the unit tests of the loop, ledger and collector
(tests/unit/test_loop_and_exposition.py) and for the same loop behind the real HTTP server
(tests/integration/test_loop_over_http.py)."""

import structlog
from prometheus_client import CollectorRegistry

from exporter.attribution.attributor import Attributor
from exporter.attribution.gpu_table import GPU_TABLE
from exporter.attribution.idle import IdlePowerEstimator
from exporter.attribution.model_spec import ModelSpec
from exporter.attribution.pricing import Prices
from exporter.attribution.prior import roofline_prior
from exporter.attribution.readings import EnergySnapshot, EngineSample, GpuReading, VllmSnapshot
from exporter.catalogue import BUILD_LABELS
from exporter.collector import LedgerCollector
from exporter.ledger import Ledger
from exporter.loop import CollectionLoop
from exporter.sources.errors import SourceError

BUILD = {**dict.fromkeys(BUILD_LABELS, "test"), "version": "t", "energy_source": "nvml", "currency": "EUR"}


class ScriptedVllm:
    def __init__(self):
        self.t = 0.0
        self.tokens = 0.0
        self.fail: SourceError | None = None

    def read(self):
        if self.fail:
            raise self.fail
        return VllmSnapshot(
            self.t,
            (
                EngineSample(
                    "m",
                    "0",
                    prompt_tokens=self.tokens,
                    generation_tokens=self.tokens / 2,
                    computed_prompt_tokens=self.tokens,
                    cached_prompt_tokens=0.0,
                    steps=self.tokens / 4,
                    requests_running=1.0 if self.tokens else 0.0,
                ),
            ),
        )


class ScriptedEnergy:
    def __init__(self):
        self.t = 0.0
        self.joules = 0.0
        self.gpu_error: str | None = None
        self.raise_error: Exception | None = None

    def read(self):
        if self.raise_error:
            raise self.raise_error
        return EnergySnapshot(
            self.t,
            (
                GpuReading(
                    0,
                    "GPU-a",
                    "NVIDIA H100 80GB HBM3",
                    None if self.gpu_error else self.joules,
                    200.0,
                    "counter",
                    self.gpu_error,
                ),
                GpuReading(1, "GPU-b", "NVIDIA H100 80GB HBM3", self.joules, 200.0, "counter"),
            ),
        )


def rig_attributor() -> Attributor:
    """The core for two H100s serving an 8B model, as the rigs run it."""
    prior = roofline_prior(
        GPU_TABLE["H100"],
        2,
        ModelSpec(8e9, 8e9, 2, 0, "t"),
        compute_efficiency=0.5,
        bandwidth_efficiency=0.7,
        step_overhead_seconds=0.002,
        relative_stddev=0.5,
    )
    return Attributor(prior, IdlePowerEstimator(150, 10, 3), Prices(2.0, 0.0, 1.0, 300.0), 2)


def collection_rig():
    """The loop over scripted sources, its ledger and a registry with the ledger's collector:
    (loop, ledger, vllm, energy, registry)."""
    attributor = rig_attributor()
    ledger = Ledger()
    vllm, energy = ScriptedVllm(), ScriptedEnergy()
    clock = iter(range(10**6))
    loop = CollectionLoop(
        vllm,
        energy,
        attributor,
        ledger,
        structlog.get_logger(),
        1.0,
        clock=lambda: float(next(clock)) / 1000,
        wall_clock=lambda: 1.7e9,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, BUILD))
    return loop, ledger, vllm, energy, registry


def step(loop, vllm, energy, t, tokens, joules):
    vllm.t = energy.t = t
    vllm.tokens, energy.joules = tokens, joules
    loop.tick()
