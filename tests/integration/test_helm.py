"""helm/token-economy-exporter with the real Helm: lint --strict and template over the values files
in ci/; every rendered object valid for Kubernetes 1.29 and the newest kubernetes-validate
carries (strict); the Prometheus Operator objects valid for the Operator's models; the
PrometheusRule's rules accepted by promtool and, at default values, exactly those of
deploy/prometheus; each object toggleable; the values schema enforced; the sidecar template
usable from a chart of one's own, as the chart's README shows. Each energyAccess (plugin, dra,
visibleDevices) and plugin.install (image, initContainer, none) renders the pod that kind of
GPU cluster needs, the same pod as the kustomize base with the matching components."""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.integration.k8s_tools import (
    CHART,
    KUSTOMIZE,
    OLDEST_DRA,
    OLDEST_NATIVE_SIDECAR,
    RULES,
    by_kind,
    check_dashboards,
    check_energy_access,
    check_operator_objects,
    check_plugin_installer,
    check_pod,
    check_settings_accepted,
    documents,
    env_list,
    exporter_container,
    exporter_environment,
    exporter_is_native,
    kubernetes_validate,
    one,
    pod_spec,
    promtool_check,
    run,
    source_rules,
    tool,
    validate_both_versions,
    vllm_container,
)

ROOT = CHART.parents[1]
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# values file: (energyAccess, whether vLLM carries the plugin, the oldest Kubernetes it needs);
# monitoring-only renders no pod.
SHAPES = {
    "defaults-values": ("plugin", True, OLDEST_NATIVE_SIDECAR),
    "dra-values": ("dra", False, OLDEST_DRA),
    "everything-on-values": ("plugin", True, OLDEST_NATIVE_SIDECAR),
    "monitoring-only-values": (None, None, OLDEST_NATIVE_SIDECAR),
    "plugin-init-container-values": ("plugin", True, OLDEST_NATIVE_SIDECAR),
    "visible-devices-values": ("visibleDevices", False, OLDEST_NATIVE_SIDECAR),
}
STOCK_VLLM = ["--set", "vllm.image.repository=vllm/vllm-openai", "--set", "vllm.image.tag=v0.32.0"]


def helm(*args: str, check: bool = True):
    return run(tool("helm"), *args, check=check)


def template(*args: str, chart: Path = CHART, check: bool = True):
    return helm("template", "tee", str(chart), "--namespace", "ml-serving", *args, check=check)


def render(*args: str) -> list[dict]:
    return documents(template(*args).stdout)


def alerts(spec: dict) -> dict[str, dict]:
    return {rule["alert"]: rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule}


def test_there_are_values_files_for_defaults_monitoring_only_everything_on_and_each_energy_access():
    assert [p.name for p in VALUES_FILES] == [
        "defaults-values.yaml",
        "dra-values.yaml",
        "everything-on-values.yaml",
        "monitoring-only-values.yaml",
        "plugin-init-container-values.yaml",
        "visible-devices-values.yaml",
    ]
    assert sorted(SHAPES) == [p.stem for p in VALUES_FILES]


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_lint_strict(values):
    result = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_rendered_object_is_valid_for_the_oldest_kubernetes_it_needs_and_the_newest(values, tmp_path):
    text = template("-f", str(values)).stdout
    validate_both_versions(text, tmp_path, SHAPES[values.stem][2])
    assert check_operator_objects(documents(text)) >= 2


