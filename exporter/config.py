"""Every setting, validated once at start-up. Flags beat environment (`TOKEN_ECONOMY_*`),
which beats an optional TOML file, which beats the defaults."""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from exporter.attribution.api_prices import ApiPrice, parse_api_prices
from exporter.attribution.gpu_table import DATASHEETS, GPU_TABLE, lookup, lookup_datasheet
from exporter.redact import redact_url
from exporter.sources.energy import EnergyMode, EnergyOptions
from exporter.sources.gpu_discovery import parse_gpu_list

ENV_PREFIX = "TOKEN_ECONOMY_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"

# Kubernetes names: a pod's is a DNS subdomain, a namespace's a DNS label.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

# Upper bounds of the numeric settings, in physical units: generous, but finite, so a typo (a
# value in mW, an exponent too many) stops start-up instead of reaching the exposition.
GIB = 1024**3  # byte caps: vLLM's page is a few hundred kB
MAX_GPU_WATTS = 10_000.0  # one GPU board draws at most ~1.2 kW today
MAX_PARAMS = 1e13  # active parameters: the largest models have ~1e12
MAX_TOKEN_JOULES = 10_000.0  # a token costs ~0.01-1 J: 1e4 J is 64 GPUs at 10 kW for 15 ms
MAX_STEP_JOULES = 1_000_000.0  # one engine step: 64 GPUs at 10 kW for 1.5 s
MAX_PRICE = 1e7  # per GPU-hour or per kWh, in any currency (1e7 leaves room for VND or IDR)
YEAR_SECONDS = 365 * 24 * 3600


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
    # No setting takes inf or nan (TOML and "inf" in a flag would pass a lower bound, then turn the
    # exposition into NaN); every number also has an upper bound in physical units.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, allow_inf_nan=False)

    vllm_url: str = Field("http://127.0.0.1:8000", description="Base URL of the vLLM OpenAI server.")
    vllm_metrics_path: str = Field("/metrics", description="Path of vLLM's Prometheus page.")
    vllm_timeout: float | None = Field(
        None, gt=0, le=60, description="Seconds to wait for vLLM's page; shorter than the interval."
    )
    vllm_max_response_bytes: int = Field(
        8 * 1024 * 1024, ge=64 * 1024, le=GIB, description="Larger pages are refused and counted as errors."
    )
    listen_address: str = Field("0.0.0.0:9477", description="host:port of our own /metrics.")
    web_config_file: Path | None = Field(
        None,
        description="Web config file in Prometheus exporter-toolkit's format: TLS (tls_server_config), basic "
        "auth (basic_auth_users, bcrypt hashes) and extra headers; re-read when it or its certificates change.",
    )
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
        None,
        description="GPU table entry when NVML cannot name it: H100, H200, A100, L40S, L4, A10G; with "
        "--idle-watts and --decode-watts also B200, B300, GB200, H20, RTX PRO 6000 BLACKWELL SERVER or "
        "WORKSTATION, MI300X, MI325X (their datasheets give no idle or decode power).",
    )
    gpu_count: int | None = Field(None, ge=1, le=64, description="GPUs for the phase model when --gpus is not given.")
    idle_watts: float | None = Field(
        None, gt=0, le=MAX_GPU_WATTS, description="Per-GPU idle power; overrides the GPU table."
    )
    prefill_watts: float | None = Field(
        None, gt=0, le=MAX_GPU_WATTS, description="Per-GPU power while prefilling; overrides the GPU table."
    )
    decode_watts: float | None = Field(
        None, gt=0, le=MAX_GPU_WATTS, description="Per-GPU power while decoding; overrides the GPU table."
    )
    model_dir: Path | None = Field(None, description="Directory holding the served model's config.json.")
    model_params: float | None = Field(
        None, ge=1, le=MAX_PARAMS, description="Active parameters of the model (e.g. 8e9)."
    )
    bytes_per_param: float | None = Field(None, ge=0.1, le=8, description="Weight bytes per parameter (1 for FP8).")
    input_joules_per_token: float | None = Field(
        None, ge=0, le=MAX_TOKEN_JOULES, description="Explicit marginal energy of a computed prompt token."
    )
    cached_input_joules_per_token: float | None = Field(
        None, ge=0, le=MAX_TOKEN_JOULES, description="Explicit marginal energy of a prefix-cache hit."
    )
    output_joules_per_token: float | None = Field(
        None, ge=0, le=MAX_TOKEN_JOULES, description="Explicit marginal energy of an output token (per-token part)."
    )
    step_joules: float | None = Field(
        None, ge=0, le=MAX_STEP_JOULES, description="Explicit marginal energy of one engine step (weight stream)."
    )
    kv_joules_per_token: float | None = Field(
        None, ge=0, le=MAX_TOKEN_JOULES, description="Explicit marginal energy of reading one context token's KV."
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
        3600.0, ge=60, le=YEAR_SECONDS, description="Time constant of the estimator's pull back to the prior."
    )
    measurement_noise: float = Field(0.05, gt=0, le=1, description="Relative noise of one window's measured energy.")
    identified_ratio: float = Field(
        0.5, gt=0, le=1, description="Posterior/prior uncertainty below which input and output count as identified."
    )
    idle_window: int = Field(120, ge=3, le=100_000, description="Idle intervals in the idle-power median.")
    idle_min_samples: int = Field(
        5, ge=1, le=100_000, description="Idle intervals needed before the median replaces the prior."
    )
    prior_relative_stddev: float = Field(0.5, gt=0, le=10, description="Relative uncertainty of the roofline prior.")
    gpu_hourly_price: float = Field(0.0, ge=0, le=MAX_PRICE, description="Rental price of one GPU for one hour.")
    currency: str = Field("USD", description="ISO 4217 code used as the `currency` label.")
    electricity_price_per_kwh: float = Field(
        0.0, ge=0, le=MAX_PRICE, description="Electricity price; leave 0 where the rental price already includes power."
    )
    electricity_with_rental: bool = Field(
        False, description="Count electricity on top of a GPU rental price (most rental prices include power)."
    )
    api_prices: str | None = Field(
        None,
        max_length=4096,
        description="Reference API price lists to compare self-hosting with: NAME=INPUT/CACHED_INPUT/OUTPUT per "
        "million tokens in --currency, comma-separated (e.g. mini=0.15/0.075/0.60).",
    )
    break_even_alert_reference: str | None = Field(
        None,
        description="The API price list the break-even alert compares with; default: the first of --api-prices.",
    )
    pue: float = Field(1.0, ge=1, le=5, description="Data-centre power usage effectiveness.")
    grid_carbon_intensity: float = Field(0.0, ge=0, le=5000, description="Grams CO2e per kWh drawn from the grid.")
    state_file: Path | None = Field(
        None,
        description="File that keeps the fitted costs and the idle power across restarts (an emptyDir in "
        "Kubernetes); written atomically after each fit.",
    )
    max_models: int = Field(
        64, ge=1, le=10_000, description="Models followed at once; engines of further models count as model 'other'."
    )
    model_expiry_seconds: float = Field(
        3600.0, ge=60, le=30 * 86400, description="A model not seen for this long leaves the exposition."
    )
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
        if path:  # empty counts as unset, as Kubernetes templates often leave it
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file(path)))
        return tuple(sources)

    @field_validator("vllm_url")
    @classmethod
    def _url(cls, value: str) -> str:
        check_url(value, base=True)
        return value.rstrip("/")

    @field_validator("dcgm_url")
    @classmethod
    def _dcgm_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_url(value, base=False)
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
        _no_blank_or_control(value)
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("plugin_dir", "model_dir", "state_file", "web_config_file")
    @classmethod
    def _directory(cls, value: Path | None) -> Path | None:
        if value is not None:
            _no_control(str(value))
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
        if value is not None and lookup(value) is None and lookup_datasheet(value) is None:
            raise ValueError(f"unknown GPU; known: {', '.join(sorted({*GPU_TABLE, *DATASHEETS}))}")
        return value

    def _datasheet_problems(self) -> list[tuple[str, str]]:
        """A GPU known only by its datasheet needs the power figures no public source gives, and
        one without NVML (AMD) can only be modelled."""
        sheet = lookup_datasheet(self.gpu_type) if self.gpu_type is not None and lookup(self.gpu_type) is None else None
        if sheet is None:
            return []
        problems = []
        missing = [flag_name(f) for f in ("idle_watts", "decode_watts") if getattr(self, f) is None]
        if missing:
            problems.append(
                (
                    "gpu_type",
                    f"{sheet.key}: no public source gives its idle and decode power; set {' and '.join(missing)}",
                )
            )
        if not sheet.nvml and self.energy_source in (EnergyMode.NVML, EnergyMode.DCGM, EnergyMode.PLUGIN):
            problems.append(
                (
                    "gpu_type",
                    f"{sheet.key} has no NVML (nor dcgm-exporter, nor the plugin's readings): set "
                    f"{flag_name('energy_source')} to phase-model or auto",
                )
            )
        return problems

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = []
        if self.vllm_timeout is not None and self.vllm_timeout >= self.interval:
            problems.append(
                ("vllm_timeout", f"must be shorter than interval ({flag_name('interval')}, now {self.interval:g} s)")
            )
        if self.model_dir is not None and not (self.model_dir / "config.json").is_file():
            problems.append(("model_dir", f"no config.json in {self.model_dir}"))
        if self.idle_min_samples > self.idle_window:
            problems.append(
                (
                    "idle_min_samples",
                    f"must be at most idle_window ({flag_name('idle_window')}, now {self.idle_window}), "
                    f"the intervals the median keeps; got {self.idle_min_samples}",
                )
            )
        if self.idle_watts is not None:
            for field in ("prefill_watts", "decode_watts"):
                watts = getattr(self, field)
                if watts is not None and watts < self.idle_watts:
                    problems.append(
                        (
                            field,
                            f"must be at least idle_watts ({flag_name('idle_watts')}, now {self.idle_watts:g} W): "
                            f"a busy GPU draws more than an idle one; got {watts:g} W",
                        )
                    )
        problems.extend(self._dcgm_problems())
        problems.extend(self._datasheet_problems())
        problems.extend(self._api_price_problems())
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

    def _api_price_problems(self) -> list[tuple[str, str]]:
        try:
            references = [price.reference for price in self.api_price_lists]
        except ValueError as err:
            return [("api_prices", str(err))]
        chosen = self.break_even_alert_reference
        if chosen is not None and chosen not in references:
            known = ", ".join(references) or f"none: set {flag_name('api_prices')}"
            return [("break_even_alert_reference", f"{chosen!r} is not one of the API price lists ({known})")]
        return []

    @property
    def api_price_lists(self) -> tuple[ApiPrice, ...]:
        """The reference price lists; ValueError where --api-prices is malformed (validated at start-up)."""
        return parse_api_prices(self.api_prices or "", self.currency)

    @property
    def break_even_reference(self) -> str | None:
        """The price list the break-even alert watches: the one chosen, else the first."""
        lists = self.api_price_lists
        return self.break_even_alert_reference or (lists[0].reference if lists else None)

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
    def vllm_url_display(self) -> str:
        """vLLM's URL as a page or a log line may show it: without its password (exporter.redact)."""
        return redact_url(self.vllm_url)

    @property
    def dcgm_url_display(self) -> str | None:
        """dcgm-exporter's URL as a page or a log line may show it: without its password."""
        return None if self.dcgm_url is None else redact_url(self.dcgm_url)

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
            idle_watts=self.idle_watts,
            decode_watts=self.decode_watts,
            gpu_count=self.gpu_count,
            power_sample_hz=self.power_sample_hz,
            dcgm_url=self.dcgm_url,
            dcgm_pod=self.dcgm_pod,
            dcgm_namespace=self.dcgm_namespace,
            dcgm_timeout=min(2.0, 0.8 * self.interval),
            nvml_timeout=min(1.0, 0.8 * self.interval),
        )


