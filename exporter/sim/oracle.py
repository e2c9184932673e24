"""The oracle: the true energy and time of every engine step and every idle gap, split into
`input`, `cached_input`, `output` and `idle`.

Semantics (they follow the exporter's default policies, `static_power_policy=occupancy` and
`step_cost_policy=output`, so that comparing the exporter with the oracle is fair):

- Classes of work in a step:
  * input: prompt tokens computed by prefill chunks (recomputation after a preemption
    included), their FLOPs (2 N_active per token, plus attention FLOPs if enabled), the KV they
    write, and the KV they read of tokens their sequence computed itself (earlier chunks);
  * cached_input: the KV that prefill chunks read of tokens served by the prefix cache (a cache
    hit costs no FLOPs, only being read as context);
  * output: decode tokens' FLOPs, the weight stream (paid once per step, whatever the step
    holds), the KV the decode tokens read (their whole context, cached prefixes included) and
    write, and the fixed step overhead.
- Ground truth A ("component"): the dynamic energy E_step - P_idle t of a step goes to each
  class in proportion to its own FLOPs and bytes (e_flop FLOPs + e_byte bytes). Under the
  board power cap every dynamic part is scaled by the same factor. The static part P_idle t of
  the busy step is split by the step's time shares: each class's compute time (FLOPs / F n eff_c)
  plus transfer time (bytes / BW n eff_b), the overhead with output.
- Ground truth B ("phase"): a step draws prefill power if it holds any prefill token, else
  decode power. The product's convention for a mixed step splits it: the prefill part (input
  and cached_input, by their time shares) and the decode part (output, with the weight stream
  and the overhead) each pay their own time at their own phase's power — a part's own time is
  what its own FLOPs and bytes take at the roofline's rates, as the product's time model counts
  them — and the interaction, what the step draws beyond those two own costs (negative where
  compute and memory traffic overlap, positive where prefill power lifts the decode part), is
  shared equally between them. Under ground truth
  A the interaction is zero by construction. `energy_time_share` keeps the split before the
  convention: the whole step energy by time shares (under A the same as `energy`).
- Idle gaps (nothing runnable) and vLLM downtime are wholly `idle`, at idle power.
- Busy seconds: a step's duration is split by the same time shares; idle time goes to `idle`.
  The classes' seconds sum to the elapsed virtual time.
- Conservation: in every step `output` takes the remainder, so the classes sum to the step's
  true energy; cumulatively they sum to the true energy within float rounding (< 1e-12).
- A step still running at the moment of a reading counts in proportion to its elapsed part
  (constant power within a step); a step cut by a vLLM restart keeps its energy, split the same.
- Tokens (`OracleTotals.tokens`) are counted when the step that did the work completes, not
  when vLLM's counters credit them: `input` counts prompt tokens computed for the first time
  (over a request's life, its prompt minus its prefix-cache hits, as vLLM's `local_compute`),
  `recomputed` every other prefill token (recomputation after a preemption, including a resumed
  sequence's last sampled token), `cached_input` the prefix-cache hits at first admission,
  `output` every token emitted. The `input` energy class pays for `input + recomputed` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.attribution.token_class import TokenClass

CLASSES = tuple(TokenClass)  # the oracle's classes are the exporter's


@dataclass(frozen=True, slots=True)
class OracleTotals:
    """Cumulative truth since the simulation started (t = 0), at virtual time `time`."""

    time: float
    energy_joules: float  # all GPUs together, the true (not gain-scaled) energy
    energy: dict[str, float]  # by class (CLASSES); sums to energy_joules
    seconds: dict[str, float]  # busy seconds by class, idle included; sums to `time`
    tokens: dict[str, float]  # input, cached_input, output, recomputed: work done, see above
    steps: int  # engine steps completed
    energy_time_share: dict[str, float] = field(default_factory=dict)  # by class, see above

    def joules_per_token(self, cls: str) -> float:
        """Energy of a class per token of that class; nan when no token of it was seen."""
        tokens = self.tokens.get(cls, 0.0)
        return self.energy[cls] / tokens if tokens else float("nan")

    def minus(self, earlier: OracleTotals) -> OracleTotals:
        """The truth of the window between `earlier` and this reading."""
        return OracleTotals(
            self.time - earlier.time,
            self.energy_joules - earlier.energy_joules,
            {k: v - earlier.energy.get(k, 0.0) for k, v in self.energy.items()},
            {k: v - earlier.seconds.get(k, 0.0) for k, v in self.seconds.items()},
            {k: v - earlier.tokens.get(k, 0.0) for k, v in self.tokens.items()},
            self.steps - earlier.steps,
            {k: v - earlier.energy_time_share.get(k, 0.0) for k, v in self.energy_time_share.items()},
        )


__all__ = ["CLASSES", "OracleTotals"]
