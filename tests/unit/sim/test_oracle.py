"""The oracle and the hardware behind it: conservation, the two ground truths, the power cap,
the calibration of energy per FLOP and per byte, a published anchor, and the speed."""

import time

import pytest

from exporter.attribution.gpu_table import GPU_TABLE
from exporter.sim.hardware import LLAMA_2_70B, LLAMA_3_8B, HardwareModel, Roofline
from exporter.sim.oracle import CLASSES
from exporter.sim.run import Faults, Simulation
from exporter.sim.workload import SCENARIOS, ClosedLoop, Fixed, RequestClass, Scenario, bursty_idle, well_mixed

H100 = GPU_TABLE["H100"]


def conserved(truth, elapsed):
    assert sum(truth.energy.values()) == pytest.approx(truth.energy_joules, rel=1e-9)
    assert sum(truth.seconds.values()) == pytest.approx(elapsed, rel=1e-9)
    assert all(value >= 0 for value in truth.energy.values())
    assert set(truth.energy) == set(CLASSES)


@pytest.mark.parametrize("truth", ["component", "phase"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_classes_sum_to_the_true_energy_at_any_moment(name, truth):
    faults = Faults(vllm_restarts=(17.3,), restart_downtime_seconds=2.0)
    sim = Simulation(SCENARIOS[name](), "H100", LLAMA_3_8B, truth=truth, seed=9, faults=faults)
    for t in (0.0123, 3.3, 17.29, 17.31, 19.4, 45.678):
        sim.advance_to(t)
        truth_now = sim.oracle_totals()
        conserved(truth_now, t)
        assert truth_now.energy_joules == pytest.approx(sim.energy_at(t), rel=1e-9)


def test_every_step_splits_its_own_energy_exactly():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1, trace=True)
    sim.advance_to(60)
    assert sim.step_trace
    for s in sim.step_trace:
        assert s.e_input + s.e_cached + s.e_output == pytest.approx(s.energy, rel=1e-12)
        assert min(s.e_input, s.e_cached, s.e_output) >= 0
        assert (s.e_input > 0) == (s.prefill > 0)
    total = sum(s.energy for s in sim.step_trace)
    truth = sim.oracle_totals()
    assert total + truth.energy["idle"] <= truth.energy_joules * (1 + 1e-12)


def test_idle_gaps_are_wholly_idle_at_idle_power():
    sim = Simulation(bursty_idle(on_seconds=10.0, off_seconds=50.0), "H100", LLAMA_3_8B, gpus=2, seed=3)
    sim.advance_to(30.0)  # the burst's work has drained by now
    before = sim.oracle_totals()
    sim.advance_to(55.0)
    window = sim.oracle_totals().minus(before)
    assert window.energy["idle"] == pytest.approx(25.0 * 2 * H100.idle_watts, rel=1e-12)
    assert window.energy["input"] == window.energy["output"] == window.energy["cached_input"] == 0.0
    assert window.seconds["idle"] == pytest.approx(25.0)


def test_a_compute_bound_step_draws_prefill_power_and_a_bandwidth_bound_one_decode_power():
    hw = HardwareModel(H100, LLAMA_3_8B, 1, roofline=Roofline(step_overhead_seconds=0.0))
    flops_only = HardwareModel(
        H100, LLAMA_3_8B.__class__(8e9, 1.0, 2.0, 0.0, "test"), 1, roofline=Roofline(step_overhead_seconds=0.0)
    )
    prefill = flops_only.step(16384, 0, 0, 0, 0, 0)
    assert prefill.energy / prefill.seconds == pytest.approx(H100.prefill_watts, rel=1e-3)
    decode = hw.step(0, 1, 0, 0, 0, 0)
    assert decode.energy / decode.seconds == pytest.approx(H100.decode_watts, rel=0.01)


def test_power_is_capped_at_the_board_limit_and_the_cap_scales_every_dynamic_part():
    gpu = GPU_TABLE["L4"]
    hw = HardwareModel(gpu, LLAMA_3_8B, 2)
    big = hw.step(8192, 64, 20000, 5000, 8192 * 12000, 64 * 1500)
    assert big.energy / big.seconds == pytest.approx(2 * gpu.board_limit_watts, rel=1e-12)
    free = HardwareModel(
        gpu.__class__(
            gpu.key, gpu.idle_watts, gpu.prefill_watts, gpu.decode_watts, 1e6, gpu.peak_flops, gpu.memory_bandwidth
        ),
        LLAMA_3_8B,
        2,
    )
    uncapped = free.step(8192, 64, 20000, 5000, 8192 * 12000, 64 * 1500)
    assert uncapped.energy > big.energy
    static = 2 * gpu.idle_watts * big.seconds
    ratio_capped = (big.e_input - static * big.s_input / big.seconds) / (big.energy - static)
    ratio_free = (uncapped.e_input - static * uncapped.s_input / uncapped.seconds) / (uncapped.energy - static)
    assert ratio_capped == pytest.approx(ratio_free, rel=1e-9)


def test_energy_per_unit_does_not_depend_on_the_gpu_count_but_time_does():
    one = HardwareModel(H100, LLAMA_2_70B, 4, roofline=Roofline(step_overhead_seconds=0.0))
    two = HardwareModel(H100, LLAMA_2_70B, 8, roofline=Roofline(step_overhead_seconds=0.0))
    a, b = one.step(4096, 32, 1000, 0, 0, 32 * 800), two.step(4096, 32, 1000, 0, 0, 32 * 800)
    assert a.seconds == pytest.approx(2 * b.seconds)
    assert a.energy - 4 * H100.idle_watts * a.seconds == pytest.approx(b.energy - 8 * H100.idle_watts * b.seconds)


def test_ground_truth_b_is_a_different_model_on_the_same_schedule():
    runs = {}
    for truth in ("component", "phase"):
        sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, truth=truth, seed=4, trace=True)
        sim.advance_to(120)
        runs[truth] = sim
    a, b = runs["component"], runs["phase"]
    assert [(s.start, s.end) for s in a.step_trace] == [(s.start, s.end) for s in b.step_trace]
    for s in b.step_trace:
        watts = H100.prefill_watts if s.prefill else H100.decode_watts
        assert s.energy == pytest.approx(watts * (s.end - s.start), rel=1e-12)
    ta, tb = a.oracle_totals(), b.oracle_totals()
    assert abs(tb.energy_joules / ta.energy_joules - 1) > 0.01
    share_a = ta.energy["input"] / ta.energy["output"]
    share_b = tb.energy["input"] / tb.energy["output"]
    assert abs(share_b / share_a - 1) > 0.05
    differing = sum(1 for x, y in zip(a.step_trace, b.step_trace) if abs(x.energy / y.energy - 1) > 0.02)
    assert differing > len(a.step_trace) / 2


