"""Online marginal costs: energy above idle y ≈ a·P + b·G + c·S + d·K + m·M, fitted by a Bayesian
recursive least squares (Kalman) filter that starts at, and is pulled back towards, the
roofline prior. P counts prompt tokens computed, G decode tokens (the plugin's scheduled count;
vLLM's generated tokens without it), S steps, K context tokens read. M counts the steps that
carried prefill and m is what such a step draws beyond its parts' own costs (the mixed-step
interaction, 0 in the prior, of either sign).

- Work is summed over windows of at least `window_seconds` before an update: vLLM credits a
  prompt when its first token appears, so short intervals pair energy with the wrong tokens.
  Where the plugin counted prompts when scheduled (`exact`), `exact_window_seconds` applies.
- m can only be seen where the plugin counts prefill steps; with vLLM's counters alone M is 0
  and m stays at its prior (the interaction is not identifiable from interval aggregates).
- The coefficients are fitted relative to the prior (θ = θ0 · r), so every direction starts
  with the same relative uncertainty and the numbers stay well scaled from 1 B to 400 B models.
- Before each update the state reverts a little towards the prior and its covariance towards
  the prior covariance: information that the data stop providing decays, the covariance can
  neither wind up nor collapse, and a steady input:output mix, which cannot tell a from b
  apart, leaves the estimate near the prior instead of letting it swing.
- Coefficients are projected onto r ≥ 0 after each update: a negative marginal cost is never
  an answer, only noise.
- `identified` says whether the data, not the prior, decide the split between input and output:
  the posterior relative uncertainty of both the recent input energy and the recent output
  energy must have fallen below `identified_ratio` times the prior's.

Cached prompt tokens keep their prior cost: they are too cheap to be seen in the noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.attribution.prior import Coefficients
from exporter.attribution.work import Work

DRIVERS = ("input", "output", "step", "kv", "prefill_step")  # the fitted coefficients, in state order
INTERACTION = DRIVERS.index("prefill_step")


@dataclass(frozen=True, slots=True)
class EstimatorSettings:
    window_seconds: float = 30.0
    # With prompts counted when scheduled (the plugin) a window may be shorter, but 5 s windows
    # were measured to unsettle the fit under prefix-cache-heavy and decode-heavy load (input
    # share +30 % and -46 % off, benchmarks/bench_accuracy.py, plugin path): as long, for now.
    exact_window_seconds: float = 30.0
    reversion_seconds: float = 3600.0  # time constant of the pull back to the prior
    measurement_noise: float = 0.05  # relative noise of one window's energy above idle
    prior_relative_stddev: float = 0.5
    identified_ratio: float = 0.5
    # The roofline derives input and output token costs from one compute efficiency, and step and
    # KV costs from one bandwidth efficiency: errors in the prior are shared within each pair.
    prior_correlation: float = 0.8
    # The interaction's prior is 0 ± this many times the per-step cost (it has no roofline value).
    interaction_relative_stddev: float = 1.0


def _features(work: Work) -> list[float]:
    return [work.input, work.decode_tokens, work.steps, work.kv_context, work.prefill_steps]


class MarginalCostEstimator:
    __slots__ = (
        "_base",
        "_cov",
        "_prior",
        "_r",
        "_r0",
        "_recent",
        "_residual",
        "_settings",
        "_updates",
        "_window",
        "_window_seconds",
        "_window_y",
    )

    def __init__(self, prior: Coefficients, settings: EstimatorSettings = EstimatorSettings()) -> None:
        self._prior = prior
        # The interaction is scaled by the per-step cost, and starts where the prior puts it.
        self._base = [prior.input, prior.output, prior.step, prior.kv, prior.step]
        self._settings = settings
        n = len(DRIVERS)
        self._r0 = [1.0] * n
        self._r0[INTERACTION] = prior.prefill_step / prior.step if prior.step else 0.0
        self._r = list(self._r0)
        self._cov = self._prior_cov()
        self._window = Work()
        self._window_y = 0.0
        self._window_seconds = 0.0
        self._recent = [0.0] * n  # decayed feature totals: what "recent input/output energy" means
        self._residual = 0.0
        self._updates = 0

    # -- reading ---------------------------------------------------------------------------
    @property
    def coefficients(self) -> Coefficients:
        a, b, c, d, m = (base * r for base, r in zip(self._base, self._r))
        return Coefficients(input=a, cached_input=self._prior.cached_input, output=b, step=c, kv=d, prefill_step=m)

    @property
    def stddevs(self) -> Coefficients:
        a, b, c, d, m = (base * math.sqrt(max(self._cov[i][i], 0.0)) for i, base in enumerate(self._base))
        return Coefficients(
            input=a,
            cached_input=self._prior.cached_input * self._settings.prior_relative_stddev,
            output=b,
            step=c,
            kv=d,
            prefill_step=m,
        )

    @property
    def updates(self) -> int:
        return self._updates

    @property
    def residual_ratio(self) -> float:
        """Recent mean of |measured − predicted| / measured over fitted windows."""
        return self._residual

    def output_per_token(self, work: Work) -> tuple[float, float]:
        """Marginal energy of an output token with its share of steps and KV reads, and its stddev,
        for the given work mix (per-step cost is paid once for a whole batch)."""
        if work.output <= 0:
            c = self.coefficients
            return c.output, self.stddevs.output
        g = [0.0, work.decode_tokens, work.steps, work.kv_context, 0.5 * work.prefill_steps]
        return self._linear(g, 1.0 / work.output)

    @property
    def identified(self) -> bool:
        u_in = [self._recent[0], 0.0, 0.0, 0.0, 0.0]
        u_out = [0.0, *self._recent[1:INTERACTION], 0.0]
        limit = self._settings.identified_ratio * self._settings.prior_relative_stddev
        for u in (u_in, u_out):
            value, sd = self._linear(u, 1.0)
            if value <= 0 or sd / value > limit:
                return False
        return self._updates > 0

    def covariance(self, g: Sequence[float], h: Sequence[float]) -> float:
        """Covariance of Σ g_i θ_i and Σ h_i θ_i (g, h: amounts of each driver, DRIVERS order)."""
        w = [gi * base for gi, base in zip(g, self._base)]
        v = [hi * base for hi, base in zip(h, self._base)]
        n = len(w)
        return sum(w[i] * self._cov[i][j] * v[j] for i in range(n) for j in range(n))

    def _linear(self, g: list[float], scale: float) -> tuple[float, float]:
        """Value and stddev of Σ g_i θ_i, times scale."""
        value = sum(gi * base * ri for gi, base, ri in zip(g, self._base, self._r))
        return value * scale, math.sqrt(max(self.covariance(g, g), 0.0)) * scale

    # -- what a restart keeps (exporter.state) ----------------------------------------------
    def export_state(self) -> dict[str, object]:
        """The posterior, relative to the prior it was fitted against (`base` names that prior:
        a state fitted for another model or GPU is foreign). The open window is not kept."""
        return {
            "base": list(self._base),
            "r": list(self._r),
            "cov": [list(row) for row in self._cov],
            "recent": list(self._recent),
            "residual": self._residual,
            "updates": self._updates,
        }

    def import_state(self, state: object, elapsed_seconds: float) -> None:
        """Resume from `export_state`'s value, `elapsed_seconds` after it was taken: the pull back
        to the prior runs over the gap, as if the exporter had seen no data in it. ValueError
        when the state is malformed or was fitted against another prior; nothing changes then."""
        if not isinstance(state, dict):
            raise ValueError("the estimator's state is not a mapping")
        n = len(DRIVERS)
        base = _numbers(state.get("base"), n, "base")
        if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300) for a, b in zip(base, self._base)):
            raise ValueError("fitted against another prior (model, GPU or settings changed)")
        r = _numbers(state.get("r"), n, "r")
        rows = state.get("cov")
        if not isinstance(rows, list) or len(rows) != n:
            raise ValueError("cov must be a square matrix of the drivers")
        cov = [_numbers(row, n, "cov") for row in rows]
        if any(cov[i][i] < 0 or cov[i][j] != cov[j][i] for i in range(n) for j in range(n)):
            raise ValueError("cov must be symmetric with a non-negative diagonal")
        recent = _numbers(state.get("recent"), n, "recent")
        residual, updates = state.get("residual"), state.get("updates")
        if not _finite(residual) or not isinstance(updates, int) or isinstance(updates, bool) or updates < 0:
            raise ValueError("residual and updates must be a finite number and a count")
        assert isinstance(residual, (int, float))
        self._r, self._cov, self._recent = r, cov, recent
        self._residual, self._updates = float(residual), updates
        if elapsed_seconds > 0:
            self._revert(elapsed_seconds)

    # -- learning --------------------------------------------------------------------------
    def observe(self, dynamic_joules: float, seconds: float, work: Work, exact: bool = False) -> bool:
        """Add one interval (energy above idle, which may be negative by noise); True when a
        window closed and the estimate moved. `exact`: the interval's prompts were counted when
        scheduled, so its work is that of its own energy."""
        self._window.add(work)
        self._window_y += dynamic_joules - self._prior.cached_input * work.cached_input
        self._window_seconds += seconds
        window = self._settings.exact_window_seconds if exact else self._settings.window_seconds
        if self._window_seconds < window:
            return False
        x = [f * base for f, base in zip(_features(self._window), self._base)]
        y, elapsed = self._window_y, self._window_seconds
        self._window, self._window_y, self._window_seconds = Work(), 0.0, 0.0
        if not any(x):
            return False
        self._revert(elapsed)
        self._update(x, y)
        return True

    def _prior_cov(self) -> list[list[float]]:
        s2 = self._settings.prior_relative_stddev**2
        rho = self._settings.prior_correlation
        pairs = {(0, 1), (1, 0), (2, 3), (3, 2)}  # (input, output) and (step, kv)
        n = len(DRIVERS)
        cov = [[s2 if i == j else (rho * s2 if (i, j) in pairs else 0.0) for j in range(n)] for i in range(n)]
        cov[INTERACTION][INTERACTION] = self._settings.interaction_relative_stddev**2
        return cov

    def _revert(self, elapsed: float) -> None:
        rho = math.exp(-elapsed / self._settings.reversion_seconds)
        prior = self._prior_cov()
        n = len(self._r)
        self._r = [r0 + rho * (r - r0) for r, r0 in zip(self._r, self._r0)]
        self._cov = [[rho * rho * self._cov[i][j] + (1 - rho * rho) * prior[i][j] for j in range(n)] for i in range(n)]
        self._recent = [rho * v for v in self._recent]

    def _update(self, x: list[float], y: float) -> None:
        n = len(x)
        predicted = sum(xi * ri for xi, ri in zip(x, self._r))
        noise = self._settings.measurement_noise * max(abs(y), abs(predicted), 1e-9)
        px = [sum(self._cov[i][j] * x[j] for j in range(n)) for i in range(n)]
        s = sum(x[i] * px[i] for i in range(n)) + noise * noise
        gain = [p / s for p in px]
        innovation = y - predicted
        # A negative marginal cost is noise; an interaction may have either sign.
        self._r = [
            r + k * innovation if i == INTERACTION else max(r + k * innovation, 0.0)
            for i, (r, k) in enumerate(zip(self._r, gain))
        ]
        # Joseph form keeps the covariance symmetric and positive through rounding.
        ikx = [[(1.0 if i == j else 0.0) - gain[i] * x[j] for j in range(n)] for i in range(n)]
        tmp = [[sum(ikx[i][k] * self._cov[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
        cov = [
            [sum(tmp[i][k] * ikx[j][k] for k in range(n)) + gain[i] * gain[j] * noise * noise for j in range(n)]
            for i in range(n)
        ]
        self._cov = [[0.5 * (cov[i][j] + cov[j][i]) for j in range(n)] for i in range(n)]
        self._recent = [v + f / base if base else v for v, f, base in zip(self._recent, x, self._base)]
        fitted = sum(xi * ri for xi, ri in zip(x, self._r))
        ratio = abs(y - fitted) / max(abs(y), 1e-9)
        self._residual = ratio if self._updates == 0 else 0.9 * self._residual + 0.1 * ratio
        self._updates += 1


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: object, n: int, name: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(_finite(x) for x in value):
        raise ValueError(f"{name} must be {n} finite numbers")
    return [float(x) for x in value]