@pytest.mark.parametrize("values", [p for p in VALUES_FILES if SHAPES[p.stem][0]], ids=lambda p: p.stem)
def test_each_values_file_gives_the_exporter_the_energy_access_it_names(values, monkeypatch):
    access, plugin, _ = SHAPES[values.stem]
    docs = render("-f", str(values))
    deployment = one(docs, "Deployment")
    native = exporter_is_native(pod_spec(deployment))
    exporter = check_pod(deployment, native=native)
    check_energy_access(deployment, access, plugin, native=native)
    if yaml.safe_load(values.read_text()).get("plugin", {}).get("install") == "initContainer":
        check_plugin_installer(deployment)
    check_settings_accepted(exporter_environment(exporter), monkeypatch)


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
        (["energyAccess=dra"], EVERYTHING | {"ResourceClaimTemplate"}),
        (["energyAccess=dra", "dra.resourceClaimTemplateName=gpus-of-my-own"], EVERYTHING),
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
        # Nor the plugin's wiring, which is for the exporter.
        assert [v["name"] for v in spec["volumes"]] == ["home", "shm"]
        args = spec["containers"][0]["args"]
        assert "--enable-logging-iteration-details" not in args and "--disable-log-stats" not in args, args


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
        (["--set", "energyAccess=nvidia"], "energyAccess"),
        (["--set", "plugin.install=pip"], "install"),
        (["--set", "dcgm.url=dcgm:9400"], "url"),
        (["--set", "dra.claimName=GPUs"], "claimName"),
        # plugin mode with nothing to measure: no plugin, or the plugin without NVML, and no DCGM.
        (["--set", "plugin.install=none"], "energyAccess=plugin needs the plugin in vLLM"),
        (["--set", "plugin.nvml=false"], "plugin.nvml=false leaves nothing to measure"),
        (["--set", "energyAccess=dra", "--kube-version", "1.33.4"], "energyAccess=dra needs resource.k8s.io/v1"),
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
    check_energy_access(deployment, "plugin", plugin=True)
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
    base = documents(kustomize_overlay([]))
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
        "energyAccess=plugin",
        "token_economy_sources_info",
        "TokenEconomyEnergyModelled",
        "must carry the plugin",
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
    # vLLM's image with the plugin: vLLM's tag, then the plugin's version, in both.
    (vllm,) = kustomized["spec"]["template"]["spec"]["containers"]
    plugin_image = f"{VALUES['vllm']['image']['repository']}:{VALUES['vllm']['image']['tag']}"
    assert vllm["image"] == plugin_image and plugin_image.endswith(f"-{project}")


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
        include = lines[start + 1].replace('(dict "values" $tee)', '(dict "values" $tee "native" false)')
        assert include != lines[start + 1] and "token-economy-exporter.sidecar" in include, "the README's example moved"
        assert "token-economy-exporter.vllmVolumeMounts" in lines[-1], "the README's example moved"
        snippet = "".join(lines[: start + 1] + lines[start + 2 :] + [include])
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
    check_pod(deployments[0], native=native)  # every mount names a volume of the pod
    check_energy_access(deployments[0], "plugin", plugin=True, native=native)
    settings = check_settings_accepted(exporter_environment(exporter), monkeypatch)
    assert (settings.gpu_hourly_price, settings.currency, settings.interval) == (3.1, "EUR", 5.0)
    assert {d["kind"] for d in docs} == {"Deployment", "PodMonitor", "PrometheusRule", "ConfigMap"}
    assert one(docs, "PodMonitor")["spec"]["selector"] == {"matchLabels": {"app": "my-vllm"}}
    validate_both_versions(text, tmp_path)


# -- the kinds of GPU cluster, as the kustomize components build them --------------------------------


def kustomize_overlay(components: list[str], tmp: Path | None = None) -> str:
    if not components:
        return run(tool("kubectl"), "kustomize", str(KUSTOMIZE)).stdout
    base = os.path.relpath(KUSTOMIZE, tmp)
    listed = "".join(f"  - {base}/components/{c}\n" for c in components)
    (tmp / "kustomization.yaml").write_text(f"resources:\n  - {base}\ncomponents:\n{listed}")
    return run(tool("kubectl"), "kustomize", str(tmp)).stdout


EXPORTER_ENERGY_ENV = {
    "TOKEN_ECONOMY_PLUGIN_DIR",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "HOST_IP",
    "TOKEN_ECONOMY_DCGM_URL",
    "TOKEN_ECONOMY_DCGM_POD",
    "TOKEN_ECONOMY_DCGM_NAMESPACE",
}


