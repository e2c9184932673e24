"""The accuracy benchmark's instrument: both paths to the work (vLLM's counters, the plugin's
families through the exporter's own WorkReader), the time to trust, and the cases and tables."""

import argparse
import math

import pytest

from benchmarks.bench_accuracy import INTERVALS, TRUTHS, Case, _paths, cases, print_trust
from benchmarks.evaluation import PATHS, Evaluation, evaluate, fmt_minutes
from exporter.sim import LLAMA_3_8B, SCENARIOS, TRUST_BAND, well_mixed


@pytest.fixture(scope="module")
def both() -> dict[str, Evaluation]:
    return {
        path: evaluate(well_mixed(), model=LLAMA_3_8B, interval=5.0, duration=150.0, plugin=path == "plugin")
        for path in PATHS
    }


def test_the_plugin_path_reads_the_plugins_families_and_counts_the_same_tokens(both):
    counters, plugin = both["counters"], both["plugin"]
    assert (counters.path, counters.work_origin) == ("counters", "vllm")
    assert (plugin.path, plugin.work_origin) == ("plugin", "plugin")
    # The plugin counts prompts at their first token and generated tokens as vLLM does.
    assert plugin.tokens == counters.tokens and plugin.tokens["output"] > 0
    # The same run of the same engine: the truth and the measured energy do not depend on the path.
    assert plugin.oracle == counters.oracle and plugin.true_joules == counters.true_joules
    assert plugin.measured_joules == pytest.approx(counters.measured_joules, rel=1e-12)
    assert math.fsum(plugin.allocated.values()) == pytest.approx(plugin.measured_joules, rel=1e-9)


def test_the_time_to_trust_is_from_the_start_to_the_first_tick_after_the_last_one_outside_the_band(both):
    for r in both.values():
        times = [t for t, _, _ in r.trust_trail]
        assert times == [5.0 * i for i in range(1, 31)]  # after every tick
        outside = [t for t, a, b in r.trust_trail if not (abs(a) <= TRUST_BAND and abs(b) <= TRUST_BAND)]
        if outside and outside[-1] == times[-1]:
            assert r.trust_seconds is None
        else:
            assert r.trust_seconds == (times[times.index(outside[-1]) + 1] if outside else times[0])
        # The last tick's errors are the run's: cumulative since the start.
        _, error_in, error_out = r.trust_trail[-1]
        assert error_in == pytest.approx(r.share_error("input"), abs=1e-9)
        assert error_out == pytest.approx(r.share_error("output"), abs=1e-9)


def test_every_case_runs_on_both_paths_and_quick_keeps_well_mixed_at_every_interval():
    full = cases(1200.0, quick=False)
    assert len(full) == 2 * len(TRUTHS) * len(INTERVALS) * (len(SCENARIOS) + 2)
    by_path = {
        path: [(c.name, c.truth, c.interval, c.faults, c.missed) for c in full if c.path == path] for path in PATHS
    }
    assert by_path["counters"] == by_path["plugin"]
    assert [c.path for c in full] == sorted((c.path for c in full), key=PATHS.index)  # counters first
    quick = cases(300.0, quick=True)
    assert {(c.path, c.truth, c.interval) for c in quick if c.name == "well_mixed"} == {
        (p, t, i) for p in PATHS for t in TRUTHS for i in INTERVALS
    }
    assert {c.interval for c in quick if c.name != "well_mixed"} == {5.0}
    assert {c.path for c in cases(300.0, quick=True, paths=("plugin",))} == {"plugin"}


def test_paths_are_named_on_the_command_line():
    assert _paths("counters,plugin") == ("counters", "plugin")
    assert _paths(" plugin ") == ("plugin",)
    for bad in ("", "vllm", "plugin,nvml"):
        with pytest.raises(argparse.ArgumentTypeError):
            _paths(bad)


def test_the_time_to_trust_table_has_a_row_per_path_and_truth_and_a_column_per_interval(capsys):
    def result(seconds):
        return Evaluation({}, {}, 0.0, 0.0, {}, {}, {}, {}, False, trust_seconds=seconds)

    results = [
        (Case("well_mixed", "well_mixed", "component", 1.0, path="counters"), result(48.0)),
        (Case("well_mixed", "well_mixed", "phase", 15.0, path="counters"), result(None)),
        (Case("restarts", "well_mixed", "phase", 5.0, path="counters"), result(5.0)),
        (Case("well_mixed", "well_mixed", "component", 5.0, path="plugin"), result(6.0)),
    ]
    print_trust(results)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| time to trust, well_mixed, cold start | truth | 1 s | 5 s | 15 s |"
    assert lines[2:] == [
        "| counters | component | 0.8 min | — | — |",
        "| counters | phase | — | — | never |",
        "| plugin | component | — | 0.1 min | — |",
        "| plugin | phase | — | — | — |",
    ]
    assert fmt_minutes(90.0) == "1.5 min" and fmt_minutes(None) == "never"
