"""Reference API price lists, and what the same traffic would have cost at them.

Self-hosting pays for GPU time whether tokens flow or not; an API charges per token. Comparing
the two on the same traffic says whether the GPUs are worth it, and at what load they would be.
A price list is given as `NAME=INPUT/CACHED_INPUT/OUTPUT` per million tokens, in the exporter's
currency (`--api-prices "mini=0.15/0.075/0.60,large=2.50/1.25/10"`): comparing across
currencies would need an exchange rate the exporter does not have, so another currency is refused."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.attribution.token_class import CACHED_INPUT, INPUT, OUTPUT, TOKEN_CLASSES, TokenClass

MAX_REFERENCES = 16  # each adds a series per model and class: a handful of price lists is the use
MAX_PRICE_PER_MILLION = 1e6  # per million tokens, in any currency (the dearest APIs are ~1e2 USD)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a label value that reads well in a legend
_NUMBER = r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*"
_PRICES = re.compile(rf"{_NUMBER}/{_NUMBER}/{_NUMBER}(?:@\s*([A-Z]{{3}})\s*)?")


@dataclass(frozen=True, slots=True)
class ApiPrice:
    """One reference: what an API charges per million tokens of each class."""

    reference: str
    currency: str
    per_million: Mapping[TokenClass, float]  # input, cached_input, output

    def cost(self, tokens: Mapping[TokenClass, float]) -> float:
        """What `tokens` (by class; idle and missing classes count nothing) cost at this list."""
        return sum(tokens.get(cls, 0.0) * self.per_million[cls] for cls in TOKEN_CLASSES) / 1e6


def parse_api_prices(text: str, currency: str) -> tuple[ApiPrice, ...]:
    """`NAME=INPUT/CACHED/OUTPUT[@CUR]`, comma-separated; ValueError naming the entry at fault."""
    prices: list[ApiPrice] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, figures = entry.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"{entry[:80]!r}: expected NAME=INPUT/CACHED_INPUT/OUTPUT, NAME of letters, digits, .-_")
        found = _PRICES.fullmatch(figures)
        if found is None:
            raise ValueError(f"{name}: expected three prices per million tokens, INPUT/CACHED_INPUT/OUTPUT")
        if found[4] is not None and found[4] != currency:
            raise ValueError(f"{name}: priced in {found[4]}, but costs are counted in {currency}; convert the prices")
        values = [float(found[i]) for i in (1, 2, 3)]
        if not all(math.isfinite(v) and 0 <= v <= MAX_PRICE_PER_MILLION for v in values):
            raise ValueError(f"{name}: prices must be between 0 and {MAX_PRICE_PER_MILLION:g} per million tokens")
        if any(p.reference == name for p in prices):
            raise ValueError(f"{name}: named twice")
        prices.append(ApiPrice(name, currency, dict(zip((INPUT, CACHED_INPUT, OUTPUT), values, strict=True))))
    if len(prices) > MAX_REFERENCES:
        raise ValueError(f"at most {MAX_REFERENCES} price lists (each is a series per model and class)")
    return tuple(prices)


@dataclass(frozen=True, slots=True)
class BreakEven:
    """Self-hosted cost against one reference over the same traffic."""

    api_cost: float  # the traffic at the reference's prices
    self_cost: float  # what serving it cost here, idle included
    traffic_multiple: float | None  # the traffic, same mix, at which both cost the same; None: never

    @property
    def saving(self) -> float:
        return self.api_cost - self.self_cost


def fixed_and_variable(
    rental: float, electricity: float, energy_joules: float, static_joules: float
) -> tuple[float, float]:
    """The cost that does not grow with traffic, and the cost that does. Rental is paid by the hour
    whatever the load. Of the electricity, the share of the energy the GPUs draw at idle power
    (`static_joules`: idle power x the time, busy or not) is paid whatever the load too; only the
    rest, the dynamic energy the work draws above idle, grows with the tokens."""
    static_share = min(1.0, static_joules / energy_joules) if energy_joules > 0 else 1.0
    return rental + electricity * static_share, electricity * (1.0 - static_share)


def break_even(
    tokens: Mapping[TokenClass, float], fixed_cost: float, variable_cost: float, price: ApiPrice
) -> BreakEven:
    """`fixed_cost` does not grow with traffic (GPU rental, idle power); `variable_cost` does (the
    energy the tokens drew). At k times the traffic, self-hosting costs fixed + k x variable and the
    API k x api: they meet at k = fixed / (api - variable), and never where the API's price does not
    even cover the tokens' own energy. The GPUs' capacity is not known here: a multiple they cannot
    serve is not a break-even they can reach."""
    api = price.cost(tokens)
    margin = api - variable_cost
    multiple = fixed_cost / margin if margin > 0 else None
    return BreakEven(api, fixed_cost + variable_cost, multiple)
