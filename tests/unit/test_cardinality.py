"""Bounded cardinality, through the loop, the ledger and the collector: a page naming new models
all the time cannot grow the exposition without bound, and a model that leaves and returns goes
on from its totals instead of coming back as a reset."""

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.attribution.models import OVERFLOW_MODEL, ModelRoster
from exporter.attribution.readings import EnergySnapshot, EngineSample, GpuReading, VllmSnapshot
from exporter.collector import LedgerCollector
from exporter.ledger import Ledger
from exporter.loop import CollectionLoop
from tests.loop_rig import BUILD, rig_attributor


class Models:
    """vLLM serving whichever models a test names, each counting `rate` tokens a second."""

    def __init__(self):
        self.t, self.names, self.count = 0.0, ("m",), {}

    def read(self):
        for name in self.names:
            self.count[name] = self.count.get(name, 0.0) + 100.0
        engines = tuple(
            EngineSample(n, "0", prompt_tokens=self.count[n], generation_tokens=self.count[n], steps=self.count[n] / 10)
            for n in self.names
        )
        return VllmSnapshot(self.t, engines)


class Energy:
    def __init__(self):
        self.t = 0.0

    def read(self):
        return EnergySnapshot(self.t, (GpuReading(0, "GPU-a", "NVIDIA H100", 500.0 * self.t, 500.0, "counter"),))


def rig(limit, expiry):
    attributor = rig_attributor()
    attributor._roster = ModelRoster(limit, expiry)  # as make_attributor passes the settings
    ledger, vllm, energy = Ledger(), Models(), Energy()
    clock = iter(range(10**6))
    loop = CollectionLoop(
        vllm, energy, attributor, ledger, structlog.get_logger(), 1.0,
        clock=lambda: float(next(clock)) / 1000, wall_clock=lambda: 1.7e9,
    )  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, BUILD))
    return loop, ledger, vllm, energy, registry


def run(loop, vllm, energy, t):
    vllm.t = energy.t = float(t)
    loop.tick()


def model_names(registry):
    names = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names |= {s.labels["model_name"] for s in family.samples if "model_name" in s.labels}
    return names


def tokens(registry, model):
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "token_economy_tokens_total" and s.labels == {"model_name": model, "token_class": "output"}:
                return s.value
    return None


def test_new_model_names_every_page_stay_within_the_limit_and_count_the_overflow():
    loop, ledger, vllm, energy, registry = rig(limit=4, expiry=30.0)
    for t in range(60):
        vllm.names = tuple(f"tenant-{t}-{i}" for i in range(50))
        run(loop, vllm, energy, t)
    names = model_names(registry)
    assert OVERFLOW_MODEL in names and len(names) <= 4 + 1
    errors = ledger.view().source_errors
    assert errors[("vllm", "model_limit")] >= 50 * 50
    # The work beyond the limit still pays for the energy: the classes add up to it.
    view = ledger.view()
    assert abs(sum(view.energy.values()) - sum(view.gpu_energy.values())) < 1e-6


def test_a_departed_model_leaves_the_exposition_and_returns_without_a_reset():
    loop, _ledger, vllm, energy, registry = rig(limit=4, expiry=30.0)
    vllm.names = ("a", "b")
    for t in range(10):
        run(loop, vllm, energy, t)
    before = tokens(registry, "a")
    vllm.names = ("b",)
    for t in range(10, 50):
        run(loop, vllm, energy, t)
    assert "a" not in model_names(registry)
    vllm.names = ("a", "b")
    for t in range(50, 53):
        run(loop, vllm, energy, t)
    assert tokens(registry, "a") >= before  # went on from its total: no reset for rate() to see


def test_a_model_missing_from_one_page_keeps_its_series_until_it_expires():
    loop, _ledger, vllm, energy, registry = rig(limit=4, expiry=30.0)
    vllm.names = ("a", "b")
    for t in range(5):
        run(loop, vllm, energy, t)
    vllm.names = ("b",)
    run(loop, vllm, energy, 5)

    def fits_series():
        return {
            s.labels["model_name"]
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples
            if s.name == "token_economy_attribution_fits_total"
        }

    assert fits_series() == {"a", "b"}  # no flapping series for a model absent from one page
