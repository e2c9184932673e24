"""The roofline prior: what one unit of each cost driver takes in GPU time and in energy
above idle. Prefill tokens are compute-bound (2 FLOPs per active parameter at the prefill
efficiency, at prefill power); each decode step streams the weights once (bandwidth-bound, at
decode power); each output token also pays its own FLOPs; context tokens pay their KV reads."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.attribution.gpu_table import GpuSpec
from exporter.attribution.model_spec import ModelSpec


@dataclass(frozen=True, slots=True)
class Coefficients:
    """One value per cost driver: J (energy above idle) or s (GPU time) per unit."""

    input: float  # per computed prompt token
    cached_input: float  # per prefix-cache hit token
    output: float  # per output token, its own FLOPs
    step: float  # per engine step (the weight stream)
    kv: float  # per context token read by a step
    # Per step that carries prefill: what such a step draws beyond its parts' own costs (the
    # mixed-step interaction, of either sign; 0 where energy is additive). Split equally between
    # input and output, the product's convention. Only the plugin's step counts can show it.
    prefill_step: float = 0.0

    def scaled(self, factor: float) -> Coefficients:
        return Coefficients(*(value * factor for value in self.as_tuple()))

    def as_tuple(self) -> tuple[float, float, float, float, float, float]:
        return (self.input, self.cached_input, self.output, self.step, self.kv, self.prefill_step)


@dataclass(frozen=True, slots=True)
class Prior:
    energy: Coefficients  # joules above idle, for all GPUs of the server together
    time: Coefficients  # seconds of the server's GPUs, all working in parallel
    step_overhead_seconds: float
    relative_stddev: float


def roofline_prior(
    gpu: GpuSpec,
    gpu_count: int,
    model: ModelSpec,
    *,
    compute_efficiency: float,
    bandwidth_efficiency: float,
    step_overhead_seconds: float,
    relative_stddev: float,
    idle_watts: float | None = None,
    prefill_watts: float | None = None,
    decode_watts: float | None = None,
    explicit: dict[str, float | None] | None = None,
) -> Prior:
    """Tensor parallelism divides each unit's time by the GPU count while every GPU draws its
    own power, so the energy per unit does not depend on the count; the time does."""
    n = max(gpu_count, 1)
    idle = idle_watts if idle_watts is not None else gpu.idle_watts
    prefill_extra = max((prefill_watts if prefill_watts is not None else gpu.prefill_watts) - idle, 0.0)
    decode_extra = max((decode_watts if decode_watts is not None else gpu.decode_watts) - idle, 0.0)
    flops = gpu.peak_flops * compute_efficiency * n
    bandwidth = gpu.memory_bandwidth * bandwidth_efficiency * n

    time = Coefficients(
        input=2.0 * model.active_params / flops,
        cached_input=model.kv_bytes_per_token / bandwidth,
        output=2.0 * model.active_params / flops,
        step=model.weight_bytes / bandwidth,
        kv=model.kv_bytes_per_token / bandwidth,
    )
    energy = Coefficients(
        input=n * prefill_extra * time.input,
        cached_input=n * decode_extra * time.cached_input,
        output=n * prefill_extra * time.output,
        step=n * decode_extra * time.step,
        kv=n * decode_extra * time.kv,
    )
    if explicit:
        overrides = {
            "input": explicit.get("input_joules_per_token"),
            "cached_input": explicit.get("cached_input_joules_per_token"),
            "output": explicit.get("output_joules_per_token"),
            "step": explicit.get("step_joules"),
            "kv": explicit.get("kv_joules_per_token"),
        }
        energy = Coefficients(
            **{name: (value if value is not None else getattr(energy, name)) for name, value in overrides.items()}
        )
    return Prior(energy, time, step_overhead_seconds, relative_stddev)
