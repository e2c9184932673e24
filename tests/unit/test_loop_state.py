"""The loop hands the core's state to its keeper after every fit, and only then; a keeper that
fails costs a log line, never a tick."""

import structlog

from exporter.attribution.estimator import EstimatorSettings, MarginalCostEstimator
from exporter.ledger import Ledger
from exporter.loop import CollectionLoop
from tests.loop_rig import ScriptedEnergy, ScriptedVllm, rig_attributor, step


def rig(keeper):
    attributor = rig_attributor()
    attributor.estimator = MarginalCostEstimator(attributor.prior.energy, EstimatorSettings(window_seconds=2.0))
    vllm, energy, ledger = ScriptedVllm(), ScriptedEnergy(), Ledger()
    loop = CollectionLoop(vllm, energy, attributor, ledger, structlog.get_logger(), 1.0, keeper=keeper)
    return loop, vllm, energy, ledger


def test_the_state_is_kept_after_each_fit_and_only_then():
    kept = []
    loop, vllm, energy, ledger = rig(kept.append)
    for t in range(9):
        step(loop, vllm, energy, float(t), 1000.0 * t * t, 600.0 * t + 50.0 * t * t)
    fits = ledger.view().fits
    assert fits >= 2 and len(kept) == fits
    assert kept[-1]["estimator"]["updates"] == fits and "idle" in kept[-1]


def test_a_keeper_that_fails_costs_nothing_but_a_log_line():
    def broken(_state):
        raise OSError(28, "No space left on device")

    loop, vllm, energy, ledger = rig(broken)
    for t in range(9):
        step(loop, vllm, energy, float(t), 1000.0 * t * t, 600.0 * t + 50.0 * t * t)
    assert ledger.view().ticks == 9 and ledger.view().fits >= 2


def test_the_http_servers_counts_are_published_with_each_tick_and_the_cache_is_told():
    events = {"connections": 3, "bad_requests": 1}
    told = []
    attributor = rig_attributor()
    vllm, energy, ledger = ScriptedVllm(), ScriptedEnergy(), Ledger()
    loop = CollectionLoop(
        vllm, energy, attributor, ledger, structlog.get_logger(), 1.0,
        http_events=lambda: events, published=lambda: told.append(ledger.version),
    )  # fmt: skip
    step(loop, vllm, energy, 0.0, 0.0, 0.0)
    events["bad_requests"] = 4
    step(loop, vllm, energy, 1.0, 100.0, 300.0)
    assert dict(ledger.view().http_events) == {"connections": 3, "bad_requests": 4}
    assert told == [1, 2]  # after each publication, with the new view in place
