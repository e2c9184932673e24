"""The simulation driver: one engine, its workload, its GPUs' energy and the oracle on a virtual
clock that starts at 0 and only moves when asked (`advance`, `advance_to`).

Time is a sequence of segments: engine steps (their length from the roofline) and idle gaps
(nothing runnable: the clock jumps to the next arrival). A step's effects on vLLM's counters
appear at its end; its energy accrues at constant power through it, so a reading in the middle
of a step sees part of its energy and none of its tokens. Arrivals during a step are scheduled at
the next step, as in vLLM.

Faults happen at fixed virtual times: a vLLM restart loses the requests in flight, zeroes the
counters (new `_created`), leaves the page unreachable for `restart_downtime_seconds` (idle
power meanwhile), and refuses open-loop arrivals in between (closed-loop users retry when it is
back); a driver reset restarts the NVML counters at zero. NVML read errors are drawn by the
energy source (`exporter.sim.sources`) from its own random stream, so reading never changes
what the engine does. Missed scrapes are the caller's business: just don't read.

With `plugin=True` the page also carries the vLLM plugin's families, counted by the plugin's own
`StepCounter` from stats shaped as vLLM 0.32 hands them to stat loggers (started with
`--enable-logging-iteration-details`), once per completed step, and rendered by the plugin's own
table: the same semantics as the real plugin (see `Simulation._record_plugin`). It publishes no
GPU energy: the simulated NVML counters stay the energy source. A restarted vLLM starts a fresh
counter (a new process), and a step cut short by the restart is counted by neither.
"""

from __future__ import annotations

import gc
import math
import random
import threading
from collections import deque
from dataclasses import dataclass
from heapq import heappop, heappush
from types import SimpleNamespace
from typing import NamedTuple

from exporter import __version__
from exporter.attribution.gpu_table import GPU_TABLE, GpuSpec, lookup
from exporter.attribution.model_spec import ModelSpec
from exporter.attribution.token_class import CACHED_INPUT, INPUT, OUTPUT
from exporter.plugin.state import EnergyTotals, Identity, table
from exporter.plugin.steps import StepCounter
from exporter.sim.engine import Engine, EngineConfig, Seq, StepResult
from exporter.sim.hardware import COMPONENT, HardwareModel, Roofline, StepCost
from exporter.sim.oracle import CLASSES, OracleTotals
from exporter.sim.telemetry import EnergyMeter, VllmCounters, render_page
from exporter.sim.workload import Scenario, Workload
from exporter.sources.plugin_families import render

PLUGIN_VLLM_VERSION = "simulated"  # the plugin's info{vllm_version} on the simulated page

_HISTORY_SECONDS = 2.5  # energy history kept for NVML readings (they look back 1.1 s at most)
_RESTART_DOWN, _RESTART_UP, _DRIVER_RESET = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Faults:
    vllm_restarts: tuple[float, ...] = ()  # virtual times at which vLLM dies
    restart_downtime_seconds: float = 5.0  # until it serves again, with fresh counters
    driver_resets: tuple[float, ...] = ()  # virtual times at which the NVML counters restart at 0
    nvml_error_rate: float = 0.0  # probability that one GPU's read fails (GpuReading.error)
    energy_read_error_rate: float = 0.0  # probability that a whole energy read raises SourceError
    gain: float | tuple[float, ...] = 1.0  # board gain error: NVML reads gain x the true energy
    counter_period_seconds: float = 0.1  # NVML energy counter update period


class StepTrace(NamedTuple):
    """One completed step, kept when the simulation is built with `trace=True`."""

    start: float
    end: float
    step: int
    prefill: int  # prompt tokens computed (recomputation included)
    decode: int
    chunks: int  # sequences with a prefill chunk
    emitted: int
    prompt_credit: int
    preemptions: int
    running: int  # after the step
    waiting: int
    kv_usage: float
    energy: float
    e_input: float
    e_cached: float
    e_output: float
    decode_context: int  # KV tokens read by the decode tokens: the true counterpart of the exporter's K


