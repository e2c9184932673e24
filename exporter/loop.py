"""The one loop that moves data: sources -> attribution core -> ledger, every interval.

Each tick reads both sources, runs the core, and publishes one `TickRecord` to the ledger. A
failing source is counted and logged once per episode and never stops the loop; the core's
timestamps come from the readings, so a late tick only makes a longer interval."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from structlog.typing import FilteringBoundLogger

from exporter.attribution.attributor import Attributor, TickResult
from exporter.attribution.readings import EnergySnapshot, VllmSnapshot
from exporter.ledger import Ledger, SourceRead, TickRecord
from exporter.log import Episode
from exporter.sources.errors import SourceError

T = TypeVar("T", covariant=True)


class Reader(Protocol[T]):
    def read(self) -> T: ...


class CollectionLoop:
    def __init__(
        self,
        vllm: Reader[VllmSnapshot],
        energy: Reader[EnergySnapshot],
        attributor: Attributor,
        ledger: Ledger,
        log: FilteringBoundLogger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        keeper: Callable[[dict[str, object]], None] | None = None,
        http_events: Callable[[], Mapping[str, float]] | None = None,
        published: Callable[[], None] | None = None,
    ) -> None:
        """`keeper`: given the core's state after each tick in which its costs were fitted again
        (the state file's `save`); a failure is logged once per episode and costs nothing else.
        `http_events`: the HTTP server's counts, published with each tick. `published`: called
        after each publication (the exposition cache renders the new view there)."""
        self._vllm = vllm
        self._energy = energy
        self._attributor = attributor
        self._ledger = ledger
        self._log = log
        self._interval = interval
        self._clock = clock
        self._wall = wall_clock
        self._episodes = {name: Episode(log, name) for name in ("vllm", "energy", "exporter", "state")}
        self._keeper = keeper
        self._http_events = http_events
        self._published = published
        self._kept_fits = 0
        self._overflow_logged = False
        self._gpu_episodes: dict[str, Episode] = {}
        self._missing_reported: frozenset[str] | None = None
        self._late_ticks = 0

    def tick(self) -> None:
        started = self._clock()
        vllm, vllm_read = self._read_vllm()
        energy, energy_read = self._read_energy()
        reads = {"vllm": vllm_read, "energy": energy_read}
        origins = _origins(vllm, energy)
        modelled = None if energy is None else energy.modelled
        try:
            result = self._attributor.tick(vllm, energy)
        except Exception as err:  # a bug must cost one interval, not the process
            self._episodes["exporter"].failed("internal", repr(err))
            self._ledger.publish(
                TickRecord(reads, None, errors=(("exporter", "internal"),), origins=origins, energy_modelled=modelled)
            )
            return
        self._episodes["exporter"].succeeded()
        self._log_resets(result)
        ready = vllm is not None and energy is not None
        self._ledger.publish(
            TickRecord(
                reads,
                result,
                seconds=self._clock() - started,
                unixtime=self._wall(),
                ready=ready,
                origins=origins,
                energy_modelled=modelled,
                http_events=self._http_events() if self._http_events is not None else None,
            )
        )
        if self._published is not None:
            self._published()
        self._keep(result)

    def _keep(self, result: TickResult) -> None:
        """Hand the core's state to the keeper when its costs were fitted again (at most every fit)."""
        if self._keeper is None or result.fits <= self._kept_fits:
            return
        self._kept_fits = result.fits
        try:
            self._keeper(self._attributor.export_state())
        except (OSError, ValueError) as err:
            self._episodes["state"].failed("write", repr(err))
        else:
            self._episodes["state"].succeeded()

    def _log_resets(self, result: TickResult) -> None:
        if not self._overflow_logged and ("vllm", "model_limit") in result.errors:
            self._overflow_logged = True
            self._log.warning(
                "model_limit_reached",
                engines=result.errors[("vllm", "model_limit")],
                effect="engines of further models are counted under model_name=other (see --max-models)",
            )
        if result.vllm_resets:
            self._log.warning("counter_reset", source="vllm", engines=result.vllm_resets)
        if result.energy_resets:
            self._log.warning("counter_reset", source="energy", gpus=result.energy_resets)

    def _read(self, name: str, source: Reader[T]) -> tuple[T | None, SourceRead]:
        """One read, timed; a failure is logged once per episode and returned as None."""
        started = self._clock()
        try:
            snapshot = source.read()
        except SourceError as err:
            reason, detail = err.reason, err.detail
        except Exception as err:  # never let an unexpected library error escape the loop
            reason, detail = "internal", repr(err)
        else:
            return snapshot, SourceRead(True, self._clock() - started)
        self._episodes[name].failed(reason, detail)
        return None, SourceRead(False, self._clock() - started, (reason,))

    def _read_vllm(self) -> tuple[VllmSnapshot | None, SourceRead]:
        snapshot, read = self._read("vllm", self._vllm)
        if snapshot is None:
            return None, read
        self._episodes["vllm"].succeeded()
        if snapshot.missing_families != self._missing_reported:
            if snapshot.missing_families:
                self._log.warning(
                    "vllm_families_missing",
                    families=sorted(snapshot.missing_families),
                    effect="attribution degrades: absent counters are treated as unknown",
                )
            self._missing_reported = snapshot.missing_families
        return snapshot, read

    def _read_energy(self) -> tuple[EnergySnapshot | None, SourceRead]:
        """A read in which some GPU failed is counted as failed (with each GPU's cause), but its
        other GPUs' readings are still used."""
        snapshot, read = self._read("energy", self._energy)
        if snapshot is None:
            return None, read
        reasons = tuple(gpu.error for gpu in snapshot.gpus if gpu.error)
        for gpu in snapshot.gpus:
            episode = self._gpu_episodes.setdefault(gpu.uuid, Episode(self._log.bind(gpu=gpu.index), "energy"))
            if gpu.error:
                episode.failed(gpu.error)
            else:
                episode.succeeded()
        if not reasons:
            self._episodes["energy"].succeeded()
        return snapshot, SourceRead(not reasons, read.seconds, reasons)

    def run(self, stop: threading.Event) -> None:
        """Ticks every interval until `stop` is set. The only wait is on `stop`, so setting it ends
        the loop at once between ticks; a tick itself is bounded by its sources' deadlines."""
        deadline = self._clock()
        while not stop.is_set():
            started = self._clock()
            self.tick()
            deadline += self._interval
            now = self._clock()
            self._note_lateness(now - started)
            if deadline < now:  # fell behind (a slow source): keep the cadence, skip the lost slots
                deadline = now + self._interval - ((now - deadline) % self._interval)
            stop.wait(deadline - now)

    def _note_lateness(self, seconds: float) -> None:
        """A tick longer than the interval is logged once per episode (its interval merges into
        the next; `last_tick_timestamp_seconds` shows the gap), and the return to time once."""
        if seconds > self._interval:
            if not self._late_ticks:
                self._log.warning(
                    "tick_late",
                    seconds=round(seconds, 3),
                    interval=self._interval,
                    effect="the lost slots are skipped; source reads are bounded by their deadlines",
                )
            self._late_ticks += 1
        elif self._late_ticks:
            self._log.info("tick_on_time", late_ticks=self._late_ticks)
            self._late_ticks = 0


def _origins(vllm: VllmSnapshot | None, energy: EnergySnapshot | None) -> dict[str, str]:
    """Who supplied this tick's readings; a source that failed keeps its last word."""
    origins = {}
    if vllm is not None:
        origins["vllm"] = vllm.origin
    if energy is not None:
        origins["energy"] = energy.origin
    return origins
