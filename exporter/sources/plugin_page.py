"""Reads the plugin's families from text: vLLM's own page (where the plugin publishes them beside
vLLM's) or one of the plugin's snapshot files. Pure: text in, readings out.

Work becomes `EngineSample`s as the core knows them, with prompt tokens counted when the
scheduler ran them where vLLM gave the plugin its iteration details. Energy becomes
`GpuReading`s, and only while the plugin's NVML reads succeed: a plugin whose NVML failed has no
measurement to offer, and the sidecar falls back rather than freeze the energy."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.attribution.counters import usable
from exporter.attribution.readings import EngineSample, GpuReading
from exporter.sources import plugin_families as f
from exporter.sources.exposition import complete, labels, samples, value_of

_WANTED = tuple(family.name for family in f.FAMILIES)
_BY_NAME = {family.name: family for family in f.FAMILIES}
_DETAILS = "scheduler_stats.iteration_details"
_FRACTIONS = frozenset({f.KV_USAGE})  # gauges of a share: 0..1, as vLLM's page's are held


@dataclass(frozen=True, slots=True)
class PluginReading:
    engines: tuple[EngineSample, ...]
    gpus: tuple[GpuReading, ...] | None  # None: no energy here (another process measures, or NVML is down)
    unavailable_fields: frozenset[str] = frozenset()
    rejected: tuple[str, ...] = ()  # a reason per sample left out, as `VllmSnapshot.rejected`


Rows = dict[f.PluginFamily, dict[tuple[str, ...], float]]


def parse(text: str, engine_suffix: str = "") -> PluginReading | None:
    """None when the text holds none of the plugin's work; SourceError("truncated") when it was
    cut short. `engine_suffix` keeps the engines of different processes' files apart, so each is
    its own counter series."""
    complete(text)
    rows, rejected = _rows(text)
    engines = _engines(rows, engine_suffix)
    if not engines:
        return None
    unavailable = frozenset(labels[0] for labels, value in rows[f.FIELD_AVAILABLE].items() if value == 0)
    return PluginReading(engines, _gpus(rows), unavailable, tuple(rejected))


def _rows(text: str) -> tuple[Rows, list[str]]:
    """Every family's samples by label values. A value no counter can hold, and a series given
    twice, are left out (unknown, never zero) and named in the list returned beside them."""
    rows: Rows = {family: {} for family in f.FAMILIES}
    rejected: list[str] = []
    duplicated: set[tuple[str, tuple[str, ...]]] = set()
    for name, label_text, rest in samples(text, _WANTED):
        family = _BY_NAME[name]
        value = value_of(rest)
        if value is None:
            continue
        if not usable(value) or (family in _FRACTIONS and value > 1.0):
            rejected.append("bad_value")
            continue
        found = labels(label_text) if label_text else {}
        # An absent model_name is the model "unknown": one series whichever way a page says it.
        key = tuple(
            found.get(label) or "unknown" if label == "model_name" else found.get(label, "") for label in family.labels
        )
        if key in rows[family] or (name, key) in duplicated:
            rejected.append("duplicate_series")
            rows[family].pop(key, None)
            duplicated.add((name, key))
            continue
        rows[family][key] = value
    return rows, rejected


def _engines(rows: Rows, suffix: str) -> tuple[EngineSample, ...]:
    details = rows[f.FIELD_AVAILABLE].get((_DETAILS,)) == 1.0
    keys = {key[:2] for key in rows[f.TOKENS]} | {key[:2] for key in rows[f.STEPS]}
    samples = []
    for model, engine in sorted(keys):
        key = (model, engine)
        prefill_steps = rows[f.STEPS].get((*key, "prefill"))
        decode_steps = rows[f.STEPS].get((*key, "decode"))
        computed = rows[f.TOKENS].get((*key, "input"))
        cached = rows[f.TOKENS].get((*key, "cached_input"))
        samples.append(
            EngineSample(
                model_name=model or "unknown",
                engine=engine + suffix,
                prompt_tokens=None if computed is None or cached is None else computed + cached,
                generation_tokens=rows[f.TOKENS].get((*key, "output")),
                cached_prompt_tokens=cached,
                computed_prompt_tokens=computed,
                scheduled_prompt_tokens=rows[f.SCHEDULED_TOKENS].get((*key, "prefill")) if details else None,
                scheduled_decode_tokens=rows[f.SCHEDULED_TOKENS].get((*key, "decode")) if details else None,
                prefill_steps=prefill_steps if details else None,
                kv_usage_steps=rows[f.KV_USAGE_STEPS].get(key) if details else None,
                steps=None if prefill_steps is None or decode_steps is None else prefill_steps + decode_steps,
                preemptions=rows[f.PREEMPTIONS].get(key),
                created=rows[f.STARTED].get(key),
                kv_cache_usage=rows[f.KV_USAGE].get(key),
                kv_cache_capacity_tokens=rows[f.KV_CAPACITY].get(key),
                requests_running=rows[f.RUNNING].get(key),
                requests_waiting=rows[f.WAITING].get(key),
            )
        )
    return tuple(samples)


def _gpus(rows: Rows) -> tuple[GpuReading, ...] | None:
    if rows[f.NVML_UP].get(()) != 1.0 or not rows[f.GPU_ENERGY]:
        return None
    readings = []
    for (index, uuid, name, method), joules in sorted(rows[f.GPU_ENERGY].items()):
        if not index.isdigit() or len(index) > 6:
            continue
        power = rows[f.GPU_POWER].get((index, uuid, name, method))
        readings.append(GpuReading(int(index), uuid, name, joules, power, method))
    return tuple(readings) or None
