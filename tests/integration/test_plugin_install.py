"""The vLLM plugin without rebuilding vLLM's image, proved with the very command the manifests
run. This checkout is installed as the exporter's image installs it (its Dockerfile's files,
pyproject.toml, README.md and exporter/, into one site-packages beside nvidia-ml-py); the init
container's `python -c` copies from there into an empty folder; then a fresh Python that sees
only that folder and the standard library finds the plugin's entry point in the group vLLM reads,
and loads its class with nothing else missing but what vLLM's image has (vLLM and
prometheus_client). With the vLLM venv, vLLM's own plugin loader loads it from the copy.

The command is the same in the kustomize component and the chart. Building the package needs
PyPI for its build backend (pip's build isolation), as `pip install -e .` does."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.integration.k8s_tools import (
    CHART,
    KUSTOMIZE,
    PLUGIN_COPY,
    check_plugin_installer,
    documents,
    one,
    run,
    tool,
)

ROOT = KUSTOMIZE.parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
GROUP = "vllm.stat_logger_plugins"
ENTRY_POINT = ("token_economy", "exporter.plugin:TokenEconomyStatLogger")


def kustomize_command(tmp_path: Path) -> list[str]:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(KUSTOMIZE, overlay)
    (overlay / "kustomization.yaml").write_text(
        f"resources:\n  - {base}\ncomponents:\n  - {base}/components/plugin-init-container\n"
    )
    text = run(tool("kubectl"), "kustomize", str(overlay)).stdout
    return check_plugin_installer(one(documents(text), "Deployment"))


def chart_command() -> list[str]:
    text = run(
        tool("helm"), "template", "tee", str(CHART), "--set", "plugin.install=initContainer", "--set",
        "vllm.image.repository=vllm/vllm-openai", "--set", "vllm.image.tag=v0.32.0",
    ).stdout  # fmt: skip
    return check_plugin_installer(one(documents(text), "Deployment"))


@pytest.fixture(scope="module")
def image_python(tmp_path_factory) -> Path:
    """/opt/venv/bin/python of the exporter's image, near enough: a venv of this Python holding
    this checkout and the nvidia-ml-py the test venv has, installed by pip into its site-packages."""
    work = tmp_path_factory.mktemp("image")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "exporter", source / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    nvml = importlib.metadata.version("nvidia-ml-py")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", site,
         str(source), f"nvidia-ml-py=={nvml}"],
        capture_output=True, text=True, timeout=600, check=False, cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return python


@pytest.fixture(scope="module")
def copied(image_python, tmp_path_factory) -> tuple[Path, str]:
    """The emptyDir after the init container: the chart's command, run by the image's Python from
    an unrelated working directory."""
    command = chart_command()
    target = tmp_path_factory.mktemp("emptydir") / "python"
    argv = [str(image_python), *command[1:]]
    argv[argv.index(PLUGIN_COPY)] = str(target)
    result = subprocess.run(
        argv, env={"PATH": os.environ["PATH"]}, cwd=target.parent,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return target, result.stdout


def test_the_component_and_the_chart_run_the_same_copy(tmp_path):
    command = kustomize_command(tmp_path)
    assert command == chart_command()
    assert command[5:] == ["token-economy-exporter", "nvidia-ml-py"]


def test_the_copy_holds_the_package_its_metadata_and_pynvml_and_nothing_else(copied):
    target, log = copied
    assert f"copied token-economy-exporter {VERSION} to {target}" in log
    assert "copied nvidia-ml-py" in log
    top = sorted(p.name for p in target.iterdir())
    dist_infos = [name for name in top if name.endswith(".dist-info")]
    assert dist_infos == [f"nvidia_ml_py-{importlib.metadata.version('nvidia-ml-py')}.dist-info",
                          f"token_economy_exporter-{VERSION}.dist-info"]  # fmt: skip
    assert set(top) - set(dist_infos) <= {"exporter", "pynvml.py", "example.py"}, top
    assert (target / "exporter" / "plugin" / "__init__.py").is_file()
    entry_points = (target / f"token_economy_exporter-{VERSION}.dist-info" / "entry_points.txt").read_text()
    assert f"[{GROUP}]" in entry_points
    # No console script climbing out of the folder, and no bytecode of the image's Python.
    assert not (target.parent / "bin").exists()
    assert not list(target.rglob("__pycache__"))


PROBE = r"""
import importlib.abc, importlib.machinery, importlib.metadata, inspect, json, sys, sysconfig, types

class WhatVllmsImageHas(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # vLLM and prometheus_client, present in vLLM's image: empty packages whose every attribute
    # is a class, offered only where nothing else on sys.path has the module.
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("vllm", "prometheus_client"):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: type(attr, (), {})
        return module
    def exec_module(self, module):
        pass

sys.meta_path.append(WhatVllmsImageHas())
found = [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=sys.argv[1])]
plugin = importlib.metadata.entry_points(group=sys.argv[1])[found[0][0]].load()
import pynvml
stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
outside = sorted(
    name for name, module in list(sys.modules.items())
    if isinstance(getattr(module, "__file__", None), str) and not module.__file__.startswith((sys.argv[2], *stdlib))
)
print(json.dumps({
    "found": found,
    "class": plugin.__name__,
    "class_file": inspect.getfile(plugin),
    "pynvml": pynvml.__file__,
    "stubbed": sorted(n for n, m in list(sys.modules.items()) if n.partition(".")[0] in ("vllm", "prometheus_client")),
    "stub_loaders": sorted({type(getattr(getattr(sys.modules[n], "__spec__", None), "loader", None)).__name__
                            for n in list(sys.modules) if n.partition(".")[0] in ("vllm", "prometheus_client")}),
    "outside": outside,
}))
"""


def probe(python: str, target: Path, *flags: str) -> dict:
    result = subprocess.run(
        [python, *flags, "-c", PROBE, GROUP, str(target)],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(target)}, cwd=target.parent,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_python_that_sees_only_the_copy_finds_the_entry_point_vllm_reads_and_loads_the_plugin(copied):
    target, _ = copied
    seen = probe(sys.executable, target, "-S")  # -S: the copy and the standard library, nothing else
    assert seen["found"] == [list(ENTRY_POINT)]
    assert seen["class"] == "TokenEconomyStatLogger"
    assert Path(seen["class_file"]).is_relative_to(target)
    assert Path(seen["pynvml"]) == target / "pynvml.py"
    # Everything the plugin imports is in the copy or the standard library, but vLLM's own.
    assert seen["outside"] == [], seen["outside"]
    assert seen["stubbed"] and seen["stub_loaders"] == ["WhatVllmsImageHas"], seen


def test_vllms_own_loader_loads_the_copied_plugin(copied, vllm_python):
    """The stat-logger factories vLLM's AsyncLLM builds its loggers from, in the vLLM venv, with
    the copy on PYTHONPATH ahead of anything installed there."""
    target, _ = copied
    script = (
        "import inspect, json\n"
        "from vllm.v1.metrics.loggers import load_stat_logger_plugin_factories\n"
        "print(json.dumps([[f.__name__, inspect.getfile(f)] for f in load_stat_logger_plugin_factories()]))\n"
    )
    result = subprocess.run(
        [vllm_python, "-c", script],
        env={**os.environ, "PYTHONPATH": str(target)}, cwd=target.parent,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    ((name, path),) = json.loads(result.stdout.strip().splitlines()[-1])
    assert name == "TokenEconomyStatLogger" and Path(path).is_relative_to(target), (name, path)
