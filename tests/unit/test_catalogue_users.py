"""The dashboards, the rules and the rules' promtool tests name only series the exporter exposes:
every raw `token_economy_…` series in them belongs to a family of the metric catalogue (a
counter's `_total`, a summary's `_sum` and `_count` included). Recording rules are named
`token_economy:…`, with a colon, and are not raw series."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]
SERIES = re.compile(r"\btoken_economy_[a-z0-9_]+")
USERS = sorted(
    [
        *(ROOT / "grafana" / "dashboards").glob("*.json"),
        ROOT / "deploy" / "prometheus" / "token-economy.rules.yml",
        *(ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"),
    ]
)


def test_there_are_dashboards_rules_and_rule_tests():
    names = [p.relative_to(ROOT).as_posix() for p in USERS]
    assert any(n.startswith("grafana/dashboards/") for n in names), names
    assert any(n.startswith("deploy/prometheus/tests/") for n in names), names
    assert "deploy/prometheus/token-economy.rules.yml" in names


@pytest.mark.parametrize("path", USERS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_series_named_is_exposed_by_a_catalogue_family(path):
    named = set(SERIES.findall(path.read_text()))
    assert named, f"{path.name} names no token_economy_ series: is the pattern still right?"
    unknown = sorted(series for series in named if CATALOGUE.owner(series) is None)
    assert not unknown, f"{path.name} names series no catalogue family exposes: {unknown}"


def test_the_check_can_fail():
    assert CATALOGUE.owner("token_economy_cost_total") is CATALOGUE["token_economy_cost_total"]
    assert CATALOGUE.owner("token_economy_source_read_duration_seconds_sum") is not None
    assert CATALOGUE.owner("token_economy_no_such_family") is None
    assert SERIES.findall("token_economy:fleet_cost_per_token:rate5m") == []
    with pytest.raises(KeyError):
        CATALOGUE.name("no_such_family")
