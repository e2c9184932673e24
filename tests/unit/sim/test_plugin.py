"""The simulator with the vLLM plugin: the plugin's own step counter fed once per engine step with
stats shaped as vLLM 0.32's, its own table and renderer, and its families read by the exporter's
own parser and through the exporter's own road (`WorkReader`). Its counts agree with the
simulator's vLLM counters and with the oracle's work."""

from types import SimpleNamespace

import pytest

from exporter import __version__
from exporter.plugin.steps import FIELDS
from exporter.sim import LLAMA_3_8B, EngineConfig, Faults, SimEnergySource, Simulation, SimVllmSource, well_mixed
from exporter.sim.run import PLUGIN_VLLM_VERSION
from exporter.sources import plugin_families as f
from exporter.sources import plugin_page, vllm_page
from exporter.sources.errors import SourceError
from exporter.sources.plugin import PluginEnergy, WorkReader

# A KV cache small enough that well_mixed preempts, so prefill includes recomputation.
TIGHT = EngineConfig(num_gpu_blocks=400, max_num_batched_tokens=2048)


def plugin_sim(**kw) -> Simulation:
    kw.setdefault("engine", TIGHT)
    return Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=2, plugin=True, trace=True, **kw)


def test_the_plugins_counts_agree_with_the_simulators_vllm_counters_and_the_oracle():
    sim = plugin_sim()
    sim.advance_to(240.0)
    counts = sim.plugin_counter.engines[0]
    vllm, truth = sim.counters, sim.oracle_totals()
    assert truth.tokens["recomputed"] > 0 and vllm.preemptions > 0  # the case worth checking

    # Tokens as vLLM counts them: generated, and prompts at their first token.
    assert counts.output == vllm.generation_tokens > 0
    assert counts.input + counts.cached_input == vllm.prompt_tokens
    assert (counts.input, counts.cached_input) == (vllm.computed_tokens, vllm.cached_tokens)
    assert counts.cached_input > 0
    assert counts.preemptions == vllm.preemptions
    # Tokens as the scheduler ran them: every prefill token computed, recomputation included.
    assert counts.scheduled_prefill == truth.tokens["input"] + truth.tokens["recomputed"]
    assert counts.scheduled_prefill > counts.input
    assert counts.scheduled_decode == sum(s.decode for s in sim.step_trace)
    # Every step, and the engine's busy time.
    assert counts.prefill_steps + counts.decode_steps == truth.steps == len(sim.step_trace)
    assert counts.prefill_steps == sum(1 for s in sim.step_trace if s.prefill)
    assert counts.busy_seconds == pytest.approx(sum(s.end - s.start for s in sim.step_trace), rel=1e-9)
    # Gauges of the latest step.
    assert (counts.running, counts.waiting, counts.kv_usage) == (vllm.running, vllm.waiting, vllm.kv_usage)
    assert sim.plugin_counter.details_seen and not sim.plugin_counter.missing


def test_the_plugin_page_parses_with_the_exporters_parser_and_names_the_simulated_plugin():
    sim = plugin_sim(model_name="m")
    sim.advance_to(60.0)
    reading = plugin_page.parse(sim.page())
    assert reading is not None and reading.gpus is None and not reading.unavailable_fields
    (engine,) = reading.engines
    counts, vllm = sim.plugin_counter.engines[0], sim.counters
    assert (engine.model_name, engine.engine) == ("m", "0")
    assert engine.generation_tokens == vllm.generation_tokens
    assert engine.prompt_tokens == vllm.prompt_tokens
    assert engine.computed_prompt_tokens == vllm.computed_tokens
    assert engine.cached_prompt_tokens == vllm.cached_tokens
    assert engine.scheduled_prompt_tokens == counts.scheduled_prefill
    assert engine.scheduled_decode_tokens == counts.scheduled_decode
    assert engine.steps == counts.prefill_steps + counts.decode_steps
    assert engine.preemptions == vllm.preemptions
    assert engine.created == vllm.created == sim.epoch
    assert engine.kv_cache_capacity_tokens == TIGHT.num_gpu_blocks * TIGHT.block_size
    assert (engine.requests_running, engine.requests_waiting) == (vllm.running, vllm.waiting)
    text = sim.plugin_page()
    assert f'{f.INFO.name}{{version="{__version__}",vllm_version="{PLUGIN_VLLM_VERSION}"}} 1.0' in text
    assert all(f'{f.FIELD_AVAILABLE.name}{{field="{field}"}} 1.0' in text for field in FIELDS)
    assert f.GPU_ENERGY.name not in text and f.NVML_UP.name not in text  # the simulated NVML meters


