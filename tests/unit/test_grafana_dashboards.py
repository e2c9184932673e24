"""The committed dashboard JSON is well formed: units on every panel, legends shown, refIds set,
every query filtered by the template variables. (That it is exactly what grafana/*.py builds is
checked with every other derived file by tests/unit/test_derived_assets.py, through
scripts/assets.py's check; that every query returns data from a real Prometheus scraping a real
exporter, by tests/integration/test_dashboards_live.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exporter.catalogue import CATALOGUE
from tests.scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERVIEW = REPO_ROOT / "grafana" / "dashboards" / "token-economy-overview.json"

# Exporter metrics that carry a model_name label (the others are per process: GPUs, sources, ticks).
MODEL_METRICS = {family.full_name for family in CATALOGUE if "model_name" in family.labels}
SELECTOR = re.compile(r"\b(token_economy_[a-z0-9_]+)(\{[^}]*\})?")


def dashboards() -> list[tuple[str, dict]]:
    return [
        (path.name, json.loads(path.read_text()))
        for path in sorted((REPO_ROOT / "grafana" / "dashboards").glob("*.json"))
    ]


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_every_dashboard_file_comes_from_the_code():
    assert sorted(name for name, _ in dashboards()) == sorted(load_script("assets").DASHBOARDS)


@pytest.mark.parametrize(("name", "board"), dashboards())
def test_panels_have_units_legends_refids_and_datasources(name, board):
    assert panels(board), name
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {ids}"
    for panel in panels(board):
        where = f"{name}: panel {panel['id']} {panel['title']!r}"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
        assert panel.get("description"), f"{where} has no description"
        assert panel["targets"], f"{where} has no query"
        ref_ids = [t.get("refId") for t in panel["targets"]]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), f"{where}: refIds {ref_ids}"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert target["expr"].strip() and target.get("legendFormat"), where
        if panel["type"] == "timeseries":
            assert panel["options"]["legend"]["showLegend"] is True, f"{where}: legend hidden"
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert all(p["collapsed"] is False and p["panels"] == [] for p in rows), f"{name}: rows must be open and flat"


@pytest.mark.parametrize(("name", "board"), dashboards())
def test_every_selector_is_filtered_by_the_template_variables(name, board):
    variables = {v["name"]: v for v in board["templating"]["list"]}
    exprs = " ".join(t["expr"] for p in panels(board) for t in p["targets"])
    # instance: on the boards that read the exporter's own series (the chargeback board reads
    # only recording rules summed over instances).
    wanted = ("model_name", "instance") if SELECTOR.search(exprs) else ("model_name",)
    for var in wanted:
        assert variables[var]["includeAll"] and variables[var]["allValue"] == ".*" and variables[var]["multi"]
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(board):
        for target in panel["targets"]:
            for metric, labels in SELECTOR.findall(target["expr"]):
                where = f"{name}: panel {panel['title']!r} {target['refId']} {metric}"
                assert labels, f"{where}: unfiltered selector"
                assert 'instance=~"$instance"' in labels, where
                if metric in MODEL_METRICS:
                    assert 'model_name=~"$model_name"' in labels, where


def test_overview_covers_what_the_issue_asks_for():
    board = json.loads(OVERVIEW.read_text())
    titles = " | ".join(p["title"] for p in panels(board))
    for wanted in (
        "input vs cached input vs output",
        "Energy per token",
        "Energy split",
        "Idle share",
        "GPU power",
        "Tokens per second",
        "Marginal energy per token (value ± 1σ)",
        "Sources up",
        "Source read errors",
        "Counter resets",
    ):
        assert wanted in titles, wanted
    exprs = " ".join(t["expr"] for p in panels(board) for t in p["targets"])
    assert "token_economy_marginal_energy_joules_per_token_stddev" in exprs
    assert "fully loaded" in titles


# The chargeback rules' series (per gateway, model and team) and the fleet cost they divide.
RULE_SELECTOR = re.compile(r"\b(token_economy:[a-z0-9_]+:[a-z0-9_]+)(\{[^}]*\})?")


def test_the_chargeback_board_filters_every_rule_series_by_gateway_model_and_team():
    board = json.loads((REPO_ROOT / "grafana" / "dashboards" / "token-economy-chargeback.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for var in ("gateway", "model_name", "team"):
        assert variables[var]["includeAll"] and variables[var]["allValue"] == ".*", var
    titles = " | ".join(p["title"] for p in panels(board))
    for wanted in ("Cost per team, fully loaded", "Share of each model's cost", "Idle cost", "coverage"):
        assert wanted in titles, wanted
    for panel in panels(board):
        for target in panel["targets"]:
            found = RULE_SELECTOR.findall(target["expr"])
            assert found, f"{panel['title']!r} reads no recording rule"
            for metric, labels in found:
                where = f"{panel['title']!r} {target['refId']} {metric}"
                assert 'model_name=~"$model_name"' in labels, where
                if metric != "token_economy:fleet_cost_per_second:rate5m":
                    assert 'gateway=~"$gateway"' in labels, where
