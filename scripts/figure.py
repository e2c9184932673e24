#!/usr/bin/env python3
"""README's figure: docs/figures/overview.svg, drawn from the benchmark output docs/figures/overview.json.

  python scripts/figure.py                  draw the SVG from the committed JSON (written only if it differs)
  python scripts/figure.py --check          write nothing; exit 1 with a unified diff if the SVG is not the
                                            JSON's drawing (tests/unit/test_readme_figure.py runs it)
  python scripts/figure.py --refresh        rerun the benchmark to rewrite the JSON, then draw the SVG:
                                            benchmarks/figure_data.py, about 1 s for the timeline and 20 s to a
                                            minute on two cores for bench_accuracy's well_mixed cases
  python scripts/figure.py --refresh --timeline-only   rerun only the timeline (keep the JSON's accuracy part)

It runs from any directory. The JSON holds the numbers (see benchmarks/figure_data.py for how they
are made: seeded, in virtual time, so a rerun gives the same ones); this script only draws them, in
plain SVG with fixed number formatting and no timestamp, so the same JSON always gives the same
bytes. Three panels:

  A  the GPU's power by class (input, cached input, output, idle) as the exporter allocated it,
     tick by tick, over ten virtual minutes of `simulate --scenario bursty_idle`, with the
     simulator's oracle drawn over it;
  B  the cumulative cost per million tokens of each class over the same run, allocated (rental
     follows GPU time) and fully loaded (idle cost spread over the classes in proportion to their
     cost), with the idle share of the money;
  C  the error of the exporter's input and output energy shares against the simulator's two
     truths (component and phase), on both paths (vLLM's counters, the plugin) at 1, 5 and 15 s,
     well_mixed, 20 virtual minutes: bench_accuracy's own figures, with its targets shaded.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = "docs/figures/overview.json"
SVG = "docs/figures/overview.svg"

WIDTH, HEIGHT = 960, 880
FONT = "Helvetica, Arial, sans-serif"
INK, MUTED, GRID, AXIS = "#1f2328", "#59636e", "#e4e7eb", "#8c959f"
COLOURS = {"input": "#2f6fc0", "cached_input": "#5fb7d4", "output": "#e8833a", "idle": "#b4bac1"}
LABELS = {"input": "input", "cached_input": "cached input", "output": "output", "idle": "idle"}
STACK = ("idle", "input", "cached_input", "output")  # bottom to top
TARGET_FILL, TARGET_INK = "#dbf0e0", "#1a7f37"
TRUTH_LABELS = {"component": "component truth", "phase": "phase truth"}
PATH_LABELS = {"counters": "vLLM counters", "plugin": "plugin"}
# bench_accuracy's targets for well_mixed, by (path, truth): the shaded band of panel C.
TARGETS = {
    ("counters", "component"): 0.05,
    ("plugin", "component"): 0.03,
    ("counters", "phase"): 0.10,
    ("plugin", "phase"): 0.05,
}


# -- numbers and text ---------------------------------------------------------------------------


def num(x: float) -> str:
    """A coordinate: one decimal, no negative zero."""
    text = f"{x:.1f}"
    return "0.0" if text == "-0.0" else text


def signed(x: float, digits: int = 1) -> str:
    """+1.2 / −3.4 with a true minus sign."""
    text = f"{x:+.{digits}f}"
    if float(text) == 0:
        text = f"{0:.{digits}f}"
    return text.replace("-", "\u2212")


def percent(x: float, digits: int = 0) -> str:
    return f"{x * 100:.{digits}f} %"


def money(x: float) -> str:
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


class Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(
        self,
        x: float,
        y: float,
        content: str,
        *,
        size: float = 12,
        anchor: str = "start",
        fill: str = INK,
        weight: str = "normal",
        rotate: bool = False,
    ) -> None:
        attrs = f'x="{num(x)}" y="{num(y)}" font-size="{size:g}" fill="{fill}"'
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if weight != "normal":
            attrs += f' font-weight="{weight}"'
        if rotate:
            attrs += f' transform="rotate(-90 {num(x)} {num(y)})"'
        self.add(f"<text {attrs}>{escape(content)}</text>")

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1, dash: str = "") -> None:
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" stroke="{stroke}" '
            f'stroke-width="{width:g}"{extra}/>'
        )

    def rect(self, x: float, y: float, w: float, h: float, fill: str, extra: str = "") -> None:
        self.add(f'<rect x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}" fill="{fill}"{extra}/>')

    def polyline(self, points: Iterable[tuple[float, float]], stroke: str, width: float = 1.5, dash: str = "") -> None:
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        coords = " ".join(f"{num(x)},{num(y)}" for x, y in points)
        self.add(
            f'<polyline points="{coords}" fill="none" stroke="{stroke}" stroke-width="{width:g}" '
            f'stroke-linejoin="round"{extra}/>'
        )

    def polygon(self, points: Iterable[tuple[float, float]], fill: str) -> None:
        coords = " ".join(f"{num(x)},{num(y)}" for x, y in points)
        self.add(f'<polygon points="{coords}" fill="{fill}"/>')


def nice_step(span: float, target: int) -> float:
    """A 1, 2, 2.5 or 5 times a power of ten step giving about `target` intervals over `span`."""
    raw = span / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


class Axes:
    """A plot area: data ranges mapped to pixels (y can be logarithmic)."""

    def __init__(self, left: float, top: float, width: float, height: float, x: tuple[float, float]) -> None:
        self.left, self.top, self.width, self.height = left, top, width, height
        self.x0, self.x1 = x
        self.y0, self.y1 = 0.0, 1.0
        self.log = False

    def set_y(self, low: float, high: float, log: bool = False) -> None:
        self.log = log
        self.y0, self.y1 = (math.log10(low), math.log10(high)) if log else (low, high)

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.width

    def py(self, y: float) -> float:
        value = math.log10(y) if self.log else y
        return self.top + self.height - (value - self.y0) / (self.y1 - self.y0) * self.height

    @property
    def bottom(self) -> float:
        return self.top + self.height

    @property
    def right(self) -> float:
        return self.left + self.width


# -- the figure -------------------------------------------------------------------------------


def render(document: dict[str, Any]) -> str:
    """The SVG's text for one JSON document: the same document always gives the same bytes."""
    timeline, accuracy = document["timeline"], document["accuracy"]
    run = timeline["run"]
    svg = Svg()
    svg.rect(0, 0, WIDTH, HEIGHT, "#ffffff")
    svg.text(
        24,
        34,
        "Token Economy Exporter: where a vLLM GPU's energy and money go, per token class",
        size=19,
        weight="bold",
    )
    svg.text(
        24,
        56,
        f"Simulated vLLM ({run['model']} on {run['gpus']}\u00d7{run['gpu']}) and the exporter's real attribution "
        "core in virtual time; the simulator's oracle knows the true split.",
        size=12.5,
        fill=MUTED,
    )
    power_panel(svg, timeline, Axes(78, 144, 850, 200, (0.0, run["duration_seconds"] / 60)))
    cost_panel(svg, timeline, Axes(78, 466, 300, 256, (0.0, run["duration_seconds"] / 60)))
    accuracy_panel(svg, accuracy, Axes(500, 466, 428, 256, (0.0, 1.0)))
    svg.text(
        24,
        HEIGHT - 14,
        "Data: docs/figures/overview.json (benchmarks/figure_data.py, seeded). Redraw: python scripts/figure.py; "
        "rerun the benchmark: python scripts/figure.py --refresh",
        size=11,
        fill=MUTED,
    )
    title = "Token Economy Exporter: power and cost per token class over time, and accuracy against two truths"
    desc = description(timeline, accuracy)
    head = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'font-family="{FONT}" role="img" aria-labelledby="title desc">',
        f'<title id="title">{escape(title)}</title>',
        f'<desc id="desc">{escape(desc)}</desc>',
    ]
    return "\n".join([*head, *svg.parts, "</svg>"]) + "\n"


