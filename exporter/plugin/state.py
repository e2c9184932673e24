"""What the plugin publishes, as one table of samples, built on its own thread from the step
counts and the latest energy readings. Pure: the thread hands it everything it needs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.attribution.counters import CounterTracker
from exporter.attribution.readings import GpuReading
from exporter.plugin.steps import FIELDS, ITERATION_DETAILS, EngineCounts
from exporter.sources import plugin_families as f

Table = dict[f.PluginFamily, dict[tuple[str, ...], float]]


@dataclass(slots=True)
class EnergyTotals:
    """Each GPU's energy since the plugin first read it, carried across counter restarts (the
    core's rule: a counter that went down restarted, and its new value is the increase)."""

    joules: dict[str, float] = field(default_factory=dict)  # by UUID
    _counters: CounterTracker = field(default_factory=CounterTracker)

    def update(self, readings: Sequence[GpuReading]) -> None:
        for gpu in readings:
            value = gpu.energy_joules
            if value is None or not 0 <= value < math.inf:
                continue
            total = self.joules.setdefault(gpu.uuid, 0.0)
            increase = self._counters.increase(gpu.uuid, value)
            if increase is not None:
                self.joules[gpu.uuid] = total + increase.value


@dataclass(frozen=True, slots=True)
class Identity:
    model_name: str
    version: str
    vllm_version: str
    started: float  # unix time
    kv_capacity_tokens: float | None


def table(
    identity: Identity,
    engines: Mapping[int, EngineCounts],
    missing: set[str],
    details_seen: bool,
    errors: Mapping[str, int],
    gpus: Sequence[GpuReading] | None,
    energy: EnergyTotals,
    sampler_cpu: float,
) -> Table:
    """`gpus` None: this process does not measure energy (another one does, or NVML is off)."""
    out: Table = {family: {} for family in f.FAMILIES}
    for index, counts in sorted(engines.items()):
        _engine(out, (identity.model_name, str(index)), counts, identity)
    for field_name in FIELDS:
        available = field_name not in missing
        if field_name == ITERATION_DETAILS:
            available = available and details_seen
        out[f.FIELD_AVAILABLE][(field_name,)] = float(available)
    for place in f.ERROR_PLACES:
        out[f.ERRORS][(place,)] = float(errors.get(place, 0))
    out[f.SAMPLER_CPU][()] = sampler_cpu
    out[f.INFO][(identity.version, identity.vllm_version)] = 1.0
    if gpus is not None:
        _gpus(out, gpus, energy)
    return out


def _engine(out: Table, key: tuple[str, str], counts: EngineCounts, identity: Identity) -> None:
    out[f.STEPS][(*key, "prefill")] = counts.prefill_steps
    out[f.STEPS][(*key, "decode")] = counts.decode_steps
    out[f.SCHEDULED_TOKENS][(*key, "prefill")] = counts.scheduled_prefill
    out[f.SCHEDULED_TOKENS][(*key, "decode")] = counts.scheduled_decode
    out[f.TOKENS][(*key, "input")] = counts.input
    out[f.TOKENS][(*key, "cached_input")] = counts.cached_input
    out[f.TOKENS][(*key, "output")] = counts.output
    out[f.PREEMPTIONS][key] = counts.preemptions
    out[f.BUSY][key] = counts.busy_seconds
    out[f.RUNNING][key] = counts.running
    out[f.WAITING][key] = counts.waiting
    out[f.KV_USAGE][key] = counts.kv_usage
    out[f.KV_USAGE_STEPS][key] = counts.kv_usage_steps
    out[f.STARTED][key] = identity.started
    if identity.kv_capacity_tokens:
        out[f.KV_CAPACITY][key] = identity.kv_capacity_tokens


def _gpus(out: Table, gpus: Sequence[GpuReading], energy: EnergyTotals) -> None:
    every_read = True
    for gpu in gpus:
        labels = (str(gpu.index), gpu.uuid, gpu.name, gpu.method)
        if gpu.uuid in energy.joules:
            out[f.GPU_ENERGY][labels] = energy.joules[gpu.uuid]
        if gpu.power_watts is not None:
            out[f.GPU_POWER][labels] = gpu.power_watts
        every_read = every_read and gpu.error is None
    out[f.NVML_UP][()] = float(every_read and bool(gpus))
