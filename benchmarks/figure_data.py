"""The data behind README's figure (docs/figures/overview.json; scripts/figure.py draws it).

    python -m benchmarks.figure_data [--out docs/figures/overview.json] [--jobs 2] [--timeline-only]

Two parts, both seeded and in virtual time, so that a rerun on any machine gives the same numbers:

- `timeline`: what `token-economy-exporter simulate --scenario bursty_idle` shows, interval by
  interval: the exporter's core as `run` wires it (benchmarks/evaluation.py drives it on the
  simulator's sources, vLLM's counters path) over ten virtual minutes of bursty traffic, Llama-3-8B
  on one H100, a tick every 5 s, priced at `simulate`'s default of 3 USD per GPU-hour. For every
  tick: the energy and the cost it allocated to each class, the tokens it counted, and the
  simulator's oracle over the same interval (the component truth: energy from FLOPs and bytes).
  About a second of CPU.
- `accuracy`: the well_mixed records of `python -m benchmarks.bench_accuracy --duration 1200`
  (`bench_accuracy.case_record`), on both paths and both truths at 1, 5 and 15 s: the error of the
  exporter's input and output energy shares, and of the two simpler accountings computed on the
  same traces. The same cases as that benchmark's, run alone (12 of its 96): 20 to 40 s on two
  cores.

Numbers are rounded to 6 significant digits and the JSON is written in one fixed layout, so that
the committed file changes only when a figure does (tests/unit/test_readme_figure.py).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench_accuracy import Case, case_record, cases, run_case
from benchmarks.evaluation import evaluate
from exporter.attribution.attributor import TickResult
from exporter.attribution.token_class import TOKEN_CLASSES, TokenClass
from exporter.config import Settings
from exporter.sim import LLAMA_3_8B, SCENARIOS, OracleTotals, Simulation

SCHEMA = 1
CLASSES = tuple(str(c) for c in TokenClass)  # input, cached_input, output, idle
TOKEN_CLASS_NAMES = tuple(str(c) for c in TOKEN_CLASSES)

# The timeline's run: `simulate --scenario bursty_idle`'s scenario, model, GPU, truth and price.
TIMELINE_RUN: dict[str, Any] = {
    "scenario": "bursty_idle",
    "model": "llama-3-8b",
    "gpu": "H100",
    "gpus": 1,
    "truth": "component",
    "path": "counters",
    "interval_seconds": 5.0,
    "duration_seconds": 600.0,
    "seed": 1,
    "gpu_hourly_price": 3.0,
    "currency": "USD",
}
ACCURACY_SCENARIO = "well_mixed"
ACCURACY_DURATION = 1200.0  # as README's accuracy table: `bench_accuracy --duration 1200`


def timeline() -> dict[str, Any]:
    """The timeline part: per tick, what the exporter allocated and what the oracle says."""
    run = TIMELINE_RUN
    t: list[float] = []
    series: dict[str, dict[str, list[float]]] = {
        "energy_joules": {c: [] for c in CLASSES},
        "true_energy_joules": {c: [] for c in CLASSES},
        "cost": {c: [] for c in CLASSES},
        "tokens": {c: [] for c in TOKEN_CLASS_NAMES},
    }
    previous: list[OracleTotals | None] = [None]

    def on_tick(sim: Simulation, result: TickResult) -> None:
        truth = sim.oracle_totals()
        window = truth if previous[0] is None else truth.minus(previous[0])
        previous[0] = truth
        t.append(sim.now)
        energy = dict.fromkeys(CLASSES, 0.0)
        if result.allocation is not None:
            for (_, cls), joules in result.allocation.energy.items():
                energy[str(cls)] += joules
        cost = dict.fromkeys(CLASSES, 0.0)
        for (_, cls, _), amount in result.costs.items():
            cost[str(cls)] += amount
        tokens = dict.fromkeys(TOKEN_CLASS_NAMES, 0.0)
        for (_, cls), count in result.tokens.items():
            tokens[str(cls)] += count
        for name in CLASSES:
            series["energy_joules"][name].append(energy[name])
            series["true_energy_joules"][name].append(window.energy.get(name, 0.0))
            series["cost"][name].append(cost[name])
        for name in TOKEN_CLASS_NAMES:
            series["tokens"][name].append(tokens[name])

    evaluation = evaluate(
        SCENARIOS[run["scenario"]](),
        gpu=run["gpu"],
        model=LLAMA_3_8B,
        gpus=run["gpus"],
        truth=run["truth"],
        interval=run["interval_seconds"],
        duration=run["duration_seconds"],
        seed=run["seed"],
        settings=Settings(gpu_hourly_price=run["gpu_hourly_price"], currency=run["currency"]),
        plugin=run["path"] == "plugin",
        on_tick=on_tick,
    )
    return {
        "run": dict(run),
        "command": f"token-economy-exporter simulate --scenario {run['scenario']} (in virtual time)",
        "t_seconds": t,
        **series,
        "true_energy_total_joules": evaluation.true_joules,
        "measured_energy_total_joules": evaluation.measured_joules,
    }


def accuracy_cases(duration: float = ACCURACY_DURATION) -> list[Case]:
    """bench_accuracy's well_mixed cases, in its table's order."""
    return [c for c in cases(duration, quick=False) if c.name == ACCURACY_SCENARIO]


def accuracy(duration: float = ACCURACY_DURATION, jobs: int = 2) -> dict[str, Any]:
    todo = accuracy_cases(duration)
    with ProcessPoolExecutor(jobs) as pool:
        results = list(pool.map(run_case, todo, [duration] * len(todo)))
    return {
        "command": f"python -m benchmarks.bench_accuracy --duration {duration:g}",
        "scenario": ACCURACY_SCENARIO,
        "duration_seconds": duration,
        "cases": [case_record(case, r) for case, r in results],
    }


def build(jobs: int = 2, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole document; with `previous`, its accuracy part is kept and only the timeline rerun."""
    return {
        "schema": SCHEMA,
        "timeline": rounded(timeline()),
        "accuracy": previous["accuracy"] if previous is not None else rounded(accuracy(jobs=jobs)),
    }


def rounded(value: Any) -> Any:
    """Floats to 6 significant digits, recursively (NaN and infinities become null)."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


_SCALARS = re.compile(r"\[\s*([^\[\]{}]*?)\s*\]")


def dumps(document: dict[str, Any]) -> str:
    """The file's text: indented, with each list of plain values on one line."""
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    return _SCALARS.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",") if v.strip()) + "]", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/overview.json"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--timeline-only", action="store_true", help="rerun the timeline only; keep the file's accuracy part"
    )
    args = parser.parse_args()
    previous = json.loads(args.out.read_text()) if args.timeline_only else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(build(args.jobs, previous)) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