def totals(series: dict[str, Sequence[float]]) -> dict[str, float]:
    return {cls: math.fsum(values) for cls, values in series.items()}


def description(timeline: dict[str, Any], accuracy: dict[str, Any]) -> str:
    energy = totals(timeline["energy_joules"])
    cost = totals(timeline["cost"])
    all_energy, all_cost = math.fsum(energy.values()), math.fsum(cost.values())
    worst = max(
        abs(c["share_error"][cls]) for c in accuracy["cases"] for cls in ("input", "output") if c["share_error"][cls]
    )
    return (
        f"Panel A: GPU power by class over {timeline['run']['duration_seconds'] / 60:g} virtual minutes of "
        f"{timeline['run']['scenario']} traffic; input {percent(energy['input'] / all_energy)}, output "
        f"{percent(energy['output'] / all_energy)}, idle {percent(energy['idle'] / all_energy)} of the energy. "
        f"Panel B: cost per million tokens per class; idle takes {percent(cost['idle'] / all_cost)} of the money. "
        f"Panel C: error of the input and output energy shares against the component and phase truths, "
        f"{accuracy['scenario']}, at most {percent(worst, 1)}."
    )


def legend(svg: Svg, x: float, y: float, entries: Sequence[tuple[str, str, str]]) -> None:
    """Entries of (kind, colour, label), laid out left to right; kind: box, line, dash."""
    for kind, colour, label in entries:
        if kind == "box":
            svg.rect(x, y - 9, 12, 11, colour)
        else:
            svg.line(x, y - 3.5, x + 18, y - 3.5, colour, 2, "5 3" if kind == "dash" else "")
        width = 12 if kind == "box" else 18
        svg.text(x + width + 5, y, label, size=11.5)
        x += width + 5 + 6.4 * len(label) + 16


