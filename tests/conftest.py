"""Shared fixtures and the suites' markers, which follow the folders:

- tests/unit: pure, fast, no marker. No sockets and no processes (tests/unit/conftest.py
  refuses them), so `pytest tests/unit` is the quick loop.
- tests/integration: `integration`: sockets, processes or real tools, but no vLLM.
- tests/e2e, and any test that needs a real vLLM server (the `vllm_python` fixture, directly or
  through another fixture): `e2e`, and only that, wherever it lives.

So `-m "not e2e and not integration"` runs exactly tests/unit, and `-m "not e2e"` runs
everything a machine without the vLLM venv can run."""

from pathlib import Path

import pytest

pytest_plugins = ["tests.vllm_fixtures"]

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"
INTEGRATION = TESTS / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(item.path).resolve()
        if "vllm_python" in getattr(item, "fixturenames", ()) or path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)
        elif path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)
