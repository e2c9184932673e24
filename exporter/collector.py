"""Formats the ledger at scrape time. No device call and no vLLM request happens here."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from exporter.ledger import Ledger
from exporter.pricing import Prices

P = "token_economy_"
GPU_LABELS = ["gpu", "gpu_uuid", "gpu_name"]


class LedgerCollector(Collector):
    def __init__(self, ledger: Ledger, build_labels: dict[str, str], prices: Prices | None = None) -> None:
        self._ledger = ledger
        self._build = build_labels
        self._prices = prices

    def describe(self) -> list[Metric]:
        # Registration must not take a lock or wait for the first tick.
        return []

    def collect(self) -> Iterator[Metric]:
        v = self._ledger.view()

        def counter(name: str, doc: str, labels: list[str], values: dict) -> CounterMetricFamily:
            family = CounterMetricFamily(P + name, doc, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            return family

        def gauge(name: str, doc: str, labels: list[str], values: dict) -> GaugeMetricFamily:
            family = GaugeMetricFamily(P + name, doc, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            return family

        models = v.models
        yield gauge(
            "build_info",
            "Version and attribution policy; always 1.",
            list(self._build),
            {tuple(self._build.values()): 1.0},
        )
        yield counter(
            "tokens_total",
            "Tokens seen by vLLM, by class (input computed, cached_input, output).",
            ["model_name", "token_class"],
            v.tokens,
        )
        yield counter(
            "engine_steps_total", "vLLM engine steps (iterations), summed over engines.", ["model_name"], v.steps
        )
        yield counter(
            "energy_joules_total",
            "GPU energy attributed to each token class and idle; the classes sum to the measured total.",
            ["model_name", "token_class"],
            v.energy,
        )
        yield counter(
            "busy_seconds_total",
            "Estimated GPU time spent serving tokens (roofline occupancy).",
            ["model_name"],
            v.busy_seconds,
        )
        yield counter("attributed_seconds_total", "Wall time covered by attribution.", [], {(): v.attributed_seconds})
        yield counter(
            "gpu_energy_joules_total",
            "Energy measured (or modelled, see build_info energy_source) per GPU.",
            GPU_LABELS,
            v.gpu_energy,
        )
        yield gauge("gpu_power_watts", "Latest power per GPU.", GPU_LABELS, v.gpu_power)
        cost = CounterMetricFamily(
            P + "cost_total",
            "Cost attributed to each token class and idle, by component.",
            labels=["model_name", "token_class", "component", "currency"],
        )
        currency = self._build.get("currency", "")
        for (model, cls, component), value in sorted(v.cost.items()):
            cost.add_metric([model, cls, component, currency], value)
        yield cost
        yield counter(
            "emissions_grams_total",
            "CO2-equivalent attributed to each token class and idle.",
            ["model_name", "token_class"],
            v.emissions,
        )
        yield gauge(
            "marginal_energy_joules_per_token",
            "Marginal energy of one more token of the class.",
            ["model_name", "token_class"],
            {k: mv[0] for k, mv in v.marginal.items()},
        )
        yield gauge(
            "marginal_energy_joules_per_token_stddev",
            "Standard deviation of the marginal energy.",
            ["model_name", "token_class"],
            {k: mv[1] for k, mv in v.marginal.items()},
        )
        yield gauge(
            "marginal_energy_joules",
            "Fitted marginal energy per unit of each cost driver: a computed input token, "
            "an output token's own FLOPs, an engine step (weight stream), a context token's KV read.",
            ["model_name", "driver"],
            {(m, d): value for m in models for d, (value, _) in v.coefficients.items()},
        )
        yield gauge(
            "marginal_energy_joules_stddev",
            "Standard deviation of the fitted marginal energy per driver.",
            ["model_name", "driver"],
            {(m, d): sd for m in models for d, (_, sd) in v.coefficients.items()},
        )
        yield counter(
            "attribution_fits_total",
            "Estimator updates so far (one per fit window of measured energy).",
            ["model_name"],
            dict.fromkeys(models, v.fits),
        )
        if v.residual_ratio is not None:
            yield gauge(
                "attribution_residual_ratio",
                "Recent mean of |measured - fitted| / measured dynamic energy per window.",
                ["model_name"],
                dict.fromkeys(models, v.residual_ratio),
            )
        yield gauge(
            "idle_power_watts",
            "Idle power of the server's GPUs together, as now estimated.",
            ["model_name"],
            dict.fromkeys(models, v.idle_watts),
        )
        yield gauge(
            "idle_power_measured",
            "1 once the idle power comes from measured idle intervals, 0 while it is the prior.",
            ["model_name"],
            {m: float(v.idle_measured) for m in models},
        )
        yield gauge(
            "attribution_identified",
            "1 when the data separate input from output cost; 0: marginal costs are the prior.",
            ["model_name"],
            {m: float(v.identified) for m in models},
        )
        yield gauge("source_up", "1 when the last read of the source succeeded.", ["source"], v.source_up)
        yield counter("source_errors_total", "Failed reads by source and cause.", ["source", "reason"], v.source_errors)
        yield counter(
            "counter_resets_total", "Counter restarts detected (vLLM restart, driver reload).", ["source"], v.resets
        )
        reads = SummaryMetricFamily(
            P + "source_read_duration_seconds", "Time spent reading each source.", labels=["source"]
        )
        for source in sorted(v.reads):
            reads.add_metric([source], count_value=v.reads[source], sum_value=v.read_seconds[source])
        yield reads
        ticks = SummaryMetricFamily(P + "tick_duration_seconds", "Time spent in one collection tick.")
        ticks.add_metric([], count_value=v.ticks, sum_value=v.tick_seconds)
        yield ticks
        if self._prices is not None:
            # Configured prices as series, so PromQL can turn marginal joules into money.
            currency = [self._build.get("currency", "")]
            yield gauge(
                "gpu_hourly_price",
                "Configured rental price of one GPU for one hour.",
                ["currency"],
                {tuple(currency): self._prices.gpu_hourly},
            )
            yield gauge(
                "electricity_price_per_kwh",
                "Electricity price counted (0 when not counted).",
                ["currency"],
                {tuple(currency): self._prices.electricity_per_kwh},
            )
            yield gauge("pue", "Configured power usage effectiveness.", [], {(): self._prices.pue})
            yield gauge(
                "grid_carbon_intensity_grams_per_kwh",
                "Configured grams CO2e per kWh.",
                [],
                {(): self._prices.grams_co2_per_kwh},
            )
        yield gauge(
            "last_tick_timestamp_seconds", "Unix time of the last completed tick.", [], {(): v.last_tick_unixtime}
        )
