"""Declared figures for the GPUs we know: phase power for the prior and the phase model, and
the peak rates of the roofline. Published spec-sheet numbers (dense BF16, HBM/GDDR bandwidth,
board power limit) and typical phase power as seen in public serving measurements; they seed
estimates, they are not measurements."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuSpec:
    key: str
    idle_watts: float
    prefill_watts: float  # compute-bound phase, close to the board limit
    decode_watts: float  # bandwidth-bound phase
    board_limit_watts: float
    peak_flops: float  # dense BF16, FLOP/s
    memory_bandwidth: float  # bytes/s


GPU_TABLE: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        GpuSpec("H200", 80.0, 700.0, 420.0, 700.0, 989e12, 4.8e12),
        GpuSpec("H100", 75.0, 700.0, 380.0, 700.0, 989e12, 3.35e12),
        GpuSpec("A100", 63.0, 400.0, 250.0, 400.0, 312e12, 2.04e12),
        GpuSpec("L40S", 35.0, 350.0, 230.0, 350.0, 362e12, 0.864e12),
        GpuSpec("L4", 16.0, 72.0, 60.0, 72.0, 121e12, 0.3e12),
        GpuSpec("A10G", 25.0, 300.0, 190.0, 300.0, 70e12, 0.6e12),
    )
}

# Longest keys first so that "L40S" wins over "L4" and "H200" is never read as something shorter.
_PATTERNS = [
    (re.compile(rf"(?<![A-Z0-9]){re.escape(key)}(?![A-Z0-9])"), key) for key in sorted(GPU_TABLE, key=len, reverse=True)
]


def lookup(name: str) -> GpuSpec | None:
    """Match an NVML device name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB") or a key."""
    upper = name.upper()
    for pattern, key in _PATTERNS:
        if pattern.search(upper):
            return GPU_TABLE[key]
    return None
