"""Scheduling: determinism, the token budget, max_num_seqs, decode first, chunked prefill, KV
blocks, the prefix cache, preemption, idle gaps."""

import itertools

from exporter.sim.engine import EngineConfig
from exporter.sim.hardware import LLAMA_3_8B
from exporter.sim.run import Simulation
from exporter.sim.workload import (
    ClosedLoop,
    Fixed,
    RequestClass,
    Scenario,
    Trace,
    TraceRequest,
    Uniform,
    prefix_cache_heavy,
    well_mixed,
)


def trace_sim(requests, engine=EngineConfig(), **kw) -> Simulation:
    scenario = Scenario("trace", Trace(tuple(TraceRequest(*r) for r in requests)))
    return Simulation(scenario, "H100", LLAMA_3_8B, engine=engine, trace=True, **kw)


def drain(sim: Simulation, until: float = 600.0) -> Simulation:
    sim.advance_to(until)
    assert not sim.engine.has_work
    return sim


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    runs = []
    for seed in (3, 3, 4):
        sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=seed, trace=True)
        sim.advance_to(60.0)
        runs.append((sim.step_trace, sim.oracle_totals(), sim.page()))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]
    assert runs[0][1].energy_joules != runs[2][1].energy_joules


def test_the_budget_and_max_num_seqs_hold_and_every_request_gets_exactly_its_output():
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512)
    requests = [(0.01 * i, 100 + 37 * i, 5 + 11 * i) for i in range(40)]
    sim = drain(trace_sim(requests, config))
    steps = sim.step_trace
    assert max(s.prefill + s.decode for s in steps) == 512  # the budget is used and never exceeded
    assert all(s.prefill + s.decode <= 512 for s in steps)
    assert max(s.running for s in steps) == 8
    assert all(s.running <= 8 and s.decode <= 8 for s in steps)
    assert any(s.waiting > 0 for s in steps)
    assert sorted(seq.rid for seq in sim.finished) == list(range(40))
    for seq in sim.finished:
        assert seq.out == seq.output_len == seq.req.output_len
        assert seq.req.arrival <= seq.scheduled_at < seq.first_token_at <= seq.finished_at
    assert any(seq.scheduled_at > seq.req.arrival + 0.1 for seq in sim.finished)  # some had to queue
    assert sum(s.emitted for s in steps) == sum(r[2] for r in requests)
    assert sum(s.prefill for s in steps) == sum(r[1] for r in requests)  # no cache hits, no preemption


def test_decodes_come_first_and_a_long_prompt_is_chunked_from_what_is_left():
    config = EngineConfig(max_num_seqs=16, max_num_batched_tokens=1024)
    requests = [(0.0, 64, 400) for _ in range(10)] + [(0.5, 5000, 2)]
    sim = drain(trace_sim(requests, config))
    chunked = [s for s in sim.step_trace if s.start >= 0.5 and s.prefill > 0]
    assert len(chunked) >= 5  # 5000 tokens in chunks of at most 1024 - decodes
    for s in chunked:
        assert s.decode == 10 or s.start > chunked[0].start  # the ten decoders keep running
        assert s.prefill + s.decode <= 1024
    assert chunked[0].decode == 10 and chunked[0].prefill == 1024 - 10


def test_scarce_kv_blocks_cause_preemption_and_every_request_still_finishes():
    config = EngineConfig(max_num_seqs=16, max_num_batched_tokens=2048, num_gpu_blocks=80)  # 1280 tokens
    requests = [(0.0, 100, 300) for _ in range(8)]
    sim = drain(trace_sim(requests, config))
    assert sim.counters.preemptions > 0
    assert sum(seq.preemptions for seq in sim.finished) == sim.counters.preemptions
    assert sorted(seq.rid for seq in sim.finished) == list(range(8))
    assert all(seq.out == 300 for seq in sim.finished)
    # Recomputation is prefill work the counters never credit as prompt tokens.
    truth = sim.oracle_totals()
    assert truth.tokens["recomputed"] > 0
    assert truth.tokens["input"] == 800  # first computations only: what vLLM credits as local_compute
    assert sum(s.prefill for s in sim.step_trace) == 800 + truth.tokens["recomputed"]
    assert sim.counters.prompt_tokens == 800
    assert sim.counters.generation_tokens == 8 * 300
    assert max(s.kv_usage for s in sim.step_trace) <= 1.0