class _Segment:
    __slots__ = ("e0", "entry", "power", "result", "t0", "t1")

    def __init__(
        self, t0: float, t1: float, e0: float, power: float, result: StepResult | None, entry: list[float]
    ) -> None:
        self.t0, self.t1, self.e0, self.power, self.result, self.entry = t0, t1, e0, power, result, entry


def _gpu_spec(gpu: GpuSpec | str) -> GpuSpec:
    if isinstance(gpu, GpuSpec):
        return gpu
    spec = GPU_TABLE.get(gpu) or lookup(gpu)
    if spec is None:
        raise ValueError(f"unknown GPU {gpu!r}; one of {sorted(GPU_TABLE)}")
    return spec


def _fault_events(faults: Faults) -> list[tuple[float, int, int]]:
    """The faults' events as a heap of (time, order, kind); at equal times restarts go first, in
    their order, each one's end after its start, then driver resets."""
    events: list[tuple[float, int, int]] = []
    for i, t in enumerate(faults.vllm_restarts):
        heappush(events, (float(t), 2 * i, _RESTART_DOWN))
        heappush(events, (float(t) + faults.restart_downtime_seconds, 2 * i + 1, _RESTART_UP))
    for i, t in enumerate(faults.driver_resets):
        heappush(events, (float(t), 10**6 + i, _DRIVER_RESET))
    return events


