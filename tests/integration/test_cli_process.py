"""The command line as users start it: `python -m exporter` in a child process, where start-up
either stops with exit status 2 naming the setting at fault, or prints what was asked."""

import subprocess
import sys

import pytest

from exporter.config import Settings


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_nvml_demanded_where_there_is_no_driver_stops_start_up():
    result = run_cli("run", "--energy-source", "nvml", "--listen-address", "127.0.0.1:0")
    assert result.returncode == 2 and "energy_source" in result.stderr


def test_busy_port_is_named(unused_tcp_port_holder):
    port = unused_tcp_port_holder
    result = run_cli("run", "--energy-source", "phase-model", "--listen-address", f"127.0.0.1:{port}")
    assert result.returncode == 2 and "listen_address" in result.stderr


@pytest.fixture
def unused_tcp_port_holder():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("token-economy-exporter ")
    help_text = run_cli("run", "--help").stdout
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