def heading(svg: Svg, ax: Axes, title: str, subtitle: str, indent: float) -> None:
    """A panel's title and subtitle above its legend line (ax.top - 12)."""
    svg.text(ax.left - indent, ax.top - 52, title, size=14.5, weight="bold")
    svg.text(ax.left - indent, ax.top - 33, subtitle, size=11.5, fill=MUTED)


def x_time_axis(svg: Svg, ax: Axes, step: float) -> None:
    tick = 0.0
    while tick <= ax.x1 + 1e-9:
        svg.line(ax.px(tick), ax.bottom, ax.px(tick), ax.bottom + 4, AXIS)
        svg.text(ax.px(tick), ax.bottom + 17, f"{tick:g}", size=11, anchor="middle", fill=MUTED)
        tick += step
    svg.line(ax.left, ax.bottom, ax.right, ax.bottom, AXIS)
    middle = (ax.left + ax.right) / 2
    svg.text(middle, ax.bottom + 33, "virtual time (minutes)", size=11.5, anchor="middle", fill=MUTED)


def y_label(svg: Svg, ax: Axes, label: str) -> None:
    svg.text(ax.left - 50, (ax.top + ax.bottom) / 2, label, size=11.5, anchor="middle", fill=MUTED, rotate=True)


def y_linear_axis(svg: Svg, ax: Axes, step: float, label: str, percent_ticks: bool = False) -> None:
    first, last = math.ceil(ax.y0 / step - 1e-9), math.floor(ax.y1 / step + 1e-9)
    for k in range(first, last + 1):
        tick = k * step
        y = ax.py(tick)
        svg.line(ax.left, y, ax.right, y, GRID)
        text = (signed(tick * 100, 0) + " %" if k else "0") if percent_ticks else f"{tick:g}"
        svg.text(ax.left - 7, y + 4, text, size=11, anchor="end", fill=MUTED)
    y_label(svg, ax, label)


def _steps(
    ax: Axes, starts: Sequence[float], ends: Sequence[float], values: Sequence[float]
) -> list[tuple[float, float]]:
    """A step line: each tick's value held over its interval."""
    points: list[tuple[float, float]] = []
    for start, end, value in zip(starts, ends, values):
        y = ax.py(value)
        points += [(ax.px(start), y), (ax.px(end), y)]
    return points


