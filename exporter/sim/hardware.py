"""Step time and the true energy of one engine step on `n` tensor-parallel GPUs, split into the
oracle's classes. The semantics of that split are in `exporter.sim.oracle`.

Roofline: t = overhead + max(FLOPs / (F n eff_c), bytes / (BW n eff_b)), with
  FLOPs = 2 N_active (prefill tokens + decode tokens) + a * (query, context) pairs   (a optional)
  bytes = weight bytes (once per step) + KV read (context tokens x kv_bytes_per_token)
          + KV written (new tokens x kv_bytes_per_token).

Ground truth "component" (A): E = P_idle n t + e_flop FLOPs + e_byte bytes, capped at the board
limit x n x t. e_flop = (prefill_watts - idle) / (F eff_c) and e_byte = (decode_watts - idle) /
(BW eff_b): a purely compute-bound step draws the GpuSpec's prefill power (its board limit for the
GPUs in the table) and a purely bandwidth-bound one its decode power. Energy per FLOP and per byte
does not depend on n; time does.

Ground truth "phase" (B): constant power per GPU by phase: a step with any prefill token at
prefill_watts, a pure decode step at decode_watts, no step at idle_watts. A mixed step is split
by the product's convention (`_shapley`): each part pays its own time (its own FLOPs and bytes at
the roofline's rates, as if it ran alone) at its own phase's power, and the rest, of either sign,
is shared equally.

The default efficiencies and overhead are deliberately not the exporter's defaults (0.5, 0.7,
2 ms), so that a prior built from those is 10-15 % off and a fit has something to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from exporter.attribution.gpu_table import GpuSpec
from exporter.attribution.model_spec import ModelSpec
from exporter.attribution.prior import Coefficients

COMPONENT = "component"
PHASE = "phase"
TRUTHS = (COMPONENT, PHASE)

# Device memory per GPU, to size the KV cache when the engine config does not give a block count.
# Keyed as the GPU table (exporter/attribution/gpu_table.py), whose comments name the datasheets;
# the memory figures come from the same pages unless said otherwise.
GPU_MEMORY_BYTES = {
    "H200": 141e9,
    "H100": 80e9,  # SXM
    "A100": 80e9,  # SXM 80 GB
    "H100 PCIE": 80e9,
    "H100 NVL": 94e9,
    "A100 80GB PCIE": 80e9,
    "A100-PCIE-40GB": 40e9,
    "A100-SXM4-40GB": 40e9,
    "L40S": 48e9,
    "L4": 24e9,
    "A10G": 24e9,  # AWS EC2 G5 page: 24 GB per GPU
    "B200": 180e9,  # MLCommons Inference v6.0, nebius_b200_n1: "NVIDIA B200-SXM-180GB"
    "B300": 288e9,  # NVIDIA Technical Blog, "Inside NVIDIA Blackwell Ultra": 288 GB HBM3e
    "GB200": 186e9,  # NVIDIA GB200 NVL72 spec: up to 13.4 TB HBM3e for 72 GPUs
    "H20": 96e9,  # Tom's Hardware's HGX H20 specification: 96 GB HBM3
    "RTX PRO 6000 BLACKWELL SERVER": 96e9,  # NVIDIA product page: 96 GB GDDR7
    "RTX PRO 6000 BLACKWELL WORKSTATION": 96e9,  # NVIDIA datasheet: 96 GB GDDR7
    "MI300X": 192e9,  # AMD Instinct MI300X data sheet: 192 GB HBM3
    "MI325X": 256e9,  # AMD Instinct MI325X data sheet: 256 GB HBM3E
}

# Models the tests and benchmarks use (bf16). kv_bytes_per_token = 2 (K and V) x layers x KV heads
# x head dim x 2 bytes.
LLAMA_3_8B = ModelSpec(8.03e9, 8.03e9, 2.0, 2 * 32 * 8 * 128 * 2.0, "setting")
LLAMA_2_70B = ModelSpec(69e9, 69e9, 2.0, 2 * 80 * 8 * 128 * 2.0, "setting")


@dataclass(frozen=True, slots=True)
class Roofline:
    compute_efficiency: float = 0.45  # fraction of peak FLOP/s reached
    bandwidth_efficiency: float = 0.8  # fraction of peak memory bandwidth reached
    step_overhead_seconds: float = 0.003  # scheduling and launches: at idle power, no FLOPs or bytes
    # FLOPs per (query token, context token) pair for attention, 4 x layers x heads x head dim;
    # 0 leaves attention FLOPs out (they are a few % at the context lengths of the presets).
    attention_flops_per_pair: float = 0.0


class StepCost(NamedTuple):
    """One step: its duration, its true energy, and the oracle's split of both.
    `energy == e_input + e_cached + e_output` and `seconds == s_input + s_cached + s_output`.
    `ts_input` and `ts_cached` split the energy by time share alone (the phase oracle before the
    mixed-step convention; under the component truth they equal `e_input` and `e_cached`)."""

    seconds: float
    energy: float
    e_input: float
    e_cached: float
    e_output: float
    s_input: float
    s_cached: float
    s_output: float
    ts_input: float
    ts_cached: float


class HardwareModel:
    """The roofline of `gpus` tensor-parallel GPUs of one type serving one model, and the chosen
    ground truth. `step()` is the simulator's hot path: plain float arithmetic."""

    def __init__(
        self, gpu: GpuSpec, model: ModelSpec, gpus: int = 1, truth: str = COMPONENT, roofline: Roofline = Roofline()
    ) -> None:
        if truth not in TRUTHS:
            raise ValueError(f"truth must be one of {TRUTHS}, not {truth!r}")
        if gpus < 1:
            raise ValueError("gpus must be at least 1")
        if not (0 < roofline.compute_efficiency <= 1 and 0 < roofline.bandwidth_efficiency <= 1):
            raise ValueError("efficiencies must be in (0, 1]")
        self.gpu, self.model, self.gpus, self.truth, self.roofline = gpu, model, gpus, truth, roofline
        n = gpus
        self.idle_watts_total = gpu.idle_watts * n
        self.limit_watts_total = gpu.board_limit_watts * n
        self.prefill_watts_total = gpu.prefill_watts * n
        self.decode_watts_total = gpu.decode_watts * n
        self.flops_per_token = 2.0 * model.active_params
        self.weight_bytes = model.weight_bytes
        self.kv_bytes_per_token = model.kv_bytes_per_token
        self.attention_flops_per_pair = roofline.attention_flops_per_pair
        self.overhead = roofline.step_overhead_seconds
        self.flops_rate = gpu.peak_flops * roofline.compute_efficiency * n
        self.byte_rate = gpu.memory_bandwidth * roofline.bandwidth_efficiency * n
        achieved_flops = gpu.peak_flops * roofline.compute_efficiency
        achieved_bandwidth = gpu.memory_bandwidth * roofline.bandwidth_efficiency
        self.joules_per_flop = max(gpu.prefill_watts - gpu.idle_watts, 0.0) / achieved_flops
        self.joules_per_byte = max(gpu.decode_watts - gpu.idle_watts, 0.0) / achieved_bandwidth
        self._phase = truth == PHASE
        self._inv_f = 1.0 / self.flops_rate
        self._inv_b = 1.0 / self.byte_rate

    def step(
        self,
        prefill: int,
        decode: int,
        own_context: float,
        hit_context: float,
        prefill_pairs: float,
        decode_context: float,
    ) -> StepCost:
        """`prefill`: prompt tokens computed this step (chunks, recomputation included);
        `decode`: decode tokens (one per decoding sequence); `own_context` / `hit_context`: KV
        tokens the prefill chunks read that the sequences computed themselves / got from the
        prefix cache; `prefill_pairs`: (query, context) pairs of the prefill chunks (for
        attention FLOPs); `decode_context`: KV tokens the decode tokens read."""
        inv_f = self._inv_f
        inv_b = self._inv_b
        kv = self.kv_bytes_per_token
        f_in = self.flops_per_token * prefill + self.attention_flops_per_pair * prefill_pairs
        f_out = self.flops_per_token * decode + self.attention_flops_per_pair * decode_context
        b_in = kv * (prefill + own_context)
        b_cached = kv * hit_context
        b_out = self.weight_bytes + kv * (decode_context + decode)
        t_compute = (f_in + f_out) * inv_f
        t_bytes = (b_in + b_cached + b_out) * inv_b
        seconds = self.overhead + (t_compute if t_compute > t_bytes else t_bytes)
        # Time shares: each class's own compute and transfer time, the overhead with the output
        # (it is the per-step cost, like the weight stream).
        tau_in = f_in * inv_f + b_in * inv_b
        tau_cached = b_cached * inv_b
        tau = tau_in + tau_cached + f_out * inv_f + b_out * inv_b + self.overhead
        share_in = tau_in / tau
        share_cached = tau_cached / tau
        if self._phase:
            energy = (self.prefill_watts_total if prefill > 0 else self.decode_watts_total) * seconds
            e_in, e_cached = self._shapley(energy, tau_in + tau_cached, tau, share_in, share_cached)
            ts_in, ts_cached = energy * share_in, energy * share_cached
        else:
            static = self.idle_watts_total * seconds
            d_in = self.joules_per_flop * f_in + self.joules_per_byte * b_in
            d_cached = self.joules_per_byte * b_cached
            d_out = self.joules_per_flop * f_out + self.joules_per_byte * b_out
            dynamic = d_in + d_cached + d_out
            room = self.limit_watts_total * seconds - static
            if dynamic > room:  # power cap: every dynamic part shrinks in proportion
                scale = room / dynamic if room > 0 else 0.0
                d_in *= scale
                d_cached *= scale
                dynamic = room if room > 0 else 0.0
            energy = static + dynamic
            e_in = d_in + static * share_in
            e_cached = d_cached + static * share_cached
            ts_in, ts_cached = e_in, e_cached
        s_in = seconds * share_in
        s_cached = seconds * share_cached
        return StepCost(
            seconds,
            energy,
            e_in,
            e_cached,
            energy - e_in - e_cached,
            s_in,
            s_cached,
            seconds - s_in - s_cached,
            ts_in,
            ts_cached,
        )

    def _shapley(
        self, energy: float, own_prefill: float, own_total: float, share_in: float, share_cached: float
    ) -> tuple[float, float]:
        """The product's convention for a step, in the phase world: the prefill part (input and
        cached input) and the decode part (output, with the weight stream and the overhead, as
        `--step-cost-policy output` places them) each pay their own time at their own phase's
        power, and what the step draws beyond the sum of those (the interaction) is shared
        equally. A part's own time is what its own FLOPs and bytes take at the roofline's rates
        (`own_prefill`, and `own_total` less it for decode), as the product's time model counts
        them: the step is shorter than their sum where compute and memory traffic overlap, so the
        interaction is negative there and positive where the step's prefill power lifts the
        decode part's draw. Returns (input, cached) energy; output takes the rest. A step
        without prefill is all decode's."""
        share_prefill = share_in + share_cached
        if share_prefill <= 0:
            return 0.0, 0.0
        own_prefill_joules = self.prefill_watts_total * own_prefill
        own_decode_joules = self.decode_watts_total * (own_total - own_prefill)
        prefill = own_prefill_joules + 0.5 * (energy - own_prefill_joules - own_decode_joules)
        return prefill * share_in / share_prefill, prefill * share_cached / share_prefill

    def marginal_coefficients(self) -> Coefficients:
        """Ground truth A's energy above idle per unit of each of the exporter's cost drivers
        (`exporter.attribution.prior.Coefficients`, all GPUs together), before any power cap:
        input = a computed prompt token's FLOPs and KV write; cached_input = one KV read;
        output = a decode token's FLOPs and KV write; step = the weight stream; kv = one
        context token's KV read. Attention FLOPs, when enabled, come on top and are not here.
        Under ground truth B there is no such thing: it raises ValueError."""
        if self._phase:
            raise ValueError("the phase ground truth has no marginal cost per unit")
        kv = self.joules_per_byte * self.kv_bytes_per_token
        token = self.joules_per_flop * self.flops_per_token + kv
        step = self.joules_per_byte * self.weight_bytes
        return Coefficients(input=token, cached_input=kv, output=token, step=step, kv=kv)

    def kv_cache_blocks(self, block_size: int, memory_utilization: float = 0.9) -> int:
        """Blocks that fit beside the weights in `memory_utilization` of the GPUs' memory
        (16384 when the model's KV bytes per token are unknown)."""
        if self.kv_bytes_per_token <= 0:
            return 16384
        memory = GPU_MEMORY_BYTES.get(self.gpu.key, 80e9) * self.gpus * memory_utilization
        free = memory - self.weight_bytes
        if free <= 0:
            raise ValueError(
                f"a {self.weight_bytes / 1e9:.0f} GB model does not fit on {self.gpus} x {self.gpu.key}; "
                "use more GPUs or set num_gpu_blocks"
            )
        return int(free / (self.kv_bytes_per_token * block_size))


__all__ = [
    "COMPONENT",
    "GPU_MEMORY_BYTES",
    "LLAMA_2_70B",
    "LLAMA_3_8B",
    "PHASE",
    "TRUTHS",
    "HardwareModel",
    "Roofline",
    "StepCost",
]
