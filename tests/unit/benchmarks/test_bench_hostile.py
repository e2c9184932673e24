"""The hostile benchmark's pages, invariants and table; the processes themselves run only in
`python -m benchmarks.bench_hostile` (they open sockets)."""

import math

import pytest

from benchmarks.bench_hostile import (
    BASELINE,
    DCGM_FIXTURE,
    EXPECTED_REASONS,
    GPU,
    HEADER,
    PAGE_CAP,
    UPSTREAM,
    VLLM_FIXTURE,
    WATTS,
    Phase,
    VllmPage,
    dcgm_page,
    errors_by_reason,
    gone,
    last_tick,
    moved_reasons,
    passed,
    percentile,
    row,
    spoiled_page,
    table,
    violations,
)
from exporter.sources import dcgm_page as dcgm
from exporter.sources import vllm_page
from exporter.sources.errors import SourceError

PAGE = VllmPage.load(VLLM_FIXTURE.read_text())
ENGINE = ("tiny-llama", "0")


def engine(text: str):
    (found,) = [e for e in vllm_page.parse(text, 1.0).engines if (e.model_name, e.engine) == ENGINE]
    return found


def test_the_page_is_the_fixture_with_its_counters_moving():
    at0, at10 = engine(spoiled_page(PAGE, BASELINE, 0.0, 1)), engine(spoiled_page(PAGE, BASELINE, 10.0, 2))
    assert at0.prompt_tokens == 109.0 and at0.generation_tokens == 1021.0
    assert at10.prompt_tokens == 109.0 + 4000.0 and at10.generation_tokens == 1021.0 + 1500.0
    assert at10.computed_prompt_tokens == 109.0 + 3000.0 and at10.cached_prompt_tokens == 1000.0
    assert at10.created == at0.created and at10.kv_cache_capacity_tokens == 524288.0
    assert vllm_page.parse(spoiled_page(PAGE, BASELINE, 10.0, 2), 1.0).rejected == ()


@pytest.mark.parametrize("n", range(12))
def test_hostile_values_are_rejected_as_bad_values(n):
    snapshot = vllm_page.parse(spoiled_page(PAGE, "hostile_values", 5.0, n), 1.0)
    assert snapshot.rejected == ("bad_value",)


def test_a_decrease_lowers_one_counter_on_every_other_page():
    normal, lowered = (engine(spoiled_page(PAGE, "decrease", 5.0, n)) for n in (2, 3))
    fields = ("prompt_tokens", "generation_tokens", "cached_prompt_tokens", "steps")
    lower = [f for f in fields if getattr(lowered, f) < getattr(normal, f)]
    assert lower == ["generation_tokens"]  # page 3: the second of COUNTERS
    assert getattr(lowered, lower[0]) == getattr(normal, lower[0]) / 2


def test_a_duplicated_series_is_left_out():
    snapshot = vllm_page.parse(spoiled_page(PAGE, "duplicate_series", 5.0, 1), 1.0)
    assert snapshot.rejected == ("duplicate_series",)
    assert engine(spoiled_page(PAGE, "duplicate_series", 5.0, 1)).generation_tokens is None


def test_a_truncated_page_is_cut_mid_number():
    text = spoiled_page(PAGE, "truncated", 5.0, 1)
    assert not text.endswith("\n") and text.rsplit("\n", 1)[1].startswith("vllm:generation_tokens_total{")
    with pytest.raises(SourceError) as err:
        vllm_page.parse(text, 1.0)
    assert err.value.reason == "truncated"


def test_a_flood_brings_500_new_model_names_a_page():
    first, second = (vllm_page.parse(spoiled_page(PAGE, "name_flood", 5.0, n), 1.0) for n in (1, 2))
    names = [{e.model_name for e in s.engines} - {"tiny-llama"} for s in (first, second)]
    assert len(names[0]) == len(names[1]) == 500 and not names[0] & names[1]


def test_an_oversized_page_passes_the_cap_and_still_parses():
    text = spoiled_page(PAGE, "oversized", 5.0, 1)
    assert len(text.encode()) > PAGE_CAP
    assert engine(text).prompt_tokens == 109.0 + 2000.0


def test_every_upstream_class_names_the_reasons_it_must_move():
    assert set(EXPECTED_REASONS) == set(UPSTREAM)


