"""The sidecar's road to the plugin: its snapshot files when a directory is shared (vLLM is not
asked at all), its families on vLLM's page otherwise, vLLM's own counters where the plugin is
not installed; and its energy, or the fallback's when it has none."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from exporter.attribution.readings import EnergySnapshot, GpuIdentity, GpuReading
from exporter.plugin.state import EnergyTotals, Identity, table
from exporter.plugin.steps import StepCounter
from exporter.sources import plugin_families as f
from exporter.sources import plugin_page
from exporter.sources.errors import SourceError
from exporter.sources.plugin import MAX_FILE_BYTES, PluginDirectory, PluginEnergy, WorkReader
from exporter.sources.vllm import VllmSource
from tests.unit.plugin.test_steps import details, iteration, scheduler

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
VLLM_PAGE = (FIXTURES / "vllm-0.32-cpu-metrics.txt").read_text()
NOW = 1_800_000_000.0


def plugin_text(generated=5, joules=None, model="tiny", details_on=True) -> str:
    counter = StepCounter()
    step = details(ctx=30, gen=generated) if details_on else None
    counter.record(scheduler(step_details=step), iteration(generated, computed=30), 0)
    gpus = None
    energy = EnergyTotals()
    if joules is not None:
        gpus = (GpuReading(0, "GPU-a", "NVIDIA H100", 0.0, 350.0, "counter"),)
        energy.update(gpus)
        gpus = (GpuReading(0, "GPU-a", "NVIDIA H100", joules, 350.0, "counter"),)
        energy.update(gpus)
    identity = Identity(model, "0.1.0", "0.32.0", 1.0, None)
    return f.render(table(identity, counter.engines, counter.missing, counter.details_seen, {}, gpus, energy, 0.0))


class Pages:
    """vLLM answering with a given text, counting how often it is asked."""

    def __init__(self, text: str) -> None:
        self.text, self.requests = text, 0

    def source(self) -> VllmSource:
        def answer(request: httpx.Request) -> httpx.Response:
            self.requests += 1
            return httpx.Response(200, text=self.text)

        return VllmSource("http://vllm:8000", transport=httpx.MockTransport(answer), clock=lambda: 50.0)


def write(directory: Path, name: str, text: str, age: float = 0.0) -> None:
    path = directory / name
    path.write_text(text)
    os.utime(path, (NOW - age, NOW - age))


def reader(pages: Pages, directory: Path | None = None) -> WorkReader:
    files = PluginDirectory(directory, wall_clock=lambda: NOW) if directory else None
    return WorkReader(pages.source(), files, clock=lambda: 100.0)


def test_vllm_alone_is_read_as_before():
    pages = Pages(VLLM_PAGE)
    snapshot = reader(pages).read()
    assert snapshot.origin == "vllm" and snapshot.engines[0].prompt_tokens is not None


def test_the_plugins_families_on_vllms_page_are_preferred_with_its_energy():
    pages = Pages(VLLM_PAGE + plugin_text(joules=42.0))
    work = reader(pages)
    snapshot = work.read()
    assert snapshot.origin == "plugin"
    (engine,) = snapshot.engines
    assert (engine.generation_tokens, engine.scheduled_prompt_tokens, engine.computed_prompt_tokens) == (5, 30, 30)
    assert engine.prefill_steps == 1  # the mixed-step interaction's driver
    assert engine.scheduled_decode_tokens == 5  # the output cost's driver
    energy = PluginEnergy(work, fallback=None).read()
    assert (energy.origin, energy.modelled, energy.timestamp) == ("plugin", False, 50.0)
    assert [g.energy_joules for g in energy.gpus] == [42.0]


def test_files_in_the_shared_directory_spare_vllm_the_read(tmp_path):
    write(tmp_path, "plugin-11.prom", plugin_text(generated=3, joules=10.0), age=0.4)
    write(tmp_path, "plugin-12.prom", plugin_text(generated=4), age=0.2)
    pages = Pages(VLLM_PAGE)
    work = reader(pages, tmp_path)
    snapshot = work.read()
    assert pages.requests == 0
    assert snapshot.origin == "plugin"
    # Each process's file is its own series; the core sums them per model.
    assert sorted((e.engine, e.generation_tokens) for e in snapshot.engines) == [("0@plugin-11", 3), ("0@plugin-12", 4)]
    # Stamped when the newest file was written.
    assert snapshot.timestamp == pytest.approx(100.0 - 0.2)
    assert [g.energy_joules for g in PluginEnergy(work, None).read().gpus] == [10.0]


def test_stale_oversized_and_foreign_files_are_left_out_and_vllm_is_read_instead(tmp_path):
    write(tmp_path, "plugin-1.prom", plugin_text(), age=120.0)  # its process is gone
    write(tmp_path, "plugin-2.prom", "x" * (MAX_FILE_BYTES + 1))
    write(tmp_path, "plugin-3.prom", "not a page at all\n")
    (tmp_path / "plugin-4.prom").write_bytes(b"\xff\xfe")
    write(tmp_path, "other.prom", plugin_text())
    pages = Pages(VLLM_PAGE)
    snapshot = reader(pages, tmp_path).read()
    assert pages.requests == 1 and snapshot.origin == "vllm"


def test_a_missing_directory_falls_back_to_the_page(tmp_path):
    pages = Pages(VLLM_PAGE + plugin_text())
    assert reader(pages, tmp_path / "absent").read().origin == "plugin"


def test_without_iteration_details_prompts_count_at_first_token():
    snapshot = reader(Pages(plugin_text(details_on=False))).read()
    (engine,) = snapshot.engines
    assert engine.scheduled_prompt_tokens is None and engine.computed_prompt_tokens == 30
    assert engine.scheduled_decode_tokens is None
    assert engine.prefill_steps is None  # without details a "prefill step" is only a finished prompt
    assert "scheduler_stats.iteration_details" in snapshot.missing_families


class Fallback:
    gpus = (GpuIdentity(0, "GPU-a", "H100"),)

    def __init__(self) -> None:
        self.closed = False

    def read(self) -> EnergySnapshot:
        return EnergySnapshot(7.0, (GpuReading(0, "GPU-a", "H100", 9e6, 300.0, "counter"),), origin="nvml")

    def close(self) -> None:
        self.closed = True


def test_without_the_plugins_energy_the_fallback_answers_and_plugin_mode_fails():
    work = reader(Pages(VLLM_PAGE + plugin_text(joules=None)))
    work.read()
    fallback = Fallback()
    energy = PluginEnergy(work, fallback)
    assert energy.read().origin == "nvml" and energy.gpus == Fallback.gpus
    energy.close()
    assert fallback.closed
    with pytest.raises(SourceError) as caught:
        PluginEnergy(work, None).read()
    assert caught.value.reason == "plugin_energy"


def test_a_hostile_plugin_page_yields_no_negative_or_infinite_count():
    text = plugin_text().replace(
        'token_economy_plugin_tokens_total{model_name="tiny",engine="0",token_class="output"} 5.0',
        'token_economy_plugin_tokens_total{model_name="tiny",engine="0",token_class="output"} -Inf',
    )
    assert "-Inf" in text
    (engine,) = reader(Pages(text)).read().engines
    assert engine.generation_tokens is None


def test_the_energy_setting_decides_who_may_answer():
    from exporter.app import _energy_reader
    from exporter.sources.energy import EnergyMode

    work = reader(Pages(VLLM_PAGE + plugin_text(joules=5.0)))
    work.read()
    opened = Fallback()
    assert _energy_reader(EnergyMode.AUTO, work, opened).read().origin == "plugin"
    assert _energy_reader(EnergyMode.NVML, work, opened).read().origin == "nvml"  # an explicit choice holds
    plugin_only = _energy_reader(EnergyMode.PLUGIN, work, opened)
    assert opened.closed and plugin_only.read().origin == "plugin"


def test_a_share_above_one_is_no_share():
    gauge = "token_economy_plugin_kv_cache_usage_ratio{"
    lines = [
        line.rsplit(" ", 1)[0] + " 1e15" if line.startswith(gauge) else line for line in plugin_text().splitlines()
    ]
    reading = plugin_page.parse("\n".join(lines) + "\n")
    assert reading.engines[0].kv_cache_usage is None and reading.rejected == ("bad_value",)
