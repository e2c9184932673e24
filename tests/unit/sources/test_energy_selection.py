import sys
import types

import pytest

from exporter.attribution.gpu_table import GPU_TABLE
from exporter.sources.energy import EnergyOptions, EnergySourceError, open_energy_source
from exporter.sources.nvml import NvmlEnergySource
from exporter.sources.phase_model import PhaseModelEnergySource
from tests.fakes.pynvml_fake import NVML_DEVICE_MIG_ENABLE, FakeGpu, FakeNvml, NVMLError_DriverNotLoaded

UUID0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
UUID1 = "GPU-bbbbbbbb-1111-1111-1111-111111111111"


def fake(clock, name="NVIDIA H100 80GB HBM3", **kw) -> FakeNvml:
    return FakeNvml(
        [FakeGpu(name=name, uuid=UUID0, energy_mj=1000, **kw), FakeGpu(name=name, uuid=UUID1, energy_mj=3000, **kw)],
        clock,
    )


class _Tripwire(types.ModuleType):
    def __getattr__(self, name):
        raise AssertionError(f"the phase model touched pynvml.{name}")


class _ImportRecorder:
    """A meta-path finder that sees every attempt to import pynvml and refuses it."""

    def __init__(self):
        self.attempts = 0

    def find_spec(self, name, path=None, target=None):
        if name == "pynvml":
            self.attempts += 1
            raise ImportError("pynvml blocked by the test")
        return None


def test_auto_with_nvml_measures_and_names_the_gpu_from_nvml(clock):
    setup = open_energy_source(EnergyOptions(), fake(clock, name="NVIDIA A100-SXM4-80GB"), clock)
    try:
        assert isinstance(setup.source, NvmlEnergySource)
        assert (setup.mode, setup.gpu_spec.key, setup.gpu_count, setup.fallback_reason) == ("nvml", "A100", 2, None)
        snapshot = setup.source.read()
        assert snapshot.modelled is False and [g.energy_joules for g in snapshot.gpus] == [1.0, 3.0]
    finally:
        setup.source.close()


def test_declared_gpu_type_beats_the_nvml_name(clock):
    setup = open_energy_source(EnergyOptions(energy_source="nvml", gpu_type="L40S"), fake(clock), clock)
    setup.source.close()
    assert (setup.mode, setup.gpu_spec.key, setup.fallback_reason) == ("nvml", "L40S", None)


def test_a_gpu_missing_from_the_table_gets_h100_figures_and_says_so(clock):
    setup = open_energy_source(EnergyOptions(), fake(clock, name="Tesla T4"), clock)
    setup.source.close()
    assert setup.mode == "nvml" and setup.gpu_spec == GPU_TABLE["H100"]
    assert "Tesla T4" in setup.fallback_reason and "gpu_type" in setup.fallback_reason


def test_nvml_honours_the_gpu_selection(clock):
    setup = open_energy_source(EnergyOptions(gpus=UUID1), fake(clock), clock)
    setup.source.close()
    assert setup.gpu_count == 1 and setup.source.gpus[0][:2] == (1, UUID1)


def test_auto_falls_back_to_the_phase_model_with_a_reason(clock):
    nvml = FakeNvml(init_error=NVMLError_DriverNotLoaded, clock=clock)
    setup = open_energy_source(EnergyOptions(gpu_count=4, gpu_type="H200"), nvml, clock)
    assert isinstance(setup.source, PhaseModelEnergySource)
    assert (setup.mode, setup.gpu_spec.key, setup.gpu_count) == ("phase-model", "H200", 4)
    assert "driver_not_loaded" in setup.fallback_reason and "phase model" in setup.fallback_reason
    snapshot = setup.source.read()
    assert snapshot.modelled is True and snapshot.timestamp == 50.0
    assert [(g.index, g.uuid, g.name, g.method) for g in snapshot.gpus] == [
        (i, "unknown", "H200 (declared)", "phase_model") for i in range(4)
    ]
    assert all(g.energy_joules is None and g.power_watts is None and g.error is None for g in snapshot.gpus)


def test_nvml_mode_refuses_to_fall_back_and_names_the_setting(clock):
    nvml = FakeNvml(init_error=NVMLError_DriverNotLoaded, clock=clock)
    with pytest.raises(EnergySourceError) as caught:
        open_energy_source(EnergyOptions(energy_source="nvml"), nvml, clock)
    assert caught.value.reason == "driver_not_loaded"
    assert "energy_source" in str(caught.value) and "driver_not_loaded" in str(caught.value)


def test_auto_on_a_mig_gpu_keeps_the_real_identity(clock):
    nvml = FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid=UUID0, mig_mode=NVML_DEVICE_MIG_ENABLE)], clock)
    setup = open_energy_source(EnergyOptions(), nvml, clock)
    assert (setup.mode, setup.gpu_spec.key, setup.gpu_count) == ("phase-model", "A100", 1)
    assert "mig" in setup.fallback_reason
    assert setup.source.gpus == [(0, UUID0, "NVIDIA A100-SXM4-80GB")]
    assert nvml.initialised == 0  # NVML was released: the phase model does not use it


