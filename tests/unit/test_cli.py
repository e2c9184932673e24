import os

import pytest

from exporter.cli import main
from exporter.config import Settings
from exporter.sources.gpu_discovery import ProcTree, resolve_gpu_selection


@pytest.mark.parametrize(
    "flags, setting",
    [
        (["--interval", "0"], "interval"),
        (["--interval", "soon"], "interval"),
        (["--vllm-url", "ftp://x"], "vllm_url"),
        (["--listen-address", "nohost"], "listen_address"),
        (["--listen-address", "0.0.0.0:70000"], "listen_address"),
        (["--gpus", "0,banana"], "gpus"),
        (["--energy-source", "solar"], "energy_source"),
        (["--gpu-hourly-price", "-1"], "gpu_hourly_price"),
        (["--currency", "dollars"], "currency"),
        (["--pue", "0.5"], "pue"),
        (["--grid-carbon-intensity", "-3"], "grid_carbon_intensity"),
        (["--log-format", "xml"], "log_format"),
        (["--gpu-type", "Voodoo2"], "gpu_type"),
        (["--model-dir", "/nonexistent"], "model_dir"),
        (["--interval", "1", "--vllm-timeout", "5"], "vllm_timeout"),
        (["--electricity-price-per-kwh", "x"], "electricity_price_per_kwh"),
    ],
)
def test_a_bad_value_exits_2_naming_the_setting(flags, setting, capsys):
    assert main(["run", *flags]) == 2
    err = capsys.readouterr().err
    assert setting in err and "error" in err


def test_environment_variables_are_settings_and_flags_win(monkeypatch):
    monkeypatch.setenv("TOKEN_ECONOMY_INTERVAL", "7")
    monkeypatch.setenv("TOKEN_ECONOMY_GPUS", "0,GPU-abc-123")
    monkeypatch.setenv("TOKEN_ECONOMY_PUE", "1.3")
    s = Settings(pue=1.1)
    assert s.interval == 7 and s.gpus == "0,GPU-abc-123" and s.pue == 1.1


def test_a_bad_environment_variable_is_named(monkeypatch, capsys):
    monkeypatch.setenv("TOKEN_ECONOMY_INTERVAL", "-4")
    assert main(["run"]) == 2
    assert "TOKEN_ECONOMY_INTERVAL" in capsys.readouterr().err


def test_gpu_selection_falls_back_to_cuda_then_nvidia_visible_devices(monkeypatch, tmp_path):
    def selected() -> tuple[str, ...] | None:
        # No vLLM process in this (empty) /proc: only the exporter's own variables decide.
        return resolve_gpu_selection(Settings().gpus, os.environ, lambda: None, ProcTree(tmp_path)).gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-1111,GPU-2222")
    assert selected() == ("GPU-1111", "GPU-2222")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert selected() == ("1",)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")
    assert selected() is None


def test_config_file(tmp_path, monkeypatch):
    path = tmp_path / "exporter.toml"
    path.write_text('interval = 3.0\ncurrency = "EUR"\n')
    monkeypatch.setenv("TOKEN_ECONOMY_CONFIG_FILE", str(path))
    assert (Settings().interval, Settings().currency) == (3.0, "EUR")


def test_missing_config_file_is_named(capsys):
    assert main(["run", "--config", "/nonexistent.toml"]) == 2
    assert "config" in capsys.readouterr().err


def test_electricity_is_opt_in_when_a_rental_price_is_set():
    assert Settings(electricity_price_per_kwh=0.2).electricity_billing == "counted"
    assert Settings(electricity_price_per_kwh=0.2, gpu_hourly_price=3).electricity_billing == "excluded"
    assert (
        Settings(electricity_price_per_kwh=0.2, gpu_hourly_price=3, electricity_with_rental=True).electricity_billing
        == "counted"
    )
    assert Settings().electricity_billing == "unpriced"
    assert main(["run", "--electricity-with-rental", "maybe"]) == 2
