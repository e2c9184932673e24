"""What the engines did in one interval, per model: the token classes and the drivers of
marginal cost, from two successive vLLM pages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.attribution.counters import EngineCounters, usable
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
    decreases: int = 0  # counters that went down without evidence of a restart: counted nothing
    leaps: int = 0  # counters that rose faster than any engine can: counted nothing
    held: int = 0  # engines with a counter missing or unusable: held whole until it returns


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
# The fastest any engine can count, per second: far above what a node of GPUs does (a prompt
# token rate of 10^9/s is 100,000 100k-token prompts a second, all served from cache), far below
# the values a broken or hostile page gives. A faster rise is a glitch, not work.
_TOKENS_PER_SECOND = 1e9
_STEPS_PER_SECOND = 1e6
MAX_RATES = {
    **dict.fromkeys(_COUNTERS, _TOKENS_PER_SECOND),
    "steps": _STEPS_PER_SECOND,
    "prefill_steps": _STEPS_PER_SECOND,
    "kv_usage_steps": _STEPS_PER_SECOND,
}


# Engine series followed at once: beyond it the longest unseen is forgotten (a page can name any
# number of engines and models; each series holds a dozen numbers).
MAX_SERIES = 4096


class WorkMeter:
    """Turns cumulative per-engine counters into per-model work, summed over engines. A series
    not read for `expiry_seconds` is forgotten: if it returns, its first read is a baseline."""

    __slots__ = ("_counters", "_expiry", "_last_busy", "_last_usage", "_seen")

    def __init__(self, expiry_seconds: float = 3600.0) -> None:
        self._counters = EngineCounters(MAX_RATES)
        self._expiry = expiry_seconds
        self._last_usage: dict[tuple[str, str], float] = {}
        self._last_busy: dict[tuple[str, str], bool] = {}
        self._seen: dict[tuple[str, str], float] = {}  # series -> when last read, oldest first

    def _forget_old(self, timestamp: float) -> None:
        while self._seen:
            series, seen = next(iter(self._seen.items()))
            if timestamp - seen <= self._expiry and len(self._seen) <= MAX_SERIES:
                return
            del self._seen[series]
            self._counters.forget(series)
            self._last_usage.pop(series, None)
            self._last_busy.pop(series, None)

    def update(self, engines: Iterable[EngineSample], timestamp: float = 0.0) -> IntervalWork:
        """`timestamp`: when the engines were read (seconds), to judge how fast a counter rose."""
        result = IntervalWork()
        for sample in engines:
            result.exact = result.exact and sample.scheduled_prompt_tokens is not None
            series = (sample.model_name, sample.engine)
            self._seen.pop(series, None)
            self._seen[series] = timestamp
            values = {name: getattr(sample, name) for name in _COUNTERS}
            step = self._counters.update(series, values, sample.created, timestamp)
            increases = {} if step is None else step.increases
            if step is not None:
                result.resets += int(step.restart)
                result.decreases += step.decreases
                result.leaps += step.leaps
                result.held += int(step.held)
            work = result.by_model.setdefault(sample.model_name, Work())
            piece = _classify(increases)
            piece.kv_context = self._kv_context(series, sample, increases, piece.steps)
            work.add(piece)

            busy_now = bool(sample.requests_running) or bool(sample.requests_waiting)
            busy_before = self._last_busy.get(series, busy_now)
            self._last_busy[series] = busy_now
            if piece.any or busy_now or busy_before or (step is not None and step.held):
                result.idle = False  # a held engine's activity is unknown: not an idle interval
        self._forget_old(timestamp)
        return result

    def _kv_context(
        self, series: tuple[str, str], sample: EngineSample, increases: dict[str, float], steps: float
    ) -> float:
        """Context tokens the steps read: the plugin's step-by-step sum of the KV cache's use,
        else steps x the mean use at the interval's ends; 0 where a gauge is unusable."""
        usage = sample.kv_cache_usage if _fraction(sample.kv_cache_usage) else None
        capacity = sample.kv_cache_capacity_tokens if usable(sample.kv_cache_capacity_tokens) else None
        previous_usage = self._last_usage.get(series, usage)
        if usage is not None:
            self._last_usage[series] = usage
        if not capacity:
            return 0.0
        if "kv_usage_steps" in increases:
            return increases["kv_usage_steps"] * capacity
        if usage is not None and previous_usage is not None:
            return steps * 0.5 * (usage + previous_usage) * capacity
        return 0.0


def _fraction(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 1.0


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
