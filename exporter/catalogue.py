"""The metric catalogue: every family the exporter publishes, declared once.

Each entry says what the family is called, its type, its labels, its help text, what README says
of it, and where its value comes from (a function of the ledger's view and the settings the
exporter started with). The collector renders this table; README's metric table is generated
from it (`python scripts/assets.py`), and the dashboards and rules may only name families that
are here (a test checks). Adding a metric is adding one entry."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from exporter.attribution.api_prices import ApiPrice
from exporter.attribution.pricing import Prices
from exporter.attribution.readings import GpuIdentity
from exporter.attribution.split import ClassKey
from exporter.ledger import LedgerView

PREFIX = "token_economy_"
GPU_LABELS = ("gpu", "gpu_uuid", "gpu_name")
BUILD_LABELS = (
    "version",
    "energy_source",
    "gpu_type",
    "model_spec",
    "prior",
    "estimator",
    "electricity",
    "static_power_policy",
    "step_cost_policy",
    "currency",
    "python_version",
)

Labels = tuple[str, ...]
# Counter and gauge families give one value per label set; summaries give (count, sum).
Sample = tuple[Labels, float]
SummarySample = tuple[Labels, tuple[float, float]]
Samples = Iterable[Sample] | Iterable[SummarySample]


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    SUMMARY = "summary"


@dataclass(frozen=True, slots=True)
class Configured:
    """What the exporter was started with, for the families that state it (build_info, prices)."""

    build: Mapping[str, str]  # build_info's labels
    prices: Prices | None = None
    api_prices: tuple[ApiPrice, ...] = ()  # reference API price lists, to compare self-hosting with
    break_even_reference: str | None = None  # the one the break-even alert watches

    @property
    def currency(self) -> str:
        return self.build.get("currency", "")


ValueOf = Callable[[LedgerView, Configured], Samples | None]  # None: the family is absent this scrape


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without the prefix; counters end in _total, as they are exposed
    kind: Kind
    labels: Labels
    help: str  # the exposition's HELP line
    value: ValueOf
    readme: str = ""  # README's meaning, where it says more than the help
    readme_labels: str = ""  # README's label column, where it lists the values

    @property
    def full_name(self) -> str:
        return PREFIX + self.name

    @property
    def exposed_names(self) -> tuple[str, ...]:
        """The sample names a scrape shows for this family (what PromQL can select)."""
        base = self.full_name.removesuffix("_total")
        if self.kind is Kind.COUNTER:
            return (base + "_total",)
        if self.kind is Kind.SUMMARY:
            return (base + "_count", base + "_sum")
        return (base,)

    @property
    def series_names(self) -> tuple[str, ...]:
        """Every sample name the registry reserves for the family (more than it exposes)."""
        base = self.full_name.removesuffix("_total")
        if self.kind is Kind.COUNTER:
            return (base, base + "_total", base + "_created")
        if self.kind is Kind.SUMMARY:
            return (base, base + "_count", base + "_sum", base + "_created")
        return (base,)


_NAME = re.compile(r"[a-z][a-z0-9_]*")


class Catalogue:
    """The families in exposition order. Refuses a malformed entry or a name used twice."""

    def __init__(self, families: tuple[Family, ...]) -> None:
        seen: dict[str, str] = {}
        for family in families:
            if not _NAME.fullmatch(family.name) or (family.kind is Kind.COUNTER) != family.name.endswith("_total"):
                raise ValueError(f"metric {family.name!r}: lower_snake_case, and _total exactly on counters")
            for series in family.series_names:
                if series in seen:
                    raise ValueError(f"metric {family.name!r}: {series} is already exposed by {seen[series]!r}")
                seen[series] = family.name
        self._families = families
        self._by_name = {family.full_name: family for family in families}

    def __iter__(self) -> Iterator[Family]:
        return iter(self._families)

    def __len__(self) -> int:
        return len(self._families)

    def __getitem__(self, full_name: str) -> Family:
        return self._by_name[full_name]

    def name(self, short: str) -> str:
        """The full name of a family; KeyError for one the catalogue does not have."""
        return self[PREFIX + short].full_name

    def readme_table(self) -> str:
        """README's metric table, one row per family, in catalogue order."""
        rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
        for f in self._families:
            labels = f.readme_labels or ", ".join(f.labels) or "—"
            rows.append(f"| `{f.full_name}` | {f.kind} | {labels} | {f.readme or f.help} |")
        return "\n".join(rows) + "\n"

    def owner(self, series: str) -> Family | None:
        """The family whose scrape shows a sample name (`…_sum` of a summary, say), if any."""
        for family in self._families:
            if series in family.exposed_names:
                return family
        return None


def _one(value: float) -> list[Sample]:
    return [((), value)]


