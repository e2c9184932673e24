"""Choose the energy source once at start-up: NVML when it can measure the selected GPUs, else
(in `auto`) the node's dcgm-exporter when its URL is set, else the declared phase model; and the
GPU table entry that seeds the estimates."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from types import ModuleType
from typing import Any, Protocol, cast

import httpx
from structlog.typing import FilteringBoundLogger

from exporter.attribution.gpu_table import GPU_TABLE, GpuSpec, UnknownFigures, lookup, lookup_datasheet
from exporter.attribution.readings import EnergySnapshot, GpuIdentity
from exporter.sources.dcgm import DEFAULT_OPEN_WAIT, FIDELITY, DcgmEnergySource, DcgmUnavailable
from exporter.sources.gpu_discovery import (
    ORIGIN_FLAG,
    GpuSelection,
    ProcTree,
    parse_gpu_list,
    resolve_gpu_selection,
)
from exporter.sources.nvml import NvmlEnergySource, NvmlUnavailable
from exporter.sources.phase_model import PhaseModelEnergySource

DEFAULT_GPU = "H100"
ORIGIN_DCGM_POD = "dcgm-pod"  # the GPUs dcgm-exporter's pod labels give this pod


class EnergyMode(StrEnum):
    # The vLLM plugin's NVML readings wherever they arrive (app.py); when none do: NVML here,
    # else DCGM where its URL is set, else the phase model.
    AUTO = "auto"
    PLUGIN = "plugin"  # only the vLLM plugin's readings; the energy read fails while it has none
    NVML = "nvml"  # fail if NVML cannot be read
    DCGM = "dcgm"  # the node's dcgm-exporter; fail if it cannot measure this pod's GPUs
    PHASE_MODEL = "phase-model"  # never touch NVML


class EnergySource(Protocol):
    """What the loop reads energy from: NVML, the phase model, or a simulator."""

    @property
    def gpus(self) -> Sequence[GpuIdentity]: ...

    def read(self) -> EnergySnapshot: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EnergyOptions:
    """The settings the choice depends on, as plain values (named as the settings are)."""

    energy_source: EnergyMode = EnergyMode.AUTO
    gpus: str | None = None  # comma-separated indices or UUIDs, already validated
    gpu_type: str | None = None
    gpu_count: int | None = None  # for the phase model when no GPU is named
    idle_watts: float | None = None  # per GPU: completes a GPU known only by its datasheet
    decode_watts: float | None = None
    power_sample_hz: float = 20.0
    dcgm_url: str | None = None  # dcgm-exporter's metrics page; None: DCGM is never tried
    dcgm_pod: str | None = None  # this pod as dcgm-exporter's pod labels name it
    dcgm_namespace: str | None = None
    dcgm_timeout: float = 2.0  # seconds for one read of the page
    dcgm_open_wait: float = DEFAULT_OPEN_WAIT  # seconds to wait at start-up for this pod's GPUs on the page
    nvml_timeout: float = 1.0  # seconds a tick waits for NVML before the read counts as a timeout


class EnergySourceError(Exception):
    """The configured energy source cannot be used; the message names the setting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EnergySetup:
    source: EnergySource
    mode: str  # "nvml", "dcgm" or "phase-model" (a simulator names itself)
    gpu_spec: GpuSpec
    gpu_count: int
    fallback_reason: str | None  # why something less than measured-and-identified is in use
    gpu_selection: GpuSelection | None = None  # which GPUs, and how they were chosen


