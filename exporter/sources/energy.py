"""Choose the energy source once at start-up: NVML when it can measure the selected GPUs, else
(in `auto`) the declared phase model, and the GPU table entry that seeds the estimates."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.config import EnergySource, Settings
from exporter.gpu_table import GPU_TABLE, GpuSpec, lookup
from exporter.sources.gpu_discovery import GpuSelection, ProcTree, resolve_gpu_selection
from exporter.sources.phase_model import PhaseModelEnergySource

DEFAULT_GPU = "H100"
MODE_NVML = "nvml"
MODE_PHASE_MODEL = "phase-model"


class EnergySourceError(Exception):
    """The configured energy source cannot be used; the message names the setting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EnergySetup:
    source: Any  # NvmlEnergySource or PhaseModelEnergySource: read() -> EnergySnapshot, close()
    mode: str  # "nvml" or "phase-model"
    gpu_spec: GpuSpec
    gpu_count: int
    fallback_reason: str | None  # why something less than measured-and-identified is in use
    gpu_selection: GpuSelection | None = None  # which GPUs, and how they were chosen


def open_energy_source(
    settings: Settings,
    pynvml_module: Any | None = None,
    clock: Callable[[], float] = time.monotonic,
    log: Any | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    proc: ProcTree | None = None,
) -> EnergySetup:
    """`pynvml_module` None: import pynvml, but only when NVML is to be tried at all.
    `environ` (default os.environ) and `proc` (default /proc) feed the GPU discovery."""
    environ = os.environ if environ is None else environ
    wanted = EnergySource(settings.energy_source)
    if wanted is EnergySource.PHASE_MODEL:
        selection = _select(settings, environ, proc, lambda: None, log)
        return _phase_model(settings, clock, gpus=None, reasons=[], log=log, selection=selection)

    from exporter.sources.nvml import NvmlUnavailable

    selection = None
    try:
        module = _import_pynvml(pynvml_module)
        selection = _select(settings, environ, proc, lambda: _visible_count(module), log)
        source = _open_nvml(settings, module, clock, selection)
    except NvmlUnavailable as err:
        if wanted is EnergySource.NVML:
            raise EnergySourceError(
                err.reason,
                f"setting energy_source=nvml, but {err}; set energy_source to auto or phase-model "
                "to run on declared phase power instead",
            ) from err
        # The caller logs the fallback once, from fallback_reason; logging here would double it.
        reason = f"{err}; using the declared phase model"
        if selection is None:  # pynvml could not be imported: the exporter sees no GPU
            selection = _select(settings, environ, proc, lambda: None, log)
        return _phase_model(settings, clock, gpus=err.gpus or None, reasons=[reason], log=log, selection=selection)

    names = [name for _, _, name in source.gpus]
    spec, spec_reason = _spec(settings, names[0] if names else None)
    setup = EnergySetup(source, MODE_NVML, spec, len(names), spec_reason, selection)
    if log is not None:
        log.info(
            "energy_source_opened",
            mode=MODE_NVML,
            gpus=[f"{i}:{uuid}" for i, uuid, _ in source.gpus],
            methods=sorted(set(source.methods.values())),
            gpu_spec=spec.key,
            fallback_reason=spec_reason,
            gpu_selection=selection.origin,
            gpu_selection_detail=selection.detail,
        )
    return setup


def _select(
    settings: Settings,
    environ: Mapping[str, str],
    proc: ProcTree | None,
    visible_count: Callable[[], int | None],
    log: Any | None,
) -> GpuSelection:
    selection = resolve_gpu_selection(settings.gpus, environ, visible_count, proc)
    if selection.warning and log is not None:
        log.warning("gpu_selection_uncertain", origin=selection.origin, reason=selection.warning)
    return selection


def _import_pynvml(pynvml_module: Any | None) -> Any:
    if pynvml_module is not None:
        return pynvml_module
    from exporter.sources.nvml import NvmlUnavailable

    try:
        import pynvml  # deferred: the phase model must run without it
    except ImportError as err:
        raise NvmlUnavailable("pynvml_missing", f"cannot import pynvml (nvidia-ml-py): {err}") from err
    return pynvml


def _visible_count(nvml: Any) -> int | None:
    """GPUs NVML shows this process; None where NVML cannot start (then nothing is visible)."""
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _open_nvml(settings: Settings, pynvml_module: Any, clock: Callable[[], float], selection: GpuSelection) -> Any:
    from exporter.sources.nvml import NvmlEnergySource

    return NvmlEnergySource(pynvml_module, selection.gpus, settings.power_sample_hz, clock)


def _spec(settings: Settings, nvml_name: str | None) -> tuple[GpuSpec, str | None]:
    if settings.gpu_type is not None:
        spec = lookup(settings.gpu_type)
        if spec is not None:
            return spec, None
    if nvml_name is not None:
        spec = lookup(nvml_name)
        if spec is not None:
            return spec, None
        return GPU_TABLE[DEFAULT_GPU], (
            f"GPU {nvml_name!r} is not in the GPU table; assuming {DEFAULT_GPU} figures (set gpu_type)"
        )
    return GPU_TABLE[DEFAULT_GPU], f"gpu_type is not set; assuming {DEFAULT_GPU} figures"


def _declared_gpus(settings: Settings, spec: GpuSpec, selection: tuple[str, ...] | None) -> list[tuple[int, str, str]]:
    name = f"{spec.key} (declared)"
    if selection:
        # An index names the GPU; a UUID is kept as its identity, numbered by position.
        return [
            (int(item), "unknown", name) if item.isdigit() else (position, item, name)
            for position, item in enumerate(selection)
        ]
    return [(i, "unknown", name) for i in range(settings.gpu_count or 1)]


def _phase_model(
    settings: Settings,
    clock: Callable[[], float],
    gpus: Sequence[tuple[int, str, str]] | None,
    reasons: list[str],
    log: Any | None,
    selection: GpuSelection,
) -> EnergySetup:
    spec, spec_reason = _spec(settings, gpus[0][2] if gpus else None)
    if spec_reason:
        reasons = [*reasons, spec_reason]
    identities = list(gpus) if gpus else _declared_gpus(settings, spec, selection.gpus)
    source = PhaseModelEnergySource(identities, clock)
    if log is not None:
        log.info(
            "energy_source_opened",
            mode=MODE_PHASE_MODEL,
            gpus=len(identities),
            gpu_spec=spec.key,
            gpu_selection=selection.origin,
            gpu_selection_detail=selection.detail,
        )
    return EnergySetup(source, MODE_PHASE_MODEL, spec, len(identities), "; ".join(reasons) or None, selection)
