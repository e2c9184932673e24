"""Settings are checked once, at start-up: every number finite and in a physical range, every URL
one a request can use, the settings that depend on each other consistent, the config file there.
A bad value stops start-up with exit status 2 and a line naming the setting, the value and the
range allowed (never a URL's password)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
import structlog
from pydantic import ValidationError

from exporter.cli import main
from exporter.config import (
    CONFIG_FILE_ENV,
    OTHER_VARIABLES,
    Settings,
    allowed_range,
    closest_variable,
    describe_errors,
    env_name,
    unknown_environment,
)

PACKAGE = Path(__file__).resolve().parents[2] / "exporter"


def _numeric(field: str) -> bool:
    annotation = Settings.model_fields[field].annotation
    return annotation in (int, float) or bool({int, float} & set(get_args(annotation)))


NUMERIC = [name for name in Settings.model_fields if _numeric(name)]
URLS = [name for name in Settings.model_fields if name.endswith("_url")]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """The developer's own TOKEN_ECONOMY_* variables must not decide these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("TOKEN_ECONOMY_"):
            monkeypatch.delenv(name)


def _rejected(**values: object) -> list[str]:
    with pytest.raises(ValidationError) as err:
        Settings(**values)
    return describe_errors(err.value)


def test_the_defaults_are_valid():
    Settings()


def test_every_numeric_setting_has_both_bounds():
    """A new number without an upper bound would let 1e308 through to the exposition."""
    assert NUMERIC, "no numeric settings found"
    for name in NUMERIC:
        bounds = allowed_range(name)
        assert bounds and ">" in bounds and "<" in bounds, name


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "Infinity", float("inf"), float("nan")])
@pytest.mark.parametrize("field", NUMERIC)
def test_no_number_is_infinite_or_nan(field, value):
    (line,) = _rejected(**{field: value})
    assert line.startswith(f"setting {field} (--{field.replace('_', '-')} / {env_name(field)}):")
    assert "allowed: " in line


@pytest.mark.parametrize("value", ["1e308", 1e308, 10**30, "-1", -1])
@pytest.mark.parametrize("field", NUMERIC)
def test_no_number_is_out_of_its_physical_range(field, value):
    lines = _rejected(**{field: value})
    assert any(line.startswith(f"setting {field} ") for line in lines)


@pytest.mark.parametrize(
    "field, value",
    [
        ("idle_watts", 0),
        ("decode_watts", 10_001),  # 10 kW per GPU
        ("prefill_watts", 1e6),
        ("model_params", 0.5),
        ("model_params", 1e14),
        ("bytes_per_param", 0.01),
        ("input_joules_per_token", 1e5),
        ("step_joules", 1e7),
        ("vllm_max_response_bytes", 2 * 1024**3),  # 1 GiB at most
        ("vllm_max_response_bytes", 1024),
        ("gpu_hourly_price", 1e8),
        ("electricity_price_per_kwh", -0.01),
        ("prior_reversion_seconds", 1e9),
        ("idle_min_samples", 0),
        ("pue", 0.9),
        ("grid_carbon_intensity", 6000),
        ("interval", 0.01),
    ],
)
def test_unphysical_values_are_refused(field, value):
    (line,) = _rejected(**{field: value})
    assert line.startswith(f"setting {field} ")


def test_physical_values_are_accepted():
    s = Settings(
        idle_watts=90,
        prefill_watts=700,
        decode_watts=450,
        model_params=405e9,
        bytes_per_param=0.5,
        input_joules_per_token=0.02,
        step_joules=2.0,
        gpu_hourly_price=48_000,  # one H100 hour in IDR
        electricity_price_per_kwh=0.31,
        vllm_max_response_bytes=1024**3,
        prior_reversion_seconds=86_400,
        pue=1.4,
        grid_carbon_intensity=820,
    )
    assert (s.model_params, s.vllm_max_response_bytes) == (405e9, 1024**3)


def test_the_error_names_the_setting_the_value_and_the_range():
    (line,) = _rejected(idle_watts="1e308")
    assert line == (
        "setting idle_watts (--idle-watts / TOKEN_ECONOMY_IDLE_WATTS): Input should be less than or equal to 10000 "
        "(got '1e308'; allowed: finite, > 0 and <= 10000)"
    )
    (line,) = _rejected(idle_window="lots")
    assert "got 'lots'" in line and "allowed: >= 3 and <= 100000" in line


@pytest.mark.parametrize("flags", [["--idle-watts", "inf"], ["--gpu-hourly-price", "1e308"], ["--pue", "nan"]])
def test_a_number_out_of_range_exits_2(flags, capsys):
    assert main(["run", *flags]) == 2
    assert "allowed: finite" in capsys.readouterr().err