def open_energy_source(
    options: EnergyOptions,
    pynvml_module: ModuleType | None = None,
    clock: Callable[[], float] = time.monotonic,
    log: FilteringBoundLogger | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    proc: ProcTree | None = None,
    dcgm_transport: httpx.BaseTransport | None = None,
) -> EnergySetup:
    """`pynvml_module` None: import pynvml, but only when NVML is to be tried at all.
    `environ` (default os.environ) and `proc` (default /proc) feed the GPU discovery;
    `dcgm_transport` (default: the network) carries the requests to dcgm-exporter."""
    environ = os.environ if environ is None else environ
    wanted = EnergyMode(options.energy_source)
    if wanted in (EnergyMode.PHASE_MODEL, EnergyMode.PLUGIN):
        # The plugin's GPUs are known only once it publishes: until then, the declared ones size the prior.
        declared = _select(options, environ, proc, lambda: None, log)
        setup = _phase_model(options, clock, gpus=None, reasons=[], log=log, selection=declared)
        return setup if wanted is EnergyMode.PHASE_MODEL else replace(setup, mode=EnergyMode.PLUGIN)
    if wanted is EnergyMode.DCGM:
        if not options.dcgm_url:
            raise EnergySourceError(
                "dcgm_url_unset",
                "setting energy_source=dcgm needs the setting dcgm_url: the node's dcgm-exporter metrics page, "
                "e.g. http://<node IP>:9400/metrics",
            )
        try:
            return _dcgm_setup(options, clock, log, dcgm_transport, reasons=[])
        except DcgmUnavailable as err:
            raise EnergySourceError(
                err.reason,
                f"setting energy_source=dcgm, but {err}; set energy_source to auto or phase-model "
                "to run on declared phase power instead",
            ) from err

    selection: GpuSelection | None = None
    try:
        module = _import_pynvml(pynvml_module)
        selection = _select(options, environ, proc, lambda: _visible_count(module), log)
        source = NvmlEnergySource(
            module, selection.gpus, options.power_sample_hz, clock, read_timeout=options.nvml_timeout
        )
    except NvmlUnavailable as err:
        if wanted is EnergyMode.NVML:
            raise EnergySourceError(
                err.reason,
                f"setting energy_source=nvml, but {err}; set energy_source to auto or phase-model "
                "to run on declared phase power instead",
            ) from err
        # The caller logs the fallback once, from fallback_reason; logging here would double it.
        gpus = err.gpus
        if not options.dcgm_url:
            reasons = [f"{err}; DCGM not tried (dcgm_url is not set); using the declared phase model"]
        else:
            try:
                return _dcgm_setup(options, clock, log, dcgm_transport, reasons=[f"{err}; using DCGM"])
            except DcgmUnavailable as dcgm_err:
                reasons = [f"{err}; {dcgm_err}; using the declared phase model"]
                gpus = dcgm_err.gpus or gpus
        if selection is None:  # pynvml could not be imported: the exporter sees no GPU
            selection = _select(options, environ, proc, lambda: None, log)
        return _phase_model(options, clock, gpus=gpus or None, reasons=reasons, log=log, selection=selection)
    return _nvml_setup(options, source, selection, log)


def _dcgm_setup(
    options: EnergyOptions,
    clock: Callable[[], float],
    log: FilteringBoundLogger | None,
    transport: httpx.BaseTransport | None,
    reasons: list[str],
) -> EnergySetup:
    """Raises DcgmUnavailable; `reasons` says why the sources tried before were not used."""
    assert options.dcgm_url is not None
    items = parse_gpu_list(options.gpus) if options.gpus else ()
    by_pod = bool(options.dcgm_pod and options.dcgm_namespace)
    # Indices are NVML's numbering of what this container sees, not the node's: where pod labels
    # can choose, they are left to NVML; alone, the source refuses them with the reason.
    uuids = () if by_pod and any(item.isdigit() for item in items) else items
    source = DcgmEnergySource(
        options.dcgm_url,
        uuids,
        options.dcgm_pod,
        options.dcgm_namespace,
        timeout=options.dcgm_timeout,
        clock=clock,
        transport=transport,
        open_wait=options.dcgm_open_wait,
        log=log,
    )
    chosen = source.selection
    names = [gpu.name for gpu in source.gpus]
    spec, spec_reason = _spec(options, names[0] if names else None)
    if spec_reason:
        reasons = [*reasons, spec_reason]
    if chosen.by == "uuid":
        selection = GpuSelection(uuids, ORIGIN_FLAG, "gpus")
    else:
        detail = f"dcgm-exporter's pod labels: {options.dcgm_namespace}/{options.dcgm_pod}"
        selection = GpuSelection(tuple(gpu.uuid for gpu in source.gpus), ORIGIN_DCGM_POD, detail)
    if log is not None:
        log.info(
            "energy_source_opened",
            mode=EnergyMode.DCGM,
            url=source.url,
            gpus=[f"{gpu.index}:{gpu.uuid}" for gpu in source.gpus],
            gpu_spec=spec.key,
            fallback_reason="; ".join(reasons) or None,
            gpu_selection=selection.origin,
            gpu_selection_detail=selection.detail,
            fidelity=FIDELITY,
        )
        if chosen.mig:
            # Measured, and correct: every instance on these boards is this pod's (see dcgm_page).
            log.info("dcgm_mig_whole_gpu", gpus=list(chosen.mig), detail="every MIG instance is this pod's")
        if chosen.shared:
            log.warning(
                "dcgm_gpu_shared",
                gpus=list(chosen.shared),
                effect="dcgm-exporter maps these GPUs to other pods too: their energy includes the other pods' work",
            )
    return EnergySetup(source, EnergyMode.DCGM, spec, len(names), "; ".join(reasons) or None, selection)


