import inspect
import time

import pynvml
import pytest

from exporter.sources.nvml import NvmlEnergySource, NvmlUnavailable
from tests.fakes.pynvml_fake import (
    NVML_DEVICE_MIG_DISABLE,
    NVML_DEVICE_MIG_ENABLE,
    FakeClock,
    FakeGpu,
    FakeNvml,
    NVMLError_DriverNotLoaded,
    NVMLError_GpuIsLost,
    NVMLError_LibraryNotFound,
    NVMLError_Unknown,
)

UUID0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
UUID1 = "GPU-bbbbbbbb-1111-1111-1111-111111111111"
UUID2 = "GPU-cccccccc-2222-2222-2222-222222222222"


def two_gpus(clock: FakeClock, **second: object) -> FakeNvml:
    gpus = [
        FakeGpu(
            name="NVIDIA H100 80GB HBM3",
            uuid=UUID0,
            energy_mj=lambda t: 5_000_000 + 400_000 * (t - 1000),
            power_mw=400_000,
        ),
        FakeGpu(
            name="NVIDIA H100 80GB HBM3",
            uuid=UUID1,
            energy_mj=lambda t: 9_000_000 + 100_000 * (t - 1000),
            power_mw=100_000,
        ),
    ]
    for key, value in second.items():
        setattr(gpus[1], key, value)
    return FakeNvml(gpus, clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def test_counter_path_reports_joules_watts_and_identity(clock):
    nvml = two_gpus(clock)
    source = NvmlEnergySource(nvml, None, 20.0, clock)
    first = source.read()
    clock.advance(2.0)
    second = source.read()
    source.close()

    assert first.modelled is False and first.timestamp == 1000.0 and second.timestamp == 1002.0
    assert [(g.index, g.uuid, g.name, g.method, g.error) for g in first.gpus] == [
        (0, UUID0, "NVIDIA H100 80GB HBM3", "counter", None),
        (1, UUID1, "NVIDIA H100 80GB HBM3", "counter", None),
    ]
    assert [g.energy_joules for g in first.gpus] == [5000.0, 9000.0]
    assert [g.energy_joules for g in second.gpus] == [5800.0, 9200.0]
    assert [g.power_watts for g in first.gpus] == [400.0, 100.0]
    assert source.methods == {0: "counter", 1: "counter"}
    assert source.gpus == [(0, UUID0, "NVIDIA H100 80GB HBM3"), (1, UUID1, "NVIDIA H100 80GB HBM3")]
    assert not source.sampler_running  # no GPU needs sampling: no thread


def test_names_returned_as_bytes_by_old_bindings_are_decoded(clock):
    nvml = FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid=UUID0, names_as_bytes=True)], clock)
    with NvmlEnergySource(nvml, None, 20.0, clock) as source:
        reading = source.read().gpus[0]
    assert (reading.name, reading.uuid) == ("NVIDIA A100-SXM4-80GB", UUID0)


def test_power_integration_is_trapezoidal_on_the_given_clock(clock):
    watts = {"now": 300.0}
    nvml = FakeNvml([FakeGpu(uuid=UUID0, energy_counter=False, power_mw=lambda t: watts["now"] * 1000)], clock)
    source = NvmlEnergySource(nvml, None, 20.0, clock, start_sampler=False)  # first sample at t=1000
    clock.advance(1.0)
    watts["now"] = 500.0
    source.sample_power_once()  # (300 + 500) / 2 * 1 s
    clock.advance(2.0)
    source.sample_power_once()  # 500 * 2 s
    reading = source.read().gpus[0]
    source.close()

    assert reading.method == "power_integration" and reading.error is None
    assert reading.energy_joules == pytest.approx(400.0 + 1000.0)
    assert reading.power_watts == 500.0
    assert source.power_sample_counts == {0: 3}


