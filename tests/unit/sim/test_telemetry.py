"""What the simulator shows: vLLM's page with the real names, labels and semantics, read by the
real parser; NVML's energy counter with its 100 ms steps, gain error, resets and read errors."""

import itertools
import math
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from exporter.attribution.counters import CounterTracker
from exporter.sim import (
    LLAMA_3_8B,
    EngineConfig,
    Faults,
    Scenario,
    SimEnergySource,
    Simulation,
    SimVllmSource,
    Trace,
    TraceRequest,
    well_mixed,
)
from exporter.sim.telemetry import go_float
from exporter.sources.errors import SourceError
from exporter.sources.vllm_page import parse

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "vllm-0.32-cpu-metrics-under-load.txt"


def trace_sim(requests, engine=EngineConfig(), **kw) -> Simulation:
    scenario = Scenario("trace", Trace(tuple(TraceRequest(*r) for r in requests)))
    return Simulation(scenario, "H100", LLAMA_3_8B, engine=engine, trace=True, **kw)


def families(text: str) -> dict:
    return {m.name: m for m in text_string_to_metric_families(text) if m.name.startswith("vllm:")}


def test_every_family_on_the_page_is_on_the_real_page_with_the_same_type_and_labels():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1, model_name="meta-llama/Llama-3.1-8B")
    sim.advance_to(30)
    ours, real = families(sim.page()), families(FIXTURE.read_text())
    assert len(ours) >= 20
    for name, family in ours.items():
        assert name in real, name
        assert family.type == real[name].type, name
        assert family.documentation == real[name].documentation, name
        assert len(family.samples) == len(real[name].samples), name
        for sample, real_sample in zip(family.samples, real[name].samples):
            assert sample.name == real_sample.name
            if name == "vllm:cache_config_info":
                assert set(sample.labels) < set(real_sample.labels)
                continue
            assert set(sample.labels) == set(real_sample.labels), name
            assert sample.labels["model_name"] == "meta-llama/Llama-3.1-8B"
            assert sample.labels["engine"] == "0"
    for family in ("prompt_tokens", "generation_tokens", "iteration_tokens_total"):
        assert f"vllm:{family}_created" in ours
    buckets = [s for s in ours["vllm:iteration_tokens_total"].samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets] == [
        s.labels["le"] for s in real["vllm:iteration_tokens_total"].samples if s.name.endswith("_bucket")
    ]


@pytest.mark.parametrize("value", [0.0, 1.0, 109.0, 0.00293040293040292, 1.7954360166598783e09, 524288.0, 1e7, 1.5e7])
def test_values_are_written_as_prometheus_client_writes_them(value):
    assert go_float(value) == floatToGoString(value)


def test_the_real_parser_reads_the_page_and_it_matches_the_engines_own_totals():
    requests = [(0.2 * i, 200 + 50 * (i % 7), 10 + 20 * (i % 5), i % 2, 160) for i in range(60)]
    sim = trace_sim(requests, EngineConfig(max_num_batched_tokens=1024, max_num_seqs=32))
    sim.advance_to(400)
    assert not sim.engine.has_work
    snapshot = parse(sim.page(), sim.now)
    assert snapshot.missing_families == frozenset()
    (engine,) = snapshot.engines
    finished = sim.finished
    assert len(finished) == 60
    prompt = sum(seq.prompt for seq in finished)
    cached = sum(seq.first_hits for seq in finished)
    assert cached > 0
    assert engine.prompt_tokens == prompt
    assert engine.cached_prompt_tokens == cached
    assert engine.computed_prompt_tokens == prompt - cached
    assert engine.generation_tokens == sum(seq.output_len for seq in finished)
    emitting = [s for s in sim.step_trace if s.emitted]
    assert engine.steps == len(emitting)
    assert engine.step_tokens == prompt + engine.generation_tokens  # prompts credited whole, hits included
    assert engine.kv_cache_capacity_tokens == sim.num_gpu_blocks * 16
    assert engine.requests_running == 0 and engine.requests_waiting == 0 and engine.kv_cache_usage == 0
    assert engine.created == pytest.approx(sim.epoch, abs=1e-3)
    success = families(sim.page())["vllm:request_success"]
    assert sum(s.value for s in success.samples if s.name.endswith("_total")) == 60


def test_a_long_chunked_prefill_is_credited_at_its_first_token_after_its_energy():
    sim = trace_sim([(0.0, 20000, 3)], EngineConfig(max_num_batched_tokens=2048))
    prefill_steps = math.ceil(20000 / 2048)
    sim.advance_to(1e-6)
    while sim.oracle_totals().steps < prefill_steps - 1:
        sim.advance(0.01)
    truth = sim.oracle_totals()
    engine = parse(sim.page(), sim.now).engines[0]
    assert truth.energy["input"] > 0.8 * 20000 * 2 * LLAMA_3_8B.active_params * sim.hardware.joules_per_flop
    assert engine.prompt_tokens == 0 and engine.generation_tokens == 0
    assert engine.steps == 0  # steps that only advance a prefill emit nothing and are not observed
    assert engine.requests_running == 1
    sim.advance_to(30)
    engine = parse(sim.page(), sim.now).engines[0]
    assert engine.prompt_tokens == 20000 and engine.generation_tokens == 3
    assert engine.steps == 3  # the step with the first token, then two decode steps
    assert sim.oracle_totals().steps == prefill_steps + 2


