"""At what load does self-hosting beat an API price list? The simulated model on its GPU, driven by
the well-mixed traffic at several request rates, costed by the exporter's own core (rental by GPU
time, electricity by measured energy, idle included), against the same tokens at each reference's
prices per million.

    python -m benchmarks.bench_break_even [--rates 0.05,0.1,...,16] [--duration 1800]
        [--gpu-hourly-price 1.20] [--electricity-price-per-kwh 0.15] [--pue 1.3]
        [--api-prices "api-8b=0.10/0.05/0.10,api-mini=0.15/0.075/0.60"]

Defaults describe GPUs one owns (an H100 amortised at 1.20 USD per hour, electricity 0.15 USD
per kWh at PUE 1.3, counted on top) and two illustrative price lists, not any vendor's: edit them
to yours. Columns per request rate: the GPU's busy fraction (the simulator's true time with a
step running), tokens per second, the self-hosted cost per hour and per million input and output
tokens (fully loaded: idle spread over tokens, as the rules' fully loaded cost), and for each
price list the API's cost per hour for the same tokens and self-hosted / API (below 1,
self-hosting is cheaper). The last lines interpolate where the ratio crosses 1: the busy
fraction and output tokens per second at which self-hosting breaks even.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field

from benchmarks.evaluation import evaluate
from exporter.attribution.api_prices import ApiPrice
from exporter.attribution.attributor import TickResult
from exporter.attribution.token_class import IDLE, INPUT, OUTPUT, TOKEN_CLASSES, TokenClass
from exporter.config import Settings
from exporter.sim import LLAMA_3_8B, Simulation
from exporter.sim.workload import well_mixed

RATES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # requests per second; well_mixed's default is 3
API_PRICES = "api-8b=0.10/0.05/0.10,api-mini=0.15/0.075/0.60"


@dataclass
class Load:
    rate: float
    seconds: float = 0.0
    busy_fraction: float = 0.0  # the GPU's true time with an engine step running, over the run
    tokens: dict[TokenClass, float] = field(default_factory=lambda: dict.fromkeys(TOKEN_CLASSES, 0.0))
    cost: float = 0.0  # everything, idle included
    class_cost: dict[TokenClass, float] = field(default_factory=lambda: dict.fromkeys(TokenClass, 0.0))

    def add(self, result: TickResult) -> None:
        if result.allocation is None:
            return
        self.seconds += result.seconds
        for (_model, cls), count in result.tokens.items():
            self.tokens[cls] += count
        for (_model, cls, _part), value in result.costs.items():
            self.cost += value
            self.class_cost[cls] += value

    def per_hour(self, value: float) -> float:
        return value / self.seconds * 3600 if self.seconds else 0.0

    def fully_loaded_per_million(self, cls: TokenClass) -> float:
        """The class's cost with the idle cost spread in proportion (the rules' fully loaded)."""
        busy = self.cost - self.class_cost[IDLE]
        if not self.tokens[cls] or busy <= 0:
            return 0.0
        return self.class_cost[cls] * self.cost / busy / self.tokens[cls] * 1e6

    def ratio(self, price: ApiPrice) -> float:
        api = price.cost(self.tokens)
        return self.cost / api if api > 0 else float("inf")


def measure(rate: float, settings: Settings, duration: float) -> Load:
    load = Load(rate)

    def on_tick(sim: Simulation, result: TickResult) -> None:
        load.add(result)
        truth = sim.oracle_totals()
        load.busy_fraction = 1.0 - truth.seconds[IDLE] / truth.time

    evaluate(well_mixed(rate), model=LLAMA_3_8B, duration=duration, interval=5.0, settings=settings, on_tick=on_tick)
    return load


def crossing(loads: list[Load], price: ApiPrice) -> tuple[float, float] | None:
    """(busy fraction, output tokens/s) where self-hosted / API crosses 1, linearly between the
    two rates around it; None where it never does within the rates run."""
    for low, high in itertools.pairwise(loads):
        a, b = low.ratio(price), high.ratio(price)
        if a >= 1 > b:
            f = (a - 1) / (a - b)
            busy = low.busy_fraction + f * (high.busy_fraction - low.busy_fraction)
            low_out, high_out = low.tokens[OUTPUT] / low.seconds, high.tokens[OUTPUT] / high.seconds
            return busy, low_out + f * (high_out - low_out)
    return None


def table(loads: list[Load], prices: tuple[ApiPrice, ...], currency: str) -> list[str]:
    head = f"| req/s | GPU busy | tok/s in / cached / out | {currency}/h here | {currency}/Mtok in / out here |"
    rule = "|---|---|---|---|---|"
    for price in prices:
        head += f" {currency}/h at {price.reference} | here / {price.reference} |"
        rule += "---|---|"
    rows = [head, rule]
    for load in loads:
        rates = " / ".join(f"{load.tokens[c] / load.seconds:.0f}" for c in TOKEN_CLASSES)
        per_m = " / ".join(f"{load.fully_loaded_per_million(c):.3f}" for c in (INPUT, OUTPUT))
        row = f"| {load.rate:g} | {load.busy_fraction:.0%} | {rates} | {load.per_hour(load.cost):.3f} | {per_m} |"
        for price in prices:
            row += f" {load.per_hour(price.cost(load.tokens)):.3f} | {load.ratio(price):.2f} |"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args, settings = arguments(argv)
    prices = settings.api_price_lists
    loads = [measure(float(r), settings, args.duration) for r in args.rates.split(",")]
    print(
        f"Llama 3 8B (bf16) on 1x H100, well_mixed traffic, {args.duration:g} virtual s per rate; "
        f"{args.gpu_hourly_price:g} {args.currency}/GPU-h + {args.electricity_price_per_kwh:g} {args.currency}/kWh "
        f"x PUE {args.pue:g}"
    )
    print("\n".join(table(loads, prices, args.currency)))
    for price in prices:
        found = crossing(loads, price)
        where = (
            f"GPU busy {found[0]:.0%}, {found[1]:.0f} output tok/s"
            if found
            else "not within these rates (cheaper at every rate run, or never)"
        )
        print(f"break-even against {price.reference}: {where}")


def arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    """The command line, and the exporter's settings it describes (README's figures: the defaults)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), help="requests per second")
    parser.add_argument("--duration", type=float, default=1800.0, help="virtual seconds per rate")
    parser.add_argument("--gpu-hourly-price", type=float, default=1.20)
    parser.add_argument("--electricity-price-per-kwh", type=float, default=0.15)
    parser.add_argument("--pue", type=float, default=1.3)
    parser.add_argument("--currency", default="USD")
    parser.add_argument("--api-prices", default=API_PRICES)
    args = parser.parse_args(argv)
    settings = Settings(
        gpu_hourly_price=args.gpu_hourly_price,
        electricity_price_per_kwh=args.electricity_price_per_kwh,
        electricity_with_rental=True,
        pue=args.pue,
        currency=args.currency,
        api_prices=args.api_prices,
    )
    return args, settings


if __name__ == "__main__":
    main()
