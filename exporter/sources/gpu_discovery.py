"""Which GPUs belong to the vLLM server, found without privilege.

The exporter runs as a sidecar that does not request GPUs of its own: it sees them because its
container sets `NVIDIA_VISIBLE_DEVICES` (the vLLM container's value, or `all`). It must then
measure exactly the GPUs the vLLM container was given. The order, first answer wins:

1. `--gpus` / `TOKEN_ECONOMY_GPUS`.
2. The exporter's own `CUDA_VISIBLE_DEVICES`, a choice made for this process.
3. Discovery, when the exporter's own `NVIDIA_VISIBLE_DEVICES` is set (`all` or a list), i.e. it
   runs in a GPU container whose GPUs the runtime chose: with `shareProcessNamespace: true` the
   vLLM container's processes appear under /proc; the exporter reads `NVIDIA_VISIBLE_DEVICES` and
   `CUDA_VISIBLE_DEVICES` from /proc/<pid>/environ of the process whose command line is vLLM's,
   and uses them only when the exporter sees more GPUs than that. Reading another process's
   environment needs the same UID (or CAP_SYS_PTRACE): run the exporter as vLLM's user.
4. The exporter's own `NVIDIA_VISIBLE_DEVICES` list.
5. Every GPU the exporter sees; with a warning when discovery ran and could not tell.

No privileged mode, no hostPID, no kubelet socket. /proc is read through `ProcTree`, whose root
tests point at fake trees.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ORIGIN_FLAG = "flag"
ORIGIN_ENVIRONMENT = "environment"
ORIGIN_VLLM_PROCESS = "vllm-process"
ORIGIN_ALL_VISIBLE = "all-visible"

NVIDIA_VAR = "NVIDIA_VISIBLE_DEVICES"
CUDA_VAR = "CUDA_VISIBLE_DEVICES"
_UUID = re.compile(r"(GPU|MIG)-[0-9A-Za-z/-]+")
_ENVIRON_MAX_BYTES = 1 << 20


def parse_gpu_list(value: str) -> tuple[str, ...]:
    """ "0,GPU-…" as a tuple of indices and UUIDs; ValueError names the item that is neither."""
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise ValueError("must list at least one GPU index or UUID")
    for item in items:
        if not (item.isdigit() or _UUID.fullmatch(item)):
            raise ValueError(f"{item!r} is neither a GPU index nor a GPU-/MIG- UUID")
    return items


@dataclass(frozen=True, slots=True)
class GpuSelection:
    gpus: tuple[str, ...] | None  # indices or UUIDs; None: every GPU the exporter sees
    origin: str  # ORIGIN_*
    detail: str  # where the answer came from, for the log
    warning: str | None = None  # set when the answer may include GPUs vLLM does not use


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VllmGpus:
    """What the vLLM process's environment says about its GPUs."""

    gpus: tuple[str, ...] | None  # None: nothing usable (see problem)
    detail: str
    problem: str | None = None  # why gpus is None
    warning: str | None = None  # gpus is usable but may be a superset

    @property
    def by_index(self) -> bool:
        return any(item.isdigit() for item in self.gpus or ())


class ProcTree:
    """A read-only view of a /proc tree. `root` is injectable so tests can build fake trees."""

    def __init__(self, root: str | Path = "/proc") -> None:
        self.root = Path(root)

    def pids(self) -> list[int]:
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return sorted(int(name) for name in names if name.isdigit())

    def process(self, pid: int) -> ProcessInfo | None:
        """None when the process has gone or cannot be read (cmdline and stat are world-readable
        unless /proc is mounted with hidepid)."""
        try:
            raw = (self.root / str(pid) / "cmdline").read_bytes()
            stat = (self.root / str(pid) / "stat").read_text(errors="replace")
        except OSError:
            return None
        argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        if not argv:
            return None  # a kernel thread or a zombie
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 1 :].split()
        try:
            ppid = int(fields[1])
        except (IndexError, ValueError):
            ppid = 0
        return ProcessInfo(pid, ppid, argv)

    def environ(self, pid: int) -> dict[str, str]:
        """Raises PermissionError unless we are the process's user (or hold CAP_SYS_PTRACE)."""
        with open(self.root / str(pid) / "environ", "rb") as handle:
            raw = handle.read(_ENVIRON_MAX_BYTES)
        env = {}
        for entry in raw.split(b"\0"):
            key, sep, value = entry.decode(errors="replace").partition("=")
            if sep and key:
                env[key] = value
        return env

    def uid(self, pid: int) -> int | None:
        try:
            for line in (self.root / str(pid) / "status").read_text(errors="replace").splitlines():
                if line.startswith("Uid:"):
                    return int(line.split()[1])
        except (OSError, IndexError, ValueError):
            pass
        return None

    def list_in_root(self, pid: int, path: str) -> list[str]:
        """Entries of a directory inside the process's own filesystem (its container's)."""
        return os.listdir(self.root / str(pid) / "root" / path.lstrip("/"))