def _by(mapping: Mapping[str, float]) -> list[Sample]:
    return [((key,), value) for key, value in mapping.items()]


def _followed(view: LedgerView) -> list[str]:
    """Every model with series of its own: those of the latest reading and those still counted
    (not yet gone for long), so a model missing from one page does not lose its series for it."""
    return list(dict.fromkeys([*view.models, *(model for model, _cls in view.tokens)]))


def _per_model(view: LedgerView, value: float) -> list[Sample]:
    return [((model,), value) for model in _followed(view)]


def _price(pick: Callable[[Prices], float], with_currency: bool) -> ValueOf:
    def value(_: LedgerView, c: Configured) -> list[Sample] | None:
        if c.prices is None:
            return None
        labels: Labels = (c.currency,) if with_currency else ()
        return [(labels, pick(c.prices))]

    return value


MODEL_CLASS = ("model_name", "token_class")
MODEL_DRIVER = ("model_name", "driver")
MODEL = ("model_name",)


def _per_model_labels(view: LedgerView, labels: Labels) -> list[Sample]:
    return [((model, *labels), 1.0) for model in _followed(view)]


def _api_prices(view: LedgerView, c: Configured) -> list[Sample]:
    """Per model served, so that PromQL joins a price to the model's tokens one to one."""
    return [
        ((model, price.reference, cls, price.currency), value)
        for model in _followed(view)
        for price in c.api_prices
        for cls, value in price.per_million.items()
    ]


def _gpus(mapping: Mapping[GpuIdentity, float]) -> list[Sample]:
    return [(gpu.labels, value) for gpu, value in mapping.items()]


def _cost(view: LedgerView, c: Configured) -> list[Sample]:
    return [((model, cls, component, c.currency), value) for (model, cls, component), value in view.cost.items()]


def _per_driver(view: LedgerView, index: int) -> list[Sample]:
    return [((m, driver), pair[index]) for m in _followed(view) for driver, pair in view.coefficients.items()]


def _paired(mapping: Mapping[ClassKey, tuple[float, float]], index: int) -> list[Sample]:
    return [(key, pair[index]) for key, pair in mapping.items()]


def _reads(view: LedgerView, _: Configured) -> list[SummarySample]:
    return [((source,), (view.reads[source], view.read_seconds[source])) for source in view.reads]


