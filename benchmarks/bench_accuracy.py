"""Accuracy of the attribution against the simulator's oracle, next to two simpler accountings
computed on the same traces (see benchmarks/evaluation.py), on both paths to the work: vLLM's own
counters, and the vLLM plugin's families read through the exporter's own WorkReader.

    python -m benchmarks.bench_accuracy [--duration 1800] [--jobs 2] [--quick] [--paths counters,plugin] [--json PATH]

Columns: the path, error of the allocated input and output energy shares against the oracle (a
board gain error cancels out of shares; mixed steps split by the product's convention), the
fitted marginal costs against the true ones, whether the estimator says `identified`, the time
to trust (from the start, the virtual minutes after which the cumulative input and output shares
stay within ±10 % of the oracle's until the end; "never" if they do not settle), the same share
errors for the baselines, and the exporter's errors against the oracle's split by time share
alone (the phase oracle before the convention; under the component truth the same oracle). A
second table gathers the time to trust of well_mixed from a cold start (exporter and engine
start together) by path, truth and interval. `--json PATH` also writes every figure as JSON
(`report`: one record per case, `case_record`, then the gain and literature checks and the
targets' verdict); README's figure takes its well_mixed records (benchmarks/figure_data.py).
Targets, on every path: the work read from the path's own families; well mixed within ±5 %
(±10 % against the phase-power truth); fitted costs within ±10 %; a ±5 % gain error moves the
input:output split by < 1 %. On vLLM's counters: steady mix identified=0 with estimates inside
the prior band (the plugin's per-step counts are what can identify it, so there it is not a
target).
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.evaluation import PATHS, Evaluation, evaluate, fmt, fmt_minutes
from exporter.sim import LLAMA_2_70B, LLAMA_3_8B, SCENARIOS, Faults

INTERVALS = (1.0, 5.0, 15.0)
TRUTHS = ("component", "phase")
TRUST_SCENARIO = "well_mixed"  # the time-to-trust table's, at every interval even with --quick


@dataclass(frozen=True)
class Case:
    name: str
    scenario: str
    truth: str
    interval: float
    faults: Faults = Faults()
    missed: float = 0.0
    path: str = "counters"


def cases(duration: float, quick: bool, paths: tuple[str, ...] = PATHS) -> list[Case]:
    out = []
    for path in paths:
        for truth in TRUTHS:
            for interval in INTERVALS:
                scenarios = [name for name in SCENARIOS if not quick or interval == 5.0 or name == TRUST_SCENARIO]
                for scenario in scenarios:
                    out.append(Case(scenario, scenario, truth, interval, path=path))
                if quick and interval != 5.0:
                    continue
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
                        path=path,
                    )
                )
                out.append(Case("missed_scrapes", "well_mixed", truth, interval, missed=0.2, path=path))
    # The table's order: by path, then truth, then interval.
    return sorted(out, key=lambda c: (paths.index(c.path), TRUTHS.index(c.truth), c.interval))


def run_case(case: Case, duration: float) -> tuple[Case, Evaluation]:
    result = evaluate(
        SCENARIOS[case.scenario](),
        model=LLAMA_3_8B,
        truth=case.truth,
        interval=case.interval,
        duration=duration,
        faults=case.faults,
        missed_scrape_rate=case.missed,
        plugin=case.path == "plugin",
    )
    return case, result


def gain_check(duration: float, path: str) -> list[tuple[float, float]]:
    ratios = []
    for gain in (0.95, 1.0, 1.05):
        r = evaluate(
            SCENARIOS["well_mixed"](),
            model=LLAMA_3_8B,
            interval=5.0,
            duration=duration,
            faults=Faults(gain=gain),
            plugin=path == "plugin",
        )
        ratios.append((gain, r.split_ratio))
    return ratios


def literature_check(duration: float, path: str) -> Evaluation:
    return evaluate(
        SCENARIOS["decode_heavy"](rate=0.6),
        model=LLAMA_2_70B,
        gpus=2,
        interval=5.0,
        duration=duration,
        plugin=path == "plugin",
    )


def _paths(text: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in paths if p not in PATHS]
    if not paths or unknown:
        raise argparse.ArgumentTypeError(f"paths are {', '.join(PATHS)}; not {', '.join(unknown) or 'none'}")
    return tuple(dict.fromkeys(paths))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=1800.0, help="virtual seconds per case")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="5 s interval only (well_mixed at every interval)")
    parser.add_argument("--paths", type=_paths, default=PATHS, help="comma-separated: counters, plugin")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args()

    todo = cases(args.duration, args.quick, args.paths)
    with ProcessPoolExecutor(args.jobs) as pool:
        # Everything is submitted at once so that no core waits for the cases to finish.
        pending = [pool.submit(run_case, case, args.duration) for case in todo]
        gains = {path: pool.submit(gain_check, args.duration, path) for path in args.paths}
        literatures = {path: pool.submit(literature_check, args.duration, path) for path in args.paths}
        results = [future.result() for future in pending]
        gain = {path: future.result() for path, future in gains.items()}
        literature = {path: future.result() for path, future in literatures.items()}

    failures: list[str] = []
    print_cases(results, failures)
    print()
    print_trust(results)
    print()
    for path in args.paths:
        check_gain(path, gain[path], failures)
    print()
    for path in args.paths:
        check_literature(path, literature[path], failures)
    print()
    print("targets:", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    if args.json is not None:
        document = report(results, gain, literature, failures, args.duration)
        args.json.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _number(value: float | None) -> float | None:
    """JSON has no NaN: an undefined figure is null."""
    return None if value is None or math.isnan(value) else value


def case_record(case: Case, r: Evaluation) -> dict[str, Any]:
    """One row of the table as data: the errors are relative (0.01 is +1 %), null where undefined."""

    def pair(allocated: dict[str, float] | None = None, oracle: dict[str, float] | None = None) -> dict[str, Any]:
        return {cls: _number(r.share_error(cls, allocated, oracle)) for cls in ("input", "output")}

    return {
        "name": case.name,
        "scenario": case.scenario,
        "truth": case.truth,
        "path": case.path,
        "interval_seconds": case.interval,
        "faults": case.faults != Faults(),
        "missed_scrape_rate": case.missed,
        "share_error": pair(),
        "fit_error": {d: _number(r.coefficient_error(d)) for d in ("input", "output", "step")},
        "identified": r.identified,
        "trust_seconds": r.trust_seconds,
        "baselines": {name: pair(allocated) for name, allocated in sorted(r.baselines.items())},
        "vs_time_share": pair(oracle=r.oracle_time_share),
        "work_origin": r.work_origin,
    }


def report(
    results: list[tuple[Case, Evaluation]],
    gain: dict[str, list[tuple[float, float]]],
    literature: dict[str, Evaluation],
    failures: list[str],
    duration: float,
) -> dict[str, Any]:
    """Everything the run printed, as one JSON document."""
    classes = ("input", "output")
    return {
        "benchmark": "bench_accuracy",
        "duration_seconds": duration,
        "cases": [case_record(case, r) for case, r in results],
        "gain": {path: [{"gain": g, "split_ratio": _number(r)} for g, r in rows] for path, rows in gain.items()},
        "literature": {
            path: {
                "exporter_joules_per_token": {c: _number(lit.joules_per_token(c)) for c in classes},
                "oracle_joules_per_token": {c: _number(lit.joules_per_token(c, lit.oracle)) for c in classes},
            }
            for path, lit in literature.items()
        },
        "targets": {"pass": not failures, "failures": failures},
    }


def print_cases(results: list[tuple[Case, Evaluation]], failures: list[str]) -> None:
    header = (
        "| scenario | truth | path | interval | input | output | fit input | fit output | fit step | identified "
        "| time to trust | all-to-output: input / output | request-time: input / output "
        "| vs time-share oracle: input / output |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for case, r in results:
        base_a, base_b = r.baselines["all_to_output"], r.baselines["request_time"]
        row = (
            f"| {case.name} | {case.truth} | {case.path} | {case.interval:g} s | {fmt(r.share_error('input'))} | "
            f"{fmt(r.share_error('output'))} | {fmt(r.coefficient_error('input'))} | "
            f"{fmt(r.coefficient_error('output'))} | {fmt(r.coefficient_error('step'))} | {int(r.identified)} | "
            f"{fmt_minutes(r.trust_seconds)} | "
            f"{fmt(r.share_error('input', base_a))} / {fmt(r.share_error('output', base_a))} | "
            f"{fmt(r.share_error('input', base_b))} / {fmt(r.share_error('output', base_b))} | "
            f"{fmt(r.share_error('input', oracle=r.oracle_time_share))} / "
            f"{fmt(r.share_error('output', oracle=r.oracle_time_share))} |"
        )
        print(row)
        check_case(case, r, failures)


# The targets: allocated input and output energy of well-mixed load within these of the oracle,
# by path and truth, and with the plugin a time to trust within 2 minutes.
LIMITS = {
    ("plugin", "component"): 0.03,
    ("plugin", "phase"): 0.05,
    ("counters", "component"): 0.05,
    ("counters", "phase"): 0.10,
}
TRUST_LIMIT_SECONDS = 120.0


def check_case(case: Case, r: Evaluation, failures: list[str]) -> None:
    where = f"{case.name}/{case.truth}/{case.path}/{case.interval:g}s"
    expected = "plugin" if case.path == "plugin" else "vllm"
    if r.work_origin != expected:
        failures.append(f"{where} read its work from {r.work_origin or 'nowhere'}, not {expected}")
    if case.name == "well_mixed":
        limit = LIMITS[(case.path, case.truth)]
        if case.path == "plugin" and not (r.trust_seconds is not None and r.trust_seconds <= TRUST_LIMIT_SECONDS):
            failures.append(f"{where} time to trust {fmt_minutes(r.trust_seconds)} (limit 2 min)")
        for cls in ("input", "output"):
            if not abs(r.share_error(cls)) <= limit:
                failures.append(f"{where} {cls} {fmt(r.share_error(cls))}")
        if case.truth == "component":
            for d in ("input", "step"):
                if not abs(r.coefficient_error(d)) <= 0.10:
                    failures.append(f"{where} fitted {d} {fmt(r.coefficient_error(d))}")
    if case.name == "steady_mix" and case.path == "counters":
        inside = all(abs(r.fitted[d] - r.prior[d]) <= 2 * 0.5 * r.prior[d] for d in r.prior)
        if r.identified or not inside:
            failures.append(f"{where} identified={r.identified} inside={inside}")


def print_trust(results: list[tuple[Case, Evaluation]]) -> None:
    """Time to trust of the well-mixed load from a cold start, by path, truth and interval."""
    found = {(c.path, c.truth, c.interval): r for c, r in results if c.name == TRUST_SCENARIO}
    header = "| time to trust, well_mixed, cold start | truth | " + " | ".join(f"{i:g} s" for i in INTERVALS) + " |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for path in dict.fromkeys(c.path for c, _ in results):
        for truth in TRUTHS:
            cells = [found.get((path, truth, i)) for i in INTERVALS]
            text = " | ".join("—" if r is None else fmt_minutes(r.trust_seconds) for r in cells)
            print(f"| {path} | {truth} | {text} |")


def check_gain(path: str, gain: list[tuple[float, float]], failures: list[str]) -> None:
    base = dict(gain)[1.0]
    for g, ratio in gain:
        change = ratio / base - 1
        print(f"{path}: gain x{g:.2f}: input/output split {ratio:.4f} ({fmt(change)} against x1.00)")
        if abs(change) >= 0.01:
            failures.append(f"{path}: gain x{g}: split moved {fmt(change)}")


def check_literature(path: str, lit: Evaluation, failures: list[str]) -> None:
    j_in, j_out = lit.joules_per_token("input"), lit.joules_per_token("output")
    o_in, o_out = lit.joules_per_token("input", lit.oracle), lit.joules_per_token("output", lit.oracle)
    print(
        f"{path}: literature check, Llama-2-70B on 2xH100 at batch ~16 (published: ~0.2 J per input token, ~2 J per "
        f"output token): exporter {j_in:.3f} J / {j_out:.3f} J, oracle {o_in:.3f} J / {o_out:.3f} J"
    )
    for value, anchor, what in ((j_in, 0.2, "input"), (j_out, 2.0, "output")):
        if not anchor / 1.5 <= value <= anchor * 1.5:
            failures.append(f"{path}: literature {what} {value:.3f} J vs {anchor} J")


if __name__ == "__main__":
    main()
