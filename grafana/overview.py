"""The Token Economy overview dashboard, as code (grafana-foundation-sdk ~= 0.0.21).

Every query reads the exporter's raw series with `$__rate_interval`, so the dashboard works
whether or not the recording rules of deploy/prometheus/ are loaded; the formulas are the same as
the rules' (allocated and fully loaded cost per million tokens, idle shares: see the definitions
at the top of deploy/prometheus/token-economy.rules.yml).

Every series is named through the metric catalogue (`CATALOGUE.name`), so a family the exporter
does not have fails at import. Write the JSON (and the chart's copy, and the dashboards' kustomize
base) with `python scripts/assets.py`; a unit test runs its `--check` and fails when the committed
JSON differs from what this module builds.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # The classic Dashboard builder warns, at import, that a v2 schema exists. The classic JSON is
    # what Grafana 9-12 and the kube-prometheus-stack dashboard sidecar load, so we keep it.
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builder
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash_model

from exporter.catalogue import CATALOGUE

# The exporter's series, by their names in the metric catalogue (a name it lacks fails at import).
TOKENS = CATALOGUE.name("tokens_total")
ENERGY = CATALOGUE.name("energy_joules_total")
COST = CATALOGUE.name("cost_total")
BUSY = CATALOGUE.name("busy_seconds_total")
ATTRIBUTED = CATALOGUE.name("attributed_seconds_total")
GPU_POWER = CATALOGUE.name("gpu_power_watts")
IDLE_POWER = CATALOGUE.name("idle_power_watts")
IDLE_POWER_MEASURED = CATALOGUE.name("idle_power_measured")
MARGINAL_PER_TOKEN = CATALOGUE.name("marginal_energy_joules_per_token")
MARGINAL_PER_TOKEN_SD = CATALOGUE.name("marginal_energy_joules_per_token_stddev")
MARGINAL_PER_DRIVER = CATALOGUE.name("marginal_energy_joules")
MARGINAL_PER_DRIVER_SD = CATALOGUE.name("marginal_energy_joules_stddev")
IDENTIFIED = CATALOGUE.name("attribution_identified")
SOURCE_UP = CATALOGUE.name("source_up")
SOURCE_ERRORS = CATALOGUE.name("source_errors_total")
COUNTER_RESETS = CATALOGUE.name("counter_resets_total")
READ_DURATION = CATALOGUE.name("source_read_duration_seconds")
LAST_TICK = CATALOGUE.name("last_tick_timestamp_seconds")
BUILD_INFO = CATALOGUE.name("build_info")
ENERGY_MODELLED = CATALOGUE.name("energy_modelled")
SOURCES_INFO = CATALOGUE.name("sources_info")
API_PRICE = CATALOGUE.name("api_price_per_million_tokens")

UID = "token-economy-overview"
TITLE = "Token Economy / Overview"

DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label filters. Series with a model_name label take both; per-process series (GPU power,
# sources, ticks) have no model_name and take the instance filter only.
BY_MODEL = 'model_name=~"$model_name", instance=~"$instance"'
BY_INSTANCE = 'instance=~"$instance"'
RI = "$__rate_interval"
NOT_IDLE = f'token_class!="idle", {BY_MODEL}'
ONLY_IDLE = f'token_class="idle", {BY_MODEL}'

# Units. Grafana has no token or currency-per-token unit: custom suffix units say what it is;
# the currency is the `currency` label, shown in every cost legend.
COST_PER_MTOK = "suffix: /Mtok"
TOKENS_PER_S = "suffix: tok/s"


def _rate(metric: str, selector: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RI}]))"


def cost_per_million_allocated(classes: str = "input|cached_input|output", by: str = "model_name") -> str:
    """1e6 x class cost / class tokens (token classes only, idle excluded), per currency."""
    sel = f'token_class=~"{classes}", {BY_MODEL}'
    return (
        f"1e6 * {_rate(COST, sel, f'{by}, token_class, currency')}\n"
        f"  / ignoring (currency) group_left ()\n"
        f"({_rate(TOKENS, sel, f'{by}, token_class')} > 0)"
    )


def cost_per_million_fully_loaded() -> str:
    """Allocated x (total cost / non-idle cost): idle spread over classes in proportion to cost."""
    return (
        f"(\n{cost_per_million_allocated()}\n)\n"
        f"  * ignoring (token_class) group_left ()\n"
        f"(\n"
        f"    {_rate(COST, BY_MODEL, 'model_name, currency')}\n"
        f"  / ({_rate(COST, NOT_IDLE, 'model_name, currency')} > 0)\n"
        f")"
    )


def energy_per_token(classes: str = "input|cached_input|output", by: str = "model_name") -> str:
    sel = f'token_class=~"{classes}", {BY_MODEL}'
    return f"{_rate(ENERGY, sel, f'{by}, token_class')}\n  / ({_rate(TOKENS, sel, f'{by}, token_class')} > 0)"


def api_cost_per_hour() -> str:
    """What the same tokens would cost at each reference API's prices, per hour (the price gauge is
    per model and class, so each price meets the model's token rate one to one; the last price in
    the window, so that a pod a rollout replaced does not leave its tokens unpriced)."""
    sel = f'token_class=~"input|cached_input|output", {BY_MODEL}'
    return (
        f"3600 / 1e6 * sum by (model_name, reference, currency) (\n"
        f"    last_over_time({API_PRICE}{{{sel}}}[{RI}])\n"
        f"  * ignoring (reference, currency) group_left ()\n"
        f"    rate({TOKENS}{{{sel}}}[{RI}])\n"
        f")"
    )


def self_hosted_cost_per_hour() -> str:
    """The whole self-hosted cost, idle included, per hour."""
    return f"3600 * {_rate(COST, BY_MODEL, 'model_name, currency')}"


def idle_share(metric: str, by: str) -> str:
    return f"{_rate(metric, ONLY_IDLE, by)}\n  / ({_rate(metric, BY_MODEL, by)} > 0)"


# -- builders ----------------------------------------------------------------------------------


def query(ref_id: str, expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().datasource(DATASOURCE).ref_id(ref_id).expr(expr).legend_format(legend).range()


def legend() -> common_builder.VizLegendOptions:
    return (
        common_builder.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .calcs(["lastNotNull", "mean", "max"])
    )


def series(
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    log_scale: bool = False,
    decimals: int | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .legend(legend())
        .tooltip(
            common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(40 if stacked else 10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
    )
    if stacked:
        panel = panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))
    if log_scale:
        panel = panel.scale_distribution(
            common_builder.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)
        )
    if decimals is not None:
        panel = panel.decimals(decimals)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def single(
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    width: int = 6,
    height: int = 4,
    mappings: list | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        panel = panel.mappings(mappings)
    steps = thresholds or [(None, "green")]
    panel = panel.thresholds(
        dash.ThresholdsConfig()
        .mode(dash_model.ThresholdsMode.ABSOLUTE)
        .steps([dash_model.Threshold(value=v, color=c) for v, c in steps])
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


DASHED = [
    dash_model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
    dash_model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
]


def dashed(panel: timeseries.Panel, regexp: str) -> timeseries.Panel:
    """Draw the series whose display name matches `regexp` as dashed lines without fill."""
    return panel.override_by_regexp(regexp, DASHED)


def with_band(title: str, description: str, value: str, stddev: str, legend: str) -> timeseries.Panel:
    """A fitted value with dashed ±1σ lines around it (the lower one clamped at zero), log scale."""
    return dashed(
        series(
            title,
            description,
            "joule",
            query("A", value, legend),
            query("B", f"{value} + {stddev}", f"{legend} +1σ"),
            query("C", f"clamp_min({value} - {stddev}, 0)", f"{legend} -1σ"),
            log_scale=True,
        ),
        ".*[+-]1σ$",
    )


UP_DOWN = [
    dash_model.ValueMap(
        options={
            "0": dash_model.ValueMappingResult(text="DOWN", color="red", index=0),
            "1": dash_model.ValueMappingResult(text="UP", color="green", index=1),
        }
    )
]
MEASURED_MODELLED = [
    dash_model.ValueMap(
        options={
            "0": dash_model.ValueMappingResult(text="measured", color="green", index=0),
            "1": dash_model.ValueMappingResult(text="MODELLED", color="red", index=1),
        }
    )
]
YES_NO = [
    dash_model.ValueMap(
        options={
            "0": dash_model.ValueMappingResult(text="no", color="orange", index=0),
            "1": dash_model.ValueMappingResult(text="yes", color="green", index=1),
        }
    )
]


# -- the dashboard -----------------------------------------------------------------------------


def cost_row() -> dash.Row:
    out_cost = cost_per_million_allocated("output")
    in_cost = cost_per_million_allocated("input")
    ratio = f"(\n{energy_per_token('output')}\n)\n  / ignoring (token_class)\n(\n{energy_per_token('input')}\n)"
    return (
        dash.Row("Cost per token")
        .with_panel(
            single(
                "Output tokens: cost per million",
                "Allocated cost (rental + electricity of the GPU time and energy "
                "spent decoding) per million output tokens, idle excluded. Currency in the series name.",
                COST_PER_MTOK,
                query("A", out_cost, "{{model_name}} ({{currency}})"),
            )
        )
        .with_panel(
            single(
                "Input tokens: cost per million",
                "Allocated cost per million computed prompt tokens (prefix-cache hits excluded), idle excluded.",
                COST_PER_MTOK,
                query("A", in_cost, "{{model_name}} ({{currency}})"),
            )
        )
        .with_panel(
            single(
                "Output vs input energy per token",
                "How many times more energy an output token takes than a "
                "computed input token (allocated J per token, output / input).",
                "suffix:×",
                query("A", ratio, "{{model_name}}"),
            )
        )
        .with_panel(
            single(
                "Idle share of cost",
                "Share of the cost paid for GPU time that served no token.",
                "percentunit",
                query("A", idle_share(COST, "model_name, currency"), "{{model_name}} ({{currency}})"),
                thresholds=[(None, "green"), (0.5, "orange"), (0.8, "red")],
            )
        )
        .with_panel(
            series(
                "Cost per million tokens: input vs cached input vs output (allocated)",
                "Each class's own cost (rental and electricity of the GPU time and energy attributed to it) "
                "over its tokens. Idle is not included: see the fully loaded panel.",
                COST_PER_MTOK,
                query("A", cost_per_million_allocated(), "{{model_name}} {{token_class}} ({{currency}})"),
                log_scale=True,
            )
        )
        .with_panel(
            series(
                "Cost per million tokens: fully loaded (idle spread over tokens)",
                "Allocated cost x (total cost / non-idle cost): the idle cost is spread over the token classes "
                "in proportion to the cost each already carries, so all tokens together pay the whole bill.",
                COST_PER_MTOK,
                query("A", cost_per_million_fully_loaded(), "{{model_name}} {{token_class}} ({{currency}})"),
                log_scale=True,
            )
        )
        .with_panel(
            series(
                "Idle share of cost and energy",
                "Share of the cost, and of the GPU energy, that served no token (idle / total).",
                "percentunit",
                query(
                    "A",
                    idle_share(COST, "model_name, currency"),
                    "{{model_name}} cost ({{currency}})",
                ),
                query("B", idle_share(ENERGY, "model_name"), "{{model_name}} energy"),
                width=24,
                height=7,
            )
        )
    )


def break_even_row() -> dash.Row:
    api, own = api_cost_per_hour(), self_hosted_cost_per_hour()
    ratio = f"(\n{own}\n)\n  / ignoring (reference) group_right ()\n(\n{api}\n  > 0)"
    saving = f"(\n{api}\n)\n  - ignoring (reference) group_left ()\n(\n{own}\n)"
    prices = f"max by (model_name, reference, token_class, currency) ({API_PRICE}{{{BY_MODEL}}})"
    return (
        dash.Row("Break-even against API prices")
        .with_panel(
            single(
                "Self-hosted / API cost",
                "What serving this traffic here cost (rental, electricity and idle time) over what the same tokens "
                "would have cost at each reference API price list (--api-prices). Below 1, self-hosting is cheaper.",
                "suffix:×",
                query("A", ratio, "{{model_name}} vs {{reference}}"),
                width=8,
                thresholds=[(None, "green"), (1.0, "red")],
            )
        )
        .with_panel(
            series(
                "Cost per hour: self-hosted vs the same tokens bought from an API",
                "Self-hosted: the whole cost, idle included. API: each class's tokens at the reference's price "
                "per million. The gap is the saving (or the loss).",
                "suffix:/h",
                query("A", own, "{{model_name}} self-hosted ({{currency}})"),
                query("B", api, "{{model_name}} at {{reference}} ({{currency}})"),
                width=16,
            )
        )
        .with_panel(
            series(
                "Saving per hour against each API (negative: a loss)",
                "API cost of the same tokens minus the self-hosted cost, idle included.",
                "suffix:/h",
                query("A", saving, "{{model_name}} vs {{reference}} ({{currency}})"),
            )
        )
        .with_panel(
            series(
                "Cost per million tokens: fully loaded vs API prices",
                "Solid: this deployment's fully loaded cost per million tokens of each class. Dashed: each "
                "reference API's price for the class. A class below its price line is cheaper here.",
                COST_PER_MTOK,
                query("A", cost_per_million_fully_loaded(), "{{model_name}} {{token_class}} ({{currency}})"),
                query("B", prices, "{{model_name}} {{token_class}} at {{reference}} ({{currency}})"),
                log_scale=True,
            ).override_by_query("B", DASHED)
        )
    )


def energy_row() -> dash.Row:
    marginal = f"{MARGINAL_PER_TOKEN}{{{BY_MODEL}}}"
    marginal_sd = f"{MARGINAL_PER_TOKEN_SD}{{{BY_MODEL}}}"
    driver = f"{MARGINAL_PER_DRIVER}{{{BY_MODEL}}}"
    driver_sd = f"{MARGINAL_PER_DRIVER_SD}{{{BY_MODEL}}}"
    return (
        dash.Row("Energy")
        .with_panel(
            series(
                "Energy per token (allocated)",
                "Energy attributed to each class over its tokens.",
                "joule",
                query("A", energy_per_token(), "{{model_name}} {{token_class}}"),
                log_scale=True,
            )
        )
        .with_panel(
            series(
                "Energy split over time (power by class)",
                "Average power attributed to each class, idle included; the stack is the GPUs' total power.",
                "watt",
                query(
                    "A",
                    _rate(ENERGY, BY_MODEL, "model_name, token_class"),
                    "{{model_name}} {{token_class}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            dashed(
                series(
                    "GPU power",
                    "Latest power of each GPU (modelled when build_info energy_source is phase-model), and the "
                    "exporter's idle-power estimate for the server's GPUs (dashed).",
                    "watt",
                    query("A", f"{GPU_POWER}{{{BY_INSTANCE}}}", "{{instance}} GPU {{gpu}} {{gpu_name}}"),
                    query(
                        "B",
                        f"{IDLE_POWER}{{{BY_MODEL}}}",
                        "{{instance}} {{model_name}} idle estimate",
                    ),
                ),
                ".*idle estimate$",
            )
        )
        .with_panel(
            series(
                "Estimated GPU occupancy",
                "Estimated GPU time spent on tokens over wall time covered by attribution (roofline occupancy).",
                "percentunit",
                query(
                    "A",
                    (
                        f"sum by (instance, model_name) (rate({BUSY}{{{BY_MODEL}}}[{RI}]))\n"
                        f"  / on (instance) group_left ()\n"
                        f"(sum by (instance) (rate({ATTRIBUTED}{{{BY_INSTANCE}}}[{RI}])) > 0)"
                    ),
                    "{{instance}} {{model_name}}",
                ),
            )
        )
        .with_panel(
            with_band(
                "Marginal energy per token (value ± 1σ)",
                "Marginal energy of one more token of each class (output includes its share of the per-step "
                "weight stream), with its standard deviation: fitted where the data allow, else the prior.",
                marginal,
                marginal_sd,
                "{{model_name}} {{token_class}} @ {{instance}}",
            )
        )
        .with_panel(
            with_band(
                "Fitted marginal energy per cost driver (value ± 1σ)",
                "The estimator's coefficients: a computed input token, an output token's own FLOPs, an engine "
                "step (the weight stream), a context token's KV read.",
                driver,
                driver_sd,
                "{{model_name}} {{driver}} @ {{instance}}",
            )
        )
        # token_economy_attribution_residual_ratio is left out: it is absent until the first fit,
        # and never fitted from modelled energy (energy_source="phase-model"), so a panel of it
        # would be empty on every machine without a GPU.
        .with_panel(
            single(
                "Attribution identified",
                "yes: the data separate input from output cost; no: the split still leans on the roofline prior.",
                "none",
                query("A", f"{IDENTIFIED}{{{BY_MODEL}}}", "{{model_name}} @ {{instance}}"),
                mappings=YES_NO,
                width=12,
                height=5,
            )
        )
        .with_panel(
            single(
                "Idle power measured",
                "yes: the idle power comes from measured idle intervals; no: it is the GPU table's figure.",
                "none",
                query("A", f"{IDLE_POWER_MEASURED}{{{BY_MODEL}}}", "{{model_name}} @ {{instance}}"),
                mappings=YES_NO,
                width=12,
                height=5,
            )
        )
    )


def traffic_row() -> dash.Row:
    return dash.Row("Traffic").with_panel(
        series(
            "Tokens per second",
            "Tokens seen by vLLM, by class: input (computed), cached_input (prefix-cache hits), output.",
            TOKENS_PER_S,
            query(
                "A",
                _rate(TOKENS, BY_MODEL, "model_name, token_class"),
                "{{model_name}} {{token_class}}",
            ),
            width=24,
            height=7,
        )
    )


def health_row() -> dash.Row:
    errors = (
        f"sum by (instance, source, reason) (rate({SOURCE_ERRORS}{{{BY_INSTANCE}}}[{RI}]))\n"
        f"  or on (instance, source)\n"
        f"0 * sum by (instance, source) ({SOURCE_UP}{{{BY_INSTANCE}}})"
    )
    return (
        dash.Row("Source health")
        .with_panel(
            single(
                "Energy: measured or modelled",
                "Whether each exporter's energy is measured (by the vLLM plugin, NVML, or DCGM) or the declared "
                "phase model; and whose step counts it reads (the plugin's or vLLM's). Modelled energy is an "
                "estimate, not a measurement: the TokenEconomyEnergyModelled alert fires on it.",
                "none",
                query(
                    "A",
                    f"{ENERGY_MODELLED}{{{BY_INSTANCE}}}\n"
                    f"  * on (instance) group_left (energy_source, work_source) {SOURCES_INFO}{{{BY_INSTANCE}}}",
                    "{{instance}} energy: {{energy_source}}, work: {{work_source}}",
                ),
                mappings=MEASURED_MODELLED,
                thresholds=[(None, "green"), (1, "red")],
                width=24,
                height=4,
            )
        )
        .with_panel(
            single(
                "Sources up",
                "Whether the last read of each source (vllm, energy) succeeded.",
                "none",
                query("A", f"{SOURCE_UP}{{{BY_INSTANCE}}}", "{{instance}} {{source}}"),
                mappings=UP_DOWN,
                thresholds=[(None, "red"), (1, "green")],
                width=8,
                height=7,
            )
        )
        .with_panel(
            series(
                "Source read errors",
                "Failed reads per second by source and cause; 0 for a source that has never failed.",
                "cps",
                query("A", errors, "{{instance}} {{source}} {{reason}}"),
                width=8,
                height=7,
            )
        )
        .with_panel(
            series(
                "Counter resets",
                "Restarts detected per interval (a vLLM restart, a driver reload): totals restart with them.",
                "short",
                query(
                    "A",
                    f"sum by (instance, source) (increase({COUNTER_RESETS}{{{BY_INSTANCE}}}[{RI}]))",
                    "{{instance}} {{source}}",
                ),
                width=8,
                height=7,
                decimals=0,
            )
        )
        .with_panel(
            series(
                "Source read duration",
                "Mean time spent reading each source per tick.",
                "s",
                query(
                    "A",
                    (
                        f"sum by (instance, source) "
                        f"(rate({READ_DURATION}_sum{{{BY_INSTANCE}}}[{RI}]))\n"
                        f"  / (sum by (instance, source) "
                        f"(rate({READ_DURATION}_count{{{BY_INSTANCE}}}[{RI}])) > 0)"
                    ),
                    "{{instance}} {{source}}",
                ),
                width=12,
                height=7,
            )
        )
        .with_panel(
            series(
                "Time since the last tick",
                "Seconds since the exporter last completed a collection tick; grows when its loop is stuck.",
                "s",
                query("A", f"time() - {LAST_TICK}{{{BY_INSTANCE}}}", "{{instance}}"),
                width=12,
                height=7,
            )
        )
    )


def multi_value(name: str, label: str, query: str, multi: bool = True) -> dash.QueryVariable:
    """A variable over a label's values (multi-select unless `multi` is false), "All" matching everything."""
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .definition(query)
        .refresh(dash_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_model.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(True)
        .all_value(".*")
        .current(dash_model.VariableOption(selected=True, text="All", value="$__all"))
    )


