"""A parser for vLLM's Prometheus page that reads only the families the attribution needs (by
substring search: `exposition.samples`), every tick. Names of older vLLM releases are read as
their current equivalents; a family that is absent stays None (unknown), it never becomes zero."""

from __future__ import annotations

import math

from exporter.attribution.counters import usable
from exporter.attribution.readings import EngineSample, VllmSnapshot
from exporter.sources.errors import SourceError
from exporter.sources.exposition import complete, labels, samples, value_of

# family name -> EngineSample field; by-source prompt tokens and the cache config are read apart
_FIELDS: dict[str, str] = {
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:prompt_tokens_cached_total": "cached_prompt_tokens",
    "vllm:iteration_tokens_total_count": "steps",
    "vllm:iteration_tokens_total_sum": "step_tokens",
    "vllm:num_preemptions_total": "preemptions",
    "vllm:prompt_tokens_created": "created",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # before vLLM 0.10
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
}
_BY_SOURCE = "vllm:prompt_tokens_by_source_total"
_CACHE_CONFIG = "vllm:cache_config_info"
_WANTED = frozenset(_FIELDS) | {_BY_SOURCE, _CACHE_CONFIG}

MAX_CAPACITY_TOKENS = float(2**40)  # a KV cache of a trillion tokens is beyond any node
UNKNOWN_MODEL = "unknown"
_GAUGES = {"kv_cache_usage": 1.0, "requests_running": None, "requests_waiting": None}  # field -> upper bound

# Families whose absence changes what we can say; reported once so users know what degraded.
ESSENTIAL = ("prompt_tokens", "generation_tokens", "cached_prompt_tokens", "steps", "kv_cache_usage")


def parse(text: str, timestamp: float) -> VllmSnapshot:
    """Raise SourceError("truncated") for a page cut short, SourceError("parse") when it holds no
    usable vLLM sample. A sample whose value no counter (or gauge) can hold, and a series given
    twice, are left out and named in `rejected`: they become unknown, never arithmetic."""
    if "vllm:" not in text:
        raise SourceError("parse", "no vLLM samples on the page")
    complete(text)
    rows: dict[tuple[str, str], dict[str, float]] = {}
    capacity: dict[str, float] = {}  # by engine: cache_config_info carries no model_name
    seen: set[str] = set()
    rejected: list[str] = []
    duplicated: set[tuple[str, str, str]] = set()
    for name, label_text, rest in samples(text, _WANTED):
        value = value_of(rest)
        if value is None:
            continue
        found = labels(label_text) if label_text else {}
        engine = found.get("engine", "0")
        if name == _CACHE_CONFIG:
            tokens = _cache_tokens(found)
            if tokens is not None:
                capacity[engine] = tokens
            continue
        # An absent model_name is the model "unknown": the same engine whichever way a page says it.
        key = (found.get("model_name") or UNKNOWN_MODEL, engine)
        if name == _BY_SOURCE:
            if found.get("source") != "local_compute":
                continue
            field = "computed_prompt_tokens"
        else:
            field = _FIELDS[name]
        if not _plausible(field, value):
            rejected.append("bad_value")
            continue
        row = rows.setdefault(key, {})
        if field in row or (*key, field) in duplicated:
            rejected.append("duplicate_series")  # which one is true cannot be known: neither
            row.pop(field, None)
            duplicated.add((*key, field))
            continue
        row[field] = value
        seen.add(field)

    if not rows:
        raise SourceError("parse", "no usable vLLM samples")
    engines = tuple(
        EngineSample(model_name=model, engine=engine, kv_cache_capacity_tokens=capacity.get(engine), **row)
        for (model, engine), row in rows.items()
    )
    missing = frozenset(name for name in ESSENTIAL if name not in seen)
    return VllmSnapshot(timestamp=timestamp, engines=engines, missing_families=missing, rejected=tuple(rejected))


def _plausible(field: str, value: float) -> bool:
    """A counter's value is finite, not negative and within float precision; a gauge's finite,
    not negative and within its bound."""
    if field in _GAUGES:
        bound = _GAUGES[field]
        return math.isfinite(value) and value >= 0 and (bound is None or value <= bound)
    return usable(value)


def _cache_tokens(labels: dict[str, str]) -> float | None:
    """KV capacity in tokens: vLLM's own figure where it gives one, else blocks x block size."""
    for factors in (("kv_cache_size_tokens",), ("num_gpu_blocks", "block_size")):
        try:
            value = math.prod(float(labels[name]) for name in factors)
        except (KeyError, ValueError):
            continue
        if 0 < value <= MAX_CAPACITY_TOKENS:
            return value
    return None
