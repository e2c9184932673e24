"""NVIDIA dcgm-exporter's Prometheus page, read for the two families the energy needs, and the
choice of this pod's GPUs among its series. Pure: text in, values out; no I/O, no clock (the
source in `exporter.sources.dcgm` fetches the page and stamps the reading).

What the page holds, as dcgm-exporter renders it:

- one sample per monitored entity and family, labelled `gpu` (the node's NVML index), `UUID`
  (`uuid` under its `--use-old-namespace`), `pci_bus_id`, `device` (`nvidia<N>`), `modelName`,
  `Hostname` (`hostname` in newer releases), the label-type fields of its counters file such as
  `DCGM_FI_DRIVER_VERSION`, and, with its Kubernetes pod mapping on (`-k`), `pod`, `namespace`
  and `container` (`pod_name`, `pod_namespace`, `container_name` under the old namespace) on the
  series of GPUs that some pod holds;
- `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, a counter of millijoules since the driver was loaded,
  printed as an integer, and `DCGM_FI_DEV_POWER_USAGE`, watts;
- with MIG on, the monitored entities are the GPU instances: each has its own series, labelled
  with its parent's `gpu` and `UUID` plus `GPU_I_PROFILE` and `GPU_I_ID`, and with the pod that
  holds that instance. Power and energy are not measured per instance: every instance repeats its
  board's figures;
- a GPU also appears on several series when dcgm-exporter maps it to several pods (shared GPUs);
- older releases printed DCGM's blank sentinels (2^63 - 16 and up for integers, 2^47 and up for
  doubles) where a value was missing, instead of leaving the sample out.

So a GPU is keyed by its UUID, and its copies are merged into one `Board`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.attribution.readings import GpuIdentity
from exporter.sources import exposition
from exporter.sources.errors import SourceError
from exporter.sources.exposition import labels as parse_labels

ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # mJ since the driver was loaded
POWER = "DCGM_FI_DEV_POWER_USAGE"  # W
FAMILIES = (ENERGY, POWER)

# DCGM's blank sentinels: the first integer one is 0x7ffffffffffffff0 and the first double one 2^47;
# the others (not found, not supported, no permission) follow them.
INT64_BLANK = float(0x7FFFFFFFFFFFFFF0)
FP64_BLANK = 2.0**47

# Bounds on what a page may hold before it is refused as not a node's page. A node has a few
# dozen GPU instances at most; a shared GPU is repeated once per pod it is mapped to.
MAX_SAMPLES = 10_000  # per family

# Label names, the current one first.
_UUID_LABELS = ("UUID", "uuid")
_POD_LABELS = ("pod", "pod_name")
_NAMESPACE_LABELS = ("namespace", "pod_namespace")
_CONTAINER_LABELS = ("container", "container_name")


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of a wanted family. `value` None: blank, not finite or negative (unusable)."""

    family: str
    uuid: str
    index: int | None
    name: str
    value: float | None
    instance: str | None = None  # GPU_I_ID: a MIG instance of the board
    profile: str | None = None  # GPU_I_PROFILE, e.g. "1g.10gb"
    pod: str | None = None
    namespace: str | None = None
    container: str | None = None

    @property
    def owner(self) -> tuple[str, str] | None:
        """(namespace, pod) of the pod dcgm-exporter maps this series to; None when unmapped."""
        return (self.namespace, self.pod) if self.pod and self.namespace else None


@dataclass(frozen=True, slots=True)
class Board:
    """One physical GPU, its copies on the page merged (the largest energy is the latest sample
    of one counter; the copies of a board are otherwise equal)."""

    uuid: str
    index: int | None
    name: str
    energy_joules: float | None
    power_watts: float | None
    problem: str | None  # why energy_joules is None: "no_energy_sample" or "bad_value"


@dataclass(frozen=True, slots=True)
class Page:
    samples: tuple[Sample, ...]

    @property
    def pod_mapping(self) -> bool:
        """Whether any series carries a pod: dcgm-exporter maps GPUs to pods (and some pod holds one)."""
        return any(sample.owner for sample in self.samples)

    def boards(self) -> dict[str, Board]:
        grouped: dict[str, list[Sample]] = {}
        for sample in self.samples:
            grouped.setdefault(sample.uuid, []).append(sample)
        return {uuid: _merge(uuid, samples) for uuid, samples in grouped.items()}