def power_panel(svg: Svg, timeline: dict[str, Any], ax: Axes) -> None:
    run = timeline["run"]
    interval = run["interval_seconds"]
    ends = [x / 60 for x in timeline["t_seconds"]]
    starts = [max(x - interval / 60, 0.0) for x in ends]
    watts = {cls: [j / interval for j in timeline["energy_joules"][cls]] for cls in STACK}
    true_watts = {cls: [j / interval for j in timeline["true_energy_joules"][cls]] for cls in STACK}
    top = max(math.fsum(watts[c][i] for c in STACK) for i in range(len(ends)))
    step = nice_step(top, 7)
    ax.set_y(0.0, math.ceil(top * 1.05 / step) * step)
    energy, truth = totals(timeline["energy_joules"]), totals(timeline["true_energy_joules"])
    all_energy, all_truth = math.fsum(energy.values()), math.fsum(truth.values())
    shares = ", ".join(
        f"{LABELS[c]} {percent(energy[c] / all_energy)} (true {percent(truth[c] / all_truth)})"
        for c in ("input", "output", "idle")
    )
    heading(
        svg,
        ax,
        f"A. GPU power by class, as the exporter splits it every {interval:g} s",
        f"{run['scenario']} traffic (bursts of requests, idle gaps): {all_energy / 1000:.1f} kJ in "
        f"{run['duration_seconds'] / 60:g} min; {shares}",
        54,
    )
    y_linear_axis(svg, ax, step, "power (W)")
    below = [0.0] * len(ends)
    true_below = [0.0] * len(ends)
    boundaries: list[list[float]] = []
    for cls in STACK:
        above = [b + w for b, w in zip(below, watts[cls])]
        if any(w > 0 for w in watts[cls]):
            upper, lower = _steps(ax, starts, ends, above), _steps(ax, starts, ends, below)
            svg.polygon([*upper, *reversed(lower)], COLOURS[cls])
        below = above
        true_below = [b + w for b, w in zip(true_below, true_watts[cls])]
        if cls != STACK[-1] and (not boundaries or true_below != boundaries[-1]):
            boundaries.append(true_below)
    # The oracle's boundaries between the classes (not the top: the total is measured, not split).
    for boundary in boundaries:
        svg.polyline(_steps(ax, starts, ends, boundary), INK, 1.2, "4 3")
    x_time_axis(svg, ax, nice_step(ax.x1, 10))
    entries = [("box", COLOURS[c], LABELS[c]) for c in ("input", "cached_input", "output", "idle") if energy[c] > 0]
    legend(svg, ax.left, ax.top - 12, [*entries, ("dash", INK, "the simulator's true split between the classes")])


