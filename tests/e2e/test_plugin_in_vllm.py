"""The stat-logger plugin inside a real vLLM server (CPU build), loaded through its entry point,
with a stand-in NVML library in vLLM's process; and the sidecar beside it, which cannot load
NVML itself, reading the plugin's snapshot files from a shared directory.

The tests run in order on one server: counts first, then energy, then NVML failing mid-run. The
last test starts a second server that lacks what the plugin would like (iteration details, NVML)."""

from __future__ import annotations

import math
import re
import time

import pytest

from tests.e2e.exporter_process import ExporterProcess, total
from tests.e2e.plugin_rig import STANDIN_UUID, StandinNvml, install_plugin
from tests.e2e.vllm_server import parse_counters

pytestmark = pytest.mark.e2e

INTERVAL = 0.5
MODEL = "tiny-llama"
DETAILS = ["--enable-logging-iteration-details"]
PLUGIN_COUNTERS = (
    "token_economy_plugin_tokens_total",
    "token_economy_plugin_steps_total",
    "token_economy_plugin_scheduled_tokens_total",
)
_SAMPLE = re.compile(r"^(token_economy_plugin_[a-z_]+)(\{[^}]*\})?\s+(\S+)$", re.M)


def plugin_samples(text: str) -> dict[tuple[str, str], float]:
    return {(name, labels or ""): float(value) for name, labels, value in _SAMPLE.findall(text)}


def plugin_total(samples: dict[tuple[str, str], float], name: str, label: str = "") -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and label in labels)


