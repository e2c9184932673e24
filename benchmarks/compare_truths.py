"""The simulator's two ground truths on one schedule: what the counters and the energy meter can
tell apart, and how each oracle splits the steps that carry a prefill.

    python -m benchmarks.compare_truths [--duration 1200] [--scenario well_mixed]

Step times come from the roofline alone, so both truths run the very same schedule; only the
energy of each step and the oracle's split of it differ. The table shows where they differ: in
the steps that carry a prefill chunk beside decodes ("mixed"), whose total energy is nearly the
same under both while their split is not, and in pure decode steps, whose energy is the only
thing an estimator could learn the difference from.
"""

from __future__ import annotations

import argparse

from exporter.sim import LLAMA_3_8B, SCENARIOS, Simulation
from exporter.sim.hardware import TRUTHS


def summarise(scenario: str, truth: str, duration: float) -> dict[str, float]:
    sim = Simulation(SCENARIOS[scenario](), "H100", LLAMA_3_8B, truth=truth, trace=True)
    sim.advance_to(duration)
    mixed = [s for s in sim.step_trace if s.prefill > 0]
    decode = [s for s in sim.step_trace if s.prefill == 0]
    totals = sim.oracle_totals()
    return {
        "steps": len(sim.step_trace),
        "mixed steps": len(mixed),
        "mixed steps: energy, kJ": sum(s.energy for s in mixed) / 1e3,
        "mixed steps: oracle input, kJ": sum(s.e_input for s in mixed) / 1e3,
        "mixed steps: oracle output, kJ": sum(s.e_output for s in mixed) / 1e3,
        "decode steps: J per step": sum(s.energy for s in decode) / max(len(decode), 1),
        "all: energy, kJ": totals.energy_joules / 1e3,
        "all: oracle input share": totals.energy["input"] / totals.energy_joules,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=1200.0, help="virtual seconds")
    parser.add_argument("--scenario", default="well_mixed", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    rows = {truth: summarise(args.scenario, truth, args.duration) for truth in TRUTHS}
    print(f"| {args.scenario}, {args.duration:g} s | " + " | ".join(TRUTHS) + " | phase / component |")
    print("|---" * (len(TRUTHS) + 2) + "|")
    for name in rows[TRUTHS[0]]:
        values = [rows[t][name] for t in TRUTHS]
        ratio = values[1] / values[0] if values[0] else float("nan")
        cells = " | ".join(f"{v:.4g}" for v in values)
        print(f"| {name} | {cells} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
