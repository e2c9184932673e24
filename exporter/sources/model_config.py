"""The served model's size from what start-up can read: a setting, else the model directory's
config.json, else a declared default."""

from __future__ import annotations

import json
from pathlib import Path

from exporter.attribution.model_spec import DEFAULT_PARAMS, ModelSpec, from_config


def resolve_model(
    model_dir: Path | None,
    model_params: float | None,
    bytes_per_param: float | None,
) -> ModelSpec:
    """A setting wins, then a readable config.json in `model_dir`, then the default."""
    if model_params is not None:
        return ModelSpec(model_params, model_params, bytes_per_param or 2.0, 0.0, "setting")
    if model_dir is not None:
        try:
            return from_config(json.loads((model_dir / "config.json").read_text()), bytes_per_param)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable config.json: the default, which build_info's model_spec shows
    return ModelSpec(DEFAULT_PARAMS, DEFAULT_PARAMS, bytes_per_param or 2.0, 0.0, "default")
