"""Time to trust: from when on the exporter's cumulative split can be believed.

After every tick, the input and output shares of all the energy the exporter has allocated since
it started are compared with the oracle's shares of the true energy over the same window (a board
gain error cancels out of shares). The split is trusted from the first tick after the latest one
at which either share was more than `band` (±10 %) off, or unknown: time to trust is how long
after the start that was, if it stays so until the end of the run."""

from __future__ import annotations

import math
from collections.abc import Mapping

from exporter.attribution.token_class import INPUT, OUTPUT, TokenClass
from exporter.sim.oracle import OracleTotals

TRUST_BAND = 0.10


def split_errors(allocated: Mapping[TokenClass, float], truth: OracleTotals) -> tuple[float, float]:
    """Relative errors of the allocated input and output shares of all energy against the truth's
    shares; nan where either side has nothing of the class yet."""
    total = math.fsum(allocated.values())
    errors = []
    for cls in (INPUT, OUTPUT):
        true_share = truth.energy.get(cls, 0.0) / truth.energy_joules if truth.energy_joules > 0 else 0.0
        if total > 0 and true_share > 0:
            errors.append(allocated.get(cls, 0.0) / total / true_share - 1.0)
        else:
            errors.append(math.nan)
    return errors[0], errors[1]


class TrustClock:
    """Follows the split errors tick by tick from virtual time `start`."""

    __slots__ = ("band", "errors", "since", "start")

    def __init__(self, start: float = 0.0, band: float = TRUST_BAND) -> None:
        self.start = start
        self.band = band
        self.since: float | None = None  # when both errors last came (and stayed) within the band
        self.errors: tuple[float, float] = (math.nan, math.nan)  # the latest

    def update(self, time: float, allocated: Mapping[TokenClass, float], truth: OracleTotals) -> tuple[float, float]:
        """Compare the cumulative allocation with the truth since the start, as of `time`."""
        self.errors = split_errors(allocated, truth)
        if not all(abs(error) <= self.band for error in self.errors):  # nan is never within
            self.since = None
        elif self.since is None:
            self.since = time
        return self.errors

    @property
    def seconds(self) -> float | None:
        """Time to trust so far: virtual seconds from the start until `since`; None while untrusted."""
        return None if self.since is None else self.since - self.start


__all__ = ["TRUST_BAND", "TrustClock", "split_errors"]
