"""How close the attribution comes to the truth: the real core driven by the simulator's sources
on a virtual clock, compared with the simulator's oracle and with two simpler accountings
computed on the same trace:

- `all_to_output`: every joule charged to output tokens (how per-output-token energy
  leaderboards and meters count);
- `request_time`: energy split by summed per-request prefill vs decode wall time, as vLLM's
  `request_prefill_time_seconds` / `request_decode_time_seconds` would give (how request-time
  cost allocators split).

Two paths to the work: `counters` reads vLLM's own families (`SimVllmSource`); `plugin` runs the
simulation with the vLLM plugin and reads the plugin's families through the exporter's own
`WorkReader`, with its energy through `PluginEnergy` (the plugin publishes none here, so the
simulated NVML answers), as `run` wires them. After every tick the cumulative split is compared
with the oracle's (`exporter.sim.trust`): `trust_seconds` is the time to trust.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.attribution.attributor import TickResult
from exporter.attribution.estimator import DRIVERS
from exporter.attribution.model_spec import ModelSpec
from exporter.attribution.token_class import IDLE, INPUT, OUTPUT, TOKEN_CLASSES, TokenClass
from exporter.config import Settings
from exporter.sim import Faults, SimEnergySource, Simulation, SimVllmSource, TrustClock
from exporter.sim.workload import Scenario
from exporter.sources.errors import SourceError
from exporter.sources.plugin import PluginEnergy, WorkReader

CLASSES = tuple(TokenClass)
PATHS = ("counters", "plugin")  # vLLM's own counters, or the plugin's families through WorkReader


@dataclass(slots=True)
class Evaluation:
    allocated: dict[str, float]  # J per class, as the exporter allocated it
    oracle: dict[str, float]  # true J per class, mixed steps split by the product's convention
    measured_joules: float  # what the (gain-scaled) energy counter said
    true_joules: float
    fitted: dict[str, float]  # fitted marginal J per driver
    fitted_stddev: dict[str, float]
    true_marginal: dict[str, float]
    prior: dict[str, float]
    identified: bool
    tokens: dict[str, float] = field(default_factory=dict)  # as the exporter counted them
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> J per class
    ticks: int = 0
    missed: int = 0
    oracle_time_share: dict[str, float] = field(default_factory=dict)  # true J per class by time share alone
    path: str = "counters"
    work_origin: str = ""  # whose step counts the exporter read last ("plugin", "vllm")
    trust_seconds: float | None = None  # time to trust; None: the split never settled within the band
    trust_trail: list[tuple[float, float, float]] = field(default_factory=list)  # (t, input, output error)

    def share_error(
        self, cls: str, allocated: dict[str, float] | None = None, oracle: dict[str, float] | None = None
    ) -> float:
        """Relative error of a class's share of the energy (gain error cancels out of shares),
        against the oracle (or another split of the same true energy)."""
        allocated = self.allocated if allocated is None else allocated
        oracle = self.oracle if oracle is None else oracle
        total = sum(allocated.values())
        truth = oracle[cls] / self.true_joules if self.true_joules else float("nan")
        if not truth or not total:
            return float("nan")
        return (allocated.get(cls, 0.0) / total) / truth - 1.0

    def joules_per_token(self, cls: str, allocated: dict[str, float] | None = None) -> float:
        allocated = self.allocated if allocated is None else allocated
        return allocated[cls] / self.tokens[cls] if self.tokens.get(cls) else float("nan")

    def coefficient_error(self, driver: str) -> float:
        truth = self.true_marginal.get(driver, 0.0)
        return self.fitted[driver] / truth - 1.0 if truth else float("nan")

    @property
    def split_ratio(self) -> float:
        """Allocated input energy over output energy."""
        return self.allocated.get(INPUT, 0.0) / self.allocated[OUTPUT] if self.allocated.get(OUTPUT) else float("nan")


def evaluate(
    scenario: Scenario,
    *,
    gpu: str = "H100",
    model: ModelSpec,
    gpus: int = 1,
    truth: str = "component",
    interval: float = 5.0,
    duration: float = 1800.0,
    seed: int = 1,
    faults: Faults = Faults(),
    missed_scrape_rate: float = 0.0,
    settings: Settings | None = None,
    plugin: bool = False,
    on_tick: Callable[[Simulation, TickResult], None] | None = None,
) -> Evaluation:
    """`on_tick`, if given, sees the simulation and the core's result after every tick that was
    not missed (benchmarks/figure_data.py records the run interval by interval with it)."""
    from exporter.app import make_attributor  # the exporter's own wiring, as `run` builds it
    from exporter.attribution.gpu_table import GPU_TABLE

    settings = settings or Settings()
    sim = Simulation(scenario, gpu, model, gpus=gpus, truth=truth, seed=seed, faults=faults, trace=True, plugin=plugin)
    if plugin:  # the exporter's own road, as `run` wires it in its default energy mode (auto)
        work = WorkReader(SimVllmSource(sim))
        vllm, energy = work, PluginEnergy(work, SimEnergySource(sim))
    else:
        vllm, energy = SimVllmSource(sim), SimEnergySource(sim)
    attributor = make_attributor(settings, GPU_TABLE[gpu], gpus, model)
    skip = random.Random(f"{seed}/missed")
    allocated = dict.fromkeys(CLASSES, 0.0)
    tokens = dict.fromkeys(TOKEN_CLASSES, 0.0)
    measured = 0.0
    ticks = missed = 0

    origin = ""

    def read(source):
        try:
            return source.read()
        except SourceError:
            return None

    def read_work():
        nonlocal origin
        snapshot = read(vllm)
        if snapshot is not None:
            origin = snapshot.origin
        return snapshot

    attributor.tick(read_work(), read(energy))
    first = sim.oracle_totals()  # the first reading is a baseline: compare from here
    trust = TrustClock(start=first.time)
    trail = []
    while sim.now < duration:
        sim.advance(interval)
        if skip.random() < missed_scrape_rate:
            missed += 1
            continue
        result = attributor.tick(read_work(), read(energy))
        ticks += 1
        for (_, cls), count in result.tokens.items():
            tokens[cls] += count
        if result.allocation is not None:
            measured += result.energy_joules
            for (_, cls), joules in result.allocation.energy.items():
                allocated[cls] += joules
        errors = trust.update(sim.now, allocated, sim.oracle_totals().minus(first))
        trail.append((sim.now, *errors))
        if on_tick is not None:
            on_tick(sim, result)

    oracle = sim.oracle_totals().minus(first)
    estimator = attributor.estimator
    fitted = estimator.coefficients if estimator else attributor.prior.energy
    stddev = estimator.stddevs if estimator else attributor.prior.energy.scaled(attributor.prior.relative_stddev)
    try:
        true_marginal = sim.hardware.marginal_coefficients()
    except ValueError:  # the phase-power truth has no marginal cost per unit
        true_marginal = None
    evaluation = Evaluation(
        allocated=allocated,
        oracle=dict(oracle.energy),
        measured_joules=measured,
        true_joules=oracle.energy_joules,
        fitted={d: getattr(fitted, d) for d in DRIVERS},
        fitted_stddev={d: getattr(stddev, d) for d in DRIVERS},
        true_marginal={d: getattr(true_marginal, d) for d in DRIVERS} if true_marginal else {},
        prior={d: getattr(attributor.prior.energy, d) for d in DRIVERS},
        identified=bool(estimator and estimator.identified),
        tokens=tokens,
        ticks=ticks,
        missed=missed,
        oracle_time_share=dict(oracle.energy_time_share),
        path="plugin" if plugin else "counters",
        work_origin=origin,
        trust_seconds=trust.seconds,
        trust_trail=trail,
    )
    evaluation.baselines = _baselines(sim, measured)
    return evaluation


def _baselines(sim: Simulation, measured: float) -> dict[str, dict[str, float]]:
    prefill = decode = 0.0
    for seq in sim.finished:
        start = getattr(seq, "scheduled_at", None)
        if start is None or seq.first_token_at is None or seq.finished_at is None:
            continue
        prefill += seq.first_token_at - start
        decode += seq.finished_at - seq.first_token_at
    by_time = dict.fromkeys(CLASSES, 0.0)
    if prefill + decode > 0:
        by_time[INPUT] = measured * prefill / (prefill + decode)
        by_time[OUTPUT] = measured * decode / (prefill + decode)
    else:
        by_time[IDLE] = measured
    return {
        "all_to_output": {**dict.fromkeys(CLASSES, 0.0), OUTPUT: measured},
        "request_time": by_time,
    }


def fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.1%}"


def fmt_minutes(seconds: float | None) -> str:
    """Time to trust in minutes; "never" when the split did not settle."""
    return "never" if seconds is None else f"{seconds / 60:.1f} min"