def test_shared_prefixes_hit_the_cache_in_whole_blocks():
    requests = [
        (0.0, 300, 4, 7, 200),  # computes the prefix: 12 whole blocks of it are cacheable
        (1.0, 260, 4, 7, 200),  # hits those 12 blocks = 192 tokens
        (2.0, 300, 4, 8, 200),  # another prefix: no hit
        (3.0, 193, 4, 7, 193),  # the whole prompt is the prefix: hits stop one token short, in blocks
    ]
    sim = drain(trace_sim(requests))
    hits = {seq.rid: seq.first_hits for seq in sim.finished}
    assert hits == {0: 0, 1: 192, 2: 0, 3: 192}
    sim2 = drain(trace_sim([(0.0, 300, 4, 7, 200), (1.0, 192, 4, 7, 192)]))
    assert {seq.rid: seq.first_hits for seq in sim2.finished} == {0: 0, 1: 176}  # at most prompt - 1
    assert sim.counters.cached_tokens == 384
    assert sim.oracle_totals().tokens["cached_input"] == 384
    assert sim.oracle_totals().tokens["input"] == 300 + 260 + 300 + 193 - 384


def test_without_prefix_caching_nothing_hits():
    requests = [(0.0, 300, 4, 7, 200), (1.0, 260, 4, 7, 200)]
    sim = drain(trace_sim(requests, EngineConfig(enable_prefix_caching=False)))
    assert sim.counters.cached_tokens == 0


def test_a_prefix_heavy_load_hits_most_prompt_tokens():
    sim = Simulation(prefix_cache_heavy(), "H100", LLAMA_3_8B, seed=2)
    sim.advance_to(60)
    assert sim.counters.cached_tokens > 0.6 * sim.counters.prompt_tokens


def test_blocks_are_all_free_again_after_the_load_drains():
    sim = drain(trace_sim([(0.1 * i, 500, 50, i % 3, 256) for i in range(30)]))
    engine = sim.engine
    assert engine.used_blocks == 0
    assert engine.free_plain + len(engine.evictable) == engine.num_blocks
    assert not engine.refs
    assert sim.counters.kv_usage == 0.0
    assert sim.counters.running == 0 and sim.counters.waiting == 0


def test_when_nothing_runs_the_clock_jumps_to_the_next_arrival_and_the_gap_is_idle():
    sim = trace_sim([(0.0, 100, 10), (50.0, 100, 10)])
    sim.advance_to(100.0)
    steps = sim.step_trace
    gap = [(a.end, b.start) for a, b in itertools.pairwise(steps) if b.start > a.end]
    assert len(gap) == 1 and gap[0][1] == 50.0
    truth = sim.oracle_totals()
    busy = sum(s.end - s.start for s in steps)
    assert abs(truth.seconds["idle"] - (100.0 - busy)) < 1e-9
    assert truth.steps == len(steps) == 20
    # Step ends and starts are contiguous while there is work.
    assert all(b.start == a.end for a, b in itertools.pairwise(steps) if b.start < 50.0)


def test_requests_longer_than_the_cache_are_rejected_not_stuck():
    config = EngineConfig(num_gpu_blocks=10)  # 160 tokens
    sim = drain(trace_sim([(0.0, 150, 20), (0.0, 100, 20)], config))
    assert sim.engine.rejected == 1
    assert [seq.rid for seq in sim.finished] == [1]


def test_a_closed_loop_keeps_its_users_busy():
    scenario = Scenario("c", ClosedLoop(12), (RequestClass(Uniform(100, 200), Fixed(50)),))
    sim = Simulation(scenario, "H100", LLAMA_3_8B, seed=1, trace=True)
    sim.advance_to(30.0)
    assert max(s.running for s in sim.step_trace) == 12
    assert sim.oracle_totals().seconds["idle"] == 0.0
