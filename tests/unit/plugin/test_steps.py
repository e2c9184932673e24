"""Counting engine steps from stats shaped as vLLM 0.32 hands them to stat loggers, and from
stats that lack fields or carry garbage (vLLM says the classes are not a stable interface)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from exporter.plugin.steps import ITERATION_DETAILS, StepCounter


def iteration(generated=0, computed=0, cached=0, preempted=0):
    prompt = SimpleNamespace(computed=computed, cached_tokens=cached, total=computed + cached)
    return SimpleNamespace(num_generation_tokens=generated, prompt_token_stats=prompt, num_preempted_reqs=preempted)


def details(ctx=0, gen=0, elapsed_ms=1.0):
    return SimpleNamespace(num_ctx_tokens=ctx, num_generation_tokens=gen, elapsed_ms=elapsed_ms, is_dummy=False)


def scheduler(running=1, waiting=0, usage=0.25, step_details=None):
    return SimpleNamespace(
        num_running_reqs=running, num_waiting_reqs=waiting, kv_cache_usage=usage, iteration_details=step_details
    )


def test_a_mixed_step_is_a_prefill_step_and_its_tokens_count_when_scheduled():
    counter = StepCounter()
    # Step 1: a 300-token prompt chunk beside 2 decodes; nothing finished prefill yet.
    counter.record(scheduler(step_details=details(ctx=300, gen=2, elapsed_ms=12.5)), iteration(generated=2), 0)
    # Step 2: the last 100 prompt tokens (50 of them from the cache) finish; 3 tokens generated.
    counter.record(
        scheduler(step_details=details(ctx=50, gen=2, elapsed_ms=7.5)), iteration(3, computed=350, cached=50), 0
    )
    # Step 3: decode only.
    counter.record(scheduler(running=3, step_details=details(gen=3, elapsed_ms=5.0)), iteration(3, preempted=1), 0)
    c = counter.engines[0]
    assert (c.prefill_steps, c.decode_steps) == (2, 1)
    assert (c.scheduled_prefill, c.scheduled_decode) == (350, 7)
    assert (c.input, c.cached_input, c.output, c.preemptions) == (350, 50, 8, 1)
    assert c.busy_seconds == pytest.approx(0.025)
    assert (c.running, c.waiting, c.kv_usage) == (3, 0, 0.25)
    assert c.kv_usage_steps == pytest.approx(0.75)  # each step's own use, summed: x capacity = context read
    assert counter.details_seen and not counter.missing


def test_with_details_on_a_step_that_scheduled_nothing_is_not_a_step():
    counter = StepCounter()
    counter.record(scheduler(step_details=details(gen=1)), iteration(1), 0)
    counter.record(scheduler(step_details=None), None, 0)  # vLLM sends stats for an empty step
    assert counter.engines[0].decode_steps == 1


def test_without_details_a_step_is_a_record_with_outputs_and_prefill_is_a_finished_prompt():
    counter = StepCounter()
    counter.record(scheduler(), iteration(1, computed=40), 0)
    counter.record(scheduler(), iteration(1), 0)
    counter.record(scheduler(), None, 0)  # stats, no outputs: vLLM does not count it either
    c = counter.engines[0]
    assert (c.prefill_steps, c.decode_steps, c.scheduled_prefill, c.busy_seconds) == (1, 1, 0, 0.0)
    assert not counter.details_seen


def test_engines_are_counted_apart():
    counter = StepCounter()
    counter.record(None, iteration(5), 0)
    counter.record(None, iteration(7), 1)
    assert counter.engines[0].output == 5 and counter.engines[1].output == 7


@pytest.mark.parametrize(
    "bad", [None, -1, float("nan"), float("inf"), "12", True, 10**30 * 1.0 * float("inf")], ids=repr
)
def test_a_field_that_is_not_a_finite_non_negative_number_is_missing_never_counted(bad):
    counter = StepCounter()
    stats = iteration(4)
    stats.num_generation_tokens = bad
    counter.record(scheduler(), stats, 0)
    assert counter.engines[0].output == 0
    assert "iteration_stats.num_generation_tokens" in counter.missing


def test_stats_without_the_fields_are_reported_missing_and_the_rest_still_counts():
    counter = StepCounter()
    counter.record(SimpleNamespace(), SimpleNamespace(num_generation_tokens=2), 0)
    assert counter.engines[0].output == 2
    assert {
        "iteration_stats.prompt_token_stats",
        "iteration_stats.num_preempted_reqs",
        "scheduler_stats.num_running_reqs",
        ITERATION_DETAILS,
    } <= counter.missing


def test_record_does_not_guard_against_objects_that_raise_the_logger_does():
    # A property that raises is not a missing field: the exception reaches the stat logger,
    # which counts it (tests/unit/plugin/test_vllm_logger.py).
    class Exploding:
        @property
        def num_generation_tokens(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        StepCounter().record(None, Exploding(), 0)
