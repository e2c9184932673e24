"""The energy source used when NVML cannot be read (no driver in the container, a MIG slice).

It measures nothing: the core computes energy from vLLM activity and declared phase power
(`exporter.attribution.phase_model`). This source only gives the GPUs an identity for the
per-GPU labels and stamps the snapshot, so the loop treats both sources alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from exporter.sources.snapshots import EnergySnapshot, GpuReading

PHASE_MODEL = "phase_model"


class PhaseModelEnergySource:
    def __init__(self, gpus: Sequence[tuple[int, str, str]], clock: Callable[[], float] = time.monotonic) -> None:
        """`gpus`: (index, uuid, name) per GPU; use "unknown" for a UUID nobody could read."""
        self._readings = tuple(
            GpuReading(index=index, uuid=uuid, name=name, energy_joules=None, power_watts=None, method=PHASE_MODEL)
            for index, uuid, name in gpus
        )
        self._clock = clock

    @property
    def gpus(self) -> list[tuple[int, str, str]]:
        return [(r.index, r.uuid, r.name) for r in self._readings]

    @property
    def methods(self) -> dict[int, str]:
        return {r.index: PHASE_MODEL for r in self._readings}

    def read(self) -> EnergySnapshot:
        return EnergySnapshot(timestamp=self._clock(), gpus=self._readings, modelled=True)

    def close(self) -> None:
        pass  # nothing to release; present so callers can close any source
