"""Increases of monotonic counters with Prometheus `rate()` semantics: a counter that goes
down, or whose `_created` time changes, restarted, and its new value is the increase."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


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
        """None for a series never seen before or absent now (unknown, not zero)."""
        if value is None or value != value:  # NaN is as unknown as absent
            return None
        previous = self._last.get(key)
        self._last[key] = (value, created)
        if previous is None:
            return None
        last_value, last_created = previous
        restarted = value < last_value or (created is not None and last_created is not None and created != last_created)
        if restarted:
            return Increase(value, True)
        return Increase(value - last_value, False)
