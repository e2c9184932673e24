"""Money and carbon from an allocation. Rental buys GPU time, so it follows time occupancy;
electricity and carbon follow energy (times PUE, for the facility around the GPUs)."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.attribution.split import Allocation, ClassKey
from exporter.attribution.token_class import TokenClass

JOULES_PER_KWH = 3.6e6
RENTAL, ELECTRICITY = "rental", "electricity"
CostKey = tuple[str, TokenClass, str]  # (model, class, component)


@dataclass(frozen=True, slots=True)
class Prices:
    gpu_hourly: float
    electricity_per_kwh: float
    pue: float
    grams_co2_per_kwh: float


def costs(allocation: Allocation, seconds: float, gpu_count: int, prices: Prices) -> dict[CostKey, float]:
    """Cost per (model, class, component); components with a zero price are left out."""
    result: dict[CostKey, float] = {}
    rental = prices.gpu_hourly * gpu_count * seconds / 3600.0
    if rental > 0:
        for (model, cls), share in allocation.time_share.items():
            result[(model, cls, RENTAL)] = rental * share
    per_joule = prices.electricity_per_kwh * prices.pue / JOULES_PER_KWH
    if per_joule > 0:
        for (model, cls), joules in allocation.energy.items():
            result[(model, cls, ELECTRICITY)] = joules * per_joule
    return result


def emissions(allocation: Allocation, prices: Prices) -> dict[ClassKey, float]:
    per_joule = prices.grams_co2_per_kwh * prices.pue / JOULES_PER_KWH
    return {key: joules * per_joule for key, joules in allocation.energy.items()}