def cost_panel(svg: Svg, timeline: dict[str, Any], ax: Axes) -> None:
    run = timeline["run"]
    currency = run["currency"]
    ends = [x / 60 for x in timeline["t_seconds"]]
    classes = [c for c in ("input", "cached_input", "output") if math.fsum(timeline["tokens"][c]) > 0]
    allocated: dict[str, list[tuple[float, float]]] = {c: [] for c in classes}
    loaded: dict[str, list[tuple[float, float]]] = {c: [] for c in classes}
    cost_sum = dict.fromkeys(classes, 0.0)
    token_sum = dict.fromkeys(classes, 0.0)
    idle_sum = busy_sum = 0.0
    for i, minute in enumerate(ends):
        idle_sum += timeline["cost"]["idle"][i]
        for cls in classes:
            cost_sum[cls] += timeline["cost"][cls][i]
            token_sum[cls] += timeline["tokens"][cls][i]
        busy_sum = math.fsum(cost_sum.values())
        for cls in classes:
            if token_sum[cls] > 0 and cost_sum[cls] > 0:
                per_million = cost_sum[cls] / token_sum[cls] * 1e6
                allocated[cls].append((minute, per_million))
                loaded[cls].append((minute, per_million * (1 + idle_sum / busy_sum)))
    values = [v for series in (*allocated.values(), *loaded.values()) for _, v in series]
    low, high = 10.0 ** math.floor(math.log10(min(values))), 10.0 ** math.ceil(math.log10(max(values)))
    ax.set_y(low, high, log=True)
    heading(
        svg,
        ax,
        "B. Cost per million tokens, cumulative",
        f"same run, {run['gpu_hourly_price']:g} {currency} per GPU-hour: rental follows GPU time",
        54,
    )
    decade = low
    while decade <= high * 1.0001:
        y = ax.py(decade)
        svg.line(ax.left, y, ax.right, y, GRID)
        svg.text(ax.left - 7, y + 4, f"{decade:g}", size=11, anchor="end", fill=MUTED)
        for k in range(2, 10):
            if decade * k < high:
                svg.line(ax.left, ax.py(decade * k), ax.left + 4, ax.py(decade * k), AXIS)
        decade *= 10
    y_label(svg, ax, f"{currency} per million tokens (log scale)")
    for cls in classes:
        svg.polyline([(ax.px(x), ax.py(v)) for x, v in loaded[cls]], COLOURS[cls], 2, "6 4")
        svg.polyline([(ax.px(x), ax.py(v)) for x, v in allocated[cls]], COLOURS[cls], 2.2)
        for series in (allocated[cls], loaded[cls]):
            value = series[-1][1]
            svg.text(ax.right + 6, ax.py(value) + 4, money(value), size=11.5, fill=COLOURS[cls], weight="bold")
    x_time_axis(svg, ax, nice_step(ax.x1, 5))
    legend(svg, ax.left, ax.top - 12, [("line", INK, "allocated"), ("dash", INK, "fully loaded (idle spread)")])
    y = ax.bottom + 62
    for cls in classes:
        svg.rect(ax.left - 54, y - 9, 12, 11, COLOURS[cls])
        text = (
            f"{LABELS[cls]}: {money(allocated[cls][-1][1])} {currency}/Mtok, {money(loaded[cls][-1][1])} fully loaded"
        )
        svg.text(ax.left - 37, y, text, size=11.5)
        y += 18
    energy = totals(timeline["energy_joules"])
    idle_energy = energy["idle"] / math.fsum(energy.values())
    svg.rect(ax.left - 54, y - 9, 12, 11, COLOURS["idle"])
    text = f"idle: {percent(idle_sum / (idle_sum + busy_sum))} of the money, {percent(idle_energy)} of the energy"
    svg.text(ax.left - 37, y, text, size=11.5)


def accuracy_panel(svg: Svg, accuracy: dict[str, Any], ax: Axes) -> None:
    cases = accuracy["cases"]
    groups = [(truth, path) for truth in ("component", "phase") for path in ("counters", "plugin")]
    intervals = sorted({c["interval_seconds"] for c in cases})
    found = {(c["truth"], c["path"], c["interval_seconds"]): c for c in cases}
    errors = [abs(v) for c in cases for v in c["share_error"].values() if v is not None]
    limit = max([*errors, *(TARGETS[(p, t)] for t, p in groups)]) * 1.2
    step = nice_step(2 * limit, 6)
    span = math.ceil(limit / step) * step
    ax.set_y(-span, span)
    heading(
        svg,
        ax,
        "C. Accuracy: error of the input and output energy shares",
        f"against the simulator's two truths, {accuracy['scenario']}, {accuracy['duration_seconds'] / 60:g} "
        "virtual min, by reading interval",
        60,
    )
    y_linear_axis(svg, ax, step, "share error (exporter / truth \u2212 1)", percent_ticks=True)
    group_width = ax.width / len(groups)
    bar = group_width / (len(intervals) * 2 + 2.2)
    for g, (truth, path) in enumerate(groups):
        left = ax.left + g * group_width
        target = TARGETS[(path, truth)]
        band_top, band_bottom = ax.py(target), ax.py(-target)
        svg.rect(left + 3, band_top, group_width - 6, band_bottom - band_top, TARGET_FILL)
        label = f"target \u00b1{target:.0%}"
        svg.text(left + group_width / 2, ax.bottom - 7, label, size=10, anchor="middle", fill=TARGET_INK)
        for i, interval in enumerate(intervals):
            case = found.get((truth, path, interval))
            x = left + bar * (1.1 + 2 * i)
            for k, cls in enumerate(("input", "output")):
                value = None if case is None else case["share_error"][cls]
                if value is None:
                    continue
                x0 = x + k * bar
                y0, y1 = sorted((ax.py(0), ax.py(value)))
                svg.rect(x0 + 0.5, y0, bar - 1, max(y1 - y0, 0.8), COLOURS[cls])
                label_y = ax.py(value) - 4 if value >= 0 else ax.py(value) + 12
                svg.text(x0 + bar / 2, label_y, signed(value * 100), size=9.5, anchor="middle")
            svg.text(x + bar, ax.bottom + 15, f"{interval:g} s", size=10.5, anchor="middle", fill=MUTED)
        svg.text(left + group_width / 2, ax.bottom + 32, TRUTH_LABELS[truth], size=11.5, anchor="middle")
        svg.text(left + group_width / 2, ax.bottom + 46, PATH_LABELS[path], size=11.5, anchor="middle", fill=MUTED)
        if g:
            svg.line(left, ax.top, left, ax.bottom + 48, GRID)
    svg.line(ax.left, ax.py(0), ax.right, ax.py(0), AXIS)
    legend(
        svg,
        ax.left,
        ax.top - 12,
        [("box", COLOURS["input"], "input"), ("box", COLOURS["output"], "output"), ("box", TARGET_FILL, "target")],
    )
    # The two accountings the exporter replaces, on the same traces (5 s, vLLM's counters).
    rows = [("all energy to output", "all_to_output"), ("by request prefill / decode time", "request_time")]
    columns = [t for t in ("component", "phase") if (t, "counters", 5.0) in found]
    x, y = ax.left - 60, ax.bottom + 72
    svg.text(x, y, "The usual accountings on the same traces", size=11.5, weight="bold")
    for j, truth in enumerate(columns):
        svg.text(x + 330 + 100 * j, y, f"vs {truth}", size=11.5, anchor="middle", fill=MUTED)
    for label, key in rows:
        y += 18
        svg.text(x, y, f"{label}: input / output", size=11.5)
        for j, truth in enumerate(columns):
            pair = _pair(found[(truth, "counters", 5.0)]["baselines"][key])
            svg.text(x + 330 + 100 * j, y, pair, size=11.5, anchor="middle")


