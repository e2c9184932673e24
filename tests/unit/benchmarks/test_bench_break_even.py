"""The break-even benchmark: its loads cost what the core counted, and the crossing is found
between the two rates around it."""

from benchmarks.bench_break_even import Load, arguments, crossing, measure, table
from exporter.attribution.api_prices import parse_api_prices
from exporter.attribution.token_class import CACHED_INPUT, IDLE, INPUT, OUTPUT
from exporter.config import Settings


def _load(rate, out_per_s, cost_per_h, busy):
    load = Load(rate, seconds=3600.0, busy_fraction=busy, cost=cost_per_h)
    load.tokens.update({INPUT: 0.0, CACHED_INPUT: 0.0, OUTPUT: out_per_s * 3600})
    load.class_cost.update({OUTPUT: cost_per_h / 2, IDLE: cost_per_h / 2})
    return load


def test_the_crossing_is_interpolated_between_the_rates_around_it():
    (price,) = parse_api_prices("p=0/0/1", "USD")  # 1 per million output tokens: 3.6e-3 per h per tok/s
    loads = [_load(1, 100, 1.0, 0.5), _load(2, 500, 1.0, 0.9)]  # ratios 1/0.36 = 2.78, then 1/1.8 = 0.56
    busy, out = crossing(loads, price)
    f = (1 / 0.36 - 1) / (1 / 0.36 - 1 / 1.8)
    assert abs(busy - (0.5 + f * 0.4)) < 1e-12 and abs(out - (100 + f * 400)) < 1e-9
    assert crossing(loads[:1], price) is None  # one rate: nothing to cross
    assert loads[0].fully_loaded_per_million(OUTPUT) == 1.0 / (100 * 3600) * 1e6  # all of it, idle spread


def test_a_short_run_costs_what_the_core_counted_and_tabulates():
    settings = Settings(gpu_hourly_price=1.2, currency="USD", api_prices="p=0.1/0.05/0.1")
    load = measure(1.0, settings, duration=120.0)
    assert load.seconds > 0 and load.tokens[OUTPUT] > 0 and 0 < load.busy_fraction <= 1
    # rental alone here: 1.2 per GPU-hour whatever the load, idle included
    assert abs(load.per_hour(load.cost) - 1.2) < 1e-9
    assert abs(sum(load.class_cost.values()) - load.cost) < 1e-12
    head, rule, row = table([load], settings.api_price_lists, "USD")
    assert "USD/h at p" in head and row.startswith("| 1 | ") and row.count("|") == rule.count("|")


def test_readmes_break_even_row_at_one_request_per_second_is_the_benchmarks():
    """README's table comes from `python -m benchmarks.bench_break_even` at its defaults: one row
    of it, rerun (the simulation is seeded and in virtual time, so the figures are the same)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("## Break-even against API prices", 1)[1].split("\n## ", 1)[0]
    (row,) = [line for line in section.splitlines() if line.startswith("| 1 | ")]
    args, settings = arguments([])
    load = measure(1.0, settings, args.duration)
    small, mini = settings.api_price_lists
    rates = " / ".join(f"{load.tokens[c] / load.seconds:.0f}" for c in (INPUT, CACHED_INPUT, OUTPUT))
    expected = (
        f"| 1 | {load.busy_fraction * 100:.0f} % | {rates} | {load.per_hour(load.cost):.3f} | "
        f"{load.fully_loaded_per_million(INPUT):.3f} / {load.fully_loaded_per_million(OUTPUT):.3g} | "
        f"{load.ratio(small):.2f} | {load.ratio(mini):.2f} |"
    )
    assert row == expected
