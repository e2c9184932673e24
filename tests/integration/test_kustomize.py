"""deploy/kubernetes, built by the real `kubectl kustomize`: every object valid for Kubernetes 1.29
and the newest kubernetes-validate carries (strict), the Prometheus Operator objects valid for
the Operator's models, the rules those of deploy/prometheus and accepted by promtool, the
dashboards those of grafana/, the sidecar pod hardened, and the plain-container fallback valid
where native sidecars are not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.k8s_tools import (
    KUSTOMIZE,
    by_kind,
    check_dashboards,
    check_operator_objects,
    check_pod,
    check_settings_accepted,
    documents,
    exporter_environment,
    kubernetes_validate,
    newest_kubernetes,
    one,
    promtool_check,
    run,
    source_rules,
    tool,
    validate_both_versions,
)


def kustomize(path: Path) -> str:
    return run(tool("kubectl"), "kustomize", str(path)).stdout


@pytest.fixture(scope="module")
def built() -> str:
    return kustomize(KUSTOMIZE)


@pytest.fixture
def overlay(tmp_path) -> Path:
    """An overlay as a user writes one, outside this tree, with the plain-sidecar component."""
    base = os.path.relpath(KUSTOMIZE, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {base}\ncomponents:\n  - {base}/components/plain-sidecar\n"
    )
    return tmp_path


def test_the_base_builds_the_promised_objects(built):
    docs = documents(built)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "PodMonitor", "PrometheusRule", "Service"], kinds
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
    assert "initContainers" not in one(docs, "Deployment")["spec"]["template"]["spec"]
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


def test_the_sidecar_pod_is_hardened_and_can_discover_its_gpus(built):
    docs = documents(built)
    deployment = one(docs, "Deployment")
    exporter = check_pod(deployment, native=True)
    assert exporter["resources"]["requests"]["cpu"] == "10m" and "cpu" not in exporter["resources"]["limits"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["vllm"]
    assert containers[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


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
