"""One interval's energy, by one of two paths with one result type: measured here (the increase
of each GPU's cumulative counter), or modelled by `phase_model` where nothing can be measured.
Only measured energy may teach the idle estimate and the fit: a modelled figure says nothing the
model did not already say."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from exporter.attribution.counters import CounterTracker
from exporter.attribution.readings import GpuIdentity, GpuReading


@dataclass(frozen=True, slots=True)
class IntervalEnergy:
    joules: float  # all GPUs together
    per_gpu: dict[GpuIdentity, float] = field(default_factory=dict)
    power: dict[GpuIdentity, float] = field(default_factory=dict)  # watts, where known
    measured: bool = True
    complete: bool = True  # every GPU's increase is known: no failed read, no new or restarted counter
    resets: int = 0  # GPU counters that restarted (driver reload)

    @property
    def teaches(self) -> bool:
        """Whether this interval may feed the idle estimate and the fit."""
        return self.measured and self.complete


def counter_key(origin: str, gpu: GpuReading) -> tuple[str, str]:
    """Whose counter of which GPU: see `measured_interval`."""
    return (origin, gpu.uuid)


def measured_interval(gpus: Sequence[GpuReading], counters: CounterTracker, origin: str = "") -> IntervalEnergy:
    """The increase of each GPU's counter since the last reading. A GPU whose read failed, or
    whose counter is new, contributes nothing and leaves the interval incomplete; its counter
    carries the energy into the next good read. A restarted counter's value is energy of an
    unknown span: counted, but incomplete. Counters are kept by `origin` as well as GPU: the
    plugin's count since it started and NVML's since the driver loaded are different series of
    one GPU, and a switch between them must start a new baseline, not count the gap as energy."""
    total = 0.0
    per_gpu: dict[GpuIdentity, float] = {}
    power: dict[GpuIdentity, float] = {}
    complete = True
    resets = 0
    for gpu in gpus:
        identity = gpu.identity
        if gpu.power_watts is not None:
            power[identity] = gpu.power_watts
        increase = counters.increase(counter_key(origin, gpu), gpu.energy_joules)
        if increase is None:
            complete = False
            continue
        resets += int(increase.reset)
        complete = complete and not increase.reset
        per_gpu[identity] = increase.value
        total += increase.value
    return IntervalEnergy(total, per_gpu, power, measured=True, complete=complete, resets=resets)