class Simulation:
    """A seeded simulation of one vLLM engine on `gpus` tensor-parallel GPUs.

    `truth` is "component" (energy from FLOPs and bytes, capped at the board limit) or "phase"
    (constant power per phase). Everything is deterministic given the arguments, whatever is
    read and when. Thread-safe through `lock` (the readers and the HTTP server take it).

    `plugin`: the page carries the vLLM plugin's families too (module docstring); `plugin_counter`
    is the plugin's step counter of the vLLM process now running. The plugin labels the engine by
    its index, so `engine_label` must then be one."""

    def __init__(
        self,
        scenario: Scenario,
        gpu: GpuSpec | str,
        model: ModelSpec,
        gpus: int = 1,
        truth: str = COMPONENT,
        seed: int = 0,
        *,
        engine: EngineConfig = EngineConfig(),
        roofline: Roofline = Roofline(),
        faults: Faults = Faults(),
        model_name: str = "simulated-model",
        engine_label: str = "0",
        epoch: float = 1.7e9,
        trace: bool = False,
        plugin: bool = False,
    ) -> None:
        if plugin and not engine_label.isdigit():
            raise ValueError(f"with the plugin, engine_label is vLLM's engine index, not {engine_label!r}")
        self.scenario = scenario
        self.gpu = _gpu_spec(gpu)
        self.model = model
        self.gpus = gpus
        self.seed = seed
        self.config = engine
        self.faults = faults
        self.model_name = model_name
        self.engine_label = engine_label
        self.epoch = epoch
        self.lock = threading.RLock()
        self._build_engine(truth, roofline)
        self._build_meters()
        self._start_accounts()

        self._events = _fault_events(faults)
        self._down_since: float | None = None
        self._lost_in_restart = 0
        self.restarts = 0  # vLLM restarts completed
        self.lost_requests = 0  # requests in flight when vLLM died

        self.trace = trace
        self.step_trace: list[StepTrace] = []
        self.finished: list[Seq] = []  # finished requests, with trace=True

        self.plugin = plugin
        self.plugin_counter: StepCounter | None = StepCounter() if plugin else None
        self._plugin_started = self.counters.created
        self._plugin_preempted = 0  # preemptions not yet reported: vLLM reports them with outputs
        self._engine_index = int(engine_label) if plugin else 0
        details = SimpleNamespace(num_ctx_tokens=0, num_generation_tokens=0, elapsed_ms=0.0, is_dummy=False)
        prompt = SimpleNamespace(computed=0, cached_tokens=0, total=0)
        self._plugin_stats = (
            SimpleNamespace(num_running_reqs=0, num_waiting_reqs=0, kv_cache_usage=0.0, iteration_details=details),
            details,
            SimpleNamespace(num_generation_tokens=0, prompt_token_stats=prompt, num_preempted_reqs=0),
            prompt,
        )

    def _build_engine(self, truth: str, roofline: Roofline) -> None:
        """The hardware model, the KV blocks (unless configured, what fits beside the weights), the
        workload and the engine."""
        config = self.config
        self.hardware = HardwareModel(self.gpu, self.model, self.gpus, truth, roofline)
        self.num_gpu_blocks = config.num_gpu_blocks or self.hardware.kv_cache_blocks(
            config.block_size, config.gpu_memory_utilization
        )
        self.workload = Workload(self.scenario, self.seed)
        self.engine = Engine(config, self.hardware, self.num_gpu_blocks)

    def _build_meters(self) -> None:
        """vLLM's counters, the GPUs' NVML energy counters, and the cache config vLLM's page shows."""
        config, faults = self.config, self.faults
        self.counters = VllmCounters(created=self.epoch)
        gains = faults.gain if isinstance(faults.gain, tuple) else (float(faults.gain),) * self.gpus
        self.meter = EnergyMeter(self.gpus, gains, random.Random(f"{self.seed}/nvml"), faults.counter_period_seconds)
        self.cache_config = {
            "block_size": str(config.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": str(config.enable_prefix_caching),
            "gpu_memory_utilization": str(config.gpu_memory_utilization),
            "kv_cache_size_tokens": str(self.num_gpu_blocks * config.block_size),
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(self.num_gpu_blocks),
        }

    def _start_accounts(self) -> None:
        """The clock at 0 with nothing in flight, and the oracle's totals at zero."""
        self._now = 0.0
        self._t_free = 0.0  # when the current segment started / the engine is next free
        self._cur: _Segment | None = None
        self._e_done = 0.0  # true energy through the end of the completed segments
        self._energy = [0.0, 0.0, 0.0, 0.0]  # by class, completed segments (CLASSES order)
        self._energy_ts = [0.0, 0.0, 0.0, 0.0]  # the same by time share alone (OracleTotals)
        self._seconds = [0.0, 0.0, 0.0, 0.0]
        self._tokens = {INPUT: 0, CACHED_INPUT: 0, OUTPUT: 0, "recomputed": 0}
        self._steps = 0
        self._history: deque[list[float]] = deque()  # [t0, t1, e0, power] per recent segment

    # -- the clock ----------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self._now

    @property
    def vllm_up(self) -> bool:
        return self._down_since is None

    def advance(self, seconds: float) -> None:
        self.advance_to(self._now + seconds)

    def advance_to(self, t: float) -> None:
        with self.lock:
            if t < self._now:
                raise ValueError(f"cannot go back in time from {self._now} to {t}")
            # The simulation builds no reference cycles, so the cyclic collector only costs time
            # here (about a quarter of it); reference counting still frees everything.
            collecting = gc.isenabled()
            gc.disable()
            try:
                events = self._events
                while events and events[0][0] <= t:
                    at, _, kind = heappop(events)
                    at = max(at, self._now)
                    self._run_until(at)
                    self._handle(kind, at)
                self._run_until(t)
            finally:
                if collecting:
                    gc.enable()

    def _run_until(self, target: float) -> None:
        while True:
            cur = self._cur
            if cur is None:
                cur = self._cur = self._next_segment()
            if cur.t1 > target:
                break
            self._complete(cur)
            self._cur = None
            self._t_free = cur.t1
        self._now = target

    def _next_segment(self) -> _Segment:
        t = self._t_free
        engine = self.engine
        for request in self.workload.pop_until(t):
            engine.add_request(request)
        result = engine.step(t) if engine.has_work else None
        if result is None:
            t1, power = self.workload.next_arrival(), self.hardware.idle_watts_total
        else:
            t1 = t + result.cost.seconds
            power = result.cost.energy / result.cost.seconds
        return self._open(t, t1, power, result)

    def _open(self, t0: float, t1: float, power: float, result: StepResult | None) -> _Segment:
        entry = [t0, t1, self._e_done, power]
        history = self._history
        history.append(entry)
        while len(history) > 2 and history[1][0] < t0 - _HISTORY_SECONDS:
            history.popleft()
        return _Segment(t0, t1, self._e_done, power, result, entry)

    def _complete(self, seg: _Segment) -> None:
        r = seg.result
        if r is None:
            e = seg.power * (seg.t1 - seg.t0)
            self._energy[3] += e
            self._energy_ts[3] += e
            self._seconds[3] += seg.t1 - seg.t0
            self._e_done = seg.e0 + e
            return
        c = r.cost
        energy, seconds = self._energy, self._seconds
        energy[0] += c.e_input
        energy[1] += c.e_cached
        energy[2] += c.e_output
        _add_time_share(self._energy_ts, c, 1.0)
        seconds[0] += c.s_input
        seconds[1] += c.s_cached
        seconds[2] += c.s_output
        self._e_done = seg.e0 + c.energy
        self._steps += 1
        tokens = self._tokens
        tokens[INPUT] += r.prefill - r.recomputed
        tokens["recomputed"] += r.recomputed
        tokens[OUTPUT] += r.emitted
        tokens[CACHED_INPUT] += r.first_hits
        self.counters.apply(r)
        if self.plugin_counter is not None:
            self._record_plugin(self.plugin_counter, r)
        t1 = seg.t1
        for seq in r.first_tokens:
            seq.first_token_at = t1
        for seq in r.finished:
            seq.finished_at = t1
            self.workload.on_finish(t1)
        if self.trace:
            self.finished.extend(r.finished)
            self.step_trace.append(
                StepTrace(
                    seg.t0,
                    t1,
                    r.step,
                    r.prefill,
                    r.decode,
                    r.chunks,
                    r.emitted,
                    r.prompt_credit,
                    r.preemptions,
                    r.running,
                    r.waiting,
                    r.kv_usage,
                    c.energy,
                    c.e_input,
                    c.e_cached,
                    c.e_output,
                    r.decode_context,
                )
            )

    def _record_plugin(self, counter: StepCounter, r: StepResult) -> None:
        """What vLLM 0.32 hands a stat logger after this step: its scheduler stats with the
        iteration details (prompt tokens counted when scheduled, recomputation included), and,
        only when the step emitted tokens (vLLM builds IterationStats for output batches alone),
        the tokens and preemptions as vLLM's own counters see them. A preemption reaches vLLM's
        stats as an event on a request's output, so one in a step without outputs is reported
        with the next step's. The stats objects are reused: the counter reads them and keeps
        nothing."""
        scheduler, details, iteration, prompt = self._plugin_stats
        details.num_ctx_tokens = r.prefill
        details.num_generation_tokens = r.decode
        details.elapsed_ms = r.cost.seconds * 1000.0
        scheduler.num_running_reqs = r.running
        scheduler.num_waiting_reqs = r.waiting
        scheduler.kv_cache_usage = r.kv_usage
        preempted = self._plugin_preempted + r.preemptions
        if not r.emitted:
            self._plugin_preempted = preempted
            counter.record(scheduler, None, self._engine_index)
            return
        prompt.computed = r.prompt_credit - r.cached_credit
        prompt.cached_tokens = r.cached_credit
        prompt.total = r.prompt_credit
        iteration.num_generation_tokens = r.emitted
        iteration.num_preempted_reqs = preempted
        self._plugin_preempted = 0
        counter.record(scheduler, iteration, self._engine_index)

    def _truncate(self, at: float) -> None:
        """End the segment in flight at `at`: its energy so far is spent, its effects are lost."""
        seg = self._cur
        if seg is None:
            return
        dt = max(at - seg.t0, 0.0)
        r = seg.result
        if r is None:
            e = seg.power * dt
            self._energy[3] += e
            self._energy_ts[3] += e
            self._seconds[3] += dt
        else:
            c = r.cost
            frac = dt / (seg.t1 - seg.t0)
            e = c.energy * frac
            self._energy[0] += c.e_input * frac
            self._energy[1] += c.e_cached * frac
            self._energy[2] += c.e_output * frac
            _add_time_share(self._energy_ts, c, frac)
            self._seconds[0] += c.s_input * frac
            self._seconds[1] += c.s_cached * frac
            self._seconds[2] += c.s_output * frac
        self._e_done = seg.e0 + e
        seg.entry[1] = at
        self._cur = None
        self._t_free = at

    def _handle(self, kind: int, at: float) -> None:
        if kind == _DRIVER_RESET:
            self.meter.driver_reset(at, self.energy_at(at))
        elif kind == _RESTART_DOWN:
            if self._down_since is not None:
                return
            self._truncate(at)
            self._lost_in_restart = len(self.engine.running) + len(self.engine.waiting)
            self.lost_requests += self._lost_in_restart
            self._down_since = at
            self._cur = self._open(at, math.inf, self.hardware.idle_watts_total, None)
        elif kind == _RESTART_UP:
            if self._down_since is None:
                return
            self._truncate(at)
            self.engine = Engine(self.config, self.hardware, self.num_gpu_blocks)
            self.counters = VllmCounters(created=self.epoch + at)
            if self.plugin:  # vLLM's new process loads the plugin afresh
                self.plugin_counter = StepCounter()
                self._plugin_started = self.counters.created
                self._plugin_preempted = 0
            self.workload.on_restart(self._down_since, at, self._lost_in_restart)
            self._down_since = None
            self.restarts += 1

    # -- readings -----------------------------------------------------------------------

    def energy_at(self, t: float) -> float:
        """True cumulative energy of all GPUs at virtual time t (now, or up to ~2 s before)."""
        if t <= 0:
            return 0.0
        for t0, t1, e0, power in reversed(self._history):
            if t >= t0:
                return e0 + power * (min(t, t1) - t0)
        return 0.0

    def oracle_totals(self) -> OracleTotals:
        with self.lock:
            energy = list(self._energy)
            energy_ts = list(self._energy_ts)
            seconds = list(self._seconds)
            total = self._e_done
            seg = self._cur
            if seg is not None and self._now > seg.t0:
                dt = self._now - seg.t0
                r = seg.result
                if r is None:
                    e = seg.power * dt
                    energy[3] += e
                    energy_ts[3] += e
                    seconds[3] += dt
                else:
                    c = r.cost
                    frac = dt / (seg.t1 - seg.t0)
                    e = c.energy * frac
                    for i, part in enumerate((c.e_input, c.e_cached, c.e_output)):
                        energy[i] += part * frac
                    _add_time_share(energy_ts, c, frac)
                    for i, part in enumerate((c.s_input, c.s_cached, c.s_output)):
                        seconds[i] += part * frac
                total += e
            return OracleTotals(
                time=self._now,
                energy_joules=total,
                energy=dict(zip(CLASSES, energy)),
                seconds=dict(zip(CLASSES, seconds)),
                tokens={k: float(v) for k, v in self._tokens.items()},
                steps=self._steps,
                energy_time_share=dict(zip(CLASSES, energy_ts)),
            )

    def page(self) -> str:
        """vLLM's /metrics page as it stands now (whatever vLLM's state; see `vllm_up`), with the
        plugin's families after vLLM's own when the simulation has the plugin."""
        with self.lock:
            page = render_page(self.counters, self.model_name, self.engine_label, self.cache_config)
            if self.plugin_counter is not None:
                page += self.plugin_page()
            return page

    def plugin_page(self) -> str:
        """The plugin's families alone, as its snapshot file holds them ("" without the plugin)."""
        with self.lock:
            counter = self.plugin_counter
            if counter is None:
                return ""
            identity = Identity(
                model_name=self.model_name,
                version=__version__,
                vllm_version=PLUGIN_VLLM_VERSION,
                started=self._plugin_started,
                kv_capacity_tokens=float(self.num_gpu_blocks * self.config.block_size),
            )
            samples = table(
                identity, counter.engines, counter.missing, counter.details_seen, {}, None, EnergyTotals(), 0.0
            )
            return render(samples)


def _add_time_share(totals: list[float], cost: StepCost, frac: float) -> None:
    totals[0] += cost.ts_input * frac
    totals[1] += cost.ts_cached * frac
    totals[2] += (cost.energy - cost.ts_input - cost.ts_cached) * frac


__all__ = ["PLUGIN_VLLM_VERSION", "Faults", "Simulation", "StepTrace"]
