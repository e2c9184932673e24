"""What a newcomer reads first: `--help` says every default, in words where start-up works it out."""

import pytest

from exporter.cli import main
from exporter.config import Settings, default_text


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_run_help_names_every_default(capsys):
    text = " ".join(help_text(capsys, "run").split())  # argparse wraps lines
    assert "default: None" not in text
    for name in Settings.model_fields:
        assert f"default: {' '.join(default_text(name).split())}]" in text, name


def test_simulate_help_shows_defaults_and_the_summary_legend(capsys):
    text = help_text(capsys, "simulate")
    assert "(default: well_mixed)" in text and "(default: 10.0)" in text
    assert "true share" in text and "marginal J" in text and "per-token part" in text
