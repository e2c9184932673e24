"""Accuracy of the attribution against the simulator's oracle, next to two simpler accountings
computed on the same traces (see benchmarks/evaluation.py).

    python -m benchmarks.bench_accuracy [--duration 1800] [--jobs 2] [--quick]

Columns: error of the allocated input and output energy shares against the oracle (a board
gain error cancels out of shares; mixed steps split by the product's convention), the fitted
marginal costs against the true ones, whether the estimator says `identified`, the same share
errors for the baselines, and the exporter's errors against the oracle's split by time share
alone (the phase oracle before the convention; under the component truth the same oracle).
Targets: well mixed within ±5 % (±10 % against the phase-power truth); fitted costs within
±10 %; steady mix identified=0 with estimates inside the prior band; a ±5 % gain error moves
the input:output split by < 1 %.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from benchmarks.evaluation import evaluate, fmt
from exporter.sim import LLAMA_2_70B, LLAMA_3_8B, SCENARIOS, Faults

INTERVALS = (1.0, 5.0, 15.0)
TRUTHS = ("component", "phase")


@dataclass(frozen=True)
class Case:
    name: str
    scenario: str
    truth: str
    interval: float
    faults: Faults = Faults()
    missed: float = 0.0


def cases(duration: float, quick: bool) -> list[Case]:
    out = []
    intervals = (5.0,) if quick else INTERVALS
    for truth in TRUTHS:
        for interval in intervals:
            for scenario in SCENARIOS:
                out.append(Case(scenario, scenario, truth, interval))
            out.append(
                Case(
                    "restarts",
                    "well_mixed",
                    truth,
                    interval,
                    Faults(
                        vllm_restarts=(duration * 0.3,),
                        driver_resets=(duration * 0.6,),
                        nvml_error_rate=0.02,
                        gain=1.03,
                    ),
                )
            )
            out.append(Case("missed_scrapes", "well_mixed", truth, interval, missed=0.2))
    return out


def run_case(case: Case, duration: float):
    result = evaluate(
        SCENARIOS[case.scenario](),
        model=LLAMA_3_8B,
        truth=case.truth,
        interval=case.interval,
        duration=duration,
        faults=case.faults,
        missed_scrape_rate=case.missed,
    )
    return case, result


def gain_check(duration: float) -> list[tuple[float, float]]:
    ratios = []
    for gain in (0.95, 1.0, 1.05):
        r = evaluate(
            SCENARIOS["well_mixed"](), model=LLAMA_3_8B, interval=5.0, duration=duration, faults=Faults(gain=gain)
        )
        ratios.append((gain, r.split_ratio))
    return ratios


def literature_check(duration: float):
    return evaluate(SCENARIOS["decode_heavy"](rate=0.6), model=LLAMA_2_70B, gpus=2, interval=5.0, duration=duration)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=1800.0, help="virtual seconds per case")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="5 s interval only")
    args = parser.parse_args()

    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_case, cases(args.duration, args.quick), [args.duration] * 999))
        gain = pool.submit(gain_check, args.duration)
        literature = pool.submit(literature_check, args.duration)
        gain, literature = gain.result(), literature.result()

    header = (
        "| scenario | truth | interval | input | output | fit input | fit output | fit step | identified "
        "| all-to-output: input / output | request-time: input / output | vs time-share oracle: input / output |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    failures = []
    for case, r in results:
        base_a, base_b = r.baselines["all_to_output"], r.baselines["request_time"]
        row = (
            f"| {case.name} | {case.truth} | {case.interval:g} s | {fmt(r.share_error('input'))} | "
            f"{fmt(r.share_error('output'))} | {fmt(r.coefficient_error('input'))} | "
            f"{fmt(r.coefficient_error('output'))} | {fmt(r.coefficient_error('step'))} | {int(r.identified)} | "
            f"{fmt(r.share_error('input', base_a))} / {fmt(r.share_error('output', base_a))} | "
            f"{fmt(r.share_error('input', base_b))} / {fmt(r.share_error('output', base_b))} | "
            f"{fmt(r.share_error('input', oracle=r.oracle_time_share))} / "
            f"{fmt(r.share_error('output', oracle=r.oracle_time_share))} |"
        )
        print(row)
        if case.name == "well_mixed":
            limit = 0.05 if case.truth == "component" else 0.10
            for cls in ("input", "output"):
                if not abs(r.share_error(cls)) <= limit:
                    failures.append(f"{case.name}/{case.truth}/{case.interval:g}s {cls} {fmt(r.share_error(cls))}")
            if case.truth == "component":
                for d in ("input", "step"):
                    if not abs(r.coefficient_error(d)) <= 0.10:
                        failures.append(f"{case.name}/{case.interval:g}s fitted {d} {fmt(r.coefficient_error(d))}")
        if case.name == "steady_mix":
            inside = all(abs(r.fitted[d] - r.prior[d]) <= 2 * 0.5 * r.prior[d] for d in r.prior)
            if r.identified or not inside:
                failures.append(f"steady_mix/{case.truth}/{case.interval:g}s identified={r.identified} inside={inside}")
    base = dict(gain)[1.0]
    print()
    for g, ratio in gain:
        change = ratio / base - 1
        print(f"gain x{g:.2f}: input/output split {ratio:.4f} ({fmt(change)} against x1.00)")
        if abs(change) >= 0.01:
            failures.append(f"gain x{g}: split moved {fmt(change)}")
    lit = literature
    j_in, j_out = lit.joules_per_token("input"), lit.joules_per_token("output")
    o_in, o_out = lit.joules_per_token("input", lit.oracle), lit.joules_per_token("output", lit.oracle)
    print()
    print(
        f"literature check, Llama-2-70B on 2xH100 at batch ~16 (published: ~0.2 J per input token, ~2 J per "
        f"output token): exporter {j_in:.3f} J / {j_out:.3f} J, oracle {o_in:.3f} J / {o_out:.3f} J"
    )
    for value, anchor, what in ((j_in, 0.2, "input"), (j_out, 2.0, "output")):
        if not anchor / 1.5 <= value <= anchor * 1.5:
            failures.append(f"literature {what} {value:.3f} J vs {anchor} J")
    print()
    print("targets:", "PASS" if not failures else "FAIL: " + "; ".join(failures))


if __name__ == "__main__":
    main()