def looks_like_vllm(argv: Sequence[str]) -> bool:
    """The vLLM CLI (`vllm serve`), `python -m vllm.entrypoints...`, a script inside the vllm
    package, a shell running one of these (`sh -c "vllm serve ..."`), or a process that renamed
    itself `VLLM::EngineCore` / `VLLM::Worker...`. Flags such as `--vllm-url` do not count."""
    for arg in argv:
        for token in arg.split():
            if token.upper().startswith("VLLM::"):
                return True
            if os.path.basename(token) == "vllm" or token == "vllm" or token.startswith("vllm."):
                return True
            if "/vllm/" in token and token.endswith(".py"):
                return True
    return False


def _parse(value: str | None, *, cuda: bool) -> tuple[str, tuple[str, ...]]:
    """(kind, items): kind is unset, all, none, path, list or invalid."""
    if value is None:
        return "unset", ()
    text = value.strip()
    if text == "":
        # CUDA: an empty list hides every GPU. NVIDIA: the runtime injects none.
        return ("none" if cuda else "unset"), ()
    lowered = text.lower()
    if lowered == "all":
        return "all", ()
    if lowered in ("none", "void") or (cuda and text == "-1"):
        return "none", ()
    if not cuda and text.startswith("/"):
        return "path", (text,)
    try:
        return "list", parse_gpu_list(text)
    except ValueError:
        return "invalid", ()


def _describe(var: str, value: str | None) -> str:
    return f"{var}={value}" if value is not None else f"{var} unset"


def vllm_gpus_from_environment(env: Mapping[str, str], list_dir: Callable[[str], list[str]]) -> VllmGpus:
    """The GPUs a process with this environment uses. `list_dir` lists a directory in the
    process's filesystem (for the device plugin's volume-mounts strategy)."""
    n_raw, c_raw = env.get(NVIDIA_VAR), env.get(CUDA_VAR)
    n_kind, n_items = _parse(n_raw, cuda=False)
    c_kind, c_items = _parse(c_raw, cuda=True)
    described = f"{_describe(NVIDIA_VAR, n_raw)}, {_describe(CUDA_VAR, c_raw)}"

    if n_kind == "path":
        try:
            entries = sorted(name for name in list_dir(n_items[0]) if _UUID.fullmatch(name) or name.isdigit())
        except PermissionError:
            return VllmGpus(None, described, f"cannot list {n_items[0]} in the vLLM container: permission denied")
        except OSError as err:
            return VllmGpus(None, described, f"cannot list {n_items[0]} in the vLLM container: {err.strerror or err}")
        n_kind, n_items = ("list", tuple(entries)) if entries else ("none", ())
        described = f"{NVIDIA_VAR}={n_raw} (holding {','.join(entries) or 'nothing'}), {_describe(CUDA_VAR, c_raw)}"

    if c_kind == "list" and all(_UUID.fullmatch(item) for item in c_items):
        return VllmGpus(c_items, described)
    if c_kind == "none":
        return VllmGpus(None, described, "vLLM's CUDA_VISIBLE_DEVICES hides every GPU")
    if n_kind == "none":
        return VllmGpus(
            None,
            described,
            "vLLM's NVIDIA_VISIBLE_DEVICES gives it no GPU (none, void: devices injected another way, e.g. CDI)",
        )
    if "invalid" in (n_kind, c_kind) or (c_kind == "list" and not all(item.isdigit() for item in c_items)):
        return VllmGpus(None, described, "vLLM's GPU variables cannot be parsed")
    if n_kind == "list":
        if c_kind == "list":
            positions = sorted({int(item) for item in c_items})
            if positions != list(range(len(n_items))):
                # CUDA numbers the container's GPUs in its own order (CUDA_DEVICE_ORDER), which
                # cannot be mapped onto NVIDIA_VISIBLE_DEVICES' list without CUDA: measure the
                # container's GPUs, a superset, and say so.
                return VllmGpus(
                    n_items,
                    described,
                    warning=(
                        "vLLM's CUDA_VISIBLE_DEVICES picks some of its container's GPUs by CUDA index, which "
                        "cannot be mapped to GPUs without CUDA; measuring every GPU of its NVIDIA_VISIBLE_DEVICES "
                        "(set --gpus to the GPUs it uses)"
                    ),
                )
        return VllmGpus(n_items, described)
    # NVIDIA_VISIBLE_DEVICES is all or unset: only CUDA indices narrow, read as NVML indices.
    if c_kind == "list":
        return VllmGpus(c_items, described)
    return VllmGpus(None, described, f"vLLM's environment does not narrow its GPUs ({described})")


