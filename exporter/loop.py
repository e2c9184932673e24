"""The one loop that moves data: sources -> attribution core -> ledger, every interval.

A failing source is counted and logged once per episode and never stops the loop; the core's
timestamps come from the snapshots, so a late tick only makes a longer interval."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from exporter.attribution.attributor import Attributor
from exporter.ledger import Ledger
from exporter.log import Episode
from exporter.sources.snapshots import EnergySnapshot, SourceError, VllmSnapshot


class VllmReader(Protocol):
    def read(self) -> VllmSnapshot: ...


class EnergyReader(Protocol):
    def read(self) -> EnergySnapshot: ...


class CollectionLoop:
    def __init__(
        self,
        vllm: VllmReader,
        energy: EnergyReader,
        attributor: Attributor,
        ledger: Ledger,
        log,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._vllm = vllm
        self._energy = energy
        self._attributor = attributor
        self._ledger = ledger
        self._log = log
        self._interval = interval
        self._clock = clock
        self._wall = wall_clock
        self._episodes = {name: Episode(log, name) for name in ("vllm", "energy", "exporter")}
        self._gpu_episodes: dict[str, Episode] = {}
        self._missing_reported: frozenset[str] | None = None

    def tick(self) -> None:
        started = self._clock()
        vllm = self._read_vllm()
        energy = self._read_energy()
        try:
            result = self._attributor.tick(vllm, energy)
        except Exception as err:  # a bug must cost one interval, not the process
            self._ledger.count_error("exporter", "internal")
            self._episodes["exporter"].failed("internal", repr(err))
            return
        self._episodes["exporter"].succeeded()
        self._ledger.apply(result, idle_measured=self._attributor.idle.measured)
        if result.vllm_resets:
            self._log.warning("counter_reset", source="vllm", engines=result.vllm_resets)
        if result.energy_resets:
            self._log.warning("counter_reset", source="energy", gpus=result.energy_resets)
        self._ledger.record_tick(self._clock() - started, self._wall(), ready=vllm is not None and energy is not None)

    def _read(self, name: str, source) -> tuple[object | None, float]:
        """One read, timed; a failure is counted, logged once per episode, and returned as None."""
        started = self._clock()
        try:
            snapshot = source.read()
        except SourceError as err:
            reason, detail = err.reason, err.detail
        except Exception as err:  # never let an unexpected library error escape the loop
            reason, detail = "internal", repr(err)
        else:
            return snapshot, self._clock() - started
        self._ledger.record_read(name, False, self._clock() - started, (reason,))
        self._episodes[name].failed(reason, detail)
        return None, 0.0

    def _read_vllm(self) -> VllmSnapshot | None:
        snapshot, seconds = self._read("vllm", self._vllm)
        if snapshot is None:
            return None
        self._ledger.record_read("vllm", True, seconds)
        self._episodes["vllm"].succeeded()
        if snapshot.missing_families != self._missing_reported:
            if snapshot.missing_families:
                self._log.warning(
                    "vllm_families_missing",
                    families=sorted(snapshot.missing_families),
                    effect="attribution degrades: absent counters are treated as unknown",
                )
            self._missing_reported = snapshot.missing_families
        return snapshot

    def _read_energy(self) -> EnergySnapshot | None:
        snapshot, seconds = self._read("energy", self._energy)
        if snapshot is None:
            return None
        reasons = tuple(gpu.error for gpu in snapshot.gpus if gpu.error)
        for gpu in snapshot.gpus:
            episode = self._gpu_episodes.setdefault(gpu.uuid, Episode(self._log.bind(gpu=gpu.index), "energy"))
            if gpu.error:
                episode.failed(gpu.error)
            else:
                episode.succeeded()
        self._ledger.record_read("energy", not reasons, seconds, reasons)
        if not reasons:
            self._episodes["energy"].succeeded()
        return snapshot

    def run(self, stop: threading.Event) -> None:
        deadline = self._clock()
        while not stop.is_set():
            self.tick()
            deadline += self._interval
            now = self._clock()
            if deadline < now:  # fell behind (a slow source): keep the cadence, skip the lost slots
                deadline = now + self._interval - ((now - deadline) % self._interval)
            stop.wait(deadline - now)
