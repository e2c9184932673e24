"""One tick of the core: two readings in, increments for the ledger out. Stateful (it holds
the last counter values, the idle-power samples and work still waiting for its energy) but
pure: it never reads a clock or a device; the timestamps come inside the readings."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.attribution.counters import CounterTracker
from exporter.attribution.energy import IntervalEnergy, counter_key, measured_interval
from exporter.attribution.estimator import DRIVERS, MarginalCostEstimator
from exporter.attribution.idle import IdlePowerEstimator
from exporter.attribution.models import DEFAULT_MAX_MODELS, DEFAULT_MODEL_EXPIRY_SECONDS, ModelRoster
from exporter.attribution.phase_model import modelled_interval
from exporter.attribution.pricing import CostKey, Prices, costs, emissions
from exporter.attribution.prior import Coefficients, Prior
from exporter.attribution.readings import EnergySnapshot, GpuIdentity, VllmSnapshot
from exporter.attribution.split import Allocation, ClassKey, allocate
from exporter.attribution.token_class import CACHED_INPUT, INPUT, OUTPUT
from exporter.attribution.work import Work, WorkMeter


@dataclass(frozen=True, slots=True)
class Policy:
    static_by_occupancy: bool = True
    step_on_output: bool = True


@dataclass(slots=True)
class TickResult:
    tokens: dict[ClassKey, float] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    allocation: Allocation | None = None
    seconds: float = 0.0
    energy_joules: float = 0.0
    costs: dict[CostKey, float] = field(default_factory=dict)
    emissions: dict[ClassKey, float] = field(default_factory=dict)
    gpu_energy: dict[GpuIdentity, float] = field(default_factory=dict)
    gpu_power: dict[GpuIdentity, float] = field(default_factory=dict)
    vllm_resets: int = 0
    energy_resets: int = 0
    models: tuple[str, ...] = ()
    idle_watts: float = 0.0
    idle_measured: bool = False  # the idle power comes from measured idle intervals, not the prior
    marginal: dict[ClassKey, tuple[float, float]] = field(default_factory=dict)
    coefficients: dict[str, tuple[float, float]] = field(default_factory=dict)  # per driver: (J per unit, stddev)
    identified: bool = False
    residual_ratio: float | None = None
    fits: int = 0  # estimator updates so far
    # (source, reason) -> count: problems within a reading that still counted (a series rejected,
    # a counter glitch), counted in source_errors_total beside the reads' own failures
    errors: dict[tuple[str, str], int] = field(default_factory=dict)
    expired_models: tuple[str, ...] = ()  # not seen for long: their series leave the exposition


class Attributor:
    def __init__(
        self,
        prior: Prior,
        idle: IdlePowerEstimator,
        prices: Prices,
        gpu_count: int,
        policy: Policy = Policy(),
        limit_watts_total: float = float("inf"),
        estimator: MarginalCostEstimator | None = None,
        roster: ModelRoster | None = None,
    ) -> None:
        self.prior = prior
        self.idle = idle
        self.prices = prices
        self.gpu_count = gpu_count
        self.policy = policy
        self.limit_watts_total = limit_watts_total
        self.estimator = estimator  # None: the prior is the answer (a declared policy)
        self._roster = roster or ModelRoster(DEFAULT_MAX_MODELS, DEFAULT_MODEL_EXPIRY_SECONDS)
        self._work = WorkMeter(self._roster.expiry_seconds)
        self._energy = CounterTracker()
        self._last_energy_time: float | None = None
        self._pending: dict[str, Work] = {}  # work seen while the energy of its time was not yet read
        self._pending_idle = True
        self._pending_exact = True  # every pending interval's prompts were counted when scheduled
        self._models: tuple[str, ...] = ()
        self._totals: dict[str, Work] = {}  # lifetime work per model, for amortised marginal costs

    @property
    def models(self) -> tuple[str, ...]:
        return self._models

    def export_state(self) -> dict[str, object]:
        """What the core has learned that a restart should not throw away: the fitted costs and
        the idle-power samples (`exporter.state` keeps it in a file)."""
        state: dict[str, object] = {"idle": self.idle.export_state()}
        if self.estimator is not None:
            state["estimator"] = self.estimator.export_state()
        return state

    def import_state(self, state: object, elapsed_seconds: float) -> None:
        """Resume from `export_state`'s value. ValueError when any part is unusable; then nothing
        is taken (the parts are checked before either is applied)."""
        if not isinstance(state, dict):
            raise ValueError("the state is not a mapping")
        idle = IdlePowerEstimator(self.idle.prior_watts, self.idle.window, self.idle.min_samples)
        idle.import_state(state.get("idle"))
        if self.estimator is not None:
            if "estimator" not in state:
                raise ValueError("the state holds no fitted costs")
            self.estimator.import_state(state["estimator"], elapsed_seconds)
        self.idle = idle

    def tick(self, vllm: VllmSnapshot | None, energy: EnergySnapshot | None) -> TickResult:
        result = TickResult()
        if vllm is not None:
            self._account_work(vllm, result)
        else:
            # Unknown activity: such an interval must not teach the idle estimate.
            self._pending_idle = False
            self._pending_exact = False
        result.models = self._models

        if energy is not None:
            self._account_energy(energy, vllm is not None, result)
        result.idle_watts = self.idle.watts
        result.idle_measured = self.idle.measured
        coefficients, stddevs = self._coefficients()
        result.marginal = self._marginal(coefficients, stddevs)
        result.coefficients = {name: (getattr(coefficients, name), getattr(stddevs, name)) for name in DRIVERS}
        if self.estimator is not None:
            result.identified = self.estimator.identified
            result.residual_ratio = self.estimator.residual_ratio if self.estimator.updates else None
            result.fits = self.estimator.updates
        return result

    def _account_work(self, vllm: VllmSnapshot, result: TickResult) -> None:
        admission = self._roster.admit(vllm.engines, vllm.timestamp)
        for model in admission.expired:  # gone for long: its lifetime totals go with it
            self._totals.pop(model, None)
            self._pending.pop(model, None)
        result.expired_models = admission.expired
        if admission.overflowed:
            _count(result.errors, ("vllm", "model_limit"), admission.overflowed)
        interval = self._work.update(admission.engines, vllm.timestamp)
        result.vllm_resets = interval.resets
        for reason in vllm.rejected:
            _count(result.errors, ("vllm", reason))
        for reason, count in (("counter_decrease", interval.decreases), ("counter_leap", interval.leaps)):
            if count:
                _count(result.errors, ("vllm", reason), count)
        if interval.held:
            _count(result.errors, ("vllm", "counter_missing"), interval.held)
        self._models = tuple(dict.fromkeys(e.model_name for e in admission.engines)) or self._models
        for model, work in interval.by_model.items():
            self._pending.setdefault(model, Work()).add(work)
            self._totals.setdefault(model, Work()).add(work)
            result.tokens[(model, INPUT)] = work.input
            result.tokens[(model, CACHED_INPUT)] = work.cached_input
            result.tokens[(model, OUTPUT)] = work.output
            result.steps[model] = work.steps
        self._pending_idle = self._pending_idle and interval.idle
        self._pending_exact = self._pending_exact and interval.exact

    def _coefficients(self) -> tuple[Coefficients, Coefficients]:
        if self.estimator is not None:
            return self.estimator.coefficients, self.estimator.stddevs
        return self.prior.energy, self.prior.energy.scaled(self.prior.relative_stddev)

    def _account_energy(self, energy: EnergySnapshot, vllm_known: bool, result: TickResult) -> None:
        previous_time = self._last_energy_time
        if previous_time is not None and energy.timestamp == previous_time and not energy.modelled:
            # No newer measurement than last time (a collector slower than our ticks, e.g. DCGM's):
            # the work waits with the energy that will pay for it, as after a missed read.
            result.gpu_power = {gpu.identity: gpu.power_watts for gpu in energy.gpus if gpu.power_watts is not None}
            return
        self._last_energy_time = energy.timestamp
        if previous_time is None:
            # The first reading is a baseline for every counter.
            for gpu in energy.gpus:
                self._energy.increase(counter_key(energy.origin, gpu), gpu.energy_joules)
            self._pending.clear()
            self._pending_idle = True
            self._pending_exact = True
            return
        seconds = max(energy.timestamp - previous_time, 0.0)
        work = self._pending
        if energy.modelled:
            interval = modelled_interval(
                energy.gpus, seconds, work.values(), self.prior.energy, self.idle.watts, self.limit_watts_total
            )
        else:
            interval = measured_interval(energy.gpus, self._energy, energy.origin)
        if interval.teaches and seconds > 0:
            self._learn(interval, seconds, idle_interval=self._pending_idle and vllm_known, vllm_known=vllm_known)

        allocation = allocate(
            interval.joules,
            seconds,
            work,
            self._coefficients()[0],
            self.prior.time,
            self.prior.step_overhead_seconds,
            self.idle.watts,
            idle_models=self._models,
            static_by_occupancy=self.policy.static_by_occupancy,
            step_on_output=self.policy.step_on_output,
            # A modelled energy says nothing the costs did not: no surprise to place.
            covariance=self.estimator.covariance if self.estimator is not None and interval.measured else None,
        )
        self._record_energy(result, interval, allocation, seconds)
        self._pending = {}
        self._pending_idle = True
        self._pending_exact = True

    def _learn(self, interval: IntervalEnergy, seconds: float, *, idle_interval: bool, vllm_known: bool) -> None:
        """Measured energy of a complete interval teaches the idle estimate (nothing ran) or the
        fit (work ran, and vLLM said what)."""
        if idle_interval:
            self.idle.observe(interval.joules, seconds)
        elif self.estimator is not None and vllm_known:
            combined = Work()
            for piece in self._pending.values():
                combined.add(piece)
            # Fitted on what was measured; the allocation then uses the updated costs.
            self.estimator.observe(interval.joules - self.idle.watts * seconds, seconds, combined, self._pending_exact)

    def _record_energy(
        self, result: TickResult, interval: IntervalEnergy, allocation: Allocation, seconds: float
    ) -> None:
        result.gpu_energy = interval.per_gpu
        result.gpu_power = interval.power
        result.energy_resets = interval.resets
        result.allocation = allocation
        result.seconds = seconds
        result.energy_joules = interval.joules
        result.costs = costs(allocation, seconds, self.gpu_count, self.prices)
        result.emissions = emissions(allocation, self.prices)

    def _marginal(self, e: Coefficients, sd: Coefficients) -> dict[ClassKey, tuple[float, float]]:
        """Marginal energy per token; the per-step and KV costs are amortised over the output
        tokens seen so far, since a step is paid once for the whole batch."""
        rel = self.prior.relative_stddev
        result: dict[ClassKey, tuple[float, float]] = {}
        for model in self._models:
            totals = self._totals.get(model, Work())
            if self.estimator is not None:
                output = self.estimator.output_per_token(totals)
            else:
                value = e.output
                if totals.output > 0:
                    work = e.output * totals.decode_tokens + e.step * totals.steps + e.kv * totals.kv_context
                    value = work / totals.output
                output = (value, value * rel)
            result[(model, INPUT)] = (e.input, sd.input)
            result[(model, CACHED_INPUT)] = (e.cached_input, sd.cached_input)
            result[(model, OUTPUT)] = output
        return result


def _count(errors: dict[tuple[str, str], int], key: tuple[str, str], n: int = 1) -> None:
    errors[key] = errors.get(key, 0) + n
