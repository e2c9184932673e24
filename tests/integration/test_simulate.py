"""`simulate` runs the real exporter on the simulator, end to end over HTTP, with no GPU and no vLLM."""

import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families


def run_simulate(*extra: str) -> tuple[list[str], dict, str, int]:
    """Run `simulate` for 8 s, scrape its exporter once after 4 s: (first lines, samples, output, rc)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "simulate",
            "--duration",
            "8",
            "--speed",
            "30",
            "--refresh",
            "2",
            "--interval",
            "0.5",
            "--listen-address",
            "127.0.0.1:0",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        exporter_url = re.search(r"exporter at (\S+)", lines[1]).group(1)
        time.sleep(4)
        samples = {}
        for family in text_string_to_metric_families(httpx.get(exporter_url, timeout=5).text):
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.labels, s.value))
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return lines, samples, out, proc.returncode


SPLIT_LINE = re.compile(
    r"^split error vs oracle since start: input\s+[+-]\d+\.\d% +output\s+[+-]\d+\.\d% +"
    r"(trusted since t=\d+ s|not trusted yet)",
    re.M,
)


def test_simulate_serves_metrics_and_prints_a_summary_next_to_the_truth():
    _, samples, out, returncode = run_simulate()
    assert returncode == 0, out
    tokens = {labels["token_class"]: v for labels, v in samples["token_economy_tokens_total"]}
    assert tokens["input"] > 0 and tokens["output"] > 0
    energy = sum(v for _, v in samples["token_economy_energy_joules_total"])
    measured = sum(v for _, v in samples["token_economy_gpu_energy_joules_total"])
    assert math.isclose(energy, measured, rel_tol=1e-9) and measured > 0
    assert ("energy_source", "simulated") in samples["token_economy_build_info"][0][0].items()
    assert "true share" in out and re.search(r"^output\s+\d+", out, re.M) and "marginal J:" in out
    assert dict(samples["token_economy_build_info"][0][0])["work_source"] == "vllm"
    assert SPLIT_LINE.search(out), out  # the cumulative split against the oracle, and the time to trust


def test_simulate_with_the_plugin_counts_the_work_from_the_plugins_families():
    lines, samples, out, returncode = run_simulate("--plugin")
    assert returncode == 0, out
    assert "with the plugin" in lines[0]
    build = dict(samples["token_economy_build_info"][0][0])
    assert build["work_source"] == "plugin" and build["energy_source"] == "simulated"
    # The simulated GPUs' counters still measure: the plugin publishes no energy here.
    sources = [(labels["work_source"], labels["energy_source"]) for labels, _ in samples["token_economy_sources_info"]]
    assert sources == [("plugin", "simulator")]
    tokens = {labels["token_class"]: v for labels, v in samples["token_economy_tokens_total"]}
    assert tokens["input"] > 0 and tokens["output"] > 0
    energy = sum(v for _, v in samples["token_economy_energy_joules_total"])
    measured = sum(v for _, v in samples["token_economy_gpu_energy_joules_total"])
    assert math.isclose(energy, measured, rel_tol=1e-9) and measured > 0
    assert SPLIT_LINE.search(out), out


def test_the_readmes_break_even_recipe_prints_the_line_and_exports_the_prices():
    """The command README's break-even section shows, run as it is written (for a few seconds)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (command,) = re.findall(r"^token-economy-exporter simulate --gpu-hourly-price .*--api-prices .*$", readme, re.M)
    args = shlex.split(command)[2:]
    _, samples, out, returncode = run_simulate(*args)
    assert returncode == 0, out
    for reference in ("api-8b", "api-mini"):
        line = re.search(rf"^break-even vs {reference}: this traffic costs (\S+) USD there, (\S+) here .*$", out, re.M)
        assert line and float(line[1]) > 0 and float(line[2]) > 0, out
    prices = {
        (labels["reference"], labels["token_class"]): v
        for labels, v in samples["token_economy_api_price_per_million_tokens"]
    }
    assert prices[("api-mini", "output")] == 0.6 and prices[("api-8b", "cached_input")] == 0.05
    assert [labels["reference"] for labels, _ in samples["token_economy_break_even_reference_info"]] == ["api-8b"]
