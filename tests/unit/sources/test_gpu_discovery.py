"""GPU discovery without privilege: each branch of the order, against fake /proc trees built in
tmp dirs (the files the kernel serves, in its formats), and the energy source opened on what
discovery chose. A real child process read through the real /proc is
tests/integration/test_gpu_discovery_real_proc.py."""

import errno
import os
from pathlib import Path

import pytest

from exporter.config import ENV_PREFIX
from exporter.sources.energy import EnergyOptions, open_energy_source
from exporter.sources.gpu_discovery import (
    ORIGIN_ALL_VISIBLE,
    ORIGIN_ENVIRONMENT,
    ORIGIN_FLAG,
    ORIGIN_VLLM_PROCESS,
    ProcTree,
    looks_like_vllm,
    resolve_gpu_selection,
    vllm_gpus_from_environment,
)
from tests.fakes.pynvml_fake import FakeClock, FakeGpu, FakeNvml, NVMLError_DriverNotLoaded

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-0000-0000-00000000000{i}" for i in range(4)]
SELF_PID = 4242
VLLM_ARGV = ["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/m", "--port", "8000"]
EXPORTER_ARGV = ["/opt/venv/bin/python", "-m", "exporter", "run", "--vllm-url", "http://127.0.0.1:8000"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for var in list(os.environ):
        if var.startswith(ENV_PREFIX) or var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            monkeypatch.delenv(var)


class FakeProc:
    """Writes a /proc tree: <pid>/cmdline, stat, status, environ, and optionally files inside
    <pid>/root (the process's container filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.add(1, 0, ["/pause"], {}, uid=65535)  # the pod's sandbox, as under shareProcessNamespace
        self.add(SELF_PID, 0, EXPORTER_ARGV, {"NVIDIA_VISIBLE_DEVICES": "all"})

    def add(self, pid, ppid, argv, env, uid=1000, root_files=()):
        d = self.root / str(pid)
        d.mkdir(parents=True)
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        comm = Path(argv[0]).name[:15] if argv else ""
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0\n")
        (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        for name in root_files:
            path = d / "root" / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        return self

    def tree(self, denied=()) -> ProcTree:
        return DeniedProcTree(self.root, denied) if denied else ProcTree(self.root)


class DeniedProcTree(ProcTree):
    """What the kernel answers a process of another UID without CAP_SYS_PTRACE: EACCES on
    /proc/<pid>/environ and /proc/<pid>/root (cmdline, stat and status stay readable). A file
    mode cannot show it here: the tests may run as root, which the mode does not stop."""

    def __init__(self, root, denied):
        super().__init__(root)
        self.denied = set(denied)

    def environ(self, pid):
        if pid in self.denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(self.root / str(pid) / "environ"))
        return super().environ(pid)

    def list_in_root(self, pid, path):
        if pid in self.denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(self.root / str(pid) / "root"))
        return super().list_in_root(pid, path)


class Tripwire(ProcTree):
    def __init__(self):
        super().__init__("/nonexistent")

    def pids(self):
        raise AssertionError("discovery read /proc where it must not")


@pytest.fixture
def proc(tmp_path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def resolve(proc_tree, environ=None, visible=4, explicit=None):
    calls = []

    def visible_count():
        calls.append(1)
        return visible

    selection = resolve_gpu_selection(
        explicit,
        environ if environ is not None else {"NVIDIA_VISIBLE_DEVICES": "all"},
        visible_count,
        proc_tree,
        self_pid=SELF_PID,
    )
    return selection, len(calls)


# -- which processes are vLLM's ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"], True),
        (["/usr/local/bin/vllm", "serve", "/models/m"], True),
        (VLLM_ARGV, True),
        (["python3", "/usr/lib/python3/dist-packages/vllm/entrypoints/openai/api_server.py"], True),
        (["VLLM::EngineCore"], True),
        (["VLLM::Worker_TP1"], True),
        (["/bin/sh", "-c", "exec vllm serve /models/m --port 8000"], True),
        (EXPORTER_ARGV, False),
        (["token-economy-exporter", "run", "--vllm-url=http://127.0.0.1:8000", "--vllm-timeout", "2"], False),
        (["python3", "train.py", "--data", "/data/vllm/x"], False),
        (["/pause"], False),
        (["sleep", "infinity"], False),
    ],
)
def test_which_command_lines_are_vllm(argv, expected):
    assert looks_like_vllm(argv) is expected


# -- the order ---------------------------------------------------------------------------------


def test_explicit_gpus_win_over_everything(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": UUIDS[2]})
    selection, counted = resolve(
        proc.tree(), {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "3"}, explicit=f"1,{UUIDS[0]}"
    )
    assert (selection.gpus, selection.origin, selection.warning) == (("1", UUIDS[0]), ORIGIN_FLAG, None)
    assert counted == 0


def test_the_exporters_own_cuda_visible_devices_wins_over_discovery(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": UUIDS[2]})
    selection, _ = resolve(proc.tree(), {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": UUIDS[1]})
    assert (selection.gpus, selection.origin) == ((UUIDS[1],), ORIGIN_ENVIRONMENT)


def test_discovery_narrows_all_to_the_vllm_containers_gpus(proc):
    proc.add(7, 0, VLLM_ARGV, {"PATH": "/usr/bin", "NVIDIA_VISIBLE_DEVICES": f"{UUIDS[1]},{UUIDS[2]}", "HF_TOKEN": "x"})
    selection, counted = resolve(proc.tree(), visible=4)
    assert (selection.gpus, selection.origin, selection.warning) == ((UUIDS[1], UUIDS[2]), ORIGIN_VLLM_PROCESS, None)
    assert "pid 7" in selection.detail and "NVIDIA_VISIBLE_DEVICES=" in selection.detail
    assert "HF_TOKEN" not in selection.detail and counted == 1


def test_discovery_reads_cuda_visible_devices_uuids(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": UUIDS[3]})
    selection, _ = resolve(proc.tree())
    assert (selection.gpus, selection.origin) == ((UUIDS[3],), ORIGIN_VLLM_PROCESS)


def test_discovery_takes_cuda_indices_where_vllm_sees_every_gpu(proc):
    # With NVIDIA_VISIBLE_DEVICES=all on both sides, NVML numbers GPUs as the host does.
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "2,3"})
    selection, _ = resolve(proc.tree())
    assert (selection.gpus, selection.origin) == (("2", "3"), ORIGIN_VLLM_PROCESS)


def test_discovery_does_not_narrow_when_the_exporter_sees_no_more_gpus_than_vllm(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[1]},{UUIDS[2]}"})
    selection, _ = resolve(proc.tree(), visible=2)
    assert (selection.gpus, selection.origin, selection.warning) == (None, ORIGIN_ALL_VISIBLE, None)
    assert "vLLM uses 2 GPU(s) and this exporter sees 2" in selection.detail


def test_the_same_value_on_both_containers_is_used_as_given(proc):
    value = f"{UUIDS[1]},{UUIDS[2]}"
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": value})
    selection, _ = resolve(proc.tree(), {"NVIDIA_VISIBLE_DEVICES": value}, visible=2)
    assert (selection.gpus, selection.origin, selection.warning) == ((UUIDS[1], UUIDS[2]), ORIGIN_ENVIRONMENT, None)


def test_an_index_list_the_runtime_applied_means_every_visible_gpu(proc):
    # NVIDIA_VISIBLE_DEVICES=2,3 inside a container: NVML sees two GPUs, numbered 0 and 1.
    selection, _ = resolve(proc.tree(), {"NVIDIA_VISIBLE_DEVICES": "2,3"}, visible=2)
    assert (selection.gpus, selection.origin) == (None, ORIGIN_ENVIRONMENT)
    assert "already applied" in selection.detail
    # Where nothing is visible (the phase model), the list still counts the GPUs.
    selection, _ = resolve(proc.tree(), {"NVIDIA_VISIBLE_DEVICES": "2,3"}, visible=None)
    assert selection.gpus == ("2", "3")


def test_indices_from_vllm_cannot_narrow_the_exporters_own_list(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": "1"})
    selection, _ = resolve(proc.tree(), {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[0]},{UUIDS[1]}"}, visible=2)
    assert (selection.gpus, selection.origin) == ((UUIDS[0], UUIDS[1]), ORIGIN_ENVIRONMENT)
    assert "by index" in selection.warning and "--gpus" in selection.warning


def test_no_vllm_process_means_every_visible_gpu_with_a_warning(proc):
    selection, _ = resolve(proc.tree(), visible=4)
    assert (selection.gpus, selection.origin) == (None, ORIGIN_ALL_VISIBLE)
    assert "shareProcessNamespace" in selection.warning and "every GPU" in selection.warning


def test_a_single_visible_gpu_needs_no_warning(proc):
    selection, _ = resolve(proc.tree(), visible=1)
    assert (selection.gpus, selection.origin, selection.warning) == (None, ORIGIN_ALL_VISIBLE, None)


def test_permission_denied_falls_back_with_a_warning_that_names_the_uid(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": UUIDS[1]}, uid=0)
    selection, _ = resolve(proc.tree(denied={7}), visible=4)
    assert (selection.gpus, selection.origin) == (None, ORIGIN_ALL_VISIBLE)
    warning = selection.warning
    assert "/proc/7/environ" in warning and "permission denied" in warning and "uid 0" in warning
    assert "runAsUser" in warning and "CAP_SYS_PTRACE" in warning


def test_discovery_is_off_outside_a_gpu_container(proc):
    # No NVIDIA_VISIBLE_DEVICES on the exporter: bare metal, a laptop, CI. /proc is not read.
    selection, _ = resolve_gpu_selection(None, {}, lambda: 8, Tripwire(), self_pid=SELF_PID), None
    assert (selection.gpus, selection.origin, selection.warning) == (None, ORIGIN_ALL_VISIBLE, None)


def test_none_and_void_select_no_gpu():
    for value in ("none", "void"):
        selection = resolve_gpu_selection(None, {"NVIDIA_VISIBLE_DEVICES": value}, lambda: 8, Tripwire())
        assert (selection.gpus, selection.origin) == ((), ORIGIN_ENVIRONMENT)
    selection = resolve_gpu_selection(None, {"CUDA_VISIBLE_DEVICES": "-1"}, lambda: 8, Tripwire())
    assert selection.gpus == ()


def test_the_root_of_the_vllm_tree_answers_not_its_workers(proc):
    # Ray-style workers narrow CUDA_VISIBLE_DEVICES to one GPU each; the server holds the set.
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[0]},{UUIDS[1]}"})
    proc.add(
        30,
        7,
        ["VLLM::Worker_TP0"],
        {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[0]},{UUIDS[1]}", "CUDA_VISIBLE_DEVICES": UUIDS[0]},
    )
    proc.add(
        31,
        7,
        ["VLLM::Worker_TP1"],
        {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[0]},{UUIDS[1]}", "CUDA_VISIBLE_DEVICES": UUIDS[1]},
    )
    selection, _ = resolve(proc.tree())
    assert selection.gpus == (UUIDS[0], UUIDS[1]) and "pid 7" in selection.detail


def test_a_shell_wrapper_counts_as_the_root(proc):
    proc.add(7, 0, ["/bin/sh", "-c", "vllm serve /models/m"], {"NVIDIA_VISIBLE_DEVICES": UUIDS[2]})
    proc.add(8, 7, ["vllm", "serve", "/models/m"], {"NVIDIA_VISIBLE_DEVICES": UUIDS[2]})
    selection, _ = resolve(proc.tree())
    assert selection.gpus == (UUIDS[2],) and "pid 7" in selection.detail


def test_two_vllm_servers_with_different_gpus_are_ambiguous(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": UUIDS[0]})
    proc.add(9, 0, ["vllm", "serve", "other"], {"NVIDIA_VISIBLE_DEVICES": UUIDS[3]})
    selection, _ = resolve(proc.tree())
    assert (selection.gpus, selection.origin) == (None, ORIGIN_ALL_VISIBLE)
    assert (
        "several vLLM servers" in selection.warning and UUIDS[0] in selection.warning and UUIDS[3] in selection.warning
    )


def test_two_vllm_processes_that_agree_are_one_answer(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": UUIDS[0]})
    proc.add(9, 0, ["vllm", "serve", "m"], {"NVIDIA_VISIBLE_DEVICES": UUIDS[0]})
    assert resolve(proc.tree())[0].gpus == (UUIDS[0],)


def test_the_exporter_never_reads_itself(proc):
    # Our own environment names one GPU; were we our own "vLLM", discovery would narrow to it.
    (proc.root / str(SELF_PID) / "cmdline").write_bytes(b"vllm\0serve\0")
    (proc.root / str(SELF_PID) / "environ").write_bytes(f"NVIDIA_VISIBLE_DEVICES={UUIDS[0]}\0".encode())
    selection, _ = resolve(proc.tree())
    assert selection.origin == ORIGIN_ALL_VISIBLE and "no vLLM process" in selection.warning


def test_volume_mounts_strategy_lists_the_vllm_containers_devices(proc):
    proc.add(
        7,
        0,
        VLLM_ARGV,
        {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"},
        root_files=[f"/var/run/nvidia-container-devices/{UUIDS[3]}", f"/var/run/nvidia-container-devices/{UUIDS[1]}"],
    )
    selection, _ = resolve(proc.tree())
    assert (selection.gpus, selection.origin) == ((UUIDS[1], UUIDS[3]), ORIGIN_VLLM_PROCESS)
    assert "holding" in selection.detail


def test_volume_mounts_strategy_denied(proc):
    proc.add(
        7,
        0,
        VLLM_ARGV,
        {"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"},
        root_files=[f"/var/run/nvidia-container-devices/{UUIDS[3]}"],
    )
    tree = proc.tree()
    tree.list_in_root = lambda pid, path: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied"))
    selection, _ = resolve(tree)
    assert selection.gpus is None and "permission denied" in selection.warning


# -- what a vLLM environment says ----------------------------------------------------------------


def _from(env, listing=()):
    return vllm_gpus_from_environment(env, lambda path: list(listing))


def test_cuda_indices_covering_the_container_mean_all_of_its_gpus():
    found = _from({"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[0]},{UUIDS[1]}", "CUDA_VISIBLE_DEVICES": "1,0"})
    assert (found.gpus, found.warning) == ((UUIDS[0], UUIDS[1]), None)


def test_cuda_indices_picking_some_of_the_container_measure_the_superset_and_say_so():
    found = _from({"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[0]},{UUIDS[1]},{UUIDS[2]}", "CUDA_VISIBLE_DEVICES": "1"})
    assert found.gpus == (UUIDS[0], UUIDS[1], UUIDS[2]) and "CUDA index" in found.warning


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, "no GPU"),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, "does not narrow"),
        ({}, "does not narrow"),
        ({"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": ""}, "hides every GPU"),
        ({"NVIDIA_VISIBLE_DEVICES": "gpu zero"}, "cannot be parsed"),
        ({"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"}, "no GPU"),
    ],
)
def test_environments_that_name_no_gpu(env, problem):
    found = _from(env)
    assert found.gpus is None and problem in found.problem


def test_a_vllm_without_gpu_variables_falls_back_with_the_reason(proc):
    proc.add(7, 0, VLLM_ARGV, {"PATH": "/usr/bin"})
    selection, _ = resolve(proc.tree())
    assert (
        selection.origin == ORIGIN_ALL_VISIBLE
        and "does not narrow" in selection.warning
        and "pid 7" in selection.warning
    )


# -- the energy source opens what discovery chose -------------------------------------------------


class Log:
    def __init__(self):
        self.events = []

    def info(self, event, **fields):
        self.events.append(("info", event, fields))

    def warning(self, event, **fields):
        self.events.append(("warning", event, fields))


def nvml(count=4, **kw):
    clock = FakeClock(10.0)
    return FakeNvml([FakeGpu(uuid=UUIDS[i], energy_mj=1000 * (i + 1)) for i in range(count)], clock, **kw), clock


def test_nvml_measures_only_the_discovered_gpus(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[3]},{UUIDS[1]}"})
    fake, clock = nvml()
    log = Log()
    setup = open_energy_source(
        EnergyOptions(), fake, clock, log, environ={"NVIDIA_VISIBLE_DEVICES": "all"}, proc=proc.tree()
    )
    try:
        assert setup.mode == "nvml" and setup.gpu_count == 2
        assert [(i, uuid) for i, uuid, _ in setup.source.gpus] == [(3, UUIDS[3]), (1, UUIDS[1])]
        assert setup.gpu_selection.origin == ORIGIN_VLLM_PROCESS
        assert [e for _, e, _ in log.events] == ["energy_source_opened"]
        assert log.events[0][2]["gpu_selection"] == ORIGIN_VLLM_PROCESS
    finally:
        setup.source.close()
    assert fake.initialised == 0 and fake.init_calls == 2  # the count, then the source


def test_nvml_without_vllm_measures_every_gpu_and_warns(proc):
    fake, clock = nvml()
    log = Log()
    setup = open_energy_source(
        EnergyOptions(), fake, clock, log, environ={"NVIDIA_VISIBLE_DEVICES": "all"}, proc=proc.tree()
    )
    setup.source.close()
    assert setup.gpu_count == 4 and setup.gpu_selection.origin == ORIGIN_ALL_VISIBLE
    warnings = [(e, f) for level, e, f in log.events if level == "warning"]
    assert len(warnings) == 1 and warnings[0][0] == "gpu_selection_uncertain"
    assert "shareProcessNamespace" in warnings[0][1]["reason"]


def test_without_a_driver_the_phase_model_counts_the_discovered_gpus(proc):
    # The exporter's NVIDIA_VISIBLE_DEVICES=all was not honoured (no GPU for it): NVML cannot
    # start, yet vLLM's environment still says how many GPUs to model.
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[0]},{UUIDS[2]}"})
    fake = FakeNvml(init_error=NVMLError_DriverNotLoaded, clock=FakeClock())
    setup = open_energy_source(
        EnergyOptions(gpu_type="H100"), fake, FakeClock(), environ={"NVIDIA_VISIBLE_DEVICES": "all"}, proc=proc.tree()
    )
    assert (setup.mode, setup.gpu_count) == ("phase-model", 2)
    assert [g[:2] for g in setup.source.gpus] == [(0, UUIDS[0]), (1, UUIDS[2])]
    assert setup.gpu_selection.origin == ORIGIN_VLLM_PROCESS


def test_the_declared_phase_model_counts_the_discovered_gpus(proc):
    proc.add(7, 0, VLLM_ARGV, {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "0,1,2"})
    setup = open_energy_source(
        EnergyOptions(energy_source="phase-model", gpu_type="L4"),
        None,
        FakeClock(),
        environ={"NVIDIA_VISIBLE_DEVICES": "all"},
        proc=proc.tree(),
    )
    assert (setup.mode, setup.gpu_count) == ("phase-model", 3)
    assert [g[0] for g in setup.source.gpus] == [0, 1, 2]
