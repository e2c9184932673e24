"""Chargeback by team, live: a real Prometheus scrapes the real exporter (fed by the simulator, no
GPU and no vLLM) and two gateway pages in the gateways' real names (tests/gateway_pages.py:
OpenTelemetry GenAI and LiteLLM), with the shipped rules loaded and README's "Chargeback by team"
scrape jobs as its configuration. The teams of each gateway pay the exporter's cost of the model
to within 1e-6 (allocated and fully loaded), the cap folds the smallest teams into "other",
cached input stays apart where the gateway reports it, every chargeback dashboard panel query
returns data, and every block of README's section runs: the configurations (checked by promtool,
the scrape jobs used by this very Prometheus) and the queries."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.vllm_server import HOST, free_port
from tests.gateway_pages import CAP, FOLDED, GatewayPages, Totals, exposition_totals
from tests.integration.servers import (
    REPO_ROOT,
    RULES,
    Prometheus,
    dashboard_queries,
    grafana_interpolate,
    stop_process,
    tool,
    wait_until,
)

README = REPO_ROOT / "README.md"
DASHBOARD = REPO_ROOT / "grafana" / "dashboards" / "token-economy-chargeback.json"
SECTION = "## Chargeback by team"
SCRAPE_S = 1.0
RANGE_S = 30.0
REL_TOL = 1e-6
# README's scrape job of each gateway page.
JOBS = {"litellm": "litellm", "envoy-ai-gateway": "otel"}


# -- README's section and its blocks -------------------------------------------------------------


def readme_section() -> str:
    text = README.read_text()
    start = text.index(f"\n{SECTION}\n")
    end = text.index("\n## ", start + len(SECTION) + 2)
    return text[start:end]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", readme_section(), re.M | re.S)


def yaml_block(key: str) -> dict:
    """README's one YAML block with `key` at its top level."""
    found = [doc for doc in map(yaml.safe_load, blocks("yaml")) if key in doc]
    assert len(found) == 1, f"{len(found)} YAML blocks with {key!r} in README's {SECTION!r}"
    return found[0]


def test_readme_section_has_its_blocks():
    assert len(blocks("yaml")) == 4 and len(blocks("promql")) >= 6
    assert {key for doc in map(yaml.safe_load, blocks("yaml")) for key in doc} >= {
        "controller",
        "model_list",
        "scrape_configs",
        "receivers",
    }


