"""The loop, the ledger and the collector together, with scripted sources. The same loop
behind the real HTTP server is tests/integration/test_loop_over_http.py."""

import math
import threading

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import LedgerCollector
from exporter.ledger import Ledger
from exporter.sources.errors import SourceError
from tests.loop_rig import BUILD, collection_rig, step


@pytest.fixture
def rig():
    return collection_rig()


def samples(registry):
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics, name, **labels):
    return metrics[(name, tuple(sorted(labels.items())))]


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
    assert value(m, "token_economy_build_info", **BUILD, work_source="vllm") == 1
    assert value(m, "token_economy_sources_info", work_source="vllm", energy_source="nvml") == 1
    assert value(m, "token_economy_energy_modelled") == 0
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


def test_api_price_lists_are_series_per_model_served(rig):
    from exporter.attribution.api_prices import parse_api_prices

    loop, ledger, vllm, energy, _ = rig
    step(loop, vllm, energy, 0.0, 0, 0)
    step(loop, vllm, energy, 1.0, 100, 50)
    registry = CollectorRegistry(auto_describe=False)
    lists = parse_api_prices("small=0.15/0.075/0.6,large=2.5/1.25/10", "EUR")
    registry.register(LedgerCollector(ledger, BUILD, api_prices=lists, break_even_reference="large"))
    m = samples(registry)
    models = {dict(labels)["model_name"] for name, labels in m if name == "token_economy_tokens_total"}
    assert models
    for model in models:
        price = {"model_name": model, "currency": "EUR"}
        assert (
            value(m, "token_economy_api_price_per_million_tokens", reference="small", token_class="input", **price)
            == 0.15
        )
        assert (
            value(m, "token_economy_api_price_per_million_tokens", reference="large", token_class="output", **price)
            == 10
        )
        assert value(m, "token_economy_break_even_reference_info", model_name=model, reference="large") == 1
    priced = [labels for name, labels in m if name == "token_economy_api_price_per_million_tokens"]
    assert len(priced) == len(models) * 2 * 3


def test_without_price_lists_there_are_no_break_even_series(rig):
    loop, _, vllm, energy, registry = rig
    step(loop, vllm, energy, 0.0, 0, 0)
    step(loop, vllm, energy, 1.0, 100, 50)
    names = {name for name, _ in samples(registry)}
    assert "token_economy_tokens_total" in names  # a model is served, and still no price series
    assert not names & {"token_economy_api_price_per_million_tokens", "token_economy_break_even_reference_info"}
