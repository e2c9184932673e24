"""The size of the served model, which sets the roofline prior: parameters (weights streamed
once per decode step, 2 FLOPs per parameter per token) and KV bytes per context token.
`from_config` counts them from a Hugging Face config.json already read; reading it is a
source's job (`exporter.sources.model_config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_DTYPE_BYTES = {
    "float32": 4.0,
    "float": 4.0,
    "float16": 2.0,
    "half": 2.0,
    "bfloat16": 2.0,
    "float8_e4m3fn": 1.0,
    "float8_e5m2": 1.0,
    "int8": 1.0,
}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    active_params: float  # per token: what the FLOPs follow
    total_params: float  # what each decode step streams from memory
    bytes_per_param: float
    kv_bytes_per_token: float  # 0 when unknown
    source: str  # "config.json", "setting" or "default"

    @property
    def weight_bytes(self) -> float:
        return self.total_params * self.bytes_per_param


DEFAULT_PARAMS = 8e9  # an 8 B model, declared and visible in build_info when nothing better is known


def from_config(config: dict[str, Any], bytes_per_param: float | None = None) -> ModelSpec:
    """Count a decoder-only transformer's parameters from its Hugging Face config.json."""
    text = config.get("text_config") or config
    hidden = int(text["hidden_size"])
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    vocab = int(text.get("vocab_size", 32000))
    inter = int(text.get("intermediate_size") or 4 * hidden)
    experts = int(text.get("num_local_experts") or text.get("num_experts") or 0)
    per_token_experts = int(text.get("num_experts_per_tok") or 0)
    moe_inter = int(text.get("moe_intermediate_size") or inter)

    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    dense_mlp = 3 * hidden * inter
    if experts and per_token_experts:
        mlp_total = experts * 3 * hidden * moe_inter
        mlp_active = per_token_experts * 3 * hidden * moe_inter
    else:
        mlp_total = mlp_active = dense_mlp
    embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings", config.get("tie_word_embeddings")) else 2)
    total = layers * (attention + mlp_total) + embeddings
    active = layers * (attention + mlp_active) + embeddings

    if bytes_per_param is None:
        dtype = str(text.get("torch_dtype") or config.get("torch_dtype") or text.get("dtype") or "bfloat16")
        bytes_per_param = _DTYPE_BYTES.get(dtype.removeprefix("torch."), 2.0)
    kv_bytes = 2.0 * layers * kv_heads * head_dim * bytes_per_param
    return ModelSpec(float(active), float(total), bytes_per_param, kv_bytes, "config.json")
