"""Measured GPU energy read from the node's NVIDIA dcgm-exporter, for clusters where the exporter
may not load NVML but every GPU node runs dcgm-exporter. The page is fetched over HTTP within a
time and a size bound, read by the pure parser in `dcgm_page`, and every failure of a read is a
typed `SourceError`.

Which GPUs: chosen once, at open, by the `gpus` setting's UUIDs when it names any, else by
dcgm-exporter's `pod` and `namespace` labels (its Kubernetes pod mapping); a running pod's devices
never change. Reads then find those GPUs by UUID, so a page whose pod labels are missing for a
scrape (dcgm-exporter restarting, the kubelet not answering it) still reads. Without pod labels and
without UUIDs, opening fails: taking every GPU of the node would charge this pod for its
neighbours. See `dcgm_page` for MIG and shared GPUs.

Energy: `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, the driver's counter in mJ since it was loaded,
passed on in joules (method "counter"): a dcgm-exporter restart does not disturb it, and a driver
reload or node reboot lowers it, which the core counts as a counter reset. Power:
`DCGM_FI_DEV_POWER_USAGE`, the latest sample. A GPU missing from a page reads as None energy with
an error reason; the others are still read.

Fidelity: dcgm-exporter refreshes its values once per collect interval (its `-c`, 30 000 ms by
default), so the counter advances in steps of that interval. Totals stay exact, but a tick shorter
than the interval sees no increase or several ticks' worth at once: the idle estimate and the
online fit see coarser, noisier intervals than NVML gives. Set dcgm-exporter's `-c` well below
the exporter's `--interval` (1000 ms costs DCGM little) where the fit matters."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx
from structlog.typing import FilteringBoundLogger

from exporter.attribution.readings import EnergySnapshot, GpuIdentity, GpuReading
from exporter.sources.dcgm_page import Board, Selection, SelectionError, parse, select
from exporter.sources.errors import SourceError
from exporter.sources.http_page import PageClient

COUNTER = "counter"
ORIGIN = "dcgm"
DEFAULT_OPEN_WAIT = 40.0  # s: more than one default collect interval, less than a minute's startup probe
DEFAULT_RETRY_PERIOD = 2.0
FIDELITY = (
    "dcgm-exporter refreshes the energy counter once per its collect interval (-c, 30000 ms by default): "
    "totals are exact and the work waits for the energy that paid for it, but the idle estimate and the fit "
    "see intervals that long, coarser than with NVML; set its -c well below --interval (e.g. 1000 ms)"
)
_PROBLEMS = {"bad_value": "dcgm_bad_value", "no_energy_sample": "dcgm_no_energy_sample"}


class DcgmUnavailable(Exception):
    """dcgm-exporter cannot give this pod's GPU energy. `reason` is a short label ("no_pod_labels",
    "pod_not_found", "mig", "connection", ...); `gpus` holds the identities found before giving up,
    so a fallback can keep them."""

    def __init__(self, reason: str, message: str, gpus: Sequence[GpuIdentity] = ()) -> None:
        super().__init__(f"DCGM unavailable ({reason}): {message}")
        self.reason = reason
        self.message = message
        self.gpus = tuple(gpus)


class DcgmEnergySource:
    def __init__(
        self,
        url: str,
        uuids: Sequence[str] = (),
        pod: str | None = None,
        namespace: str | None = None,
        *,
        timeout: float = 2.0,
        max_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        open_wait: float = DEFAULT_OPEN_WAIT,
        retry_period: float = DEFAULT_RETRY_PERIOD,
        sleep: Callable[[float], None] = time.sleep,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        """`url`: dcgm-exporter's metrics page. `uuids` (GPU- UUIDs) win over `pod` and
        `namespace`. Opening reads the page and, while the answer may still change with
        dcgm-exporter's next collection (page unreachable, this pod not mapped yet), reads it
        again every `retry_period` for up to `open_wait` seconds; then raises DcgmUnavailable."""
        self.url = url
        self._clock = clock
        self._log = log
        self._page = PageClient(url, timeout, max_bytes, transport)
        try:
            self._selection = self._open(tuple(uuids), pod, namespace, open_wait, retry_period, sleep)
        except BaseException:
            self._page.close()
            raise
        self._last: dict[str, float] = {}
        self._stamped: tuple[tuple[float | None, ...], float] | None = None  # (counters, when they last moved)
        self._steps_reported = False

    def _open(
        self,
        uuids: tuple[str, ...],
        pod: str | None,
        namespace: str | None,
        open_wait: float,
        retry_period: float,
        sleep: Callable[[float], None],
    ) -> Selection:
        deadline = self._clock() + open_wait
        waited = False
        while True:
            gpus: tuple[GpuIdentity, ...] = ()
            try:
                return select(parse(self._text()), uuids, pod, namespace)
            except SourceError as err:
                reason, message = err.reason, f"cannot read {self.url}: {err}"
            except SelectionError as err:
                if not err.transient:
                    raise DcgmUnavailable(err.reason, err.message, err.gpus) from None
                reason, message, gpus = err.reason, err.message, err.gpus
            if self._clock() + retry_period > deadline:
                suffix = f" (still so after {open_wait:g} s)" if waited else ""
                raise DcgmUnavailable(reason, message + suffix, gpus)
            if not waited and self._log is not None:
                self._log.info("dcgm_waiting", url=self.url, reason=reason, detail=message, seconds=open_wait)
            waited = True
            sleep(retry_period)

    # -- reading ----------------------------------------------------------------------------

    @property
    def gpus(self) -> list[GpuIdentity]:
        return list(self._selection.gpus)

    @property
    def selection(self) -> Selection:
        """How the GPUs were chosen, which are MIG boards held whole, which are shared."""
        return self._selection

    def read(self) -> EnergySnapshot:
        """One reading per GPU chosen at open. A failed page is a SourceError; a GPU missing from
        a page, or with an unusable value, reads as None energy with an error reason."""
        try:
            text = self._text()
            # The energy window closes when the page arrives, so stamp it then.
            timestamp = self._clock()
            boards = parse(text).boards()
            readings = tuple(self._reading(gpu, boards.get(gpu.uuid)) for gpu in self._selection.gpus)
        except SourceError:
            raise
        except Exception as err:  # the loop must see a read error, never a crash
            raise SourceError("internal", f"{type(err).__name__}: {err}") from None
        self._notice_steps(readings)
        return EnergySnapshot(timestamp=self._stamp(readings, timestamp), gpus=readings, modelled=False, origin=ORIGIN)

    def _stamp(self, readings: tuple[GpuReading, ...], now: float) -> float:
        """When these counters were last new. dcgm-exporter refreshes them once per its collect
        interval, so most of our reads repeat the last values: stamped as before, they tell the
        core there is no newer measurement yet, and the work waits for the energy that pays for it
        instead of an interval getting zero joules and the next one a 30 s lump."""
        values = tuple(reading.energy_joules for reading in readings)
        if self._stamped is not None and values == self._stamped[0] and all(v is not None for v in values):
            return self._stamped[1]
        self._stamped = (values, now)
        return now

    @staticmethod
    def _reading(gpu: GpuIdentity, board: Board | None) -> GpuReading:
        index, uuid, name = gpu
        if board is None:
            return GpuReading(index, uuid, name, None, None, COUNTER, "dcgm_gpu_missing")
        if board.energy_joules is None:
            error = _PROBLEMS.get(board.problem or "", "dcgm_gpu_missing")
            return GpuReading(index, uuid, name, None, board.power_watts, COUNTER, error)
        return GpuReading(index, uuid, name, board.energy_joules, board.power_watts, COUNTER)

    def _notice_steps(self, readings: tuple[GpuReading, ...]) -> None:
        """Say once when a counter stood still while its GPU drew power: the energy arrives in
        steps of dcgm-exporter's collect interval (see the module's docstring)."""
        for reading in readings:
            if reading.energy_joules is None:
                continue
            last = self._last.get(reading.uuid)
            self._last[reading.uuid] = reading.energy_joules
            drawing = reading.power_watts is not None and reading.power_watts > 1.0
            if last == reading.energy_joules and drawing and not self._steps_reported and self._log is not None:
                self._steps_reported = True
                self._log.warning("dcgm_energy_in_steps", gpu=reading.index, effect=FIDELITY)

    def _text(self) -> str:
        return self._page.text()

    # -- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        self._page.close()

    def __enter__(self) -> DcgmEnergySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
