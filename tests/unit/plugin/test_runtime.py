"""The plugin's thread, one round at a time: what it publishes on vLLM's page (a registry of its
own here) and in its snapshot file, with a stand-in NVML; and that each failure is counted and
the round goes on."""

from __future__ import annotations

import fcntl
import math
from functools import partial
from types import SimpleNamespace

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.plugin.runtime import LOCK_NAME, PluginConfig, Runtime
from exporter.plugin.state import Identity
from exporter.sources import plugin_families as f
from exporter.sources import plugin_page
from tests.fakes.pynvml_fake import FakeGpu, FakeNvml
from tests.unit.plugin.test_steps import details, iteration, scheduler

IDENTITY = Identity("tiny", "0.1.0", "0.32.0", 1_700_000_000.0, 4096.0)


def client_on(registry: CollectorRegistry) -> SimpleNamespace:
    """prometheus_client's metric classes, registering into `registry` instead of the global one."""
    return SimpleNamespace(
        Counter=partial(prometheus_client.Counter, registry=registry),
        Gauge=partial(prometheus_client.Gauge, registry=registry),
    )


def make(tmp_path, nvml=None, **config):
    registry = CollectorRegistry()
    defaults = {"directory": tmp_path, "lock_directory": tmp_path}
    runtime = Runtime(
        PluginConfig(**{**defaults, **config}),
        IDENTITY,
        client_on(registry),
        load_nvml=(lambda: nvml) if nvml is not None else _no_nvml,
        pid=4242,
    )
    return runtime, registry


def _no_nvml():
    raise ImportError("no pynvml here")


def page(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_one_round_publishes_the_same_counts_on_the_page_and_in_the_file(tmp_path):
    nvml = FakeNvml([FakeGpu(uuid="GPU-a", energy_mj=5_000_000.0)])
    runtime, registry = make(tmp_path, nvml)
    runtime.counter.record(scheduler(step_details=details(ctx=120, gen=1)), iteration(1, computed=100, cached=20), 0)
    runtime.publish_once()
    nvml.gpus[0].energy_mj = 5_250_000.0
    runtime.counter.record(scheduler(step_details=details(gen=2)), iteration(2), 0)
    runtime.publish_once()

    file_text = (tmp_path / "plugin-4242.prom").read_text()
    for text in (file_text, page(registry)):
        reading = plugin_page.parse(text)
        assert reading is not None
        (engine,) = reading.engines
        assert (engine.model_name, engine.engine) == ("tiny", "0")
        assert (engine.computed_prompt_tokens, engine.cached_prompt_tokens, engine.generation_tokens) == (100, 20, 3)
        assert engine.scheduled_prompt_tokens == 120 and engine.steps == 2
        assert engine.kv_cache_capacity_tokens == 4096.0 and engine.created == IDENTITY.started
        (gpu,) = reading.gpus
        # Energy since the plugin first read the counter: 250 J, on the page and in the file alike.
        assert (gpu.uuid, gpu.method, gpu.energy_joules, gpu.power_watts) == ("GPU-a", "counter", 250.0, 100.0)


def test_without_nvml_work_is_published_and_nvml_up_is_zero_and_counted(tmp_path):
    runtime, registry = make(tmp_path)
    runtime.counter.record(None, iteration(4), 0)
    runtime.publish_once()
    text = page(registry)
    assert "token_economy_plugin_nvml_up 0.0" in text
    assert 'token_economy_plugin_errors_total{where="nvml"} 1.0' in text
    reading = plugin_page.parse(text)
    assert reading is not None and reading.gpus is None and reading.engines[0].generation_tokens == 4


def test_nvml_failing_mid_run_withdraws_the_energy_and_work_goes_on(tmp_path):
    nvml = FakeNvml([FakeGpu(uuid="GPU-a", energy_mj=1_000.0)])
    runtime, registry = make(tmp_path, nvml)
    runtime.publish_once()
    nvml.lose_gpu(0)
    runtime.counter.record(None, iteration(1), 0)
    runtime.publish_once()
    reading = plugin_page.parse(page(registry))
    assert reading is not None and reading.gpus is None  # NVML is down: no energy to offer
    assert reading.engines[0].generation_tokens == 1
    assert runtime.errors["nvml"] >= 1


def test_only_the_process_holding_the_lock_measures(tmp_path):
    with open(tmp_path / LOCK_NAME, "a") as holder:  # another API-server process measures
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        runtime, registry = make(tmp_path, FakeNvml([FakeGpu(uuid="GPU-a")]))
        runtime.publish_once()
        assert "token_economy_plugin_gpu_energy_joules_total{" not in page(registry)
        assert "nvml_up" not in (tmp_path / "plugin-4242.prom").read_text()


def test_the_mirror_only_ever_adds_so_vllm_multiprocess_sums_hold(tmp_path):
    runtime, registry = make(tmp_path, nvml=None)
    for generated in (3, 0, 5):
        runtime.counter.record(None, iteration(generated), 0)
        runtime.publish_once()
    value = registry.get_sample_value(
        "token_economy_plugin_tokens_total", {"model_name": "tiny", "engine": "0", "token_class": "output"}
    )
    assert value == 8


def test_a_failing_snapshot_directory_is_counted_and_the_page_still_published(tmp_path):
    runtime, registry = make(tmp_path / "gone", nvml=None, lock_directory=None)
    runtime.counter.record(None, iteration(2), 0)
    runtime.publish_once()
    assert runtime.errors["snapshot"] == 1
    assert plugin_page.parse(page(registry)) is not None


def test_the_rendered_file_parses_back_exactly(tmp_path):
    runtime, _ = make(tmp_path, FakeNvml([FakeGpu(uuid='GPU-"odd"\\name', energy_mj=3.0)]))
    runtime.counter.record(scheduler(step_details=details(ctx=7, elapsed_ms=0.1)), iteration(1, computed=7), 0)
    runtime.publish_once()
    text = (tmp_path / "plugin-4242.prom").read_text()
    reading = plugin_page.parse(text)
    assert reading is not None and reading.gpus is not None
    assert reading.gpus[0].uuid == 'GPU-"odd"\\name'
    assert all(line.startswith(("#", f.PREFIX)) for line in text.splitlines())
    assert not any(math.isnan(float(line.split()[-1])) for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, PluginConfig()),
        (
            {"TOKEN_ECONOMY_PLUGIN_DIR": "/run/te", "TOKEN_ECONOMY_PLUGIN_NVML": "off", "CUDA_VISIBLE_DEVICES": "1, 3"},
            PluginConfig(directory="/run/te", nvml=False, gpus=("1", "3"), lock_directory="/run/te"),
        ),
        ({"PROMETHEUS_MULTIPROC_DIR": "/tmp/mp", "TOKEN_ECONOMY_PLUGIN_PUBLISH_SECONDS": "junk"}, None),
        ({"TOKEN_ECONOMY_PLUGIN_PUBLISH_SECONDS": "0.001", "TOKEN_ECONOMY_PLUGIN_GPUS": "GPU-x"}, None),
    ],
)
def test_configuration_from_vllms_environment_never_raises(environ, expected):
    config = PluginConfig.from_environ(environ)
    assert 0.1 <= config.publish_seconds <= 10
    if expected is not None:
        assert (str(config.directory) if config.directory else None, config.nvml, config.gpus) == (
            str(expected.directory) if expected.directory else None,
            expected.nvml,
            expected.gpus,
        )


