"""What the core reads: immutable readings of vLLM's counters and of the GPUs' energy, each
stamped with the monotonic clock by the source that took it. The core owns these types; the
sources build them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class GpuIdentity(NamedTuple):
    """One GPU as its labels name it: NVML's index, its UUID ("unknown" where nobody could read
    it) and its product name."""

    index: int  # type: ignore[assignment]  # NVML's word for it; tuple.index is never wanted here
    uuid: str
    name: str

    @property
    def labels(self) -> tuple[str, str, str]:
        """(gpu, gpu_uuid, gpu_name) label values."""
        return (str(self.index), self.uuid, self.name)


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One vLLM engine (data-parallel rank) of one model, as read from one page.

    Counters are cumulative since that engine started; None means the family was absent
    (older vLLM, or a build that does not export it), which callers must treat as unknown,
    never as zero.
    """

    model_name: str
    engine: str
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    cached_prompt_tokens: float | None = None
    computed_prompt_tokens: float | None = None  # prompt_tokens_by_source{source="local_compute"}
    # Prompt tokens counted when the scheduler ran them (the plugin, with iteration details), not
    # at first token: the prefill work lands in the interval whose energy paid for it.
    scheduled_prompt_tokens: float | None = None
    scheduled_decode_tokens: float | None = None  # decode tokens as the scheduler ran them (the plugin)
    prefill_steps: float | None = None  # steps that carried prefill (the plugin, with iteration details)
    kv_usage_steps: float | None = None  # KV use summed over steps (the plugin): x capacity = context read
    steps: float | None = None  # iteration_tokens_total_count
    step_tokens: float | None = None  # iteration_tokens_total_sum
    preemptions: float | None = None
    created: float | None = None  # prompt_tokens_created: changes when the engine restarts
    kv_cache_usage: float | None = None  # 0..1
    kv_cache_capacity_tokens: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None


@dataclass(frozen=True, slots=True)
class VllmSnapshot:
    timestamp: float
    engines: tuple[EngineSample, ...]
    missing_families: frozenset[str] = frozenset()
    origin: str = "vllm"  # whose counters: "vllm" (its own families) or "plugin" (our stat logger's)
    # One reason per sample the parser left out (a value no counter can hold, a duplicated
    # series): the reading still counts, without them.
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU. `energy_joules` is a cumulative counter (NVML's since driver load, or our own
    integral of sampled power); None when this GPU's read failed this time."""

    index: int
    uuid: str
    name: str
    energy_joules: float | None
    power_watts: float | None
    method: str  # "counter", "power_integration" or "phase_model"
    error: str | None = None

    @property
    def identity(self) -> GpuIdentity:
        return GpuIdentity(self.index, self.uuid, self.name)


@dataclass(frozen=True, slots=True)
class EnergySnapshot:
    timestamp: float
    gpus: tuple[GpuReading, ...]
    modelled: bool = False  # True: no measurement; the core's phase model supplies the energy
    origin: str = "nvml"  # who measured: "plugin", "nvml", "dcgm", "phase-model" or a simulator
