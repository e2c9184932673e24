"""The energy source used when NVML cannot be read (no driver in the container, a MIG slice).

It measures nothing: the core computes energy from vLLM activity and declared phase power
(`exporter.attribution.phase_model`). This source only gives the GPUs an identity for the
per-GPU labels and stamps the snapshot, so the loop treats both sources alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from exporter.attribution.readings import EnergySnapshot, GpuIdentity, GpuReading

PHASE_MODEL = "phase_model"


class PhaseModelEnergySource:
    def __init__(self, gpus: Sequence[GpuIdentity], clock: Callable[[], float] = time.monotonic) -> None:
        """`gpus`: one identity per GPU; "unknown" for a UUID nobody could read."""
        self._readings = tuple(
            GpuReading(index=index, uuid=uuid, name=name, energy_joules=None, power_watts=None, method=PHASE_MODEL)
            for index, uuid, name in gpus
        )
        self._clock = clock

    @property
    def gpus(self) -> list[GpuIdentity]:
        return [r.identity for r in self._readings]

    def read(self) -> EnergySnapshot:
        return EnergySnapshot(timestamp=self._clock(), gpus=self._readings, modelled=True, origin="phase-model")

    def close(self) -> None:
        pass  # nothing to release
