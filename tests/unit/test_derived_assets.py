"""Every derived file (the dashboards' JSON and their kustomize base, the Helm chart's copies of the
rules and dashboards, the kustomize PrometheusRule, README's metric table) is what
scripts/assets.py derives from its source, and the script's check notices, and its write
repairs, every kind of drift. In process: the script's functions are imported, nothing is started."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "assets.py"


assets = load_script("assets")
CHART_RULES = f"{assets.CHART_FILES}/token-economy.rules.yml"
OVERVIEW = f"{assets.DASHBOARDS_DIR}/token-economy-overview.json"
DASHBOARDS_KUSTOMIZATION = f"{assets.DASHBOARDS_DIR}/kustomization.yaml"


def test_every_derived_file_is_up_to_date():
    reports = assets.check(ROOT)
    assert reports == [], "derived files are out of date; run python scripts/assets.py:\n" + "".join(reports)


def test_the_script_finds_the_repository_from_its_own_path():
    assert assets.ROOT == ROOT


def test_the_kustomize_prometheusrule_wraps_the_rules_unchanged():
    wrapped = yaml.safe_load((ROOT / assets.PROMETHEUS_RULE).read_text())
    assert (wrapped["apiVersion"], wrapped["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert wrapped["spec"] == yaml.safe_load((ROOT / assets.RULES).read_text())


def test_every_dashboard_has_a_configmap_in_the_dashboards_kustomization():
    kustomization = yaml.safe_load((ROOT / DASHBOARDS_KUSTOMIZATION).read_text())
    assert kustomization["generatorOptions"] == {"disableNameSuffixHash": True, "labels": {"grafana_dashboard": "1"}}
    listed = [f for gen in kustomization["configMapGenerator"] for f in gen["files"]]
    assert listed == sorted(assets.DASHBOARDS) == sorted(p.name for p in (ROOT / assets.DASHBOARDS_DIR).glob("*.json"))
    assert listed, "no dashboards"


def test_the_kustomize_base_uses_the_dashboards_directory_not_a_copy():
    base = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "kustomization.yaml").read_text())
    assert "../../grafana/dashboards" in base["resources"]
    assert not (ROOT / "deploy" / "kubernetes" / "dashboards").exists()


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the sources and the derived files, to break."""
    for rel in (assets.RULES, assets.DASHBOARDS_DIR, assets.CHART_FILES, assets.PROMETHEUS_RULE, assets.README):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    assert assets.check(tmp_path) == []
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check(root: Path, capsys) -> tuple[int, str]:
    """`--check`, which must write nothing: (exit status, stdout)."""
    before = snapshot(root)
    status = assets.main(["--check", "--root", str(root)])
    assert snapshot(root) == before, "--check wrote something"
    return status, capsys.readouterr().out


def write(root: Path, capsys) -> str:
    assert assets.main(["--root", str(root)]) == 0
    return capsys.readouterr().out


def test_an_edited_rules_file_is_caught_with_a_diff_and_written(tree, capsys):
    rules = tree / assets.RULES
    rules.write_text(rules.read_text() + "# a new last line\n")
    status, out = check(tree, capsys)
    assert status == 1
    assert f"differs: {CHART_RULES}" in out and f"differs: {assets.PROMETHEUS_RULE}" in out
    assert f"+++ {assets.PROMETHEUS_RULE} (derived)" in out and "\n+  # a new last line\n" in out
    assert f"wrote: {CHART_RULES}" in write(tree, capsys)
    assert check(tree, capsys)[0] == 0
    assert (tree / assets.PROMETHEUS_RULE).read_text().endswith("  # a new last line\n")


