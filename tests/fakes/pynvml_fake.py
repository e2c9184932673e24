"""A stand-in for the `pynvml` module (nvidia-ml-py) with the functions the exporter calls, the
same names and signatures, and the real exception classes, so `except pynvml.NVMLError_...`
behaves exactly as against a driver. Deterministic: energy and power are functions of a
settable clock, and failures fire on chosen call numbers."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pynvml as _real  # only for its exception classes and constants; loading it needs no driver

NVMLError = _real.NVMLError
NVMLError_NotSupported = _real.NVMLError_NotSupported
NVMLError_DriverNotLoaded = _real.NVMLError_DriverNotLoaded
NVMLError_LibraryNotFound = _real.NVMLError_LibraryNotFound
NVMLError_GpuIsLost = _real.NVMLError_GpuIsLost
NVMLError_NotFound = _real.NVMLError_NotFound
NVMLError_InvalidArgument = _real.NVMLError_InvalidArgument
NVMLError_Uninitialized = _real.NVMLError_Uninitialized
NVMLError_NoPermission = _real.NVMLError_NoPermission
NVMLError_Unknown = _real.NVMLError_Unknown
NVML_DEVICE_MIG_ENABLE = _real.NVML_DEVICE_MIG_ENABLE
NVML_DEVICE_MIG_DISABLE = _real.NVML_DEVICE_MIG_DISABLE


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Number = float | Callable[[float], float]


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    energy_counter: bool = True  # False: nvmlDeviceGetTotalEnergyConsumption raises NotSupported
    energy_mj: Number = 0.0  # millijoules since driver load, or a function of the clock
    power_mw: Number = 100_000.0  # milliwatts, or a function of the clock
    mig_mode: int | None = None  # None: nvmlDeviceGetMigMode raises NotSupported (no MIG)
    names_as_bytes: bool = False  # nvidia-ml-py before 11.x returned bytes
    lost: bool = False  # every call on this GPU raises GpuIsLost while set; see FakeNvml.lose_gpu
    generation: int = 0  # handles from before the GPU was last lost stay dead, as after a reset
    # function name -> {call number (1-based, per GPU): exception class to raise on that call}
    fail_on: dict[str, dict[int, type[BaseException]]] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeHandle:
    index: int
    generation: int = 0


class FakeNvml:
    """Use an instance where the code expects the `pynvml` module."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_Unknown = NVMLError_Unknown
    NVML_DEVICE_MIG_ENABLE = NVML_DEVICE_MIG_ENABLE
    NVML_DEVICE_MIG_DISABLE = NVML_DEVICE_MIG_DISABLE

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        clock: FakeClock | Callable[[], float] | None = None,
        init_error: BaseException | type[BaseException] | None = None,
    ) -> None:
        self.gpus = list(gpus) if gpus is not None else [FakeGpu()]
        self.clock = clock if clock is not None else FakeClock()
        self.init_error = init_error
        self.initialised = 0  # NVML reference-counts init and shutdown
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: dict[tuple[str, int], int] = defaultdict(int)
        self._lock = threading.Lock()  # the exporter's sampler thread calls in concurrently

    # -- helpers --------------------------------------------------------------------------

    def call_count(self, function: str, index: int) -> int:
        with self._lock:
            return self.calls[(function, index)]

    def lose_gpu(self, index: int) -> None:
        self.gpus[index].lost = True
        self.gpus[index].generation += 1

    def recover_gpu(self, index: int) -> None:
        self.gpus[index].lost = False

    def _value(self, value: Number) -> float:
        return value(self.clock()) if callable(value) else value

    def _enter(self, function: str, handle: FakeHandle) -> FakeGpu:
        if not self.initialised:
            raise NVMLError_Uninitialized()
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        with self._lock:
            self.calls[(function, handle.index)] += 1
            n = self.calls[(function, handle.index)]
        gpu = self.gpus[handle.index]
        if gpu.lost or handle.generation != gpu.generation:
            raise NVMLError_GpuIsLost()
        failure = gpu.fail_on.get(function, {}).get(n)
        if failure is not None:
            raise failure()
        return gpu

    def _text(self, gpu: FakeGpu, text: str) -> str | bytes:
        return text.encode() if gpu.names_as_bytes else text

    # -- the pynvml API -------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error() if isinstance(self.init_error, type) else self.init_error
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        if not self.initialised:
            raise NVMLError_Uninitialized()
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialised:
            raise NVMLError_Uninitialized()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        if not self.initialised:
            raise NVMLError_Uninitialized()
        if not 0 <= int(index) < len(self.gpus):
            raise NVMLError_InvalidArgument()
        return FakeHandle(int(index), self.gpus[int(index)].generation)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeHandle:
        if not self.initialised:
            raise NVMLError_Uninitialized()
        wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, gpu in enumerate(self.gpus):
            if gpu.uuid == wanted:
                if gpu.lost:
                    raise NVMLError_GpuIsLost()
                return FakeHandle(i, gpu.generation)
        raise NVMLError_NotFound()

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceGetIndex", handle)
        return handle.index

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str | bytes:
        gpu = self._enter("nvmlDeviceGetName", handle)
        return self._text(gpu, gpu.name)

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str | bytes:
        gpu = self._enter("nvmlDeviceGetUUID", handle)
        return self._text(gpu, gpu.uuid)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        gpu = self._enter("nvmlDeviceGetTotalEnergyConsumption", handle)
        if not gpu.energy_counter:
            raise NVMLError_NotSupported()
        return int(self._value(gpu.energy_mj))

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        gpu = self._enter("nvmlDeviceGetPowerUsage", handle)
        return int(self._value(gpu.power_mw))

    def nvmlDeviceGetMigMode(self, device: FakeHandle) -> list[int]:
        gpu = self._enter("nvmlDeviceGetMigMode", device)
        if gpu.mig_mode is None:
            raise NVMLError_NotSupported()
        return [gpu.mig_mode, gpu.mig_mode]
