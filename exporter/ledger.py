"""Monotonic totals and latest gauges, behind one lock. The loop writes once per tick; the
collector takes a consistent copy at scrape time, so a scrape never sees half a tick."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from exporter.attribution.attributor import TickResult
from exporter.attribution.split import IDLE

KNOWN_ERRORS = (
    ("vllm", "connection"),
    ("vllm", "timeout"),
    ("vllm", "http_status"),
    ("vllm", "too_large"),
    ("vllm", "parse"),
    ("vllm", "internal"),
    ("energy", "internal"),
    ("exporter", "internal"),
)


def _add(target: dict, increments: dict) -> None:
    for key, value in increments.items():
        if value:
            target[key] += value
        elif key not in target:
            target[key] = 0.0


@dataclass(slots=True)
class LedgerView:
    tokens: dict = field(default_factory=lambda: defaultdict(float))
    steps: dict = field(default_factory=lambda: defaultdict(float))
    energy: dict = field(default_factory=lambda: defaultdict(float))
    busy_seconds: dict = field(default_factory=lambda: defaultdict(float))
    attributed_seconds: float = 0.0
    gpu_energy: dict = field(default_factory=lambda: defaultdict(float))
    gpu_power: dict = field(default_factory=dict)
    cost: dict = field(default_factory=lambda: defaultdict(float))
    emissions: dict = field(default_factory=lambda: defaultdict(float))
    marginal: dict = field(default_factory=dict)
    idle_watts: float = 0.0
    idle_measured: bool = False
    identified: bool = False
    residual_ratio: float | None = None
    fits: float = 0.0
    coefficients: dict = field(default_factory=dict)
    models: tuple = ()
    source_up: dict = field(default_factory=dict)
    source_errors: dict = field(default_factory=lambda: defaultdict(float))
    resets: dict = field(default_factory=lambda: defaultdict(float))
    read_seconds: dict = field(default_factory=lambda: defaultdict(float))
    reads: dict = field(default_factory=lambda: defaultdict(float))
    ticks: float = 0.0
    tick_seconds: float = 0.0
    last_tick_unixtime: float = 0.0
    ready: bool = False

    def copy(self) -> LedgerView:
        clone = LedgerView()
        for name in self.__slots__:
            value = getattr(self, name)
            setattr(clone, name, value.copy() if isinstance(value, dict) else value)
        return clone


class Ledger:
    def __init__(self, sources: tuple[str, ...] = ("vllm", "energy")) -> None:
        self._lock = threading.Lock()
        self._view = LedgerView()
        self._version = 0
        for source in sources:
            self._view.source_up[source] = 0.0
            self._view.resets[source] = 0.0
        # Known causes start at zero, so rate() and dashboards see a series before the first failure.
        for source, reason in KNOWN_ERRORS:
            self._view.source_errors[(source, reason)] = 0.0

    @property
    def version(self) -> int:
        """Changes with every write: what a cached exposition is keyed on."""
        return self._version

    @property
    def ready(self) -> bool:
        return self._view.ready

    def view(self) -> LedgerView:
        with self._lock:
            return self._view.copy()

    def apply(self, result: TickResult, *, idle_measured: bool) -> None:
        with self._lock:
            self._version += 1
            v = self._view
            _add(v.tokens, result.tokens)
            _add(v.steps, result.steps)
            if result.allocation is not None:
                _add(v.energy, result.allocation.energy)
                for (model, cls), share in result.allocation.time_share.items():
                    v.busy_seconds[model] += 0.0 if cls == IDLE else share * result.seconds
                v.attributed_seconds += result.seconds
            _add(v.gpu_energy, result.gpu_energy)
            v.gpu_power.update(result.gpu_power)
            _add(v.cost, result.costs)
            _add(v.emissions, result.emissions)
            v.marginal = dict(result.marginal)
            v.coefficients = dict(result.coefficients)
            v.identified = result.identified
            v.residual_ratio = result.residual_ratio
            v.fits = result.fits
            v.idle_watts = result.idle_watts
            v.idle_measured = idle_measured
            v.models = result.models
            v.resets["vllm"] += result.vllm_resets
            v.resets["energy"] += result.energy_resets

    def record_read(self, source: str, ok: bool, seconds: float, reasons: tuple[str, ...] = ()) -> None:
        with self._lock:
            self._version += 1
            v = self._view
            v.source_up[source] = 1.0 if ok else 0.0
            v.reads[source] += 1
            v.read_seconds[source] += seconds
            for reason in reasons:
                v.source_errors[(source, reason)] += 1

    def record_tick(self, seconds: float, unixtime: float, ready: bool) -> None:
        with self._lock:
            self._version += 1
            v = self._view
            v.ticks += 1
            v.tick_seconds += seconds
            v.last_tick_unixtime = unixtime
            v.ready = v.ready or ready

    def count_error(self, source: str, reason: str) -> None:
        with self._lock:
            self._version += 1
            self._view.source_errors[(source, reason)] += 1
