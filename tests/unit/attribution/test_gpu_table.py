"""The GPU table: NVML's product names find their entry, a key never shadows another, and every
entry's figures are physically ordered. Add a case here with each new entry."""

import pytest

from exporter.attribution.gpu_table import (
    DATASHEETS,
    GPU_TABLE,
    DatasheetSpec,
    UnknownFigures,
    lookup,
    lookup_datasheet,
)


@pytest.mark.parametrize(
    "nvml_name, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
    ],
)
def test_nvml_names_find_their_entry(nvml_name, key):
    assert lookup(nvml_name) is GPU_TABLE[key]


# The names the drivers report (nvidia-smi --query-gpu=name; amd-smi / rocm-smi "Card Series").
@pytest.mark.parametrize(
    "device_name, key",
    [
        ("NVIDIA B200", "B200"),
        ("NVIDIA B300 SXM6 AC", "B300"),
        ("NVIDIA GB200", "GB200"),
        ("NVIDIA H20", "H20"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX PRO 6000 BLACKWELL SERVER"),
        ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "RTX PRO 6000 BLACKWELL WORKSTATION"),
        ("NVIDIA H100 PCIe", "H100 PCIE"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIE"),
        ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
        ("AMD Instinct MI300X", "MI300X"),
        ("AMD Instinct MI300X VF", "MI300X"),
        ("AMD Instinct MI325X", "MI325X"),
    ],
)
def test_device_names_find_their_datasheet_and_no_complete_entry(device_name, key):
    assert lookup_datasheet(device_name) is DATASHEETS[key]
    assert lookup(device_name) is None  # idle and decode power unknown: never a silent default


def test_every_key_finds_itself_and_unknown_gpus_find_nothing():
    for key, spec in GPU_TABLE.items():
        assert lookup(key) is spec and lookup(key.lower()) is spec
        assert lookup_datasheet(key) is None
    for key, sheet in DATASHEETS.items():
        assert lookup_datasheet(key) is sheet and lookup_datasheet(key.lower()) is sheet
        assert lookup(key) is None
    assert not set(GPU_TABLE) & set(DATASHEETS)
    assert lookup("Tesla T4") is None and lookup("NVIDIA H1000") is None


@pytest.mark.parametrize(
    "device_name, key",
    [
        ("NVIDIA GB200", "GB200"),  # not B200
        ("NVIDIA B200", "B200"),  # not GB200
        ("NVIDIA H200", "H200"),  # not H20
        ("NVIDIA H20", "H20"),  # not H200
        ("NVIDIA GB300", None),  # not B300
        ("NVIDIA RTX 6000 Ada Generation", None),  # the older card, not an RTX PRO 6000
        ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", None),  # 300 W: not the 600 W card
        ("AMD Instinct MI300A", None),  # the APU, not MI300X
    ],
)
def test_no_key_shadows_another(device_name, key):
    found = lookup(device_name) or lookup_datasheet(device_name)
    assert (found.key if found else None) == key


def test_every_entry_is_physically_ordered():
    for spec in GPU_TABLE.values():
        assert 0 < spec.idle_watts < spec.decode_watts <= spec.prefill_watts <= spec.board_limit_watts, spec.key
        assert spec.peak_flops > 1e12 and spec.memory_bandwidth > 1e11, spec.key
    for sheet in DATASHEETS.values():
        assert 0 < sheet.board_limit_watts <= 2000, sheet.key  # per GPU, never per superchip or board
        assert sheet.peak_flops > 1e12 and sheet.memory_bandwidth > 1e11, sheet.key


def test_amd_has_no_nvml_and_nvidia_has():
    assert {key for key, sheet in DATASHEETS.items() if not sheet.nvml} == {"MI300X", "MI325X"}


def test_a_datasheet_needs_the_operators_idle_and_decode_power():
    sheet = DATASHEETS["B200"]
    with pytest.raises(UnknownFigures, match="--idle-watts and --decode-watts"):
        sheet.complete(None, None)
    with pytest.raises(UnknownFigures, match=r"set --decode-watts$"):
        sheet.complete(150.0, None)
    with pytest.raises(UnknownFigures, match=r"set --idle-watts$"):
        sheet.complete(None, 600.0)


@pytest.mark.parametrize("key", sorted(DATASHEETS))
def test_a_completed_datasheet_is_a_gpu_spec_with_prefill_at_the_board_limit(key):
    sheet: DatasheetSpec = DATASHEETS[key]
    spec = sheet.complete(0.1 * sheet.board_limit_watts, 0.6 * sheet.board_limit_watts)
    assert spec.key == key and spec.prefill_watts == spec.board_limit_watts == sheet.board_limit_watts
    assert (spec.peak_flops, spec.memory_bandwidth) == (sheet.peak_flops, sheet.memory_bandwidth)
    assert 0 < spec.idle_watts < spec.decode_watts <= spec.prefill_watts <= spec.board_limit_watts
