"""The loop, the ledger, the collector and the HTTP server together, with scripted sources."""

import math
import threading
import urllib.error
import urllib.request

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

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
from exporter.server import HttpServer, MetricsCache, Routes
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


@pytest.fixture
def rig():
    prior = roofline_prior(
        GPU_TABLE["H100"],
        2,
        ModelSpec(8e9, 8e9, 2, 0, "t"),
        compute_efficiency=0.5,
        bandwidth_efficiency=0.7,
        step_overhead_seconds=0.002,
        relative_stddev=0.5,
    )
    attributor = Attributor(prior, IdlePowerEstimator(150, 10, 3), Prices(2.0, 0.0, 1.0, 300.0), 2)
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


def samples(registry):
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics, name, **labels):
    return metrics[(name, tuple(sorted(labels.items())))]


def step(loop, vllm, energy, t, tokens, joules):
    vllm.t = energy.t = t
    vllm.tokens, energy.joules = tokens, joules
    loop.tick()


def test_totals_conserve_energy_and_mirror_tokens(rig):
    loop, _ledger, vllm, energy, registry = rig
    for i, (tokens, joules) in enumerate([(0, 0), (400, 300), (800, 700), (800, 850), (2000, 1500)]):
        step(loop, vllm, energy, float(i), tokens, joules)
    m = samples(registry)
    measured = (
        value(m, "token_economy_gpu_energy_joules_total", gpu="0", gpu_uuid="GPU-a", gpu_name="NVIDIA H100 80GB HBM3")
        * 2
    )
    classes = [
        value(m, "token_economy_energy_joules_total", model_name="m", token_class=c)
        for c in ("input", "output", "idle")
    ]
    assert math.isclose(sum(classes), measured, rel_tol=1e-9) and measured == 3000
    assert value(m, "token_economy_tokens_total", model_name="m", token_class="input") == 2000
    assert value(m, "token_economy_tokens_total", model_name="m", token_class="output") == 1000
    cost = sum(v for (n, _labels), v in m.items() if n == "token_economy_cost_total")
    assert cost == pytest.approx(2.0 * 2 * 4 / 3600)
    assert (
        "token_economy_cost_total",
        (("component", "rental"), ("currency", "EUR"), ("model_name", "m"), ("token_class", "output")),
    ) in m
    assert value(m, "token_economy_source_up", source="vllm") == 1
    assert value(m, "token_economy_build_info", **BUILD) == 1
    assert value(m, "token_economy_marginal_energy_joules_per_token", model_name="m", token_class="output") > value(
        m, "token_economy_marginal_energy_joules_per_token", model_name="m", token_class="input"
    )


def test_outage_is_counted_logged_once_and_energy_keeps_counting(rig):
    loop, _ledger, vllm, energy, registry = rig
    step(loop, vllm, energy, 0.0, 0, 0)
    vllm.fail = SourceError("connection", "refused")
    with structlog.testing.capture_logs() as logs:
        for i in range(1, 4):
            step(loop, vllm, energy, float(i), 0, 100.0 * i)
        vllm.fail = None
        step(loop, vllm, energy, 4.0, 50, 400.0)
    events = [e["event"] for e in logs]
    assert events.count("source_lost") == 1 and events.count("source_recovered") == 1
    m = samples(registry)
    assert value(m, "token_economy_source_errors_total", source="vllm", reason="connection") == 3
    assert value(m, "token_economy_energy_joules_total", model_name="m", token_class="idle") >= 600
    assert sum(v for (n, _), v in m.items() if n == "token_economy_energy_joules_total") == pytest.approx(800.0)


def test_a_gpu_error_marks_energy_down_but_loses_nothing(rig):
    loop, _ledger, vllm, energy, registry = rig
    step(loop, vllm, energy, 0.0, 0, 0)
    energy.gpu_error = "nvml_gpu_lost"
    step(loop, vllm, energy, 1.0, 0, 100)
    assert value(samples(registry), "token_economy_source_up", source="energy") == 0
    energy.gpu_error = None
    step(loop, vllm, energy, 2.0, 0, 200)
    m = samples(registry)
    assert value(m, "token_economy_source_errors_total", source="energy", reason="nvml_gpu_lost") == 1
    assert sum(v for (n, _), v in m.items() if n == "token_economy_energy_joules_total") == pytest.approx(400.0)


def test_an_unexpected_exception_in_a_source_never_escapes(rig):
    loop, _ledger, _vllm, energy, registry = rig
    energy.raise_error = RuntimeError("library bug")
    loop.tick()
    assert value(samples(registry), "token_economy_source_errors_total", source="energy", reason="internal") == 1


def test_routes_and_readiness(rig):
    loop, ledger, vllm, energy, registry = rig
    server = HttpServer("127.0.0.1", 0, Routes(MetricsCache(registry, ledger), ledger, "http://127.0.0.1:8000", "nvml"))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert urllib.request.urlopen(base + "/healthz").status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/readyz")
        assert err.value.code == 503
        step(loop, vllm, energy, 0.0, 0, 0)
        assert urllib.request.urlopen(base + "/readyz").status == 200
        assert b"/metrics" in urllib.request.urlopen(base + "/").read()
        assert b"token_economy_tick_duration_seconds_count" in urllib.request.urlopen(base + "/metrics").read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/nope")
    finally:
        server.stop()


def test_run_stops_when_told(rig):
    loop, *_ = rig
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_configured_prices_are_series_for_promql():
    from exporter.attribution.pricing import Prices

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(Ledger(), BUILD, Prices(2.5, 0.3, 1.2, 380.0)))
    m = samples(registry)
    assert value(m, "token_economy_gpu_hourly_price", currency="EUR") == 2.5
    assert value(m, "token_economy_electricity_price_per_kwh", currency="EUR") == 0.3
    assert value(m, "token_economy_pue") == 1.2
    assert value(m, "token_economy_grid_carbon_intensity_grams_per_kwh") == 380.0
