"""Several vLLM API-server processes, each with the plugin: prometheus_client's multiprocess mode
(as vLLM runs it with --api-server-count > 1) sums their work on vLLM's page, and each GPU is
measured and published once, by the process the file lock elected. The sidecar, reading their
snapshot files, sees the same."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from exporter.sources import plugin_page
from exporter.sources.plugin import PluginDirectory, WorkReader

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# One API-server process: a plugin runtime on the real prometheus_client in multiprocess mode, a
# stand-in NVML whose counter is at 1000 J then 1003 J, and `generated` tokens counted.
_PROCESS = textwrap.dedent(
    """
    import sys
    import prometheus_client
    from pathlib import Path
    from exporter.plugin.runtime import PluginConfig, Runtime
    from exporter.plugin.state import Identity
    from tests.fakes.pynvml_fake import FakeGpu, FakeNvml
    from tests.unit.plugin.test_steps import iteration

    shared, generated = Path(sys.argv[1]), int(sys.argv[2])
    gpu = FakeGpu(uuid="GPU-one", energy_mj=1_000_000.0)
    config = PluginConfig(directory=shared, lock_directory=shared)
    runtime = Runtime(config, Identity("m", "0", "0", 1.0, None), prometheus_client, load_nvml=lambda: FakeNvml([gpu]))
    runtime.counter.record(None, iteration(generated), 0)
    runtime.publish_once()
    gpu.energy_mj = 1_003_000.0
    runtime.publish_once()
    print("measured" if runtime._lock_file else "counted", flush=True)
    sys.stdin.read()  # hold the lock, as a live API server does, until the test is done
    """
)


def test_work_is_summed_over_processes_and_each_gpu_published_once(tmp_path):
    multiproc, shared = tmp_path / "multiproc", tmp_path / "shared"
    multiproc.mkdir()
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS, str(shared), str(generated)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for generated in (5, 7)
    ]
    try:
        roles = sorted(proc.stdout.readline().strip() for proc in procs)
        assert roles == ["counted", "measured"]

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(multiproc))
        page = plugin_page.parse(generate_latest(registry).decode())
        assert page is not None
        (engine,) = page.engines
        assert engine.generation_tokens == 12
        (gpu,) = page.gpus
        assert gpu.energy_joules == pytest.approx(3.0)  # once, not once per process

        snapshot = WorkReader(_NoPage(), PluginDirectory(shared)).read()
        assert sorted(e.generation_tokens for e in snapshot.engines) == [5, 7]
    finally:
        for proc in procs:
            proc.communicate("", timeout=10)


class _NoPage:
    def read_text(self) -> tuple[str, float]:
        raise AssertionError("the snapshot files answer: vLLM's page must not be read")

    def close(self) -> None:
        pass
