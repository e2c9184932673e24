"""README is the reference users read: every setting and every metric must be in it."""

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from exporter.attribution.attributor import TickResult
from exporter.attribution.split import Allocation
from exporter.collector import LedgerCollector
from exporter.config import Settings, env_name, flag_name
from exporter.ledger import Ledger
from exporter.pricing import Prices

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_flag_and_variable():
    for name in Settings.model_fields:
        assert f"`{flag_name(name)}`" in README, name
        assert f"`{env_name(name)}`" in README, name


def test_every_metric_family_is_documented():
    ledger = Ledger()
    ledger.apply(
        TickResult(
            tokens={("m", "input"): 1.0},
            models=("m",),
            residual_ratio=0.1,
            coefficients={"input": (1.0, 0.1)},
            marginal={("m", "input"): (1.0, 0.1)},
            allocation=Allocation({("m", "idle"): 1.0}, {("m", "idle"): 1.0}, 0.0, 0.0, 1.0, 0.0),
            costs={("m", "idle", "rental"): 1.0},
            emissions={("m", "idle"): 1.0},
            gpu_energy={("0", "u", "n"): 1.0},
            gpu_power={("0", "u", "n"): 1.0},
        ),
        idle_measured=False,
    )
    ledger.record_read("vllm", False, 0.1, ("timeout",))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, {"version": "t"}, Prices(3.0, 0.1, 1.2, 400.0)))
    names = set(re.findall(r"^# TYPE (\S+)", generate_latest(registry).decode(), re.M))
    assert len(names) > 20
    for name in names:
        base = name.removesuffix("_total")
        assert f"`{base}" in README, name
