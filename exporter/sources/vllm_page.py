"""A parser for vLLM's Prometheus page that reads only the families the attribution needs (by
substring search: `exposition.samples`), every tick. Names of older vLLM releases are read as
their current equivalents; a family that is absent stays None (unknown), it never becomes zero."""

from __future__ import annotations

import math

from exporter.attribution.readings import EngineSample, VllmSnapshot
from exporter.sources.errors import SourceError
from exporter.sources.exposition import labels, samples

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

# Families whose absence changes what we can say; reported once so users know what degraded.
ESSENTIAL = ("prompt_tokens", "generation_tokens", "cached_prompt_tokens", "steps", "kv_cache_usage")


def parse(text: str, timestamp: float) -> VllmSnapshot:
    """Raise SourceError("parse") when the page holds no usable vLLM sample."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    capacity: dict[str, float] = {}  # by engine: cache_config_info carries no model_name
    seen: set[str] = set()
    for name, label_text, rest in samples(text, _WANTED):
        try:
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        found = labels(label_text) if label_text else {}
        engine = found.get("engine", "0")
        if name == _CACHE_CONFIG:
            tokens = _cache_tokens(found)
            if tokens is not None:
                capacity[engine] = tokens
            continue
        row = rows.setdefault((found.get("model_name", ""), engine), {})
        if name == _BY_SOURCE:
            if found.get("source") == "local_compute":
                row["computed_prompt_tokens"] = value
                seen.add("computed_prompt_tokens")
            continue
        field = _FIELDS[name]
        row[field] = value
        seen.add(field)

    if not rows:
        raise SourceError("parse", "no vLLM samples on the page" if "vllm:" not in text else "no usable vLLM samples")
    engines = tuple(
        EngineSample(model_name=model or "unknown", engine=engine, kv_cache_capacity_tokens=capacity.get(engine), **row)
        for (model, engine), row in rows.items()
    )
    missing = frozenset(name for name in ESSENTIAL if name not in seen)
    return VllmSnapshot(timestamp=timestamp, engines=engines, missing_families=missing)


def _cache_tokens(labels: dict[str, str]) -> float | None:
    """KV capacity in tokens: vLLM's own figure where it gives one, else blocks x block size."""
    for factors in (("kv_cache_size_tokens",), ("num_gpu_blocks", "block_size")):
        try:
            value = math.prod(float(labels[name]) for name in factors)
        except (KeyError, ValueError):
            continue
        if value > 0:
            return value
    return None
