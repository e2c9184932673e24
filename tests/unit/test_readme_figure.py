"""README's figure (docs/figures/overview.svg) is the drawing of the committed benchmark output
(docs/figures/overview.json), and that output is the benchmark's: its timeline reruns to the same
numbers, one of its accuracy cases too, and the rest are the figures README's accuracy table
quotes. The SVG stands alone: well-formed, titled, nothing fetched from elsewhere. In process:
scripts/figure.py's functions are imported, nothing is started."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks import figure_data
from benchmarks.bench_accuracy import case_record, run_case
from benchmarks.evaluation import fmt_minutes
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "figure.py"
REFRESH = "run python scripts/figure.py --refresh"
NS = "{http://www.w3.org/2000/svg}"


figure = load_script("figure")


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads((ROOT / figure.DATA).read_text(encoding="utf-8"))


def test_the_svg_is_the_drawing_of_the_json():
    reports = figure.check(ROOT)
    assert reports == [], "the figure is out of date; run python scripts/figure.py:\n" + "".join(reports)


def test_the_json_is_written_in_its_fixed_layout(document):
    assert (ROOT / figure.DATA).read_text(encoding="utf-8") == figure_data.dumps(document) + "\n"
    assert document["schema"] == figure_data.SCHEMA


def test_the_timeline_reruns_to_the_same_numbers(document):
    """Seeded, in virtual time: the benchmark gives exactly the committed figures."""
    assert figure_data.rounded(figure_data.timeline()) == document["timeline"], f"the timeline changed; {REFRESH}"


def test_the_timeline_conserves_the_energy_and_prices_the_whole_gpu_time(document):
    timeline = document["timeline"]
    run = timeline["run"]
    ticks = len(timeline["t_seconds"])
    assert ticks == run["duration_seconds"] / run["interval_seconds"]
    for series in ("energy_joules", "true_energy_joules", "cost"):
        assert set(timeline[series]) == set(figure_data.CLASSES)
        assert all(len(values) == ticks for values in timeline[series].values())
    allocated = sum(sum(v) for v in timeline["energy_joules"].values())
    true = sum(sum(v) for v in timeline["true_energy_joules"].values())
    assert allocated == pytest.approx(timeline["measured_energy_total_joules"], rel=1e-5)
    assert true == pytest.approx(timeline["true_energy_total_joules"], rel=1e-5)
    cost = sum(sum(v) for v in timeline["cost"].values())
    assert cost == pytest.approx(run["gpu_hourly_price"] * run["gpus"] * run["duration_seconds"] / 3600, rel=1e-5)
    assert sum(timeline["energy_joules"]["idle"]) > 0 and sum(timeline["tokens"]["output"]) > 0


def test_the_accuracy_part_holds_bench_accuracys_well_mixed_cases(document):
    accuracy = document["accuracy"]
    assert accuracy["duration_seconds"] == figure_data.ACCURACY_DURATION
    assert accuracy["command"] == "python -m benchmarks.bench_accuracy --duration 1200"
    expected = [(c.name, c.truth, c.path, c.interval) for c in figure_data.accuracy_cases()]
    found = [(c["name"], c["truth"], c["path"], c["interval_seconds"]) for c in accuracy["cases"]]
    assert found == expected
    assert all(c["work_origin"] == ("plugin" if c["path"] == "plugin" else "vllm") for c in accuracy["cases"])


def test_one_accuracy_case_reruns_to_the_same_numbers(document):
    case = next(
        c for c in figure_data.accuracy_cases() if (c.truth, c.path, c.interval) == ("component", "counters", 5.0)
    )
    record = figure_data.rounded(case_record(*run_case(case, figure_data.ACCURACY_DURATION)))
    committed = next(
        c
        for c in document["accuracy"]["cases"]
        if (c["truth"], c["path"], c["interval_seconds"]) == ("component", "counters", 5.0)
    )
    assert record == committed, f"bench_accuracy's figures changed; {REFRESH} (and update README's accuracy table)"


def readme_rows() -> dict[tuple[str, str], list[str]]:
    """README's accuracy table, well_mixed rows: (truth, path) -> the cells after the path."""
    rows = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and cells[0] == figure_data.ACCURACY_SCENARIO and cells[1] in ("component", "phase"):
            rows[(cells[1], cells[2])] = cells[3:]
    return rows


