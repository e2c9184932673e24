"""What the simulated server and GPUs show the outside world, with the real semantics of vLLM's
counters and NVML's energy counter, as listed below:

vLLM (`VllmCounters`, `render_page`): the families of vLLM 0.32's Prometheus page with the same
names, `model_name` and `engine` labels, `# HELP`/`# TYPE` lines and `_created` samples, written
as prometheus_client writes them. Counters move when a step's outputs are processed (its end):
- `prompt_tokens_total` credits a request's whole prompt, cache hits included, in the step that
  emits its first token; `prompt_tokens_by_source_total` and `prompt_tokens_cached_total` split
  it (hits as of the request's first admission, never after a preemption);
- `generation_tokens_total` counts every emitted token;
- `iteration_tokens_total` is a histogram observed once per step *that emitted a token*, with
  the prompt tokens credited in that step plus the tokens it generated (vLLM builds its
  IterationStats only for output batches, so a step that only advances a chunked prefill is
  not observed and S under-counts forward passes);
- gauges (`num_requests_running/waiting`, `kv_cache_usage_perc`) hold their values after the
  last processed step and keep them through idle gaps;
- a restart sets everything to zero with new `_created` times.

NVML (`EnergyMeter`): per GPU a total-energy counter in integer mJ that updates every 100 ms
(each GPU with its own phase), starts at an arbitrary value (energy since driver load), reads
`gain` x the true energy (board gain error), restarts at zero on a driver reload; power is the
trailing 1 s average, as on Ampere and newer.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine makes the results this module counts; it never imports this one
    from exporter.sim.engine import StepResult

ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def go_float(value: float) -> str:
    """A float as prometheus_client writes it (Go's formatting: exponents from 1e7 on)."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class VllmCounters:
    """The counters and gauges of one vLLM engine since it started at `created` (Unix time)."""

    __slots__ = (
        "cached_tokens",
        "computed_tokens",
        "created",
        "finished",
        "generation_tokens",
        "iteration_buckets",
        "iteration_count",
        "iteration_sum",
        "kv_usage",
        "preemptions",
        "prefix_hits",
        "prefix_queries",
        "prompt_tokens",
        "running",
        "waiting",
    )

    def __init__(self, created: float) -> None:
        self.created = created
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.computed_tokens = 0
        self.preemptions = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.finished = 0
        self.iteration_buckets = [0] * (len(ITERATION_BUCKETS) + 1)  # per bucket, the last is +Inf
        self.iteration_count = 0
        self.iteration_sum = 0
        self.running = 0
        self.waiting = 0
        self.kv_usage = 0.0

    def apply(self, r: StepResult) -> None:
        """Process one step's outputs (an `engine.StepResult`)."""
        if r.emitted:
            tokens = r.prompt_credit + r.emitted
            self.iteration_buckets[bisect_left(ITERATION_BUCKETS, tokens)] += 1
            self.iteration_count += 1
            self.iteration_sum += tokens
            self.generation_tokens += r.emitted
        if r.prompt_credit:
            self.prompt_tokens += r.prompt_credit
            self.cached_tokens += r.cached_credit
            self.computed_tokens += r.prompt_credit - r.cached_credit
        if r.queries:
            self.prefix_queries += r.queries
            self.prefix_hits += r.query_hits
        self.preemptions += r.preemptions
        if r.finished:
            self.finished += len(r.finished)
        self.running = r.running
        self.waiting = r.waiting
        self.kv_usage = r.kv_usage


_HELP = {
    "num_requests_running": "Number of requests in model execution batches.",
    "num_requests_waiting": "Number of requests waiting to be processed.",
    "kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
    "prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
    "num_preemptions": "Cumulative number of preemption from the engine.",
    "prompt_tokens": "Number of prefill tokens processed.",
    "prompt_tokens_by_source": "Number of prompt tokens by source.",
    "prompt_tokens_cached": "Number of cached prompt tokens (local + external).",
    "generation_tokens": "Number of generation tokens processed.",
    "request_success": "Count of successfully processed requests.",
    "iteration_tokens_total": "Histogram of number of tokens per engine_step.",
    "cache_config_info": "Information of the LLMEngine CacheConfig",
}


def render_page(c: VllmCounters, model_name: str, engine: str, cache_config: dict[str, str]) -> str:
    """vLLM's /metrics page for one engine (the families the exporter reads, and a few more)."""
    page = _Page(c.created, {"engine": engine, "model_name": model_name})
    page.gauge("num_requests_running", c.running)
    page.gauge("num_requests_waiting", c.waiting)
    page.gauge("kv_cache_usage_perc", c.kv_usage)
    _write_counters(page, c)
    page.histogram("iteration_tokens_total", c.iteration_buckets, c.iteration_count, c.iteration_sum)
    page.info("cache_config_info", {**cache_config, "engine": engine})
    return "\n".join(page.lines) + "\n"


def _write_counters(page: _Page, c: VllmCounters) -> None:
    page.counter("prefix_cache_queries", [(None, c.prefix_queries)])
    page.counter("prefix_cache_hits", [(None, c.prefix_hits)])
    page.counter("num_preemptions", [(None, c.preemptions)])
    page.counter("prompt_tokens", [(None, c.prompt_tokens)])
    page.counter(
        "prompt_tokens_by_source",
        [
            ({"source": "local_compute"}, c.computed_tokens),
            ({"source": "local_cache_hit"}, c.cached_tokens),
            ({"source": "external_kv_transfer"}, 0.0),
        ],
    )
    page.counter("prompt_tokens_cached", [(None, c.cached_tokens)])
    page.counter("generation_tokens", [(None, c.generation_tokens)])
    page.counter(
        "request_success",
        [({"finished_reason": reason}, c.finished if reason == "length" else 0.0) for reason in FINISHED_REASONS],
    )


class _Page:
    """One page being written, family by family, as prometheus_client writes them: `base` labels
    on every sample (but the info family's), and `_created` times a few microseconds apart."""

    __slots__ = ("base", "created", "families", "lines")

    def __init__(self, created: float, base: dict[str, str]) -> None:
        self.created = created
        self.base = base
        self.families = 0  # families given a `_created` time so far
        self.lines: list[str] = []

    def labels(self, extra: dict[str, str] | None = None) -> str:
        items = dict(self.base)
        if extra:
            items.update(extra)
        return _label_set(items)

    def created_value(self) -> str:
        # Each family is registered a few microseconds after the previous one, as in a real page.
        self.families += 1
        return go_float(self.created + 1.1e-5 * self.families)

    def gauge(self, name: str, value: float) -> None:
        self.lines += (
            f"# HELP vllm:{name} {_HELP[name]}",
            f"# TYPE vllm:{name} gauge",
            f"vllm:{name}{self.labels()} {go_float(value)}",
        )

    def counter(self, name: str, values: Sequence[tuple[dict[str, str] | None, float]]) -> None:
        """A counter's `_total` samples, one per label set, then their `_created` gauges."""
        out = self.lines
        out.append(f"# HELP vllm:{name}_total {_HELP[name]}")
        out.append(f"# TYPE vllm:{name}_total counter")
        for extra, value in values:
            out.append(f"vllm:{name}_total{self.labels(extra)} {go_float(value)}")
        out.append(f"# HELP vllm:{name}_created {_HELP[name]}")
        out.append(f"# TYPE vllm:{name}_created gauge")
        for extra, _ in values:
            out.append(f"vllm:{name}_created{self.labels(extra)} {self.created_value()}")

    def histogram(self, name: str, buckets: Sequence[int], count: int, total: int) -> None:
        """A histogram over ITERATION_BUCKETS (`buckets`: per bucket, the last +Inf; not cumulative)."""
        out = self.lines
        out.append(f"# HELP vllm:{name} {_HELP[name]}")
        out.append(f"# TYPE vllm:{name} histogram")
        cumulative = 0
        for bound, n in zip((*ITERATION_BUCKETS, math.inf), buckets):
            cumulative += n
            out.append(f"vllm:{name}_bucket{self.labels({'le': go_float(bound)})} {go_float(cumulative)}")
        out.append(f"vllm:{name}_count{self.labels()} {go_float(count)}")
        out.append(f"vllm:{name}_sum{self.labels()} {go_float(total)}")
        out.append(f"# HELP vllm:{name}_created {_HELP[name]}")
        out.append(f"# TYPE vllm:{name}_created gauge")
        out.append(f"vllm:{name}_created{self.labels()} {self.created_value()}")

    def info(self, name: str, labels: dict[str, str]) -> None:
        """An info gauge (value 1) with exactly `labels`, as vLLM writes its config."""
        self.lines += (
            f"# HELP vllm:{name} {_HELP[name]}",
            f"# TYPE vllm:{name} gauge",
            f"vllm:{name}{_label_set(labels)} 1.0",
        )


def _label_set(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items())) + "}"


