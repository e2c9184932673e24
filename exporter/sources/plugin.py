"""The sidecar's way to what the vLLM plugin knows, by the cheapest road available.

`WorkReader` is the loop's vLLM source. Where the plugin writes snapshot files into a directory
both containers mount, it reads those and asks vLLM for nothing (each read of vLLM's page costs
its API-server process milliseconds of CPU). Otherwise, or while no fresh file is there, it
reads vLLM's page, and takes the plugin's families from it where they are, vLLM's own where not.

`PluginEnergy` is the loop's energy source in `auto` and `plugin` modes: the plugin's NVML
readings from the same read, when it has them; the fallback source (sidecar NVML, DCGM, the
phase model) when it has none."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from exporter.attribution.readings import EnergySnapshot, EngineSample, GpuIdentity, GpuReading, VllmSnapshot
from exporter.sources import plugin_page, vllm_page
from exporter.sources.energy import EnergySource
from exporter.sources.errors import SourceError
from exporter.sources.plugin_families import PREFIX

SNAPSHOT_GLOB = "plugin-*.prom"
MAX_FILES = 64  # one per vLLM API-server process; more is not a vLLM pod
MAX_FILE_BYTES = 256 * 1024  # a file holds a few dozen samples: a few KB


@dataclass(frozen=True, slots=True)
class _Energy:
    timestamp: float
    gpus: tuple[GpuReading, ...]


class PluginDirectory:
    """The plugin's snapshot files, each bounded in size; files not rewritten for `stale_seconds`
    (their process is gone, or stuck) are left out."""

    def __init__(self, path: Path, stale_seconds: float = 30.0, wall_clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._stale = stale_seconds
        self._wall = wall_clock

    def now(self) -> float:
        """The clock file times are on."""
        return self._wall()

    def read(self) -> list[tuple[str, float, str]]:
        """(file stem, modification time, text) of each fresh file, newest first."""
        try:
            entries = sorted(self.path.glob(SNAPSHOT_GLOB))[: MAX_FILES * 2]
        except OSError as err:
            raise SourceError("plugin_files", f"cannot list {self.path}: {err}") from None
        now = self.now()
        found = []
        for entry in entries:
            try:
                text, mtime = _read_bounded(entry)
            except (OSError, UnicodeDecodeError, ValueError):
                continue  # gone between listing and reading, or not a snapshot: the others still count
            if now - mtime <= self._stale:
                found.append((entry.stem, mtime, text))
        found.sort(key=lambda item: item[1], reverse=True)
        return found[:MAX_FILES]


def _read_bounded(path: Path) -> tuple[str, float]:
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        if stat.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path.name}: {stat.st_size} bytes")
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path.name}: grew past {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8"), stat.st_mtime


class Page(Protocol):
    """vLLM's page as text with the time it arrived: `VllmSource`, or the simulator's."""

    def read_text(self) -> tuple[str, float]: ...

    def close(self) -> None: ...


class WorkReader:
    """What the engines did: the plugin's counts where it runs, vLLM's own otherwise."""

    def __init__(
        self,
        page: Page,
        directory: PluginDirectory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._page = page
        self._directory = directory
        self._clock = clock
        self.energy: _Energy | None = None  # the latest read's plugin energy, for PluginEnergy

    def read(self) -> VllmSnapshot:
        self.energy = None
        if self._directory is not None:
            snapshot = self._read_files(self._directory)
            if snapshot is not None:
                return snapshot
        text, timestamp = self._page.read_text()
        reading = plugin_page.parse(text) if PREFIX in text else None
        if reading is None:
            return vllm_page.parse(text, timestamp)
        if reading.gpus is not None:
            self.energy = _Energy(timestamp, reading.gpus)
        return VllmSnapshot(
            timestamp, reading.engines, reading.unavailable_fields, origin="plugin", rejected=reading.rejected
        )

    def _read_files(self, directory: PluginDirectory) -> VllmSnapshot | None:
        files = directory.read()
        if not files:
            return None
        # Stamped when the newest file was written, not now: its work and energy are of that moment.
        timestamp = self._clock() - max(0.0, directory.now() - files[0][1])
        engines: list[EngineSample] = []
        unavailable: set[str] = set()
        rejected: list[str] = []
        for stem, _, text in files:
            try:
                reading = plugin_page.parse(text, engine_suffix="@" + stem)
            except SourceError as err:  # a file cut short (written by hand, or a full disk)
                rejected.append(err.reason)
                continue
            if reading is None:
                continue
            engines.extend(reading.engines)
            unavailable |= reading.unavailable_fields
            rejected.extend(reading.rejected)
            if reading.gpus is not None and self.energy is None:  # files are newest first
                self.energy = _Energy(timestamp, reading.gpus)
        if not engines:
            return None
        return VllmSnapshot(
            timestamp, tuple(engines), frozenset(unavailable), origin="plugin", rejected=tuple(rejected)
        )

    def close(self) -> None:
        self._page.close()


class PluginEnergy:
    """The plugin's energy where the latest work read carried it, else the fallback's."""

    def __init__(self, work: WorkReader, fallback: EnergySource | None) -> None:
        self._work = work
        self._fallback = fallback

    @property
    def gpus(self) -> Sequence[GpuIdentity]:
        energy = self._work.energy
        if energy is not None:
            return [gpu.identity for gpu in energy.gpus]
        return self._fallback.gpus if self._fallback is not None else ()

    def read(self) -> EnergySnapshot:
        energy = self._work.energy
        if energy is not None:
            return EnergySnapshot(energy.timestamp, energy.gpus, modelled=False, origin="plugin")
        if self._fallback is None:
            raise SourceError("plugin_energy", "the plugin publishes no energy (not installed, NVML down, or starting)")
        return self._fallback.read()

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
