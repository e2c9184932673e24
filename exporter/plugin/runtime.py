"""The plugin's own thread: every `publish_seconds` it reads the GPUs' energy (when this process is
the one that measures), builds the table from the step counts, and publishes it on vLLM's page
and in the shared directory. vLLM's thread never waits for it, and nothing it does can raise
into vLLM: every failure is counted under `errors_total{where}` and logged once.

Several API-server processes may load the plugin; one of them, elected by an advisory file
lock, measures the GPUs, so each GPU is published once. If it dies, another takes over."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from exporter.attribution.readings import GpuReading
from exporter.plugin.publish import Mirror, SnapshotWriter
from exporter.plugin.state import EnergyTotals, Identity, Table, table
from exporter.plugin.steps import FIELDS, ITERATION_DETAILS, StepCounter
from exporter.sources import plugin_families as f
from exporter.sources.nvml import NvmlEnergySource, NvmlUnavailable

# A child of vLLM's logger, so the lines carry vLLM's format and go where vLLM's logs go.
log = logging.getLogger("vllm.token_economy_plugin")

LOCK_NAME = ".token-economy-sampler.lock"
NVML_RETRY_SECONDS = 30.0
ELECTION_RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """From the environment of vLLM's container (`from_environ`); bad values fall back, loudly."""

    directory: Path | None = None  # TOKEN_ECONOMY_PLUGIN_DIR: where the sidecar reads our files
    nvml: bool = True  # TOKEN_ECONOMY_PLUGIN_NVML=0 keeps NVML out of vLLM's process
    publish_seconds: float = 0.5  # TOKEN_ECONOMY_PLUGIN_PUBLISH_SECONDS
    gpus: tuple[str, ...] | None = None  # TOKEN_ECONOMY_PLUGIN_GPUS, else CUDA_VISIBLE_DEVICES
    power_sample_hz: float = 10.0  # for GPUs without an energy counter
    lock_directory: Path | None = None  # where the sampler election happens

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PluginConfig:
        directory = environ.get("TOKEN_ECONOMY_PLUGIN_DIR") or None
        lock_directory = directory or environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        return cls(
            directory=Path(directory) if directory else None,
            nvml=environ.get("TOKEN_ECONOMY_PLUGIN_NVML", "1").strip().lower() not in ("0", "false", "no", "off"),
            publish_seconds=_seconds(environ.get("TOKEN_ECONOMY_PLUGIN_PUBLISH_SECONDS")),
            gpus=_gpu_list(environ.get("TOKEN_ECONOMY_PLUGIN_GPUS") or environ.get("CUDA_VISIBLE_DEVICES")),
            lock_directory=Path(lock_directory) if lock_directory else None,
        )


def _seconds(text: str | None, default: float = 0.5) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 10.0:
        log.warning("TOKEN_ECONOMY_PLUGIN_PUBLISH_SECONDS=%r is not 0.1..10; using %s", text, default)
        return default
    return value


def _gpu_list(text: str | None) -> tuple[str, ...] | None:
    items = tuple(item.strip() for item in (text or "").split(",") if item.strip())
    return items or None