def test_auto_on_a_mig_slice_selection_uses_the_slice_uuid(clock):
    mig = "MIG-4f2c9a1e-0000-0000-0000-000000000000"
    setup = open_energy_source(EnergyOptions(gpus=mig), fake(clock), clock)
    assert setup.mode == "phase-model" and setup.source.gpus == [(0, mig, "H100 (declared)")]
    assert setup.gpu_count == 1


@pytest.mark.parametrize(
    "overrides, count, indices",
    [
        ({"gpus": "2,3"}, 2, [2, 3]),
        ({"gpu_count": 3}, 3, [0, 1, 2]),
        ({"gpus": "1", "gpu_count": 8}, 1, [1]),
        ({}, 1, [0]),
    ],
)
def test_phase_model_gpu_count(clock, overrides, count, indices):
    setup = open_energy_source(EnergyOptions(energy_source="phase-model", gpu_type="A100", **overrides), None, clock)
    assert (setup.mode, setup.gpu_count, setup.fallback_reason) == ("phase-model", count, None)
    assert [g[0] for g in setup.source.gpus] == indices
    assert {g[2] for g in setup.source.gpus} == {"A100 (declared)"}


def test_phase_model_without_gpu_type_assumes_h100_and_says_so(clock):
    setup = open_energy_source(EnergyOptions(energy_source="phase-model"), None, clock)
    assert setup.gpu_spec == GPU_TABLE["H100"] and "gpu_type" in setup.fallback_reason


def test_phase_model_never_imports_or_touches_pynvml(clock, monkeypatch):
    recorder = _ImportRecorder()
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(sys, "meta_path", [recorder, *sys.meta_path])

    setup = open_energy_source(EnergyOptions(energy_source="phase-model"), None, clock)
    assert setup.mode == "phase-model" and recorder.attempts == 0
    setup = open_energy_source(EnergyOptions(energy_source="phase-model"), _Tripwire("pynvml"), clock)
    assert setup.mode == "phase-model"

    # The same trap catches auto mode, which must import pynvml; and the refusal is a fallback.
    setup = open_energy_source(EnergyOptions(), None, clock)
    assert recorder.attempts == 1
    assert setup.mode == "phase-model" and "pynvml_missing" in setup.fallback_reason


def test_phase_model_with_uuid_selection_keeps_the_uuids(clock):
    setup = open_energy_source(EnergyOptions(energy_source="phase-model", gpus=f"{UUID0},{UUID1}"), None, clock)
    assert [g[:2] for g in setup.source.gpus] == [(0, UUID0), (1, UUID1)]


def test_opening_logs_one_event(clock):
    events = []

    class Log:
        def info(self, event, **fields):
            events.append((event, fields))

        warning = info

    setup = open_energy_source(EnergyOptions(), fake(clock), clock, log=Log())
    setup.source.close()
    assert [e for e, _ in events] == ["energy_source_opened"]
    assert events[0][1]["mode"] == "nvml" and events[0][1]["methods"] == ["counter"]


def test_a_gpu_known_by_its_datasheet_takes_the_declared_idle_and_decode_power(clock):
    options = EnergyOptions(idle_watts=140.0, decode_watts=600.0)
    setup = open_energy_source(options, fake(clock, name="NVIDIA B200"), clock)
    setup.source.close()
    spec = setup.gpu_spec
    assert (spec.key, spec.idle_watts, spec.decode_watts, setup.fallback_reason) == ("B200", 140.0, 600.0, None)
    assert spec.prefill_watts == spec.board_limit_watts == 1000.0  # the published board limit


def test_without_them_it_falls_back_loudly_naming_the_settings(clock):
    setup = open_energy_source(EnergyOptions(), fake(clock, name="NVIDIA B200"), clock)
    setup.source.close()
    assert setup.gpu_spec == GPU_TABLE["H100"]
    assert "--idle-watts and --decode-watts" in setup.fallback_reason and "B200" in setup.fallback_reason


@pytest.mark.parametrize(
    ("nvml_name", "family"),
    [("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA A100-PCIE-40GB", "A100"), ("NVIDIA H100 PCIe", "H100")],
)
def test_a_pcie_card_without_them_falls_back_to_its_sxm_sibling_loudly(clock, nvml_name, family):
    setup = open_energy_source(EnergyOptions(), fake(clock, name=nvml_name), clock)
    setup.source.close()
    assert setup.gpu_spec == GPU_TABLE[family]
    assert f"assuming {family} figures" in setup.fallback_reason and "--idle-watts" in setup.fallback_reason
