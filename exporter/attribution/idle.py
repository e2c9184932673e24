"""Idle power: the rolling median of measured power over intervals in which nothing ran, and a
declared prior until enough such intervals have been seen. A median, so one interval that
straddles the end of a burst does not move it."""

from __future__ import annotations

from collections import deque
from statistics import median


class IdlePowerEstimator:
    __slots__ = ("_min_samples", "_prior", "_samples", "_value")

    def __init__(self, prior_watts: float, window: int, min_samples: int) -> None:
        self._prior = prior_watts
        self._samples: deque[float] = deque(maxlen=window)
        self._min_samples = min_samples
        self._value = prior_watts

    @property
    def watts(self) -> float:
        return self._value

    @property
    def measured(self) -> bool:
        return len(self._samples) >= self._min_samples

    def observe(self, energy_joules: float, seconds: float) -> None:
        """Feed one interval known to be idle."""
        if seconds <= 0 or energy_joules < 0:
            return
        self._samples.append(energy_joules / seconds)
        if self.measured:
            self._value = median(self._samples)