def _pair(errors: dict[str, float | None]) -> str:
    parts = ["n/a" if (v := errors[c]) is None else signed(v * 100, 0) for c in ("input", "output")]
    return f"{parts[0]} / {parts[1]} %"


# -- files --------------------------------------------------------------------------------------


def load(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / DATA).read_text(encoding="utf-8"))
    return data


def check(root: Path) -> list[str]:
    """Empty when the committed SVG is the drawing of the committed JSON; else one report with its diff."""
    path = root / SVG
    drawn = render(load(root))
    if not path.exists():
        return [f"{SVG} is missing; run python scripts/figure.py\n"]
    committed = path.read_text(encoding="utf-8")
    if committed == drawn:
        return []
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            drawn.splitlines(keepends=True),
            f"{SVG} (committed)",
            f"{SVG} (drawn from {DATA})",
        )
    )
    return [f"{SVG} differs from the drawing of {DATA}; run python scripts/figure.py\n{diff}"]


def write(root: Path) -> bool:
    """Draw the SVG; True if it changed."""
    path = root / SVG
    drawn = render(load(root))
    if path.exists() and path.read_text(encoding="utf-8") == drawn:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(drawn, encoding="utf-8")
    return True


def refresh(root: Path, jobs: int, timeline_only: bool) -> None:
    """Rerun the benchmark into the JSON (benchmarks/figure_data.py)."""
    sys.path.insert(0, str(root))
    from benchmarks import figure_data

    previous = load(root) if timeline_only else None
    (root / DATA).parent.mkdir(parents=True, exist_ok=True)
    (root / DATA).write_text(figure_data.dumps(figure_data.build(jobs, previous)) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; exit 1 if the SVG is not the JSON's")
    mode.add_argument("--refresh", action="store_true", help="rerun the benchmark into the JSON, then draw")
    parser.add_argument("--timeline-only", action="store_true", help="with --refresh: keep the accuracy part")
    parser.add_argument("--jobs", type=int, default=2, help="with --refresh: processes for bench_accuracy's cases")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        reports = check(args.root)
        sys.stdout.write("".join(reports))
        return 1 if reports else 0
    if args.refresh:
        refresh(args.root, args.jobs, args.timeline_only)
        print(f"wrote {DATA}")
    print(f"{'wrote' if write(args.root) else 'unchanged:'} {SVG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