def test_power_integration_in_real_time_runs_at_the_configured_rate():
    nvml = FakeNvml(
        [FakeGpu(uuid=UUID0, energy_mj=1_000_000), FakeGpu(uuid=UUID1, energy_counter=False, power_mw=300_000)],
        clock=time.monotonic,
    )
    hz = 50.0
    started = time.monotonic()
    source = NvmlEnergySource(nvml, None, hz, time.monotonic)
    assert source.sampler_running
    time.sleep(0.5)
    snapshot = source.read()
    elapsed = time.monotonic() - started
    samples = source.power_sample_counts[1]
    source.close()

    counter, integrated = snapshot.gpus
    assert counter.method == "counter" and integrated.method == "power_integration"
    assert set(source.power_sample_counts) == {1}
    assert integrated.energy_joules == pytest.approx(300.0 * elapsed, rel=0.10)
    assert integrated.energy_joules == pytest.approx(150.0, rel=0.15)
    assert samples / elapsed >= 10.0  # the floor power_sample_hz may be set to
    assert samples >= 0.5 * hz * elapsed  # and close to what was asked for
    assert nvml.call_count("nvmlDeviceGetPowerUsage", 0) <= 2  # the counter GPU is not sampled


def test_a_probe_failure_other_than_not_supported_also_selects_power_integration(clock):
    nvml = FakeNvml(
        [FakeGpu(uuid=UUID0, fail_on={"nvmlDeviceGetTotalEnergyConsumption": {1: NVMLError_Unknown}})], clock
    )
    with NvmlEnergySource(nvml, None, 20.0, clock, start_sampler=False) as source:
        assert source.methods == {0: "power_integration"}


def test_one_gpu_failing_does_not_stop_the_other(clock):
    # Call 1 is the probe at start-up; call 2 is the first read.
    nvml = two_gpus(
        clock, fail_on={"nvmlDeviceGetTotalEnergyConsumption": {2: NVMLError_GpuIsLost, 3: NVMLError_Unknown}}
    )
    source = NvmlEnergySource(nvml, None, 20.0, clock)
    lost, unknown, fine = source.read(), source.read(), source.read()
    source.close()

    assert lost.gpus[0].energy_joules == 5000.0 and lost.gpus[0].error is None
    assert (lost.gpus[1].energy_joules, lost.gpus[1].power_watts, lost.gpus[1].error) == (None, None, "nvml_gpu_lost")
    assert unknown.gpus[1].error == "nvml_error" and unknown.gpus[0].error is None
    assert fine.gpus[1].error is None and fine.gpus[1].energy_joules == 9000.0


def test_gpu_lost_then_back_reopens_it_by_uuid(clock):
    nvml = two_gpus(clock)
    source = NvmlEnergySource(nvml, None, 20.0, clock)
    nvml.lose_gpu(0)
    during = source.read()
    nvml.recover_gpu(0)
    clock.advance(1.0)
    after = source.read()
    source.close()

    assert during.gpus[0].error == "nvml_gpu_lost" and during.gpus[0].energy_joules is None
    assert during.gpus[1].energy_joules == 9000.0
    assert after.gpus[0].error is None and after.gpus[0].energy_joules == 5400.0


def test_power_integration_gpu_lost_reports_error_then_bridges_the_gap(clock):
    nvml = FakeNvml([FakeGpu(uuid=UUID0, energy_counter=False, power_mw=300_000)], clock)
    source = NvmlEnergySource(nvml, None, 20.0, clock, start_sampler=False)  # sample at t=1000
    nvml.lose_gpu(0)
    clock.advance(1.0)
    source.sample_power_once()
    during = source.read().gpus[0]
    nvml.recover_gpu(0)
    clock.advance(1.0)
    source.read()  # reopens the handle
    source.sample_power_once()
    after = source.read().gpus[0]
    source.close()

    assert (during.energy_joules, during.error) == (None, "nvml_gpu_lost")
    assert after.error is None and after.energy_joules == pytest.approx(600.0)


def test_every_gpu_failing_still_returns_a_snapshot(clock):
    nvml = two_gpus(clock)
    source = NvmlEnergySource(nvml, None, 20.0, clock)
    for index in range(len(nvml.gpus)):
        nvml.lose_gpu(index)
    snapshot = source.read()
    source.close()
    assert [g.error for g in snapshot.gpus] == ["nvml_gpu_lost", "nvml_gpu_lost"]
    assert all(g.energy_joules is None for g in snapshot.gpus)


def test_selection_by_index(clock):
    with NvmlEnergySource(two_gpus(clock), ("1",), 20.0, clock) as source:
        assert source.gpus == [(1, UUID1, "NVIDIA H100 80GB HBM3")]
        assert [g.energy_joules for g in source.read().gpus] == [9000.0]


