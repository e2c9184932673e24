"""Per-tick cost on the real 55 KB vLLM page: our parse + attribution against a full
`prometheus_client` parse of the same page, measured in the same run; and what the loop adds to
it (publishing the tick to the ledger) and what one scrape costs (rendering the catalogue).

    python -m benchmarks.bench_tick [--rounds 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import make_attributor
from exporter.attribution.attributor import TickResult
from exporter.attribution.gpu_table import GPU_TABLE
from exporter.attribution.model_spec import ModelSpec
from exporter.attribution.readings import EnergySnapshot, GpuReading
from exporter.catalogue import BUILD_LABELS
from exporter.collector import LedgerCollector
from exporter.config import Settings
from exporter.landing import History, Setting, page
from exporter.ledger import Ledger, SourceRead, TickRecord
from exporter.sources.vllm_page import parse

PAGE = (Path(__file__).parents[1] / "tests" / "fixtures" / "vllm-0.32-cpu-metrics.txt").read_text()


def timed(fn, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _views(reads: dict[str, SourceRead], tick: Callable[[], TickResult], count: int) -> list:
    """The views of `count` ticks 5 s apart, published to a ledger of their own."""
    ledger, views = Ledger(), []
    for i in range(count):
        ledger.publish(TickRecord(reads, tick(), (), 0.001, 1.7e9 + 5.0 * i, True))
        views.append(ledger.view())
    return views


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()

    # The core exactly as `run` builds it by default: fitted estimator, prices, policies.
    settings = Settings(gpu_hourly_price=3.0, grid_carbon_intensity=400, fit_window_seconds=1)
    attributor = make_attributor(settings, GPU_TABLE["H100"], 1, ModelSpec(8e9, 8e9, 2, 131072, "bench"))
    clock = [0.0]

    tokens = [0.0]

    def tick() -> TickResult:
        # The page's counters move every tick, so the estimator fits (a window per tick) as it would under load.
        clock[0] += 1.0
        tokens[0] += 1000.0
        text = PAGE.replace(
            'vllm:generation_tokens_total{engine="0",model_name="tiny-llama"} 1576.0',
            f'vllm:generation_tokens_total{{engine="0",model_name="tiny-llama"}} {1576.0 + tokens[0]}',
        )
        snapshot = parse(text, clock[0])
        energy = EnergySnapshot(clock[0], (GpuReading(0, "GPU-0", "NVIDIA H100", 300.0 * clock[0], 300.0, "counter"),))
        return attributor.tick(snapshot, energy)

    # What the loop adds to the core's result: one publication to the ledger, and one scrape's
    # rendering of the catalogue (the collector alone, without the process self-metrics).
    ledger = Ledger()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "bench"), attributor.prices))
    # The same scrape with two reference API price lists (--api-prices): their series are added.
    priced = CollectorRegistry(auto_describe=False)
    lists = Settings(api_prices="api-small=0.15/0.075/0.6,api-large=2.5/1.25/10").api_price_lists
    priced.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "bench"), attributor.prices, api_prices=lists))
    history = History()
    reads = {"vllm": SourceRead(True, 0.01), "energy": SourceRead(True, 0.001)}

    def publisher(rounds: int) -> Callable[[], None]:
        """Publishes one prepared tick per call, so only the ledger is timed."""
        pending = iter([TickRecord(reads, tick(), (), 0.001, 1.7e9, True) for _ in range(rounds)])
        return lambda: ledger.publish(next(pending))

    def full_parse() -> None:
        for _ in text_string_to_metric_families(PAGE):
            pass

    tick()  # baselines
    ours = timed(tick, args.rounds)
    baseline = timed(full_parse, max(args.rounds // 10, 20))
    published = timed(publisher(args.rounds), args.rounds)
    render = timed(lambda: generate_latest(registry), max(args.rounds // 4, 50))
    render_priced = timed(lambda: generate_latest(priced), max(args.rounds // 4, 50))
    # What each tick adds for the landing page (the history takes the tick's view, one per 5 s tick
    # as at the default interval), and one page view with the history full.
    views = iter(_views(reads, tick, args.rounds))
    recorded = timed(lambda: history.record(next(views)), args.rounds)
    setting = Setting("bench", "http://127.0.0.1:8000", "auto", "USD")
    landing = timed(lambda: page(ledger.view(), setting, history.samples(), history.window_seconds), 50)
    ours_ms = statistics.median(ours) * 1e3
    base_ms = statistics.median(baseline) * 1e3
    print(f"page: {len(PAGE.encode())} bytes, {PAGE.count(chr(10))} lines")
    print(
        f"parse + attribution per tick: median {ours_ms:.3f} ms, p99 {sorted(ours)[int(len(ours) * 0.99)] * 1e3:.3f} ms"
        f" ({args.rounds} rounds)"
    )
    print(f"publishing the tick to the ledger: median {statistics.median(published) * 1e6:.0f} µs")
    print(f"rendering the catalogue for one scrape: median {statistics.median(render) * 1e3:.3f} ms")
    print(f"  ... with two API price lists: median {statistics.median(render_priced) * 1e3:.3f} ms")
    print(f"the landing page's history taking the tick: median {statistics.median(recorded) * 1e6:.0f} µs")
    print(f"rendering the landing page (full history): median {statistics.median(landing) * 1e3:.3f} ms")
    print(f"prometheus_client full parse: median {base_ms:.3f} ms ({len(baseline)} rounds)")
    print(f"speed-up: {base_ms / ours_ms:.1f}x")
    print(
        f"targets: median <= 1 ms: {'PASS' if ours_ms <= 1 else 'FAIL'}; "
        f">= 5x: {'PASS' if base_ms / ours_ms >= 5 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