_Answers = dict[tuple[str, ...] | None, list[tuple[ProcessInfo, VllmGpus]]]


def find_vllm_gpus(proc: ProcTree, self_pid: int) -> VllmGpus:
    """The GPUs of the one vLLM server visible in `proc`, or the reason there is no answer."""
    candidates = [
        info
        for pid in proc.pids()
        if pid != self_pid
        for info in [proc.process(pid)]
        if info is not None and looks_like_vllm(info.argv)
    ]
    if not candidates:
        return VllmGpus(None, "", "no vLLM process is visible (the pod needs shareProcessNamespace: true)")
    # vLLM's engine and worker processes inherit the server's environment (and workers may
    # narrow CUDA_VISIBLE_DEVICES to one GPU each): ask the root of each vLLM process tree.
    pids = {info.pid for info in candidates}
    answers, denied = _ask_roots(proc, [info for info in candidates if info.ppid not in pids])
    return _one_answer(answers) or _why_none(proc, answers, denied)


def _ask_roots(proc: ProcTree, roots: list[ProcessInfo]) -> tuple[_Answers, list[ProcessInfo]]:
    """What each root's environment says, grouped by the GPUs it names; and whom we may not ask."""
    answers: _Answers = {}
    denied: list[ProcessInfo] = []
    for info in roots:
        try:
            env = proc.environ(info.pid)
        except PermissionError:
            denied.append(info)
            continue
        except OSError:
            continue  # it exited meanwhile
        if not env:
            continue
        found = vllm_gpus_from_environment(env, functools.partial(proc.list_in_root, info.pid))
        answers.setdefault(found.gpus, []).append((info, found))
    return answers, denied


def _one_answer(answers: _Answers) -> VllmGpus | None:
    """The GPUs when the servers that name any agree; why not when they disagree; None if none names any."""
    named = {gpus: found for gpus, found in answers.items() if gpus}
    if len(named) == 1:
        (info, found), *_ = next(iter(named.values()))
        detail = f"{found.detail} of pid {info.pid} ({_command(info.argv)})"
        return VllmGpus(found.gpus, detail, warning=found.warning)
    if len(named) > 1:
        listed = "; ".join(f"pid {hits[0][0].pid} uses {','.join(gpus)}" for gpus, hits in named.items())
        return VllmGpus(None, "", f"several vLLM servers with different GPUs are visible ({listed}); set --gpus")
    return None


def _why_none(proc: ProcTree, answers: _Answers, denied: list[ProcessInfo]) -> VllmGpus:
    if answers:
        info, found = next(iter(answers.values()))[0]
        return VllmGpus(None, "", f"{found.problem} (pid {info.pid}, {_command(info.argv)})")
    if denied:
        info = denied[0]
        uid = proc.uid(info.pid)
        owner = f"uid {uid}" if uid is not None else "another user"
        return VllmGpus(
            None,
            "",
            (
                f"cannot read /proc/{info.pid}/environ of vLLM ({_command(info.argv)}, {owner}; this exporter runs as "
                f"uid {os.geteuid()}): permission denied. Run the exporter with vLLM's UID (runAsUser); reading "
                "another user's process environment needs CAP_SYS_PTRACE"
            ),
        )
    return VllmGpus(None, "", "the vLLM processes exited or have an empty environment")


def _command(argv: Sequence[str], limit: int = 80) -> str:
    text = " ".join(argv)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resolve_gpu_selection(
    explicit: str | None,
    environ: Mapping[str, str],
    visible_count: Callable[[], int | None],
    proc: ProcTree | None = None,
    self_pid: int | None = None,
) -> GpuSelection:
    """Apply the order in the module docstring. `visible_count` gives the number of GPUs the
    exporter sees (NVML), or None where it sees none (no driver, the phase model); it is only
    called when the answer depends on it."""
    if explicit is not None:
        return GpuSelection(parse_gpu_list(explicit), ORIGIN_FLAG, "--gpus / TOKEN_ECONOMY_GPUS")
    own = _own_choice(environ)
    if own is not None:
        return own
    n_raw = environ.get(NVIDIA_VAR)
    n_kind, n_items = _parse(n_raw, cuda=False)
    discovery = _Discovery()
    if n_kind in ("all", "list"):
        found = find_vllm_gpus(proc or ProcTree(), os.getpid() if self_pid is None else self_pid)
        chosen = discovery.consider(found, n_kind, n_items, n_raw, visible_count)
        if chosen is not None:
            return chosen
    if n_kind == "list":
        return _own_nvidia_list(n_raw, n_items, visible_count, discovery.unmatched)
    return discovery.all_visible(visible_count)


