"""Counting what every engine step did, from the stats vLLM hands its stat loggers.

This runs on vLLM's event loop once per engine step, so it does the least it can: a few
attribute reads and additions to plain numbers. Publishing happens on the plugin's own thread.

vLLM says its `SchedulerStats` and `IterationStats` are not a stable interface, so no field is
assumed: each is read with a default, and a field this vLLM lacks (or fills with something that
is not a finite, non-negative number) is remembered in `missing` and left uncounted. Nothing
here imports vLLM."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The fields read, by the name the plugin reports them under (field_available{field=...}).
FIELDS = (
    "iteration_stats.num_generation_tokens",
    "iteration_stats.prompt_token_stats",
    "iteration_stats.num_preempted_reqs",
    "scheduler_stats.num_running_reqs",
    "scheduler_stats.num_waiting_reqs",
    "scheduler_stats.kv_cache_usage",
    "scheduler_stats.iteration_details",
)
# Present but None: vLLM was started without --enable-logging-iteration-details.
ITERATION_DETAILS = "scheduler_stats.iteration_details"

_ABSENT = object()


@dataclass(slots=True)
class EngineCounts:
    """Cumulative since the plugin started, for one engine (data-parallel rank)."""

    prefill_steps: int = 0  # steps that scheduled prompt tokens (perhaps beside decodes)
    decode_steps: int = 0  # steps that scheduled only decodes
    scheduled_prefill: int = 0  # prompt tokens, counted when scheduled (iteration details)
    scheduled_decode: int = 0
    input: int = 0  # prompt tokens computed, counted at first token (as vLLM's own counter)
    cached_input: int = 0
    output: int = 0
    preemptions: int = 0
    busy_seconds: float = 0.0  # the steps' own elapsed time (iteration details)
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    kv_usage_steps: float = 0.0  # the KV cache's use summed over the steps that ran (x capacity: context read)


class StepCounter:
    """`record()` is called by vLLM's thread; other threads only read the numbers."""

    __slots__ = ("details_seen", "engines", "missing", "records")

    def __init__(self) -> None:
        self.engines: dict[int, EngineCounts] = {}
        self.missing: set[str] = set()
        self.details_seen = False  # iteration details arrived at least once
        self.records = 0

    def record(self, scheduler_stats: Any, iteration_stats: Any, engine_idx: int) -> None:
        counts = self.engines.get(engine_idx)
        if counts is None:
            counts = self.engines[engine_idx] = EngineCounts()
        self.records += 1
        prompt_finished = 0
        if iteration_stats is not None:
            prompt_finished = self._iteration(counts, iteration_stats)
        if scheduler_stats is not None:
            self._step(counts, scheduler_stats, iteration_stats is not None, prompt_finished)

    def _iteration(self, counts: EngineCounts, stats: Any) -> int:
        """Tokens as vLLM itself counts them; returns the prompt tokens that finished prefill."""
        output = self._number(stats, "num_generation_tokens", "iteration_stats.num_generation_tokens")
        if output is not None:
            counts.output += output
        preempted = self._number(stats, "num_preempted_reqs", "iteration_stats.num_preempted_reqs")
        if preempted is not None:
            counts.preemptions += preempted
        prompt = getattr(stats, "prompt_token_stats", _ABSENT)
        if prompt is _ABSENT or prompt is None:
            self.missing.add("iteration_stats.prompt_token_stats")
            return 0
        computed = self._number(prompt, "computed", "iteration_stats.prompt_token_stats")
        cached = self._number(prompt, "cached_tokens", "iteration_stats.prompt_token_stats")
        counts.input += computed or 0
        counts.cached_input += cached or 0
        return (computed or 0) + (cached or 0)

    def _step(self, counts: EngineCounts, stats: Any, had_outputs: bool, prompt_finished: int) -> None:
        running = self._number(stats, "num_running_reqs", "scheduler_stats.num_running_reqs")
        if running is not None:
            counts.running = running
        waiting = self._number(stats, "num_waiting_reqs", "scheduler_stats.num_waiting_reqs")
        if waiting is not None:
            counts.waiting = waiting
        usage = self._number(stats, "kv_cache_usage", "scheduler_stats.kv_cache_usage")
        if usage is not None:
            counts.kv_usage = usage
        details = getattr(stats, "iteration_details", _ABSENT)
        if details is _ABSENT:
            self.missing.add(ITERATION_DETAILS)
        elif details is not None:
            self.details_seen = True
            self._details(counts, details)
            counts.kv_usage_steps += counts.kv_usage
            return
        if self.details_seen or not had_outputs:
            return  # with details on, a step without them scheduled nothing; else count what vLLM counts
        # Without the scheduler's details, a step is a prefill step if a prompt finished in it.
        if prompt_finished:
            counts.prefill_steps += 1
        else:
            counts.decode_steps += 1

    def _details(self, counts: EngineCounts, details: Any) -> None:
        prefill = self._number(details, "num_ctx_tokens", ITERATION_DETAILS) or 0
        decode = self._number(details, "num_generation_tokens", ITERATION_DETAILS) or 0
        elapsed_ms = self._number(details, "elapsed_ms", ITERATION_DETAILS)
        counts.scheduled_prefill += prefill
        counts.scheduled_decode += decode
        if prefill:
            counts.prefill_steps += 1
        else:  # a decode-only step, or a data-parallel dummy step that ran no request
            counts.decode_steps += 1
        if elapsed_ms is not None:
            counts.busy_seconds += elapsed_ms / 1000.0

    def _number(self, obj: Any, attr: str, field: str) -> Any:
        """The attribute if it is a finite, non-negative number; else None, and the field is missing."""
        value = getattr(obj, attr, None)
        if type(value) is int:  # the common case first: no float checks
            if value >= 0:
                return value
        elif type(value) is float and value >= 0 and not math.isinf(value):
            return value  # NaN fails `>= 0`
        self.missing.add(field)
        return None
