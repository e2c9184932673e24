"""The landing page `/`: what someone who port-forwards to the exporter wants at a glance. Per
model, the joules and the cost per million input, cached and output tokens since the exporter
started (exactly the ratios of the /metrics counters), the idle share, who supplies the readings
and how faithful they are, and an inline SVG chart of the power by class over the last minutes.

The page is one self-contained document: inline CSS, no script, no link to another host (the
`HEADERS` policy lets the browser load nothing else). Every text from outside (model names, the
sources' names, vLLM's URL) is escaped. Each figure carries its exact value in `data-value`
(Python's repr of the float) beside the rounded one a person reads.

`History` keeps the last minutes of totals for the chart: a bounded tuple of samples, fed by the
wiring after each tick with the ledger's new view, timed by the view's own tick timestamp.

The page reads the ledger's view by the fields it names (`View`), so this module imports nothing
of the package and sits beside the server as a leaf."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any, Protocol

CLASSES = ("input", "cached_input", "output")  # the token classes a price per token makes sense for
IDLE = "idle"
STACK = (IDLE, *CLASSES)  # the chart's layers, bottom first
COLOURS = {IDLE: "#b8b8b8", "input": "#4e79a7", "cached_input": "#76b7b2", "output": "#f28e2b"}
PER = 1e6  # figures are per million tokens
# What each origin a source reports means for the figures' fidelity (an unknown one is shown as named).
WORK_ORIGINS = {
    "plugin": "the stat-logger plugin inside vLLM: its own step counts",
    "vllm": "vLLM's /metrics page: steps estimated from its counters",
}
ENERGY_ORIGINS = {
    "plugin": "the GPUs' energy counters, read by the plugin inside vLLM",
    "nvml": "the GPUs' energy counters (NVML)",
    "dcgm": "dcgm-exporter's energy counters",
    "phase-model": "the declared phase model: nothing measures the power",
}

# The browser may load nothing but this document's own inline styles and data: images (the icon).
HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


class View(Protocol):
    """The fields of the ledger's view (exporter.ledger.LedgerView) the page reads. Keys are
    (model, class) and (model, class, component) tuples; read-only, as the view's are."""

    @property
    def tokens(self) -> Mapping[Any, float]: ...
    @property
    def energy(self) -> Mapping[Any, float]: ...
    @property
    def cost(self) -> Mapping[Any, float]: ...
    @property
    def gpu_power(self) -> Mapping[Any, float]: ...
    @property
    def archive(self) -> Mapping[str, Mapping[str, Mapping[Any, float]]]: ...
    @property
    def models(self) -> tuple[str, ...]: ...
    @property
    def origins(self) -> Mapping[str, str]: ...
    @property
    def energy_modelled(self) -> bool | None: ...
    @property
    def idle_measured(self) -> bool: ...
    @property
    def identified(self) -> bool: ...
    @property
    def ticks(self) -> float: ...
    @property
    def last_tick_unixtime(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Setting:
    """What the exporter was started with, as the page states it."""

    version: str
    vllm_url: str  # already without its password
    energy_source: str  # the setting's choice; what is in use now is the view's origins
    currency: str = ""


# ---- the history of the last minutes


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative totals of every model together (departed ones too, so a model leaving the
    exposition does not read as energy going backwards), by class, at one tick."""

    unixtime: float
    energy: Mapping[str, float]  # joules
    tokens: Mapping[str, float]
    cost: Mapping[str, float]  # every component


def sample_of(view: View) -> Sample:
    energy, tokens, cost = _by_class(view, "energy"), _by_class(view, "tokens"), _by_class(view, "cost")
    return Sample(view.last_tick_unixtime, energy, tokens, cost)


def _by_class(view: View, name: str) -> dict[str, float]:
    totals = dict.fromkeys(STACK, 0.0)
    departed = (kept.get(name, {}) for kept in view.archive.values())
    for mapping in (getattr(view, name), *departed):
        for key, value in mapping.items():
            totals[str(key[1])] = totals.get(str(key[1]), 0.0) + value
    return totals


class History:
    """The samples of the last `window_seconds`, at most one per `window_seconds / points`: its
    memory is bounded by `points` whatever the interval or the number of models. One writer (the
    tick's thread) replaces the tuple; a reader takes whichever tuple is current, without a lock."""

    def __init__(self, window_seconds: float = 900.0, points: int = 180) -> None:
        if window_seconds <= 0 or points < 2:
            raise ValueError("the history needs a positive window and at least two points")
        self.window_seconds = window_seconds
        self.points = points
        self._spacing = window_seconds / points
        self._samples: tuple[Sample, ...] = ()

    def record(self, view: View) -> None:
        """The view's totals, unless it has no completed tick or comes too soon after the last sample."""
        now = view.last_tick_unixtime
        if view.ticks <= 0 or not math.isfinite(now):
            return
        samples = self._samples
        if samples and now < samples[-1].unixtime:
            samples = ()  # the wall clock was set back: the old samples would draw a negative interval
        elif samples and now - samples[-1].unixtime < self._spacing:
            return
        # One sample older than the window stays, so the chart's first interval reaches its left edge.
        horizon = now - self.window_seconds - self._spacing
        kept = [s for s in samples if s.unixtime >= horizon][-(self.points) :]
        self._samples = (*kept, sample_of(view))

    def samples(self) -> tuple[Sample, ...]:
        return self._samples


# ---- figures


def per_million(amount: float, tokens: float) -> float | None:
    """amount / tokens x 1e6, as a reader of the counters computes it; None where it means nothing."""
    if not tokens > 0:
        return None
    value = amount / tokens * PER
    return value if math.isfinite(value) else None


def share(part: float, whole: float) -> float | None:
    if not whole > 0:
        return None
    value = part / whole
    return value if math.isfinite(value) else None


def followed_models(view: View) -> list[str]:
    """The models the exposition has series for: the latest reading's and those still counted."""
    keys = (*view.tokens, *view.energy)
    return list(dict.fromkeys([*view.models, *(str(key[0]) for key in keys)]))


def _cost_by_class(view: View) -> dict[tuple[str, str], float]:
    """Cost per (model, class), its components summed in the order the exposition lists them."""
    totals: dict[tuple[str, str], float] = {}
    for (model, cls, _component), value in view.cost.items():
        key = (str(model), str(cls))
        totals[key] = totals.get(key, 0.0) + value
    return totals


# ---- formatting


def _si(value: float | None, unit: str) -> str:
    """Three significant digits with an SI prefix: 1.23 MJ, 456 W, 7.8 mJ."""
    if value is None:
        return "—"
    magnitude = abs(value)
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ")):
        if magnitude >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _money(value: float | None, currency: str) -> str:
    if value is None:
        return "—"
    digits = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"  # 12,345 rather than 1.23e+04
    return f"{digits} {currency}".rstrip()


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _figure(name: str, value: float | None, shown: str) -> str:
    """A table cell a person reads and a test parses: the exact float in data-value ("" for none)."""
    exact = "" if value is None else repr(value)
    return f'<td data-figure="{name}" data-value="{exact}">{escape(shown)}</td>'


def _utc(unixtime: float) -> str:
    try:
        return datetime.fromtimestamp(unixtime, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # a wall clock far out of range: the number as it is
        return f"{unixtime!r} s after the epoch"


# ---- the page's parts


def _fidelity(view: View, setting: Setting) -> str:
    work = view.origins.get("vllm", "none yet")
    energy = view.origins.get("energy", "none yet")
    kind = {True: "modelled, not measured", False: "measured", None: "no reading yet"}[view.energy_modelled]
    fidelity = {True: "modelled", False: "measured", None: "none"}[view.energy_modelled]
    idle = "measured in idle intervals" if view.idle_measured else "the prior, until enough idle intervals are seen"
    split = "fitted from the data" if view.identified else "the prior (the data do not separate them yet)"
    return f"""<h2>Sources</h2>
<p>Work counts from: <b>{escape(work)}</b>. Energy from: <b>{escape(energy)}</b> ({kind}).
Energy source setting: {escape(setting.energy_source)}.</p>
<ul><li>Work: {escape(WORK_ORIGINS.get(work, work))}.</li>
<li>Energy: {escape(ENERGY_ORIGINS.get(energy, energy))}.</li></ul>
<p data-fidelity="{fidelity}">Idle power: {idle}. Input against output cost: {split}.</p>"""


def _tick(view: View) -> str:
    if view.ticks <= 0:
        return '<p id="tick" data-unixtime="">No tick completed yet: the figures appear after the first.</p>'
    stamp = view.last_tick_unixtime
    power = sum(view.gpu_power.values())
    return (
        f'<p id="tick" data-unixtime="{stamp!r}">As of the tick at <b>{_utc(stamp)}</b>. '
        f"GPU power now: <b>{escape(_si(power, 'W'))}</b>.</p>"
    )


def _model_table(view: View, model: str, cost: Mapping[tuple[str, str], float], currency: str) -> str:
    rows = []
    for cls in CLASSES:
        tokens = view.tokens.get((model, cls), 0.0)
        joules = per_million(view.energy.get((model, cls), 0.0), tokens)
        money = per_million(cost.get((model, cls), 0.0), tokens)
        rows.append(
            f'<tr data-class="{cls}"><th>{cls}</th>{_figure("tokens", tokens, _count(tokens))}'
            f"{_figure('joules_per_million_tokens', joules, _si(joules, 'J'))}"
            f"{_figure('cost_per_million_tokens', money, _money(money, currency))}</tr>"
        )
    energy_all = sum(view.energy.get((model, cls), 0.0) for cls in STACK)
    cost_all = sum(cost.get((model, cls), 0.0) for cls in STACK)
    idle_energy = share(view.energy.get((model, IDLE), 0.0), energy_all)
    idle_cost = share(cost.get((model, IDLE), 0.0), cost_all)
    return f"""<section class="model" data-model="{escape(model)}"><h3>{escape(model)}</h3>
<table><thead><tr><th>class</th><th>tokens</th><th>per million tokens</th><th>{escape(currency)} per million tokens</th>
</tr></thead><tbody>{"".join(rows)}</tbody></table>
<table class="idle"><tbody><tr data-class="idle"><th>idle share</th>
{_figure("idle_energy_share", idle_energy, _percent(idle_energy) + " of the energy")}
{_figure("idle_cost_share", idle_cost, _percent(idle_cost) + " of the cost")}</tr></tbody></table></section>"""


def _models(view: View, currency: str) -> str:
    models = followed_models(view)
    if not models:
        return "<h2>Since start</h2><p>No model seen yet.</p>"
    cost = _cost_by_class(view)
    tables = "\n".join(_model_table(view, model, cost, currency) for model in models)
    return f"""<h2>Since start</h2>
<p>Energy and cost each class was allocated, per million of its own tokens (idle excluded: it is shown as a share).</p>
{tables}"""


def within(samples: Sequence[Sample], window: float) -> Sequence[Sample]:
    """The samples of the `window` seconds up to the newest."""
    return [s for s in samples if s.unixtime >= samples[-1].unixtime - window] if samples else ()


def _recent(samples: Sequence[Sample], currency: str) -> str:
    """The same ratios over the history's span, every model together."""
    if len(samples) < 2:
        return ""
    first, last = samples[0], samples[-1]
    seconds = last.unixtime - first.unixtime
    rows = []
    for cls in STACK:
        tokens = last.tokens.get(cls, 0.0) - first.tokens.get(cls, 0.0)
        joules = last.energy.get(cls, 0.0) - first.energy.get(cls, 0.0)
        money = last.cost.get(cls, 0.0) - first.cost.get(cls, 0.0)
        watts = share(joules, seconds)
        per_j, per_c = (None, None) if cls == IDLE else (per_million(joules, tokens), per_million(money, tokens))
        rows.append(
            f'<tr data-class="{cls}"><th>{cls}</th>{_figure("mean_watts", watts, _si(watts, "W"))}'
            f"{_figure('joules_per_million_tokens', per_j, _si(per_j, 'J'))}"
            f"{_figure('cost_per_million_tokens', per_c, _money(per_c, currency))}</tr>"
        )
    caption = f"Every model together, the last {seconds / 60:.0f} min"
    return f"""<table id="recent" data-seconds="{seconds!r}"><caption>{caption}</caption>
<thead><tr><th>class</th><th>mean power</th><th>per million tokens</th>
<th>{escape(currency)} per million tokens</th></tr></thead><tbody>{"".join(rows)}</tbody></table>"""


# ---- the chart: stacked power by class, one step per interval between samples

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 28, 36
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


Scale = Callable[[float], float]  # a value to its SVG coordinate


@dataclass(frozen=True, slots=True)
class Interval:
    start: float
    end: float
    watts: Mapping[str, float]  # by class; a class whose total went back counts 0


def intervals(samples: Sequence[Sample]) -> list[Interval]:
    out = []
    for a, b in itertools.pairwise(samples):
        seconds = b.unixtime - a.unixtime
        if seconds > 0:
            watts = {cls: max(0.0, b.energy.get(cls, 0.0) - a.energy.get(cls, 0.0)) / seconds for cls in STACK}
            out.append(Interval(a.unixtime, b.unixtime, watts))
    return out


def nice_ceiling(value: float) -> tuple[float, float]:
    """The axis top above `value` and its tick step, a 1, 2 or 5 times a power of ten (4-5 ticks)."""
    if not value > 0 or not math.isfinite(value):
        return 1.0, 0.25
    raw = value / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return step * math.ceil(value / step), step


def _layers(spans: Sequence[Interval], x: Scale, y: Scale) -> str:
    paths = []
    for index, cls in enumerate(STACK):
        upper, lower = [], []
        for span in spans:
            below = sum(span.watts[c] for c in STACK[:index])
            top = below + span.watts[cls]
            x0, x1 = x(span.start), x(span.end)
            upper += [f"{x0:.1f},{y(top):.1f}", f"{x1:.1f},{y(top):.1f}"]
            lower += [f"{x0:.1f},{y(below):.1f}", f"{x1:.1f},{y(below):.1f}"]  # walked back below
        if upper:
            points = " ".join(upper + lower[::-1])
            paths.append(f'<polygon data-class="{cls}" fill="{COLOURS[cls]}" points="{points}"/>')
    return "".join(paths)


def _axes(window: float, top: float, step: float, y: Scale) -> str:
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#888"/>']
    for index in range(round(top / step) + 1):
        watts = index * step
        level = y(watts)
        parts.append(f'<line x1="{LEFT - 4}" x2="{LEFT + PLOT_W}" y1="{level:.1f}" y2="{level:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{level + 4:.1f}" text-anchor="end">{escape(_si(watts, "W"))}</text>')
    minutes = round(window / 60)
    for before in range(0, minutes + 1, max(1, minutes // 3)):
        at = LEFT + PLOT_W * (1 - before * 60 / window)
        label = "now" if before == 0 else f"−{before} min"
        parts.append(f'<text x="{at:.1f}" y="{TOP + PLOT_H + 16}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 4}" text-anchor="middle">before the last tick</text>')
    parts.append(f'<text x="{LEFT}" y="{TOP - 10}" text-anchor="middle">watts</text>')
    return "".join(parts)


def _legend() -> str:
    items = []
    for index, cls in enumerate(reversed(STACK)):
        at = WIDTH - RIGHT - 110 * (index + 1)
        items.append(f'<rect x="{at}" y="6" width="10" height="10" fill="{COLOURS[cls]}"/>')
        items.append(f'<text x="{at + 14}" y="15">{cls}</text>')
    return "".join(items)


def chart(samples: Sequence[Sample], window: float) -> str:
    """An inline SVG of the power by class over the `window` seconds before the newest sample."""
    newest = samples[-1].unixtime if samples else 0.0
    spans = [s for s in intervals(samples) if s.end > newest - window]
    highest = max((sum(s.watts.values()) for s in spans), default=0.0)
    top, step = nice_ceiling(highest)

    def x(unixtime: float) -> float:
        return LEFT + PLOT_W * (1 - min(window, max(0.0, newest - unixtime)) / window)

    def y(watts: float) -> float:
        return TOP + PLOT_H * (1 - watts / top)

    note = ""
    if not spans:
        what = "no tick yet" if not samples else "one tick so far: the power shows from the next"
        note = f'<text x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H / 2}" text-anchor="middle">{what}</text>'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart" data-intervals="{len(spans)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="GPU power by token class, the last {window / 60:.0f} minutes" font-size="11" '
        f'font-family="sans-serif"><title>GPU power by token class</title>'
        f"{_axes(window, top, step, y)}{_layers(spans, x, y)}{_legend()}{note}</svg>"
    )


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:60em}
table{border-collapse:collapse;margin:.4em 0}th,td{padding:.2em .7em;text-align:right}
th:first-child{text-align:left}thead th{border-bottom:1px solid #aaa}caption{text-align:left;font-weight:bold}
section.model{margin:1em 0}code{background:#f2f2f2;padding:0 .2em}svg{max-width:100%;height:auto}"""


def page(view: View, setting: Setting, samples: Sequence[Sample] = (), window: float = 900.0) -> bytes:
    """The landing page for this view, with the chart of `samples` over `window` seconds."""
    recent = _recent(within(samples, window), setting.currency)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<title>Token Economy Exporter</title><style>{STYLE}</style></head><body>
<h1>Token Economy Exporter {escape(setting.version)}</h1>
<p>What each input and output token of the vLLM server at <code>{escape(setting.vllm_url)}</code> costs,
in joules and money (energy source setting: {escape(setting.energy_source)}).</p>
{_tick(view)}
{_fidelity(view, setting)}
{_models(view, setting.currency)}
<h2>The last {window / 60:.0f} minutes</h2>
{chart(samples, window)}
{recent}
<p><a href="metrics">/metrics</a> · <a href="healthz">/healthz</a> · <a href="readyz">/readyz</a></p>
</body></html>""".encode()
