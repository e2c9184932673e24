"""The class vLLM instantiates: a `StatLoggerBase` whose `record()` is called on vLLM's event loop
after every engine step. It hands the stats to the process's step counter and returns; it never
raises into vLLM, whose output handler would otherwise fail every request in flight."""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any

import prometheus_client
from vllm.v1.metrics.loggers import StatLoggerBase

from exporter import __version__
from exporter.plugin.runtime import PluginConfig, Runtime, log, quiet_step_lines
from exporter.plugin.state import Identity

_RUNTIME: Runtime | None = None
_CREATING = threading.Lock()
# The vLLM releases whose stats classes the plugin was tested against (major, minor).
TESTED_VLLM = ((0, 32),)


def runtime_for(vllm_config: Any) -> Runtime:
    """The process's one runtime (vLLM makes a logger per engine; they share it)."""
    global _RUNTIME
    with _CREATING:
        if _RUNTIME is None:
            _RUNTIME = Runtime(PluginConfig.from_environ(os.environ), _identity(vllm_config), prometheus_client)
            _RUNTIME.start()
            atexit.register(_RUNTIME.stop)
            quiet = quiet_step_lines(os.environ)
            _check_version(_RUNTIME.identity.vllm_version)
            log.info(
                "token-economy plugin %s started (pid %d, snapshot directory %s%s)",
                __version__, os.getpid(), _RUNTIME.config.directory,
                "; vLLM's per-step Iteration lines are left out, TOKEN_ECONOMY_PLUGIN_STEP_LOGS=1 keeps them"
                if quiet else "",
            )  # fmt: skip
        return _RUNTIME


def _identity(vllm_config: Any) -> Identity:
    model = getattr(getattr(vllm_config, "model_config", None), "served_model_name", None)
    if isinstance(model, list | tuple):
        model = model[0] if model else None
    return Identity(
        model_name=str(model or "unknown"),
        version=__version__,
        vllm_version=_vllm_version(),
        started=time.time(),
        kv_capacity_tokens=_kv_capacity(vllm_config),
    )


def _check_version(version: str) -> None:
    """vLLM's stats classes are not a stable interface: on a release the plugin was not tested
    with, say so once. It still runs; every field is read by attribute and checked."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        major_minor = ()
    if major_minor not in TESTED_VLLM:
        tested = ", ".join(f"{major}.{minor}" for major, minor in TESTED_VLLM)
        log.warning(
            "token-economy plugin: tested with vLLM %s, this is %s; fields this vLLM lacks are listed in "
            "token_economy_plugin_field_available and left uncounted",
            tested, version,
        )  # fmt: skip


def _vllm_version() -> str:
    try:
        from vllm import __version__ as version
    except Exception:
        return "unknown"
    return str(version)


def _kv_capacity(vllm_config: Any) -> float | None:
    cache = getattr(vllm_config, "cache_config", None)
    blocks, size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
    if isinstance(blocks, int) and isinstance(size, int) and blocks > 0 and size > 0:
        return float(blocks * size)
    return None


class TokenEconomyStatLogger(StatLoggerBase):
    """One per engine, as vLLM makes them. Nothing here may raise: a failure is counted."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.engine_index = engine_index
        self._runtime: Runtime | None = None
        try:
            self._runtime = runtime_for(vllm_config)
        except Exception as err:  # vLLM must start even when the plugin cannot
            log.warning("token-economy plugin disabled: %r", err)

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        runtime = self._runtime
        if runtime is None:
            return
        try:
            runtime.counter.record(scheduler_stats, iteration_stats, engine_idx)
        except Exception:
            runtime.errors["record"] += 1

    def log_engine_initialized(self) -> None:
        """Nothing to say: vLLM logs the engine's start; the plugin's own line came at start-up."""
