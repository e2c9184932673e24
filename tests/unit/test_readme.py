"""README is the reference users read: every setting and every metric must be in it."""

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from exporter.attribution.attributor import TickResult
from exporter.attribution.pricing import Prices
from exporter.attribution.readings import GpuIdentity
from exporter.attribution.split import Allocation
from exporter.catalogue import BUILD_LABELS, CATALOGUE
from exporter.collector import LedgerCollector
from exporter.config import Settings, default_text, env_name, flag_name
from exporter.ledger import Ledger, SourceRead, TickRecord

README = (Path(__file__).parents[2] / "README.md").read_text()
METRICS = re.compile(r"<!-- metrics: .*? -->\n(.*?)<!-- end of metrics -->", re.S)


def test_every_setting_is_documented_with_flag_and_variable():
    for name in Settings.model_fields:
        assert f"`{flag_name(name)}`" in README, name
        assert f"`{env_name(name)}`" in README, name


def test_the_metric_table_is_the_catalogue():
    match = METRICS.search(README)
    assert match, "README has no generated metric table"
    assert match.group(1) == CATALOGUE.readme_table(), "run python scripts/assets.py"


def test_the_exposition_is_the_catalogue():
    """Every family the collector renders is in the catalogue, and every catalogue family is
    rendered once a tick has filled the ledger."""
    ledger = Ledger()
    gpu = GpuIdentity(0, "u", "n")
    result = TickResult(
        tokens={("m", "input"): 1.0},
        models=("m",),
        residual_ratio=0.1,
        coefficients={"input": (1.0, 0.1)},
        marginal={("m", "input"): (1.0, 0.1)},
        allocation=Allocation({("m", "idle"): 1.0}, {("m", "idle"): 1.0}, 0.0, 0.0, 1.0, 0.0),
        costs={("m", "idle", "rental"): 1.0},
        emissions={("m", "idle"): 1.0},
        gpu_energy={gpu: 1.0},
        gpu_power={gpu: 1.0},
    )
    ledger.publish(TickRecord({"vllm": SourceRead(False, 0.1, ("timeout",))}, result, energy_modelled=False))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "t"), Prices(3.0, 0.1, 1.2, 400.0)))
    exposed = set(re.findall(r"^# TYPE (\S+)", generate_latest(registry).decode(), re.M))
    assert exposed == {family.full_name for family in CATALOGUE}


def test_the_settings_table_shows_the_defaults_that_run_help_shows():
    rows = re.findall(r"^\| `--([a-z-]+)` \| `[A-Z_]+` \| ([^|]+) \|", README, re.M)
    assert {flag.replace("-", "_") for flag, _ in rows} == set(Settings.model_fields)
    for flag, default in rows:
        assert default.strip().replace("`", "") == default_text(flag.replace("-", "_")), flag
