"""The simulator knows the memory of every GPU the table knows, so a KV cache is never sized from
the 80 GB fallback for a GPU that has a published figure."""

from exporter.attribution.gpu_table import DATASHEETS, GPU_TABLE
from exporter.sim.hardware import GPU_MEMORY_BYTES


def test_every_gpu_of_the_table_has_its_memory():
    assert set(GPU_MEMORY_BYTES) == set(GPU_TABLE) | set(DATASHEETS)
    assert all(16e9 <= memory <= 300e9 for memory in GPU_MEMORY_BYTES.values())