def _own_choice(environ: Mapping[str, str]) -> GpuSelection | None:
    """What this process's own variables decide before any discovery: a CUDA list, or none."""
    c_raw = environ.get(CUDA_VAR)
    c_kind, c_items = _parse(c_raw, cuda=True)
    if c_kind == "list":
        return GpuSelection(c_items, ORIGIN_ENVIRONMENT, f"the exporter's {CUDA_VAR}={c_raw}")
    if c_kind == "none" and c_raw is not None and c_raw.strip():
        return GpuSelection((), ORIGIN_ENVIRONMENT, f"the exporter's {CUDA_VAR}={c_raw}")
    n_raw = environ.get(NVIDIA_VAR)
    n_kind, _ = _parse(n_raw, cuda=False)
    if n_kind == "none" and n_raw is not None and n_raw.strip():
        return GpuSelection((), ORIGIN_ENVIRONMENT, f"the exporter's {NVIDIA_VAR}={n_raw}")
    return None


@dataclass(slots=True)
class _Discovery:
    """What discovery learnt when it did not settle the answer by itself."""

    problem: str | None = None  # it ran and could not tell
    unmatched: str | None = None  # it found vLLM's GPUs but cannot match them with ours
    confirmed: str | None = None  # vLLM uses every GPU the exporter sees

    def consider(
        self,
        found: VllmGpus,
        n_kind: str,
        n_items: tuple[str, ...],
        n_raw: str | None,
        visible_count: Callable[[], int | None],
    ) -> GpuSelection | None:
        """The selection when what discovery found settles it; else None, remembering why not."""
        if not found.gpus:
            self.problem = found.problem
            return None
        seen = len(n_items) if n_kind == "list" else visible_count()
        if found.by_index and n_kind == "list" and len(found.gpus) < len(n_items):
            self.unmatched = (
                f"{found.detail}: vLLM names GPUs by index, which cannot be matched with this "
                f"exporter's own {NVIDIA_VAR}={n_raw}; give both containers UUIDs or set --gpus"
            )
        elif seen is None or len(found.gpus) < seen:
            return GpuSelection(found.gpus, ORIGIN_VLLM_PROCESS, found.detail, found.warning)
        else:
            self.confirmed = (
                f"{found.detail}: vLLM uses {len(found.gpus)} GPU(s) and this exporter sees "
                f"{seen}, so it measures all it sees"
            )
        return None

    def all_visible(self, visible_count: Callable[[], int | None]) -> GpuSelection:
        if self.confirmed:
            return GpuSelection(None, ORIGIN_ALL_VISIBLE, self.confirmed)
        if self.problem is None:
            return GpuSelection(
                None,
                ORIGIN_ALL_VISIBLE,
                "no GPU selection given (--gpus, CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES)",
            )
        seen = visible_count()
        if seen is not None and seen <= 1:
            return GpuSelection(None, ORIGIN_ALL_VISIBLE, f"this exporter sees {seen} GPU ({self.problem})")
        return GpuSelection(
            None,
            ORIGIN_ALL_VISIBLE,
            self.problem,
            warning=f"measuring every GPU this exporter sees, which may include GPUs vLLM does not use: {self.problem}",
        )


def _own_nvidia_list(
    n_raw: str | None, n_items: tuple[str, ...], visible_count: Callable[[], int | None], unmatched: str | None
) -> GpuSelection:
    described = f"the exporter's {NVIDIA_VAR}={n_raw}"
    warning = (
        f"measuring this exporter's {NVIDIA_VAR}, which may include GPUs vLLM does not use: {unmatched}"
        if unmatched
        else None
    )
    if any(item.isdigit() for item in n_items) and visible_count() == len(n_items):
        # Inside a container the runtime has applied the list: NVML sees exactly those GPUs,
        # renumbered from 0, so the host indices no longer name them.
        return GpuSelection(None, ORIGIN_ENVIRONMENT, described + ", already applied by the container runtime", warning)
    return GpuSelection(n_items, ORIGIN_ENVIRONMENT, described, warning)
