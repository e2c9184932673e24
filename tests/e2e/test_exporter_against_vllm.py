"""The exporter beside a real vLLM server (CPU build), with the declared phase-power model as
its energy source (no GPU here). The tests run in order and share one vLLM and one exporter:
the last ones kill vLLM and start it again."""

from __future__ import annotations

import math
import time

import httpx
import pytest

from tests.e2e.exporter_process import ExporterProcess, total

INTERVAL = 0.5
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def vllm(make_vllm_server):
    server = make_vllm_server().start()
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def exporter(vllm, tiny_model_dir, tmp_path_factory):
    proc = ExporterProcess(
        vllm.url,
        tmp_path_factory.mktemp("exporter"),
        "--interval",
        str(INTERVAL),
        "--energy-source",
        "phase-model",
        "--gpu-type",
        "H100",
        "--model-dir",
        str(tiny_model_dir),
        "--gpu-hourly-price",
        "3.0",
        "--grid-carbon-intensity",
        "400",
    ).start()
    yield proc
    assert proc.stop() == 0, proc.log()


def tokens(m, cls):
    return total(m, "token_economy_tokens_total", model_name=MODEL, token_class=cls)


def energy(m, cls):
    return total(m, "token_economy_energy_joules_total", model_name=MODEL, token_class=cls)


def settled(exporter, vllm, timeout=10.0):
    """Wait until vLLM's counters stop moving and the exporter has ticked past them; both pages."""
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        counters = vllm.counters()
        if counters == previous:
            time.sleep(2.5 * INTERVAL)
            m = exporter.metrics()
            if vllm.counters() == counters:
                return counters, m
        previous = counters
        time.sleep(INTERVAL)
    raise AssertionError("vLLM counters did not settle")


def assert_conserved(m):
    measured = total(m, "token_economy_gpu_energy_joules_total")
    attributed = total(m, "token_economy_energy_joules_total")
    assert measured > 0
    assert math.isclose(attributed, measured, rel_tol=1e-9), (attributed, measured)


def test_token_counters_equal_vllms_own_deltas(exporter, vllm):
    c0, m0 = settled(exporter, vllm)
    prompts = [f"Request {i}: " + "tell me about token economics " * (i + 1) for i in range(8)]
    vllm.complete_many(prompts, max_tokens=32, concurrency=4)
    vllm.complete_many(prompts[:4], max_tokens=8, concurrency=4)  # the same prefixes again
    c1, m1 = settled(exporter, vllm)
    assert c1["vllm:generation_tokens_total"] - c0["vllm:generation_tokens_total"] == 8 * 32 + 4 * 8
    assert (
        tokens(m1, "output") - tokens(m0, "output")
        == c1["vllm:generation_tokens_total"] - c0["vllm:generation_tokens_total"]
    )
    prompt_delta = c1["vllm:prompt_tokens_total"] - c0["vllm:prompt_tokens_total"]
    cached_delta = c1["vllm:prompt_tokens_cached_total"] - c0["vllm:prompt_tokens_cached_total"]
    assert (tokens(m1, "input") + tokens(m1, "cached_input")) - (
        tokens(m0, "input") + tokens(m0, "cached_input")
    ) == prompt_delta
    assert tokens(m1, "cached_input") - tokens(m0, "cached_input") == cached_delta
    assert (
        total(m1, "token_economy_engine_steps_total", model_name=MODEL)
        - total(m0, "token_economy_engine_steps_total", model_name=MODEL)
        == c1["vllm:iteration_tokens_total_count"] - c0["vllm:iteration_tokens_total_count"]
    )


def test_energy_classes_sum_to_the_measured_total(exporter, vllm):
    m = exporter.metrics()
    assert_conserved(m)
    assert energy(m, "input") > 0 and energy(m, "output") > 0 and energy(m, "idle") > 0
    rental = total(m, "token_economy_cost_total", component="rental", currency="USD")
    seconds = total(m, "token_economy_attributed_seconds_total")
    assert rental == pytest.approx(3.0 * seconds / 3600, rel=1e-9)
    assert total(m, "token_economy_emissions_grams_total") == pytest.approx(
        total(m, "token_economy_gpu_energy_joules_total") * 400 / 3.6e6, rel=1e-9
    )


