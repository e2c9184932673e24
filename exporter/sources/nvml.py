"""Measured GPU energy through NVML: the total-energy counter where the GPU has one, else our own
trapezoidal integral of sampled power. The `pynvml` module is injected so that tests can pass a
fake one; nothing here imports it.

An NVML call can hang (a GPU falling off the bus, a driver in recovery) and Python cannot
interrupt it. So each read runs on one long-lived worker thread and the caller waits at most
`read_timeout`: a read that misses it fails as SourceError("timeout"), and while that call is
still stuck every later read is refused at once (SourceError("nvml_hung")) instead of queueing
behind it. When the call returns, the next read goes through again. The thread is a daemon, so a
call that never returns cannot keep the process from exiting."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Generic, TypeVar

from exporter.attribution.readings import EnergySnapshot, GpuIdentity, GpuReading
from exporter.sources.errors import SourceError

COUNTER = "counter"
POWER_INTEGRATION = "power_integration"

# Checked in order, so the specific classes must come before any parent; the last resort is
# "nvml_error". Looked up by name on the injected module so a fake can supply its own classes.
_READ_ERROR_REASONS = (
    ("NVMLError_GpuIsLost", "nvml_gpu_lost"),
    ("NVMLError_NotSupported", "nvml_not_supported"),
    ("NVMLError_NoPermission", "nvml_no_permission"),
    ("NVMLError_Timeout", "nvml_timeout"),
    ("NVMLError_Uninitialized", "nvml_uninitialized"),
)
_INIT_ERROR_REASONS = (
    ("NVMLError_LibraryNotFound", "library_not_found"),
    ("NVMLError_DriverNotLoaded", "driver_not_loaded"),
    ("NVMLError_NoPermission", "no_permission"),
    ("NVMLError_LibRmVersionMismatch", "driver_version_mismatch"),
)
_NOT_FOUND_ERRORS = ("NVMLError_InvalidArgument", "NVMLError_NotFound", "NVMLError_GpuNotFound")


class NvmlUnavailable(Exception):
    """NVML cannot give board energy for the selected GPUs. `reason` is a short label
    ("library_not_found", "driver_not_loaded", "mig", "gpu_not_found", "no_gpus", ...).
    `gpus` holds whatever identities were read before giving up, so a fallback can keep them."""

    def __init__(self, reason: str, message: str, gpus: Sequence[GpuIdentity] = ()) -> None:
        super().__init__(f"NVML unavailable ({reason}): {message}")
        self.reason = reason
        self.message = message
        self.gpus = tuple(gpus)


def _is_a(nvml: Any, err: BaseException, class_name: str) -> bool:
    cls = getattr(nvml, class_name, None)
    return isinstance(cls, type) and isinstance(err, cls)


def _classify(nvml: Any, err: BaseException, table: tuple[tuple[str, str], ...], default: str) -> str:
    return next((reason for class_name, reason in table if _is_a(nvml, err, class_name)), default)


def _text(value: str | bytes) -> str:
    # nvidia-ml-py decodes strings since 11.x; older bindings return bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


R = TypeVar("R")


class _Call(Generic[R]):
    __slots__ = ("done", "error", "fn", "result", "started")

    def __init__(self, fn: Callable[[], R]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: R | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()


class AbandonableCalls:
    """Runs calls on one long-lived daemon thread; the caller waits at most a deadline. One call
    at a time: a caller that finds the previous call still stuck is refused at once."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stuck: _Call[Any] | None = None
        self._one_at_a_time = threading.Lock()
        self.cpu_seconds = 0.0  # CPU time the calls took on the worker thread (for the plugin's own count)

    @property
    def stuck_seconds(self) -> float | None:
        """How long the call that missed its deadline has been running; None when none is stuck."""
        stuck = self._stuck
        if stuck is None or stuck.done.is_set():
            return None
        return time.monotonic() - stuck.started

    def call(self, fn: Callable[[], R], timeout: float) -> R:
        with self._one_at_a_time:
            stuck = self.stuck_seconds
            if stuck is not None:
                raise SourceError(
                    "nvml_hung", f"an NVML call has not returned for {stuck:.1f} s; refused until it does"
                )
            self._stuck = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            job = _Call(fn)
            self._calls.put(job)
            if not job.done.wait(timeout):
                self._stuck = job
                raise SourceError("timeout", f"NVML did not answer within {timeout:g} s")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _serve(self) -> None:
        while (job := self._calls.get()) is not None:
            started = time.thread_time()
            try:
                job.result = job.fn()
            except BaseException as err:  # handed to the caller, who decides
                job.error = err
            self.cpu_seconds += time.thread_time() - started
            job.done.set()

    def close(self) -> None:
        """Lets the thread end once it is free; never waits for it."""
        if self._thread is not None:
            self._calls.put(None)


