"""dcgm-exporter pages for the DCGM source's tests: the fixtures of tests/fixtures/dcgm (see its
README) and the edits a test makes to them (counters moved on, pod labels dropped), shared by
the unit and the integration tests."""

from __future__ import annotations

import re
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dcgm"
ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
POWER = "DCGM_FI_DEV_POWER_USAGE"

# h100-node-pod-mapping.txt
H100 = [
    "GPU-4c0fcb2a-3a1f-6d2e-9b7c-0e5d8a41f2b3",
    "GPU-9e71d6b0-52c8-0a4f-e3d1-77b2c90f6a15",
    "GPU-1b5e8f3c-d2a7-4e90-86bf-3c4d5e6f7a81",
    "GPU-d83a2c91-7f0e-b5c4-19a6-2e8f0b7d3c52",
    "GPU-62f4a0e7-c19b-3d58-a2e6-9f1b4c8d0e73",
    "GPU-a7c3e5f9-08d2-6b14-c7e0-5a9d3f1b2c64",
    "GPU-f0b9d7c5-6e41-a823-5d7f-1c0e9b8a4d26",
    "GPU-3d6e9a1c-b47f-8025-e9c3-7a2f6d5b1e98",
]
POD = "vllm-llama-3-8b-6f7d9c8b4-x2k4p"  # holds H100 GPUs 0 and 1
NAMESPACE = "inference"
H100_ENERGY_MJ = [48117332471 + 9_371_004 * i for i in range(2)]  # GPUs 0 and 1 on the fixture

# l40s-node-no-pod-mapping.txt
L40S = ["GPU-0e2f7a9c-41d3-5b86-c0e7-8f1a2b3c4d5e", "GPU-7b4d1e8f-a2c6-39e0-d5b7-6c8a9f0e1d2b"]

# a100-node-mig.txt
A100 = ["GPU-5a8c2e4f-0b1d-7c39-e6a2-4f8b0d1c3e57", "GPU-c2e6a0b4-9d7f-1358-b0c4-8e2a6d4f0b19"]
MIG_SMALL_POD = "vllm-small-5c9f7d6b8-qm2rt"  # the 3g.40gb instance on GPU 0, beside others
MIG_LARGE_POD = "vllm-large-84d6c7f9b-7hx5n"  # the only (7g.80gb) instance on GPU 1

_POD_LABELS = re.compile(r',(?:container|namespace|pod|vgpu)="[^"]*"')


def load(name: str) -> str:
    return (FIXTURES / name).read_text()


def with_energy(text: str, millijoules: dict[str, int]) -> str:
    """The page with the energy counter of each named GPU (every copy of it) set."""

    def sample(match: re.Match[str]) -> str:
        labels, value = match.group(1), match.group(2)
        for uuid, mj in millijoules.items():
            if f'UUID="{uuid}"' in labels:
                return f"{ENERGY}{{{labels}}} {mj}"
        return f"{ENERGY}{{{labels}}} {value}"

    return re.sub(rf"^{ENERGY}\{{(.*)\}} (\S+)$", sample, text, flags=re.M)


def without_pod_labels(text: str) -> str:
    """The page as dcgm-exporter serves it when it could not map GPUs to pods for a scrape."""
    return _POD_LABELS.sub("", text)


def without_gpu(text: str, uuid: str) -> str:
    """The page with every sample of one GPU gone."""
    return "".join(line for line in text.splitlines(keepends=True) if f'"{uuid}"' not in line)


def h100_page(gpu0_mj: int, gpu1_mj: int, others_mj: int | None = None) -> str:
    """The pod-mapped H100 node with this pod's two counters set; `others_mj`, where given, sets
    every other GPU's counter (they must never count)."""
    values = {H100[0]: gpu0_mj, H100[1]: gpu1_mj}
    if others_mj is not None:
        values |= dict.fromkeys(H100[2:], others_mj)
    return with_energy(load("h100-node-pod-mapping.txt"), values)
