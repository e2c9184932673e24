"""The landing page's pieces: its figures are the ratios of the /metrics counters, everything from
outside is escaped, a ledger before its first tick renders, the history's memory is bounded, the
chart draws 0, 1 or many samples, and no division by zero shows NaN or Inf. The page in a real
browser, behind basic auth: tests/integration/test_landing_chromium.py."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import replace
from html.parser import HTMLParser
from types import MappingProxyType

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import _after_publish
from exporter.collector import LedgerCollector
from exporter.landing import (
    HEADERS,
    STACK,
    History,
    Sample,
    Setting,
    chart,
    followed_models,
    intervals,
    nice_ceiling,
    page,
    per_million,
    sample_of,
    share,
)
from exporter.ledger import Ledger, LedgerView
from exporter.loop import CollectionLoop
from exporter.server import MetricsCache, Routes
from tests.loop_rig import BUILD, ScriptedEnergy, ScriptedVllm, collection_rig, rig_attributor, step

SETTING = Setting("1.2.3", "http://vllm:8000", "auto", "EUR")
HOSTILE = "</td><script>alert(\"x\")</script><b a='1'>&amp;"


def view_of(
    t: float = 1.7e9,
    ticks: float = 1.0,
    model: str = "m",
    energy: dict[str, float] | None = None,
    tokens: dict[str, float] | None = None,
    cost: dict[str, float] | None = None,
    **fields: object,
) -> LedgerView:
    """A published view of one model's totals by class (cost: one rental component)."""
    energy = {"input": 300.0, "cached_input": 10.0, "output": 600.0, "idle": 90.0} if energy is None else energy
    tokens = {"input": 3000.0, "cached_input": 1000.0, "output": 1500.0} if tokens is None else tokens
    cost = {"input": 0.03, "cached_input": 0.001, "output": 0.06, "idle": 0.009} if cost is None else cost
    return replace(
        LedgerView.initial(),
        ticks=ticks,
        last_tick_unixtime=t,
        models=(model,),
        energy=MappingProxyType({(model, c): v for c, v in energy.items()}),
        tokens=MappingProxyType({(model, c): v for c, v in tokens.items()}),
        cost=MappingProxyType({(model, c, "rental"): v for c, v in cost.items()}),
        **fields,  # type: ignore[arg-type]
    )


