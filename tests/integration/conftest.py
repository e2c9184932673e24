"""Fixtures of the integration suite: the exporter as users run it, beside the session's real
vLLM server (fixtures `vllm_server` and `tiny_model_dir` of tests/vllm_fixtures.py), and traffic for
that server while a module needs it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.exporter_process import ExporterProcess, total
from tests.integration.servers import LoadGenerator, wait_until

MODEL = "tiny-llama"


@pytest.fixture(scope="session")
def live_exporter(vllm_server, tiny_model_dir, tmp_path_factory) -> Iterator[ExporterProcess]:
    """`python -m exporter run …` on loopback beside the real vLLM server, as users run it."""
    exporter = ExporterProcess(
        vllm_server.url,
        tmp_path_factory.mktemp("exporter"),
        "--interval",
        "0.5",
        "--energy-source",
        "phase-model",
        "--gpu-type",
        "H100",
        "--gpu-hourly-price",
        "3",
        "--grid-carbon-intensity",
        "400",
        "--api-prices",
        "api-small=0.15/0.075/0.6,api-large=2.5/1.25/10",
        "--model-dir",
        str(tiny_model_dir),
    ).start()
    yield exporter
    assert exporter.stop() == 0, exporter.log()


@pytest.fixture(scope="module")
def exporter_under_load(vllm_server, live_exporter) -> Iterator[ExporterProcess]:
    """The exporter while vLLM serves traffic from a few threads (prompts sharing a long prefix
    among them), from before the module's first test until after its last: every token class
    has been counted when this yields. Traffic stops between modules, so the rest of the suite
    does not compete with vLLM for the CPU."""
    with LoadGenerator(vllm_server) as load:

        def flowing() -> bool:
            assert not load.errors, f"vLLM refused the load: {load.errors[0]}"
            return _has_all_token_classes(live_exporter)

        wait_until(flowing, timeout=60, what="tokens of every class")
        yield live_exporter
    assert not load.errors, f"{len(load.errors)} failed requests, first: {load.errors[0]}"
    assert load.requests > 0


def _has_all_token_classes(exporter: ExporterProcess) -> bool:
    try:
        metrics = exporter.metrics()
    except httpx.HTTPError:
        return False
    return all(
        total(metrics, "token_economy_tokens_total", model_name=MODEL, token_class=c) > 0
        for c in ("input", "cached_input", "output")
    )