def test_selection_by_uuid_takes_the_nvml_index_and_ignores_duplicates(clock):
    with NvmlEnergySource(two_gpus(clock), (UUID1, "1"), 20.0, clock) as source:
        assert source.gpus == [(1, UUID1, "NVIDIA H100 80GB HBM3")]
        assert source.read().gpus[0].energy_joules == 9000.0


@pytest.mark.parametrize("item", ["7", UUID2])
def test_unknown_gpu_is_refused_by_name_and_nvml_is_shut_down(clock, item):
    nvml = two_gpus(clock)
    with pytest.raises(NvmlUnavailable) as caught:
        NvmlEnergySource(nvml, ("0", item), 20.0, clock)
    assert caught.value.reason == "gpu_not_found"
    assert item in str(caught.value)
    assert nvml.initialised == 0


def test_mig_enabled_gpu_is_refused_but_its_identity_is_kept(clock):
    nvml = FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-40GB", uuid=UUID0, mig_mode=NVML_DEVICE_MIG_ENABLE)], clock)
    with pytest.raises(NvmlUnavailable) as caught:
        NvmlEnergySource(nvml, None, 20.0, clock)
    assert caught.value.reason == "mig"
    assert caught.value.gpus == ((0, UUID0, "NVIDIA A100-SXM4-40GB"),)
    assert nvml.initialised == 0


def test_mig_capable_gpu_with_mig_disabled_is_measured(clock):
    nvml = FakeNvml([FakeGpu(uuid=UUID0, mig_mode=NVML_DEVICE_MIG_DISABLE, energy_mj=2000)], clock)
    with NvmlEnergySource(nvml, None, 20.0, clock) as source:
        assert source.read().gpus[0].energy_joules == 2.0


def test_mig_slice_selection_is_refused_before_nvml_is_touched(clock):
    nvml = two_gpus(clock)
    with pytest.raises(NvmlUnavailable) as caught:
        NvmlEnergySource(nvml, ("MIG-4f2c9a1e-0000-0000-0000-000000000000",), 20.0, clock)
    assert caught.value.reason == "mig" and nvml.init_calls == 0


@pytest.mark.parametrize(
    "error, reason",
    [
        (NVMLError_DriverNotLoaded, "driver_not_loaded"),
        (NVMLError_LibraryNotFound, "library_not_found"),
        (NVMLError_Unknown, "nvml_error"),
        (OSError("libnvidia-ml.so.1: cannot open shared object file"), "library_not_found"),
    ],
)
def test_init_failure_is_typed(clock, error, reason):
    with pytest.raises(NvmlUnavailable) as caught:
        NvmlEnergySource(FakeNvml(init_error=error, clock=clock), None, 20.0, clock)
    assert caught.value.reason == reason


def test_no_visible_gpu_is_unavailable(clock):
    with pytest.raises(NvmlUnavailable) as caught:
        NvmlEnergySource(FakeNvml([], clock), None, 20.0, clock)
    assert caught.value.reason == "no_gpus"


def test_close_stops_the_sampler_and_shuts_nvml_down_once():
    nvml = FakeNvml([FakeGpu(uuid=UUID0, energy_counter=False, power_mw=300_000)], clock=time.monotonic)
    source = NvmlEnergySource(nvml, None, 100.0, time.monotonic)
    time.sleep(0.05)
    assert source.sampler_running
    source.close()
    assert not source.sampler_running
    stopped_at = nvml.call_count("nvmlDeviceGetPowerUsage", 0)
    time.sleep(0.1)
    assert nvml.call_count("nvmlDeviceGetPowerUsage", 0) == stopped_at
    source.close()
    assert (nvml.shutdown_calls, nvml.initialised) == (1, 0)


def test_the_fake_mirrors_the_real_module():
    fake = FakeNvml()
    for name, member in inspect.getmembers(fake):
        if name.startswith("nvml"):
            real = getattr(pynvml, name)
            assert list(inspect.signature(member).parameters) == list(inspect.signature(real).parameters), name
        elif name.startswith(("NVMLError", "NVML_")):
            assert member is getattr(pynvml, name), name
