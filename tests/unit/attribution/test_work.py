import pytest

from exporter.attribution.readings import EngineSample
from exporter.attribution.work import Work, WorkMeter


def sample(model="m", engine="0", **kw):
    base = {
        "prompt_tokens": 0.0,
        "generation_tokens": 0.0,
        "cached_prompt_tokens": 0.0,
        "computed_prompt_tokens": 0.0,
        "steps": 0.0,
        "created": 1.0,
        "kv_cache_usage": 0.0,
        "kv_cache_capacity_tokens": 1000.0,
        "requests_running": 0.0,
        "requests_waiting": 0.0,
    }
    base.update(kw)
    return EngineSample(model_name=model, engine=engine, **base)


def test_classes_follow_vllm_counters_and_sum_over_engines():
    meter = WorkMeter()
    meter.update([sample(engine="0"), sample(engine="1")])
    w = meter.update(
        [
            sample(
                engine="0",
                prompt_tokens=100,
                computed_prompt_tokens=60,
                cached_prompt_tokens=40,
                generation_tokens=30,
                steps=10,
                requests_running=1,
            ),
            sample(engine="1", prompt_tokens=50, computed_prompt_tokens=50, generation_tokens=5, steps=2),
        ]
    )
    work = w.by_model["m"]
    assert (work.input, work.cached_input, work.output, work.steps) == (110, 40, 35, 12)
    assert not w.idle


def test_cached_from_cached_total_when_by_source_is_absent():
    meter = WorkMeter()
    meter.update([sample(computed_prompt_tokens=None)])
    w = meter.update([sample(computed_prompt_tokens=None, prompt_tokens=80, cached_prompt_tokens=30)]).by_model["m"]
    assert (w.input, w.cached_input) == (50, 30)


def test_legacy_page_without_cache_counters_counts_all_prompt_tokens_as_computed():
    meter = WorkMeter()
    meter.update([sample(computed_prompt_tokens=None, cached_prompt_tokens=None, created=None)])
    w = meter.update(
        [sample(computed_prompt_tokens=None, cached_prompt_tokens=None, created=None, prompt_tokens=70)]
    ).by_model["m"]
    assert (w.input, w.cached_input) == (70, 0)


def test_restart_counts_the_new_values_once_and_reports_it():
    meter = WorkMeter()
    meter.update([sample(prompt_tokens=1000, computed_prompt_tokens=1000, generation_tokens=900, steps=500)])
    w = meter.update([sample(prompt_tokens=10, computed_prompt_tokens=10, generation_tokens=7, steps=3, created=2.0)])
    assert w.resets == 1
    assert (w.by_model["m"].input, w.by_model["m"].output) == (10, 7)


def test_kv_context_is_steps_times_mean_usage_times_capacity():
    meter = WorkMeter()
    meter.update([sample(kv_cache_usage=0.1)])
    w = meter.update([sample(kv_cache_usage=0.3, steps=10, generation_tokens=10, requests_running=2)])
    assert abs(w.by_model["m"].kv_context - 10 * 0.2 * 1000) < 1e-9


def test_idle_only_when_nothing_moved_and_nothing_ran_at_either_end():
    meter = WorkMeter()
    meter.update([sample()])
    assert meter.update([sample()]).idle
    assert not meter.update([sample(requests_waiting=1)]).idle
    assert not meter.update([sample()]).idle  # it was waiting at the start of this interval
    assert meter.update([sample()]).idle


def test_two_models_stay_apart():
    meter = WorkMeter()
    meter.update([sample(model="a"), sample(model="b")])
    w = meter.update([sample(model="a", generation_tokens=5), sample(model="b", generation_tokens=9)])
    assert w.by_model["a"].output == 5 and w.by_model["b"].output == 9


def test_the_plugins_summed_kv_use_gives_the_context_read_step_by_step():
    meter = WorkMeter()

    def sample(usage_steps, steps):
        return EngineSample(
            "m", "0", prompt_tokens=0.0, generation_tokens=steps, steps=steps, kv_usage_steps=usage_steps,
            kv_cache_usage=0.9, kv_cache_capacity_tokens=1000.0,
        )  # fmt: skip

    meter.update([sample(0.0, 0.0)])
    work = meter.update([sample(3.0, 10.0)]).by_model["m"]
    # Not steps x the usage at the ends (10 x 0.9 x 1000): the steps' own use, summed.
    assert work.kv_context == pytest.approx(3000.0)


def test_the_plugins_decode_count_is_the_output_driver_and_adds_up():
    meter = WorkMeter()
    meter.update([sample(generation_tokens=0.0, scheduled_decode_tokens=0.0)])
    work = meter.update([sample(generation_tokens=12.0, scheduled_decode_tokens=9.0)]).by_model["m"]
    assert (work.output, work.decode_tokens) == (12.0, 9.0)  # 3 first tokens came from prefill
    work.add(Work(output=5.0))  # a piece without the plugin's count: its generated tokens
    assert (work.output, work.decode_tokens) == (17.0, 14.0)
    assert Work(output=4.0).decode_tokens == 4.0


def test_a_counter_unusable_for_a_while_is_counted_once_on_its_return():
    # A NaN prompt counter for two reads, while cached tokens went on: counting the cached ones in
    # the gap and the prompt's catch-up later gave 2x the cached input.
    meter = WorkMeter()
    totals = Work()
    pages = [(0, 0), (1000, 100), (float("nan"), 300), (float("nan"), 500), (4000, 700), (5000, 800)]
    for t, (prompt, cached) in enumerate(pages):
        page = sample(prompt_tokens=prompt, cached_prompt_tokens=cached, computed_prompt_tokens=None)
        totals.add(meter.update([page], float(t)).by_model["m"])
    assert (totals.input + totals.cached_input, totals.cached_input) == (5000.0, 800.0)


def test_a_restart_without_created_needs_every_counter_down():
    meter = WorkMeter()
    meter.update([sample(created=None, prompt_tokens=1000.0, generation_tokens=500.0, steps=50.0)], 0.0)
    glitch = meter.update([sample(created=None, prompt_tokens=10.0, generation_tokens=600.0, steps=60.0)], 1.0)
    assert (glitch.resets, glitch.decreases, glitch.by_model["m"].output) == (0, 1, 100.0)
    restart = meter.update([sample(created=None, prompt_tokens=5.0, generation_tokens=3.0, steps=1.0)], 2.0)
    assert restart.resets == 1 and restart.by_model["m"].output == 3.0
