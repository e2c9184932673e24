"""helm/token-economy-exporter with the real Helm: lint --strict and template over the values files
in ci/; every rendered object valid for Kubernetes 1.29 and the newest kubernetes-validate
carries (strict); the Prometheus Operator objects valid for the Operator's models; the
PrometheusRule's rules accepted by promtool and, at default values, exactly those of
deploy/prometheus; each object toggleable; the values schema enforced; the sidecar template
usable from a chart of one's own, as the chart's README shows."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.integration.k8s_tools import (
    CHART,
    KUSTOMIZE,
    RULES,
    by_kind,
    check_dashboards,
    check_operator_objects,
    check_pod,
    check_settings_accepted,
    documents,
    exporter_environment,
    kubernetes_validate,
    one,
    promtool_check,
    run,
    source_rules,
    tool,
    validate_both_versions,
)

ROOT = CHART.parents[1]
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def helm(*args: str, check: bool = True):
    return run(tool("helm"), *args, check=check)


def template(*args: str, chart: Path = CHART, check: bool = True):
    return helm("template", "tee", str(chart), "--namespace", "ml-serving", *args, check=check)


def render(*args: str) -> list[dict]:
    return documents(template(*args).stdout)


def alerts(spec: dict) -> dict[str, dict]:
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule}


def test_there_are_values_files_for_defaults_monitoring_only_and_everything_on():
    assert [p.name for p in VALUES_FILES] == [
        "defaults-values.yaml",
        "everything-on-values.yaml",
        "monitoring-only-values.yaml",
    ]


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_lint_strict(values):
    result = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_rendered_object_is_valid_for_1_29_and_the_newest_kubernetes(values, tmp_path):
    text = template("-f", str(values)).stdout
    validate_both_versions(text, tmp_path)
    assert check_operator_objects(documents(text)) >= 2


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_the_rules_pass_promtool_and_the_dashboards_are_shipped(values, tmp_path):
    docs = render("-f", str(values))
    promtool_check(one(docs, "PrometheusRule")["spec"], tmp_path)
    check_dashboards(docs)


def test_at_default_values_the_rules_are_exactly_deploy_prometheus():
    spec = one(render(), "PrometheusRule")["spec"]
    assert spec == source_rules(), (
        "the chart's rules differ from deploy/prometheus (run python scripts/assets.py, "
        "and make values.yaml's prometheusRule.thresholds the file's literals)"
    )


def test_every_marked_threshold_is_a_value_with_the_files_default():
    # The rules file marks each templatable number with a `# threshold:` comment in its alert.
    text = RULES.read_text()
    marked = {}
    for block in re.split(r"\n\s*- (?=alert:)", text)[1:]:
        name = re.match(r"alert:\s*(\S+)", block).group(1)
        if "# threshold:" in block.split("\n  - ")[0]:
            expr = alerts(source_rules())[name]["expr"]
            marked[name] = float(re.search(r"(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$", expr.strip()).group(1))
    assert marked, "no `# threshold:` marks in deploy/prometheus/token-economy.rules.yml"
    assert {k: float(v) for k, v in VALUES["prometheusRule"]["thresholds"].items()} == marked


def test_thresholds_disabled_alerts_and_alert_labels_change_only_themselves(tmp_path):
    spec = one(
        render(
            "--set",
            "prometheusRule.thresholds.TokenEconomyOutputCostHigh=4.5",
            "--set",
            "prometheusRule.thresholds.TokenEconomyIdleCostShareHigh=0.25",
            "--set",
            "prometheusRule.disabledAlerts={TokenEconomySourceDown}",
            "--set",
            "prometheusRule.alertLabels.team=ml",
        ),
        "PrometheusRule",
    )["spec"]
    source = alerts(source_rules())
    changed = alerts(spec)
    assert set(source) - set(changed) == {"TokenEconomySourceDown"}
    assert re.search(r"> 4\.5\s*$", changed["TokenEconomyOutputCostHigh"]["expr"])
    assert re.search(r"> 0\.25\s*$", changed["TokenEconomyIdleCostShareHigh"]["expr"])
    for name, rule in changed.items():
        assert rule["labels"] == {**source[name].get("labels", {}), "team": "ml"}
        if name not in ("TokenEconomyOutputCostHigh", "TokenEconomyIdleCostShareHigh"):
            assert rule["expr"] == source[name]["expr"], name
    # The recording rules are untouched.
    records = lambda s: [r for g in s["groups"] for r in g["rules"] if "record" in r]  # noqa: E731
    assert records(spec) == records(source_rules())
    promtool_check(spec, tmp_path)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("prometheusRule.thresholds.NoSuchAlert=1", "no alert named NoSuchAlert"),
        ("prometheusRule.disabledAlerts={NoSuchAlert}", "no alert named NoSuchAlert"),
        ("prometheusRule.thresholds.TokenEconomySourceDown=3", None),  # `== 0` is a comparison too
    ],
)
def test_a_threshold_for_an_alert_that_is_not_there_fails_the_render(setting, message):
    result = template("--set", setting, check=message is None)
    if message:
        assert result.returncode != 0 and message in result.stderr, result.stderr
    else:
        rule = alerts(one(documents(result.stdout), "PrometheusRule")["spec"])["TokenEconomySourceDown"]
        assert rule["expr"].strip().endswith("== 3")


EVERYTHING = {"Deployment", "Service", "PodMonitor", "PrometheusRule", "ConfigMap"}


@pytest.mark.parametrize(
    "settings, kinds",
    [
        ([], EVERYTHING),
        (
            ["vllm.enabled=false", "service.enabled=false", "podMonitor.selector.matchLabels.app=mine"],
            EVERYTHING - {"Deployment", "Service"},
        ),
        (["service.enabled=false"], EVERYTHING - {"Service"}),
        (["podMonitor.enabled=false"], EVERYTHING - {"PodMonitor"}),
        (["serviceMonitor.enabled=true"], EVERYTHING | {"ServiceMonitor"}),
        (["prometheusRule.enabled=false"], EVERYTHING - {"PrometheusRule"}),
        (["dashboards.enabled=false"], EVERYTHING - {"ConfigMap"}),
        (["exporter.enabled=false"], EVERYTHING),
    ],
)
def test_each_object_can_be_turned_off(settings, kinds):
    args = [a for s in settings for a in ("--set", s)]
    docs = render(*args)
    assert {doc["kind"] for doc in docs} == kinds
    if "exporter.enabled=false" in settings:
        spec = one(docs, "Deployment")["spec"]["template"]["spec"]
        assert "initContainers" not in spec and "shareProcessNamespace" not in spec
        assert [c["name"] for c in spec["containers"]] == ["vllm"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "vllm.enabled=false", "--set", "service.enabled=false"], "podMonitor.selector is required"),
        (
            ["--set", "vllm.enabled=false", "--set", "podMonitor.selector.matchLabels.app=x"],
            "service.selector is required",
        ),
        (["--set", "pricing.currency=usd"], "currency"),
        (["--set-json", "pricing.pue=0.5"], "pue"),
        (["--set", "pricing.gpuHourlyPrice=two"], "gpuHourlyPrice"),
        (["--set", "exporter.energySource=gpu"], "energySource"),
        (["--set", "exporter.portName=Token_Economy"], "portName"),
        (["--set", "gpu.count=0"], "count"),
        (["--set", "pricng.gpuHourlyPrice=2"], "pricng"),
    ],
)
def test_bad_values_stop_the_render_naming_the_value(args, message):
    result = template(*args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_decimals_from_the_command_line_are_accepted(monkeypatch):
    # `helm --set` passes 2.50 as a string: the schema takes numeric strings, and the exporter
    # gets the number.
    docs = render(
        "--set", "pricing.gpuHourlyPrice=2.50", "--set", "prometheusRule.thresholds.TokenEconomyInputCostHigh=1.5"
    )
    settings = check_settings_accepted(exporter_environment(check_pod(one(docs, "Deployment"))), monkeypatch)
    assert settings.gpu_hourly_price == 2.5
    assert alerts(one(docs, "PrometheusRule")["spec"])["TokenEconomyInputCostHigh"]["expr"].strip().endswith("> 1.5")


def test_the_schema_catches_a_typo_at_lint_too():
    result = helm("lint", "--strict", str(CHART), "--set", "exporter.intervall=2", check=False)
    assert result.returncode != 0 and "intervall" in result.stdout + result.stderr


def test_the_sidecar_pod_by_default_is_a_hardened_native_sidecar(monkeypatch):
    docs = render()
    deployment = one(docs, "Deployment")
    exporter = check_pod(deployment, native=True)
    assert exporter["resources"]["requests"]["cpu"] == "10m" and "cpu" not in exporter["resources"]["limits"]
    settings = check_settings_accepted(exporter_environment(exporter), monkeypatch)
    assert (settings.vllm_url, settings.interval, settings.gpu_hourly_price) == ("http://127.0.0.1:8000", 5.0, 0.0)


def test_everything_on_reaches_the_exporter_and_vllm(monkeypatch):
    docs = render("-f", str(CHART / "ci" / "everything-on-values.yaml"))
    deployment = one(docs, "Deployment")
    exporter = check_pod(deployment, native=False)
    settings = check_settings_accepted(exporter_environment(exporter), monkeypatch)
    assert (settings.gpu_hourly_price, settings.currency, settings.electricity_price_per_kwh) == (2.49, "EUR", 0.21)
    assert (settings.pue, settings.grid_carbon_intensity, settings.model_params) == (1.3, 380.0, 70.6e9)
    assert (settings.gpu_type, settings.gpu_count, settings.interval, settings.idle_window) == ("H100", 4, 2.0, 300)
    assert settings.static_power_policy.value == "idle" and settings.bytes_per_param == 1.0
    vllm = deployment["spec"]["template"]["spec"]["containers"][0]
    assert vllm["args"][vllm["args"].index("--tensor-parallel-size") + 1] == "4"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert exporter["resources"]["limits"]["cpu"] == "200m"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_monitoring_only_selects_the_users_pods():
    docs = render("-f", str(CHART / "ci" / "monitoring-only-values.yaml"))
    assert not by_kind(docs, "Deployment") and not by_kind(docs, "Service")
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {"app": "my-vllm"}}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == VALUES["exporter"]["portName"]
    assert all(cm["metadata"]["namespace"] == "monitoring" for cm in by_kind(docs, "ConfigMap"))


def test_the_pod_monitor_and_service_reach_the_exporter_port():
    docs = render("--set", "serviceMonitor.enabled=true")
    deployment = one(docs, "Deployment")
    (port,) = check_pod(deployment)["ports"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    monitor = one(docs, "PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["podMetricsEndpoints"][0]["port"] == port["name"]
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (metrics,) = [p for p in service["spec"]["ports"] if p["name"] == port["name"]]
    assert metrics["targetPort"] == port["containerPort"]
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == port["name"]


def test_native_sidecars_on_an_older_cluster_stop_the_render_and_the_fallback_works(tmp_path):
    result = template("--kube-version", "1.28.5", check=False)
    assert result.returncode != 0 and "exporter.nativeSidecar=false" in result.stderr, result.stderr
    text = template("--kube-version", "1.27.0", "--set", "exporter.nativeSidecar=false").stdout
    check_pod(one(documents(text), "Deployment"), native=False)
    kubernetes_validate(text, "1.27", tmp_path)


def test_the_chart_renders_what_the_kustomize_base_ships():
    chart = render()
    base = documents(run(tool("kubectl"), "kustomize", str(KUSTOMIZE)).stdout)
    # The base also holds the exporter's settings as a ConfigMap; the chart sets them inline.
    assert {d["kind"] for d in chart} == {d["kind"] for d in base}
    assert one(chart, "PrometheusRule")["spec"] == one(base, "PrometheusRule")["spec"]
    chart_exporter, base_exporter = check_pod(one(chart, "Deployment")), check_pod(one(base, "Deployment"))
    for key in ("securityContext", "resources", "livenessProbe", "startupProbe", "ports", "restartPolicy", "args"):
        assert chart_exporter[key] == base_exporter[key], key
    chart_spec, base_spec = (one(d, "Deployment")["spec"]["template"]["spec"] for d in (chart, base))
    for key in ("securityContext", "shareProcessNamespace", "automountServiceAccountToken"):
        assert chart_spec[key] == base_spec[key], key
    strip = lambda m: dict(m["spec"]["podMetricsEndpoints"][0].items())  # noqa: E731
    assert strip(one(chart, "PodMonitor")) == strip(one(base, "PodMonitor"))


def test_notes_say_where_to_look():
    notes = helm("install", "tee", str(CHART), "--namespace", "ml-serving", "--dry-run=client").stdout
    notes = notes[notes.index("NOTES:") :]
    for expected in (
        "port-forward deploy/tee-token-economy-exporter 9477",
        "/metrics",
        "-c token-economy-exporter",
        "PodMonitor/tee-token-economy-exporter",
        "PrometheusRule/tee-token-economy-exporter",
        "grafana_dashboard",
        "podMonitor.labels.release",
        "WARNING: pricing.gpuHourlyPrice is 0",
    ):
        assert expected in notes, expected
    for title in (
        d["title"] for d in (yaml.safe_load(p.read_text()) for p in (ROOT / "grafana" / "dashboards").glob("*.json"))
    ):
        assert title in notes, title
    priced = helm(
        "install", "tee", str(CHART), "--dry-run=client", "-f", str(CHART / "ci" / "everything-on-values.yaml")
    ).stdout
    assert "WARNING" not in priced[priced.index("NOTES:") :]


def test_chart_image_and_package_versions_agree():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == VALUES["exporter"]["image"]["tag"] == project
    kustomized = yaml.safe_load((KUSTOMIZE / "vllm-deployment.yaml").read_text())
    images = {c["name"]: c["image"] for c in kustomized["spec"]["template"]["spec"]["initContainers"]}
    assert images["token-economy-exporter"].endswith(":" + project)


# -- a chart of one's own, as the README shows ---------------------------------------------------


def readme_snippet() -> str:
    """The Deployment template in the chart README's section on your own vLLM chart."""
    readme = (CHART / "README.md").read_text()
    section = readme[readme.index("## Your own vLLM chart") :]
    match = re.search(r"```yaml\n(# templates/deployment\.yaml\n.*?)```", section, re.S)
    assert match, "the README's sidecar example is missing"
    return match.group(1)


