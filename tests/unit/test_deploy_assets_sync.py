"""The Helm chart and the kustomize base carry copies of the Prometheus rules and the Grafana
dashboards (neither tool may read outside its tree): the committed copies must equal what
scripts/sync-deploy-assets.py makes from the sources, and the script must notice and repair
every kind of drift."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "sync-deploy-assets.py"


def load_script():
    spec = importlib.util.spec_from_file_location("sync_deploy_assets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync = load_script()


def test_the_committed_copies_equal_the_sources():
    differences = sync.differences(ROOT)
    assert differences == [], "copies differ from their sources; run scripts/sync-deploy-assets.py:\n" + "\n".join(
        differences
    )


def test_the_kustomize_prometheusrule_wraps_the_rules_unchanged():
    wrapped = yaml.safe_load((ROOT / sync.KUSTOMIZE / "prometheusrule.yaml").read_text())
    assert (wrapped["apiVersion"], wrapped["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert wrapped["spec"] == yaml.safe_load((ROOT / sync.RULES_SOURCE).read_text())


def test_every_dashboard_has_a_configmap_in_the_kustomization():
    kustomization = yaml.safe_load((ROOT / sync.KUSTOMIZE / "dashboards" / "kustomization.yaml").read_text())
    assert kustomization["generatorOptions"]["labels"] == {"grafana_dashboard": "1"}
    listed = [f for gen in kustomization["configMapGenerator"] for f in gen["files"]]
    assert listed == sorted(p.name for p in (ROOT / sync.DASHBOARDS_SOURCE).glob("*.json"))
    assert listed, "no dashboards"


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the sources and the copies, to break."""
    for rel in (
        sync.RULES_SOURCE,
        sync.DASHBOARDS_SOURCE,
        sync.CHART_FILES,
        f"{sync.KUSTOMIZE}/dashboards",
        f"{sync.KUSTOMIZE}/prometheusrule.yaml",
    ):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    assert sync.differences(tmp_path) == []
    return tmp_path


def check(root: Path, capsys) -> tuple[int, str]:
    status = sync.main(["--check", "--root", str(root)])
    return status, capsys.readouterr().out


def test_an_edited_rules_file_is_caught_and_synced(tree, capsys):
    rules = tree / sync.RULES_SOURCE
    rules.write_text(rules.read_text() + "# a new last line\n")
    status, out = check(tree, capsys)
    assert status == 1
    assert f"differs: {sync.CHART_FILES}/token-economy.rules.yml" in out
    assert f"differs: {sync.KUSTOMIZE}/prometheusrule.yaml" in out
    assert sync.main(["--root", str(tree)]) == 0
    assert check(tree, capsys)[0] == 0
    assert (tree / sync.KUSTOMIZE / "prometheusrule.yaml").read_text().endswith("  # a new last line\n")


def test_a_new_and_a_removed_dashboard_are_caught_and_synced(tree, capsys):
    dashboards = tree / sync.DASHBOARDS_SOURCE
    (dashboards / "token-economy-fleet.json").write_text('{"title": "Fleet"}\n')
    status, out = check(tree, capsys)
    assert status == 1 and f"missing: {sync.CHART_FILES}/dashboards/token-economy-fleet.json" in out
    assert f"differs: {sync.KUSTOMIZE}/dashboards/kustomization.yaml" in out
    sync.main(["--root", str(tree)])
    assert "token-economy-fleet-dashboard" in (tree / sync.KUSTOMIZE / "dashboards" / "kustomization.yaml").read_text()

    (dashboards / "token-economy-fleet.json").unlink()
    status, out = check(tree, capsys)
    assert status == 1 and f"stale: {sync.KUSTOMIZE}/dashboards/token-economy-fleet.json" in out
    sync.main(["--root", str(tree)])
    assert not (tree / sync.KUSTOMIZE / "dashboards" / "token-economy-fleet.json").exists()
    assert check(tree, capsys)[0] == 0


def test_a_hand_edited_copy_is_caught(tree, capsys):
    copy = tree / sync.CHART_FILES / "token-economy.rules.yml"
    copy.write_text(copy.read_text() + "\n# edited by hand\n")
    status, out = check(tree, capsys)
    assert status == 1 and f"differs: {sync.CHART_FILES}/token-economy.rules.yml" in out
