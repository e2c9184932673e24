"""`token-economy-exporter simulate`: the simulator behind a local vLLM-like endpoint, the real
exporter scraping it, and a live terminal summary of what it finds next to the truth. Needs no
GPU and no vLLM: for learning the metrics, demos and building dashboards."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence

from exporter.attribution.gpu_table import GPU_TABLE
from exporter.attribution.token_class import CACHED_INPUT, IDLE, INPUT, OUTPUT
from exporter.config import Settings, describe_errors
from exporter.sim import (
    COMPONENT,
    LLAMA_2_70B,
    LLAMA_3_8B,
    PHASE,
    SCENARIOS,
    RealTimeDriver,
    SimEnergySource,
    Simulation,
    serve_metrics,
)
from exporter.sources.energy import EnergySetup

MODELS = {"llama-3-8b": LLAMA_3_8B, "llama-2-70b": LLAMA_2_70B}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="well_mixed")
    parser.add_argument(
        "--truth",
        choices=(COMPONENT, PHASE),
        default=COMPONENT,
        help="ground truth: energy from FLOPs and bytes, or constant power per phase",
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="llama-3-8b")
    parser.add_argument("--gpu-type", choices=sorted(GPU_TABLE), default="H100")
    parser.add_argument("--gpus", type=int, default=1, help="tensor-parallel GPUs")
    parser.add_argument("--speed", type=float, default=10.0, help="virtual seconds per wall second")
    parser.add_argument("--duration", type=float, default=0.0, help="wall seconds to run; 0: until Ctrl-C")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=1.0, help="exporter tick, wall seconds")
    parser.add_argument("--refresh", type=float, default=2.0, help="seconds between summaries")
    parser.add_argument("--listen-address", default="127.0.0.1:9477", help="the exporter's /metrics")
    parser.add_argument("--gpu-hourly-price", type=float, default=3.0)
    parser.add_argument("--currency", default="USD")


def run(args: argparse.Namespace) -> int:
    from exporter.app import StartupError, build

    if args.speed <= 0 or args.gpus < 1 or args.interval <= 0:
        print("token-economy-exporter: error: --speed, --gpus and --interval must be positive", file=sys.stderr)
        return 2
    model = MODELS[args.model]
    sim = Simulation(
        SCENARIOS[args.scenario](),
        args.gpu_type,
        model,
        gpus=args.gpus,
        truth=args.truth,
        seed=args.seed,
        model_name=args.model,
    )
    driver = RealTimeDriver(sim, speed=args.speed)
    page = serve_metrics(sim, 0, driver)
    try:
        settings = Settings(
            vllm_url=page.url,
            listen_address=args.listen_address,
            interval=args.interval,
            gpu_hourly_price=args.gpu_hourly_price,
            currency=args.currency,
            log_format="console",
            log_level="warning",
            # The fit window is virtual time (the energy readings carry it).
            fit_window_seconds=max(30.0, 5 * args.interval * args.speed),
        )
    except Exception as err:
        lines = describe_errors(err) if hasattr(err, "errors") else [str(err)]
        for line in lines:
            print(f"token-economy-exporter: error: {line}", file=sys.stderr)
        page.close()
        return 2
    energy = EnergySetup(SimEnergySource(sim, driver), "simulated", GPU_TABLE[args.gpu_type], args.gpus, None)
    try:
        app = build(settings, energy=energy, model=model)
    except StartupError as err:
        print(f"token-economy-exporter: error: {err}", file=sys.stderr)
        page.close()
        return 2
    stop = threading.Event()
    worker = threading.Thread(target=app.run, args=(stop,), name="exporter", daemon=True)
    worker.start()
    print(
        f"simulated vLLM ({args.scenario}, {args.model} on {args.gpus}x{args.gpu_type}, truth={args.truth}, "
        f"{args.speed:g}x real time) at {page.url}/metrics",
        flush=True,
    )
    host = settings.listen_host_port[0].replace("0.0.0.0", "127.0.0.1")
    print(f"exporter at http://{host}:{app.server.port}/metrics", flush=True)
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    try:
        while time.monotonic() < deadline:
            time.sleep(max(min(args.refresh, deadline - time.monotonic()), 0.01))
            print(summary(app, sim, args.currency), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        worker.join(10)
        page.close()
    return 0


def summary(app, sim: Simulation, currency: str) -> str:
    view = app.ledger.view()
    truth = sim.oracle_totals()
    energy = {
        cls: sum(v for (_, c), v in view.energy.items() if c == cls) for cls in (INPUT, CACHED_INPUT, OUTPUT, IDLE)
    }
    tokens = {cls: sum(v for (_, c), v in view.tokens.items() if c == cls) for cls in (INPUT, CACHED_INPUT, OUTPUT)}
    cost = {
        cls: sum(v for (_, c, _), v in view.cost.items() if c == cls) for cls in (INPUT, CACHED_INPUT, OUTPUT, IDLE)
    }
    total = sum(energy.values())
    lines = [
        f"--- virtual t={truth.time:7.0f} s   measured {total / 3.6e6 * 1000:9.3f} Wh   "
        f"idle share {energy[IDLE] / total if total else 0:6.1%}   identified={int(view.identified)}"
    ]
    lines.append(f"{'class':<13}{'tokens':>12}{'J/Mtok':>14}{currency + '/Mtok':>12}{'share':>9}{'true share':>12}")
    for cls in (INPUT, CACHED_INPUT, OUTPUT):
        n = tokens[cls]
        j_per_m = energy[cls] / n * 1e6 if n else float("nan")
        c_per_m = cost[cls] / n * 1e6 if n else float("nan")
        true_share = truth.energy[cls] / truth.energy_joules if truth.energy_joules else float("nan")
        lines.append(
            f"{cls:<13}{n:>12.0f}{j_per_m:>14.4g}{c_per_m:>12.4g}"
            f"{energy[cls] / total if total else 0:>9.1%}{true_share:>12.1%}"
        )
    true = sim.hardware.marginal_coefficients()
    fitted = " ".join(
        f"{driver}={value:.3g}±{sd:.2g} (true {getattr(true, driver):.3g})"
        for driver, (value, sd) in sorted(view.coefficients.items())
    )
    lines.append(f"marginal J: {fitted}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="token-economy-exporter simulate")
    add_arguments(parser)
    return run(parser.parse_args(argv))