def _no_control(value: str) -> None:
    for position, char in enumerate(value):
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise ValueError(f"must not contain control characters: {char!r} at position {position}")


def _no_blank_or_control(value: str) -> None:
    _no_control(value)
    for position, char in enumerate(value):
        if char.isspace():
            raise ValueError(f"must not contain whitespace: {char!r} at position {position}")


def check_url(value: str, *, base: bool) -> None:
    """An http(s) URL with a host, a valid port and nothing a request would trip on: no
    whitespace or control characters (urlsplit drops a trailing newline silently, the HTTP client
    then fails every tick) and no #fragment; a base URL (vLLM's, the page path goes after it) no
    ?query either. The messages name the part at fault, never the whole URL (it may hold a password)."""
    _no_blank_or_control(value)
    try:
        parts = urlsplit(value)
    except ValueError:  # an unclosed or malformed [IPv6] host
        raise ValueError("must be an http:// or https:// URL with a host (malformed [IPv6] host)") from None
    try:
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError as err:  # its text repeats the port, which may be part of a password: not shown
        problem = "out of range 0-65535" if "range" in str(err) else "not a number"
        raise ValueError(f"must be an http:// or https:// URL with a valid port (the port is {problem})") from None
    if parts.scheme not in ("http", "https"):
        scheme = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(f"must be an http:// or https:// URL with a host ({scheme})")
    if not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host (no host)")
    if parts.fragment or value.endswith("#"):
        raise ValueError("must not have a #fragment")
    if base and (parts.query or value.endswith("?")):
        raise ValueError("must be the server's base URL, without a ?query (the page's path goes after it)")


