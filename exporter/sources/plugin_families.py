"""The vLLM plugin's families: the contract between the stat logger inside vLLM
(`exporter/plugin/`) and the exporter's sources, kept here with the side that reads it.

The plugin publishes them on vLLM's own /metrics (through prometheus_client, so vLLM's
multiprocess mode sums them over its API-server processes) and, where a directory is shared
with the sidecar, in small files of the same text format. The sidecar reads them by these
names. Pure: no vLLM, no prometheus_client, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "token_economy_plugin_"
ENGINE = ("model_name", "engine")
GPU = ("gpu", "gpu_uuid", "gpu_name", "method")


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True, eq=False)  # each family is one object: hashed by identity, cheaply
class PluginFamily:
    name: str  # the full exposed name; counters end in _total
    kind: Kind
    labels: tuple[str, ...]
    help: str
    # How vLLM's multiprocess mode merges a gauge over its API-server processes.
    multiprocess_mode: str = "mostrecent"

    @property
    def base(self) -> str:
        """The name prometheus_client is given (it appends _total to counters itself)."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name


def _f(name: str, kind: Kind, labels: tuple[str, ...], help: str, mode: str = "mostrecent") -> PluginFamily:
    return PluginFamily(PREFIX + name, kind, labels, help, mode)


STEPS = _f(
    "steps_total", Kind.COUNTER, (*ENGINE, "step_kind"),
    "Engine steps: prefill (scheduled prompt tokens, perhaps beside decodes) or decode (only decodes).",
)  # fmt: skip
SCHEDULED_TOKENS = _f(
    "scheduled_tokens_total", Kind.COUNTER, (*ENGINE, "phase"),
    "Tokens the scheduler ran, counted when scheduled: prefill (prompt chunks) or decode.",
)  # fmt: skip
TOKENS = _f(
    "tokens_total", Kind.COUNTER, (*ENGINE, "token_class"),
    "Prompt tokens computed (input) and served from cache (cached_input) at first token, and generated tokens.",
)  # fmt: skip
PREEMPTIONS = _f("preemptions_total", Kind.COUNTER, ENGINE, "Requests preempted by the scheduler.")
BUSY = _f("busy_seconds_total", Kind.COUNTER, ENGINE, "Time the engine spent in its steps.")
RUNNING = _f("running_requests", Kind.GAUGE, ENGINE, "Requests in the running batch at the latest step.")
WAITING = _f("waiting_requests", Kind.GAUGE, ENGINE, "Requests waiting at the latest step.")
KV_USAGE = _f("kv_cache_usage_ratio", Kind.GAUGE, ENGINE, "Fraction of the KV cache in use at the latest step.")
KV_USAGE_STEPS = _f(
    "kv_cache_usage_steps_total", Kind.COUNTER, ENGINE,
    "The KV cache's fraction in use, summed over the steps that ran (times capacity: the context they read).",
)  # fmt: skip
KV_CAPACITY = _f("kv_cache_capacity_tokens", Kind.GAUGE, ENGINE, "KV cache capacity in tokens.")
STARTED = _f("start_time_seconds", Kind.GAUGE, ENGINE, "Unix time the plugin started counting for this engine.", "max")
GPU_ENERGY = _f(
    "gpu_energy_joules_total", Kind.COUNTER, GPU,
    "Energy of a GPU vLLM uses since the plugin started measuring it (NVML counter or integrated power).",
)  # fmt: skip
GPU_POWER = _f("gpu_power_watts", Kind.GAUGE, GPU, "Latest power of a GPU vLLM uses.")
NVML_UP = _f("nvml_up", Kind.GAUGE, (), "1 when the plugin's latest NVML read succeeded for every GPU.", "max")
ERRORS = _f(
    "errors_total", Kind.COUNTER, ("where",),
    "Exceptions the plugin caught and swallowed (record, sampler, nvml, snapshot, mirror).",
)  # fmt: skip
FIELD_AVAILABLE = _f(
    "field_available", Kind.GAUGE, ("field",),
    "1 when vLLM's stats carry the field the plugin reads; 0 when this vLLM lacks it.", "min",
)  # fmt: skip
SAMPLER_CPU = _f("sampler_cpu_seconds_total", Kind.COUNTER, (), "CPU time of the plugin's sampling thread.")
INFO = _f("info", Kind.GAUGE, ("version", "vllm_version"), "The plugin's version and vLLM's; always 1.", "max")

FAMILIES: tuple[PluginFamily, ...] = (
    STEPS, SCHEDULED_TOKENS, TOKENS, PREEMPTIONS, BUSY, RUNNING, WAITING, KV_USAGE, KV_USAGE_STEPS, KV_CAPACITY,
    STARTED,
    GPU_ENERGY, GPU_POWER, NVML_UP, ERRORS, FIELD_AVAILABLE, SAMPLER_CPU, INFO,
)  # fmt: skip

# The error places counted in ERRORS, published at zero from the start so rate() has a series.
ERROR_PLACES = ("record", "sampler", "nvml", "snapshot", "mirror")

Samples = Mapping[PluginFamily, Mapping[tuple[str, ...], float]]


def readme_table() -> str:
    """README's table of the plugin's families, in order."""
    rows = ["| metric (on vLLM's `/metrics`) | type | labels | meaning |", "|---|---|---|---|"]
    for family in FAMILIES:
        rows.append(f"| `{family.name}` | {family.kind} | {', '.join(family.labels) or '—'} | {family.help} |")
    return "\n".join(rows) + "\n"


def render(samples: Samples, names: dict[tuple[PluginFamily, tuple[str, ...]], str] | None = None) -> str:
    """The families in Prometheus text format (version 0.0.4), in catalogue order. `names` caches
    each series' name-and-labels text between calls: the plugin's series hardly ever change."""
    names = {} if names is None else names
    lines: list[str] = []
    for family in FAMILIES:
        series = samples.get(family)
        if not series:
            continue
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.base} {family.kind}")
        for values, value in series.items():
            name = names.get((family, values))
            if name is None:
                name = names[(family, values)] = family.name + _label_text(family.labels, values)
            lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _label_text(names: Iterable[str], values: Iterable[str]) -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
