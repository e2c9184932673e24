"""Declared figures for the GPUs we know: phase power for the prior and the phase model, and
the peak rates of the roofline. Published spec-sheet numbers (dense BF16, HBM/GDDR bandwidth,
board power limit) and typical phase power as seen in public serving measurements; they seed
estimates, they are not measurements.

Two tables. `GPU_TABLE` holds the GPUs whose every figure is known: `lookup()` finds them and the
exporter uses them as they are. `DATASHEETS` holds GPUs whose published figures (peak dense BF16,
memory bandwidth, board power limit) are known but whose idle and decode power no public source
gives: those two figures are unknown, never guessed, so `lookup()` does not find these GPUs and
`lookup_datasheet()` does. `DatasheetSpec.complete()` makes a `GpuSpec` of one only with the
operator's own idle and decode power (`--idle-watts`, `--decode-watts`); its prefill power is the
board limit, the rule every entry of `GPU_TABLE` follows (a compute-bound phase runs at the limit).

Every figure names its public source beside its entry. "Sparse" below means a figure NVIDIA prints
with 2:4 structured sparsity (its asterisked figures): the table holds dense figures, so those are
halved."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuSpec:
    key: str
    idle_watts: float
    prefill_watts: float  # compute-bound phase, close to the board limit
    decode_watts: float  # bandwidth-bound phase
    board_limit_watts: float
    peak_flops: float  # dense BF16, FLOP/s
    memory_bandwidth: float  # bytes/s


class UnknownFigures(ValueError):
    """A GPU's datasheet is known but not its idle or decode power, and the operator gave neither."""


@dataclass(frozen=True, slots=True)
class DatasheetSpec:
    """A GPU with published peak rates and board limit but no public idle or decode power."""

    key: str
    board_limit_watts: float  # board power limit (TDP / TGP / TBP), per GPU
    peak_flops: float  # dense BF16, FLOP/s
    memory_bandwidth: float  # bytes/s
    # False for AMD: there is no NVML, and the exporter reads energy only through NVML or
    # dcgm-exporter, so such a GPU serves only the phase model and the roofline prior
    # (`--gpu-type MI300X --energy-source phase-model`).
    nvml: bool = True
    # The complete entry of the same family (a PCIe card's SXM sibling): the closest figures to
    # assume, loudly, while the operator has not declared idle and decode power.
    family: str | None = None

    def complete(self, idle_watts: float | None, decode_watts: float | None) -> GpuSpec:
        """The GpuSpec with the operator's idle and decode power (per GPU); prefill power is the
        board limit. Raises UnknownFigures naming the settings that are missing."""
        missing = [
            flag for flag, watts in (("--idle-watts", idle_watts), ("--decode-watts", decode_watts)) if watts is None
        ]
        if idle_watts is None or decode_watts is None:
            raise UnknownFigures(
                f"{self.key}: no public source gives its idle and decode power; set {' and '.join(missing)}"
            )
        return GpuSpec(
            self.key,
            idle_watts,
            self.board_limit_watts,
            decode_watts,
            self.board_limit_watts,
            self.peak_flops,
            self.memory_bandwidth,
        )


# Sources of the published figures (peak dense BF16, memory bandwidth, board power limit).
# Prefill power is the board limit in every entry. Idle and decode power are typical phase power
# from public serving measurements; no single public source is named for them (override them with
# --idle-watts and --decode-watts).
GPU_TABLE: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        # NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200/), H200 SXM:
        # BF16 1,979 TFLOPS sparse -> 989; 4.8 TB/s; up to 700 W (MLCommons Inference v4.1,
        # NVIDIA H200-SXM-141GB system description: "H200 TGP 700W").
        GpuSpec("H200", 80.0, 700.0, 420.0, 700.0, 989e12, 4.8e12),
        # NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100/), H100 SXM:
        # BF16 1,979 TFLOPS sparse -> 989; 3.35 TB/s; up to 700 W. (The PCIe and NVL cards have
        # entries of their own in DATASHEETS.)
        GpuSpec("H100", 75.0, 700.0, 380.0, 700.0, 989e12, 3.35e12),
        # NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100/), A100 80GB
        # SXM: BF16 312 TFLOPS dense (624 sparse); 2,039 GB/s; 400 W. (The 40 GB and PCIe parts
        # have entries of their own in DATASHEETS.)
        GpuSpec("A100", 63.0, 400.0, 250.0, 400.0, 312e12, 2.04e12),
        # NVIDIA L40S datasheet (nvidia.com/en-us/data-center/l40s/): BF16 362.05 TFLOPS dense
        # (733 sparse); 864 GB/s; 350 W.
        GpuSpec("L40S", 35.0, 350.0, 230.0, 350.0, 362e12, 0.864e12),
        # NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4/): BF16 242 TFLOPS sparse -> 121;
        # 300 GB/s; 72 W.
        GpuSpec("L4", 16.0, 72.0, 60.0, 72.0, 121e12, 0.3e12),
        # A10G is an AWS-only part (EC2 G5, aws.amazon.com/ec2/instance-types/g5/: 24 GB per
        # GPU); neither NVIDIA nor AWS publishes its peak BF16, bandwidth or board limit. No public
        # source was found for these figures; they are kept as they were.
        GpuSpec("A10G", 25.0, 300.0, 190.0, 300.0, 70e12, 0.6e12),
    )
}