def test_llama2_70b_on_two_h100_at_batch_16_lands_near_published_figures():
    scenario = Scenario("batch16", ClosedLoop(16), (RequestClass(Fixed(512), Fixed(256)),))
    sim = Simulation(scenario, "H100", LLAMA_2_70B, gpus=2, seed=1, trace=True)
    sim.advance_to(120)
    steps = sim.step_trace
    assert 15 <= sum(s.decode for s in steps) / len(steps) <= 16
    truth = sim.oracle_totals()
    per_input, per_output = truth.joules_per_token("input"), truth.joules_per_token("output")
    print(f"\nLlama-2-70B, 2 x H100, batch 16: {per_input:.3f} J per input token, {per_output:.3f} J per output token")
    assert 0.2 / 1.5 <= per_input <= 0.2 * 1.5
    assert 2.0 / 1.5 <= per_output <= 2.0 * 1.5


def test_ten_minutes_of_well_mixed_serving_take_seconds():
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, seed=1)
    started = time.perf_counter()
    sim.advance_to(600.0)
    cpu = time.perf_counter() - started
    truth = sim.oracle_totals()
    print(
        f"\n600 s of well_mixed (8B, 1 x H100): {truth.steps} steps in {cpu:.2f} s of CPU, {600.0 / cpu:.0f}x real time"
    )
    assert truth.steps > 20000
    conserved(truth, 600.0)