def pair(errors: dict, digits: int = 1) -> str:
    return f"{figure.signed(errors['input'] * 100, digits)} / {figure.signed(errors['output'] * 100, digits)} %"


def test_the_accuracy_figures_are_those_of_readmes_table(document):
    """Columns: 1 s, 5 s, 15 s, time to trust (5 s), all-to-output, request-time, vs time share (5 s)."""
    rows = readme_rows()
    assert set(rows) == {(t, p) for t in ("component", "phase") for p in ("counters", "plugin")}, rows
    cases = {(c["truth"], c["path"], c["interval_seconds"]): c for c in document["accuracy"]["cases"]}
    for (truth, path), cells in rows.items():
        at5 = cases[(truth, path, 5.0)]
        expected = [pair(cases[(truth, path, interval)]["share_error"]) for interval in (1.0, 5.0, 15.0)]
        expected.append(fmt_minutes(at5["trust_seconds"]))
        expected.append(pair(at5["baselines"]["all_to_output"], 0))
        expected.append(pair(at5["baselines"]["request_time"], 0))
        expected.append(pair(at5["vs_time_share"]))
        for column, (quoted, ours) in enumerate(zip(cells, expected)):
            if quoted:  # README leaves some cells empty
                assert quoted == ours, (
                    f"README's {truth}/{path} column {column}: {quoted!r}, the figure's data {ours!r}"
                )


def test_the_svg_is_well_formed_titled_and_self_contained():
    text = (ROOT / figure.SVG).read_text(encoding="utf-8")
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == f"{NS}svg"
    title = root.find(f"{NS}title")
    assert title is not None and title.text and "Token Economy Exporter" in title.text
    assert root.find(f"{NS}desc") is not None
    # An explicit white background: readable in GitHub's dark theme too.
    first = next(iter(root.iter(f"{NS}rect")))
    assert (first.get("width"), first.get("height"), first.get("fill")) == (
        str(float(figure.WIDTH)),
        str(float(figure.HEIGHT)),
        "#ffffff",
    )
    for element in root.iter():
        assert element.tag.removeprefix(NS) not in ("image", "script", "foreignObject", "use", "a", "style")
        for name, value in element.attrib.items():
            assert not name.endswith("href"), (element.tag, name, value)
            assert "url(" not in value, (element.tag, name, value)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg\")", text)
    assert not re.search(r"\b20\d\d-\d\d-\d\d", text)  # no date: the same JSON gives the same bytes


def test_the_drawing_is_deterministic_and_follows_the_data(document):
    assert figure.render(document) == figure.render(json.loads(json.dumps(document)))
    changed = json.loads(json.dumps(document))
    changed["accuracy"]["cases"][0]["share_error"]["input"] = -0.04321
    assert "\u22124.3" in figure.render(changed) and "\u22124.3" not in figure.render(document)


@pytest.fixture
def tree(tmp_path) -> Path:
    for rel in (figure.DATA, figure.SVG):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_the_check_reports_a_diff_and_writes_nothing_and_the_write_repairs(tree, capsys):
    svg = tree / figure.SVG
    svg.write_text(svg.read_text(encoding="utf-8").replace("GPU power by class", "GPU power per class"))
    before = svg.read_bytes()
    assert figure.main(["--check", "--root", str(tree)]) == 1
    out = capsys.readouterr().out
    assert "differs" in out and "-<text" in out and "GPU power per class" in out
    assert svg.read_bytes() == before
    assert figure.main(["--root", str(tree)]) == 0
    assert figure.check(tree) == []
    assert svg.read_bytes() == (ROOT / figure.SVG).read_bytes()


def test_the_check_reports_a_missing_svg(tree, capsys):
    (tree / figure.SVG).unlink()
    assert figure.main(["--check", "--root", str(tree)]) == 1
    assert "missing" in capsys.readouterr().out
    assert not (tree / figure.SVG).exists()
