"""The DCGM source as start-up chooses it: `--energy-source dcgm`, the order `auto` tries (sidecar
NVML, then DCGM where its URL is set, then the declared phase model, each step saying why the one
before was not used), and the settings that feed it."""

import types

import httpx
import pytest

from exporter.cli import main
from exporter.config import Settings
from exporter.sources.dcgm import FIDELITY, DcgmEnergySource
from exporter.sources.energy import EnergyOptions, EnergySourceError, open_energy_source
from exporter.sources.nvml import NvmlEnergySource
from exporter.sources.phase_model import PhaseModelEnergySource
from tests.dcgm_pages import A100, H100, MIG_SMALL_POD, NAMESPACE, POD, load
from tests.fakes.pynvml_fake import FakeGpu, FakeNvml, NVMLError_DriverNotLoaded
from tests.unit.sources.test_dcgm import Node, Recorder

URL = "http://10.0.0.7:9400/metrics"


class _Untouchable(types.ModuleType):
    def __getattr__(self, name):
        raise AssertionError(f"energy_source=dcgm touched pynvml.{name}")


def options(**kw) -> EnergyOptions:
    kw.setdefault("dcgm_url", URL)
    kw.setdefault("dcgm_pod", POD)
    kw.setdefault("dcgm_namespace", NAMESPACE)
    kw.setdefault("dcgm_open_wait", 0.0)
    return EnergyOptions(**kw)


def no_nvml(clock) -> FakeNvml:
    return FakeNvml(init_error=NVMLError_DriverNotLoaded, clock=clock)


def test_dcgm_mode_measures_this_pods_gpus_without_nvml(clock):
    node, log = Node(load("h100-node-pod-mapping.txt")), Recorder()
    setup = open_energy_source(
        options(energy_source="dcgm"), _Untouchable("pynvml"), clock, log, dcgm_transport=node.transport
    )
    assert isinstance(setup.source, DcgmEnergySource)
    assert (setup.mode, setup.gpu_spec.key, setup.gpu_count, setup.fallback_reason) == ("dcgm", "H100", 2, None)
    assert setup.gpu_selection is not None and setup.gpu_selection.origin == "dcgm-pod"
    assert setup.gpu_selection.gpus == tuple(H100[:2]) and POD in setup.gpu_selection.detail
    (opened,) = log.named("energy_source_opened")
    assert opened["mode"] == "dcgm" and opened["fidelity"] == FIDELITY and opened["url"] == URL
    snapshot = setup.source.read()
    assert snapshot.origin == "dcgm" and not snapshot.modelled and len(snapshot.gpus) == 2
    setup.source.close()


def test_dcgm_mode_by_uuid(clock):
    node = Node(load("l40s-node-no-pod-mapping.txt"))
    uuid = "GPU-7b4d1e8f-a2c6-39e0-d5b7-6c8a9f0e1d2b"
    setup = open_energy_source(
        options(energy_source="dcgm", gpus=uuid, dcgm_pod=None, dcgm_namespace=None),
        clock=clock,
        dcgm_transport=node.transport,
    )
    assert (setup.gpu_spec.key, setup.gpu_count, setup.source.gpus[0].uuid) == ("L40S", 1, uuid)
    assert setup.gpu_selection is not None and setup.gpu_selection.origin == "flag"


