"""Shared fixtures: a real vLLM server (CPU build) for the e2e and integration suites. Every test
that needs one, directly or through another fixture, is marked `e2e`, so `-m "not e2e"` runs
the rest on a machine without the vLLM venv."""

import pytest

pytest_plugins = ["tests.vllm_fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "vllm_python" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
