"""Pages in two LLM gateways' Prometheus names, counting per team the tokens an exporter counted
per model: what the chargeback rules join with the exporter's cost.

- `otel`: the OpenTelemetry GenAI histogram `gen_ai.client.token.usage` ({token}) as a Prometheus
  scrape of it shows it (the Envoy AI Gateway's external processor, or the OpenTelemetry
  Collector's Prometheus exporter): `gen_ai_client_token_usage_{bucket,sum,count}` with
  `gen_ai_token_type` input (every prompt token, cached ones included), cached_input, output and
  total, the request and response model, and the `team` attribute copied from a request header
  (absent on requests without it).
- `litellm`: the LiteLLM proxy's `litellm_input_tokens_metric_total` and
  `litellm_output_tokens_metric_total` by end_user, hashed_api_key, api_key_alias, model, team,
  team_alias, user and requested_model; `model` carries LiteLLM's provider prefix.

Each page is computed when it is read, from the exporter's token counters at that moment
(`totals()`), split over the teams by fixed weights: the gateways see the exporter's traffic, so
their counters are monotonic and their coverage is about 1. The LiteLLM page has more teams than
the rules' cap (50), with distinct sizes, so the smallest are folded into team="other".
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.vllm_server import HOST

# model_name -> token_class (input, cached_input, output) -> tokens counted so far
Totals = dict[str, dict[str, float]]

# OpenTelemetry gateway: (team or None for requests without the header) -> share of the computed
# input, of the cached input and of the output tokens.
OTEL_TEAMS: dict[str | None, tuple[float, float, float]] = {
    "search": (0.5, 0.25, 0.4),
    "ads": (0.3, 0.75, 0.4),
    None: (0.2, 0.0, 0.2),
}
OTEL_REQUEST_MODEL = "chat-default"  # the public name clients ask for; the response names vLLM's

# LiteLLM: three large teams (one with two keys, one without an alias, and keys without a team),
# then SMALL_TEAMS small ones of distinct sizes: 53 teams in all.
SMALL_TEAMS = 50
LITELLM_KEYS: list[dict[str, Any]] = [
    {
        "team": "t-search",
        "team_alias": "search",
        "hashed_api_key": "88dc28d0",
        "api_key_alias": "search-web",
        "w": 0.25,
    },
    {
        "team": "t-search",
        "team_alias": "search",
        "hashed_api_key": "5e884898",
        "api_key_alias": "search-batch",
        "w": 0.15,
    },
    {"team": "t-ads", "team_alias": "None", "hashed_api_key": "2c26b46b", "api_key_alias": "", "w": 0.3},
    {"team": "None", "team_alias": "None", "hashed_api_key": "fcde2b2e", "api_key_alias": "", "w": 0.1},
] + [
    {
        "team": f"team-{k:02d}",
        "team_alias": "",
        "hashed_api_key": f"k{k:02d}",
        "api_key_alias": "",
        "w": 0.2 * k / (SMALL_TEAMS * (SMALL_TEAMS + 1) / 2),
    }
    for k in range(1, SMALL_TEAMS + 1)
]
LITELLM_REQUESTED_MODEL = "llama-prod"
CAP = 50
# The teams the rules fold into "other": the smallest beyond the cap.
FOLDED = [f"team-{k:02d}" for k in range(1, len({key["team"] for key in LITELLM_KEYS}) - CAP + 1)]


def exposition_totals(text: str) -> Totals:
    """An exporter's tokens per model and class, from its /metrics page: what the pages split over
    teams (models that have not yet counted every class are left out)."""
    totals: Totals = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "token_economy_tokens_total":
                totals.setdefault(sample.labels["model_name"], {})[sample.labels["token_class"]] = sample.value
    return {m: t for m, t in totals.items() if {"input", "cached_input", "output"} <= set(t)}


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def otel_page(totals: Totals) -> str:
    lines = [
        "# HELP gen_ai_client_token_usage Number of tokens processed.",
        "# TYPE gen_ai_client_token_usage histogram",
    ]
    for model, t in sorted(totals.items()):
        for team, (w_in, w_cached, w_out) in OTEL_TEAMS.items():
            computed, cached, output = w_in * t["input"], w_cached * t["cached_input"], w_out * t["output"]
            types = {"input": computed + cached, "output": output, "total": computed + cached + output}
            if w_cached:
                types["cached_input"] = cached
            for token_type, value in types.items():
                labels = {
                    "gen_ai_operation_name": "chat",
                    "gen_ai_provider_name": "openai",
                    "gen_ai_original_model": OTEL_REQUEST_MODEL,
                    "gen_ai_request_model": OTEL_REQUEST_MODEL,
                    "gen_ai_response_model": model,
                    "gen_ai_token_type": token_type,
                    "otel_scope_name": "envoyproxy/ai-gateway",
                }
                if team is not None:
                    labels["team"] = team
                requests = math.floor(value / 64)  # a plausible request count, monotonic with the sum
                for le in ("1024", "+Inf"):
                    lines.append(f"gen_ai_client_token_usage_bucket{{{_labels({**labels, 'le': le})}}} {requests}")
                lines.append(f"gen_ai_client_token_usage_sum{{{_labels(labels)}}} {value!r}")
                lines.append(f"gen_ai_client_token_usage_count{{{_labels(labels)}}} {requests}")
    return "\n".join(lines) + "\n"


def litellm_page(totals: Totals, model_prefix: str) -> str:
    out = []
    for metric, what in (("litellm_input_tokens_metric", "input"), ("litellm_output_tokens_metric", "output")):
        out += [f"# HELP {metric} Total number of {what} tokens from LLM requests", f"# TYPE {metric} counter"]
        for model, t in sorted(totals.items()):
            tokens = t["input"] + t["cached_input"] if what == "input" else t["output"]
            for user, key in enumerate(LITELLM_KEYS):
                labels = {
                    "end_user": "",
                    "hashed_api_key": key["hashed_api_key"],
                    "api_key_alias": key["api_key_alias"],
                    "model": f"{model_prefix}{model}",
                    "team": key["team"],
                    "team_alias": key["team_alias"],
                    "user": f"u-{user}",
                    "requested_model": LITELLM_REQUESTED_MODEL,
                }
                out.append(f"{metric}_total{{{_labels(labels)}}} {key['w'] * tokens!r}")
    return "\n".join(out) + "\n"


class GatewayPages:
    """Two HTTP servers on loopback, `otel_address` and `litellm_address`, each serving its page at
    /metrics from the exporter's totals at the moment of the request (the last good ones when
    `totals()` fails)."""

    def __init__(self, totals: Callable[[], Totals], litellm_model_prefix: str = "hosted_vllm/") -> None:
        self._totals = totals
        self._last: Totals = {}
        self._lock = threading.Lock()
        self.scrapes = 0
        pages = {
            "otel": otel_page,
            "litellm": lambda t: litellm_page(t, litellm_model_prefix),
        }
        self._servers = {name: self._server(render) for name, render in pages.items()}
        self._threads = [
            threading.Thread(target=s.serve_forever, name=f"gateway-{n}", daemon=True) for n, s in self._servers.items()
        ]

    def _current(self) -> Totals:
        with self._lock:
            with contextlib.suppress(Exception):  # an exporter that does not answer: the last page
                self._last = self._totals() or self._last
            self.scrapes += 1
            return self._last

    def _server(self, render: Callable[[Totals], str]) -> ThreadingHTTPServer:
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_response(404)
                    self.end_headers()
                    return
                body = render(pages._current()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return ThreadingHTTPServer((HOST, 0), Handler)

    def address(self, gateway: str) -> str:
        return f"{HOST}:{self._servers[gateway].server_address[1]}"

    def __enter__(self) -> GatewayPages:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