@pytest.fixture(scope="module")
def plugin_site(vllm_python, tmp_path_factory):
    return install_plugin(vllm_python, tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module")
def nvml(tmp_path_factory):
    return StandinNvml(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def vllm(make_vllm_server, plugin_site, nvml, shared_dir):
    env = {
        "PYTHONPATH": str(plugin_site),
        "TOKEN_ECONOMY_PLUGIN_DIR": str(shared_dir),
        "TOKEN_ECONOMY_PLUGIN_PUBLISH_SECONDS": "0.2",
        **nvml.environment(),
    }
    server = make_vllm_server(extra_args=DETAILS, extra_env=env).start()
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sidecar(vllm, shared_dir, tiny_model_dir, tmp_path_factory):
    proc = ExporterProcess(
        vllm.url,
        tmp_path_factory.mktemp("sidecar"),
        "--interval",
        str(INTERVAL),
        "--plugin-dir",
        str(shared_dir),
        "--gpu-type",
        "H100",
        "--model-dir",
        str(tiny_model_dir),
    ).start()
    yield proc
    assert proc.stop() == 0, proc.log()


def wait_for(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_vllm_loads_the_plugin_through_its_entry_point(vllm, shared_dir):
    text = vllm.metrics_text()
    assert 'token_economy_plugin_info{version="' in text
    assert re.search(r"token-economy plugin \S+ started", vllm.log_tail(200_000))
    assert list(shared_dir.glob("plugin-*.prom")), "the plugin writes its snapshot file"


def test_the_plugins_counts_agree_with_vllms_own(vllm):
    before_vllm, before_plugin = vllm.counters(), plugin_samples(vllm.metrics_text())
    prompts = [f"request {i} " + "tokens " * (5 + 9 * i) for i in range(8)]
    vllm.complete_many(prompts, max_tokens=12, concurrency=4)

    def settled():
        text = vllm.metrics_text()
        after_vllm, after_plugin = parse_counters(text), plugin_samples(text)
        delta = {k: after_vllm[k] - before_vllm[k] for k in after_vllm}
        out = plugin_total(after_plugin, "token_economy_plugin_tokens_total", '"output"') - plugin_total(
            before_plugin, "token_economy_plugin_tokens_total", '"output"'
        )
        return (delta, after_plugin) if out == delta["vllm:generation_tokens_total"] > 0 else None

    delta, after = wait_for(settled, what="the plugin's page to catch up with vLLM's counters")

    def grew(name, label=""):
        return plugin_total(after, name, label) - plugin_total(before_plugin, name, label)

    computed, cached = (
        grew("token_economy_plugin_tokens_total", '"input"'),
        grew("token_economy_plugin_tokens_total", '"cached_input"'),
    )
    assert computed + cached == delta["vllm:prompt_tokens_total"]
    assert cached == delta["vllm:prompt_tokens_cached_total"]
    assert grew("token_economy_plugin_tokens_total", '"output"') == delta["vllm:generation_tokens_total"] == 8 * 12
    # Every prompt token computed was scheduled (nothing was preempted), and every step counted.
    assert grew("token_economy_plugin_scheduled_tokens_total", '"prefill"') == computed
    assert grew("token_economy_plugin_steps_total") == delta["vllm:iteration_tokens_total_count"]
    assert grew("token_economy_plugin_steps_total", '"prefill"') >= 1
    assert grew("token_economy_plugin_busy_seconds_total") > 0
    assert plugin_total(after, "token_economy_plugin_errors_total") == 0
    # vLLM's per-step "Iteration(n): ..." lines are left out of its log; its other lines are not.
    log = vllm.log_tail(2_000_000)
    assert not re.search(r"Iteration\(\d+\):", log) and "POST /v1/completions" in log


def sidecar_energy(sidecar):
    m = sidecar.metrics()
    return (
        total(m, "token_economy_gpu_energy_joules_total"),
        total(m, "token_economy_energy_joules_total"),
        m,
    )


def steady_energy(sidecar, ticks=3):
    """The sidecar's GPU energy once it has not moved for a few ticks."""
    last, still = None, 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        gpu, _, m = sidecar_energy(sidecar)
        still = still + 1 if gpu == last else 0
        if still >= ticks:
            return gpu, m
        last = gpu
        time.sleep(INTERVAL)
    raise AssertionError("the sidecar's energy never settled")


def test_the_sidecar_reports_the_standin_energy_exactly_and_conserves_it(vllm, sidecar, nvml):
    nvml.set(energy_mj=20_000_000, power_mw=400_000)
    wait_for(
        lambda: total(sidecar.metrics(), "token_economy_sources_info", energy_source="plugin", work_source="plugin"),
        what="the sidecar to read the plugin's work and energy",
    )
    before, _ = steady_energy(sidecar)
    vllm.complete_many(["energy " * 30] * 4, max_tokens=16)
    nvml.set(energy_mj=20_000_000 + 1_234_567, power_mw=410_000)
    wait_for(lambda: sidecar_energy(sidecar)[0] != before, what="the new energy to reach the sidecar")
    after, m = steady_energy(sidecar)
    assert after - before == pytest.approx(1234.567, abs=1e-6)
    gpu_total, attributed, _ = sidecar_energy(sidecar)
    assert attributed == pytest.approx(gpu_total, rel=1e-9, abs=1e-6)
    assert total(m, "token_economy_gpu_power_watts", gpu_uuid=STANDIN_UUID) == 410.0
    assert total(m, "token_economy_energy_modelled") == 0
    assert total(m, "token_economy_build_info", work_source="plugin") == 1
    assert total(m, "token_economy_tokens_total", model_name=MODEL, token_class="output") > 0


def test_vllm_keeps_serving_when_the_plugins_nvml_fails_mid_run(vllm, sidecar, nvml):
    errors_before = plugin_total(plugin_samples(vllm.metrics_text()), "token_economy_plugin_errors_total", "nvml")
    nvml.set(energy_mj=30_000_000, power_mw=300_000, fail=True)
    wait_for(lambda: "token_economy_plugin_nvml_up 0.0" in vllm.metrics_text(), what="the plugin to see NVML fail")
    responses = vllm.complete_many(["still serving " * 10] * 4, max_tokens=8)
    assert all(len(r["choices"][0]["text"]) > 0 or r["usage"]["completion_tokens"] == 8 for r in responses)
    samples = plugin_samples(vllm.metrics_text())
    assert plugin_total(samples, "token_economy_plugin_errors_total", "nvml") > errors_before
    assert plugin_total(samples, "token_economy_plugin_errors_total", "record") == 0
    # Without the plugin's measurement the sidecar falls back, and says the energy is modelled.
    wait_for(lambda: total(sidecar.metrics(), "token_economy_energy_modelled") == 1, what="the fallback")
    m = sidecar.metrics()
    assert total(m, "token_economy_sources_info", energy_source="phase-model", work_source="plugin") == 1
    nvml.set(energy_mj=30_500_000, power_mw=300_000)
    wait_for(
        lambda: total(sidecar.metrics(), "token_economy_sources_info", energy_source="plugin") == 1,
        what="the plugin's energy to come back",
    )
    _, attributed, m = sidecar_energy(sidecar)
    assert math.isfinite(attributed) and total(m, "token_economy_energy_modelled") == 0


def test_a_vllm_without_iteration_details_or_nvml_serves_and_the_plugin_says_what_it_lacks(
    make_vllm_server, plugin_site, tiny_model_dir, tmp_path_factory
):
    server = make_vllm_server(extra_env={"PYTHONPATH": str(plugin_site), "LD_LIBRARY_PATH": ""}).start()
    try:
        server.wait_ready()
        server.complete_many(["no details " * 12] * 3, max_tokens=6)

        def counted() -> str | None:
            text = server.metrics_text()
            return text if 'token_class="output"} 18.0' in text else None

        text = wait_for(counted, what="the plugin's counts")
        assert 'token_economy_plugin_field_available{field="scheduler_stats.iteration_details"} 0.0' in text
        assert "token_economy_plugin_nvml_up 0.0" in text
        assert "stats lack scheduler_stats.iteration_details" in server.log_tail(200_000)
        # No shared directory: the sidecar takes the plugin's families from vLLM's page.
        sidecar = ExporterProcess(
            server.url, tmp_path_factory.mktemp("sidecar-b"), "--interval", str(INTERVAL), "--gpu-type", "H100"
        ).start()
        try:
            wait_for(
                lambda: total(sidecar.metrics(), "token_economy_sources_info", work_source="plugin") == 1,
                what="the sidecar to read the plugin's families from vLLM's page",
            )
            assert total(sidecar.metrics(), "token_economy_energy_modelled") == 1
        finally:
            assert sidecar.stop() == 0, sidecar.log()
    finally:
        server.stop()
