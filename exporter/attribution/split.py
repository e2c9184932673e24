"""Allocation of one interval's measured energy to (model, token class), conserving it exactly.

Idle power times the interval is static; what is above it is dynamic and is split by the
marginal weights (coefficient x work). Static power while busy follows estimated time
occupancy, or stays idle under the Kepler-like policy. Idle takes the remainder, so the classes
always add up to the measured energy.

When the fitted costs come with a covariance, the interval's own measurement is used before the
split: the gap between the measured dynamic energy and the predicted one goes to each class in
proportion to the covariance of its predicted energy with the predicted total (the Gaussian
posterior of the classes given their sum, taking the measured sum as exact). A well-pinned class
then keeps its prediction and an uncertain one absorbs the surprise, rather than every class
being scaled by the same factor. The sum is taken as exact because an interval's gap is mostly
model error with a structure (a kind of step the costs misprice), not meter noise: splitting it
by the costs' uncertainty locates it, and spreading it evenly does not. A class the gap would
drive below zero stops at zero and the others are scaled to conserve the total. Where the energy
is itself modelled there is nothing to learn from, and the caller passes no covariance."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter.attribution.prior import Coefficients
from exporter.attribution.token_class import IDLE, INPUT, OUTPUT, TOKEN_CLASSES, TokenClass
from exporter.attribution.work import Work

UNKNOWN_MODEL = "unknown"
ClassKey = tuple[str, TokenClass]  # (model, class)


@dataclass(frozen=True, slots=True)
class Allocation:
    energy: dict[ClassKey, float]  # joules per (model, class), summing to the measured energy
    time_share: dict[ClassKey, float]  # fraction of the interval's GPU time, summing to 1
    busy_fraction: float
    busy_seconds: float
    static_joules: float
    dynamic_joules: float


def driver_amounts(work: Work, cls: TokenClass, step_on_output: bool) -> tuple[float, float, float, float, float]:
    """How much of each fitted driver (input tokens, output tokens, steps, KV context tokens,
    prefill-carrying steps) a class's weight holds: the step-cost policy lives here, and the
    product's convention for mixed steps: their interaction is shared equally by input and
    output. The cached input's own cost is not a fitted driver, so it holds none."""
    tokens = work.input + work.output
    half_interaction = 0.5 * work.prefill_steps
    if cls == INPUT:
        step_share = work.input / tokens if not step_on_output and tokens > 0 else 0.0
        return (work.input, 0.0, work.steps * step_share, 0.0, half_interaction)
    if cls == OUTPUT:
        step_share = work.output / tokens if not step_on_output and tokens > 0 else 1.0
        return (0.0, work.decode_tokens, work.steps * step_share, work.kv_context, half_interaction)
    return (0.0, 0.0, 0.0, 0.0, 0.0)


def class_weights(
    work: Work, c: Coefficients, step_on_output: bool, step_extra: float = 0.0
) -> tuple[float, float, float]:
    """(input, cached_input, output) weights of one model's work under coefficients `c`.

    `step_extra` adds a per-step amount (the fixed step overhead, for time). A negative
    interaction can take a class's weight below zero; it stops at zero, since a class never
    gives energy back."""
    per_unit = (c.input, c.output, c.step + step_extra, c.kv, c.prefill_step)
    w_in = sum(a * k for a, k in zip(driver_amounts(work, INPUT, step_on_output), per_unit))
    w_out = sum(a * k for a, k in zip(driver_amounts(work, OUTPUT, step_on_output), per_unit))
    return max(w_in, 0.0), c.cached_input * work.cached_input, max(w_out, 0.0)


# Covariance of two linear combinations of the fitted costs, each given as amounts of the
# drivers (input tokens, output tokens, steps, KV context tokens, prefill steps), as in the estimator.
Covariance = Callable[[Sequence[float], Sequence[float]], float]


def _condition_on_measurement(
    energy_w: dict[ClassKey, float],
    dynamic: float,
    work_by_model: dict[str, Work],
    covariance: Covariance,
    step_on_output: bool,
) -> dict[ClassKey, float]:
    keys = list(energy_w)
    amounts = {key: driver_amounts(work_by_model[key[0]], key[1], step_on_output) for key in keys}
    total = [math.fsum(column) for column in zip(*amounts.values())]
    with_total = {key: covariance(amounts[key], total) for key in keys}
    variance = math.fsum(with_total.values())
    if not (variance > 0 and math.isfinite(variance)):
        return energy_w
    gap = dynamic - math.fsum(energy_w.values())
    adjusted = {}
    for key in keys:
        value = energy_w[key] + with_total[key] / variance * gap
        adjusted[key] = value if value > 0 else 0.0  # NaN, too, becomes 0
    return adjusted