def test_a_number_from_the_toml_file_is_checked_too(tmp_path, monkeypatch, capsys):
    path = tmp_path / "exporter.toml"
    path.write_text("decode_watts = inf\n")  # TOML has inf and nan literals
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    assert main(["run"]) == 2
    assert "setting decode_watts" in capsys.readouterr().err


def test_an_unknown_key_in_the_toml_file_is_named(tmp_path, monkeypatch, capsys):
    path = tmp_path / "exporter.toml"
    path.write_text("intervall = 3\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    assert main(["run"]) == 2
    assert "intervall" in capsys.readouterr().err


# --- URLs ---------------------------------------------------------------------------------------

BAD_URLS = {
    "trailing newline": "http://vllm:8000\n",
    "trailing CRLF": "http://vllm:8000\r\n",
    "tab inside": "http://vl\tlm:8000",
    "space inside": "http://vllm:8000/a b",
    "leading space": " http://vllm:8000",
    "NUL": "http://vllm:8000\x00",
    "DEL": "http://vllm:8000\x7f",
    "escape": "http://\x1b[31mvllm:8000",
    "zero-width": "http://vllm\u200b:8000",
    "line separator": "http://vllm:8000\u2028",
    "no scheme": "vllm:8000",
    "ftp": "ftp://vllm/metrics",
    "file": "file:///etc/passwd",
    "no host": "http://:8000",
    "nothing after scheme": "http://",
    "port not a number": "http://vllm:eighty",
    "port out of range": "http://vllm:70000",
    "unclosed IPv6": "http://[::1:8000",
    "fragment": "http://vllm:8000/#top",
    "empty": "",
}


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
@pytest.mark.parametrize("field", URLS)
def test_a_bad_url_is_refused(field, url):
    extra = {"gpus": "GPU-1"} if field == "dcgm_url" else {}
    lines = _rejected(**{field: url}, **extra)
    assert any(line.startswith(f"setting {field} ") for line in lines)


def test_a_url_error_says_what_is_wrong_and_never_repeats_the_password(capsys):
    assert main(["run", "--vllm-url", "http://admin:hunter2@vllm:8000\n"]) == 2
    err = capsys.readouterr().err
    assert "vllm_url" in err and "'\\n' at position 30" in err
    assert "hunter2" not in err
    (line,) = _rejected(vllm_url="ftp://admin:hunter2@vllm")
    assert "scheme 'ftp'" in line and "hunter2" not in line


def test_vllm_url_is_a_base_url_without_query():
    (line,) = _rejected(vllm_url="http://vllm:8000/?token=abc")
    assert "without a ?query" in line and "abc" not in line


@pytest.mark.parametrize(
    "url",
    [
        "http://vllm:8000",
        "https://vllm.ml-serving.svc.cluster.local",
        "http://[::1]:8000",
        "http://[fe80::1%25eth0]:8000",
        "http://user:p%40ss@vllm:8000/v1/",
        "http://10.0.3.17:8000/",
    ],
)
def test_good_vllm_urls_are_accepted(url):
    assert Settings(vllm_url=url).vllm_url == url.rstrip("/")


def test_dcgm_url_may_have_a_query():
    url = "https://dcgm.local/metrics?collect=energy"
    assert Settings(dcgm_url=url, gpus="GPU-1").dcgm_url == url


@pytest.mark.parametrize("path", ["/metrics\n", "/met rics", "/metrics\x00"])
def test_the_metrics_path_has_no_whitespace_or_control_characters(path):
    (line,) = _rejected(vllm_metrics_path=path)
    assert line.startswith("setting vllm_metrics_path ")


@pytest.mark.parametrize("field", ["plugin_dir", "model_dir", "state_file", "web_config_file"])
def test_a_directory_has_no_control_characters(field):
    lines = _rejected(**{field: "/run/token-economy\n"})
    assert any(line.startswith(f"setting {field} ") and "control" in line for line in lines)


# --- settings that depend on each other -----------------------------------------------------------


def test_idle_min_samples_is_at_most_idle_window():
    (line,) = _rejected(idle_window=10, idle_min_samples=11)
    assert line.startswith("setting idle_min_samples ") and "--idle-window, now 10" in line and "got 11" in line
    assert Settings(idle_window=10, idle_min_samples=10).idle_min_samples == 10
    (line,) = _rejected(idle_window=3)  # the default idle_min_samples (5) no longer fits
    assert line.startswith("setting idle_min_samples ")


@pytest.mark.parametrize("busy", ["prefill_watts", "decode_watts"])
def test_busy_power_is_at_least_idle_power(busy):
    (line,) = _rejected(idle_watts=100, **{busy: 60})
    assert line.startswith(f"setting {busy} ") and "--idle-watts, now 100 W" in line and "got 60 W" in line
    assert getattr(Settings(idle_watts=100, **{busy: 100}), busy) == 100
    assert getattr(Settings(**{busy: 60}), busy) == 60  # the GPU table's idle power is checked by the core


def test_vllm_timeout_is_still_shorter_than_the_interval():
    (line,) = _rejected(interval=1, vllm_timeout=1)
    assert line.startswith("setting vllm_timeout ")


# --- the config file --------------------------------------------------------------------------


def test_a_config_file_variable_naming_nothing_stops_settings(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match=r"no such file: .*missing\.toml"):
        Settings()
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path))
    with pytest.raises(IsADirectoryError, match="not a file"):
        Settings()


