"""`token-economy-exporter simulate`: the simulator behind a local vLLM-like endpoint, the real
exporter scraping it, and a live terminal summary of what it finds next to the truth. Needs no
GPU and no vLLM: for learning the metrics, demos and building dashboards."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exporter.app import App, StartupError, build
from exporter.attribution.api_prices import ApiPrice, break_even, fixed_and_variable
from exporter.attribution.gpu_table import GPU_TABLE
from exporter.attribution.pricing import RENTAL, CostKey
from exporter.attribution.readings import EnergySnapshot
from exporter.attribution.token_class import IDLE, TOKEN_CLASSES, TokenClass
from exporter.config import Settings, describe_errors
from exporter.sim import (
    COMPONENT,
    LLAMA_2_70B,
    LLAMA_3_8B,
    PHASE,
    SCENARIOS,
    TRUST_BAND,
    MetricsServer,
    OracleTotals,
    RealTimeDriver,
    SimEnergySource,
    Simulation,
    TrustClock,
    serve_metrics,
)
from exporter.sources.energy import EnergySetup

MODELS = {"llama-3-8b": LLAMA_3_8B, "llama-2-70b": LLAMA_2_70B}

LEGEND = """\
legend:
  tokens       tokens of the class the exporter counted from vLLM's page
  J/Mtok       energy allocated to the class per million of its tokens, idle excluded
  <cur>/Mtok   cost allocated to the class per million of its tokens (rental follows GPU time)
  share        the class's share of all measured energy, as the exporter allocates it
  true share   the same share as the simulator's oracle knows it: the two columns should agree
  identified   1 once the data, not the prior, decide the split between input and output
  split error  the exporter's input and output shares of all the energy since it started against the
               oracle's; "trusted since t=" the virtual time from which both have stayed within
               ±10 % (time to trust), checked at each summary
  marginal J   the fitted cost of one unit of each driver ± its standard deviation, next to the true
               one: input = a computed prompt token, output = an output token's own FLOPs (the
               per-token part only: the J/Mtok above also carries the per-step weight stream and
               the KV reads), step = one engine step (the weight stream), kv = one context token's
               KV read"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option, and the legend as it is laid out."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    parser.epilog = _legend("USD")
    arg = parser.add_argument
    arg("--scenario", choices=sorted(SCENARIOS), default="well_mixed", help="traffic preset")
    arg(
        "--truth",
        choices=(COMPONENT, PHASE),
        default=COMPONENT,
        help="ground truth: energy from FLOPs and bytes, or constant power per phase",
    )
    arg("--model", choices=sorted(MODELS), default="llama-3-8b", help="simulated model")
    arg("--gpu-type", choices=sorted(GPU_TABLE), default="H100", help="simulated GPU")
    arg("--gpus", type=int, default=1, help="tensor-parallel GPUs")
    arg("--speed", type=float, default=10.0, help="virtual seconds per wall second")
    arg("--duration", type=float, default=0.0, help="wall seconds to run; 0: until Ctrl-C")
    arg("--seed", type=int, default=1, help="seed of the traffic and the faults")
    arg("--interval", type=float, default=1.0, help="exporter tick, wall seconds")
    arg("--refresh", type=float, default=2.0, help="seconds between summaries")
    arg("--listen-address", default="127.0.0.1:9477", help="the exporter's /metrics")
    arg("--vllm-port", type=int, default=0, help="port of the simulated vLLM page on 127.0.0.1; 0: any free port")
    arg("--gpu-hourly-price", type=float, default=3.0, help="rental price of one GPU-hour")
    arg("--currency", default="USD", help="ISO 4217 code of the price")
    arg(
        "--api-prices",
        default=None,
        help="reference API price lists, NAME=INPUT/CACHED_INPUT/OUTPUT per million tokens in --currency, "
        "comma-separated: the summary shows the break-even against each",
    )
    arg(
        "--state-file",
        type=Path,
        default=None,
        help="keep the fitted costs in this file and resume from it, as `run --state-file` does",
    )
    arg(
        "--plugin",
        action="store_true",
        help="the simulated vLLM runs the token-economy plugin: its page carries the plugin's families and "
        "the exporter counts the work from them (build_info's work_source)",
    )


def _legend(currency: str) -> str:
    return LEGEND.replace("<cur>/Mtok   ", f"{currency + '/Mtok':<13}")


