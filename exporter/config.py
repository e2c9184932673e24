"""Every setting, validated once at start-up. Flags beat environment (`TOKEN_ECONOMY_*`),
which beats an optional TOML file, which beats the defaults."""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from exporter.attribution.gpu_table import GPU_TABLE, lookup
from exporter.sources.energy import EnergyMode, EnergyOptions
from exporter.sources.gpu_discovery import parse_gpu_list

ENV_PREFIX = "TOKEN_ECONOMY_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"

# Kubernetes names: a pod's is a DNS subdomain, a namespace's a DNS label.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class StaticPowerPolicy(StrEnum):
    OCCUPANCY = "occupancy"  # idle power while busy is split by estimated time occupancy
    IDLE = "idle"  # idle power always stays idle (Kepler-like)


class StepCostPolicy(StrEnum):
    OUTPUT = "output"  # the weight stream paid once per engine step belongs to decoding
    TOKENS = "tokens"  # shared by every token the step computed


class Estimator(StrEnum):
    FITTED = "fitted"  # Kalman fit of marginal costs, shrunk to the roofline prior
    PRIOR = "prior"  # the roofline prior (or explicit weights) as they are


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    vllm_url: str = Field("http://127.0.0.1:8000", description="Base URL of the vLLM OpenAI server.")
    vllm_metrics_path: str = Field("/metrics", description="Path of vLLM's Prometheus page.")
    vllm_timeout: float | None = Field(
        None, gt=0, le=60, description="Seconds to wait for vLLM's page; shorter than the interval."
    )
    vllm_max_response_bytes: int = Field(
        8 * 1024 * 1024, ge=64 * 1024, description="Larger pages are refused and counted as errors."
    )
    listen_address: str = Field("0.0.0.0:9477", description="host:port of our own /metrics.")
    interval: float = Field(5.0, ge=0.1, le=3600, description="Seconds between collection ticks.")
    gpus: str | None = Field(
        None,
        description="Comma-separated GPU indices or UUIDs; by default this process's CUDA_VISIBLE_DEVICES, "
        "else vLLM's GPUs, else this process's NVIDIA_VISIBLE_DEVICES, else all it sees.",
    )
    energy_source: EnergyMode = Field(EnergyMode.AUTO, description="auto, plugin, nvml, dcgm or phase-model.")
    plugin_dir: Path | None = Field(
        None,
        description="Directory the vLLM plugin writes its snapshot files to (shared with vLLM's container): "
        "read instead of vLLM's page.",
    )
    power_sample_hz: float = Field(
        20.0, ge=10, le=1000, description="Power sampling rate where a GPU lacks the energy counter."
    )
    dcgm_url: str | None = Field(
        None, description="The node's dcgm-exporter page (http://<node IP>:9400/metrics): GPU energy without NVML."
    )
    dcgm_pod: str | None = Field(
        None, description="This pod's name, as dcgm-exporter's pod labels give it (downward API: metadata.name)."
    )
    dcgm_namespace: str | None = Field(
        None, description="This pod's namespace, as dcgm-exporter's labels give it (downward API: metadata.namespace)."
    )
    gpu_type: str | None = Field(
        None, description="GPU table entry (H100, H200, A100, L40S, L4, A10G) when NVML cannot name it."
    )
    gpu_count: int | None = Field(None, ge=1, le=64, description="GPUs for the phase model when --gpus is not given.")
    idle_watts: float | None = Field(None, gt=0, description="Per-GPU idle power; overrides the GPU table.")
    prefill_watts: float | None = Field(
        None, gt=0, description="Per-GPU power while prefilling; overrides the GPU table."
    )
    decode_watts: float | None = Field(None, gt=0, description="Per-GPU power while decoding; overrides the GPU table.")
    model_dir: Path | None = Field(None, description="Directory holding the served model's config.json.")
    model_params: float | None = Field(None, gt=0, description="Active parameters of the model (e.g. 8e9).")
    bytes_per_param: float | None = Field(None, gt=0, le=8, description="Weight bytes per parameter (1 for FP8).")
    input_joules_per_token: float | None = Field(
        None, ge=0, description="Explicit marginal energy of a computed prompt token."
    )
    cached_input_joules_per_token: float | None = Field(
        None, ge=0, description="Explicit marginal energy of a prefix-cache hit."
    )
    output_joules_per_token: float | None = Field(
        None, ge=0, description="Explicit marginal energy of an output token (per-token part)."
    )
    step_joules: float | None = Field(
        None, ge=0, description="Explicit marginal energy of one engine step (weight stream)."
    )
    kv_joules_per_token: float | None = Field(
        None, ge=0, description="Explicit marginal energy of reading one context token's KV."
    )
    compute_efficiency: float = Field(0.5, gt=0, le=1, description="Fraction of peak FLOP/s reached by prefill.")
    bandwidth_efficiency: float = Field(
        0.7, gt=0, le=1, description="Fraction of peak memory bandwidth reached by decode."
    )
    step_overhead_seconds: float = Field(0.002, ge=0, le=1, description="Fixed time of one engine step, at idle power.")
    static_power_policy: StaticPowerPolicy = Field(StaticPowerPolicy.OCCUPANCY, description="occupancy or idle.")
    step_cost_policy: StepCostPolicy = Field(StepCostPolicy.OUTPUT, description="output or tokens.")
    estimator: Estimator = Field(Estimator.FITTED, description="fitted or prior: how marginal costs are found.")
    fit_window_seconds: float = Field(
        30.0, ge=1, le=3600, description="Seconds of work gathered before one estimator update."
    )
    prior_reversion_seconds: float = Field(
        3600.0, ge=60, description="Time constant of the estimator's pull back to the prior."
    )
    measurement_noise: float = Field(0.05, gt=0, le=1, description="Relative noise of one window's measured energy.")
    identified_ratio: float = Field(
        0.5, gt=0, le=1, description="Posterior/prior uncertainty below which input and output count as identified."
    )
    idle_window: int = Field(120, ge=3, le=100_000, description="Idle intervals in the idle-power median.")
    idle_min_samples: int = Field(5, ge=1, description="Idle intervals needed before the median replaces the prior.")
    prior_relative_stddev: float = Field(0.5, gt=0, le=10, description="Relative uncertainty of the roofline prior.")
    gpu_hourly_price: float = Field(0.0, ge=0, description="Rental price of one GPU for one hour.")
    currency: str = Field("USD", description="ISO 4217 code used as the `currency` label.")
    electricity_price_per_kwh: float = Field(
        0.0, ge=0, description="Electricity price; leave 0 where the rental price already includes power."
    )
    electricity_with_rental: bool = Field(
        False, description="Count electricity on top of a GPU rental price (most rental prices include power)."
    )
    pue: float = Field(1.0, ge=1, le=5, description="Data-centre power usage effectiveness.")
    grid_carbon_intensity: float = Field(0.0, ge=0, le=5000, description="Grams CO2e per kWh drawn from the grid.")
    log_format: LogFormat = Field(LogFormat.JSON, description="json or console.")
    log_level: str = Field("info", description="debug, info, warning or error.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_FILE_ENV)
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("vllm_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        try:
            _ = parts.port  # raises on a port that is not a number in range
        except ValueError as err:
            raise ValueError(f"bad port: {err}") from None
        return value.rstrip("/")

    @field_validator("dcgm_url")
    @classmethod
    def _dcgm_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        cls._url(value)
        parts = urlsplit(value)
        return value.rstrip("/") + "/metrics" if parts.path in ("", "/") else value

    @field_validator("dcgm_pod")
    @classmethod
    def _dcgm_pod(cls, value: str | None) -> str | None:
        if value is not None and not (len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value)):
            raise ValueError("must be a Kubernetes pod name: lower-case letters, digits, '-' and '.'")
        return value

    @field_validator("dcgm_namespace")
    @classmethod
    def _dcgm_namespace(cls, value: str | None) -> str | None:
        if value is not None and not (len(value) <= 63 and _DNS_LABEL.fullmatch(value)):
            raise ValueError("must be a Kubernetes namespace: at most 63 lower-case letters, digits and '-'")
        return value

    @field_validator("vllm_metrics_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen_address(value)
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: str | None) -> str | None:
        if value is not None:
            parse_gpu_list(value)
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError("must be a three-letter ISO 4217 code such as USD or EUR")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("debug", "info", "warning", "error"):
            raise ValueError("must be debug, info, warning or error")
        return value

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type(cls, value: str | None) -> str | None:
        if value is not None and lookup(value) is None:
            raise ValueError(f"unknown GPU; known: {', '.join(sorted(GPU_TABLE))}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = []
        if self.vllm_timeout is not None and self.vllm_timeout >= self.interval:
            problems.append(
                ("vllm_timeout", f"must be shorter than interval ({flag_name('interval')}, now {self.interval:g} s)")
            )
        if self.model_dir is not None and not (self.model_dir / "config.json").is_file():
            problems.append(("model_dir", f"no config.json in {self.model_dir}"))
        problems.extend(self._dcgm_problems())
        if problems:
            # Raised against the fields themselves, so the message names each setting's flag.
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(type=PydanticCustomError("inconsistent", message), loc=(field,), input=None)
                    for field, message in problems
                ],
            )
        return self

    def _dcgm_problems(self) -> list[tuple[str, str]]:
        problems = []
        if self.energy_source is EnergyMode.DCGM and self.dcgm_url is None:
            problems.append(("dcgm_url", f"must be set when energy_source is dcgm ({flag_name('energy_source')})"))
        for field, other in (("dcgm_pod", "dcgm_namespace"), ("dcgm_namespace", "dcgm_pod")):
            if getattr(self, field) is None and getattr(self, other) is not None:
                problems.append((field, f"must be set with {other} ({flag_name(other)})"))
        has_uuids = any(not item.isdigit() for item in parse_gpu_list(self.gpus)) if self.gpus else False
        if self.dcgm_url is not None and self.dcgm_pod is None and self.dcgm_namespace is None and not has_uuids:
            problems.append(
                (
                    "dcgm_url",
                    f"needs dcgm_pod and dcgm_namespace ({flag_name('dcgm_pod')}, {flag_name('dcgm_namespace')}) "
                    f"or GPU UUIDs in gpus ({flag_name('gpus')}) to tell this pod's GPUs on the node's page",
                )
            )
        return problems

    @property
    def electricity_billing(self) -> str:
        """counted, excluded (inside the rental price) or unpriced: a build_info label."""
        if self.electricity_price_per_kwh <= 0:
            return "unpriced"
        if self.gpu_hourly_price > 0 and not self.electricity_with_rental:
            return "excluded"
        return "counted"

    @property
    def effective_vllm_timeout(self) -> float:
        return self.vllm_timeout if self.vllm_timeout is not None else min(2.0, 0.8 * self.interval)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen_address(self.listen_address)

    @property
    def energy_options(self) -> EnergyOptions:
        return EnergyOptions(
            energy_source=self.energy_source,
            gpus=self.gpus,
            gpu_type=self.gpu_type,
            gpu_count=self.gpu_count,
            power_sample_hz=self.power_sample_hz,
            dcgm_url=self.dcgm_url,
            dcgm_pod=self.dcgm_pod,
            dcgm_namespace=self.dcgm_namespace,
            dcgm_timeout=min(2.0, 0.8 * self.interval),
        )


