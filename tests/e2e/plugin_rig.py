"""What a vLLM process needs to load our stat-logger plugin the way users install it, and a GPU
it can measure on a machine without one.

- `install_plugin`: this checkout built as a wheel and installed with `pip --target` into a
  folder that goes on vLLM's PYTHONPATH. vLLM then finds the plugin through the entry point in
  the installed metadata, as after `pip install token-economy-exporter` in its image (and as the
  no-rebuild route in deploy/ does with an init container).
- `StandinNvml`: tests/fakes/nvml_standin.c compiled into a libnvidia-ml.so.1 that vLLM's process
  finds through LD_LIBRARY_PATH and drives through NVIDIA's real Python bindings; the test sets
  the GPU's energy counter, power and failure by rewriting a small state file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STANDIN_SOURCE = REPO / "tests" / "fakes" / "nvml_standin.c"
STANDIN_UUID = "GPU-5a1d0000-0000-4000-8000-000000000001"


def install_plugin(vllm_python: str, workdir: Path) -> Path:
    """A folder holding the installed package and its metadata; put it on PYTHONPATH."""
    wheels, target = workdir / "wheel", workdir / "site"
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("token_economy_exporter-*.whl")
    subprocess.run(
        [vllm_python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    return target


class StandinNvml:
    """One stand-in GPU whose counter the test moves."""

    def __init__(self, workdir: Path) -> None:
        self.library_dir = workdir / "nvml"
        self.library_dir.mkdir(parents=True, exist_ok=True)
        compiler = os.environ.get("CC", "cc")
        library = self.library_dir / "libnvidia-ml.so.1"
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(STANDIN_SOURCE)],
            check=True,
            timeout=120,
        )
        self.state = workdir / "nvml-state"
        self.set(energy_mj=10_000_000, power_mw=300_000)

    def set(self, energy_mj: int, power_mw: int, fail: bool = False) -> None:
        partial = self.state.with_suffix(".partial")
        partial.write_text(f"{energy_mj} {power_mw} {int(fail)}\n")
        os.replace(partial, self.state)  # the library never reads half a state

    def environment(self) -> dict[str, str]:
        return {"LD_LIBRARY_PATH": str(self.library_dir), "NVML_STANDIN_STATE": str(self.state)}
