"""The exporter's totals as one immutable view, replaced once per tick.

The loop is the only writer: once per tick it publishes a `TickRecord` (what the sources did and
what the core made of it), and the ledger swaps in a new view built from the old one and the
record. A scrape takes whichever view is current without a lock, so it never sees `source_up` of
one tick beside the energy of another."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

from exporter.attribution.attributor import TickResult
from exporter.attribution.pricing import CostKey
from exporter.attribution.readings import GpuIdentity
from exporter.attribution.split import ClassKey
from exporter.attribution.token_class import IDLE

KNOWN_ERRORS = (
    ("vllm", "connection"),
    ("vllm", "timeout"),
    ("vllm", "http_status"),
    ("vllm", "too_large"),
    ("vllm", "parse"),
    ("vllm", "internal"),
    ("vllm", "truncated"),
    ("vllm", "bad_value"),
    ("vllm", "duplicate_series"),
    ("vllm", "counter_decrease"),
    ("vllm", "counter_leap"),
    ("vllm", "counter_missing"),
    ("vllm", "model_limit"),
    ("energy", "internal"),
    ("energy", "timeout"),
    ("energy", "nvml_hung"),
    ("exporter", "internal"),
)
SOURCES = ("vllm", "energy")
# Per-model counters a departed model keeps in the archive, and how many departed models are kept.
ARCHIVED_FIELDS = ("tokens", "steps", "energy", "busy_seconds", "cost", "emissions")
MAX_ARCHIVED_MODELS = 1024

K = TypeVar("K")
V = TypeVar("V")


def _empty() -> Mapping[K, V]:
    return MappingProxyType({})


def _frozen(mapping: dict[K, V]) -> Mapping[K, V]:
    """A read-only view of a mapping nobody else holds: views share what a tick did not change."""
    return MappingProxyType(mapping)


@dataclass(frozen=True, slots=True)
class SourceRead:
    """One read of one source in a tick."""

    ok: bool
    seconds: float
    errors: tuple[str, ...] = ()  # causes counted in source_errors_total


@dataclass(frozen=True, slots=True)
class TickRecord:
    """Everything one tick changes, published at once."""

    reads: Mapping[str, SourceRead]  # by source
    result: TickResult | None  # None: the core failed, and only the reads and errors count
    errors: tuple[tuple[str, str], ...] = ()  # (source, reason) counted besides the reads' own
    seconds: float = 0.0  # time the tick took
    unixtime: float = 0.0
    ready: bool = False  # both sources answered in this tick
    # Who supplied this tick's readings: {"vllm": "plugin" | "vllm", "energy": "plugin" | "nvml" | ...}
    origins: Mapping[str, str] = field(default_factory=_empty)
    energy_modelled: bool | None = None  # None: no energy reading this tick
    # The HTTP server's own counts as of this tick (connections, rejections, timeouts...).
    http_events: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class LedgerView:
    """Monotonic totals and latest gauges as of one tick. Never changed once published: its
    mappings are read-only, and the next view shares those this tick left alone."""

    version: int = 0  # changes with every publication: what a cached exposition is keyed on
    tokens: Mapping[ClassKey, float] = field(default_factory=_empty)
    steps: Mapping[str, float] = field(default_factory=_empty)
    energy: Mapping[ClassKey, float] = field(default_factory=_empty)
    busy_seconds: Mapping[str, float] = field(default_factory=_empty)
    attributed_seconds: float = 0.0
    gpu_energy: Mapping[GpuIdentity, float] = field(default_factory=_empty)
    gpu_power: Mapping[GpuIdentity, float] = field(default_factory=_empty)
    cost: Mapping[CostKey, float] = field(default_factory=_empty)
    emissions: Mapping[ClassKey, float] = field(default_factory=_empty)
    marginal: Mapping[ClassKey, tuple[float, float]] = field(default_factory=_empty)
    coefficients: Mapping[str, tuple[float, float]] = field(default_factory=_empty)
    idle_watts: float = 0.0
    idle_measured: bool = False
    identified: bool = False
    residual_ratio: float | None = None
    fits: float = 0.0
    models: tuple[str, ...] = ()
    source_up: Mapping[str, float] = field(default_factory=_empty)
    source_errors: Mapping[tuple[str, str], float] = field(default_factory=_empty)
    resets: Mapping[str, float] = field(default_factory=_empty)
    reads: Mapping[str, float] = field(default_factory=_empty)
    read_seconds: Mapping[str, float] = field(default_factory=_empty)
    ticks: float = 0.0
    tick_seconds: float = 0.0
    last_tick_unixtime: float = 0.0
    ready: bool = False
    origins: Mapping[str, str] = field(default_factory=_empty)  # the latest reading's, by source
    energy_modelled: bool | None = None  # as of the latest energy reading; None before the first
    # Totals of models not seen for long, out of the exposition until they return (then their
    # counters go on from these, never from zero: a reset would read as a burst to rate()).
    archive: Mapping[str, Mapping[str, Mapping[Any, float]]] = field(default_factory=_empty)
    http_events: Mapping[str, float] = field(default_factory=_empty)  # the server's counts, as of the tick

    @classmethod
    def initial(cls, sources: Iterable[str] = SOURCES) -> LedgerView:
        # Known causes start at zero, so rate() and dashboards see a series before the first failure.
        return cls(
            source_up=_frozen(dict.fromkeys(sources, 0.0)),
            resets=_frozen(dict.fromkeys(sources, 0.0)),
            source_errors=_frozen(dict.fromkeys(KNOWN_ERRORS, 0.0)),
        )

    def after(self, record: TickRecord) -> LedgerView:
        """The view that this record makes of this one."""
        source_errors = dict(self.source_errors)
        for source, read in record.reads.items():
            for reason in read.errors:
                source_errors[(source, reason)] = source_errors.get((source, reason), 0.0) + 1
        for key in record.errors:
            source_errors[key] = source_errors.get(key, 0.0) + 1
        view = replace(
            self,
            version=self.version + 1,
            source_up=_frozen({**self.source_up, **{s: 1.0 if r.ok else 0.0 for s, r in record.reads.items()}}),
            reads=_added(self.reads, dict.fromkeys(record.reads, 1.0)),
            read_seconds=_added(self.read_seconds, {s: r.seconds for s, r in record.reads.items()}),
            source_errors=_frozen(source_errors),
            origins=_frozen({**self.origins, **record.origins}) if record.origins else self.origins,
            energy_modelled=self.energy_modelled if record.energy_modelled is None else record.energy_modelled,
            http_events=self.http_events if record.http_events is None else _frozen(dict(record.http_events)),
        )
        if record.result is None:
            return view
        return replace(
            view._with_result(record.result),
            ticks=self.ticks + 1,
            tick_seconds=self.tick_seconds + record.seconds,
            last_tick_unixtime=record.unixtime,
            ready=self.ready or record.ready,
        )

    def _with_result(self, result: TickResult) -> LedgerView:
        view = self._restored(result) if self.archive else self
        view = view._added_result(result)
        return view._archived(result.expired_models) if result.expired_models else view

    def _restored(self, result: TickResult) -> LedgerView:
        """The archived totals of models this result counts again, back in place."""
        returning = {model for model in (*result.models, *result.steps) if model in self.archive}
        if not returning:
            return self
        changes: dict[str, Mapping[Any, float]] = {}
        for name in ARCHIVED_FIELDS:
            merged = dict(getattr(self, name))
            for model in returning:
                merged.update(self.archive[model].get(name, {}))
            changes[name] = _frozen(merged)
        archive = {model: kept for model, kept in self.archive.items() if model not in returning}
        return replace(self, archive=_frozen(archive), **changes)  # type: ignore[arg-type]

    def _archived(self, models: Iterable[str]) -> LedgerView:
        """These models' series leave the exposition; their counters wait in the archive."""
        gone = set(models)
        changes: dict[str, Mapping[Any, float]] = {}
        taken: dict[str, dict[str, dict[Any, float]]] = {model: {} for model in gone}
        for name in (*ARCHIVED_FIELDS, "marginal"):
            kept: dict[Any, Any] = {}
            for key, value in getattr(self, name).items():
                model = key if isinstance(key, str) else key[0]
                if model not in gone:
                    kept[key] = value
                elif name != "marginal":  # a gauge of a departed model is not kept
                    taken[model].setdefault(name, {})[key] = value
            changes[name] = _frozen(kept)
        archive = {model: v for model, v in self.archive.items() if model not in gone}
        for model, fields in taken.items():
            archive[model] = MappingProxyType({name: _frozen(values) for name, values in fields.items()})
        while len(archive) > MAX_ARCHIVED_MODELS:  # the longest gone is forgotten: it would restart at 0
            del archive[next(iter(archive))]
        models = tuple(m for m in self.models if m not in gone)
        return replace(self, archive=_frozen(archive), models=models, **changes)  # type: ignore[arg-type]

    def _added_result(self, result: TickResult) -> LedgerView:
        allocation = result.allocation
        busy = dict(self.busy_seconds)
        if allocation is not None:
            for (model, cls), share in allocation.time_share.items():
                busy[model] = busy.get(model, 0.0) + (0.0 if cls == IDLE else share * result.seconds)
        return replace(
            self,
            tokens=_added(self.tokens, result.tokens),
            steps=_added(self.steps, result.steps),
            energy=_added(self.energy, allocation.energy) if allocation is not None else self.energy,
            busy_seconds=_frozen(busy),
            attributed_seconds=self.attributed_seconds + (result.seconds if allocation is not None else 0.0),
            gpu_energy=_added(self.gpu_energy, result.gpu_energy),
            gpu_power=_frozen({**self.gpu_power, **result.gpu_power}),
            cost=_added(self.cost, result.costs),
            emissions=_added(self.emissions, result.emissions),
            marginal=_frozen(dict(result.marginal)),
            coefficients=_frozen(dict(result.coefficients)),
            identified=result.identified,
            residual_ratio=result.residual_ratio,
            fits=result.fits,
            idle_watts=result.idle_watts,
            idle_measured=result.idle_measured,
            models=result.models,
            resets=_added(self.resets, {"vllm": result.vllm_resets, "energy": result.energy_resets}),
            source_errors=_added(self.source_errors, result.errors) if result.errors else self.source_errors,
        )


def _added(totals: Mapping[K, float], increments: Mapping[K, float]) -> Mapping[K, float]:
    """Totals plus increments; a series first seen with a zero increment starts at zero."""
    out = dict(totals)
    for key, value in increments.items():
        if value:
            out[key] = out.get(key, 0.0) + value
        elif key not in out:
            out[key] = 0.0
    return _frozen(out)


class Ledger:
    def __init__(self, sources: Iterable[str] = SOURCES) -> None:
        self._view = LedgerView.initial(sources)
        self._publishing = threading.Lock()  # one writer is the design; the lock keeps a second honest

    @property
    def version(self) -> int:
        return self._view.version

    @property
    def ready(self) -> bool:
        return self._view.ready

    def view(self) -> LedgerView:
        return self._view

    def publish(self, record: TickRecord) -> None:
        with self._publishing:
            self._view = self._view.after(record)