def _fail(message: str) -> int:
    print(f"token-economy-exporter: error: {message}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace, page: MetricsServer) -> Settings:
    return Settings(
        vllm_url=page.url,
        listen_address=args.listen_address,
        interval=args.interval,
        gpu_hourly_price=args.gpu_hourly_price,
        currency=args.currency,
        api_prices=args.api_prices,
        log_format="console",
        log_level="warning",
        # The fit window is virtual time (the energy readings carry it).
        fit_window_seconds=max(30.0, 5 * args.interval * args.speed),
        state_file=args.state_file,
    )


def run(args: argparse.Namespace) -> int:
    if args.speed <= 0 or args.gpus < 1 or args.interval <= 0:
        return _fail("--speed, --gpus and --interval must be positive")
    model = MODELS[args.model]
    sim = Simulation(
        SCENARIOS[args.scenario](),
        args.gpu_type,
        model,
        gpus=args.gpus,
        truth=args.truth,
        seed=args.seed,
        model_name=args.model,
        plugin=args.plugin,
    )
    driver = RealTimeDriver(sim, speed=args.speed)
    try:
        page = serve_metrics(sim, args.vllm_port, driver)
    except OSError as err:
        return _fail(f"--vllm-port {args.vllm_port}: {err.strerror or err}")
    try:
        settings = _settings(args, page)
        meter = TruthAtReads(sim, driver)
        energy = EnergySetup(meter, "simulated", GPU_TABLE[args.gpu_type], args.gpus, None)
        app = build(settings, energy=energy, model=model)
    except ValidationError as err:
        page.close()
        return _fail("; ".join(describe_errors(err)))
    except StartupError as err:
        page.close()
        return _fail(str(err))
    plugin = ", with the plugin" if args.plugin else ""
    print(
        f"simulated vLLM ({args.scenario}, {args.model} on {args.gpus}x{args.gpu_type}, truth={args.truth}, "
        f"{args.speed:g}x real time{plugin}) at {page.url}/metrics",
        flush=True,
    )
    host = settings.listen_host_port[0].replace("0.0.0.0", "127.0.0.1")
    print(f"exporter at http://{host}:{app.server.port}/metrics", flush=True)
    _serve(app, sim, page, args, SplitCheck(meter), settings.api_price_lists)
    return 0


class TruthAtReads(SimEnergySource):
    """The simulated GPUs' NVML counters, noting the oracle's totals at each of the exporter's energy
    readings: the first is where its allocation starts, and the ledger's view after n ticks is as
    of the n-th reading (the loop reads the energy once per tick)."""

    def __init__(self, sim: Simulation, driver: RealTimeDriver | None = None) -> None:
        super().__init__(sim, driver)
        self.first: OracleTotals | None = None
        self.reads = 0
        self._recent: deque[tuple[int, OracleTotals]] = deque(maxlen=64)

    def read(self) -> EnergySnapshot:
        with self.sim.lock:
            try:
                return super().read()
            finally:
                truth = self.sim.oracle_totals()
                self.reads += 1
                if self.first is None:
                    self.first = truth
                self._recent.append((self.reads, truth))

    def at_read(self, n: int) -> OracleTotals | None:
        """The truth as of the n-th reading, while it is among the recent ones."""
        for number, truth in reversed(self._recent):
            if number == n:
                return truth
        return None


class SplitCheck:
    """The exporter's cumulative split against the oracle's over the same window, and since when
    it has stayed within the trust band (`exporter.sim.trust`)."""

    def __init__(self, meter: TruthAtReads) -> None:
        self.meter = meter
        self.clock: TrustClock | None = None

    def line(self, ticks: float, allocated: Mapping[TokenClass, float]) -> str:
        """`allocated`: J by class since the exporter started, as of its `ticks`-th tick."""
        first, truth = self.meter.first, self.meter.at_read(int(ticks))
        if first is None or truth is None or ticks < 2:
            return "split error: waiting for the exporter's first interval"
        if self.clock is None:
            self.clock = TrustClock(start=first.time)
        error_in, error_out = self.clock.update(truth.time, allocated, truth.minus(first))
        since = self.clock.since
        trusted = (
            f"trusted since t={since:.0f} s" if since is not None else f"not trusted yet (outside ±{TRUST_BAND:.0%})"
        )
        return f"split error vs oracle since start: input {error_in:+6.1%}  output {error_out:+6.1%}   {trusted}"


def _serve(
    app: App,
    sim: Simulation,
    page: MetricsServer,
    args: argparse.Namespace,
    check: SplitCheck,
    api_prices: tuple[ApiPrice, ...] = (),
) -> None:
    stop = threading.Event()
    worker = threading.Thread(target=app.run, args=(stop,), name="exporter", daemon=True)
    worker.start()
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    legend = _legend(args.currency)
    try:
        while time.monotonic() < deadline:
            time.sleep(max(min(args.refresh, deadline - time.monotonic()), 0.01))
            print(summary(app, sim, args.currency, check, api_prices), flush=True)
            if legend:  # once, under the first summary
                print(legend, flush=True)
                legend = ""
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        worker.join(10)
        page.close()


def _by_class(items: Iterable[tuple[tuple[Any, ...], float]]) -> dict[TokenClass, float]:
    """Sum over models (and cost components): keys hold the class second."""
    totals = dict.fromkeys(TokenClass, 0.0)
    for key, value in items:
        totals[key[1]] += value
    return totals


def summary(
    app: App, sim: Simulation, currency: str, check: SplitCheck | None = None, api_prices: tuple[ApiPrice, ...] = ()
) -> str:
    view = app.ledger.view()
    truth = sim.oracle_totals()
    energy, tokens, cost = _by_class(view.energy.items()), _by_class(view.tokens.items()), _by_class(view.cost.items())
    total = sum(energy.values())
    lines = [
        f"--- virtual t={truth.time:7.0f} s   measured {total / 3.6e6 * 1000:9.3f} Wh   "
        f"idle share {energy[IDLE] / total if total else 0:6.1%}   identified={int(view.identified)}",
        f"{'class':<13}{'tokens':>12}{'J/Mtok':>14}{currency + '/Mtok':>12}{'share':>9}{'true share':>12}",
    ]
    for cls in TOKEN_CLASSES:
        n = tokens[cls]
        j_per_m = energy[cls] / n * 1e6 if n else float("nan")
        c_per_m = cost[cls] / n * 1e6 if n else float("nan")
        true_share = truth.energy[cls] / truth.energy_joules if truth.energy_joules else float("nan")
        lines.append(
            f"{cls:<13}{n:>12.0f}{j_per_m:>14.4g}{c_per_m:>12.4g}"
            f"{energy[cls] / total if total else 0:>9.1%}{true_share:>12.1%}"
        )
    if check is not None:
        lines.append(check.line(view.ticks, energy))
    lines.append(f"marginal J: {_marginal(view.coefficients, sim)}")
    static = view.idle_watts * view.attributed_seconds  # the idle-level energy, paid whatever the load
    lines.extend(break_even_lines(view.cost, tokens, total, static, currency, api_prices))
    return "\n".join(lines)


def break_even_lines(
    cost: Mapping[CostKey, float],
    tokens: Mapping[TokenClass, float],
    energy_joules: float,
    static_joules: float,
    currency: str,
    api_prices: tuple[ApiPrice, ...],
) -> list[str]:
    """This traffic at each reference API's prices against what it cost here, and the traffic (same
    mix) at which the two meet: rental and the idle-level power are paid whatever the load, the
    electricity of the energy above idle grows with it (`fixed_and_variable`)."""
    rental = sum(v for (_m, _cls, part), v in cost.items() if part == RENTAL)
    electricity = sum(v for (_m, _cls, part), v in cost.items() if part != RENTAL)
    fixed, variable = fixed_and_variable(rental, electricity, energy_joules, static_joules)
    if not any(tokens.get(cls, 0.0) for cls in TOKEN_CLASSES):
        return [f"break-even vs {price.reference}: no tokens yet" for price in api_prices]
    lines = []
    for price in api_prices:
        found = break_even(tokens, fixed, variable, price)
        if found.api_cost <= 0:
            lines.append(f"break-even vs {price.reference}: the list prices these tokens at 0")
            continue
        where = (
            f"breaks even at {found.traffic_multiple:.2g}x this traffic"
            if found.traffic_multiple is not None
            else "never breaks even (the API costs less than the tokens' own electricity)"
        )
        lines.append(
            f"break-even vs {price.reference}: this traffic costs {found.api_cost:.4g} {currency} there, "
            f"{found.self_cost:.4g} here ({found.self_cost / found.api_cost:.2f}x, saving {found.saving:+.4g}); "
            f"self-hosting {where}"
        )
    return lines


def _marginal(coefficients: Mapping[str, tuple[float, float]], sim: Simulation) -> str:
    try:
        true = sim.hardware.marginal_coefficients()
    except ValueError:  # the phase-power truth has no marginal cost per unit
        true = None
    parts = []
    for driver, (value, sd) in sorted(coefficients.items()):
        known = f"{getattr(true, driver):.3g}" if true is not None else "n/a"
        parts.append(f"{driver}={value:.3g}±{sd:.2g} (true {known})")
    return " ".join(parts)
