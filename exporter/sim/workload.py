"""What the simulated clients send: arrival processes, prompt and output length distributions,
shared prefixes for the prefix cache, and the named scenario presets.

A `Scenario` is pure data; a `Workload` draws requests from it with its own seeded
`random.Random`, lazily and in arrival order, so a run of any length needs no memory up front.

Lengths: a request's prompt is its class's `prompt` draw (the unique part) plus, with probability
`prefixes.reuse`, one shared prefix from a fixed pool (drawn once per workload), so requests that
share a prefix can hit the prefix cache on its whole 16-token blocks.

Arrivals:
- `Poisson(rate)`: open loop, exponential gaps.
- `OnOff(rate, on_seconds, off_seconds)`: Poisson at `rate` during on-windows, nothing during
  off-windows (idle gaps), starting "on" at t = 0.
- `ClosedLoop(users, think_seconds)`: `users` clients each send a request, wait for it to finish,
  think, and send the next (the usual "batch N" benchmark).
- `Trace(requests)`: explicit requests (arrival, prompt, output, optional shared prefix); the
  scenario's classes and prefixes are not used.

The rates of the presets suit an 8 B model on one H100 at moderate load; pass `rate=` for others.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

# -- length distributions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fixed:
    value: int

    def sample(self, rng: random.Random) -> int:
        return self.value


@dataclass(frozen=True, slots=True)
class Uniform:
    """Integers from `low` to `high`, both included."""

    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """exp(N(ln median, sigma)), rounded and clamped to [low, high]."""

    median: float
    sigma: float
    low: int = 1
    high: int = 1 << 20

    def sample(self, rng: random.Random) -> int:
        value = round(rng.lognormvariate(math.log(self.median), self.sigma))
        return min(max(value, self.low), self.high)


Dist = Fixed | Uniform | LogNormal

# -- arrival processes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Poisson:
    rate: float  # requests per second


@dataclass(frozen=True, slots=True)
class OnOff:
    rate: float  # requests per second while on
    on_seconds: float
    off_seconds: float


@dataclass(frozen=True, slots=True)
class ClosedLoop:
    users: int
    think_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival: float
    prompt_len: int  # whole prompt, the shared prefix included
    output_len: int
    prefix_id: int = -1  # requests with the same id share their first `prefix_len` tokens
    prefix_len: int = 0


@dataclass(frozen=True, slots=True)
class Trace:
    requests: tuple[TraceRequest, ...]


Arrivals = Poisson | OnOff | ClosedLoop | Trace

# -- scenario -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestClass:
    prompt: Dist
    output: Dist
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Prefixes:
    count: int  # size of the pool of shared prefixes
    length: Dist  # length of each prefix, drawn once per workload
    reuse: float  # probability that a request starts with one of them (uniform choice)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    arrivals: Arrivals
    classes: tuple[RequestClass, ...] = ()
    prefixes: Prefixes | None = None
    # With a period > 0 the class weights swing over time: class i's weight is multiplied by
    # 1 + swing * sin(2 pi t / period + 2 pi i / k), so the input:output mix of a window varies.
    mix_period_seconds: float = 0.0
    mix_swing: float = 0.0


@dataclass(slots=True)
class Request:
    rid: int
    arrival: float
    prompt_len: int
    output_len: int
    prefix_id: int = -1
    prefix_len: int = 0


# -- presets --------------------------------------------------------------------------------

_CHAT = RequestClass(prompt=LogNormal(300, 0.7, 16, 4096), output=LogNormal(350, 0.6, 8, 1500), weight=1.0)
_SUMMARY = RequestClass(prompt=LogNormal(2500, 0.5, 256, 8000), output=LogNormal(60, 0.6, 4, 400), weight=1.0)


def well_mixed(rate: float = 3.0, period: float = 120.0) -> Scenario:
    """Chat-like and summary-like requests whose mix swings over `period` seconds: the
    input:output ratio of a window varies, so input and output costs can be told apart."""
    return Scenario(
        "well_mixed",
        Poisson(rate),
        (_CHAT, _SUMMARY),
        Prefixes(count=8, length=Uniform(128, 1024), reuse=0.2),
        mix_period_seconds=period,
        mix_swing=0.9,
    )


def steady_mix(rate: float = 3.0) -> Scenario:
    """One request class at a constant rate: the input:output ratio barely moves, so input and
    output costs cannot be separated from the counters (the estimator must say so)."""
    return Scenario("steady_mix", Poisson(rate), (RequestClass(Fixed(800), Fixed(200)),))


def prefill_heavy(rate: float = 2.0) -> Scenario:
    """Long prompts, a few output tokens (summarisation, classification, RAG scoring)."""
    return Scenario("prefill_heavy", Poisson(rate), (RequestClass(LogNormal(3000, 0.5, 512, 12000), Uniform(1, 32)),))


def decode_heavy(rate: float = 2.0) -> Scenario:
    """Short prompts, long generations (chat, code, reasoning)."""
    cls = RequestClass(LogNormal(120, 0.5, 16, 1024), LogNormal(700, 0.4, 64, 2048))
    return Scenario("decode_heavy", Poisson(rate), (cls,))


def bursty_idle(rate: float = 8.0, on_seconds: float = 20.0, off_seconds: float = 40.0) -> Scenario:
    """Bursts of mixed traffic separated by idle gaps in which nothing runs."""
    return Scenario("bursty_idle", OnOff(rate, on_seconds, off_seconds), (_CHAT, _SUMMARY))


def prefix_cache_heavy(rate: float = 4.0) -> Scenario:
    """A few long shared system prompts reused by 90 % of requests with short unique suffixes."""
    return Scenario(
        "prefix_cache_heavy",
        Poisson(rate),
        (RequestClass(LogNormal(150, 0.5, 8, 1024), LogNormal(150, 0.5, 8, 600)),),
        Prefixes(count=4, length=Uniform(1024, 3072), reuse=0.9),
    )


SCENARIOS = {
    f.__name__: f for f in (well_mixed, steady_mix, prefill_heavy, decode_heavy, bursty_idle, prefix_cache_heavy)
}


# -- the generator --------------------------------------------------------------------------


class Workload:
    """Draws the requests of one scenario, in arrival order. Deterministic given the seed and,
    for a closed loop, the finish times the engine reports through `on_finish`."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self._rng = random.Random(seed)
        self._next_rid = 0
        self._pending: list[tuple[float, int, Request]] = []  # heap by arrival
        self._open_next: float = math.inf  # next open-loop arrival time, not yet drawn into _pending
        arrivals = scenario.arrivals
        if not isinstance(arrivals, Trace) and not scenario.classes:
            raise ValueError(f"scenario {scenario.name!r} has no request classes")
        pool = scenario.prefixes
        self._prefix_lengths = (
            [pool.length.sample(self._rng) for _ in range(pool.count)] if pool is not None and pool.count > 0 else []
        )
        if isinstance(arrivals, (Poisson, OnOff)):
            if arrivals.rate <= 0:
                raise ValueError("arrival rate must be positive")
            self._open_next = self._draw_open(0.0)
        elif isinstance(arrivals, ClosedLoop):
            for _ in range(arrivals.users):
                self._push(self._draw(0.0))
        elif isinstance(arrivals, Trace):
            for item in sorted(arrivals.requests, key=lambda r: r.arrival):
                self._push(self._new(item.arrival, item.prompt_len, item.output_len, item.prefix_id, item.prefix_len))
        else:  # pragma: no cover - guarded by the type
            raise TypeError(f"unknown arrival process {arrivals!r}")

    @property
    def prefix_lengths(self) -> tuple[int, ...]:
        return tuple(self._prefix_lengths)

    def next_arrival(self) -> float:
        """Time of the next arrival; inf when none is scheduled."""
        head = self._pending[0][0] if self._pending else math.inf
        return min(head, self._open_next)

    def pop_until(self, t: float) -> list[Request]:
        """The requests arriving at or before `t`, in arrival order."""
        while self._open_next <= t:
            self._push(self._draw(self._open_next))
            self._open_next = self._draw_open(self._open_next)
        out = []
        pending = self._pending
        while pending and pending[0][0] <= t:
            out.append(heapq.heappop(pending)[2])
        return out

    def on_finish(self, t: float) -> None:
        """A request finished at `t`: in a closed loop its user sends the next after thinking."""
        arrivals = self.scenario.arrivals
        if isinstance(arrivals, ClosedLoop):
            self._push(self._draw(t + arrivals.think_seconds))

    def on_restart(self, down: float, up: float, lost: int) -> None:
        """The server was down from `down` to `up` and lost `lost` requests in flight: open-loop
        arrivals in between are refused (dropped); closed-loop users retry at `up`."""
        arrivals = self.scenario.arrivals
        if isinstance(arrivals, ClosedLoop):
            self._pending.clear()
            for _ in range(arrivals.users):
                self._push(self._draw(up))
        else:
            self.pop_until(math.nextafter(up, -math.inf))

    # -- drawing ------------------------------------------------------------------------

    def _push(self, request: Request) -> None:
        heapq.heappush(self._pending, (request.arrival, request.rid, request))

    def _new(self, arrival: float, prompt: int, output: int, prefix_id: int = -1, prefix_len: int = 0) -> Request:
        rid = self._next_rid
        self._next_rid += 1
        return Request(rid, arrival, max(int(prompt), 1), max(int(output), 1), prefix_id, prefix_len)

    def _draw(self, arrival: float) -> Request:
        rng = self._rng
        cls = self._choose_class(arrival)
        prompt = cls.prompt.sample(rng)
        output = cls.output.sample(rng)
        prefix_id, prefix_len = -1, 0
        pool = self.scenario.prefixes
        if pool is not None and self._prefix_lengths and rng.random() < pool.reuse:
            prefix_id = rng.randrange(len(self._prefix_lengths))
            prefix_len = self._prefix_lengths[prefix_id]
        return self._new(arrival, prefix_len + prompt, output, prefix_id, prefix_len)

    def _choose_class(self, t: float) -> RequestClass:
        classes = self.scenario.classes
        if len(classes) == 1:
            return classes[0]
        k = len(classes)
        period, swing = self.scenario.mix_period_seconds, self.scenario.mix_swing
        if period > 0 and swing > 0:
            phase = 2 * math.pi * t / period
            weights = [
                max(c.weight * (1 + swing * math.sin(phase + 2 * math.pi * i / k)), 0.0) for i, c in enumerate(classes)
            ]
        else:
            weights = [c.weight for c in classes]
        total = sum(weights)
        x = self._rng.random() * total
        for cls, w in zip(classes, weights):
            x -= w
            if x < 0:
                return cls
        return classes[-1]

    def _draw_open(self, t: float) -> float:
        arrivals = self.scenario.arrivals
        if not isinstance(arrivals, (Poisson, OnOff)):  # only open-loop arrivals are drawn
            return math.inf
        nxt = t + self._rng.expovariate(arrivals.rate)
        if isinstance(arrivals, OnOff):
            cycle = arrivals.on_seconds + arrivals.off_seconds
            # Memoryless: an arrival drawn into an off-window restarts the draw at the next on-window.
            while (nxt % cycle) >= arrivals.on_seconds:
                nxt = (math.floor(nxt / cycle) + 1) * cycle + self._rng.expovariate(arrivals.rate)
        return nxt


__all__ = [
    "SCENARIOS",
    "ClosedLoop",
    "Dist",
    "Fixed",
    "LogNormal",
    "OnOff",
    "Poisson",
    "Prefixes",
    "Request",
    "RequestClass",
    "Scenario",
    "Trace",
    "TraceRequest",
    "Uniform",
    "Workload",
    "bursty_idle",
    "decode_heavy",
    "prefill_heavy",
    "prefix_cache_heavy",
    "steady_mix",
    "well_mixed",
]