def parent_chart(tmp_path: Path, native: bool) -> Path:
    parent = tmp_path / "my-vllm"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "token-economy-exporter")
    readme = (CHART / "README.md").read_text()
    chart_yaml = re.search(r"```yaml\n(# Chart\.yaml\n.*?)```", readme, re.S).group(1)
    values_yaml = re.search(r"```yaml\n(# values\.yaml\n.*?)```", readme, re.S).group(1)
    (parent / "Chart.yaml").write_text(chart_yaml)
    (parent / "values.yaml").write_text(values_yaml)
    snippet = readme_snippet()
    if not native:
        # As the README says: the same include with "native" false, under containers.
        lines = snippet.splitlines(keepends=True)
        start = lines.index("      initContainers:\n")
        include = lines[start + 1].replace('"token-economy-exporter"))', '"token-economy-exporter") "native" false)')
        assert include != lines[start + 1] and lines[-1].startswith("              mountPath"), (
            "the README's example moved"
        )
        snippet = "".join(lines[:start] + lines[start + 2 :] + [include])
    (parent / "templates" / "deployment.yaml").write_text(snippet)
    return parent


@pytest.mark.parametrize("native", [True, False], ids=["native", "plain"])
def test_the_sidecar_template_works_in_a_chart_of_ones_own(tmp_path, native, monkeypatch):
    parent = parent_chart(tmp_path, native)
    helm("lint", "--strict", str(parent))
    text = template("--set", "token-economy-exporter.pricing.gpuHourlyPrice=3.1", chart=parent).stdout
    docs = documents(text)
    deployments = by_kind(docs, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == ["my-vllm"], "the subchart's own vLLM must stay off"
    spec = deployments[0]["spec"]["template"]["spec"]
    pool = spec["initContainers"] if native else spec["containers"]
    (exporter,) = [c for c in pool if c["name"] == "token-economy-exporter"]
    assert (exporter.get("restartPolicy") == "Always") is native
    settings = check_settings_accepted(exporter_environment(exporter), monkeypatch)
    assert (settings.gpu_hourly_price, settings.currency, settings.interval) == (3.1, "EUR", 5.0)
    assert {d["kind"] for d in docs} == {"Deployment", "PodMonitor", "PrometheusRule", "ConfigMap"}
    assert one(docs, "PodMonitor")["spec"]["selector"] == {"matchLabels": {"app": "my-vllm"}}
    validate_both_versions(text, tmp_path)