def test_gpu_indices_meant_for_nvml_leave_the_choice_to_the_pod_labels(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    setup = open_energy_source(options(gpus="0,1"), no_nvml(clock), clock, dcgm_transport=node.transport)
    assert setup.mode == "dcgm" and [g.uuid for g in setup.source.gpus] == H100[:2]
    with pytest.raises(EnergySourceError) as caught:  # alone, indices cannot name the node's GPUs
        open_energy_source(
            options(energy_source="dcgm", gpus="0,1", dcgm_pod=None, dcgm_namespace=None),
            clock=clock,
            dcgm_transport=node.transport,
        )
    assert caught.value.reason == "gpu_index"


def test_dcgm_mode_without_a_url_names_the_setting(clock):
    with pytest.raises(EnergySourceError) as caught:
        open_energy_source(options(energy_source="dcgm", dcgm_url=None), _Untouchable("pynvml"), clock)
    assert caught.value.reason == "dcgm_url_unset" and "dcgm_url" in str(caught.value)


def test_dcgm_mode_refuses_to_fall_back(clock):
    node = Node(load("a100-node-mig.txt"))
    with pytest.raises(EnergySourceError) as caught:
        open_energy_source(
            options(energy_source="dcgm", dcgm_pod=MIG_SMALL_POD), clock=clock, dcgm_transport=node.transport
        )
    assert caught.value.reason == "mig" and "energy_source=dcgm" in str(caught.value)


def test_auto_prefers_sidecar_nvml_and_leaves_dcgm_alone(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    nvml = FakeNvml([FakeGpu(name="NVIDIA H100 80GB HBM3", uuid=H100[0], energy_mj=10)], clock)
    setup = open_energy_source(options(), nvml, clock, dcgm_transport=node.transport)
    setup.source.close()
    assert isinstance(setup.source, NvmlEnergySource) and setup.mode == "nvml" and node.requests == 0


def test_auto_without_nvml_uses_dcgm_and_says_why(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    setup = open_energy_source(options(), no_nvml(clock), clock, dcgm_transport=node.transport)
    assert isinstance(setup.source, DcgmEnergySource) and setup.mode == "dcgm"
    assert "driver_not_loaded" in setup.fallback_reason and "using DCGM" in setup.fallback_reason


def test_auto_without_nvml_or_dcgm_runs_the_phase_model_saying_why_each_was_not_used(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    node.error = httpx.ConnectError("connection refused")
    setup = open_energy_source(options(gpu_count=2), no_nvml(clock), clock, dcgm_transport=node.transport)
    assert isinstance(setup.source, PhaseModelEnergySource) and setup.mode == "phase-model"
    reason = setup.fallback_reason
    assert reason.index("driver_not_loaded") < reason.index("DCGM unavailable (connection)") < reason.index("phase")


def test_auto_on_a_refused_mig_slice_keeps_dcgms_identity_for_the_phase_model(clock):
    node = Node(load("a100-node-mig.txt"))
    setup = open_energy_source(options(dcgm_pod=MIG_SMALL_POD), no_nvml(clock), clock, dcgm_transport=node.transport)
    assert setup.mode == "phase-model" and "DCGM unavailable (mig)" in setup.fallback_reason
    assert (setup.gpu_spec.key, setup.source.gpus) == ("A100", [(0, A100[0], "NVIDIA A100-SXM4-80GB")])


def test_auto_without_a_dcgm_url_says_it_was_not_tried(clock):
    setup = open_energy_source(EnergyOptions(), no_nvml(clock), clock)
    assert setup.mode == "phase-model" and "dcgm_url is not set" in setup.fallback_reason


def test_phase_model_mode_never_asks_dcgm(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    setup = open_energy_source(options(energy_source="phase-model"), clock=clock, dcgm_transport=node.transport)
    assert setup.mode == "phase-model" and node.requests == 0


# -- settings ---------------------------------------------------------------------------------------


def test_the_settings_reach_the_source_as_plain_values(monkeypatch):
    monkeypatch.setenv("TOKEN_ECONOMY_DCGM_URL", "http://10.0.0.7:9400")
    monkeypatch.setenv("TOKEN_ECONOMY_DCGM_POD", POD)
    monkeypatch.setenv("TOKEN_ECONOMY_DCGM_NAMESPACE", NAMESPACE)
    opts = Settings(energy_source="dcgm", interval=1.0).energy_options
    assert (opts.energy_source, opts.dcgm_url, opts.dcgm_pod, opts.dcgm_namespace) == ("dcgm", URL, POD, NAMESPACE)
    assert opts.dcgm_timeout == pytest.approx(0.8)  # within the interval, like vLLM's read


def test_a_url_keeps_its_own_path():
    assert Settings(dcgm_url="https://dcgm.local/node/metrics", gpus=H100[0]).dcgm_url.endswith("/node/metrics")


@pytest.mark.parametrize(
    "flags, setting",
    [
        (["--dcgm-url", "ftp://node:9400"], "dcgm_url"),
        (["--dcgm-url", "http://node:99999/metrics", "--gpus", H100[0]], "dcgm_url"),
        (["--energy-source", "dcgm"], "dcgm_url"),  # dcgm needs its page
        (["--dcgm-url", URL], "dcgm_url"),  # ... and a way to tell this pod's GPUs on it
        (["--dcgm-url", URL, "--gpus", "0"], "dcgm_url"),  # indices do not name the node's GPUs
        (["--dcgm-pod", POD], "dcgm_namespace"),
        (["--dcgm-namespace", NAMESPACE], "dcgm_pod"),
        (["--dcgm-pod", "Not_A_Pod", "--dcgm-namespace", NAMESPACE], "dcgm_pod"),
        (["--dcgm-pod", POD, "--dcgm-namespace", "x" * 64], "dcgm_namespace"),
    ],
)
def test_a_bad_dcgm_setting_exits_2_naming_it(flags, setting, capsys):
    assert main(["run", *flags]) == 2
    err = capsys.readouterr().err
    assert f"setting {setting} (--{setting.replace('_', '-')} / TOKEN_ECONOMY_{setting.upper()})" in err


def test_run_help_lists_the_dcgm_settings(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--dcgm-url", "--dcgm-pod", "--dcgm-namespace"):
        assert flag in text
    assert "auto, plugin, nvml, dcgm or phase-model" in text and "TOKEN_ECONOMY_DCGM_URL; default: none]" in text