def parse_listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("must be host:port with a port from 0 (any free port) to 65535, e.g. 0.0.0.0:9477")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


# What a setting whose default is worked out at start-up defaults to, in words (`run --help`, README).
COMPUTED_DEFAULTS = {
    "vllm_timeout": "min(2 s, 0.8 × interval)",
    "gpus": "found at start-up",  # the description says how
    "gpu_type": "from NVML, else H100",
    "gpu_count": "the GPUs found, else 1",
    "plugin_dir": "none (read vLLM's page)",
    "dcgm_url": "none",
    "dcgm_pod": "none",
    "dcgm_namespace": "none",
    "idle_watts": "GPU table",
    "prefill_watts": "GPU table",
    "decode_watts": "GPU table",
    "model_dir": "none",
    "model_params": "from config.json, else 8e9",
    "bytes_per_param": "from config.json, else 2",
    "input_joules_per_token": "roofline",
    "cached_input_joules_per_token": "roofline",
    "output_joules_per_token": "roofline",
    "step_joules": "roofline",
    "kv_joules_per_token": "roofline",
}


def default_text(field: str) -> str:
    """A setting's default as people read it: its value, or how start-up works it out."""
    if field in COMPUTED_DEFAULTS:
        return COMPUTED_DEFAULTS[field]
    default = Settings.model_fields[field].default
    if isinstance(default, bool):
        return str(default).lower()
    return str(getattr(default, "value", default))


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def describe_errors(err: ValidationError) -> list[str]:
    """One line per bad setting, naming its flag and its environment variable."""
    lines = []
    for item in err.errors():
        loc = [str(part) for part in item.get("loc", ()) if part != "__root__"]
        field = loc[0] if loc else ""
        message = item.get("msg", "invalid").removeprefix("Value error, ")
        if field in Settings.model_fields:
            lines.append(f"setting {field} ({flag_name(field)} / {env_name(field)}): {message}")
        else:
            lines.append(f"settings: {message}")
    return lines


def load_settings(overrides: dict[str, Any]) -> Settings:
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
