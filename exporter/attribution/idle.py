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
    def prior_watts(self) -> float:
        return self._prior

    @property
    def window(self) -> int:
        return self._samples.maxlen or 0

    @property
    def min_samples(self) -> int:
        return self._min_samples

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

    # -- what a restart keeps (exporter.state) ------------------------------------------------
    def export_state(self) -> dict[str, list[float]]:
        return {"samples": list(self._samples)}

    def import_state(self, state: object) -> None:
        """ValueError unless `state` is what export_state gave: a list of finite, non-negative watts."""
        samples = state.get("samples") if isinstance(state, dict) else None
        if not isinstance(samples, list) or not all(_watts(x) for x in samples):
            raise ValueError("idle samples must be a list of finite, non-negative watts")
        self._samples.clear()
        self._samples.extend(float(x) for x in samples[-(self._samples.maxlen or len(samples)) :])
        self._value = median(self._samples) if self.measured else self._prior


def _watts(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e7