# Today's GPUs: published figures only. Idle and decode power are unknown for every one of them.
DATASHEETS: dict[str, DatasheetSpec] = {
    spec.key: spec
    for spec in (
        # HGX B200, per GPU. Peak: NVIDIA HGX B200 spec (nvidia.com/en-us/data-center/hgx/)
        # "FP16/BF16 Tensor Core 36 PFLOPS" sparse for 8 GPUs -> 4.5 sparse -> 2.25 PFLOPS dense
        # per GPU. Bandwidth: NVIDIA DGX B200 spec (nvidia.com/en-us/data-center/dgx-b200/),
        # 64 TB/s HBM3e for 8 GPUs -> 8 TB/s per GPU (some per-GPU tables print 7.7 TB/s).
        # Limit: 1,000 W, MLCommons Inference v6.0, Nebius nebius_b200_n1 system description
        # ("B200 TGP 1000W").
        DatasheetSpec("B200", 1000.0, 2.25e15, 8e12),
        # HGX B300 (Blackwell Ultra), per GPU. Peak: NVIDIA HGX B300 spec
        # (nvidia.com/en-us/data-center/hgx/) "FP16/BF16 Tensor Core 36 PFLOPS" sparse for 8
        # GPUs -> 2.25 PFLOPS dense per GPU (BF16 did not rise over B200). Bandwidth: 8 TB/s per
        # GPU, NVIDIA Technical Blog, "Inside NVIDIA Blackwell Ultra: The Chip Powering the AI
        # Factory Era" (developer.nvidia.com/blog/inside-nvidia-blackwell-ultra-the-chip-powering-
        # the-ai-factory-era/). Limit: 1,100 W for the HGX part (Verda's per-GPU table, below
        # under GB200; 1,400 W is the GB300 part, not this one).
        DatasheetSpec("B300", 1100.0, 2.25e15, 8e12),
        # GB200, per GPU. A GB200 superchip is 2 Blackwell GPUs and 1 Grace CPU; the figures are
        # its GPU's, divided by GPU count. Peak: NVIDIA GB200 NVL72 spec
        # (nvidia.com/en-us/data-center/gb200-nvl72/) "FP16/BF16 Tensor Core 360 PFLOPS" sparse
        # for 72 GPUs (10 PFLOPS per superchip) -> 5 sparse -> 2.5 PFLOPS dense per GPU.
        # Bandwidth: same page, 576 TB/s HBM3e for 72 GPUs (16 TB/s per superchip) -> 8 TB/s per
        # GPU. Limit: 1,200 W per GPU, the GB200 GPU's configured maximum in NVIDIA's Blackwell
        # datasheet as quoted by Verda, "NVIDIA GB300 NVL72: GPU Architecture & Performance"
        # (verda.com/blog/gb300-nvl72-architecture) and G. Lockwood's notes
        # (glennklockwood.com/garden/processors/B200); the superchip's 2,700 W includes the Grace
        # CPU and is not divided.
        DatasheetSpec("GB200", 1200.0, 2.5e15, 8e12),
        # H20 (96 GB HBM3). NVIDIA publishes no datasheet for it; the figures are those of the
        # HGX H20 specification as published by Tom's Hardware, "New Nvidia AI GPUs designed to
        # get around US export bans come to China" (tomshardware.com, from Vipera's listing):
        # BF16 Tensor 148 TFLOPS (dense: FP8 is 296, and SemiAnalysis's 6.68x against H100's
        # 989 dense), 4.0 TB/s; 400 W TDP (TweakTown, "NVIDIA's tweaked H20 AI GPU enters mass
        # production in Q2 2024", tweaktown.com). The later 141 GB HBM3e H20 has more bandwidth.
        DatasheetSpec("H20", 400.0, 148e12, 4.0e12),
        # RTX PRO 6000 Blackwell Server Edition: NVIDIA product page
        # (nvidia.com/en-us/data-center/rtx-pro-6000-blackwell-server-edition/): FP16/BF16
        # 1 PFLOPS sparse -> 0.5 PFLOPS dense; 1,597 GB/s GDDR7; max power configurable up to
        # 600 W.
        DatasheetSpec("RTX PRO 6000 BLACKWELL SERVER", 600.0, 0.5e15, 1.597e12),
        # RTX PRO 6000 Blackwell Workstation Edition: NVIDIA datasheet
        # (workstation-blackwell-rtx-pro-6000-workstation-edition-nvidia-us-3519208-web.pdf):
        # 1,792 GB/s GDDR7, total board power 600 W. It prints no BF16 figure, only 4,000 AI TOPS
        # (FP4, sparse); dense BF16 is 4,000 / 2 (sparse) / 4 (FP4 -> BF16 on Blackwell) =
        # 0.5 PFLOPS, the same silicon (GB202, 188 SMs) as the Server Edition's 0.5. (The Max-Q
        # Workstation Edition, 300 W, is a different entry and left out.)
        DatasheetSpec("RTX PRO 6000 BLACKWELL WORKSTATION", 600.0, 0.5e15, 1.792e12),
        # The lower-power cards of families above, whose figures differ from the SXM parts the
        # complete entries describe (NVML reports "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA
        # A100 80GB PCIe", "NVIDIA A100-PCIE-40GB", "NVIDIA A100-SXM4-40GB"); their idle and
        # decode power are not published either.
        # NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100/), H100 PCIe:
        # BF16 1,513 TFLOPS sparse -> 756.5; 2 TB/s; max TDP 300-350 W (configurable).
        DatasheetSpec("H100 PCIE", 350.0, 756.5e12, 2.0e12, family="H100"),
        # Same datasheet, H100 NVL (94 GB): BF16 1,671 TFLOPS sparse -> 835.5; 3.9 TB/s; max
        # TDP 350-400 W (configurable).
        DatasheetSpec("H100 NVL", 400.0, 835.5e12, 3.9e12, family="H100"),
        # NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100/): BF16 312
        # TFLOPS dense (624 sparse) on every part; A100 80GB PCIe 1,935 GB/s, 300 W; A100 40GB
        # PCIe 1,555 GB/s, 250 W; A100 40GB SXM 1,555 GB/s, 400 W.
        DatasheetSpec("A100 80GB PCIE", 300.0, 312e12, 1.935e12, family="A100"),
        DatasheetSpec("A100-PCIE-40GB", 250.0, 312e12, 1.555e12, family="A100"),
        DatasheetSpec("A100-SXM4-40GB", 400.0, 312e12, 1.555e12, family="A100"),
        # AMD Instinct MI300X data sheet (amd.com/en/products/accelerators/instinct/mi300/
        # mi300x.html): peak BF16 1,307.4 TFLOPS dense (2,614.9 with sparsity); 5.3 TB/s HBM3;
        # 750 W peak board power (also MLCommons Inference v4.1, AMD 8xMI300X system
        # description: "AMD Instinct MI300X-NPS1-SPX-192GB-750W"). No NVML: phase model only.
        DatasheetSpec("MI300X", 750.0, 1307.4e12, 5.3e12, nvml=False),
        # AMD Instinct MI325X data sheet (amd.com/en/products/accelerators/instinct/mi300/
        # mi325x.html): peak BF16 1,307.4 TFLOPS dense (same CDNA 3 compute as MI300X); 6 TB/s
        # HBM3E; 1,000 W peak board power. No NVML: phase model only.
        DatasheetSpec("MI325X", 1000.0, 1307.4e12, 6.0e12, nvml=False),
    )
}

# Longest keys first, over both tables, so that "L40S" wins over "L4", and a key is matched only
# as a whole word: "H200" is never read as "H20", nor "GB200" as "B200".
_PATTERNS = [
    (re.compile(rf"(?<![A-Z0-9]){re.escape(key)}(?![A-Z0-9])"), key)
    for key in sorted({*GPU_TABLE, *DATASHEETS}, key=len, reverse=True)
]


def _match(name: str) -> str | None:
    upper = name.upper()
    for pattern, key in _PATTERNS:
        if pattern.search(upper):
            return key
    return None


def lookup(name: str) -> GpuSpec | None:
    """Match an NVML device name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB") or a key.
    None for a GPU only `DATASHEETS` knows: its idle and decode power are unknown."""
    key = _match(name)
    return GPU_TABLE.get(key) if key is not None else None


def lookup_datasheet(name: str) -> DatasheetSpec | None:
    """Match an NVML or amd-smi device name ("NVIDIA B300 SXM6 AC", "AMD Instinct MI300X") or a
    key against the GPUs whose idle and decode power are unknown."""
    key = _match(name)
    return DATASHEETS.get(key) if key is not None else None