def _class_weights_by_key(
    work_by_model: dict[str, Work],
    energy_coefficients: Coefficients,
    time_coefficients: Coefficients,
    step_overhead_seconds: float,
    step_on_output: bool,
) -> tuple[dict[ClassKey, float], dict[ClassKey, float]]:
    """Energy and time weights of every (model, class) that did any work."""
    energy_w: dict[ClassKey, float] = {}
    time_w: dict[ClassKey, float] = {}
    for model, work in work_by_model.items():
        if not work.any:
            continue
        for cls, e, t in zip(
            TOKEN_CLASSES,
            class_weights(work, energy_coefficients, step_on_output),
            class_weights(work, time_coefficients, step_on_output, step_overhead_seconds),
        ):
            if e > 0 or t > 0:
                energy_w[(model, cls)] = e
                time_w[(model, cls)] = t
    return energy_w, time_w


def _spread_idle(allocated: dict[ClassKey, float], idle_total: float, models: Sequence[str]) -> None:
    """Idle energy split equally between the models; the last takes the rounding remainder."""
    per_model = idle_total / len(models)
    for model in models[:-1]:
        allocated[(model, IDLE)] = allocated.get((model, IDLE), 0.0) + per_model
    last = (models[-1], IDLE)
    allocated[last] = allocated.get(last, 0.0) + (idle_total - per_model * (len(models) - 1))


def _time_shares(time_w: dict[ClassKey, float], busy: float, models: Sequence[str]) -> dict[ClassKey, float]:
    shares: dict[ClassKey, float] = {}
    total_time = sum(time_w.values())
    if total_time > 0:
        for key, t in time_w.items():
            shares[key] = busy * t / total_time
    idle_share = 1.0 - busy if time_w else 1.0
    for model in models:
        shares[(model, IDLE)] = shares.get((model, IDLE), 0.0) + idle_share / len(models)
    return shares


def allocate(
    energy_joules: float,
    seconds: float,
    work_by_model: dict[str, Work],
    energy_coefficients: Coefficients,
    time_coefficients: Coefficients,
    step_overhead_seconds: float,
    idle_watts: float,
    *,
    idle_models: Sequence[str],
    static_by_occupancy: bool = True,
    step_on_output: bool = True,
    covariance: Covariance | None = None,
) -> Allocation:
    energy_joules = max(energy_joules, 0.0)
    seconds = max(seconds, 0.0)
    energy_w, time_w = _class_weights_by_key(
        work_by_model, energy_coefficients, time_coefficients, step_overhead_seconds, step_on_output
    )
    busy_seconds = sum(time_w.values())
    busy = min(busy_seconds / seconds, 1.0) if seconds > 0 else (1.0 if busy_seconds > 0 else 0.0)
    static = min(energy_joules, idle_watts * seconds)
    dynamic = energy_joules - static

    allocated: dict[ClassKey, float] = {}
    if time_w:
        if covariance is not None and sum(energy_w.values()) > 0:
            energy_w = _condition_on_measurement(energy_w, dynamic, work_by_model, covariance, step_on_output)
        # Dynamic energy by marginal weight (by time when no class has an energy weight); the
        # static energy of the busy time by time occupancy, or none of it under the idle policy.
        dynamic_weights = energy_w if sum(energy_w.values()) > 0 else time_w
        dynamic_total = sum(dynamic_weights.values())
        static_busy = static * busy if static_by_occupancy else 0.0
        for key in time_w:
            share_static = static_busy * time_w[key] / busy_seconds if busy_seconds > 0 else 0.0
            share_dynamic = dynamic * dynamic_weights[key] / dynamic_total if dynamic_total > 0 else 0.0
            allocated[key] = share_static + share_dynamic

    models = list(dict.fromkeys(idle_models)) or list(dict.fromkeys(m for m, _ in time_w)) or [UNKNOWN_MODEL]
    idle_total = energy_joules - sum(allocated.values())
    _spread_idle(allocated, max(idle_total, 0.0), models)  # below zero only by rounding
    return Allocation(allocated, _time_shares(time_w, busy, models), busy, busy_seconds, static, dynamic)