def _nvml_setup(
    options: EnergyOptions, source: NvmlEnergySource, selection: GpuSelection, log: FilteringBoundLogger | None
) -> EnergySetup:
    names = [gpu.name for gpu in source.gpus]
    spec, spec_reason = _spec(options, names[0] if names else None)
    if log is not None:
        log.info(
            "energy_source_opened",
            mode=EnergyMode.NVML,
            gpus=[f"{gpu.index}:{gpu.uuid}" for gpu in source.gpus],
            methods=sorted(set(source.methods.values())),
            gpu_spec=spec.key,
            fallback_reason=spec_reason,
            gpu_selection=selection.origin,
            gpu_selection_detail=selection.detail,
        )
    return EnergySetup(source, EnergyMode.NVML, spec, len(names), spec_reason, selection)


def _select(
    options: EnergyOptions,
    environ: Mapping[str, str],
    proc: ProcTree | None,
    visible_count: Callable[[], int | None],
    log: FilteringBoundLogger | None,
) -> GpuSelection:
    selection = resolve_gpu_selection(options.gpus, environ, visible_count, proc)
    if selection.warning and log is not None:
        log.warning("gpu_selection_uncertain", origin=selection.origin, reason=selection.warning)
    return selection


def _import_pynvml(pynvml_module: ModuleType | None) -> ModuleType:
    if pynvml_module is not None:
        return pynvml_module
    try:
        import pynvml  # deferred: the phase model must run without it
    except ImportError as err:
        raise NvmlUnavailable("pynvml_missing", f"cannot import pynvml (nvidia-ml-py): {err}") from err
    return cast(ModuleType, pynvml)


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


def _spec(options: EnergyOptions, nvml_name: str | None) -> tuple[GpuSpec, str | None]:
    """The GPU's figures: the setting's, else NVML's name's; a GPU known only by its datasheet is
    completed with the declared idle and decode power, or falls back to the default, loudly."""
    for name in (options.gpu_type, nvml_name):
        if name is None:
            continue
        spec = lookup(name)
        if spec is not None:
            return spec, None
        sheet = lookup_datasheet(name)
        if sheet is not None:
            try:
                return sheet.complete(options.idle_watts, options.decode_watts), None
            except UnknownFigures as err:
                assumed = sheet.family or DEFAULT_GPU  # a PCIe card's SXM sibling is the closest guess
                return GPU_TABLE[assumed], f"{err} (assuming {assumed} figures meanwhile)"
    if nvml_name is not None:
        return GPU_TABLE[DEFAULT_GPU], (
            f"GPU {nvml_name!r} is not in the GPU table; assuming {DEFAULT_GPU} figures (set gpu_type)"
        )
    return GPU_TABLE[DEFAULT_GPU], f"gpu_type is not set; assuming {DEFAULT_GPU} figures"


def _declared_gpus(options: EnergyOptions, spec: GpuSpec, selection: tuple[str, ...] | None) -> list[GpuIdentity]:
    name = f"{spec.key} (declared)"
    if selection:
        # An index names the GPU; a UUID is kept as its identity, numbered by position.
        return [
            GpuIdentity(int(item), "unknown", name) if item.isdigit() else GpuIdentity(position, item, name)
            for position, item in enumerate(selection)
        ]
    return [GpuIdentity(i, "unknown", name) for i in range(options.gpu_count or 1)]


def _phase_model(
    options: EnergyOptions,
    clock: Callable[[], float],
    gpus: Sequence[GpuIdentity] | None,
    reasons: list[str],
    log: FilteringBoundLogger | None,
    selection: GpuSelection,
) -> EnergySetup:
    spec, spec_reason = _spec(options, gpus[0].name if gpus else None)
    if spec_reason:
        reasons = [*reasons, spec_reason]
    identities = list(gpus) if gpus else _declared_gpus(options, spec, selection.gpus)
    source = PhaseModelEnergySource(identities, clock)
    if log is not None:
        log.info(
            "energy_source_opened",
            mode=EnergyMode.PHASE_MODEL,
            gpus=len(identities),
            gpu_spec=spec.key,
            gpu_selection=selection.origin,
            gpu_selection_detail=selection.detail,
        )
    return EnergySetup(source, EnergyMode.PHASE_MODEL, spec, len(identities), "; ".join(reasons) or None, selection)