class _Gpu:
    __slots__ = ("handle", "index", "method", "name", "stale", "uuid")

    def __init__(self, index: int, uuid: str, name: str, handle: Any, method: str) -> None:
        self.index = index
        self.uuid = uuid
        self.name = name
        self.handle = handle
        self.method = method
        self.stale = False  # a read failed: look the handle up again before the next one


class _PowerIntegral:
    """Cumulative joules from sampled power. Gaps where sampling failed are bridged by the same
    trapezoid, because counting them as zero would always under-report."""

    __slots__ = ("attempted_at", "error", "joules", "last_t", "last_w", "samples")

    def __init__(self) -> None:
        self.attempted_at = time.monotonic()  # the end of the latest sample, taken or failed
        self.joules = 0.0
        self.last_t: float | None = None
        self.last_w: float | None = None
        self.samples = 0
        self.error: str | None = None

    def add(self, t: float, watts: float) -> None:
        if self.last_t is not None and self.last_w is not None and t > self.last_t:
            self.joules += 0.5 * (self.last_w + watts) * (t - self.last_t)
        self.last_t, self.last_w = t, watts
        self.samples += 1
        self.error = None


class NvmlEnergySource:
    def __init__(
        self,
        nvml: ModuleType | Any,
        selection: Sequence[str] | None = None,
        power_sample_hz: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        start_sampler: bool = True,
        read_timeout: float = 1.0,
    ) -> None:
        """`selection`: NVML indices ("0") or "GPU-..." UUIDs; None means every GPU.
        `start_sampler=False` leaves power sampling to explicit `sample_power_once()` calls,
        so tests can integrate on a fake clock. `read_timeout`: the longest a `read()` waits for
        NVML (wall-clock seconds); the calls of a healthy driver take milliseconds."""
        if power_sample_hz <= 0:
            raise ValueError("power_sample_hz must be positive")
        if read_timeout <= 0:
            raise ValueError("read_timeout must be positive")
        self._nvml = nvml
        self._read_timeout = read_timeout
        self._calls = AbandonableCalls("nvml-reads")
        self._clock = clock
        self._period = 1.0 / power_sample_hz
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._integrals: dict[int, _PowerIntegral] = {}
        self._closed = False

        mig = [item for item in (selection or ()) if item.upper().startswith("MIG-")]
        if mig:
            raise NvmlUnavailable(
                "mig", f"{', '.join(mig)} is a MIG slice; NVML energy is board-level and would include other slices"
            )
        self._init()
        try:
            self._gpus = self._open_gpus(selection)
        except BaseException:
            self._shutdown()
            raise
        for gpu in self._gpus:
            if gpu.method == POWER_INTEGRATION:
                self._integrals[gpu.index] = _PowerIntegral()
        if self._integrals:
            # A first sample now, so the integral starts at construction rather than one period later.
            self.sample_power_once()
            if start_sampler:
                self._thread = threading.Thread(target=self._sample_loop, name="nvml-power-sampler", daemon=True)
                self._thread.start()

    # -- set-up -----------------------------------------------------------------------------

    def _init(self) -> None:
        try:
            self._nvml.nvmlInit()
        except (OSError, ImportError) as err:
            raise NvmlUnavailable("library_not_found", f"cannot load the NVML library: {err}") from err
        except Exception as err:
            if not _is_a(self._nvml, err, "NVMLError"):
                raise
            reason = _classify(self._nvml, err, _INIT_ERROR_REASONS, "nvml_error")
            raise NvmlUnavailable(reason, f"nvmlInit failed: {err}") from err

    def _open_gpus(self, selection: Sequence[str] | None) -> list[_Gpu]:
        nvml = self._nvml
        if selection is None:
            try:
                count = nvml.nvmlDeviceGetCount()
            except nvml.NVMLError as err:
                raise NvmlUnavailable("nvml_error", f"nvmlDeviceGetCount failed: {err}") from err
            selection = [str(i) for i in range(count)]
        if not selection:
            raise NvmlUnavailable("no_gpus", "no GPU is selected or visible")

        gpus: list[_Gpu] = []
        seen: set[str] = set()
        for item in selection:
            handle = self._handle(item)
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
                # CUDA may number devices differently from NVML (CUDA_DEVICE_ORDER); we report
                # NVML's index, which is what nvidia-smi and DCGM show.
                index = int(item) if item.isdigit() else int(nvml.nvmlDeviceGetIndex(handle))
            except nvml.NVMLError as err:
                raise NvmlUnavailable("nvml_error", f"cannot read the identity of GPU {item}: {err}") from err
            if uuid in seen:
                continue  # "0,GPU-<uuid of 0>" must not count one board twice
            seen.add(uuid)
            gpus.append(_Gpu(index, uuid, name, handle, self._probe(handle)))

        on_mig = [g for g in gpus if self._mig_enabled(g.handle)]
        if on_mig:
            listed = ", ".join(f"GPU {g.index} ({g.uuid})" for g in on_mig)
            raise NvmlUnavailable(
                "mig",
                f"MIG mode is enabled on {listed}; NVML energy is board-level and would include other slices",
                gpus=[GpuIdentity(g.index, g.uuid, g.name) for g in gpus],
            )
        return gpus

    def _handle(self, item: str) -> Any:
        nvml = self._nvml
        try:
            if item.isdigit():
                return nvml.nvmlDeviceGetHandleByIndex(int(item))
            return nvml.nvmlDeviceGetHandleByUUID(item)
        except nvml.NVMLError as err:
            if any(_is_a(nvml, err, name) for name in _NOT_FOUND_ERRORS):
                raise NvmlUnavailable("gpu_not_found", f"GPU {item!r} does not exist ({err})") from err
            raise NvmlUnavailable("nvml_error", f"cannot open GPU {item!r}: {err}") from err

    def _probe(self, handle: Any) -> str:
        # NotSupported is the documented answer before Volta; any other failure at start-up
        # also makes the counter untrustworthy, and sampled power still works.
        try:
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except self._nvml.NVMLError:
            return POWER_INTEGRATION
        return COUNTER

    def _mig_enabled(self, handle: Any) -> bool:
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:
            return False  # NotSupported: a GPU without MIG
        except AttributeError:
            return False  # bindings older than MIG
        return bool(current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))

    # -- power sampling ---------------------------------------------------------------------

    def sample_power_once(self) -> None:
        """Take one power sample of every GPU without the energy counter."""
        for gpu in self._gpus:
            if gpu.method != POWER_INTEGRATION:
                continue
            try:
                watts = self._nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
                failure = None
            except self._nvml.NVMLError as err:
                watts, failure = None, _classify(self._nvml, err, _READ_ERROR_REASONS, "nvml_error")
            t = self._clock()
            with self._lock:
                integral = self._integrals[gpu.index]
                integral.attempted_at = time.monotonic()
                if watts is None:
                    integral.error = failure
                else:
                    integral.add(t, watts)

    def _sampler_stuck(self, integral: _PowerIntegral) -> bool:
        if self._thread is None:
            return False
        return time.monotonic() - integral.attempted_at > self._read_timeout + 2 * self._period

    def _sample_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample_power_once()
            # Fixed-rate schedule, so NVML latency does not lower the rate below power_sample_hz;
            # after a stall, resume from now instead of firing a burst of catch-up samples.
            next_at += self._period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    # -- reading ----------------------------------------------------------------------------

    @property
    def gpus(self) -> list[GpuIdentity]:
        return [GpuIdentity(g.index, g.uuid, g.name) for g in self._gpus]

    @property
    def methods(self) -> dict[int, str]:
        """GPU index -> "counter" or "power_integration"."""
        return {g.index: g.method for g in self._gpus}

    @property
    def power_sample_counts(self) -> dict[int, int]:
        with self._lock:
            return {index: integral.samples for index, integral in self._integrals.items()}

    @property
    def read_cpu_seconds(self) -> float:
        """CPU time `read()` has spent on its worker thread, which the caller's own thread_time
        no longer sees (the plugin counts its thread's CPU and should add this)."""
        return self._calls.cpu_seconds

    @property
    def sampler_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def read(self) -> EnergySnapshot:
        """One reading per GPU; a GPU whose read fails carries `error` and None energy, and the
        others are still read. Integrated energy is as of the latest power sample (at most one
        sampling period old); what is not yet counted appears in the next read, never lost.
        Raises SourceError("timeout") when NVML does not answer within `read_timeout`, and
        SourceError("nvml_hung") while that call is still stuck."""
        if self._closed:
            raise SourceError("closed", "the NVML source is closed")
        return self._calls.call(self._read_all, self._read_timeout)

    def _read_all(self) -> EnergySnapshot:
        timestamp = self._clock()
        return EnergySnapshot(timestamp=timestamp, gpus=tuple(self._read_gpu(g) for g in self._gpus), modelled=False)

    def _read_gpu(self, gpu: _Gpu) -> GpuReading:
        nvml = self._nvml
        energy: float | None = None
        power: float | None = None
        error: str | None = None
        try:
            if gpu.stale:
                # After a lost GPU comes back, its old handle may be dead; the UUID is stable.
                gpu.handle = nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
                gpu.stale = False
            if gpu.method == COUNTER:
                energy = nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle) / 1000.0
        except nvml.NVMLError as err:
            error = _classify(nvml, err, _READ_ERROR_REASONS, "nvml_error")
            gpu.stale = True
        if gpu.method == POWER_INTEGRATION:
            with self._lock:
                integral = self._integrals[gpu.index]
                if error is None and integral.error is not None:
                    error = integral.error
                    gpu.stale = True  # the sampler shares the handle and picks up the new one
                if error is None and self._sampler_stuck(integral):
                    # The sampler's own NVML call hangs: the integral stands still, which would
                    # read as an idle GPU. The gap is bridged once a sample comes again.
                    error = "timeout"
                if error is None:
                    energy = integral.joules
        if error is None:
            try:
                power = nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
            except nvml.NVMLError:
                power = None  # energy is what matters; the power gauge may go blank for a tick
        return GpuReading(gpu.index, gpu.uuid, gpu.name, energy, power, gpu.method, error)

    # -- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Bounded: waits at most about 2 x read_timeout, and leaves NVML initialised rather than
        wait for a driver that hangs (the process is usually exiting)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self._read_timeout, 2 * self._period))
            if self._thread.is_alive():  # stuck in an NVML call: shutting NVML down would wait behind it
                self._calls.close()
                return
        with contextlib.suppress(Exception):  # a stuck read ("nvml_hung") or a timeout: leave it
            self._calls.call(self._shutdown, self._read_timeout)
        self._calls.close()

    def _shutdown(self) -> None:
        # Shutting down is best-effort; the process may be exiting anyway.
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlEnergySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