def test_vllms_per_step_lines_are_dropped_and_its_other_lines_pass(monkeypatch):
    import logging

    from exporter.plugin.runtime import VLLM_STATS_LOGGER, QuietStepLines, quiet_step_lines

    target = logging.getLogger(VLLM_STATS_LOGGER)
    monkeypatch.setattr(target, "filters", [])
    assert quiet_step_lines({}) and quiet_step_lines({})  # twice: one filter
    (only,) = target.filters
    assert isinstance(only, QuietStepLines)

    def record(msg):
        return logging.LogRecord(VLLM_STATS_LOGGER, logging.INFO, __file__, 1, msg, (), None)

    assert not target.filter(record("%sIteration(%d): %d context requests, %d context tokens, "))
    assert target.filter(record("%sAvg prompt throughput: %.1f tokens/s"))
    monkeypatch.setattr(target, "filters", [])
    assert not quiet_step_lines({"TOKEN_ECONOMY_PLUGIN_STEP_LOGS": "1"}) and not target.filters


def test_a_missing_shared_directory_still_publishes_the_work_and_the_energy(tmp_path):
    gone = tmp_path / "not-mounted"  # the lock and the snapshot file would both live there
    runtime, registry = make(
        tmp_path, FakeNvml([FakeGpu(uuid="GPU-a", energy_mj=1000.0)]), directory=gone, lock_directory=gone
    )
    runtime.counter.record(None, iteration(3), 0)
    runtime.publish_once()
    reading = plugin_page.parse(page(registry))
    assert reading is not None and reading.engines[0].generation_tokens == 3
    assert reading.gpus is not None  # measured anyway: never counting a GPU is worse than maybe twice
    assert runtime.errors["snapshot"] >= 1


def test_energy_totals_carry_a_driver_reload_and_skip_unusable_values():
    from exporter.attribution.readings import GpuReading
    from exporter.plugin.state import EnergyTotals

    totals = EnergyTotals()
    for joules in (100.0, 150.0, None, float("inf"), -1.0, 20.0, 30.0):  # the driver reloaded at 20 J
        totals.update([GpuReading(0, "GPU-a", "H100", joules, None, "counter")])
    assert totals.joules == {"GPU-a": 50.0 + 20.0 + 10.0}
