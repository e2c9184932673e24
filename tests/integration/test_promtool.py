"""The shipped rules pass the real `promtool check rules` and `promtool test rules`; a wrong
expectation makes promtool fail (so these tests can fail); and the rule and test files keep the
properties the Helm chart and Prometheus 2.42 rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.servers import RULE_TESTS, RULES, tool

PROM_DIR = RULES.parent


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def rules_doc() -> dict:
    return yaml.safe_load(RULES.read_text())


def all_rules() -> list[dict]:
    return [rule for group in rules_doc()["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


def test_check_rules_passes():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout, result.stdout


def test_unit_tests_pass():
    assert RULE_TESTS, "no deploy/prometheus/tests/*.test.yml"
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


# Each case changes one expectation of the shipped tests into a wrong one:
# (test file, right text, wrong text, what promtool's report must name).
WRONG_EXPECTATIONS = {
    # A recording rule value off by 2^-20.
    "recording value": (
        "recording.test.yml",
        "            value: 1464.84375\n",
        "            value: 1464.8437509536743\n",
        "token_economy:cost_per_million_tokens:rate5m",
    ),
    # The output-cost alert claimed not to fire at 40 minutes, where it does.
    "alert fires": (
        "alerts.test.yml",
        "      - alertname: TokenEconomyOutputCostHigh\n        eval_time: 25m\n",
        "      - alertname: TokenEconomyOutputCostHigh\n        eval_time: 40m\n",
        "TokenEconomyOutputCostHigh",
    ),
    # The source-down alert claimed to fire before its `for:` has elapsed.
    "alert pending": (
        "alerts.test.yml",
        "      - alertname: TokenEconomySourceDown\n        eval_time: 12m\n",
        "      - alertname: TokenEconomySourceDown\n        eval_time: 9m\n",
        "TokenEconomySourceDown",
    ),
    # The energy alert claimed for a pod that was modelled only briefly, not for one modelled throughout.
    "alert per pod": (
        "energy.test.yml",
        "              namespace: batch\n              pod: vllm-d\n",
        "              namespace: ml-serving\n              pod: vllm-c\n",
        "TokenEconomyEnergyModelled",
    ),
    # The break-even alert claimed for the model that is cheaper than the API.
    "break-even model": (
        "breakeven.test.yml",
        "              model_name: dear\n              reference: mini\n",
        "              model_name: cheap\n              reference: mini\n",
        "TokenEconomySelfHostingCostsMore",
    ),
    # A wrong severity label.
    "alert labels": (
        "attribution.test.yml",
        "              severity: info\n",
        "              severity: warning\n",
        "TokenEconomyAttributionNotIdentified",
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_EXPECTATIONS))
def test_a_wrong_expectation_fails(case, tmp_path):
    """promtool exits 1 when one expectation is wrong: the unit tests above can fail."""
    name, right, wrong, named = WRONG_EXPECTATIONS[case]
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "tests").mkdir()
    text = (PROM_DIR / "tests" / name).read_text()
    assert text.count(right) == 1, f"{case}: the shipped test changed; update this case"
    (tmp_path / "tests" / name).write_text(text.replace(right, wrong))
    result = promtool("test", "rules", str(tmp_path / "tests" / name))
    assert result.returncode == 1, result.stdout + result.stderr
    report = result.stdout + result.stderr
    assert "FAILED" in report and named in report, report


def test_every_alert_is_tested_firing_and_not_firing():
    groups = [group for path in RULE_TESTS for group in yaml.safe_load(path.read_text())["tests"]]
    cases = [case for group in groups for case in group.get("alert_rule_test", [])]
    for alert in alerts():
        name = alert["alert"]
        assert any(c["alertname"] == name and c.get("exp_alerts") for c in cases), f"{name} never shown firing"
        assert any(c["alertname"] == name and not c.get("exp_alerts") for c in cases), f"{name} never shown not firing"


def test_every_recording_rule_has_an_expected_value():
    exprs = " ".join(
        case["expr"]
        for path in RULE_TESTS
        for group in yaml.safe_load(path.read_text())["tests"]
        for case in group.get("promql_expr_test", [])
    )
    for record in sorted({rule["record"] for rule in all_rules() if "record" in rule}):
        assert re.search(re.escape(record) + r"(?![a-z_:])", exprs), f"{record} has no promql_expr_test"


def test_alerts_have_for_severity_and_annotations_with_the_value():
    assert {a["alert"] for a in alerts()} == {
        "TokenEconomyOutputCostHigh",
        "TokenEconomyInputCostHigh",
        "TokenEconomyIdleCostShareHigh",
        "TokenEconomySelfHostingCostsMore",
        "TokenEconomyAttributionNotIdentified",
        "TokenEconomySourceDown",
        "TokenEconomyEnergyModelled",
        "TokenEconomyExporterDown",
        "TokenEconomyExporterAbsent",
    }
    for alert in alerts():
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"] and "$value" in alert["annotations"]["description"], alert["alert"]
    assert (
        next(a for a in alerts() if a["alert"] == "TokenEconomyAttributionNotIdentified")["labels"]["severity"]
        == "info"
    )


# The thresholds the Helm chart templates, with their shipped defaults.
THRESHOLDS = {
    "TokenEconomyOutputCostHigh": 10.0,
    "TokenEconomyInputCostHigh": 2.0,
    "TokenEconomyIdleCostShareHigh": 0.8,
    "TokenEconomySelfHostingCostsMore": 1.0,
}


def test_each_threshold_is_one_number_literal_on_a_marked_line():
    lines = RULES.read_text().splitlines()
    for name, default in THRESHOLDS.items():
        start = lines.index(f"      - alert: {name}")
        assert lines[start + 1].startswith("        # threshold: "), name
        match = re.fullmatch(r"        expr: (\S.*\S) > ([0-9.]+)", lines[start + 2])
        assert match and float(match[2]) == default, (name, lines[start + 2])
        assert "{{" not in lines[start + 2]


def test_rules_use_nothing_newer_than_prometheus_2_42():
    doc = rules_doc()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"}, f"group keys {set(group)}: no labels/query_offset/limit"
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), f"{name!r} is not a classic metric name"
            for label in rule.get("labels", {}):
                assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label), label
            for newer in ("limitk", "limit_ratio", "sort_by_label", "info(", "double_exponential_smoothing"):
                assert newer not in rule["expr"], f"{name}: {newer} needs Prometheus 3"


def test_the_energy_alert_fires_per_exporter_and_says_how_to_measure():
    (alert,) = [a for a in alerts() if a["alert"] == "TokenEconomyEnergyModelled"]
    # No aggregation: one alert per scraped exporter (per vLLM pod), carrying its target labels.
    assert alert["expr"].strip() == "token_economy_energy_modelled == 1"
    assert alert["for"] == "10m" and alert["labels"] == {"severity": "warning"}
    description = " ".join(alert["annotations"]["description"].split())
    for route in ("deploy/vllm-plugin/Dockerfile", "init container", "TOKEN_ECONOMY_DCGM_URL", "ResourceClaim"):
        assert route in description, route
    assert "NVIDIA_VISIBLE_DEVICES" in description