class Elements(HTMLParser):
    """Every element's tag and attributes, and the text, of a page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def figures(self) -> dict[tuple[str, str, str], str]:
        """(model, class, figure) -> data-value of the per-model tables."""
        out, model, cls = {}, None, None
        for tag, attrs in self.tags:
            model = attrs.get("data-model", model) if tag == "section" else model
            cls = attrs.get("data-class", cls) if tag == "tr" else cls
            if tag == "td" and "data-figure" in attrs and model is not None:
                out[(model, cls, attrs["data-figure"])] = attrs["data-value"]
            if tag == "table" and attrs.get("id") == "recent":
                model = None
        return out


def no_nan_or_inf(body: bytes) -> bool:
    return not re.search(rb"\b(nan|inf|infinity)\b", body, re.IGNORECASE)


# ---- the figures


def test_the_figures_are_the_ratios_of_the_metrics_counters_of_the_same_view():
    loop, ledger, vllm, energy, registry = collection_rig()
    for t in range(1, 8):
        step(loop, vllm, energy, float(t), 1000.0 * t, 400.0 * t)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))

    def total(name: str, **labels: str) -> float:
        return sum(v for series, v in samples[name] if labels.items() <= series.items())

    shown = Elements(page(ledger.view(), SETTING).decode()).figures()
    assert shown
    for (model, cls, figure), value in shown.items():
        if figure == "tokens":
            assert float(value) == total("token_economy_tokens_total", model_name=model, token_class=cls)
        elif figure.endswith("_per_million_tokens"):
            name = "token_economy_energy_joules_total" if figure.startswith("joules") else "token_economy_cost_total"
            tokens = total("token_economy_tokens_total", model_name=model, token_class=cls)
            if not tokens:  # the rig serves no cached tokens: no figure, rather than a division by zero
                assert value == "" and cls == "cached_input"
                continue
            assert float(value) == total(name, model_name=model, token_class=cls) / tokens * 1e6
        else:
            name = "token_economy_energy_joules_total" if "energy" in figure else "token_economy_cost_total"
            whole = sum(total(name, model_name=model, token_class=c) for c in STACK)
            assert float(value) == total(name, model_name=model, token_class="idle") / whole


def test_a_view_s_figures_and_readable_numbers():
    body = page(view_of(), SETTING).decode()
    figures = Elements(body).figures()
    assert float(figures[("m", "input", "joules_per_million_tokens")]) == 300.0 / 3000.0 * 1e6
    assert float(figures[("m", "output", "cost_per_million_tokens")]) == 0.06 / 1500.0 * 1e6
    assert float(figures[("m", "idle", "idle_energy_share")]) == 90.0 / (90.0 + 300.0 + 10.0 + 600.0)
    assert "100 kJ" in body and "400 kJ" in body and "40 EUR" in body and "9.0 % of the energy" in body


def test_models_are_those_the_exposition_follows():
    view = replace(view_of(), models=("new",))
    assert followed_models(view) == ["new", "m"]


# ---- escaping


def test_everything_from_outside_is_escaped():
    view = view_of(model=HOSTILE, origins=MappingProxyType({"vllm": HOSTILE, "energy": HOSTILE}))
    setting = Setting(HOSTILE, HOSTILE, HOSTILE, HOSTILE)
    body = page(view, setting).decode()
    parsed = Elements(body)
    assert {tag for tag, _ in parsed.tags} <= {
        *("html", "head", "meta", "link", "title", "style", "body", "h1", "h2", "h3", "p", "b", "code", "ul", "li"),
        *("section", "table", "thead", "tbody", "tr", "th", "td", "svg", "rect", "line", "text", "polygon", "a"),
    }
    assert "script" not in {tag for tag, _ in parsed.tags}
    assert [attrs["data-model"] for tag, attrs in parsed.tags if tag == "section"] == [HOSTILE]
    assert sum(HOSTILE in text for text in parsed.text) >= 5  # the text reads as given, everywhere it shows
    assert "<script>" not in body and "</td><script" not in body


# ---- before the first tick


def test_a_ledger_before_its_first_tick_renders():
    ledger = Ledger()
    routes = Routes(MetricsCache(CollectorRegistry(), ledger), ledger, "http://vllm:8000", "auto")
    status, content_type, body, gzipped = routes.answer("/", {})
    assert (status, content_type, gzipped) == (200, "text/html; charset=utf-8", False)
    assert b"No tick completed yet" in body and b"No model seen yet" in body and b"no tick yet" in body
    assert b"Work counts from: <b>none yet</b>" in body and b'data-intervals="0"' in body
    assert no_nan_or_inf(body)


def test_the_page_and_only_the_page_carries_the_content_policy():
    ledger = Ledger()
    routes = Routes(MetricsCache(CollectorRegistry(), ledger), ledger, "http://v", "nvml")
    assert routes.headers("/") == routes.headers("/?x=1") == HEADERS
    assert routes.headers("/metrics") == routes.headers("/healthz") == ()
    policy = dict(HEADERS)["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script" not in policy


def test_large_sums_and_a_wall_clock_out_of_range_still_read():
    view = view_of(t=1e20, cost={"output": 30.0})
    body = page(view, SETTING).decode()
    assert "20,000 EUR" in body and "1e+20 s after the epoch" in body


def test_the_sources_are_named_with_what_they_mean_for_the_figures():
    view = view_of(origins=MappingProxyType({"vllm": "plugin", "energy": "phase-model"}), energy_modelled=True)
    body = page(view, SETTING).decode()
    assert "Work counts from: <b>plugin</b>. Energy from: <b>phase-model</b> (modelled, not measured)" in body
    assert "nothing measures the power" in body and 'data-fidelity="modelled"' in body


# ---- division by zero


def test_no_division_by_zero_shows_nan_or_inf():
    view = view_of(
        energy={"input": 5.0, "output": 0.0, "idle": 0.0},
        tokens={"input": 0.0, "cached_input": 0.0, "output": 0.0},
        cost={"input": 0.0},
    )
    body = page(view, SETTING, [sample_of(view)] * 3)
    figures = Elements(body.decode()).figures()
    assert figures[("m", "input", "joules_per_million_tokens")] == ""  # energy without tokens: no figure
    assert figures[("m", "idle", "idle_cost_share")] == ""  # no cost at all: no share
    assert no_nan_or_inf(body) and "—" in body.decode()


@pytest.mark.parametrize(
    ("amount", "whole"), [(1.0, 0.0), (0.0, 0.0), (math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (1e308, 1e-10)]
)
def test_ratios_are_none_where_they_mean_nothing(amount, whole):
    assert per_million(amount, whole) is None and share(amount, whole) is None


# ---- the history


def test_the_history_keeps_at_most_its_points_and_only_its_window():
    history = History(window_seconds=60.0, points=10)
    for t in range(10_000):
        history.record(view_of(t=1e9 + t))
    samples = history.samples()
    assert len(samples) <= 11
    assert samples[-1].unixtime == 1e9 + 9_999 - 3  # one every 6 s, the newest when its turn came
    assert samples[-1].unixtime - samples[0].unixtime <= 60.0 + 6.0
    assert all(b.unixtime - a.unixtime >= 6.0 for a, b in itertools.pairwise(samples))


def test_a_sample_s_size_does_not_grow_with_the_models():
    view = view_of()
    many = replace(
        view,
        energy=MappingProxyType({(f"m{i}", c): 1.0 for i in range(1000) for c in STACK}),
        tokens=MappingProxyType({(f"m{i}", c): 2.0 for i in range(1000) for c in STACK if c != "idle"}),
    )
    sample = sample_of(many)
    assert set(sample.energy) == set(sample.tokens) == set(STACK) and sample.energy["output"] == 1000.0


def test_departed_models_stay_in_the_totals():
    view = view_of(energy={"output": 5.0})
    archived = {"gone": MappingProxyType({"energy": MappingProxyType({("gone", "output"): 7.0})})}
    assert sample_of(replace(view, archive=MappingProxyType(archived))).energy["output"] == 12.0


def test_the_history_ignores_views_without_a_tick_and_starts_again_when_the_clock_goes_back():
    history = History(window_seconds=60.0, points=10)
    history.record(view_of(ticks=0.0, t=0.0))
    history.record(view_of(t=math.nan))
    assert history.samples() == ()
    history.record(view_of(t=1000.0))
    history.record(view_of(t=1003.0))  # too soon after the last sample
    history.record(view_of(t=1006.0))
    assert [s.unixtime for s in history.samples()] == [1000.0, 1006.0]
    history.record(view_of(t=500.0))
    assert [s.unixtime for s in history.samples()] == [500.0]


def test_the_history_refuses_a_window_it_cannot_hold():
    with pytest.raises(ValueError):
        History(window_seconds=0.0)
    with pytest.raises(ValueError):
        History(points=1)


def test_the_wiring_feeds_the_history_after_each_publication_and_renders_the_metrics():
    ledger, registry = Ledger(), CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, BUILD))
    cache, history = MetricsCache(registry, ledger), History(window_seconds=60.0, points=60)
    cache.render("", "")  # a scraper has asked once: the wiring renders this format after each tick
    wall = iter(1.7e9 + t for t in range(100))
    vllm, energy = ScriptedVllm(), ScriptedEnergy()
    loop = CollectionLoop(
        vllm, energy, rig_attributor(), ledger, structlog.get_logger(), 1.0,
        wall_clock=lambda: next(wall), published=_after_publish(ledger, cache, history),
    )  # fmt: skip
    for t in range(1, 4):
        step(loop, vllm, energy, float(t), 1000.0 * t, 400.0 * t)
    assert [s.unixtime for s in history.samples()] == [1.7e9, 1.7e9 + 1, 1.7e9 + 2]
    assert b"token_economy_last_tick_timestamp_seconds 1.700000002e+09" in cache.render("", "")[0]


# ---- the chart


def samples_every(seconds: float, count: int, watts: dict[str, float]) -> list[Sample]:
    return [
        Sample(1e9 + i * seconds, {c: w * i * seconds for c, w in watts.items()}, dict.fromkeys(STACK, 0.0), {})
        for i in range(count)
    ]


def test_the_chart_of_no_sample_and_of_one_says_why_it_is_empty():
    for samples, note in (([], "no tick yet"), (samples_every(5.0, 1, {"output": 100.0}), "one tick so far")):
        svg = chart(samples, 900.0)
        assert 'data-intervals="0"' in svg and note in svg and "<polygon" not in svg
        assert ">0 W<" in svg and "now" in svg and "−15 min" in svg


def test_the_chart_of_many_samples_stacks_the_classes():
    watts = {"idle": 100.0, "input": 50.0, "cached_input": 5.0, "output": 245.0}
    samples = samples_every(5.0, 200, watts)  # more than the window: the oldest fall off the chart's left
    spans = intervals(samples)
    assert all(span.watts == pytest.approx(watts) for span in spans)
    svg = chart(samples, 900.0)
    count = int(re.search(r'data-intervals="(\d+)"', svg).group(1))
    assert count == 180 and svg.count("<polygon") == 4
    assert ">400 W<" in svg and ">100 W<" in svg  # the axis tops the 400 W stack
    assert no_nan_or_inf(svg.encode())


def test_the_chart_counts_a_total_that_went_back_as_zero_and_skips_a_zero_length_interval():
    a = Sample(1e9, {"output": 100.0}, {}, {})
    b = Sample(1e9, {"output": 200.0}, {}, {})
    c = Sample(1e9 + 10, {"output": 50.0}, {}, {})
    (span,) = intervals([a, b, c])
    assert span.watts["output"] == 0.0


@pytest.mark.parametrize(("value", "top", "step"), [(0.0, 1.0, 0.25), (math.nan, 1.0, 0.25), (399.0, 400.0, 100.0)])
def test_the_axis_top_is_a_round_number_above_the_highest_stack(value, top, step):
    assert nice_ceiling(value) == (top, step)


def test_each_layer_is_a_closed_band_between_its_lower_and_upper_edges():
    svg = chart(samples_every(450.0, 3, {"idle": 100.0, "input": 0.0, "cached_input": 0.0, "output": 300.0}), 900.0)
    idle = re.search(r'data-class="idle" fill="[^"]+" points="([^"]+)"', svg).group(1).split()
    # Two steps of 100 W: along the top left to right, then along the axis right to left.
    assert [p.split(",")[0] for p in idle] == ["56.0", "382.0", "382.0", "708.0", "708.0", "382.0", "382.0", "56.0"]
    assert len({p.split(",")[1] for p in idle[:4]}) == 1 and len({p.split(",")[1] for p in idle[4:]}) == 1