def test_the_dcgm_page_counts_watts_in_millijoules():
    template = DCGM_FIXTURE.read_text()
    boards = [dcgm.parse(dcgm_page(template, age)).boards()[GPU] for age in (0.0, 2.0)]
    assert boards[1].energy_joules - boards[0].energy_joules == pytest.approx(2 * WATTS, abs=0.002)


def key(name, **labels):
    return (name, tuple(sorted(labels.items())))


ENERGY, GPU_ENERGY = "token_economy_energy_joules_total", "token_economy_gpu_energy_joules_total"


def test_a_clean_scrape_has_no_violations():
    before = {key(ENERGY, token_class="idle"): 1.0, key(GPU_ENERGY, gpu="0"): 1.0}
    now = {key(ENERGY, token_class="idle"): 2.0, key(ENERGY, token_class="output"): 1.0, key(GPU_ENERGY, gpu="0"): 3.0}
    assert violations(before, now) == []
    assert violations({}, {}) == []


def test_violations_name_a_decrease_a_non_finite_counter_and_lost_energy():
    before = {key("a_total"): 5.0, key(ENERGY, token_class="idle"): 1.0, key(GPU_ENERGY, gpu="0"): 1.0}
    now = {key("a_total"): 4.0, key("b_total"): math.nan, key(ENERGY, token_class="idle"): 1.0}
    now[key(GPU_ENERGY, gpu="0")] = 1.5
    found = violations(before, now)
    assert len(found) == 3
    assert "decreased" in found[0] and "not finite" in found[1] and "not conserved" in found[2]


def test_series_that_leave_the_page_are_named_by_family():
    before = {key("a_total", m="x"): 1.0, key("a_total", m="y"): 1.0, key("b_total"): 1.0}
    assert gone(before, {key("a_total", m="x"): 2.0, key("b_total"): 1.0}) == {"a_total"}


def test_reasons_moved_by_source_with_resets():
    before = {
        key("token_economy_source_errors_total", source="vllm", reason="timeout"): 1.0,
        key("token_economy_source_errors_total", source="energy", reason="timeout"): 0.0,
    }
    after = dict(before)
    after[key("token_economy_source_errors_total", source="vllm", reason="timeout")] = 4.0
    after[key("token_economy_source_errors_total", source="energy", reason="timeout")] = 9.0
    after[key("token_economy_counter_resets_total", source="vllm")] = 1.0
    assert moved_reasons(errors_by_reason(before), errors_by_reason(after)) == {"timeout": 3, "reset": 1}


def test_a_row_and_the_table():
    phase = Phase("stall", [0.001] * 99 + [0.006], reasons={"timeout": 4}, rss_kib=[50 * 1024, 52 * 1024])
    assert row(phase) == ["stall", "100", "1.00", "1.00", "0", "0", "timeout +4", "52.0"]
    phase.latencies.append(0.2)
    assert row(phase)[3] == "6.00"
    assert not passed(phase)
    missing = Phase("http_500", [0.001], reasons={"timeout": 1})
    assert row(missing)[6] == "timeout +1, MISSING http_status"
    client = Phase("slowloris", [0.001], failures=2, first_failure="TimeoutError", seen="client got 400: 3")
    assert row(client)[4:7] == ["2 (TimeoutError)", "0", "client got 400: 3"]
    lines = table([phase, missing]).splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |" and len(lines) == 4
    assert all(line.count("|") == len(HEADER) + 1 for line in lines)


def test_a_phase_passes_only_with_everything_right():
    good = Phase("truncated", [0.001] * 100, reasons={"truncated": 3}, rss_kib=[1])
    assert passed(good)
    assert not passed(Phase("truncated", [0.001] * 100, reasons={}))
    assert not passed(Phase("truncated", [0.001] * 100, reasons={"truncated": 1}, violations=["x"]))
    assert not passed(Phase(BASELINE, [0.001] * 100, exporter_up=False))
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN


def test_scrapes_are_split_by_whether_they_saw_a_new_tick():
    phase = Phase(BASELINE, [0.001, 0.008, 0.002], after_tick=[False, True, False])
    assert phase.split() == ([0.008], [0.001, 0.002])
    body = b"# TYPE token_economy_last_tick_timestamp_seconds gauge\ntoken_economy_last_tick_timestamp_seconds 1.7e9\n"
    assert last_tick(body) == b"1.7e9" and last_tick(b"") == b""