def test_a_config_file_variable_naming_nothing_exits_2_like_the_flag(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "missing.toml")
    monkeypatch.setenv(CONFIG_FILE_ENV, missing)
    assert main(["run"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"token-economy-exporter: error: setting config ({CONFIG_FILE_ENV}): no such file: {missing}"
    )


def test_an_empty_config_file_variable_is_unset(monkeypatch):
    monkeypatch.setenv(CONFIG_FILE_ENV, "")
    assert Settings().interval == 5.0


# --- unknown variables ----------------------------------------------------------------------------


def test_unknown_variables_are_found():
    environ = {
        "TOKEN_ECONOMY_INTERVALL": "3",
        "token_economy_gpu_hourly_prise": "2",  # pydantic-settings reads names in any case
        "TOKEN_ECONOMY_INTERVAL": "3",
        "token_economy_pue": "1.2",
        "TOKEN_ECONOMY_CONFIG_FILE": "/etc/x.toml",
        "TOKEN_ECONOMY_PLUGIN_NVML": "0",
        "TOKEN_ECONOMY_PLUGIN_DIR": "/run/token-economy",
        "TOKEN_ECONOMY_VLLM_PYTHON": "/venv/bin/python",
        "CUDA_VISIBLE_DEVICES": "0",
        "TOKEN_ECONOMYX": "1",
    }
    assert unknown_environment(environ) == ["TOKEN_ECONOMY_INTERVALL", "token_economy_gpu_hourly_prise"]
    assert unknown_environment({}) == []
    assert unknown_environment({env_name(name): "x" for name in Settings.model_fields}) == []


def test_an_unknown_variable_gets_the_closest_setting():
    assert closest_variable("TOKEN_ECONOMY_INTERVALL") == "TOKEN_ECONOMY_INTERVAL"
    assert closest_variable("token_economy_gpu_hourly_prise") == "TOKEN_ECONOMY_GPU_HOURLY_PRICE"
    assert closest_variable("TOKEN_ECONOMY_SOMETHING_ELSE_ENTIRELY") is None


def test_every_variable_the_plugin_reads_is_known():
    """The plugin's variables may sit in the exporter's environment too (one ConfigMap for both)."""
    used = set()
    for path in (PACKAGE / "plugin").rglob("*.py"):
        used |= set(re.findall(r"\bTOKEN_ECONOMY_[A-Z_]+\b", path.read_text()))
    assert used, "no plugin variables found"
    assert not unknown_environment(dict.fromkeys(used, "")), "add the plugin's new variable to OTHER_VARIABLES"
    assert all(name.isupper() for name in OTHER_VARIABLES)


# --- URLs as shown -------------------------------------------------------------------------------


def test_urls_are_shown_without_their_password():
    s = Settings(
        vllm_url="http://admin:hunter2@[::1]:8000/", dcgm_url="https://dcgm:9400/metrics?token=abc", gpus="GPU-1"
    )
    assert s.vllm_url == "http://admin:hunter2@[::1]:8000"  # what the exporter reads, as given
    assert s.vllm_url_display == "http://admin:***@[::1]:8000"
    assert s.dcgm_url_display == "https://dcgm:9400/metrics?token=***"
    assert Settings().vllm_url_display == "http://127.0.0.1:8000"
    assert Settings().dcgm_url_display is None


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:hun/ter2@vllm:8000",  # a "/" in the password: the port reads "hun"
        "http://admin:hunter2@vllm:99999",
        "http://admin:hunter2@[::1:8000",
        "ftp://admin:hunter2@vllm",
        "http://admin:hunter2@vllm:8000/#x",
        "http://admin:hunter2 @vllm:8000",
        "http://admin:hunter2@vllm:8000/?token=hunter2",
    ],
)
@pytest.mark.parametrize("field", URLS)
def test_a_url_error_never_shows_the_password(field, url):
    extra = {"gpus": "GPU-1"} if field == "dcgm_url" else {}
    try:
        Settings(**{field: url}, **extra)
    except ValidationError as err:
        lines = describe_errors(err)
    else:
        return  # dcgm_url may have a query
    assert lines and not any("hun" in line for line in lines), lines


