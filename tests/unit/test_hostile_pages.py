"""Property test of the ledger's invariant under hostile vLLM pages and energy readings: whatever
a page says — values no counter can hold, decreases without a restart, duplicated series, a body
cut short, a family gone — every counter the exporter exports stays finite and never decreases,
and the energy classes add up to the measured energy, on every tick."""

import math
from dataclasses import dataclass, field

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.attribution.readings import EnergySnapshot, GpuReading
from exporter.collector import LedgerCollector
from exporter.ledger import Ledger
from exporter.loop import CollectionLoop
from exporter.sources import vllm_page
from tests.loop_rig import BUILD, rig_attributor

HOSTILE_VALUES = ("+Inf", "-Inf", "NaN", "1e308", "-2000.3", "1.7976931348623157e308", "0", "9.9e15")
FAMILIES = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:iteration_tokens_total_count",
)

mutation = st.one_of(
    st.none(),
    st.tuples(st.just("value"), st.sampled_from(FAMILIES), st.sampled_from(HOSTILE_VALUES)),
    st.tuples(st.just("decrease"), st.sampled_from(FAMILIES), st.floats(0.0, 0.99)),
    st.tuples(st.just("duplicate"), st.sampled_from(FAMILIES), st.floats(0.0, 3.0)),
    st.tuples(st.just("truncate"), st.integers(1, 60)),
    st.tuples(st.just("drop"), st.sampled_from(FAMILIES)),
    st.tuples(st.just("restart"), st.booleans()),  # a real restart, with or without a new _created
)
tick = st.fixed_dictionaries(
    {
        "prompt": st.integers(0, 20_000),
        "gen": st.integers(0, 5_000),
        "watts": st.floats(0, 1400),
        "page": mutation,
        "energy": st.sampled_from((None, None, None, math.inf, -1.0, math.nan, 1e308)),
    }
)


@dataclass
class Engine:
    """What vLLM really counted; the page is rendered from it, then spoiled."""

    prompt: float = 0.0
    gen: float = 0.0
    steps: float = 0.0
    created: float = 1000.0
    values: dict[str, float] = field(default_factory=dict)

    def page(self, mutation) -> str:
        values = {
            FAMILIES[0]: self.prompt,
            FAMILIES[1]: self.gen,
            FAMILIES[2]: self.prompt * 0.1,
            FAMILIES[3]: self.steps,
        }
        lines = [f'{name}{{model_name="m",engine="0"}} {value!r}' for name, value in values.items()]
        kind = mutation[0] if mutation else None
        if kind == "value":
            lines[FAMILIES.index(mutation[1])] = f'{mutation[1]}{{model_name="m",engine="0"}} {mutation[2]}'
        elif kind == "decrease":
            lines[FAMILIES.index(mutation[1])] = (
                f'{mutation[1]}{{model_name="m",engine="0"}} {values[mutation[1]] * mutation[2]!r}'
            )
        elif kind == "duplicate":
            lines.append(f'{mutation[1]}{{model_name="m",engine="0"}} {values[mutation[1]] * mutation[2]!r}')
        elif kind == "drop":
            del lines[FAMILIES.index(mutation[1])]
        lines.append(f'vllm:prompt_tokens_created{{model_name="m",engine="0"}} {self.created!r}')
        lines.append('vllm:num_requests_running{model_name="m",engine="0"} 1.0')
        text = "\n".join(lines) + "\n"
        return text[: -mutation[1]] if kind == "truncate" else text


class PageSource:
    def __init__(self) -> None:
        self.text, self.t = "", 0.0

    def read(self):
        return vllm_page.parse(self.text, self.t)


class EnergySource:
    def __init__(self) -> None:
        self.joules, self.t, self.spoil = 0.0, 0.0, None

    def read(self):
        value = self.joules if self.spoil is None else self.spoil
        gpu = GpuReading(0, "GPU-a", "NVIDIA H100 80GB HBM3", value, 300.0, "counter")
        return EnergySnapshot(self.t, (gpu,))


def exported(registry) -> dict:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if family.type == "counter" and s.name.endswith("_total"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=st.lists(tick, min_size=2, max_size=40))
def test_no_page_can_poison_the_ledger(trace):
    ledger, page, energy, engine = Ledger(), PageSource(), EnergySource(), Engine()
    clock = iter(range(10**6))
    loop = CollectionLoop(
        page, energy, rig_attributor(), ledger, structlog.get_logger(), 1.0,
        clock=lambda: float(next(clock)) / 1000, wall_clock=lambda: 1.7e9,
    )  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, BUILD))
    before: dict = {}
    for i, t in enumerate(trace):
        if t["page"] and t["page"][0] == "restart":
            engine.prompt = engine.gen = engine.steps = 0.0
            engine.created += 100.0 if t["page"][1] else 0.0
        engine.prompt += t["prompt"]
        engine.gen += t["gen"]
        engine.steps += t["gen"] / 8
        energy.joules += t["watts"]
        energy.spoil = t["energy"]
        page.t = energy.t = float(i)
        page.text = engine.page(t["page"])
        loop.tick()
        now = exported(registry)
        for key, value in now.items():
            assert math.isfinite(value), key
            assert value >= before.get(key, 0.0), (key, before.get(key), value)
        measured = sum(v for (name, _), v in now.items() if name == "token_economy_gpu_energy_joules_total")
        classes = sum(v for (name, _), v in now.items() if name == "token_economy_energy_joules_total")
        assert math.isclose(classes, measured, rel_tol=1e-9, abs_tol=1e-6)
        before = now
