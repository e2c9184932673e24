"""The HTTP benchmark's figures and table; the servers and scrapers themselves run only in
`python -m benchmarks.bench_http` (they open sockets)."""

import math

import pytest

from benchmarks.bench_http import HEADER, Run, percentile, row, table


def test_percentile_is_the_nearest_rank():
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 0.5) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile(samples, 1.0) == 100.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([7.0], 0.99) == 7.0


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 0.5))


def test_a_row_gives_milliseconds_rate_and_failures():
    run = Run("ours", "20 scrapers", 2.0, [0.001] * 99 + [0.050])
    assert row(run) == ["ours", "20 scrapers", "1.00", "1.00", "50", "100", "no"]
    run.latencies.append(0.2)
    assert row(run)[3] == "50.00"
    failed = Run("uvicorn", "hostile", 5.0, [], failures=3, first_failure="TimeoutError")
    assert row(failed) == ["uvicorn", "hostile", "nan", "nan", "0", "0", "yes: 3 (TimeoutError)"]


def test_the_table_is_markdown_with_one_line_a_run():
    runs = [Run("ours", "a", 1.0, [0.002]), Run("prometheus_client", "b", 1.0, [0.004, 0.006])]
    lines = table(runs).splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2].startswith("| ours | a | 2.00 | 2.00 | 1 | 1 | no |")
    assert len(lines) == 4 and all(line.count("|") == len(HEADER) + 1 for line in lines)


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_a_run_without_time_has_no_rate(seconds):
    assert row(Run("ours", "a", seconds, [0.001]))[4] == "0"
