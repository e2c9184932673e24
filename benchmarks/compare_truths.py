"""The simulator's two ground truths on one schedule: what the counters and the energy meter can
tell apart, how each oracle splits the steps that carry a prefill, and how much of the
exporter's error against the phase truth is that difference of convention.

    python -m benchmarks.compare_truths [--duration 1200] [--scenario well_mixed]

Step times come from the roofline alone, so both truths run the very same schedule; only the
energy of each step and the oracle's split of it differ.

1. Per truth: the steps that carry a prefill chunk (nearly all beside decodes), their energy and
   the oracle's split of it, and the energy of a pure decode step (idle power included).
2. Per truth: the marginal costs that least squares finds on 30 s windows of the true per-step
   work (prompt tokens computed, decode tokens, steps, KV context tokens read), the best any
   fit of the exporter's linear model could do with perfect counters.
3. The exporter run with those costs held fixed (`--estimator prior` and explicit costs) against
   each truth's oracle: what is left is the difference of convention, not an estimation error.
4. The costs the exporter's own fit (the defaults, 5 s interval) ends at, against those.
"""

from __future__ import annotations

import argparse
import math

from benchmarks.evaluation import evaluate, fmt
from exporter.config import Settings
from exporter.sim import LLAMA_3_8B, SCENARIOS, Simulation
from exporter.sim.hardware import TRUTHS

# The drivers least squares fits here: the step-level interaction needs the plugin's step counts.
DRIVERS = ("input", "output", "step", "kv")

WINDOW_SECONDS = 30.0
INTERVALS = (1.0, 5.0, 15.0)


def solve_least_squares(rows: list[list[float]], targets: list[float]) -> list[float]:
    """min |X b - y| by the normal equations on scaled columns (a handful of unknowns)."""
    n = len(rows[0])
    scale = [math.sqrt(math.fsum(r[j] * r[j] for r in rows)) or 1.0 for j in range(n)]
    x = [[r[j] / scale[j] for j in range(n)] for r in rows]
    a = [
        [math.fsum(r[i] * r[j] for r in x) for j in range(n)] + [math.fsum(r[i] * t for r, t in zip(x, targets))]
        for i in range(n)
    ]
    for col in range(n):  # Gauss-Jordan with partial pivoting
        pivot = max(range(col, n), key=lambda i: abs(a[i][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if a[col][col] == 0:
            raise ValueError("the windows do not determine the costs")
        for i in range(n):
            if i != col:
                f = a[i][col] / a[col][col]
                a[i] = [v - f * w for v, w in zip(a[i], a[col])]
    return [a[i][n] / a[i][i] / scale[i] for i in range(n)]


def summarise(scenario: str, truth: str, duration: float) -> dict[str, float]:
    sim = Simulation(SCENARIOS[scenario](), "H100", LLAMA_3_8B, truth=truth, trace=True)
    sim.advance_to(duration)
    idle_watts = sim.hardware.idle_watts_total
    mixed = [s for s in sim.step_trace if s.prefill > 0]
    decode = [s for s in sim.step_trace if s.prefill == 0]
    windows: dict[int, list[float]] = {}
    for s in sim.step_trace:
        w = windows.setdefault(int(s.end // WINDOW_SECONDS), [0.0] * 5)
        for i, v in enumerate((s.prefill, s.decode, 1.0, s.decode_context, s.energy - idle_watts * (s.end - s.start))):
            w[i] += v
    costs = solve_least_squares([w[:4] for w in windows.values()], [w[4] for w in windows.values()])
    totals = sim.oracle_totals()
    return {
        "steps": len(sim.step_trace),
        "steps carrying a prefill": len(mixed),
        "... their energy, kJ": sum(s.energy for s in mixed) / 1e3,
        "... oracle input, kJ": sum(s.e_input for s in mixed) / 1e3,
        "... oracle output, kJ": sum(s.e_output for s in mixed) / 1e3,
        "pure decode step, J (idle power included)": sum(s.energy for s in decode) / max(len(decode), 1),
        "oracle input share of all energy": totals.energy["input"] / totals.energy_joules,
        **{f"least-squares {d} cost, J": c for d, c in zip(DRIVERS, costs)},
    }


def fixed_cost_errors(scenario: str, truth: str, duration: float, costs: dict[str, float]) -> list[float]:
    settings = Settings(
        estimator="prior",
        input_joules_per_token=max(costs["input"], 0.0),
        output_joules_per_token=max(costs["output"], 0.0),
        step_joules=max(costs["step"], 0.0),
        kv_joules_per_token=max(costs["kv"], 0.0),
    )
    return [
        evaluate(
            SCENARIOS[scenario](), model=LLAMA_3_8B, truth=truth, interval=i, duration=duration, settings=settings
        ).share_error("input")
        for i in INTERVALS
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=1200.0, help="virtual seconds")
    parser.add_argument("--scenario", default="well_mixed", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    rows = {truth: summarise(args.scenario, truth, args.duration) for truth in TRUTHS}
    first, second = TRUTHS
    print(f"| {args.scenario}, {args.duration:g} s | {first} | {second} | {second} / {first} |")
    print("|---|---|---|---|")
    for name in rows[first]:
        a, b = rows[first][name], rows[second][name]
        cells = " | ".join(f"{v:.0f}" if float(v).is_integer() else f"{v:.4g}" for v in (a, b))
        print(f"| {name} | {cells} | {b / a if a else float('nan'):.3f} |")
    print()
    for truth in TRUTHS:
        costs = {d: rows[truth][f"least-squares {d} cost, J"] for d in DRIVERS}
        errors = fixed_cost_errors(args.scenario, truth, args.duration, costs)
        shown = ", ".join(f"{i:g} s {fmt(e)}" for i, e in zip(INTERVALS, errors))
        print(f"exporter with the {truth} truth's least-squares costs fixed, input share against its oracle: {shown}")
        fitted = evaluate(
            SCENARIOS[args.scenario](), model=LLAMA_3_8B, truth=truth, interval=5.0, duration=args.duration
        ).fitted
        shown = ", ".join(
            f"{d} {fitted[d]:.4g} J ({fmt(fitted[d] / costs[d] - 1) if costs[d] > 0 else 'n/a'})" for d in DRIVERS
        )
        print(f"  the exporter's own fit against the {truth} truth ends at: {shown}")


if __name__ == "__main__":
    main()
