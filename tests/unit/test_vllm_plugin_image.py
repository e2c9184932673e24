"""deploy/vllm-plugin/Dockerfile, vLLM's image with the plugin, read as Docker reads it: two
instructions, vLLM's image as it is plus the package pinned to this release, and the same vLLM
tag and image name as the manifests and the chart that run it."""

import tomllib
from pathlib import Path

import yaml

from tests.dockerfile import instructions

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "deploy" / "vllm-plugin" / "Dockerfile"
PARSED = instructions(RECIPE.read_text())
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "helm" / "token-economy-exporter"


def vllm_tag() -> str:
    ((keyword, image), _) = PARSED
    assert keyword == "FROM"
    repository, _, tag = image.partition(":")
    assert repository == "vllm/vllm-openai" and tag, image
    return tag


def test_two_instructions_vllms_image_and_the_package_pinned_to_this_release():
    # Nothing else: vLLM's user, entrypoint (`vllm serve`) and arguments stay as they are.
    assert [keyword for keyword, _ in PARSED] == ["FROM", "RUN"]
    assert PARSED[1][1] == f"python3 -m pip install --no-cache-dir token-economy-exporter=={VERSION}"


def test_the_manifests_and_the_chart_run_the_image_this_recipe_builds():
    plugin_image = f"vllm-openai-token-economy:{vllm_tag()}-{VERSION}"
    assert f"docker build -t REGISTRY/{plugin_image} deploy/vllm-plugin" in RECIPE.read_text()
    deployment = yaml.safe_load((KUSTOMIZE / "vllm-deployment.yaml").read_text())
    (vllm,) = deployment["spec"]["template"]["spec"]["containers"]
    assert vllm["image"] == plugin_image
    image = yaml.safe_load((CHART / "values.yaml").read_text())["vllm"]["image"]
    assert f"{image['repository']}:{image['tag']}" == plugin_image


def test_the_stock_image_where_there_is_no_plugin_is_the_one_it_builds_on():
    stock = f"vllm/vllm-openai:{vllm_tag()}"
    for component in ("no-plugin", "plugin-init-container"):
        text = (KUSTOMIZE / "components" / component / "kustomization.yaml").read_text()
        assert f"value: {stock}\n" in text, component
    for values in ("dra", "plugin-init-container", "visible-devices"):
        image = yaml.safe_load((CHART / "ci" / f"{values}-values.yaml").read_text())["vllm"]["image"]
        assert f"{image['repository']}:{image['tag']}" == stock, values