class EnergyMeter:
    """NVML's total-energy counter of each of `gpus` GPUs that share a load equally.

    `energy_at(t)` gives the true cumulative energy of all GPUs at virtual time t (0 for t <= 0);
    it must reach at least 1.1 s into the past."""

    def __init__(self, gpus: int, gains: Sequence[float], rng: random.Random, period: float = 0.1) -> None:
        if len(gains) != gpus:
            raise ValueError("one gain per GPU")
        self.gpus = gpus
        self.gains = tuple(gains)
        self.period = period
        self.phases = [rng.random() * period for _ in range(gpus)]
        self.offsets_mj = [rng.randrange(10**8, 10**10) for _ in range(gpus)]  # since driver load
        self.reset_at: float | None = None
        self._base: list[float] = [0.0] * gpus  # per-GPU true energy at the last reset

    def update_time(self, i: int, t: float) -> float:
        """The last counter update of GPU i at or before t."""
        phase = self.phases[i]
        return phase + math.floor((t - phase) / self.period) * self.period

    def driver_reset(self, t: float, energy_total: float) -> None:
        self.reset_at = t
        self._base = [energy_total / self.gpus] * self.gpus
        self.offsets_mj = [0] * self.gpus

    def counter_mj(self, i: int, t: float, energy_at: Callable[[float], float]) -> int:
        tq = self.update_time(i, t)
        if self.reset_at is not None and tq < self.reset_at:
            return 0
        true_j = energy_at(tq) / self.gpus - self._base[i]
        return self.offsets_mj[i] + math.floor(self.gains[i] * true_j * 1000.0)

    def power_watts(self, i: int, t: float, energy_at: Callable[[float], float]) -> float:
        tq = self.update_time(i, t)
        if tq <= 0:
            return 0.0
        start = max(tq - 1.0, 0.0)
        return self.gains[i] * (energy_at(tq) - energy_at(start)) / self.gpus / (tq - start)


__all__ = ["ITERATION_BUCKETS", "EnergyMeter", "VllmCounters", "go_float", "render_page"]
