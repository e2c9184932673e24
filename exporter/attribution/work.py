"""What the engines did in one interval, per model: the token classes and the drivers of
marginal cost, from two successive vLLM pages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.attribution.counters import CounterTracker
from exporter.attribution.readings import EngineSample


@dataclass(slots=True)
class Work:
    input: float = 0.0  # prompt tokens computed
    cached_input: float = 0.0  # prompt tokens served from a prefix cache or a KV transfer
    output: float = 0.0
    steps: float = 0.0  # engine iterations
    kv_context: float = 0.0  # context tokens whose KV the steps read (S x mean usage x capacity)
    prefill_steps: float = 0.0  # steps that carried prefill (the plugin's count; 0 when unknown)
    # Decode tokens computed (the plugin's scheduled count). vLLM's generated tokens include each
    # request's first token, which its last prefill chunk produced without a decode of its own:
    # as the cost driver of output they would carry part of the prefill. None: as `output`.
    decode: float | None = None

    @property
    def decode_tokens(self) -> float:
        """The output driver: decode tokens computed where the plugin counted them, else generated."""
        return self.output if self.decode is None else self.decode

    def add(self, other: Work) -> None:
        if self.decode is not None or other.decode is not None:
            self.decode = self.decode_tokens + other.decode_tokens
        self.input += other.input
        self.cached_input += other.cached_input
        self.output += other.output
        self.steps += other.steps
        self.kv_context += other.kv_context
        self.prefill_steps += other.prefill_steps

    @property
    def any(self) -> bool:
        return (self.input + self.cached_input + self.output + self.steps) > 0


@dataclass(slots=True)
class IntervalWork:
    by_model: dict[str, Work] = field(default_factory=dict)
    resets: int = 0
    # True when nothing ran at either end and no counter moved: the interval measures idle power.
    idle: bool = True
    # True when every engine's prompts were counted when scheduled (the plugin's step counts):
    # the work then lines up with the energy of its own interval, and short fit windows hold.
    exact: bool = True


_COUNTERS = (
    "prompt_tokens",
    "generation_tokens",
    "cached_prompt_tokens",
    "computed_prompt_tokens",
    "scheduled_prompt_tokens",
    "scheduled_decode_tokens",
    "steps",
    "prefill_steps",
    "kv_usage_steps",
)


class WorkMeter:
    """Turns cumulative per-engine counters into per-model work, summed over engines."""

    __slots__ = ("_last_busy", "_last_usage", "_tracker")

    def __init__(self) -> None:
        self._tracker = CounterTracker()
        self._last_usage: dict[tuple[str, str], float] = {}
        self._last_busy: dict[tuple[str, str], bool] = {}

    def update(self, engines: Iterable[EngineSample]) -> IntervalWork:
        result = IntervalWork()
        for sample in engines:
            result.exact = result.exact and sample.scheduled_prompt_tokens is not None
            series = (sample.model_name, sample.engine)
            increases = {}
            reset = False
            for name in _COUNTERS:
                inc = self._tracker.increase((series, name), getattr(sample, name), sample.created)
                if inc is not None:
                    increases[name] = inc.value
                    reset = reset or inc.reset
            result.resets += int(reset)

            work = result.by_model.setdefault(sample.model_name, Work())
            piece = _classify(increases)
            usage = sample.kv_cache_usage
            previous_usage = self._last_usage.get(series, usage)
            if usage is not None:
                self._last_usage[series] = usage
            if "kv_usage_steps" in increases and sample.kv_cache_capacity_tokens:
                # The plugin summed each step's own use: the context read, step by step.
                piece.kv_context = increases["kv_usage_steps"] * sample.kv_cache_capacity_tokens
            elif usage is not None and previous_usage is not None and sample.kv_cache_capacity_tokens:
                piece.kv_context = piece.steps * 0.5 * (usage + previous_usage) * sample.kv_cache_capacity_tokens
            work.add(piece)

            busy_now = bool(sample.requests_running) or bool(sample.requests_waiting)
            busy_before = self._last_busy.get(series, busy_now)
            self._last_busy[series] = busy_now
            if piece.any or busy_now or busy_before:
                result.idle = False
        return result


def _classify(inc: dict[str, float]) -> Work:
    prompt = inc.get("prompt_tokens", 0.0)
    if "scheduled_prompt_tokens" in inc:  # prefill as it ran; the cache's share as vLLM counted it
        computed, cached = inc["scheduled_prompt_tokens"], inc.get("cached_prompt_tokens", 0.0)
    elif "computed_prompt_tokens" in inc:
        computed = (
            min(inc["computed_prompt_tokens"], prompt) if "prompt_tokens" in inc else inc["computed_prompt_tokens"]
        )
        cached = max(prompt - computed, 0.0)
    elif "cached_prompt_tokens" in inc:
        cached = min(inc["cached_prompt_tokens"], prompt)
        computed = prompt - cached
    else:
        computed, cached = prompt, 0.0
    return Work(
        input=computed,
        cached_input=cached,
        output=inc.get("generation_tokens", 0.0),
        steps=inc.get("steps", 0.0),
        prefill_steps=inc.get("prefill_steps", 0.0),
        decode=inc.get("scheduled_decode_tokens"),
    )