def config_file(path: str) -> str:
    """The TOML file TOKEN_ECONOMY_CONFIG_FILE (or --config) names: one that is not there stops
    start-up (pydantic-settings would skip it silently, and the file's settings with it)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if not os.path.isfile(path):
        raise IsADirectoryError(f"not a file: {path}")
    return path


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
    "state_file": "none (start from the prior)",
    "web_config_file": "none (plain HTTP, no authentication)",
    "dcgm_url": "none",
    "api_prices": "none (no break-even)",
    "break_even_alert_reference": "the first of api_prices",
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


# Settings whose value may carry a password: an error never repeats it.
SECRET_BEARING = frozenset({"vllm_url", "dcgm_url"})


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e10 else f"{value:g}"


def _is_float(field: str) -> bool:
    return (
        float in get_args(Settings.model_fields[field].annotation) or Settings.model_fields[field].annotation is float
    )


def allowed_range(field: str) -> str | None:
    """A numeric setting's bounds in words, e.g. `> 0 and <= 10000`; None for other settings."""
    bounds = []
    for item in Settings.model_fields[field].metadata:
        if isinstance(item, Gt):
            bounds.append(f"> {_number(item.gt)}")  # type: ignore[arg-type]
        elif isinstance(item, Ge):
            bounds.append(f">= {_number(item.ge)}")  # type: ignore[arg-type]
        elif isinstance(item, Lt):
            bounds.append(f"< {_number(item.lt)}")  # type: ignore[arg-type]
        elif isinstance(item, Le):
            bounds.append(f"<= {_number(item.le)}")  # type: ignore[arg-type]
    return " and ".join(bounds) or None