def energy_shape(docs: list[dict]) -> dict:
    """Everything in the pod that the energy access and the plugin decide, names of the objects
    that differ between the chart and kustomize (the claim template) left out."""
    deployment = one(docs, "Deployment")
    spec = pod_spec(deployment)
    exporter = exporter_container(deployment, exporter_is_native(spec))
    vllm = vllm_container(deployment)
    templates = [t["spec"] for t in by_kind(docs, "ResourceClaimTemplate")]
    return {
        "exporter env": [e for e in exporter.get("env", []) if e["name"] in EXPORTER_ENERGY_ENV],
        "exporter mounts": exporter.get("volumeMounts", []),
        "exporter claims": exporter["resources"].get("claims"),
        "vllm image": vllm["image"],
        "vllm args": vllm["args"][vllm["args"].index("--port") + 2 :],
        "vllm env": [e for e in vllm["env"] if e["name"] != "HOME"],
        "vllm mounts": [m for m in vllm["volumeMounts"] if m["name"] not in ("home", "shm")],
        "vllm resources": {k: sorted(v) if isinstance(v, dict) else v for k, v in vllm["resources"].items()},
        "volumes": [v for v in spec["volumes"] if v["name"] not in ("home", "shm")],
        "installers": [c for c in spec.get("initContainers") or [] if c["name"] != "token-economy-exporter"],
        "pod claims": [c["name"] for c in spec.get("resourceClaims", [])],
        "claim templates": templates,
    }