# fmt: off
CATALOGUE = Catalogue((
    Family(
        "tokens_total", Kind.COUNTER, MODEL_CLASS,
        "Tokens seen by vLLM, by class (input computed, cached_input, output).",
        lambda v, c: v.tokens.items(),
        readme="tokens seen, mirrored from vLLM's counters (summed over engines)",
    ),
    Family(
        "engine_steps_total", Kind.COUNTER, MODEL,
        "vLLM engine steps (iterations), summed over engines.",
        lambda v, c: _by(v.steps),
        readme="vLLM engine steps",
    ),
    Family(
        "energy_joules_total", Kind.COUNTER, MODEL_CLASS,
        "GPU energy attributed to each token class and idle; the classes sum to the measured total.",
        lambda v, c: v.energy.items(),
        readme="attributed GPU energy; the classes sum to the measured total",
        readme_labels="model_name, token_class (input, cached_input, output, idle)",
    ),
    Family(
        "busy_seconds_total", Kind.COUNTER, MODEL,
        "Estimated GPU time spent serving tokens (roofline occupancy).",
        lambda v, c: _by(v.busy_seconds),
        readme="estimated GPU time spent on tokens (roofline occupancy)",
    ),
    Family(
        "attributed_seconds_total", Kind.COUNTER, (),
        "Wall time covered by attribution.",
        lambda v, c: _one(v.attributed_seconds),
        readme="wall time covered by attribution",
    ),
    Family(
        "gpu_energy_joules_total", Kind.COUNTER, GPU_LABELS,
        "Energy measured (or modelled, see build_info energy_source) per GPU.",
        lambda v, c: _gpus(v.gpu_energy),
        readme='measured energy per GPU (modelled under `energy_source="phase-model"`)',
    ),
    Family(
        "gpu_power_watts", Kind.GAUGE, GPU_LABELS,
        "Latest power per GPU.",
        lambda v, c: _gpus(v.gpu_power),
        readme="latest power",
    ),
    Family(
        "cost_total", Kind.COUNTER, ("model_name", "token_class", "component", "currency"),
        "Cost attributed to each token class and idle, by component.",
        _cost,
        readme="attributed cost; a component with a zero price is absent",
        readme_labels="model_name, token_class, component (rental, electricity), currency",
    ),
    Family(
        "emissions_grams_total", Kind.COUNTER, MODEL_CLASS,
        "CO2-equivalent attributed to each token class and idle.",
        lambda v, c: v.emissions.items(),
        readme="attributed CO2-equivalent",
    ),
    Family(
        "marginal_energy_joules_per_token", Kind.GAUGE, MODEL_CLASS,
        "Marginal energy of one more token of the class.",
        lambda v, c: _paired(v.marginal, 0),
        readme="marginal energy of one more token; output includes its share of the per-step cost",
        readme_labels="model_name, token_class (input, cached_input, output)",
    ),
    Family(
        "marginal_energy_joules_per_token_stddev", Kind.GAUGE, MODEL_CLASS,
        "Standard deviation of the marginal energy.",
        lambda v, c: _paired(v.marginal, 1),
        readme="its standard deviation",
    ),
    Family(
        "marginal_energy_joules", Kind.GAUGE, MODEL_DRIVER,
        "Fitted marginal energy per unit of each cost driver: a computed input token, "
        "an output token's own FLOPs, an engine step (weight stream), a context token's KV read, "
        "and the interaction of a step that carries prefill (either sign).",
        lambda v, c: _per_driver(v, 0),
        readme="fitted marginal energy per cost driver: a computed input token, an output token's own FLOPs, "
        "an engine step (the weight stream), a context token's KV read, and what a step that carries prefill "
        "draws beyond its parts' own costs (`prefill_step`, either sign, shared equally by input and output; "
        "fitted only from the plugin's step counts, else 0)",
        readme_labels="model_name, driver (input, output, step, kv, prefill_step)",
    ),
    Family(
        "marginal_energy_joules_stddev", Kind.GAUGE, MODEL_DRIVER,
        "Standard deviation of the fitted marginal energy per driver.",
        lambda v, c: _per_driver(v, 1),
        readme="its standard deviation",
    ),
    Family(
        "attribution_residual_ratio", Kind.GAUGE, MODEL,
        "Recent mean of |measured - fitted| / measured dynamic energy per window.",
        lambda v, c: None if v.residual_ratio is None else _per_model(v, v.residual_ratio),
        readme="recent mean of \\|measured − fitted\\| / measured energy above idle, per fit window "
        "(absent before the first fit)",
    ),
    Family(
        "attribution_fits_total", Kind.COUNTER, MODEL,
        "Estimator updates so far (one per fit window of measured energy).",
        lambda v, c: _per_model(v, v.fits),
        readme="estimator updates so far (stays 0 under the phase model or `--estimator prior`)",
    ),
    Family(
        "idle_power_watts", Kind.GAUGE, MODEL,
        "Idle power of the server's GPUs together, as now estimated.",
        lambda v, c: _per_model(v, v.idle_watts),
        readme="current idle-power estimate of the server's GPUs",
    ),
    Family(
        "idle_power_measured", Kind.GAUGE, MODEL,
        "1 once the idle power comes from measured idle intervals, 0 while it is the prior.",
        lambda v, c: _per_model(v, float(v.idle_measured)),
        readme="1 once the idle power comes from measured idle intervals",
    ),
    Family(
        "attribution_identified", Kind.GAUGE, MODEL,
        "1 when the data separate input from output cost; 0: marginal costs are the prior.",
        lambda v, c: _per_model(v, float(v.identified)),
        readme="1 when the data separate input from output cost; 0 while the marginal costs are the prior",
    ),
    Family(
        "energy_modelled", Kind.GAUGE, (),
        "1 while the energy is the declared phase model, not a measurement; 0 while measured.",
        lambda v, c: None if v.energy_modelled is None else [((), float(v.energy_modelled))],
        readme="1 while energy is modelled (nothing could measure it), 0 while measured; absent before the "
        "first energy reading. The `TokenEconomyEnergyModelled` alert fires on it",
    ),
    Family(
        "sources_info", Kind.GAUGE, ("work_source", "energy_source"),
        "Who supplies the readings now; always 1.",
        lambda v, c: [((v.origins.get("vllm", "none"), v.origins.get("energy", "none")), 1.0)],
        readme="constant 1; names who supplies the readings now (`none` before the first)",
        readme_labels="work_source (plugin, vllm, none), energy_source (plugin, nvml, dcgm, phase-model, none)",
    ),
    Family(
        "source_up", Kind.GAUGE, ("source",),
        "1 when the last read of the source succeeded.",
        lambda v, c: _by(v.source_up),
        readme="last read succeeded",
        readme_labels="source (vllm, energy)",
    ),
    Family(
        "source_errors_total", Kind.COUNTER, ("source", "reason"),
        "Failed reads, and samples or counters left out of a read, by source and cause.",
        lambda v, c: v.source_errors.items(),
        readme="failed reads by cause (`connection`, `timeout`, `http_status`, `too_large`, `parse`, `truncated`, "
        "`nvml_*`, `internal`), and what a read that counted left out: `bad_value` (a value no counter can hold), "
        "`duplicate_series`, `counter_decrease` and `counter_leap` (a glitch: counted nothing), `counter_missing` "
        "(an engine held until the counter returns), `model_limit` (an engine counted under `model_name=\"other\"`); "
        "the known vLLM causes start at 0",
    ),
    Family(
        "counter_resets_total", Kind.COUNTER, ("source",),
        "Counter restarts detected (vLLM restart, driver reload).",
        lambda v, c: _by(v.resets),
        readme="restarts detected (vLLM restart, driver reload)",
    ),
    Family(
        "source_read_duration_seconds", Kind.SUMMARY, ("source",),
        "Time spent reading each source.",
        _reads,
        readme="time spent reading each source",
    ),
    Family(
        "tick_duration_seconds", Kind.SUMMARY, (),
        "Time spent in one collection tick.",
        lambda v, c: [((), (v.ticks, v.tick_seconds))],
        readme="time spent in one tick",
    ),
    Family(
        "http_server_events_total", Kind.COUNTER, ("event",),
        "What the exporter's own HTTP server saw: connections, and those it closed or refused.",
        lambda v, c: _by(v.http_events),
        readme="the exporter's HTTP server, by `event`: `connections` accepted, `evicted` (idle, closed to make "
        "room under the cap), `refused`, `accept_errors`, `timeouts` (head or idle), `bad_requests` (answered "
        "400/413/431), `tls_errors`, `unauthorized` (401), `internal_errors`, `loop_errors`; counted as of the "
        "last tick, never logged per connection",
        readme_labels="event",
    ),
    Family(
        "last_tick_timestamp_seconds", Kind.GAUGE, (),
        "Unix time of the last completed tick.",
        lambda v, c: _one(v.last_tick_unixtime),
        readme="Unix time of the last tick",
    ),
    # Configured prices as series, so PromQL can turn marginal joules into money.
    Family(
        "gpu_hourly_price", Kind.GAUGE, ("currency",),
        "Configured rental price of one GPU for one hour.",
        _price(lambda p: p.gpu_hourly, with_currency=True),
        readme="configured rental price of one GPU-hour",
    ),
    Family(
        "electricity_price_per_kwh", Kind.GAUGE, ("currency",),
        "Electricity price counted (0 when not counted).",
        _price(lambda p: p.electricity_per_kwh, with_currency=True),
        readme="electricity price counted (0 when unpriced or excluded)",
    ),
    Family(
        "pue", Kind.GAUGE, (),
        "Configured power usage effectiveness.",
        _price(lambda p: p.pue, with_currency=False),
        readme="configured PUE",
    ),
    Family(
        "grid_carbon_intensity_grams_per_kwh", Kind.GAUGE, (),
        "Configured grams CO2e per kWh.",
        _price(lambda p: p.grams_co2_per_kwh, with_currency=False),
        readme="configured grid carbon intensity",
    ),
    # Reference API price lists: what the same traffic would cost bought per token (break-even).
    Family(
        "api_price_per_million_tokens", Kind.GAUGE, ("model_name", "reference", "token_class", "currency"),
        "Configured price of a reference API per million tokens of the class, repeated for each model served.",
        _api_prices,
        readme="a reference API's price per million tokens (`--api-prices`), for each model served, so that rules "
        "can price the same traffic at it",
        readme_labels="model_name, reference, token_class (input, cached_input, output), currency",
    ),
    Family(
        "break_even_reference_info", Kind.GAUGE, ("model_name", "reference"),
        "The reference API price list the break-even alert compares the model with; always 1.",
        lambda v, c: [] if c.break_even_reference is None else _per_model_labels(v, (c.break_even_reference,)),
        readme="constant 1 for the price list `TokenEconomySelfHostingCostsMore` watches "
        "(`--break-even-alert-reference`, default the first)",
    ),
    Family(
        "build_info", Kind.GAUGE, (*BUILD_LABELS, "work_source"),
        "Version and attribution policy; always 1.",
        lambda v, c: [((*(c.build[k] for k in BUILD_LABELS), v.origins.get("vllm", "none")), 1.0)],
        readme="constant 1; `energy_source` is the setting's choice at start-up (what is in use now: "
        "`sources_info`), `work_source` whose step counts are read now",
        readme_labels="version, energy_source, gpu_type, model_spec, prior, estimator, "
        "electricity (counted, excluded, unpriced), static_power_policy, step_cost_policy, currency, python_version, "
        "work_source (plugin, vllm, none)",
    ),
))
# fmt: on
