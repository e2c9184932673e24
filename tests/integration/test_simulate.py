"""`simulate` runs the real exporter on the simulator, end to end over HTTP, with no GPU and no vLLM."""

import math
import re
import subprocess
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def test_simulate_serves_metrics_and_prints_a_summary_next_to_the_truth():
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
    assert proc.returncode == 0, out
    tokens = {labels["token_class"]: v for labels, v in samples["token_economy_tokens_total"]}
    assert tokens["input"] > 0 and tokens["output"] > 0
    energy = sum(v for _, v in samples["token_economy_energy_joules_total"])
    measured = sum(v for _, v in samples["token_economy_gpu_energy_joules_total"])
    assert math.isclose(energy, measured, rel_tol=1e-9) and measured > 0
    assert ("energy_source", "simulated") in samples["token_economy_build_info"][0][0].items()
    assert "true share" in out and re.search(r"^output\s+\d+", out, re.M) and "marginal J:" in out
