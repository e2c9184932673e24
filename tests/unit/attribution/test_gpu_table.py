"""The GPU table: NVML's product names find their entry, a key never shadows another, and every
entry's figures are physically ordered. Add a case here with each new entry."""

import pytest

from exporter.attribution.gpu_table import GPU_TABLE, lookup


@pytest.mark.parametrize(
    "nvml_name, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
    ],
)
def test_nvml_names_find_their_entry(nvml_name, key):
    assert lookup(nvml_name) is GPU_TABLE[key]


def test_every_key_finds_itself_and_unknown_gpus_find_nothing():
    for key, spec in GPU_TABLE.items():
        assert lookup(key) is spec and lookup(key.lower()) is spec
    assert lookup("Tesla T4") is None and lookup("NVIDIA H1000") is None


def test_every_entry_is_physically_ordered():
    for spec in GPU_TABLE.values():
        assert 0 < spec.idle_watts < spec.decode_watts <= spec.prefill_watts <= spec.board_limit_watts, spec.key
        assert spec.peak_flops > 1e12 and spec.memory_bandwidth > 1e11, spec.key
