"""Kill -9 and a restart with a state file: the real exporter (on the simulator, whose simulated
GPUs measure energy, so the costs are fitted) resumes with the marginal costs it had."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.servers import wait_until

pytestmark = pytest.mark.integration


def start(state_file):
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "exporter", "simulate", "--duration", "120", "--speed", "30",
            "--refresh", "60", "--interval", "0.5", "--listen-address", "127.0.0.1:0",
            "--state-file", str(state_file),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines = [proc.stdout.readline() for _ in range(2)]
    match = re.search(r"exporter at (\S+)", lines[1])
    assert match, lines
    return proc, match.group(1)


def costs(url):
    """(fits, {driver: J}) as the exporter publishes them; None before the first tick."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return None
    fits, marginal = None, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "token_economy_attribution_fits_total":
                fits = s.value
            elif s.name == "token_economy_marginal_energy_joules":
                marginal[s.labels["driver"]] = s.value
    return (fits, marginal) if fits is not None and marginal else None


def test_kill_9_and_a_restart_resume_the_fitted_costs(tmp_path):
    state = tmp_path / "state.json"
    proc, url = start(state)
    try:
        wait_until(lambda: (c := costs(url)) and c[0] >= 3, 60, what="three fits")

        def killed_at_a_saved_fit():
            before = costs(url)
            kept = json.loads(state.read_text())["core"]["estimator"]["updates"] if state.exists() else -1
            return before if before and before[0] == kept else None

        before = wait_until(killed_at_a_saved_fit, 30, interval=0.05, what="a scrape of the fit the file holds")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    proc, url = start(state)
    try:
        after = wait_until(lambda: costs(url), 30, interval=0.05, what="the first tick after the restart")
    finally:
        proc.kill()
        proc.wait(10)
    assert after[0] == before[0]  # resumed at the same fit, not from the prior
    for driver, value in before[1].items():
        # Seconds away pull the costs towards the prior by exp(-seconds / 3600): well below 1e-3.
        assert after[1][driver] == pytest.approx(value, rel=1e-3, abs=1e-12), driver
