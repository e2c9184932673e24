"""The Token Economy chargeback dashboard, as code (grafana-foundation-sdk ~= 0.0.21): what each team
costs, through the gateway that knows the team (OpenTelemetry GenAI or LiteLLM).

Unlike the overview, every query reads the chargeback recording rules of
deploy/prometheus/token-economy.rules.yml (group token_economy.recording.chargeback): the join of
the gateway's per-team token counters with the exporter's cost per model and token class, and the
cap on teams, live there, so the dashboard needs those rules loaded. README, "Chargeback by team",
says how the gateways are scraped and what each rule means.

Write the JSON (and the chart's copy, and the dashboards' kustomize base) with
`python scripts/assets.py`.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builder
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import prometheus, table
from grafana_foundation_sdk.models import dashboard as dash_model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from grafana.overview import DATASOURCE, TOKENS_PER_S, dashboard, multi_value, open_rows, query, series, single

UID = "token-economy-chargeback"
TITLE = "Token Economy / Chargeback by team"

# The chargeback rules' series.
TEAM_COST = "token_economy:team_cost_per_second:rate5m"
TEAM_COST_FULL = "token_economy:team_cost_per_second_fully_loaded:rate5m"
TEAM_IDLE = "token_economy:team_idle_cost_per_second:rate5m"
TEAM_SHARE = "token_economy:team_cost_share:ratio_rate5m"
TEAM_TOKENS = "token_economy:team_tokens_per_second:rate5m"
GATEWAY_TOKENS = "token_economy:gateway_tokens_per_second:rate5m"
COVERAGE = "token_economy:gateway_coverage:ratio_rate5m"
FLEET_COST = "token_economy:fleet_cost_per_second:rate5m"

BY_GATEWAY = 'gateway=~"$gateway", model_name=~"$model_name"'
BY_TEAM = f'{BY_GATEWAY}, team=~"$team"'

# Grafana has no currency-agnostic money unit: the currency is the `currency` label, in every legend.
PER_HOUR = "suffix: /h"


def variables() -> list:
    return [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        multi_value("gateway", "Gateway", f"label_values({TEAM_COST}, gateway)"),
        multi_value("model_name", "Model", f"label_values({TEAM_COST}, model_name)"),
        multi_value("team", "Team", f'label_values({TEAM_COST}{{gateway=~"$gateway"}}, team)'),
    ]


def share_table() -> table.Panel:
    target = (
        prometheus.Dataquery()
        .datasource(DATASOURCE)
        .ref_id("A")
        .expr(f"{TEAM_SHARE}{{{BY_TEAM}}}")
        .legend_format("{{team}} · {{model_name}} via {{gateway}}")
        .instant()
        .format(prometheus_model.PromQueryFormat.TABLE)
    )
    return (
        table.Panel()
        .title("Share of each model's cost, idle included")
        .description(
            "Each team's share of the whole cost of a model (GPU rental, electricity and idle time) "
            "in the last 5 minutes, per gateway: the shares of one gateway's teams add up to 100 % "
            "when the gateway sees every token class the model served. Teams beyond the cap are "
            'summed in team="other".'
        )
        .datasource(DATASOURCE)
        .unit("percentunit")
        .decimals(1)
        .span(12)
        .height(9)
        .sort_by([common_builder.TableSortByFieldState().display_name("Value").desc(True)])
        .with_transformation(
            dash_model.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True, "__name__": True}}
            )
        )
        .with_target(target)
    )


def cost_row() -> dash.Row:
    return (
        dash.Row("Cost per team")
        .with_panel(
            series(
                "Cost per team, fully loaded (per hour)",
                "What each team's tokens cost per hour of the current rate, idle GPU time included "
                "(spread over teams in proportion to the cost they already carry, as the fully "
                "loaded cost per token of the overview). Stacked: the stack of one gateway is the "
                "model's whole cost.",
                PER_HOUR,
                query(
                    "A",
                    f"3600 * sum by (gateway, model_name, team, currency) ({TEAM_COST_FULL}{{{BY_TEAM}}})",
                    "{{team}} · {{model_name}} via {{gateway}} ({{currency}})",
                ),
                stacked=True,
            )
        )
        .with_panel(share_table())
        .with_panel(
            series(
                "Cost per team and token class, allocated (per hour)",
                "Idle excluded: the cost of the GPU time and energy each team's tokens used. Prompt "
                "tokens are input and cached_input where the gateway reports cached prompt tokens "
                "(OpenTelemetry gateways that do), billed_input (both) where it does not (LiteLLM).",
                PER_HOUR,
                query(
                    "A",
                    f"3600 * sum by (gateway, model_name, team, token_class, currency) ({TEAM_COST}{{{BY_TEAM}}})",
                    "{{team}} {{token_class}} · {{model_name}} via {{gateway}} ({{currency}})",
                ),
            )
        )
        .with_panel(
            series(
                "Idle cost carried by each team (per hour)",
                "The part of each team's fully loaded cost that paid for idle GPU time: its allocated "
                "cost x idle cost / non-idle cost of the model.",
                PER_HOUR,
                query(
                    "A",
                    f"3600 * sum by (gateway, model_name, team, currency) ({TEAM_IDLE}{{{BY_TEAM}}})",
                    "{{team}} · {{model_name}} via {{gateway}} ({{currency}})",
                ),
                stacked=True,
            )
        )
    )


def gateway_row() -> dash.Row:
    conservation = (
        f"sum by (gateway, model_name, currency) ({TEAM_COST_FULL}{{{BY_GATEWAY}}})\n"
        f"  / on (model_name, currency) group_left ()\n"
        f'(sum by (model_name, currency) ({FLEET_COST}{{model_name=~"$model_name"}}) > 0)'
    )
    teams_seen = (
        f"count by (gateway, model_name) (count by (gateway, model_name, team) ({GATEWAY_TOKENS}{{{BY_GATEWAY}}}))"
    )
    return (
        dash.Row("Gateway")
        .with_panel(
            series(
                "Tokens per team",
                "Tokens per second each team sent through the gateway, by token class, after the "
                'cap (teams beyond it are summed in team="other").',
                TOKENS_PER_S,
                query(
                    "A",
                    f"sum by (gateway, model_name, team, token_class) ({TEAM_TOKENS}{{{BY_TEAM}}})",
                    "{{team}} {{token_class}} · {{model_name}} via {{gateway}}",
                ),
            )
        )
        .with_panel(
            series(
                "Gateway coverage",
                "The gateway's tokens over the tokens vLLM served (the exporter's "
                "token_economy_tokens_total), per model and class. Below 100 %: "
                "traffic reaches vLLM around the gateway (its cost still goes to the gateway's teams, "
                "in proportion); above: the gateway counts tokens this model's exporters did not.",
                "percentunit",
                query("A", f"{COVERAGE}{{{BY_GATEWAY}}}", "{{model_name}} {{token_class}} via {{gateway}}"),
            )
        )
        .with_panel(
            single(
                "Teams' cost over the model's cost",
                "The fully loaded cost of all teams of a gateway over the model's whole cost (the "
                "exporter's token_economy_cost_total, idle included): 100 % "
                "when the gateway sees every token class the model served (the apportioning keeps "
                "the total).",
                "percentunit",
                query("A", conservation, "{{model_name}} via {{gateway}} ({{currency}})"),
                width=12,
                height=5,
            )
        )
        .with_panel(
            single(
                "Teams seen, before the cap",
                "Distinct teams with tokens in the last 5 minutes, before the cap: above the cap (50 teams per "
                'gateway and model by default), the smallest are summed in team="other" (the topk of '
                "token_economy:gateway_top_teams:rate5m; the chart's prometheusRule.chargebackTeams).",
                "none",
                query("A", teams_seen, "{{model_name}} via {{gateway}}"),
                width=12,
                height=5,
            )
        )
    )


def build() -> dash_model.Dashboard:
    board = (
        dashboard(
            TITLE,
            UID,
            "What each team's tokens cost, joining the gateway's per-team token counters with the "
            "exporter's cost per model and token class, idle included or not.",
            ["cost", "chargeback"],
        )
        .variables(variables())
        .with_row(cost_row())
        .with_row(gateway_row())
        .build()
    )
    return open_rows(board)  # every row open, its panels at the top level, as the overview's
