"""Energy where nothing can be measured (no driver in the container, a MIG slice): idle power for
the whole interval plus each unit of work at its declared phase power, capped at the boards'
power limit. Its own path: the core never fits or conditions on what it computes here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from exporter.attribution.energy import IntervalEnergy
from exporter.attribution.prior import Coefficients
from exporter.attribution.readings import GpuReading
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


def modelled_interval(
    gpus: Sequence[GpuReading],
    seconds: float,
    work: Iterable[Work],
    energy: Coefficients,
    idle_watts_total: float,
    limit_watts_total: float,
) -> IntervalEnergy:
    """The phase model's energy for the work seen, shared equally by the GPUs."""
    total = modelled_energy(seconds, work, energy, idle_watts_total, limit_watts_total)
    count = max(len(gpus), 1)
    per_gpu = {gpu.identity: total / count for gpu in gpus}
    power = {gpu.identity: total / count / seconds for gpu in gpus} if seconds > 0 else {}
    return IntervalEnergy(total, per_gpu, power, measured=False)
