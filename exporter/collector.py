"""Formats the ledger at scrape time by rendering the metric catalogue. No device call and no
vLLM request happens here, and no lock is taken: the ledger's view is immutable."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from exporter.attribution.api_prices import ApiPrice
from exporter.attribution.pricing import Prices
from exporter.catalogue import (
    BUILD_LABELS,
    CATALOGUE,
    Catalogue,
    Configured,
    Family,
    Kind,
    Sample,
    Samples,
    SummarySample,
)
from exporter.ledger import Ledger


def _family(spec: Family) -> CounterMetricFamily | GaugeMetricFamily | SummaryMetricFamily:
    labels = list(spec.labels)
    if spec.kind is Kind.COUNTER:
        return CounterMetricFamily(spec.full_name, spec.help, labels=labels)
    if spec.kind is Kind.SUMMARY:
        return SummaryMetricFamily(spec.full_name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.full_name, spec.help, labels=labels)


def _render(spec: Family, samples: Samples) -> Metric:
    family = _family(spec)
    if isinstance(family, SummaryMetricFamily):
        for labels, (count, total) in sorted(cast(Iterable[SummarySample], samples)):
            family.add_metric(list(labels), count_value=int(count), sum_value=total)
    else:
        for labels, value in sorted(cast(Iterable[Sample], samples)):
            family.add_metric(list(labels), value)
    return family


class LedgerCollector(Collector):
    def __init__(
        self,
        ledger: Ledger,
        build_labels: Mapping[str, str],
        prices: Prices | None = None,
        catalogue: Catalogue = CATALOGUE,
        *,
        api_prices: tuple[ApiPrice, ...] = (),
        break_even_reference: str | None = None,
    ) -> None:
        if set(build_labels) != set(BUILD_LABELS):
            raise ValueError(
                f"build_info takes exactly the labels {', '.join(BUILD_LABELS)}; got {sorted(build_labels)}"
            )
        self._ledger = ledger
        self._constants = Configured(dict(build_labels), prices, api_prices, break_even_reference)
        self._catalogue = catalogue

    def describe(self) -> list[Metric]:
        """Every family, empty: the registry reserves the names, so a clash fails at registration.
        Needs neither a lock nor a tick."""
        return [_family(spec) for spec in self._catalogue]

    def collect(self) -> Iterator[Metric]:
        view = self._ledger.view()
        for spec in self._catalogue:
            samples = spec.value(view, self._constants)
            if samples is not None:
                yield _render(spec, samples)