def test_the_plugins_families_follow_vllms_own_on_the_same_page():
    plain = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=2, engine=TIGHT)
    sim = plugin_sim()
    for s in (plain, sim):
        s.advance_to(45.0)
    assert plain.plugin_counter is None and plain.plugin_page() == "" and f.PREFIX not in plain.page()
    page = sim.page()
    assert page == plain.page() + sim.plugin_page()  # the plugin changes nothing the engine does
    assert vllm_page.parse(page, 45.0) == vllm_page.parse(plain.page(), 45.0)


def test_the_exporters_work_reader_takes_the_plugins_families_from_the_simulated_page():
    sim = plugin_sim()
    source = SimVllmSource(sim)
    work = WorkReader(source)
    sim.advance_to(30.0)
    text, timestamp = source.read_text()
    assert timestamp == 30.0 and text == sim.page()
    snapshot = work.read()
    assert snapshot.origin == "plugin" and snapshot.timestamp == 30.0
    assert snapshot.engines == plugin_page.parse(text).engines
    # The plugin publishes no energy here: the exporter's auto mode keeps the simulated NVML.
    energy = PluginEnergy(work, SimEnergySource(sim))
    assert work.energy is None and energy.read().origin == "simulator"
    # Without the plugin the same road reads vLLM's own counters.
    plain = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=2, engine=TIGHT)
    plain.advance_to(30.0)
    assert WorkReader(SimVllmSource(plain)).read().origin == "vllm"


def _step_spanning(t: float) -> tuple[float, float]:
    """(start, end) of the step in flight at virtual time t, from an identical run without faults."""
    probe = plugin_sim()
    probe.advance_to(t + 1.0)
    (step,) = [s for s in probe.step_trace if s.start < t < s.end]
    assert step.emitted > 0
    return step.start, step.end


def test_a_restart_starts_a_fresh_counter_and_the_step_it_cuts_short_is_counted_by_neither():
    start, end = _step_spanning(50.0)
    cut = (start + end) / 2
    sim = plugin_sim(faults=Faults(vllm_restarts=(cut,), restart_downtime_seconds=5.0))
    sim.advance_to(start + 1e-9)  # the step has begun: what came before is counted
    old_counter, old_vllm = sim.plugin_counter, sim.counters
    before = (old_counter.engines[0].output, old_vllm.generation_tokens)
    assert before[0] == before[1] > 0
    sim.advance_to(cut + 1.0)  # vLLM is down: the cut step's tokens never reached its counters
    assert (old_counter.engines[0].output, old_vllm.generation_tokens) == before
    assert sim.plugin_counter is old_counter
    with pytest.raises(SourceError):
        SimVllmSource(sim).read_text()

    sim.advance_to(cut + 5.0 + 30.0)  # back, as a new process: a new counter from zero
    counter = sim.plugin_counter
    assert counter is not old_counter
    counts, vllm = counter.engines[0], sim.counters
    assert counts.output == vllm.generation_tokens == sum(s.emitted for s in sim.step_trace if s.start >= cut) > 0
    assert not [s for s in sim.step_trace if s.start < cut < s.end]  # the cut step never completed
    assert counts.input + counts.cached_input == vllm.prompt_tokens
    (engine,) = plugin_page.parse(sim.page()).engines
    assert engine.created == vllm.created == pytest.approx(sim.epoch + cut + 5.0)


def test_a_preemption_in_a_step_without_outputs_is_reported_with_the_next_outputs():
    # vLLM reports a preemption as an event on a request's output: a step that emits nothing has
    # no IterationStats to carry it. Such steps are rare (none in the presets), so the mapping is
    # driven directly with the fields a StepResult has.
    sim = plugin_sim()
    counter = sim.plugin_counter

    def step(emitted, preemptions, prefill=64, decode=0):
        return SimpleNamespace(
            prefill=prefill,
            decode=decode,
            cost=SimpleNamespace(seconds=0.01),
            running=3,
            waiting=1,
            kv_usage=0.9,
            emitted=emitted,
            prompt_credit=0,
            cached_credit=0,
            preemptions=preemptions,
        )

    sim._record_plugin(counter, step(emitted=0, preemptions=2))
    assert counter.engines[0].preemptions == 0 and counter.engines[0].prefill_steps == 1
    sim._record_plugin(counter, step(emitted=4, preemptions=1, decode=4))
    assert counter.engines[0].preemptions == 3 and counter.engines[0].output == 4


def test_with_the_plugin_the_engine_label_is_vllms_engine_index():
    with pytest.raises(ValueError, match="engine index"):
        Simulation(well_mixed(), "H100", LLAMA_3_8B, plugin=True, engine_label="zero")
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, plugin=True, engine_label="3")
    sim.advance_to(5.0)
    assert [e.engine for e in plugin_page.parse(sim.page()).engines] == ["3"]
