"""The vLLM stat-logger plugin: counts every engine step and reads the GPUs' energy from inside
vLLM's process, for the sidecar and for Prometheus (README, "The vLLM plugin").

vLLM finds `TokenEconomyStatLogger` through the `vllm.stat_logger_plugins` entry point. It is
imported on first use, so the plugin's pure parts (and the sidecar, which reads the plugin's
families by name) never import vLLM."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "TokenEconomyStatLogger":
        from exporter.plugin.vllm_logger import TokenEconomyStatLogger

        return TokenEconomyStatLogger
    raise AttributeError(name)
