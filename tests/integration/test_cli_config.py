"""Settings as users give them to the real command (`python -m exporter run` in a child process):
a config file that is not there, a number that is not finite, a URL that is not usable all stop
start-up with exit status 2 and one line naming the setting, and no password in it. Once running,
neither the landing page nor a log line shows the password of vLLM's URL, and a TOKEN_ECONOMY_*
variable no setting reads is warned about once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from tests.e2e.vllm_server import HOST, free_port

PREFIX = "token-economy-exporter: error: "


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKEN_ECONOMY_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "exporter", "run", "--listen-address", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )


def test_a_config_file_variable_naming_nothing_exits_2_like_the_flag(tmp_path):
    missing = str(tmp_path / "missing.toml")
    by_variable = run_cli(TOKEN_ECONOMY_CONFIG_FILE=missing)
    by_flag = run_cli("--config", missing)
    assert (by_variable.returncode, by_flag.returncode) == (2, 2)
    assert by_variable.stderr == f"{PREFIX}setting config (TOKEN_ECONOMY_CONFIG_FILE): no such file: {missing}\n"
    assert f"no such file: {missing}" in by_flag.stderr
    assert by_variable.stdout == ""


def test_a_config_file_variable_naming_a_directory_exits_2(tmp_path):
    result = run_cli(TOKEN_ECONOMY_CONFIG_FILE=str(tmp_path))
    assert result.returncode == 2 and f"not a file: {tmp_path}" in result.stderr


def test_an_infinite_number_in_the_config_file_exits_2(tmp_path):
    path = tmp_path / "exporter.toml"
    path.write_text("gpu_hourly_price = inf\n")
    result = run_cli(TOKEN_ECONOMY_CONFIG_FILE=str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{PREFIX}setting gpu_hourly_price (--gpu-hourly-price / ")
    assert "allowed: finite, >= 0" in result.stderr


def test_a_url_with_a_trailing_newline_exits_2_without_showing_its_password():
    result = run_cli(TOKEN_ECONOMY_VLLM_URL="http://admin:hunter2@vllm:8000\n")
    assert result.returncode == 2
    assert result.stderr.startswith(f"{PREFIX}setting vllm_url (--vllm-url / TOKEN_ECONOMY_VLLM_URL): ")
    assert "control characters" in result.stderr and "hunter2" not in result.stderr


def test_idle_min_samples_above_idle_window_exits_2():
    result = run_cli("--idle-window", "10", "--idle-min-samples", "20")
    assert result.returncode == 2 and "setting idle_min_samples" in result.stderr


def test_no_password_on_the_landing_page_or_in_the_log_and_unknown_variables_warned_once(tmp_path):
    port, closed = free_port(), free_port()  # vLLM's URL names a port nothing listens on
    log_path = tmp_path / "exporter.log"
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKEN_ECONOMY_")}
    environ.update(TOKEN_ECONOMY_INTERVALL="3", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "exporter", "run", "--energy-source", "phase-model", "--interval", "0.2"]
    command += ["--vllm-url", f"http://admin:hunter2@{HOST}:{closed}/", "--listen-address", f"{HOST}:{port}"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ)
    try:
        deadline = time.monotonic() + 30
        page = None
        while page is None or "source_lost" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            try:
                page = httpx.get(f"http://{HOST}:{port}/", timeout=1.0).text
            except httpx.HTTPError:
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert f"http://admin:***@{HOST}:{closed}" in page and "hunter2" not in page
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert not any("hunter2" in json.dumps(line) for line in lines)
    (warning,) = [line for line in lines if line["event"] == "unknown_environment_variable"]
    assert warning["variable"] == "TOKEN_ECONOMY_INTERVALL" and warning["did_you_mean"] == "TOKEN_ECONOMY_INTERVAL"