def test_readme_gateway_configurations_name_what_the_rules_read():
    rules = RULES.read_text()
    # Envoy AI Gateway: the header goes to the attribute the OpenTelemetry rule reads as `team`.
    header, attribute = yaml_block("controller")["controller"]["metricsRequestHeaderAttributes"].split(":")
    assert header.startswith("x-") and attribute == "team"
    assert re.search(r"sum by \(model_name, team, token_class\) \(\n\s+label_replace", rules)
    # LiteLLM: the deployment's provider prefix is one the rules strip, and prometheus is on.
    config = yaml_block("model_list")
    prefix = config["model_list"][0]["litellm_params"]["model"].split("/")[0]
    assert "(?:hosted_vllm|openai|vllm)/(.+)" in rules and prefix in ("hosted_vllm", "openai", "vllm")
    assert "prometheus" in config["litellm_settings"]["callbacks"]
    # The collector: OTLP in, the Prometheus exporter out, with its default (suffixed) names.
    collector = yaml_block("receivers")
    assert collector["service"]["pipelines"]["metrics"] == {"receivers": ["otlp"], "exporters": ["prometheus"]}
    assert set(collector["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert collector["exporters"]["prometheus"].get("add_metric_suffixes", True) is True
    assert re.fullmatch(r"[0-9.]+:\d+", collector["exporters"]["prometheus"]["endpoint"])


# -- the processes -------------------------------------------------------------------------------


def exporter_totals(url: str) -> Totals:
    return exposition_totals(httpx.get(url, timeout=2.0).text)


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    """`token-economy-exporter simulate`: the real exporter reading a simulated vLLM and GPU."""
    workdir = tmp_path_factory.mktemp("chargeback-exporter")
    port = free_port()
    log = open(workdir / "simulate.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "simulate",
            "--listen-address",
            f"{HOST}:{port}",
            "--speed",
            "10",
            "--interval",
            "0.5",
            "--refresh",
            "3600",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://{HOST}:{port}/metrics"

    def counting() -> bool:
        assert proc.poll() is None, (workdir / "simulate.log").read_text()
        try:
            return any(t["output"] > 0 and t["cached_input"] > 0 for t in exporter_totals(url).values())
        except httpx.HTTPError:
            return False

    try:
        wait_until(counting, timeout=60, what="the simulated exporter counting every token class")
        yield url
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def model(exporter) -> str:
    (name,) = exporter_totals(exporter)
    return name


@pytest.fixture(scope="module")
def gateways(exporter):
    prefix = yaml_block("model_list")["model_list"][0]["litellm_params"]["model"].split("/")[0] + "/"
    with GatewayPages(lambda: exporter_totals(exporter), litellm_model_prefix=prefix) as pages:
        yield pages


def readme_scrape_jobs(gateways: GatewayPages) -> list[dict]:
    """README's scrape jobs, each pointed at this test's page of its gateway."""
    jobs = yaml_block("scrape_configs")["scrape_configs"]
    assert {job["job_name"] for job in jobs} == set(JOBS)
    for job in jobs:
        (static,) = job["static_configs"]
        assert len(static["targets"]) == 1
        static["targets"] = [gateways.address(JOBS[job["job_name"]])]
    return jobs


@pytest.fixture(scope="module")
def prometheus(exporter, gateways, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prometheus-chargeback")
    server = Prometheus(
        workdir, targets=[exporter.removeprefix("http://").removesuffix("/metrics")], rule_files=[RULES]
    )
    config = yaml.safe_load(server.config_path.read_text())
    config["scrape_configs"] += readme_scrape_jobs(gateways)
    server.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    checked = subprocess.run(
        [tool("promtool"), "check", "config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    server.start()
    try:
        wait_until(
            lambda: (
                len(server.query("count by (gateway) (token_economy:team_cost_per_second_fully_loaded:rate5m)")) == 2
            ),
            timeout=60,
            what="team costs of both gateways",
        )
        yield server
    finally:
        server.stop()


# -- conservation, cap, classes ------------------------------------------------------------------


def _by(result: list[dict], *labels: str) -> dict[tuple, float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result}


def _instant(prometheus: Prometheus, expr: str, at: float) -> list[dict]:
    return prometheus.api("query", query=expr, time=f"{at:.3f}")["result"]


def _fleet_samples(prometheus: Prometheus, expr: str, at: float) -> list[tuple[float, str, float]]:
    """(timestamp, currency, value) of the last two samples of a fleet rule (summed over classes) up
    to `at`: the rate5m group's last evaluation and the one before (if any)."""
    out: list[tuple[float, str, float]] = []
    for _ in range(2):
        found = _instant(prometheus, f"max(timestamp({expr}))", at)
        if not found:  # the rule's first sample
            break
        at = float(found[0]["value"][1])
        ((currency, value),) = _by(_instant(prometheus, f"sum by (currency) ({expr})", at), "currency").items()
        out.append((at, currency[0], value))
        at -= 0.001
    return out


def test_each_gateways_teams_pay_the_models_cost(prometheus, model):
    """At three evaluations of the chargeback rules: each gateway's teams together cost the fleet
    cost the rules read (the exporter's, as the rate5m group recorded it at its last evaluation,
    or the one before when both groups evaluated at the same moment), to within 1e-6 relative,
    allocated and fully loaded; and that fleet cost is the rate of the exporter's own counters."""
    sel = f'model_name="{model}"'
    cases = {
        "allocated": (
            "token_economy:team_cost_per_second:rate5m",
            f'token_economy:fleet_cost_per_second:rate5m{{{sel},token_class!="idle"}}',
            f'rate(token_economy_cost_total{{{sel},token_class!="idle"}}[5m])',
        ),
        "fully loaded": (
            "token_economy:team_cost_per_second_fully_loaded:rate5m",
            f"token_economy:fleet_cost_per_second:rate5m{{{sel}}}",
            f"rate(token_economy_cost_total{{{sel}}}[5m])",
        ),
    }
    worst = 0.0
    for _ in range(3):
        (team,) = prometheus.query(f"max(timestamp(token_economy:team_cost_per_second:rate5m{{{sel}}}))")
        t_team = float(team["value"][1])
        for what, (team_rule, fleet_rule, raw) in cases.items():
            teams = _by(
                _instant(prometheus, f"sum by (gateway, currency) ({team_rule}{{{sel}}})", t_team),
                "gateway",
                "currency",
            )
            assert {g for g, _ in teams} == {"otel", "litellm"}, teams
            fleet = _fleet_samples(prometheus, fleet_rule, t_team)
            for (gateway, currency), cost in teams.items():
                t_fleet, fleet_currency, fleet_cost = min(fleet, key=lambda f: abs(cost - f[2]))
                assert currency == fleet_currency and fleet_cost > 0
                error = abs(cost - fleet_cost) / fleet_cost
                assert error <= REL_TOL, f"{what} {gateway}: teams {cost!r}, model {fleet!r} ({error:.2e})"
                worst = max(worst, error)
                ((_, raw_cost),) = _by(_instant(prometheus, f"sum by (currency) ({raw})", t_fleet), "currency").items()
                assert abs(raw_cost - fleet_cost) <= REL_TOL * fleet_cost, (what, raw_cost, fleet_cost)
        time.sleep(1.1)
    print(f"largest relative difference between a gateway's teams and the model's cost: {worst:.3e}")


def test_the_cap_folds_the_smallest_teams_into_other(prometheus, model):
    def teams(rule: str) -> set[str]:
        return {r["metric"]["team"] for r in prometheus.query(f'{rule}{{gateway="litellm",model_name="{model}"}}')}

    seen = {
        r["metric"]["team"]
        for r in prometheus.query('token_economy:gateway_tokens_per_second:rate5m{gateway="litellm"}')
    }
    assert len(seen) == CAP + len(FOLDED) and "unassigned" in seen and "search" in seen and "t-ads" in seen
    kept = teams("token_economy:team_tokens_per_second:rate5m")
    assert len(kept) == CAP + 1 and "other" in kept and not kept & set(FOLDED)
    assert teams("token_economy:team_cost_per_second:rate5m") == kept
    # The fold keeps the sums: at one evaluation, the capped and the uncapped tokens agree.
    (t,) = prometheus.query('max(timestamp(token_economy:team_tokens_per_second:rate5m{gateway="litellm"}))')
    at = float(t["value"][1])
    capped = _by(
        _instant(
            prometheus, 'sum by (token_class) (token_economy:team_tokens_per_second:rate5m{gateway="litellm"})', at
        ),
        "token_class",
    )
    whole = _by(
        _instant(
            prometheus, 'sum by (token_class) (token_economy:gateway_tokens_per_second:rate5m{gateway="litellm"})', at
        ),
        "token_class",
    )
    assert set(capped) == set(whole) == {("billed_input",), ("output",)}
    for key, value in whole.items():
        assert abs(capped[key] - value) <= 1e-9 * value, key
    other = _instant(
        prometheus,
        'token_economy:team_tokens_per_second:rate5m{gateway="litellm",team="other",token_class="output"}',
        at,
    )
    folded_teams = "|".join(FOLDED)
    folded = _instant(
        prometheus,
        f'sum(token_economy:gateway_tokens_per_second:rate5m{{gateway="litellm",team=~"{folded_teams}",token_class="output"}})',
        at,
    )
    assert abs(float(other[0]["value"][1]) - float(folded[0]["value"][1])) <= 1e-9 * float(folded[0]["value"][1])


def test_cached_input_stays_apart_where_the_gateway_reports_it(prometheus, model):
    classes = {
        gateway: {
            r["metric"]["token_class"]
            for r in prometheus.query(f'token_economy:team_cost_per_second:rate5m{{gateway="{gateway}"}}')
        }
        for gateway in ("otel", "litellm")
    }
    assert classes == {"otel": {"input", "cached_input", "output"}, "litellm": {"billed_input", "output"}}
    # The gateway pages count what the exporter counted (coverage tends to 1; in the first minutes
    # the rates' windows start at different scrapes, so only its presence is checked here).
    coverage = _by(prometheus.query("token_economy:gateway_coverage:ratio_rate5m"), "gateway", "token_class")
    assert set(coverage) == {
        ("otel", "input"),
        ("otel", "cached_input"),
        ("otel", "output"),
        ("otel", "billed_input"),
        ("litellm", "output"),
        ("litellm", "billed_input"),
    }
    assert all(0 < value < float("inf") for value in coverage.values()), coverage
    # Requests without the team header are still charged.
    assert prometheus.query('token_economy:team_cost_per_second:rate5m{gateway="otel",team="unassigned"}')


def test_the_chargeback_rules_evaluate_without_error(prometheus):
    (group,) = [g for g in prometheus.rule_groups() if g["name"] == "token_economy.recording.chargeback"]
    assert [(r["name"], r["lastError"]) for r in group["rules"] if r["health"] != "ok"] == []
    records = {r["name"] for r in group["rules"]}
    present = {
        s["metric"]["__name__"]
        for s in prometheus.query('count by (__name__) ({__name__=~"token_economy:(team|gateway)_.+"})')
    }
    assert records == present


# -- the dashboard and README's queries ----------------------------------------------------------


def _without_data(prometheus: Prometheus, queries: dict, timeout: float) -> dict:
    started = time.monotonic()
    missing = dict(queries)
    while True:
        missing = {k: e for k, e in missing.items() if not prometheus.query_range(e, RANGE_S)}
        if not missing or time.monotonic() - started > timeout:
            return missing
        time.sleep(1)


def test_every_chargeback_panel_query_returns_data(prometheus):
    queries = {
        (title, ref): grafana_interpolate(expr, scrape_interval_s=SCRAPE_S, step_s=1, range_s=RANGE_S)
        for title, ref, expr in dashboard_queries(DASHBOARD)
    }
    assert len(queries) >= 8
    missing = _without_data(prometheus, queries, timeout=30)
    assert not missing, "panel queries without data:\n" + "\n".join(f"{w}: {e}" for w, e in missing.items())


def test_every_readme_query_returns_data(prometheus):
    queries = blocks("promql")
    for expr in queries:
        assert prometheus.query(expr), f"README query without data:\n{expr}"
    # The conservation recipe says 1. Queried now, the fleet cost may already be a newer sample
    # than the one the chargeback rules read (they evaluate in another group, at most one
    # evaluation later); queried at the instant of the rules' evaluation, it is the same one (but
    # for the moment both groups evaluate together: then the next evaluation decides).
    (check,) = [q for q in queries if "fleet_cost_per_second" in q]
    for _ in range(5):
        (team,) = prometheus.query("max(timestamp(token_economy:team_cost_per_second:rate5m))")
        ratios = [float(r["value"][1]) for r in _instant(prometheus, check, float(team["value"][1]))]
        assert len(ratios) == 2, ratios
        if all(abs(r - 1) <= REL_TOL for r in ratios):
            break
        time.sleep(1.1)
    assert all(abs(r - 1) <= REL_TOL for r in ratios), ratios


def test_a_query_of_a_missing_series_is_caught(prometheus):
    """The checks above can fail: a misspelt rule and an unknown gateway come back empty."""
    assert not prometheus.query("token_economy:team_cost_per_second:rate1m")
    assert not prometheus.query('token_economy:team_cost_per_second:rate5m{gateway="kong"}')


def test_readme_names_this_test():
    assert Path(__file__).relative_to(REPO_ROOT).as_posix() in readme_section()