# kind: (kustomize components, chart arguments)
KINDS = {
    "plugin": ([], []),
    "dra": (["dra"], ["--set", "energyAccess=dra"]),
    "dra with vLLM's stock image": (
        ["dra", "no-plugin"],
        ["--set", "energyAccess=dra", "--set", "plugin.install=none", *STOCK_VLLM],
    ),
    "visible devices, as before": (
        ["visible-devices", "no-plugin"],
        ["-f", str(CHART / "ci" / "visible-devices-values.yaml")],
    ),
    "plugin by init container": (["plugin-init-container"], ["--set", "plugin.install=initContainer", *STOCK_VLLM]),
    "dcgm": (["dcgm"], ["--set", "dcgm.enabled=true"]),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_chart_and_the_kustomize_components_build_the_same_pod_for_each_kind(kind, tmp_path):
    components, arguments = KINDS[kind]
    chart = energy_shape(render(*arguments))
    base = energy_shape(documents(kustomize_overlay(components, tmp_path)))
    for key in chart:
        assert chart[key] == base[key], f"{kind}: {key}"


def test_dra_claims_gpu_count_devices_of_the_class_and_can_use_a_template_of_ones_own(tmp_path):
    docs = render("--set", "energyAccess=dra", "--set", "gpu.count=4", "--set", "dra.deviceClassName=gpu.example.com")
    (request,) = one(docs, "ResourceClaimTemplate")["spec"]["spec"]["devices"]["requests"]
    assert request["exactly"] == {"deviceClassName": "gpu.example.com", "allocationMode": "ExactCount", "count": 4}
    spec = pod_spec(one(docs, "Deployment"))
    assert spec["resourceClaims"] == [
        {"name": "gpus", "resourceClaimTemplateName": one(docs, "ResourceClaimTemplate")["metadata"]["name"]}
    ]
    check_energy_access(one(docs, "Deployment"), "dra", plugin=True)
    text = template("--set", "energyAccess=dra", "--set", "dra.resourceClaimTemplateName=h100-pair").stdout
    assert pod_spec(one(documents(text), "Deployment"))["resourceClaims"][0]["resourceClaimTemplateName"] == "h100-pair"
    validate_both_versions(text, tmp_path, OLDEST_DRA)


def test_an_explicit_nvidia_visible_devices_is_honoured_in_every_mode():
    # exporter.nvidiaVisibleDevices was the chart's one GPU setting: set, it still reaches the exporter.
    for access in ("plugin", "dra", "visibleDevices"):
        docs = render("--set", f"energyAccess={access}", "--set", "exporter.nvidiaVisibleDevices=GPU-1f2e3d4c")
        exporter = check_pod(one(docs, "Deployment"))
        assert env_list(exporter)["NVIDIA_VISIBLE_DEVICES"]["value"] == "GPU-1f2e3d4c", access


def test_plugin_mode_without_the_plugin_is_fine_where_dcgm_or_the_phase_model_is_chosen(monkeypatch):
    for extra in (["--set", "dcgm.enabled=true"], ["--set", "exporter.energySource=phase-model"]):
        docs = render("--set", "plugin.install=none", *STOCK_VLLM, *extra)
        deployment = one(docs, "Deployment")
        check_energy_access(deployment, "plugin", plugin=False)
        check_settings_accepted(exporter_environment(check_pod(deployment)), monkeypatch)


def test_the_plugin_without_nvml_tells_vllm_so():
    docs = render("--set", "plugin.nvml=false", "--set", "dcgm.enabled=true")
    assert env_list(vllm_container(one(docs, "Deployment")))["TOKEN_ECONOMY_PLUGIN_NVML"]["value"] == "0"


def test_the_schema_offers_the_exporters_energy_sources():
    from exporter.sources.energy import EnergyMode

    schema = json.loads((CHART / "values.schema.json").read_text())
    offered = schema["properties"]["exporter"]["properties"]["energySource"]["enum"]
    assert sorted(offered) == sorted(mode.value for mode in EnergyMode)


def state_file(deployment: dict, native: bool = True) -> tuple[str, dict, dict] | None:
    """(TOKEN_ECONOMY_STATE_FILE, the exporter's mount of its directory, that volume); None without."""
    exporter = exporter_container(deployment, native)
    path = env_list(exporter).get("TOKEN_ECONOMY_STATE_FILE", {}).get("value")
    if path is None:
        assert "exporter-state" not in [v["name"] for v in pod_spec(deployment)["volumes"]]
        return None
    (mount,) = [m for m in exporter["volumeMounts"] if m["mountPath"] == str(Path(path).parent)]
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    return path, mount, volume


@pytest.mark.parametrize(
    "values", [p for p in VALUES_FILES if p.stem != "monitoring-only-values"], ids=lambda p: p.stem
)
def test_the_exporter_keeps_its_state_on_a_disk_backed_empty_dir_by_default(values, monkeypatch):
    deployment = one(render("-f", str(values)), "Deployment")
    native = exporter_is_native(pod_spec(deployment))
    path, mount, volume = state_file(deployment, native)
    assert path == "/var/lib/token-economy/state.json" and not mount.get("readOnly")
    assert volume == {"name": "exporter-state", "emptyDir": {"sizeLimit": "1Mi"}}  # not medium: Memory
    assert mount["name"] not in [m["name"] for m in vllm_container(deployment)["volumeMounts"]]
    exporter = exporter_container(deployment, native)
    assert check_settings_accepted(exporter_environment(exporter), monkeypatch).state_file == Path(path)


def test_the_state_file_can_move_or_be_turned_off():
    moved = one(render("--set", "exporter.stateFile.path=/data/tee/costs.json"), "Deployment")
    path, mount, _volume = state_file(moved)
    assert (path, mount["mountPath"]) == ("/data/tee/costs.json", "/data/tee")
    assert state_file(one(render("--set", "exporter.stateFile.enabled=false"), "Deployment")) is None
    result = template("--set", "exporter.stateFile.path=state.json", check=False)
    assert result.returncode != 0 and "stateFile" in result.stderr, result.stderr


# -- TLS and basic auth (exporter.webConfig) ------------------------------------------------------

WEB_CONFIG_FILE = "/etc/token-economy/web/web-config.yml"
A_HASH = (
    "$2b$04$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234"  # the form of a bcrypt hash; no password matches it
)


def web_config_of(docs: list[dict], tmp_path: Path):
    """The web config the chart's Secret holds, as the exporter parses it (the TLS files it
    names swapped for a test certificate)."""
    from exporter.webconfig import parse
    from tests.unit.test_webconfig import CERT, KEY

    (secret,) = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("-web-config")]
    (tmp_path / "tls.crt").write_text(CERT)
    (tmp_path / "tls.key").write_text(KEY)
    text = secret["stringData"]["web-config.yml"].replace("/etc/token-economy/tls/", f"{tmp_path}/")
    return parse(text, tmp_path)


def test_web_config_is_off_by_default():
    docs = render("--set", "serviceMonitor.enabled=true")
    exporter = check_pod(one(docs, "Deployment"))
    assert "TOKEN_ECONOMY_WEB_CONFIG_FILE" not in env_list(exporter) and not by_kind(docs, "Secret")
    assert "scheme" not in exporter["livenessProbe"]["httpGet"]
    for endpoint in (
        one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0],
        one(docs, "ServiceMonitor")["spec"]["endpoints"][0],
    ):
        assert not {"scheme", "tlsConfig", "basicAuth"} & set(endpoint)


