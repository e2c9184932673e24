"""A real Prometheus scrapes the exporter beside a real vLLM server under load, with the shipped
rules loaded, and every query of every committed dashboard panel returns data through its HTTP API.
Both gateways' pages (tests/gateway_pages.py) split that exporter's tokens over teams, so the
chargeback dashboard and rules are evaluated on the real vLLM's series too.

A second exporter, pointed at a port where no vLLM listens, is scraped too: the source-health
panels then show a real failing source (source_up 0, connection errors), not only zeros."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import pytest

from tests.e2e.vllm_server import HOST, free_port
from tests.gateway_pages import GatewayPages, exposition_totals
from tests.integration.servers import (
    DASHBOARDS,
    RULES,
    Prometheus,
    dashboard_queries,
    grafana_interpolate,
    wait_until,
)

SCRAPE_S = 1.0
RANGE_S = 30.0  # the panels' time range in the test: the last 30 s, one point per second


@pytest.fixture(scope="module")
def exporter_without_vllm(tmp_path_factory):
    """An exporter whose vLLM never answers: it serves /metrics, never becomes ready."""
    workdir = tmp_path_factory.mktemp("exporter-no-vllm")
    port = free_port()
    log = open(workdir / "exporter.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "run",
            "--vllm-url",
            f"http://{HOST}:{free_port()}",
            "--listen-address",
            f"{HOST}:{port}",
            "--interval",
            "0.5",
            "--energy-source",
            "phase-model",
            "--gpu-type",
            "H100",
            "--gpu-hourly-price",
            "3",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _serves(port) or proc.poll() is not None, timeout=30, what="the exporter's /healthz")
        assert proc.poll() is None, (workdir / "exporter.log").read_text()
        yield f"{HOST}:{port}"
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def _serves(port: int) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def gateways(exporter_under_load):
    """Both gateways' pages, counting per team the tokens the exporter beside vLLM counts: the
    chargeback dashboard and rules then have real series too."""
    page = f"{exporter_under_load.url}/metrics"
    with GatewayPages(lambda: exposition_totals(httpx.get(page, timeout=2.0).text)) as pages:
        yield pages


@pytest.fixture(scope="module")
def prometheus(exporter_under_load, exporter_without_vllm, gateways, tmp_path_factory):
    server = Prometheus(
        tmp_path_factory.mktemp("prometheus-dashboards"),
        targets=[
            f"{HOST}:{exporter_under_load.port}",
            exporter_without_vllm,
            gateways.address("otel"),
            gateways.address("litellm"),
        ],
        rule_files=[RULES],
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _all_queries():
    return [(path.name, title, ref, expr) for path in DASHBOARDS for title, ref, expr in dashboard_queries(path)]


def test_the_dashboards_have_queries():
    assert DASHBOARDS and len(_all_queries()) >= 20


def queries_without_data(prometheus: Prometheus, queries: dict, timeout: float) -> dict:
    """The queries (name -> PromQL) whose range query over the last RANGE_S seconds is still empty
    after `timeout` seconds, asking again only for those that have not returned data yet."""
    started = time.monotonic()
    missing = dict(queries)
    while True:
        missing = {name: expr for name, expr in missing.items() if not prometheus.query_range(expr, RANGE_S)}
        if not missing or time.monotonic() - started > timeout:
            return missing
        time.sleep(1)


def panel_queries() -> dict:
    """Every query of every panel, as Grafana would send it with every variable set to All."""
    return {
        tuple(where): grafana_interpolate(expr, scrape_interval_s=SCRAPE_S, step_s=1, range_s=RANGE_S)
        for *where, expr in _all_queries()
    }


def test_every_panel_query_returns_data(prometheus):
    queries = panel_queries()
    # Rates need two scrapes of a moving counter in their window: Prometheus gets some seconds.
    started = time.monotonic()
    missing = queries_without_data(prometheus, queries, timeout=45)
    assert not missing, "panel queries without data:\n" + "\n".join(f"{w}: {e}" for w, e in missing.items())
    print(f"all {len(queries)} dashboard queries returned data within {time.monotonic() - started:.1f} s")


def test_a_query_of_a_missing_series_is_caught(prometheus):
    """The check above can fail: the same queries with one metric misspelt, or one label value
    that no series has, come back empty."""
    queries = panel_queries()
    (title, ref), expr = next((k[1:], v) for k, v in queries.items() if "token_economy_tokens_total" in v)
    wrong = {
        "misspelt metric": expr.replace("token_economy_tokens_total", "token_economy_token_total"),
        "unknown model": expr.replace('model_name=~".*"', 'model_name=~"no-such-model"'),
    }
    assert queries_without_data(prometheus, wrong, timeout=2) == wrong, (title, ref)


def test_every_metric_a_panel_names_exists(prometheus):
    """No misspelt metric hides behind an `or` fallback or a ratio: each one is in Prometheus."""
    names = set(prometheus.api("label/__name__/values"))
    wanted = {m for *_, expr in _all_queries() for m in re.findall(r"\btoken_economy_[a-z_]+", expr)}
    assert wanted and not wanted - names, f"not exported: {sorted(wanted - names)}"


def test_the_failing_source_shows_on_the_health_panels(prometheus, exporter_without_vllm):
    down = wait_until(
        lambda: prometheus.query(f'token_economy_source_up{{instance="{exporter_without_vllm}",source="vllm"}} == 0'),
        timeout=20,
        what="source_up 0 of the exporter without vLLM",
    )
    assert down
    errors = wait_until(
        lambda: prometheus.query(
            f'rate(token_economy_source_errors_total{{instance="{exporter_without_vllm}",source="vllm"}}[5s]) > 0'
        ),
        timeout=20,
        what="connection errors counted",
    )
    assert {e["metric"]["reason"] for e in errors} == {"connection"}


def test_every_recording_rule_evaluates_to_data_on_real_series(prometheus):
    """The shipped rules load, evaluate without error on real series, and each recorded series exists."""
    groups = prometheus.rule_groups()
    assert {g["name"] for g in groups} == {
        "token_economy.recording.rate5m",
        "token_economy.recording.rate1d",
        "token_economy.recording.rate1h",
        "token_economy.recording.chargeback",
        "token_economy.alerts",
    }
    records = {r["name"] for g in groups for r in g["rules"] if r["type"] == "recording"}
    assert len(records) >= 20

    def missing() -> set:
        present = {
            s["metric"]["__name__"] for s in prometheus.query('count by (__name__) ({__name__=~"token_economy:.+"})')
        }
        return records - present

    wait_until(lambda: not missing(), timeout=30, what="a series of every recording rule")
    assert [
        (r["name"], r["lastError"]) for g in prometheus.rule_groups() for r in g["rules"] if r["health"] != "ok"
    ] == []
    classes = {s["metric"]["token_class"] for s in prometheus.query("token_economy:cost_per_million_tokens:rate5m")}
    assert classes == {"input", "cached_input", "output", "billed_input"}
