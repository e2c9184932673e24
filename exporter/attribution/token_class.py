"""The classes that tokens, energy and cost are attributed to: one enum for the exporter, the
simulator's oracle and the benchmarks. A `StrEnum`, so its members are the label values."""

from __future__ import annotations

from enum import StrEnum


class TokenClass(StrEnum):
    INPUT = "input"  # prompt tokens computed
    CACHED_INPUT = "cached_input"  # prompt tokens served from a prefix cache or a KV transfer
    OUTPUT = "output"
    IDLE = "idle"  # energy and cost only: what no token drew


INPUT, CACHED_INPUT, OUTPUT, IDLE = TokenClass.INPUT, TokenClass.CACHED_INPUT, TokenClass.OUTPUT, TokenClass.IDLE
TOKEN_CLASSES = (INPUT, CACHED_INPUT, OUTPUT)  # what tokens are counted in; energy and cost add IDLE