def test_counters_move_at_the_end_of_a_step_and_its_energy_through_it():
    probe = trace_sim([(0.0, 8000, 2)])
    probe.advance_to(10.0)
    first = probe.step_trace[0]
    sim = trace_sim([(0.0, 8000, 2)])
    sim.advance_to(0.99 * first.end)
    truth = sim.oracle_totals()
    assert truth.energy_joules == pytest.approx(0.99 * first.energy, rel=1e-9)
    assert truth.energy["input"] == pytest.approx(0.99 * first.e_input, rel=1e-9)
    assert truth.steps == 0
    assert parse(sim.page(), sim.now).engines[0].prompt_tokens == 0
    sim.advance_to(first.end)
    assert parse(sim.page(), sim.now).engines[0].prompt_tokens == 8000
    assert sim.oracle_totals().energy_joules == pytest.approx(first.energy, rel=1e-12)


def test_a_vllm_restart_zeroes_the_counters_with_new_created_times_and_refuses_reads_meanwhile():
    faults = Faults(vllm_restarts=(40.0,), restart_downtime_seconds=6.0)
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=2, faults=faults)
    source = SimVllmSource(sim)
    tracker = CounterTracker()
    sim.advance_to(39.9)
    before = source.read().engines[0]
    tracker.increase("gen", before.generation_tokens, before.created)
    assert before.generation_tokens > 1000
    sim.advance_to(43.0)
    with pytest.raises(SourceError) as err:
        source.read()
    assert err.value.reason == "connection"
    truth_down = sim.oracle_totals()
    sim.advance_to(45.9)
    assert sim.oracle_totals().energy["idle"] - truth_down.energy["idle"] == pytest.approx(
        2.9 * sim.gpu.idle_watts, rel=1e-9
    )  # downtime is idle
    sim.advance_to(60.0)
    after = source.read().engines[0]
    assert after.created == pytest.approx(sim.epoch + 46.0, abs=1e-3)
    assert 0 < after.generation_tokens < before.generation_tokens
    increase = tracker.increase("gen", after.generation_tokens, after.created)
    assert increase.reset and increase.value == after.generation_tokens
    assert sim.restarts == 1 and sim.lost_requests > 0


def read_mj(sim, source, gpu=0):
    return round(source.read().gpus[gpu].energy_joules * 1000)


def test_the_energy_counter_steps_every_100_ms_in_whole_millijoules():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1)
    source = SimEnergySource(sim)
    sim.advance_to(5.0)
    values, times = [], []
    for _ in range(400):
        sim.advance(0.005)
        values.append(source.read().gpus[0].energy_joules)
        times.append(sim.now)
    changes = [t for t, a, b in zip(times[1:], values, values[1:]) if b != a]
    assert 19 <= len(changes) <= 21  # 2 s of reads every 5 ms, busy GPU: one update per 100 ms
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    assert all(abs(g - 0.1) < 0.006 for g in gaps)
    assert all(abs(v * 1000 - round(v * 1000)) < 1e-6 for v in values)


@pytest.mark.parametrize("gain", [1.03, 0.95])
def test_the_energy_counter_carries_the_board_gain_error(gain):
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, gpus=2, seed=1, faults=Faults(gain=gain))
    source = SimEnergySource(sim)
    sim.advance_to(10.0)
    first, true_first = source.read(), sim.energy_at(sim.meter.update_time(0, sim.now))
    sim.advance_to(70.0)
    last, true_last = source.read(), sim.energy_at(sim.meter.update_time(0, sim.now))
    measured = sum(b.energy_joules - a.energy_joules for a, b in zip(first.gpus, last.gpus))
    true = sim.oracle_totals().energy_joules
    assert measured / (true_last - true_first) == pytest.approx(gain, rel=2e-3)
    assert true > 0
    power = sum(g.power_watts for g in last.gpus)
    assert 2 * sim.gpu.idle_watts * gain < power <= 2 * sim.gpu.board_limit_watts * gain


def test_a_driver_reset_restarts_the_energy_counter_and_the_core_sees_a_reset():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1, faults=Faults(driver_resets=(20.0,)))
    source = SimEnergySource(sim)
    tracker = CounterTracker()
    sim.advance_to(19.0)
    before = source.read().gpus[0].energy_joules
    assert before > 1e5  # energy since driver load: an arbitrary large start
    tracker.increase("gpu0", before)
    sim.advance_to(21.0)
    after = source.read().gpus[0].energy_joules
    assert 0 < after < before
    true_since_reset = sim.energy_at(sim.meter.update_time(0, sim.now)) - sim.energy_at(20.0)
    assert after == pytest.approx(true_since_reset, abs=2e-3)
    assert tracker.increase("gpu0", after).reset


def test_injected_read_errors_fail_gpus_or_whole_reads_and_never_change_the_run():
    faulty = Simulation(well_mixed(), "H100", LLAMA_3_8B, gpus=2, seed=5, faults=Faults(nvml_error_rate=0.3))
    clean = Simulation(well_mixed(), "H100", LLAMA_3_8B, gpus=2, seed=5)
    source = SimEnergySource(faulty)
    errors = good = 0
    for i in range(1, 200):
        faulty.advance_to(i * 0.5)
        for gpu in source.read().gpus:
            if gpu.error:
                assert gpu.error == "nvml_error" and gpu.energy_joules is None and gpu.power_watts is None
                errors += 1
            else:
                assert gpu.method == "counter" and gpu.energy_joules > 0
                good += 1
    assert 0.2 < errors / (errors + good) < 0.4
    clean.advance_to(faulty.now)
    assert clean.oracle_totals() == faulty.oracle_totals()
    broken = SimEnergySource(Simulation(well_mixed(), "H100", LLAMA_3_8B, faults=Faults(energy_read_error_rate=1.0)))
    with pytest.raises(SourceError) as err:
        broken.read()
    assert err.value.reason == "nvml_error"
