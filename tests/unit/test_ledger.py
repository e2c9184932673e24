"""The ledger publishes one immutable view per tick: a scrape holding an older view sees it
unchanged, and a tick whose core failed counts its reads and its error and nothing else."""

import pytest

from exporter.attribution.attributor import TickResult
from exporter.ledger import Ledger, SourceRead, TickRecord
from tests.loop_rig import collection_rig, step

READS = {"vllm": SourceRead(True, 0.01), "energy": SourceRead(False, 0.002, ("nvml_gpu_lost",))}


def test_a_published_view_never_changes():
    ledger = Ledger()
    ledger.publish(TickRecord(READS, TickResult(tokens={("m", "input"): 5.0}, models=("m",)), (), 0.1, 1.0, True))
    held = ledger.view()
    tokens, errors = dict(held.tokens), dict(held.source_errors)
    ledger.publish(TickRecord(READS, TickResult(tokens={("m", "input"): 7.0}, models=("m",)), (), 0.1, 2.0, True))
    assert dict(held.tokens) == tokens and dict(held.source_errors) == errors and held.last_tick_unixtime == 1.0
    assert ledger.view().tokens[("m", "input")] == 12.0 and ledger.view().version == held.version + 1
    for mapping in (held.tokens, held.source_up, held.source_errors, held.reads, held.marginal, held.gpu_energy):
        with pytest.raises(TypeError):
            mapping["x"] = 1.0  # type: ignore[index]


def test_a_tick_whose_core_failed_counts_its_reads_and_its_error_only():
    ledger = Ledger()
    ledger.publish(TickRecord(READS, TickResult(tokens={("m", "input"): 5.0}, models=("m",)), (), 0.1, 1.0, True))
    before = ledger.view()
    ledger.publish(TickRecord(READS, None, errors=(("exporter", "internal"),)))
    after = ledger.view()
    assert after.version == before.version + 1
    assert after.reads == {"vllm": 2.0, "energy": 2.0} and after.source_up == {"vllm": 1.0, "energy": 0.0}
    assert after.source_errors[("exporter", "internal")] == before.source_errors[("exporter", "internal")] + 1
    assert after.source_errors[("energy", "nvml_gpu_lost")] == 2.0
    assert (after.ticks, after.tick_seconds, after.last_tick_unixtime) == (1.0, 0.1, 1.0)
    assert after.tokens == before.tokens and after.energy == before.energy


def test_the_loop_publishes_once_per_tick_even_when_the_core_fails(monkeypatch):
    loop, ledger, vllm, energy, _ = collection_rig()
    step(loop, vllm, energy, 0.0, 0, 0)
    step(loop, vllm, energy, 1.0, 400, 300)
    published = ledger.view()

    def broken(*_):
        raise ZeroDivisionError("a bug in the core")

    monkeypatch.setattr(loop._attributor, "tick", broken)
    step(loop, vllm, energy, 2.0, 800, 700)
    view = ledger.view()
    assert view.version == published.version + 1
    assert view.source_errors[("exporter", "internal")] == 1 and view.ticks == published.ticks
    assert view.tokens == published.tokens and view.reads["vllm"] == published.reads["vllm"] + 1


def test_who_supplied_the_readings_is_kept_until_a_source_says_again_and_the_landing_page_says_it():
    from prometheus_client import CollectorRegistry

    from exporter.server import MetricsCache, Routes

    ledger = Ledger()
    routes = Routes(MetricsCache(CollectorRegistry(), ledger), ledger, "http://vllm:8000", "auto")
    assert b"Work counts from: <b>none yet</b>" in routes.answer("/", {})[2]
    ledger.publish(TickRecord({}, None, origins={"vllm": "plugin", "energy": "phase-model"}, energy_modelled=True))
    ledger.publish(TickRecord({}, None, origins={"vllm": "vllm"}))  # the energy read failed this tick
    view = ledger.view()
    assert dict(view.origins) == {"vllm": "vllm", "energy": "phase-model"} and view.energy_modelled is True
    page = routes.answer("/", {})[2]
    assert b"Work counts from: <b>vllm</b>. Energy from: <b>phase-model</b> (modelled, not measured)" in page
