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
OLDEST_DRA = "1.34"  # resource.k8s.io/v1 (ResourceClaimTemplate)
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
EXPORTER = "token-economy-exporter"
VLLM = "vllm"
# How the exporter reaches the GPUs' energy (README, "Deploying on locked-down GPU clusters").
ACCESSES = ("plugin", "dra", "visibleDevices")
PLUGIN_COPY = "/opt/token-economy/python"  # where the init container copies the plugin for vLLM

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


def validate_both_versions(text: str, tmp_path: Path, oldest: str = OLDEST_NATIVE_SIDECAR) -> None:
    """Valid for the oldest Kubernetes the objects need (1.29 for native sidecars, 1.34 for
    resource.k8s.io/v1) and the newest kubernetes-validate carries."""
    newest = newest_kubernetes()
    assert tuple(map(int, newest.split("."))) > tuple(map(int, oldest.split("."))), newest
    for version in (oldest, newest):
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
    pool = (spec.get("initContainers") or []) if native else spec["containers"]
    found = [c for c in pool if c["name"] == EXPORTER]
    assert len(found) == 1, f"no {EXPORTER} in {'initContainers' if native else 'containers'}"
    others = spec["containers"] if native else (spec.get("initContainers") or [])
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
    for container in spec["containers"] + (spec.get("initContainers") or []):
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
    for container in spec["containers"] + (spec.get("initContainers") or []):
        assert (
            container.get("securityContext", {}).get("runAsUser", pod_context["runAsUser"]) == pod_context["runAsUser"]
        )
    assert spec.get("automountServiceAccountToken") is False
    check_references(spec)
    return exporter


def check_references(spec: dict) -> None:
    """Every mount names a volume of the pod and every claim a resource claim of the pod: the API
    server refuses a pod that breaks either, and schema validation does not see it."""
    volumes = [v["name"] for v in spec.get("volumes", [])]
    claims = [c["name"] for c in spec.get("resourceClaims", [])]
    assert len(set(volumes)) == len(volumes) and len(set(claims)) == len(claims), (volumes, claims)
    for container in spec["containers"] + (spec.get("initContainers") or []):
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{container['name']} mounts {mount['name']}, not a volume of the pod"
        for claim in container.get("resources", {}).get("claims", []):
            assert claim["name"] in claims, f"{container['name']} uses claim {claim['name']}, not one of the pod's"


def vllm_container(deployment: dict) -> dict:
    (vllm,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == VLLM]
    return vllm