def test_output_tokens_cost_more_energy_than_input_tokens_under_decode_heavy_load(exporter, vllm):
    _, m0 = settled(exporter, vllm)
    vllm.complete_many([f"Short {i}" for i in range(8)], max_tokens=128, concurrency=4)
    _, m1 = settled(exporter, vllm)
    per_output = (energy(m1, "output") - energy(m0, "output")) / (tokens(m1, "output") - tokens(m0, "output"))
    per_input = (energy(m1, "input") - energy(m0, "input")) / (tokens(m1, "input") - tokens(m0, "input"))
    assert per_output > per_input > 0
    assert total(m1, "token_economy_marginal_energy_joules_per_token", token_class="output") > total(
        m1, "token_economy_marginal_energy_joules_per_token", token_class="input"
    )


def test_idle_energy_grows_while_no_request_runs(exporter, vllm):
    _, m0 = settled(exporter, vllm)
    time.sleep(3.0)
    m1 = exporter.metrics()
    grown = energy(m1, "idle") - energy(m0, "idle")
    seconds = total(m1, "token_economy_attributed_seconds_total") - total(m0, "token_economy_attributed_seconds_total")
    assert seconds >= 2.0
    assert grown == pytest.approx(75.0 * seconds, rel=1e-6)  # the declared H100 idle power
    for cls in ("input", "cached_input", "output"):
        assert energy(m1, cls) == energy(m0, cls)


def test_killing_vllm_keeps_the_exporter_serving_and_counting_energy(exporter, vllm):
    before = exporter.metrics()
    vllm.kill()
    time.sleep(4 * INTERVAL)
    m1 = exporter.metrics()
    time.sleep(2 * INTERVAL)
    m2 = exporter.metrics()
    assert total(m2, "token_economy_source_up", source="vllm") == 0
    assert total(m2, "token_economy_source_up", source="energy") == 1
    assert total(m2, "token_economy_source_errors_total", source="vllm") >= 2
    assert total(m2, "token_economy_gpu_energy_joules_total") > total(m1, "token_economy_gpu_energy_joules_total")
    assert energy(m2, "idle") > energy(m1, "idle")
    for cls in ("input", "cached_input", "output"):
        assert tokens(m2, cls) == tokens(before, cls)
    assert_conserved(m2)
    assert httpx.get(exporter.url + "/healthz").status_code == 200
    assert exporter.proc.poll() is None
    assert exporter.log().count('"source_lost"') == 1


def test_restarting_vllm_is_a_reset_with_nothing_negative_or_doubled(exporter, vllm):
    before = exporter.metrics()
    resets_before = total(before, "token_economy_counter_resets_total", source="vllm")
    vllm.start()
    vllm.wait_ready()
    vllm.complete_many([f"After the restart {i}" for i in range(4)], max_tokens=16, concurrency=4)
    counters, m = settled(exporter, vllm, timeout=20)
    assert total(m, "token_economy_source_up", source="vllm") == 1
    assert total(m, "token_economy_counter_resets_total", source="vllm") == resets_before + 1
    # Every token the new server counted since it started is added once, on top of the old totals.
    assert tokens(m, "output") - tokens(before, "output") == counters["vllm:generation_tokens_total"] == 64
    assert (tokens(m, "input") + tokens(m, "cached_input")) - (
        tokens(before, "input") + tokens(before, "cached_input")
    ) == counters["vllm:prompt_tokens_total"]
    for (name, labels), value in m.items():
        if name.endswith("_total"):
            assert value >= before.get((name, labels), 0.0), name
    assert_conserved(m)
    assert '"counter_reset"' in exporter.log() and '"source_recovered"' in exporter.log()
