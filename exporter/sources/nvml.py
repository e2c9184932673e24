"""Measured GPU energy through NVML: the total-energy counter where the GPU has one, else our own
trapezoidal integral of sampled power. The `pynvml` module is injected so that tests can pass a
fake one; nothing here imports it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from exporter.attribution.readings import EnergySnapshot, GpuIdentity, GpuReading

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

    __slots__ = ("error", "joules", "last_t", "last_w", "samples")

    def __init__(self) -> None:
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
    ) -> None:
        """`selection`: NVML indices ("0") or "GPU-..." UUIDs; None means every GPU.
        `start_sampler=False` leaves power sampling to explicit `sample_power_once()` calls,
        so tests can integrate on a fake clock."""
        if power_sample_hz <= 0:
            raise ValueError("power_sample_hz must be positive")
        self._nvml = nvml
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
                if watts is None:
                    integral.error = failure
                else:
                    integral.add(t, watts)

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
    def sampler_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def read(self) -> EnergySnapshot:
        """One reading per GPU; a GPU whose read fails carries `error` and None energy, and the
        others are still read. Integrated energy is as of the latest power sample (at most one
        sampling period old); what is not yet counted appears in the next read, never lost."""
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
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 5 * self._period))
        self._shutdown()

    def _shutdown(self) -> None:
        # Shutting down is best-effort; the process may be exiting anyway.
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlEnergySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