def test_the_true_marginal_coefficients_are_what_an_uncapped_step_costs_above_idle():
    hw = HardwareModel(H100, LLAMA_3_8B, 2)
    c = hw.marginal_coefficients()

    def above_idle(*work):
        cost = hw.step(*work)
        return cost.energy - 2 * H100.idle_watts * cost.seconds

    base = above_idle(0, 8, 0, 0, 0, 8000)
    assert above_idle(0, 8, 0, 0, 0, 8000) == pytest.approx(c.step + 8 * c.output + 8000 * c.kv, rel=1e-9)
    assert above_idle(512, 8, 0, 0, 0, 8000) - base == pytest.approx(512 * c.input, rel=1e-9)
    with_hits = above_idle(512, 8, 0, 300, 0, 8000)
    assert with_hits - above_idle(512, 8, 0, 0, 0, 8000) == pytest.approx(300 * c.cached_input)
    assert c.output / c.input == 1.0 and c.step > 50 * c.output  # the weight stream dwarfs one token
    with pytest.raises(ValueError):
        HardwareModel(H100, LLAMA_3_8B, 2, truth="phase").marginal_coefficients()


def test_the_phase_truth_splits_a_mixed_step_by_the_products_convention():
    """Each part pays its own time (its own FLOPs and bytes at the roofline's rates) at its own
    phase's power; the interaction, what the step draws beyond those, of either sign, is shared
    equally. Worked by hand on two mixed steps and one decode step."""
    hw = HardwareModel(H100, LLAMA_3_8B, 1, truth="phase")
    p_prefill, p_decode = H100.prefill_watts, H100.decode_watts
    kv, f, b = hw.kv_bytes_per_token, hw.flops_rate, hw.byte_rate

    def own_times(prefill, decode, hits, context):
        own_in = hw.flops_per_token * prefill / f + kv * prefill / b
        own_cached = kv * hits / b
        own_out = hw.flops_per_token * decode / f + (hw.weight_bytes + kv * (context + decode)) / b + hw.overhead
        return own_in, own_cached, own_out

    for prefill, decode, sign in ((512, 32, -1), (16, 64, +1)):
        mixed = hw.step(prefill, decode, own_context=0, hit_context=128, prefill_pairs=0, decode_context=decode * 900)
        own_in, own_cached, own_out = own_times(prefill, decode, 128, decode * 900)
        assert mixed.energy == pytest.approx(p_prefill * mixed.seconds, rel=1e-12)
        interaction = mixed.energy - p_prefill * (own_in + own_cached) - p_decode * own_out
        # Compute and memory traffic overlap in a long chunk's step (it is shorter than its parts'
        # own times), while a short chunk lifts a decode batch's draw to prefill power.
        assert interaction * sign > 0
        assert mixed.e_input + mixed.e_cached == pytest.approx(
            p_prefill * (own_in + own_cached) + interaction / 2, rel=1e-9
        )
        assert mixed.e_output == pytest.approx(p_decode * own_out + interaction / 2, rel=1e-9)
        assert mixed.e_input / mixed.e_cached == pytest.approx(own_in / own_cached, rel=1e-9)
        # Before the convention the whole step went by time share at prefill power: kept as the extra column.
        assert mixed.ts_input == pytest.approx(mixed.energy * mixed.s_input / mixed.seconds, rel=1e-9)
    decode = hw.step(prefill=0, decode=32, own_context=0, hit_context=0, prefill_pairs=0, decode_context=32 * 900)
    assert decode.e_output == decode.energy and decode.e_input == decode.e_cached == 0.0


def test_the_component_truth_has_no_interaction_and_its_time_share_column_is_itself():
    hw = HardwareModel(H100, LLAMA_3_8B, 1, truth="component")
    step = hw.step(prefill=512, decode=32, own_context=0, hit_context=128, prefill_pairs=0, decode_context=32 * 900)
    assert (step.ts_input, step.ts_cached) == (step.e_input, step.e_cached)


@pytest.mark.parametrize("truth", ["component", "phase"])
def test_the_time_share_column_is_conserved_too(truth):
    sim = Simulation(well_mixed(), "H100", LLAMA_3_8B, truth=truth, seed=2)
    sim.advance_to(37.5)
    totals = sim.oracle_totals()
    assert sum(totals.energy_time_share.values()) == pytest.approx(totals.energy_joules, rel=1e-9)
    assert totals.energy_time_share["idle"] == totals.energy["idle"]
    if truth == "component":
        assert totals.energy_time_share == pytest.approx(totals.energy, rel=1e-9)
    else:  # the convention moves energy from output to input, never the total
        assert totals.energy["input"] > totals.energy_time_share["input"]
