"""The loop, the ledger and the collector behind the real HTTP server on loopback, with scripted
sources: its routes, and readiness that follows the first tick."""

import urllib.error
import urllib.request

import pytest

from exporter.server import HttpServer, MetricsCache, Routes
from tests.loop_rig import collection_rig, step


@pytest.fixture
def rig():
    return collection_rig()


def test_routes_and_readiness(rig):
    loop, ledger, vllm, energy, registry = rig
    server = HttpServer("127.0.0.1", 0, Routes(MetricsCache(registry, ledger), ledger, "http://127.0.0.1:8000", "nvml"))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert urllib.request.urlopen(base + "/healthz").status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/readyz")
        assert err.value.code == 503
        step(loop, vllm, energy, 0.0, 0, 0)
        assert urllib.request.urlopen(base + "/readyz").status == 200
        assert b"/metrics" in urllib.request.urlopen(base + "/").read()
        assert b"token_economy_tick_duration_seconds_count" in urllib.request.urlopen(base + "/metrics").read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/nope")
    finally:
        server.stop()
