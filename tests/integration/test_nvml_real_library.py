"""The NVML energy source on the real pynvml and whatever driver this machine has: it opens, or
it refuses with a typed reason; no raw NVMLError escapes."""

import pynvml

from exporter.sources.nvml import NvmlEnergySource, NvmlUnavailable


def test_the_real_module_without_a_driver_is_a_typed_refusal():
    # On a machine with a driver this opens; either way no raw NVMLError may escape.
    try:
        source = NvmlEnergySource(pynvml, None, 20.0)
    except NvmlUnavailable as err:
        assert err.reason in ("library_not_found", "driver_not_loaded", "no_gpus")
    else:
        snapshot = source.read()
        source.close()
        assert snapshot.gpus and all(g.method in ("counter", "power_integration") for g in snapshot.gpus)
