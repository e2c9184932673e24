"""The real tools that check the Kubernetes manifests and the chart, and the checks both the Helm
and the kustomize tests apply to what they render.

Tools are found through an environment variable naming the binary, else on PATH; a missing tool
fails the test (never skips it):

  HELM, KUBECTL           scripts/install-helm.sh DIR   (helm 4 and kubectl with kustomize)
  PROMTOOL                apt-get install prometheus
  KUBERNETES_VALIDATE     pip install kubernetes-validate (also found beside this Python)

The Prometheus Operator objects are checked with pip's cloudcoil-models-prometheus-operator.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "helm" / "token-economy-exporter"
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "deploy" / "prometheus" / "token-economy.rules.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"

OLDEST_NATIVE_SIDECAR = "1.29"
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
EXPORTER = "token-economy-exporter"

_INSTALL = {
    "helm": "scripts/install-helm.sh DIR && export HELM=DIR/helm",
    "kubectl": "scripts/install-helm.sh DIR && export KUBECTL=DIR/kubectl",
    "promtool": "apt-get install -y --no-install-recommends prometheus",
    "kubernetes-validate": "pip install kubernetes-validate",
}


def tool(name: str) -> str:
    variable = name.upper().replace("-", "_")
    # Also beside this Python: `pip install kubernetes-validate` in an unactivated venv.
    beside = Path(sys.executable).parent / name
    path = os.environ.get(variable) or shutil.which(name) or (str(beside) if beside.is_file() else None)
    if path and os.access(path, os.X_OK):
        return path
    where = (
        f"${variable} ({os.environ[variable]}) is not executable"
        if os.environ.get(variable)
        else f"neither ${variable} nor PATH names it"
    )
    pytest.fail(f"{name} is required and missing: {where}. Install it: {_INSTALL[name]}", pytrace=False)


def run(*argv: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# -- kubernetes-validate ---------------------------------------------------------------------------


@functools.cache
def newest_kubernetes() -> str:
    """The newest Kubernetes version the installed kubernetes-validate carries: what it validates
    against when given none."""
    probe = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n"
    result = run(tool("kubernetes-validate"), "-", input=probe)
    match = re.search(r"against version (\d+\.\d+)", result.stdout)
    assert match, f"cannot tell kubernetes-validate's newest version from: {result.stdout}"
    return match.group(1)


def kubernetes_validate(text: str, version: str, tmp_path: Path, expect_ok: bool = True) -> str:
    """Validate every object against `version`, --strict (unknown fields are errors). Custom
    resources have no schema there: only the Prometheus Operator's may go unchecked, and they are
    checked by `check_operator_objects`."""
    path = tmp_path / f"manifests-{version}.yaml"
    path.write_text(text)
    result = run(tool("kubernetes-validate"), "--strict", "-k", version, str(path), check=False)
    output = result.stdout + result.stderr
    if not expect_ok:
        assert result.returncode != 0, f"kubernetes-validate accepted what it should refuse for {version}:\n{output}"
        return output
    assert result.returncode == 0 and "ERROR" not in output and "FATAL" not in output, output
    docs = documents(text)
    builtin = [d for d in docs if d["kind"] not in OPERATOR_KINDS]
    passed = re.findall(r"passed for resource (\S+) against version (\S+)", output)
    assert len(passed) == len(builtin), f"{len(builtin)} objects, {len(passed)} validated:\n{output}"
    assert {v for _, v in passed} == {version}, output
    for warning in re.findall(r"^WARN .*$", output, re.M):
        assert re.search(
            r"kind (PodMonitor|ServiceMonitor|PrometheusRule) with api version monitoring\.coreos\.com/v1", warning
        ), warning
    return output


def validate_both_versions(text: str, tmp_path: Path) -> None:
    newest = newest_kubernetes()
    assert tuple(map(int, newest.split("."))) > (1, 29), newest
    for version in (OLDEST_NATIVE_SIDECAR, newest):
        kubernetes_validate(text, version, tmp_path)


# -- Prometheus Operator objects, offline ------------------------------------------------------------


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def check_operator_objects(docs: list[dict]) -> int:
    """Each PodMonitor, ServiceMonitor and PrometheusRule parses as the Prometheus Operator's
    models (field names and types), and survives the round trip unchanged: a field the models
    do not know would be dropped, so an unknown field fails here too."""
    try:
        from cloudcoil.models.prometheus_operator import v1
    except ImportError as err:
        pytest.fail(
            f"the Prometheus Operator models are required and missing ({err}). Install them: "
            "pip install cloudcoil-models-prometheus-operator",
            pytrace=False,
        )

    models = {"PodMonitor": v1.PodMonitor, "ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}
    checked = 0
    for doc in docs:
        if doc["kind"] not in OPERATOR_KINDS:
            continue
        assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
        model = models[doc["kind"]].model_validate(doc)
        back = _strip_nulls(model.model_dump(mode="json", by_alias=True, exclude_unset=True))
        assert back == _strip_nulls(json.loads(json.dumps(doc))), (
            f"{doc['kind']}/{doc['metadata']['name']} has fields the Prometheus Operator does not know:\n"
            f"{_first_difference(doc, back)}"
        )
        checked += 1
    return checked


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} became {b!r}"


def promtool_check(spec: dict, tmp_path: Path) -> str:
    path = tmp_path / "rules-from-prometheusrule.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run(tool("promtool"), "check", "rules", str(path), check=False)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    return result.stdout


def source_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def source_dashboards() -> dict[str, Any]:
    found = {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}
    assert found, f"no dashboards in {DASHBOARDS}"
    return found


def check_dashboards(docs: list[dict]) -> None:
    """One ConfigMap per dashboard, labelled for kube-prometheus-stack's Grafana sidecar, holding
    exactly the generated JSON, small enough for client-side `kubectl apply` (its
    last-applied-configuration annotation is capped at 256 KiB)."""
    maps = [d for d in by_kind(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    shipped = {}
    for config_map in maps:
        assert len(config_map["data"]) == 1, config_map["metadata"]["name"]
        ((name, text),) = config_map["data"].items()
        assert len(text.encode()) < 256 * 1024, f"{name} is too large for kubectl apply"
        shipped[name] = json.loads(text)
    assert shipped == source_dashboards()


# -- The pod ---------------------------------------------------------------------------------------


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def exporter_container(deployment: dict, native: bool = True) -> dict:
    spec = pod_spec(deployment)
    pool = spec.get("initContainers", []) if native else spec["containers"]
    found = [c for c in pool if c["name"] == EXPORTER]
    assert len(found) == 1, f"no {EXPORTER} in {'initContainers' if native else 'containers'}"
    others = spec["containers"] if native else spec.get("initContainers", [])
    assert not [c for c in others if c["name"] == EXPORTER], "the exporter appears twice"
    return found[0]


def check_pod(deployment: dict, native: bool = True) -> dict:
    """The security and resource promises of the sidecar pod; returns the exporter container."""
    spec = pod_spec(deployment)
    exporter = exporter_container(deployment, native)
    assert (exporter.get("restartPolicy") == "Always") is native, exporter.get("restartPolicy")

    # Nothing privileged anywhere in the pod.
    for key in ("hostPID", "hostIPC", "hostNetwork"):
        assert not spec.get(key), key
    assert not [v for v in spec.get("volumes", []) if "hostPath" in v], "a hostPath volume"
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container.get("securityContext", {})
        assert not context.get("privileged") and context.get("allowPrivilegeEscalation") is False, container["name"]
        assert context.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
        assert not context.get("capabilities", {}).get("add"), container["name"]

    # The exporter: hardened, unprivileged, no GPU of its own, and sized from the benchmark.
    context = exporter["securityContext"]
    assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    requests, limits = exporter["resources"]["requests"], exporter["resources"]["limits"]
    assert not any("gpu" in key for key in list(requests) + list(limits)), "the exporter must not request a GPU"
    assert requests["memory"] == "64Mi" and limits["memory"] == "128Mi"
    assert "readinessProbe" not in exporter, "the sidecar's readiness would gate vLLM's traffic"
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/healthz"

    # GPU discovery: a shared process namespace, and the same UID in both containers.
    assert spec["shareProcessNamespace"] is True
    pod_context = spec["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert isinstance(pod_context["runAsUser"], int) and pod_context["runAsUser"] > 0
    for container in spec["containers"] + spec.get("initContainers", []):
        assert (
            container.get("securityContext", {}).get("runAsUser", pod_context["runAsUser"]) == pod_context["runAsUser"]
        )
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in exporter.get("env", [])
    assert spec.get("automountServiceAccountToken") is False
    return exporter


def exporter_environment(container: dict, config_maps: list[dict] = ()) -> dict[str, str]:
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config_map,) = [c for c in config_maps if c["metadata"]["name"] == name]
        env.update(config_map["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def check_settings_accepted(env: dict[str, str], monkeypatch) -> Any:
    """Every TOKEN_ECONOMY_* variable the manifests set is a real setting with a valid value."""
    from exporter.config import ENV_PREFIX, Settings, env_name

    known = {env_name(name) for name in Settings.model_fields}
    ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert ours, "no exporter settings in the environment"
    unknown = set(ours) - known
    assert not unknown, f"not exporter settings: {sorted(unknown)}"
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    return Settings()