def test_everything_on_serves_https_with_basic_auth_and_both_monitors_follow(tmp_path, monkeypatch):
    text = template("-f", str(CHART / "ci" / "everything-on-values.yaml")).stdout
    docs = documents(text)
    deployment = one(docs, "Deployment")
    exporter = check_pod(deployment, native=False)
    settings = check_settings_accepted(exporter_environment(exporter), monkeypatch)
    assert str(settings.web_config_file) == WEB_CONFIG_FILE
    config = web_config_of(docs, tmp_path)
    assert config.tls is not None and config.auth is not None and config.auth.users == {"prometheus"}
    assert config.tls.minimum_version.name == "TLSv1_3" and config.headers == (("X-Content-Type-Options", "nosniff"),)

    mounts = {m["mountPath"]: m for m in exporter["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    for directory, secret in (
        ("/etc/token-economy/web", "tee-token-economy-exporter-web-config"),
        ("/etc/token-economy/tls", "tee-exporter-tls"),
    ):
        assert mounts[directory]["readOnly"] is True and "subPath" not in mounts[directory]
        assert volumes[mounts[directory]["name"]]["secret"]["secretName"] == secret
    for probe in ("startupProbe", "livenessProbe"):
        assert exporter[probe]["httpGet"]["scheme"] == "HTTPS" and exporter[probe]["httpGet"]["path"] == "/healthz"
    expected = {
        "scheme": "https",
        "tlsConfig": {
            "ca": {"secret": {"name": "tee-exporter-tls", "key": "ca.crt"}},
            "serverName": "token-economy-exporter",
        },
        "basicAuth": {
            "username": {"name": "tee-exporter-scrape-auth", "key": "username"},
            "password": {"name": "tee-exporter-scrape-auth", "key": "password"},
        },
    }
    for endpoint in (
        one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0],
        one(docs, "ServiceMonitor")["spec"]["endpoints"][0],
    ):
        assert {k: endpoint.get(k) for k in expected} == expected
    assert check_operator_objects(docs) >= 2
    validate_both_versions(text, tmp_path)


def test_an_existing_secret_is_used_as_it_is():
    docs = render(
        "--set", "exporter.webConfig.enabled=true", "--set", "exporter.webConfig.existingSecret=my-web-config",
        "--set", "exporter.webConfig.scrape.caSecret.name=my-ca", "--set", "exporter.webConfig.scrape.serverName=tee",
    )  # fmt: skip
    assert not by_kind(docs, "Secret")
    spec = pod_spec(one(docs, "Deployment"))
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert secrets == {"web-config": "my-web-config"}  # no tlsSecret: the web config names its own files
    endpoint = one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "my-ca", "key": "ca.crt"} and "basicAuth" not in endpoint