def _merge(uuid: str, samples: list[Sample]) -> Board:
    first = samples[0]
    index = next((s.index for s in samples if s.index is not None), None)
    name = next((s.name for s in samples if s.name), first.name)
    energies = [s.value for s in samples if s.family == ENERGY]
    powers = [s.value for s in samples if s.family == POWER and s.value is not None]
    valid = [value for value in energies if value is not None]
    energy = max(valid) / 1000.0 if valid else None
    problem = None if valid else ("bad_value" if energies else "no_energy_sample")
    return Board(uuid, index, name, energy, max(powers) if powers else None, problem)


# -- parsing ------------------------------------------------------------------------------------


def _first(labels: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((labels[name] for name in names if labels.get(name)), None)


def _value(family: str, text: str) -> float | None:
    try:
        value = float(text.split()[0])
    except (ValueError, IndexError):
        return None
    blank = INT64_BLANK if family == ENERGY else FP64_BLANK
    if not math.isfinite(value) or value < 0 or value >= blank:
        return None
    return value


def parse(text: str) -> Page:
    """The samples of both families. SourceError("parse") when the page holds no energy sample
    at all (not dcgm-exporter's page, or its counters file leaves the family out), or more than
    a node's page could."""
    samples: list[Sample] = []
    for family in FAMILIES:
        count = 0
        for _, label_text, value_text in exposition.samples(text, (family,)):
            count += 1
            if count > MAX_SAMPLES:
                raise SourceError("parse", f"more than {MAX_SAMPLES} {family} samples: not one node's page")
            labels = parse_labels(label_text)
            uuid = _first(labels, _UUID_LABELS)
            if uuid is None:
                continue  # nothing to key it by
            gpu = labels.get("gpu", "")
            samples.append(
                Sample(
                    family=family,
                    uuid=uuid,
                    index=int(gpu) if gpu.isdigit() and len(gpu) < 6 else None,
                    name=labels.get("modelName") or labels.get("model_name") or "",
                    value=_value(family, value_text),
                    instance=labels.get("GPU_I_ID") or None,
                    profile=labels.get("GPU_I_PROFILE") or None,
                    pod=_first(labels, _POD_LABELS),
                    namespace=_first(labels, _NAMESPACE_LABELS),
                    container=_first(labels, _CONTAINER_LABELS),
                )
            )
    if not any(sample.family == ENERGY for sample in samples):
        raise SourceError(
            "parse",
            f"no {ENERGY} sample with a GPU UUID on the page: is the URL dcgm-exporter's metrics page, "
            "and does its counters file collect the family (its default one does)?",
        )
    return Page(tuple(samples))


# -- choosing this pod's GPUs -------------------------------------------------------------------


class SelectionError(Exception):
    """This pod's GPUs cannot be measured from the page. `transient`: dcgm-exporter's next
    collection may change the answer (a pod not mapped yet); `gpus`: identities found anyway."""

    def __init__(self, reason: str, message: str, *, transient: bool = False, gpus: Sequence[GpuIdentity] = ()):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient
        self.gpus = tuple(gpus)


@dataclass(frozen=True, slots=True)
class Selection:
    gpus: tuple[GpuIdentity, ...]
    by: str  # "uuid" (the gpus setting) or "pod" (dcgm-exporter's pod labels)
    mig: tuple[str, ...] = ()  # UUIDs of MIG boards whose every instance is this pod's
    shared: tuple[str, ...] = ()  # UUIDs dcgm-exporter maps to other pods as well


def _identity(board: Board, position: int) -> GpuIdentity:
    return GpuIdentity(board.index if board.index is not None else position, board.uuid, board.name or "unknown")


def select(page: Page, uuids: Sequence[str] = (), pod: str | None = None, namespace: str | None = None) -> Selection:
    """This pod's GPUs: the UUIDs when given, else the GPUs whose series carry this pod and
    namespace. Raises SelectionError when they cannot be told or measured."""
    boards = page.boards()
    owner = (namespace, pod) if pod and namespace else None
    if uuids:
        chosen, by = _by_uuid(boards, uuids), "uuid"
    elif owner is not None:
        chosen, by = _by_pod(page, boards, owner), "pod"
    else:
        raise SelectionError(
            "no_selection",
            "nothing says which of the node's GPUs are this pod's: set dcgm_pod and dcgm_namespace "
            "(from the downward API) or name the GPUs by UUID with the gpus setting",
        )
    gpus = tuple(_identity(board, i) for i, board in enumerate(chosen))
    mig = _check_mig(page, chosen, owner if page.pod_mapping else None, gpus)
    for board in chosen:
        if board.energy_joules is None:
            raise SelectionError(
                "no_energy_counter",
                f"GPU {board.index} ({board.uuid}) has no usable {ENERGY} sample ({board.problem}): GPUs "
                "before Volta have no energy counter, and dcgm-exporter's counters file must collect it",
                transient=board.problem == "no_energy_sample",
                gpus=gpus,
            )
    shared = tuple(
        board.uuid
        for board in chosen
        if owner is not None and board.uuid not in mig and _owners(page, board.uuid) - {owner, None}
    )
    return Selection(gpus, by, mig, shared)


def _by_uuid(boards: dict[str, Board], uuids: Sequence[str]) -> list[Board]:
    indices = [item for item in uuids if item.isdigit()]
    if indices:
        raise SelectionError(
            "gpu_index",
            f"the gpus setting lists GPU indices ({', '.join(indices)}); dcgm-exporter numbers the node's GPUs, "
            "not this container's: name them by GPU- UUID",
        )
    slices = [item for item in uuids if item.upper().startswith("MIG-")]
    if slices:
        raise SelectionError(
            "mig",
            f"{', '.join(slices)} is a MIG device, which dcgm-exporter labels with its board's UUID only; "
            "name the board's GPU- UUID, or set dcgm_pod and dcgm_namespace",
        )
    missing = [uuid for uuid in uuids if uuid not in boards]
    if missing:
        shown = ", ".join(sorted(boards)[:8]) + (", ..." if len(boards) > 8 else "")
        raise SelectionError(
            "gpu_not_found", f"{', '.join(missing)} not on dcgm-exporter's page (it shows {shown or 'no GPU'})"
        )
    return [boards[uuid] for uuid in dict.fromkeys(uuids)]


def _by_pod(page: Page, boards: dict[str, Board], owner: tuple[str, str]) -> list[Board]:
    namespace, pod = owner
    if not page.pod_mapping:
        raise SelectionError(
            "no_pod_labels",
            "dcgm-exporter's page carries no pod labels: its Kubernetes pod mapping is off (-k, "
            "DCGM_EXPORTER_KUBERNETES) or maps no GPU yet; turn it on, or name this pod's GPUs by UUID "
            "with the gpus setting",
            transient=True,
        )
    ours = {sample.uuid for sample in page.samples if sample.owner == owner}
    if not ours:
        others = {sample.owner for sample in page.samples if sample.owner}
        raise SelectionError(
            "pod_not_found",
            f"dcgm-exporter maps no GPU to pod {namespace}/{pod} (it maps {len(others)} other pods'); check "
            "dcgm_pod and dcgm_namespace",
            transient=True,
        )
    return sorted((boards[uuid] for uuid in ours), key=lambda b: (b.index is None, b.index or 0, b.uuid))


def _owners(page: Page, uuid: str) -> set[tuple[str, str] | None]:
    return {sample.owner for sample in page.samples if sample.uuid == uuid}


def _ordered(ids: set[str]) -> list[str]:
    return sorted(ids, key=lambda i: (len(i), i))  # "2" before "10"


def _check_mig(
    page: Page, chosen: list[Board], owner: tuple[str, str] | None, gpus: tuple[GpuIdentity, ...]
) -> tuple[str, ...]:
    """The MIG boards measured whole. A MIG instance's energy cannot be measured: every instance
    repeats its board's. Counting the board for one instance would charge this pod for its
    neighbours' work (up to seven times its own), and splitting it by slice size would be a model
    presented as a measurement. So the board is measured only when every instance on it is this
    pod's (the pod holds the whole GPU, e.g. a single 7g instance); otherwise opening fails and
    `auto` falls back to the phase model, as it does when NVML meets a MIG GPU."""
    whole = []
    for board in chosen:
        instances = [s for s in page.samples if s.uuid == board.uuid and s.instance is not None]
        if not instances:
            continue
        ids = _ordered({s.instance for s in instances if s.instance is not None})
        if owner is not None:
            foreign = _ordered({s.instance for s in instances if s.owner != owner and s.instance is not None})
        else:
            foreign = ids[1:]  # without pod labels, only a board with one instance is known to be whole
        if foreign:
            raise SelectionError(
                "mig",
                f"GPU {board.index} ({board.uuid}) is split into MIG instances {', '.join(ids)} and "
                f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not known to be this pod's; "
                "dcgm-exporter repeats the board's energy on each instance, so it would include the others' work",
                gpus=gpus,
            )
        whole.append(board.uuid)
    return tuple(whole)
