"""deploy/kubernetes, built by the real `kubectl kustomize`: every object valid for Kubernetes 1.29
and the newest kubernetes-validate carries (strict), the Prometheus Operator objects valid for
the Operator's models, the rules those of deploy/prometheus and accepted by promtool, the
dashboards those of grafana/, the sidecar pod hardened, and the plain-container fallback valid
where native sidecars are not. Each kind of GPU cluster, as the components build it from the
base (plugin mode): valid for the Kubernetes it needs (1.34 for DRA), the exporter's GPU access
what that kind promises, its settings real settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.k8s_tools import (
    KUSTOMIZE,
    OLDEST_DRA,
    OLDEST_NATIVE_SIDECAR,
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
    kubernetes_validate,
    newest_kubernetes,
    one,
    pod_spec,
    promtool_check,
    run,
    source_rules,
    tool,
    validate_both_versions,
    vllm_container,
)


def kustomize(path: Path, check: bool = True):
    result = run(tool("kubectl"), "kustomize", str(path), check=check)
    return result.stdout if check else result


def write_overlay(directory: Path, components: list[str], extra: str = "") -> Path:
    """An overlay as a user writes one, outside this tree, with the given components in order."""
    directory.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(KUSTOMIZE, directory)
    listed = "".join(f"  - {base}/components/{c}\n" for c in components)
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\n" + (f"components:\n{listed}" if components else "") + extra
    )
    return directory


@pytest.fixture(scope="module")
def built() -> str:
    return kustomize(KUSTOMIZE)


@pytest.fixture
def overlay(tmp_path) -> Path:
    """An overlay as a user writes one, outside this tree, with the plain-sidecar component."""
    return write_overlay(tmp_path / "overlay", ["plain-sidecar"])


def test_the_base_builds_the_promised_objects(built):
    docs = documents(built)
    kinds = sorted(doc["kind"] for doc in docs)
    # One ConfigMap of settings, and one per dashboard (overview, chargeback).
    assert kinds == ["ConfigMap"] * 3 + ["Deployment", "PodMonitor", "PrometheusRule", "Service"], kinds
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "token-economy", doc["metadata"]["name"]


def test_every_object_is_valid_for_1_29_and_the_newest_kubernetes(built, tmp_path):
    validate_both_versions(built, tmp_path)


def test_the_native_sidecar_is_what_older_kubernetes_refuses(built, tmp_path):
    # Strict validation knows the init container's restartPolicy only from 1.28 on: the check is
    # real, and the base needs the fallback below on such clusters.
    output = kubernetes_validate(built, "1.27", tmp_path, expect_ok=False)
    assert "restartPolicy" in output


def test_the_plain_sidecar_fallback_is_valid_where_native_sidecars_are_not(overlay, tmp_path):
    text = kustomize(overlay)
    docs = documents(text)
    exporter = check_pod(one(docs, "Deployment"), native=False)
    assert "restartPolicy" not in exporter
    # The move leaves an empty list (the API server drops it): no init container at all.
    assert not one(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    for version in ("1.27", newest_kubernetes()):
        kubernetes_validate(text, version, tmp_path)


def test_prometheus_operator_objects_are_valid(built):
    assert check_operator_objects(documents(built)) == 2


def test_the_prometheusrule_holds_the_rules_of_deploy_prometheus(built, tmp_path):
    spec = one(documents(built), "PrometheusRule")["spec"]
    assert spec == source_rules(), "run python scripts/assets.py"
    assert "SUCCESS" in promtool_check(spec, tmp_path)


def test_the_dashboards_are_configmaps_for_the_grafana_sidecar(built):
    check_dashboards(documents(built))


def test_the_sidecar_pod_is_hardened_and_reads_the_plugin_without_gpu_access(built):
    docs = documents(built)
    deployment = one(docs, "Deployment")
    exporter = check_pod(deployment, native=True)
    check_energy_access(deployment, "plugin", plugin=True)
    assert exporter["resources"]["requests"]["cpu"] == "10m" and "cpu" not in exporter["resources"]["limits"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["vllm"]
    assert containers[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # vLLM's image with the plugin (deploy/vllm-plugin/Dockerfile), tagged vLLM's tag then the plugin's version.
    assert containers[0]["image"] == "vllm-openai-token-economy:v0.32.0-0.1.0"


def test_the_exporter_settings_are_real_settings(built, monkeypatch):
    docs = documents(built)
    exporter = check_pod(one(docs, "Deployment"))
    settings = check_settings_accepted(exporter_environment(exporter, by_kind(docs, "ConfigMap")), monkeypatch)
    assert settings.vllm_url == "http://127.0.0.1:8000" and settings.model_params == 7.6e9


def test_service_and_podmonitor_reach_the_exporter(built):
    docs = documents(built)
    deployment = one(docs, "Deployment")
    exporter = check_pod(deployment)
    (port,) = exporter["ports"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    monitor = one(docs, "PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")

    service = one(docs, "Service")["spec"]
    assert service["selector"].items() <= pod_labels.items()
    metrics = [p for p in service["ports"] if p["name"] == port["name"]]
    # By number: a named targetPort on an init container is not resolved by every cluster.
    assert metrics and metrics[0]["targetPort"] == port["containerPort"]


# -- the kinds of GPU cluster ----------------------------------------------------------------------

# kind: (components in the order a user lists them, how the exporter reaches the energy, whether
# vLLM carries the plugin, the oldest Kubernetes it needs, whether the exporter is a native sidecar)
KINDS = {
    "dra": (["dra"], "dra", True, OLDEST_DRA, True),
    "dra-stock-vllm": (["dra", "no-plugin"], "dra", False, OLDEST_DRA, True),
    "visible-devices": (["visible-devices", "no-plugin"], "visibleDevices", False, OLDEST_NATIVE_SIDECAR, True),
    "visible-devices-no-plugin-first": (
        ["no-plugin", "visible-devices"],
        "visibleDevices",
        False,
        OLDEST_NATIVE_SIDECAR,
        True,
    ),
    "visible-devices-and-plugin": (["visible-devices"], "visibleDevices", True, OLDEST_NATIVE_SIDECAR, True),
    "plugin-init-container": (["plugin-init-container"], "plugin", True, OLDEST_NATIVE_SIDECAR, True),
    "dcgm-stock-vllm": (["no-plugin", "dcgm"], "plugin", False, OLDEST_NATIVE_SIDECAR, True),
    "visible-devices-plain-sidecar": (
        ["visible-devices", "no-plugin", "plain-sidecar"],
        "visibleDevices",
        False,
        "1.27",
        False,
    ),
    "web-config": (["web-config"], "plugin", True, OLDEST_NATIVE_SIDECAR, True),
    "web-config-visible-devices-plain-sidecar": (
        ["visible-devices", "no-plugin", "web-config", "plain-sidecar"],
        "visibleDevices",
        False,
        "1.27",
        False,
    ),
    "all-with-dra-plain-sidecar": (
        ["dra", "dcgm", "plugin-init-container", "plain-sidecar"],
        "dra",
        True,
        OLDEST_DRA,
        False,
    ),
}


def build_kind(kind: str, tmp_path: Path) -> tuple[str, list[dict]]:
    text = kustomize(write_overlay(tmp_path / kind, KINDS[kind][0]))
    return text, documents(text)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_of_cluster_is_valid_and_gives_the_exporter_the_promised_access(kind, tmp_path, monkeypatch):
    components, access, plugin, oldest, native = KINDS[kind]
    text, docs = build_kind(kind, tmp_path)
    deployment = one(docs, "Deployment")
    exporter = check_pod(deployment, native=native)
    check_energy_access(deployment, access, plugin, native=native)
    if "plugin-init-container" in components:
        check_plugin_installer(deployment)
    validate_both_versions(text, tmp_path, oldest)
    assert check_operator_objects(docs) == 2
    settings = check_settings_accepted(exporter_environment(exporter, by_kind(docs, "ConfigMap")), monkeypatch)
    assert settings.vllm_url == "http://127.0.0.1:8000", "vLLM's page stays the fallback for the work"


def test_dra_shares_one_claim_from_a_template_the_pod_names(tmp_path):
    docs = build_kind("dra", tmp_path)[1]
    template = one(docs, "ResourceClaimTemplate")
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["exactly"] == {"deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": 1}
    spec = pod_spec(one(docs, "Deployment"))
    assert spec["resourceClaims"] == [{"name": "gpus", "resourceClaimTemplateName": template["metadata"]["name"]}]
    # As many GPUs as vLLM's tensor parallelism (the base runs one).
    assert "--tensor-parallel-size" not in vllm_container(one(docs, "Deployment"))["args"]


def test_a_name_prefix_reaches_the_pods_claim_template_reference(tmp_path):
    overlay = write_overlay(tmp_path / "prefixed", ["dra"], "namePrefix: team-a-\n")
    docs = documents(kustomize(overlay))
    name = one(docs, "ResourceClaimTemplate")["metadata"]["name"]
    assert name == "team-a-vllm-gpus"
    assert pod_spec(one(docs, "Deployment"))["resourceClaims"][0]["resourceClaimTemplateName"] == name


def test_dra_is_what_kubernetes_before_1_34_refuses(tmp_path):
    # resource.k8s.io/v1 is GA in 1.34; kubernetes-validate has no v1 schema before it.
    # kubernetes-validate only warns about a kind it has no schema for; the helper refuses any
    # warning but the Prometheus Operator's.
    text = build_kind("dra", tmp_path)[0]
    with pytest.raises(AssertionError, match=r"ResourceClaimTemplate with api version resource\.k8s\.io/v1"):
        kubernetes_validate(text, "1.33", tmp_path)
    kubernetes_validate(text, OLDEST_DRA, tmp_path)


def test_visible_devices_without_the_plugin_is_the_base_as_it_was(tmp_path):
    for kind in ("visible-devices", "visible-devices-no-plugin-first"):
        deployment = one(build_kind(kind, tmp_path)[1], "Deployment")
        exporter, vllm = check_pod(deployment), vllm_container(deployment)
        assert exporter["env"] == [
            {"name": "TOKEN_ECONOMY_STATE_FILE", "value": "/var/lib/token-economy/state.json"},
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"},
        ]
        assert exporter["volumeMounts"] == [{"name": "exporter-state", "mountPath": "/var/lib/token-economy"}]
        assert vllm["image"] == "vllm/vllm-openai:v0.32.0"
        assert vllm["args"] == [
            "--model",
            "Qwen/Qwen2.5-7B-Instruct",
            "--served-model-name",
            "qwen2.5-7b-instruct",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
        ]
        assert vllm["env"] == [{"name": "HOME", "value": "/home/vllm"}]
        assert [m["name"] for m in vllm["volumeMounts"]] == ["home", "shm"]
        assert [v["name"] for v in pod_spec(deployment)["volumes"]] == ["home", "shm", "exporter-state"]


def test_dcgm_reads_the_nodes_exporter_for_this_pod(tmp_path, monkeypatch):
    docs = build_kind("dcgm-stock-vllm", tmp_path)[1]
    exporter = check_pod(one(docs, "Deployment"))
    names = [item["name"] for item in exporter["env"]]
    # $(HOST_IP) expands only to a variable defined before it.
    assert names.index("HOST_IP") < names.index("TOKEN_ECONOMY_DCGM_URL")
    assert env_list(exporter)["HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    settings = check_settings_accepted(exporter_environment(exporter, by_kind(docs, "ConfigMap")), monkeypatch)
    assert settings.dcgm_url == "http://10.0.3.17:9400/metrics"
    assert (settings.dcgm_pod, settings.dcgm_namespace) == ("vllm-5d9c7b8f6-x2x4q", "ml-serving")


def test_components_listed_after_plain_sidecar_fail_the_build_instead_of_misplacing_the_exporter(tmp_path):
    for later in ("dcgm", "dra", "visible-devices", "no-plugin", "web-config"):
        result = kustomize(write_overlay(tmp_path / later, ["plain-sidecar", later]), check=False)
        assert result.returncode != 0, later
        assert "test operation does not apply" in result.stderr and "initContainers/0" in result.stderr, result.stderr


def test_the_plugin_init_container_and_the_exporter_are_one_image_in_an_overlay(tmp_path):
    overlay = write_overlay(
        tmp_path / "images",
        ["plugin-init-container"],
        "images:\n  - name: token-economy-exporter\n    newName: registry.example.com/tee\n    newTag: 0.1.0\n"
        "  - name: vllm/vllm-openai\n    newName: registry.example.com/vllm-openai\n",
    )
    deployment = one(documents(kustomize(overlay)), "Deployment")
    check_plugin_installer(deployment)
    images = {c["name"]: c["image"] for c in pod_spec(deployment)["initContainers"]}
    assert images == {
        "token-economy-exporter": "registry.example.com/tee:0.1.0",
        "token-economy-plugin": images["token-economy-exporter"],
    }
    assert vllm_container(deployment)["image"] == "registry.example.com/vllm-openai:v0.32.0"


def check_state_file(deployment: dict, native: bool = True) -> None:
    """The exporter keeps its state file on a disk-backed emptyDir of its own, mounted writable
    (the root filesystem is read-only), at the directory TOKEN_ECONOMY_STATE_FILE names."""
    exporter = exporter_container(deployment, native)
    path = env_list(exporter)["TOKEN_ECONOMY_STATE_FILE"]["value"]
    assert path == "/var/lib/token-economy/state.json"
    (mount,) = [m for m in exporter["volumeMounts"] if m["mountPath"] == str(Path(path).parent)]
    assert not mount.get("readOnly")
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"] == {"sizeLimit": "1Mi"}, "disk-backed (no medium: Memory), 1Mi"
    vllm = vllm_container(deployment)
    assert mount["name"] not in [m["name"] for m in vllm["volumeMounts"]], "the exporter's alone"


def test_every_kind_keeps_the_exporters_state_across_container_restarts(tmp_path):
    check_state_file(one(documents(kustomize(KUSTOMIZE)), "Deployment"))
    for kind, (_components, _access, _plugin, _oldest, native) in KINDS.items():
        check_state_file(one(build_kind(kind, tmp_path)[1], "Deployment"), native=native)


WEB_CONFIG_FILE = "/etc/token-economy/web/web-config.yml"


@pytest.mark.parametrize("kind", ["web-config", "web-config-visible-devices-plain-sidecar"])
def test_the_web_config_component_serves_https_with_basic_auth_and_the_podmonitor_follows(kind, tmp_path, monkeypatch):
    native = KINDS[kind][4]
    docs = build_kind(kind, tmp_path)[1]
    deployment = one(docs, "Deployment")
    exporter = exporter_container(deployment, native)
    settings = check_settings_accepted(exporter_environment(exporter, by_kind(docs, "ConfigMap")), monkeypatch)
    assert str(settings.web_config_file) == WEB_CONFIG_FILE
    mounts = {m["mountPath"]: m for m in exporter["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    for directory, secret in (
        ("/etc/token-economy/web", "token-economy-exporter-web-config"),
        ("/etc/token-economy/tls", "token-economy-exporter-tls"),
    ):
        mount = mounts[directory]
        assert mount["readOnly"] is True and "subPath" not in mount, "a subPath mount is never updated in place"
        assert volumes[mount["name"]]["secret"]["secretName"] == secret
    for probe in ("startupProbe", "livenessProbe"):
        assert exporter[probe]["httpGet"] == {"path": "/healthz", "port": "token-economy", "scheme": "HTTPS"}
    (endpoint,) = one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "token-economy-exporter-tls", "key": "ca.crt"}},
        "serverName": "token-economy-exporter",
    }
    auth = "token-economy-exporter-scrape-auth"
    assert endpoint["basicAuth"] == {
        "username": {"name": auth, "key": "username"},
        "password": {"name": auth, "key": "password"},
    }
    vllm = vllm_container(deployment)
    assert not [m for m in vllm["volumeMounts"] if m["name"] in ("web-config", "web-tls")], "the exporter's alone"


def test_the_example_web_config_is_one_the_exporter_accepts(tmp_path):
    from exporter.webconfig import parse
    from tests.unit.test_webconfig import CERT, KEY

    (tmp_path / "tls.crt").write_text(CERT)
    (tmp_path / "tls.key").write_text(KEY)
    example = (KUSTOMIZE / "components" / "web-config" / "web-config.example.yml").read_text()
    assert "/etc/token-economy/tls/" in example
    config = parse(example.replace("/etc/token-economy/tls/", f"{tmp_path}/"), tmp_path)
    assert config.tls is not None and config.auth is not None and config.auth.users == {"prometheus"}
