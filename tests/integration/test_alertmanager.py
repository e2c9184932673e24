"""The output-cost alert, from the shipped rules, reaches a real Alertmanager's webhook when its
threshold is low, and does not when it is high.

Two Prometheus servers scrape the same exporter (beside a real vLLM server under load), each with
a copy of the shipped rules where only TokenEconomyOutputCostHigh's threshold differs: 0.000001
(any traffic crosses it) and 1e12 (none can). Their external label `threshold_case` tells their
alerts apart at the one Alertmanager. In both copies the alert's `for: 30m` is shortened to 2s by
substitution, so the test takes seconds; everything else is the shipped file as it is.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.e2e.vllm_server import HOST
from tests.integration.servers import (
    RULES,
    Alertmanager,
    Prometheus,
    WebhookReceiver,
    rules_with_alert_changed,
    wait_until,
)

ALERT = "TokenEconomyOutputCostHigh"
FOR = "2s"
LOW, HIGH = "0.000001", "1e12"
EVALUATION_S = 1.0
DELIVERY_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def webhook():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def alertmanager(webhook, tmp_path_factory):
    server = Alertmanager(
        tmp_path_factory.mktemp("alertmanager"), webhook.url, group_by=["alertname", "threshold_case"]
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prometheus_pair(exporter_under_load, alertmanager, tmp_path_factory):
    """{"low": Prometheus, "high": Prometheus}, started together; when each started."""
    servers, started = {}, {}
    try:
        for case, threshold in (("low", LOW), ("high", HIGH)):
            workdir = tmp_path_factory.mktemp(f"prometheus-{case}")
            rules = rules_with_alert_changed(RULES, workdir / RULES.name, ALERT, threshold, FOR)
            servers[case] = Prometheus(
                workdir,
                targets=[f"{HOST}:{exporter_under_load.port}"],
                rule_files=[rules],
                alertmanager=f"{HOST}:{alertmanager.port}",
                external_labels={"threshold_case": case},
            ).start()
            started[case] = time.monotonic()
        yield servers, started
    finally:
        for server in servers.values():
            server.stop()


def _alert_rule(prometheus: Prometheus) -> dict:
    return next(r for g in prometheus.rule_groups() for r in g["rules"] if r.get("name") == ALERT)


def test_the_rule_copies_differ_from_the_shipped_file_only_in_threshold_and_for(prometheus_pair):
    servers, _ = prometheus_pair
    shipped = yaml.safe_load(RULES.read_text())
    for case, threshold in (("low", LOW), ("high", HIGH)):
        (path,) = yaml.safe_load(servers[case].config_path.read_text())["rule_files"]
        copy = yaml.safe_load(Path(path).read_text())
        changed = [
            (g["name"], a.get("alert") or a.get("record"))
            for g, h in zip(shipped["groups"], copy["groups"], strict=True)
            for a, b in zip(g["rules"], h["rules"], strict=True)
            if a != b
        ]
        assert changed == [("token_economy.alerts", ALERT)], changed
        # What Prometheus loaded: the substituted threshold and `for:`, the shipped labels.
        rule = _alert_rule(servers[case])
        literal = re.search(r">\s*(\S+)$", rule["query"])
        assert literal and float(literal[1]) == float(threshold), rule["query"]
        assert rule["duration"] == 2 and rule["labels"] == {"severity": "warning"}


def test_low_threshold_alert_reaches_the_webhook(prometheus_pair, webhook):
    _servers, started = prometheus_pair
    received = wait_until(
        lambda: webhook.alerts(alertname=ALERT, threshold_case="low"),
        timeout=DELIVERY_TIMEOUT_S,
        what=f"{ALERT} (threshold {LOW}) at the webhook",
    )
    alert = received[0]
    print(f"{ALERT} reached the webhook {alert['received'] - started['low']:.1f} s after Prometheus started")
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": ALERT,
        "severity": "warning",
        "model_name": "tiny-llama",
        "token_class": "output",
        "currency": "USD",
        "threshold_case": "low",
    }
    assert alert["annotations"]["summary"].startswith("Output tokens of tiny-llama cost ")
    assert alert["annotations"]["summary"].endswith(" USD per million")
    assert "Decode is memory-bound" in alert["annotations"]["description"]


def test_high_threshold_alert_never_fires(prometheus_pair, webhook, alertmanager):
    servers, _ = prometheus_pair
    high = servers["high"]
    record = 'token_economy:fleet_cost_per_million_tokens:rate1h{token_class="output"}'
    # The condition's input exists and is evaluated: the same recorded cost the low copy alerted on.
    values = wait_until(
        lambda: high.query(record),
        timeout=DELIVERY_TIMEOUT_S,
        what="the recorded output cost in the high-threshold Prometheus",
    )
    assert 0 < float(values[0]["value"][1]) < float(HIGH)
    first_data = min(float(v[0]) for v in high.query_range(record, 300)[0]["values"])
    # The pipeline works: the low copy's alert arrives.
    wait_until(
        lambda: webhook.alerts(alertname=ALERT, threshold_case="low"),
        timeout=DELIVERY_TIMEOUT_S,
        what="the low-threshold alert",
    )
    # Then watch until `for:` plus ten evaluations, Alertmanager's group_wait and the resend delay
    # have passed since the data were there: an alert that could fire would have arrived by then.
    quiet_until = first_data + 2 + 10 * EVALUATION_S + 1 + 1
    while time.time() < quiet_until:
        assert not webhook.alerts(alertname=ALERT, threshold_case="high"), "the high-threshold alert fired"
        time.sleep(0.5)
    rule = _alert_rule(high)
    assert rule["health"] == "ok" and rule["state"] == "inactive" and rule["alerts"] == [], rule
    # ... and it was still being evaluated at the end of the watch.
    last = datetime.fromisoformat(rule["lastEvaluation"][:19]).replace(tzinfo=UTC).timestamp()
    assert last >= quiet_until - 3, (rule["lastEvaluation"], quiet_until)
    assert not [
        a
        for a in alertmanager.alerts()
        if a["labels"].get("threshold_case") == "high" and a["labels"]["alertname"] == ALERT
    ]
    assert not webhook.alerts(alertname=ALERT, threshold_case="high")