def test_a_start_up_error_never_shows_a_password(capsys):
    """A source's start-up error may name the URL it could not read (dcgm-exporter's, say)."""
    from exporter.cli import _fail

    assert _fail(["energy_source: cannot read http://admin:hunter2@dcgm:9400/metrics?token=s3cr3t: refused"]) == 2
    shown = "energy_source: cannot read http://admin:***@dcgm:9400/metrics?token=***: refused"
    assert capsys.readouterr().err == f"token-economy-exporter: error: {shown}\n"


def test_the_web_config_file_is_off_by_default_and_read_as_a_path(tmp_path):
    assert Settings().web_config_file is None
    assert Settings(web_config_file=str(tmp_path / "web.yml")).web_config_file == tmp_path / "web.yml"
    assert env_name("web_config_file") == "TOKEN_ECONOMY_WEB_CONFIG_FILE"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("tls_server_config:\n  cert_fil: x\n", "unknown key 'tls_server_config.cert_fil'"),
        ("tls_server_config: [\n", "not valid YAML at line"),
        ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus is not a bcrypt hash"),
        (None, "cannot read"),
    ],
)
def test_a_bad_web_config_file_is_a_start_up_error_naming_the_setting(tmp_path, text, shown):
    """cli.main turns a StartupError into exit status 2 with this line (tests/integration/test_web_config.py)."""
    from exporter.app import StartupError, _web_config

    path = tmp_path / "web.yml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(StartupError) as err:
        _web_config(Settings(web_config_file=str(path)), structlog.get_logger())
    prefix = "setting web_config_file (--web-config-file / TOKEN_ECONOMY_WEB_CONFIG_FILE): "
    assert str(err.value).startswith(prefix) and shown in str(err.value) and "hunter2" not in str(err.value)


def test_a_gpu_known_by_its_datasheet_needs_the_power_no_public_source_gives():
    Settings(gpu_type="B200", idle_watts=140, decode_watts=600)
    with pytest.raises(ValidationError, match="--idle-watts and --decode-watts"):
        Settings(gpu_type="B200")
    # AMD has no NVML: modelled (phase-model, or auto, which ends there), never measured by us.
    Settings(gpu_type="MI300X", idle_watts=140, decode_watts=500, energy_source="phase-model")
    with pytest.raises(ValidationError, match="no NVML"):
        Settings(gpu_type="MI300X", idle_watts=140, decode_watts=500, energy_source="nvml")
    with pytest.raises(ValidationError, match=r"known: .*B200.*MI325X"):
        Settings(gpu_type="B100")


def test_the_variables_the_scripts_set_are_not_called_unknown():
    # The exporter warns about TOKEN_ECONOMY_* variables no setting reads; the test command's own
    # (scripts/test.sh exports them to every process it starts) must not be among them.
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    used = {m for f in scripts.glob("*.sh") for m in re.findall(r"TOKEN_ECONOMY_[A-Z0-9_]+", f.read_text())}
    assert used and not unknown_environment(dict.fromkeys(used, ""))


def test_api_price_lists_are_checked_at_start_up_and_name_the_alerts_reference():
    settings = Settings(api_prices="small=0.15/0.075/0.6,large=2.5/1.25/10", currency="USD")
    assert [p.reference for p in settings.api_price_lists] == ["small", "large"]
    assert settings.break_even_reference == "small"  # the first, unless one is chosen
    assert Settings(api_prices="small=1/1/1,large=2/2/2", break_even_alert_reference="large").break_even_reference == (
        "large"
    )
    assert Settings().api_price_lists == () and Settings().break_even_reference is None
    with pytest.raises(ValidationError, match=r"api_prices\n.*priced in EUR, but costs are counted in USD"):
        Settings(api_prices="small=1/1/1@EUR")
    with pytest.raises(ValidationError, match=r"'huge' is not one of the API price lists \(small\)"):
        Settings(api_prices="small=1/1/1", break_even_alert_reference="huge")
    with pytest.raises(ValidationError, match="none: set --api-prices"):
        Settings(break_even_alert_reference="small")
