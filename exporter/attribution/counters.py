"""Increases of monotonic counters.

`CounterTracker` follows Prometheus `rate()` semantics, one series at a time: a counter that
goes down, or whose `_created` time changes, restarted, and its new value is the increase. It
serves energy counters, where a driver reload really does restart them.

`EngineCounters` reads the counters of one vLLM engine together, and trusts a restart only on
evidence, because a decrease on a page is more often a glitch (a duplicated series, a proxy
serving an old page) than a restart: counting the lifetime total again would multiply tokens.
A value that cannot be a counter (non-finite, negative, beyond float precision) is unknown,
never arithmetic."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

# Beyond 2^53 a float counter can no longer count by one: such a value is not a count.
MAX_COUNTER = float(2**53)


def usable(value: float | None) -> bool:
    """A value a counter can hold: finite, not negative, within float precision."""
    return value is not None and 0.0 <= value <= MAX_COUNTER  # NaN and inf fail one of the two


@dataclass(frozen=True, slots=True)
class Increase:
    value: float
    reset: bool


class CounterTracker:
    """Remembers the last value of each series; the first sight of a series is its baseline."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[float, float | None]] = {}

    def increase(self, key: Hashable, value: float | None, created: float | None = None) -> Increase | None:
        """None for a series never seen before, or absent or unusable now (unknown, not zero)."""
        if not usable(value):
            return None
        assert value is not None
        previous = self._last.get(key)
        self._last[key] = (value, created)
        if previous is None:
            return None
        last_value, last_created = previous
        restarted = value < last_value or (created is not None and last_created is not None and created != last_created)
        if restarted:
            return Increase(value, True)
        return Increase(value - last_value, False)


# Consecutive reads a counter may disagree with its baseline before the new level is accepted
# (the work in between is lost, and counted as glitches): a one-off glitch costs nothing, a
# counter that really moved on is followed again after this many reads.
GLITCH_LIMIT = 3
# Consecutive reads an engine may miss a counter it had before: after that, the counters it
# still has are followed from their current values (a family removed by a vLLM upgrade).
HOLD_LIMIT = 5


@dataclass(frozen=True, slots=True)
class EngineIncrease:
    """What one read of one engine adds. `increases` holds only the counters that can be
    counted: a counter absent from it counted nothing (new, unknown, or a glitch)."""

    increases: dict[str, float] = field(default_factory=dict)
    restart: bool = False
    decreases: int = 0  # counters that went down without evidence of a restart: glitches
    leaps: int = 0  # counters that rose faster than `max_rates` allows: glitches
    held: bool = False  # a counter seen before is unusable now: nothing counted, baselines kept


@dataclass(slots=True)
class _Baseline:
    values: dict[str, float]
    created: float | None
    timestamp: float
    glitches: dict[str, int] = field(default_factory=dict)
    held: int = 0


class EngineCounters:
    """The counters of each engine, read together. A restart needs evidence: `_created`
    changed, or every counter that had counted something went down. Otherwise a decrease is a
    glitch that adds nothing and keeps the baseline, so that the value's return adds nothing
    twice; so is a rise faster than `max_rates` (per second of the reads' timestamps, at least
    one second). An engine with a counter it had before missing or unusable is held whole for
    the read: counting the others alone would split one interval's work between two."""

    __slots__ = ("_last", "_max_rates")

    def __init__(self, max_rates: Mapping[str, float]) -> None:
        self._max_rates = dict(max_rates)
        self._last: dict[Hashable, _Baseline] = {}

    def forget(self, series: Hashable) -> None:
        """A series gone for good: its next sight is a new baseline."""
        self._last.pop(series, None)

    def update(
        self, series: Hashable, values: Mapping[str, float | None], created: float | None, timestamp: float
    ) -> EngineIncrease | None:
        """None the first time a series is seen: its values are the baseline."""
        now = {name: float(v) for name, v in values.items() if v is not None and usable(v)}
        created = created if created is not None and math.isfinite(created) else None
        last = self._last.get(series)
        if last is None:
            self._last[series] = _Baseline(now, created, timestamp)
            return None
        if any(name not in now for name in last.values):
            return self._hold(series, last, now, created, timestamp)
        last.held = 0
        changed = created is not None and last.created is not None and created != last.created
        counted = [name for name, value in last.values.items() if value > 0]
        fell = [name for name in counted if now[name] < last.values[name]]
        if changed or (fell and len(fell) == len(counted)):
            self._last[series] = _Baseline(now, created, timestamp)
            return EngineIncrease(increases=dict(now), restart=True)
        return self._advance(last, now, created, timestamp)

    def _hold(
        self, series: Hashable, last: _Baseline, now: dict[str, float], created: float | None, timestamp: float
    ) -> EngineIncrease:
        last.held += 1
        if last.held > HOLD_LIMIT:
            self._last[series] = _Baseline(now, created, timestamp)
        return EngineIncrease(held=True)

    def _advance(
        self, last: _Baseline, now: dict[str, float], created: float | None, timestamp: float
    ) -> EngineIncrease:
        seconds = max(timestamp - last.timestamp, 1.0)
        increases: dict[str, float] = {}
        decreases = leaps = 0
        for name, value in now.items():
            before = last.values.get(name)
            if before is None:  # a counter the engine did not have: its baseline
                last.values[name] = value
                continue
            rise = value - before
            if rise < 0 or rise > self._max_rates.get(name, math.inf) * seconds:
                decreases += rise < 0
                leaps += rise > 0
                if self._glitch(last, name, value):
                    continue
                rise = 0.0  # the new level is accepted from here on; what happened in between is lost
            else:
                last.glitches.pop(name, None)
            increases[name] = rise
            last.values[name] = value
        last.created = created if created is not None else last.created
        last.timestamp = timestamp
        return EngineIncrease(increases=increases, decreases=decreases, leaps=leaps)

    @staticmethod
    def _glitch(last: _Baseline, name: str, value: float) -> bool:
        """True while the glitch keeps the baseline; False once the counter has disagreed with
        it for GLITCH_LIMIT reads in a row and its value becomes the baseline."""
        count = last.glitches.get(name, 0) + 1
        if count < GLITCH_LIMIT:
            last.glitches[name] = count
            return True
        last.glitches.pop(name, None)
        return False