def variables() -> list:
    return [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        multi_value("model_name", "Model", f"label_values({TOKENS}, model_name)"),
        multi_value("instance", "Instance", f"label_values({BUILD_INFO}, instance)"),
    ]


def dashboard(title: str, uid: str, description: str, tags: list[str]) -> dash.Dashboard:
    """A Token Economy dashboard with the settings every one of them shares: editable, a shared
    crosshair, refreshed every 30 s over the last 3 hours in the browser's time zone."""
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["token-economy", "vllm", *tags])
        .editable()
        .tooltip(dash_model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
    )


def build() -> dash_model.Dashboard:
    builder = (
        dashboard(
            TITLE,
            UID,
            "What input, cached input and output tokens cost in joules and money, how much "
            "is idle, and whether the exporter's sources are healthy.",
            ["cost", "energy"],
        )
        .variables(variables())
        .with_row(cost_row())
        .with_row(break_even_row())
        .with_row(energy_row())
        .with_row(traffic_row())
        .with_row(health_row())
    )
    return open_rows(builder.build())


def open_rows(board: dash_model.Dashboard) -> dash_model.Dashboard:
    """The SDK nests a row's panels inside the row and marks the row collapsed (Grafana keeps nested
    panels only in a collapsed row). We want every row open: an open row is followed by its
    panels at the top level. Flatten, and give every panel a stable id in layout order (Grafana
    needs unique ids; the SDK leaves them unset)."""
    flat: list = []
    for panel in board.panels or []:
        flat.append(panel)
        if isinstance(panel, dash_model.RowPanel):
            flat.extend(panel.panels or [])
            panel.panels = []
            panel.collapsed = False
    for number, panel in enumerate(flat, start=1):
        panel.id_val = number
    board.panels = flat
    return board
