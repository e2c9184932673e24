"""The image's HEALTHCHECK command and ENTRYPOINT, read from the Dockerfile as Docker parses it,
run for real against a live exporter, without a container engine."""

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.dockerfile import ROOT, env_of_final, exec_form, final, healthcheck_argv
from tests.e2e.vllm_server import free_port


def image_argv(argv: list[str]) -> list[str]:
    # The image's interpreter is its venv's python; here it is this test's.
    assert Path(argv[0]).name.startswith("python"), argv
    return [sys.executable, *argv[1:]]


def test_the_healthcheck_passes_against_a_running_exporter_and_fails_without_one(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_ECONOMY_")}
    env.update(env_of_final())
    env.update(
        PATH=os.environ.get("PATH", ""),
        PYTHONPATH=str(ROOT),
        TOKEN_ECONOMY_LISTEN_ADDRESS=f"127.0.0.1:{port}",
        TOKEN_ECONOMY_ENERGY_SOURCE="phase-model",
        TOKEN_ECONOMY_VLLM_URL=f"http://127.0.0.1:{free_port()}",
        TOKEN_ECONOMY_INTERVAL="0.5",
    )
    check = image_argv(healthcheck_argv())
    argv = image_argv(exec_form(final("ENTRYPOINT")[-1])) + exec_form(final("CMD")[-1])
    exporter = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(check, env=env, capture_output=True, timeout=10, check=False).returncode != 0:
            assert exporter.poll() is None, exporter.stdout.read().decode()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
    assert exporter.returncode == 0
    assert subprocess.run(check, env=env, capture_output=True, timeout=10, check=False).returncode != 0
    assert list(tmp_path.iterdir()) == [], "the exporter wrote into its working directory"