def env_list(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def gpu_resources(container: dict) -> list[str]:
    resources = container.get("resources", {})
    return [k for part in ("requests", "limits") for k in resources.get(part, {}) if "gpu" in k]


def check_energy_access(deployment: dict, access: str, plugin: bool, native: bool = True) -> dict:
    """How the exporter reaches the GPUs' energy, as promised for each kind of cluster; returns the
    exporter container.

    plugin: vLLM writes the plugin's snapshots to an in-memory emptyDir that the exporter mounts
    read-only, both with TOKEN_ECONOMY_PLUGIN_DIR at the mount; vLLM's one extra argument,
    --enable-logging-iteration-details, sends it per-step details (the plugin silences vLLM's
    per-step log lines). Without it: none of that, since the flag would only add a log line per
    step. In no mode --disable-log-stats, which would remove vLLM's own counters whenever the
    plugin is missing from vLLM's image.
    access plugin: the exporter has no GPU access at all (no NVIDIA_VISIBLE_DEVICES, no claim);
    dra: vLLM and the exporter reference the same claim, nothing requests nvidia.com/gpu;
    visibleDevices: the exporter sets NVIDIA_VISIBLE_DEVICES and requests nothing."""
    assert access in ACCESSES, access
    spec = pod_spec(deployment)
    exporter, vllm = exporter_container(deployment, native), vllm_container(deployment)
    exporter_env, vllm_env = env_list(exporter), env_list(vllm)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    args = [str(a) for a in vllm.get("args", [])]
    assert "--disable-log-stats" not in args, args

    if plugin:
        directory = vllm_env["TOKEN_ECONOMY_PLUGIN_DIR"]["value"]
        assert exporter_env["TOKEN_ECONOMY_PLUGIN_DIR"] == {"name": "TOKEN_ECONOMY_PLUGIN_DIR", "value": directory}
        (exporter_mount,) = [m for m in exporter.get("volumeMounts", []) if m["mountPath"] == directory]
        (vllm_mount,) = [m for m in vllm["volumeMounts"] if m["mountPath"] == directory]
        assert exporter_mount["name"] == vllm_mount["name"]
        assert exporter_mount.get("readOnly") is True and not vllm_mount.get("readOnly")
        empty_dir = volumes[vllm_mount["name"]]["emptyDir"]
        assert empty_dir["medium"] == "Memory" and empty_dir["sizeLimit"] == "1Mi", empty_dir
        assert args[-1] == "--enable-logging-iteration-details", args
        assert args.count("--enable-logging-iteration-details") == 1, args
    else:
        for container in (exporter, vllm):
            assert not {"TOKEN_ECONOMY_PLUGIN_DIR", "TOKEN_ECONOMY_PLUGIN_NVML", "PYTHONPATH"} & set(
                env_list(container)
            ), container["name"]
        assert "--enable-logging-iteration-details" not in args, args
        assert not [v for v in volumes if v.startswith("token-economy")], volumes
        assert vllm["image"].startswith("vllm/vllm-openai:"), "vLLM's stock image without the plugin"

    assert not gpu_resources(exporter), "the exporter must not request a GPU"
    exporter_claims = exporter.get("resources", {}).get("claims", [])
    if access == "dra":
        assert exporter_claims and exporter_claims == vllm["resources"]["claims"], (exporter_claims, vllm)
        for container in spec["containers"] + (spec.get("initContainers") or []):
            assert not gpu_resources(container), f"{container['name']}: a device-plugin GPU beside the claim"
    else:
        assert not exporter_claims and "resourceClaims" not in spec
        assert gpu_resources(vllm), "vLLM gets its GPUs from the device plugin"
    if access == "visibleDevices":
        assert exporter_env["NVIDIA_VISIBLE_DEVICES"] == {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}
        assert exporter_env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    else:
        assert "NVIDIA_VISIBLE_DEVICES" not in exporter_env, "the exporter must have no GPU access of its own"
    return exporter


def check_plugin_installer(deployment: dict) -> list[str]:
    """The plugin copied in for vLLM's stock image: an init container of the exporter's image,
    hardened like the exporter, that has finished before vLLM starts (no restartPolicy), writes
    into an emptyDir that vLLM mounts read-only at PYTHONPATH. Returns its command."""
    spec = pod_spec(deployment)
    (installer,) = [c for c in spec["initContainers"] if c["name"] == "token-economy-plugin"]
    vllm, exporter = vllm_container(deployment), exporter_container(deployment, exporter_is_native(spec))
    assert "restartPolicy" not in installer, "an init container that runs to completion"
    assert installer["image"] == exporter["image"], "the plugin and the exporter are one release"
    assert installer["securityContext"] == exporter["securityContext"]
    assert not gpu_resources(installer) and installer["resources"]["limits"]["memory"]
    assert env_list(vllm)["PYTHONPATH"]["value"] == PLUGIN_COPY
    (mount,) = [m for m in installer["volumeMounts"] if m["mountPath"] == PLUGIN_COPY]
    (vllm_mount,) = [m for m in vllm["volumeMounts"] if m["mountPath"] == PLUGIN_COPY]
    assert mount["name"] == vllm_mount["name"] and vllm_mount.get("readOnly") is True and not mount.get("readOnly")
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert set(volume) == {"name", "emptyDir"}, volume
    command = [str(a) for a in installer["command"]]
    # -I: the image's site-packages only, whatever the working directory or PYTHON* variables.
    assert command[:3] == ["/opt/venv/bin/python", "-I", "-c"] and command[4] == PLUGIN_COPY, command
    assert "args" not in installer, "the command is complete: exec form, no shell in the image"
    return command


def exporter_is_native(spec: dict) -> bool:
    return any(c["name"] == EXPORTER for c in spec.get("initContainers") or [])


# Values the downward API would give, to read the settings a pod's environment makes.
DOWNWARD = {"status.hostIP": "10.0.3.17", "metadata.name": "vllm-5d9c7b8f6-x2x4q", "metadata.namespace": "ml-serving"}


def exporter_environment(container: dict, config_maps: list[dict] = ()) -> dict[str, str]:
    """The container's environment as the kubelet would give it: ConfigMaps, then `env` in order,
    downward-API fields as DOWNWARD says, and $(NAME) references to earlier variables expanded."""
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config_map,) = [c for c in config_maps if c["metadata"]["name"] == name]
        env.update(config_map["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = DOWNWARD[item["valueFrom"]["fieldRef"]["fieldPath"]]
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