class Runtime:
    """One per process: the step counter vLLM's thread feeds, and the thread that publishes."""

    def __init__(
        self,
        config: PluginConfig,
        identity: Identity,
        prometheus_client: Any,
        load_nvml: Callable[[], ModuleType] | None = None,
        pid: int | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.counter = StepCounter()
        self.errors: dict[str, int] = dict.fromkeys(f.ERROR_PLACES, 0)
        self._load_nvml = load_nvml or _import_pynvml
        self._pid = os.getpid() if pid is None else pid
        self._mirror: Mirror | None = None
        self._prometheus = prometheus_client
        self._writer = SnapshotWriter(config.directory, self._pid) if config.directory else None
        self._energy = EnergyTotals()
        self._names: dict[tuple[f.PluginFamily, tuple[str, ...]], str] = {}  # render's cache
        self._source: NvmlEnergySource | None = None
        self._lock_file: TextIO | None = None
        self._next_election = 0.0
        self._next_nvml = 0.0
        self._reported: set[str] = set()
        self._cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="token-economy-plugin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()
        if self._lock_file is not None:
            with contextlib.suppress(Exception):
                self._lock_file.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.thread_time()
            reads = self._source.read_cpu_seconds if self._source is not None else 0.0
            self.publish_once()
            # NVML reads run on the source's worker thread, which this thread's time does not see.
            source = self._source
            after = source.read_cpu_seconds if source is not None else 0.0
            self._cpu += time.thread_time() - started + max(after - reads, 0.0)
            self._stop.wait(self.config.publish_seconds)

    def publish_once(self) -> None:
        """One round; any failure is counted where it happened and the round goes on."""
        gpus = None
        try:
            if self._measures():
                gpus = self._read_energy()
        except Exception as err:  # energy may fail; the work is still published
            self._failed("nvml", err)
        try:
            current = self._table(gpus)
        except Exception as err:  # a bug in our own code must not end the thread
            self._failed("sampler", err)
            return
        self._publish(current)
        self._report_missing()

    def _table(self, gpus: tuple[GpuReading, ...] | None) -> Table:
        counter = self.counter
        return table(
            self.identity,
            dict(counter.engines),  # a copy: vLLM's thread may add an engine meanwhile
            set(counter.missing),
            counter.details_seen,
            dict(self.errors),
            gpus,
            self._energy,
            self._cpu,
        )

    def _publish(self, current: Table) -> None:
        if self._writer is not None:
            try:
                self._writer.write(f.render(current, self._names))
            except Exception as err:
                self._failed("snapshot", err)
        try:
            if self._mirror is None:
                self._mirror = Mirror(self._prometheus)
            self._mirror.push(current)
        except Exception as err:
            self._failed("mirror", err)

    # -- energy -----------------------------------------------------------------------------

    def _measures(self) -> bool:
        """Whether this process is the one that reads the GPUs (or would, were NVML there)."""
        if not self.config.nvml:
            return False
        if self._lock_file is not None or self.config.lock_directory is None:
            return True
        now = time.monotonic()
        if now < self._next_election:
            return False
        self._next_election = now + ELECTION_RETRY_SECONDS
        try:
            handle = open(self.config.lock_directory / LOCK_NAME, "a")  # noqa: SIM115 (held while we measure)
        except OSError as err:
            # No lock to take (a missing or read-only directory): measuring here may count a GPU
            # twice if several API servers do the same; not measuring would count it never.
            self._failed("snapshot", err)
            return True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        log.info("token-economy plugin: this process (pid %d) measures the GPUs", self._pid)
        return True

    def _read_energy(self) -> tuple[GpuReading, ...]:
        source = self._source or self._open_nvml()
        if source is None:
            return ()
        snapshot = source.read()
        failed = [gpu for gpu in snapshot.gpus if gpu.error]
        if failed:
            self.errors["nvml"] += 1
            if "nvml" not in self._reported:
                self._reported.add("nvml")
                log.warning("token-economy plugin: NVML read failed: %s", {g.index: g.error for g in failed})
        else:
            self._reported.discard("nvml")
        self._energy.update(snapshot.gpus)
        return snapshot.gpus

    def _open_nvml(self) -> NvmlEnergySource | None:
        now = time.monotonic()
        if now < self._next_nvml:
            return None
        self._next_nvml = now + NVML_RETRY_SECONDS
        try:
            self._source = NvmlEnergySource(self._load_nvml(), self.config.gpus, self.config.power_sample_hz)
        except NvmlUnavailable as err:
            self.errors["nvml"] += 1
            log.warning("token-economy plugin: no GPU energy (%s); retrying every %.0f s", err, NVML_RETRY_SECONDS)
            return None
        except Exception as err:
            self._failed("nvml", err)
            return None
        gpus = ", ".join(f"{g.index}:{g.uuid}" for g in self._source.gpus)
        log.info("token-economy plugin: measuring GPUs %s (%s)", gpus, sorted(set(self._source.methods.values())))
        return self._source

    # -- reporting --------------------------------------------------------------------------

    def _failed(self, where: str, err: BaseException) -> None:
        self.errors[where] += 1
        if where not in self._reported:  # once per kind: a broken disk must not flood vLLM's log
            self._reported.add(where)
            log.warning("token-economy plugin: %s failed: %r (counted, not raised)", where, err)

    def _report_missing(self) -> None:
        missing = set(self.counter.missing)
        if self.counter.records and not self.counter.details_seen:
            missing.add(ITERATION_DETAILS)
        new = sorted(field for field in missing - self._reported if field in FIELDS)
        if new:
            self._reported.update(new)
            log.warning(
                "token-economy plugin: this vLLM's stats lack %s; those counts stay unpublished "
                "(iteration details need --enable-logging-iteration-details)",
                ", ".join(new),
            )


# vLLM's default stat logger writes one line per engine step when iteration details are on.
VLLM_STATS_LOGGER = "vllm.v1.metrics.loggers"
_STEP_LINE = "Iteration(%d)"


class QuietStepLines(logging.Filter):
    """Drops vLLM's per-step "Iteration(n): ..." log lines, which the plugin counts instead, so
    vLLM can run with --enable-logging-iteration-details without a log line per step; vLLM's
    other lines pass. TOKEN_ECONOMY_PLUGIN_STEP_LOGS=1 keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _STEP_LINE not in str(record.msg)


def quiet_step_lines(environ: Mapping[str, str]) -> bool:
    if environ.get("TOKEN_ECONOMY_PLUGIN_STEP_LOGS", "0").strip().lower() in ("1", "true", "yes", "on"):
        return False
    target = logging.getLogger(VLLM_STATS_LOGGER)
    if not any(isinstance(existing, QuietStepLines) for existing in target.filters):
        target.addFilter(QuietStepLines())
    return True


def _import_pynvml() -> ModuleType:
    try:
        import pynvml  # in vLLM's process: only when this process measures
    except ImportError as err:
        raise NvmlUnavailable("pynvml_missing", f"cannot import pynvml (nvidia-ml-py): {err}") from err
    return pynvml  # type: ignore[no-any-return]