def test_a_dashboard_json_that_differs_from_the_code_is_caught_with_a_diff(tree, capsys):
    overview = tree / OVERVIEW
    overview.write_text(overview.read_text().replace('"refresh": "30s"', '"refresh": "1m"', 1))
    status, out = check(tree, capsys)
    assert status == 1 and f"differs: {OVERVIEW}" in out
    assert '-  "refresh": "1m"' in out and '+  "refresh": "30s"' in out
    assert f"{assets.CHART_FILES}/dashboards" not in out, "the chart's copy is derived from the code, not the file"
    write(tree, capsys)
    assert check(tree, capsys)[0] == 0


def test_a_new_and_a_removed_dashboard_are_caught_and_written(tree, capsys, monkeypatch):
    monkeypatch.setitem(assets.DASHBOARDS, "token-economy-fleet.json", lambda: {"title": "Fleet"})
    status, out = check(tree, capsys)
    assert status == 1
    assert f"missing: {assets.DASHBOARDS_DIR}/token-economy-fleet.json" in out
    assert f"missing: {assets.CHART_FILES}/dashboards/token-economy-fleet.json" in out
    assert f"differs: {DASHBOARDS_KUSTOMIZATION}" in out and "+  - name: token-economy-fleet-dashboard" in out
    write(tree, capsys)
    assert (tree / assets.CHART_FILES / "dashboards" / "token-economy-fleet.json").read_text() == (
        '{\n  "title": "Fleet"\n}\n'
    )
    assert check(tree, capsys)[0] == 0

    monkeypatch.delitem(assets.DASHBOARDS, "token-economy-fleet.json")
    status, out = check(tree, capsys)
    assert status == 1
    assert f"stale: {assets.DASHBOARDS_DIR}/token-economy-fleet.json" in out
    assert f"stale: {assets.CHART_FILES}/dashboards/token-economy-fleet.json" in out
    assert f"deleted: {assets.CHART_FILES}/dashboards/token-economy-fleet.json" in write(tree, capsys)
    assert not (tree / assets.DASHBOARDS_DIR / "token-economy-fleet.json").exists()
    assert "token-economy-fleet" not in (tree / DASHBOARDS_KUSTOMIZATION).read_text()
    assert check(tree, capsys)[0] == 0


def test_a_hand_edited_copy_is_caught(tree, capsys):
    copy = tree / CHART_RULES
    copy.write_text(copy.read_text() + "\n# edited by hand\n")
    status, out = check(tree, capsys)
    assert status == 1 and f"differs: {CHART_RULES}" in out and "-# edited by hand" in out


def test_a_missing_copy_is_caught_and_written(tree, capsys):
    (tree / assets.PROMETHEUS_RULE).unlink()
    status, out = check(tree, capsys)
    assert status == 1 and f"missing: {assets.PROMETHEUS_RULE}" in out
    write(tree, capsys)
    assert (tree / assets.PROMETHEUS_RULE).read_bytes() == (ROOT / assets.PROMETHEUS_RULE).read_bytes()


def test_the_readme_metric_table_is_rewritten_and_nothing_else(tree, capsys):
    readme = tree / assets.README
    committed = readme.read_text()
    table = assets.CATALOGUE.readme_table()
    assert table in committed
    edited = committed.replace(table, table.replace("| counter |", "| gauge |", 1)) + "\nA line of our own.\n"
    readme.write_text(edited)
    status, out = check(tree, capsys)
    assert status == 1 and f"differs: {assets.README}" in out and "+| `token_economy_" in out
    write(tree, capsys)
    assert readme.read_text() == committed + "\nA line of our own.\n"


def test_a_readme_without_its_table_markers_is_an_error(tree, capsys):
    readme = tree / assets.README
    readme.write_text(readme.read_text().replace(assets.TABLE_END, "<!-- end -->"))
    assert assets.main(["--check", "--root", str(tree)]) == 2
    assert assets.TABLE_END in capsys.readouterr().err


def test_a_missing_rules_source_is_an_error(tree, capsys):
    (tree / assets.RULES).unlink()
    assert assets.main(["--root", str(tree)]) == 2
    assert f"missing source: {assets.RULES}" in capsys.readouterr().err