def test_basic_auth_over_plain_http(tmp_path):
    docs = render(
        "--set", "exporter.webConfig.enabled=true", "--set", "exporter.webConfig.https=false",
        "--set", f"exporter.webConfig.basicAuthUsers.prometheus={A_HASH}",
        "--set", "exporter.webConfig.scrape.basicAuthSecret.name=auth",
    )  # fmt: skip
    config = web_config_of(docs, tmp_path)
    assert config.tls is None and config.auth is not None
    exporter = check_pod(one(docs, "Deployment"))
    assert "scheme" not in exporter["startupProbe"]["httpGet"]
    endpoint = one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert (
        "scheme" not in endpoint and "tlsConfig" not in endpoint and endpoint["basicAuth"]["password"]["name"] == "auth"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["exporter.webConfig.enabled=true"], "exporter.webConfig.https needs a certificate"),
        (["exporter.webConfig.enabled=true", "exporter.webConfig.https=false"], "with nothing to serve"),
        (
            ["exporter.webConfig.enabled=true", "exporter.webConfig.tlsSecret=t",
             f"exporter.webConfig.basicAuthUsers.p={A_HASH}"],
            "exporter.webConfig.scrape.basicAuthSecret.name",
        ),
        (
            ["exporter.webConfig.enabled=true", "exporter.webConfig.existingSecret=mine"],
            "exporter.webConfig.scrape.caSecret.name is required",
        ),
        (["exporter.webConfig.enabled=true", "exporter.webConfig.basicAuthUsers.p=hunter2"], "basicAuthUsers"),
        (["exporter.webConfig.enabled=true", "exporter.webConfig.tlsSecret=Not_A_Name"], "tlsSecret"),
        (["exporter.webConfig.enabled=true", "exporter.webConfig.extraConfig.rate_limit.burst=1"], "extraConfig"),
    ],
)  # fmt: skip
def test_web_config_values_that_cannot_work_stop_the_render(args, message):
    result = template(*[a for s in args for a in ("--set", s)], check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_sidecar_in_a_chart_of_ones_own_needs_an_existing_web_config_secret(tmp_path):
    parent = parent_chart(tmp_path, native=True)
    on = ["--set", "token-economy-exporter.exporter.webConfig.enabled=true"]
    result = template(*on, "--set", "token-economy-exporter.exporter.webConfig.tlsSecret=t", chart=parent, check=False)
    assert result.returncode != 0 and "exporter.webConfig.existingSecret is required" in result.stderr
    docs = documents(
        template(
            *on, "--set", "token-economy-exporter.exporter.webConfig.existingSecret=mine",
            "--set", "token-economy-exporter.exporter.webConfig.scrape.insecureSkipVerify=true", chart=parent,
        ).stdout
    )  # fmt: skip
    deployment = one(docs, "Deployment")
    check_pod(deployment)  # every mount names a volume of the pod
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in pod_spec(deployment)["volumes"]}[
        "web-config"
    ] == "mine"
    assert one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["tlsConfig"] == {"insecureSkipVerify": True}


def test_api_price_lists_reach_the_exporter_and_a_bad_one_stops_the_render(monkeypatch):
    prices = (
        '[{"name":"api-small","input":0.15,"cachedInput":0.075,"output":0.6},'
        '{"name":"big","input":2.5,"cachedInput":"1.25","output":10}]'
    )
    docs = render("--set-json", f"pricing.apiPrices={prices}", "--set", "pricing.breakEvenAlertReference=big")
    settings = check_settings_accepted(exporter_environment(check_pod(one(docs, "Deployment"))), monkeypatch)
    assert [(p.reference, dict(p.per_million)) for p in settings.api_price_lists] == [
        ("api-small", {"input": 0.15, "cached_input": 0.075, "output": 0.6}),
        ("big", {"input": 2.5, "cached_input": 1.25, "output": 10.0}),
    ]
    assert settings.break_even_reference == "big"
    assert "TOKEN_ECONOMY_API_PRICES" not in exporter_environment(check_pod(one(render(), "Deployment")))
    for bad, named in (
        ('[{"name":"a b","input":1,"cachedInput":1,"output":1}]', "name"),
        ('[{"name":"a","input":1}]', "cachedInput"),
    ):
        result = template("--set-json", f"pricing.apiPrices={bad}", check=False)
        assert result.returncode != 0 and named in result.stderr, result.stderr


def test_the_chargeback_team_cap_is_a_value_that_changes_only_its_rule(tmp_path):
    def records(spec: dict) -> dict[str, str]:
        return {
            r["record"] + str(r.get("labels", "")): r["expr"]
            for g in spec["groups"]
            for r in g["rules"]
            if "record" in r
        }

    default = records(source_rules())
    assert VALUES["prometheusRule"]["chargebackTeams"] == 50
    assert "topk by (gateway, model_name) (50," in default["token_economy:gateway_top_teams:rate5m"]
    spec = one(render("--set", "prometheusRule.chargebackTeams=7"), "PrometheusRule")["spec"]
    changed = {name for name, expr in records(spec).items() if expr != default[name]}
    assert changed == {"token_economy:gateway_top_teams:rate5m"}
    assert "topk by (gateway, model_name) (7," in records(spec)["token_economy:gateway_top_teams:rate5m"]
    promtool_check(spec, tmp_path)
    result = template("--set", "prometheusRule.chargebackTeams=0", check=False)
    assert result.returncode != 0 and "chargebackTeams" in result.stderr
