"""Energy where nothing can be measured: idle power for the whole interval plus each unit of
work at its declared phase power, capped at the boards' power limit."""

from __future__ import annotations

from collections.abc import Iterable

from exporter.attribution.prior import Coefficients
from exporter.attribution.split import class_weights
from exporter.attribution.work import Work


def modelled_energy(
    seconds: float,
    work: Iterable[Work],
    energy: Coefficients,
    idle_watts_total: float,
    limit_watts_total: float,
) -> float:
    dynamic = sum(sum(class_weights(w, energy, step_on_output=True)) for w in work)
    return min(idle_watts_total * seconds + dynamic, max(limit_watts_total, idle_watts_total) * seconds)
