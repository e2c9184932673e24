"""bench_accuracy's figures as JSON (`--json`, and README's figure through benchmarks/figure_data.py),
and evaluate's per-tick hook the figure's timeline is recorded with."""

import json
import math

import pytest

from benchmarks.bench_accuracy import Case, case_record, report
from benchmarks.evaluation import evaluate
from benchmarks.figure_data import dumps, rounded
from exporter.sim import LLAMA_3_8B, Faults, well_mixed


@pytest.fixture(scope="module")
def result():
    case = Case("well_mixed", "well_mixed", "component", 5.0)
    return case, evaluate(well_mixed(), model=LLAMA_3_8B, interval=5.0, duration=150.0)


def test_a_case_record_is_the_tables_row_as_data(result):
    case, r = result
    record = case_record(case, r)
    assert (record["name"], record["truth"], record["path"], record["interval_seconds"]) == (
        "well_mixed",
        "component",
        "counters",
        5.0,
    )
    assert record["share_error"] == {"input": r.share_error("input"), "output": r.share_error("output")}
    assert record["trust_seconds"] == r.trust_seconds and record["identified"] == r.identified
    assert set(record["baselines"]) == {"all_to_output", "request_time"}
    assert record["baselines"]["all_to_output"]["input"] == pytest.approx(-1.0)
    assert record["faults"] is False and record["work_origin"] == "vllm"
    assert case_record(Case("restarts", "well_mixed", "component", 5.0, Faults(gain=1.03)), r)["faults"] is True


def test_the_report_is_strict_json_with_undefined_figures_as_null(result):
    case, r = result
    document = report([(case, r)], {"counters": [(1.0, float("nan"))]}, {"counters": r}, ["x"], 150.0)
    text = json.dumps(document, allow_nan=False)  # NaN would not be JSON
    back = json.loads(text)
    assert back["gain"]["counters"] == [{"gain": 1.0, "split_ratio": None}]
    assert back["targets"] == {"pass": False, "failures": ["x"]}
    assert back["cases"][0]["fit_error"]["output"] is None or math.isfinite(back["cases"][0]["fit_error"]["output"])
    assert set(back["literature"]["counters"]) == {"exporter_joules_per_token", "oracle_joules_per_token"}


def test_evaluate_calls_on_tick_after_every_tick_that_was_not_missed():
    seen = []
    r = evaluate(
        well_mixed(),
        model=LLAMA_3_8B,
        interval=5.0,
        duration=60.0,
        missed_scrape_rate=0.3,
        on_tick=lambda sim, tick: seen.append((sim.now, tick.energy_joules)),
    )
    assert len(seen) == r.ticks and r.missed > 0
    assert [t for t, _ in seen] == sorted(t for t, _ in seen)
    assert math.fsum(j for _, j in seen) == pytest.approx(r.measured_joules, rel=1e-12)


def test_the_figure_data_is_rounded_and_laid_out_the_same_way_every_time():
    assert rounded({"a": [1.23456789, float("nan")], "b": (2.0,)}) == {"a": [1.23457, None], "b": [2.0]}
    text = dumps({"x": [1.0, 2.0], "y": {"z": ["a", "b"]}})
    assert '"x": [1.0, 2.0]' in text and '"z": ["a", "b"]' in text
    assert json.loads(text) == {"x": [1.0, 2.0], "y": {"z": ["a", "b"]}}
