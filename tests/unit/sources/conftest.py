import os

import pytest

from exporter.config import ENV_PREFIX
from tests.fakes.pynvml_fake import FakeClock


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """The settings and the GPU selection read these variables; a CI runner may have them set."""
    for var in list(os.environ):
        if var.startswith(ENV_PREFIX) or var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            monkeypatch.delenv(var)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(50.0)