def describe_errors(err: ValidationError) -> list[str]:
    """One line per bad setting, naming its flag and its environment variable, the value given
    (never for a URL, which may hold a password) and, for a number, the range allowed."""
    lines = []
    for item in err.errors():
        loc = [str(part) for part in item.get("loc", ()) if part != "__root__"]
        field = loc[0] if loc else ""
        message = item.get("msg", "invalid").removeprefix("Value error, ")
        if field in Settings.model_fields:
            given = item.get("input")
            extra = [] if given is None or field in SECRET_BEARING else [f"got {given!r}"]
            bounds = allowed_range(field) if item.get("type") != "inconsistent" else None
            if bounds is not None:
                finite = "finite, " if _is_float(field) else ""
                extra.append(f"allowed: {finite}{bounds}")
            detail = f" ({'; '.join(extra)})" if extra else ""
            lines.append(f"setting {field} ({flag_name(field)} / {env_name(field)}): {message}{detail}")
        elif field:  # a key the TOML file has that no setting has
            lines.append(f"settings: {field}: {message}")
        else:
            lines.append(f"settings: {message}")
    return lines


# TOKEN_ECONOMY_* variables that are ours without being settings: the config file, the vLLM
# plugin's (read in vLLM's process; one ConfigMap may serve both containers) and the test suite's.
OTHER_VARIABLES = frozenset(
    {
        CONFIG_FILE_ENV,
        "TOKEN_ECONOMY_PLUGIN_GPUS",
        "TOKEN_ECONOMY_PLUGIN_NVML",
        "TOKEN_ECONOMY_PLUGIN_PUBLISH_SECONDS",
        "TOKEN_ECONOMY_PLUGIN_STEP_LOGS",
        "TOKEN_ECONOMY_VLLM_PYTHON",
        "TOKEN_ECONOMY_VLLM_VENV",
        "TOKEN_ECONOMY_K8S_TOOLS",  # scripts/test.sh: where helm and kubectl live
        "TOKEN_ECONOMY_TOOLS_CACHE",
    }
)


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """The TOKEN_ECONOMY_* variables no setting reads (a typo, or a setting since renamed), which
    pydantic-settings ignores silently. Names compare as pydantic-settings does, case-insensitively."""
    known = {env_name(field) for field in Settings.model_fields} | OTHER_VARIABLES
    return sorted(name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in known)


def closest_variable(name: str) -> str | None:
    """The setting's variable an unknown one was most likely meant to be, if any is close."""
    names = [env_name(field) for field in Settings.model_fields]
    matches = difflib.get_close_matches(name.upper(), names, n=1, cutoff=0.8)
    return matches[0] if matches else None


def load_settings(overrides: dict[str, Any]) -> Settings:
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
