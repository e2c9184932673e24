from pathlib import Path

import pytest

from exporter.sources.errors import SourceError
from exporter.sources.vllm_page import parse

FIXTURES = Path(__file__).parents[2] / "fixtures"


def test_real_vllm_032_page():
    snap = parse((FIXTURES / "vllm-0.32-cpu-metrics.txt").read_text(), 12.5)
    assert snap.timestamp == 12.5 and snap.missing_families == frozenset()
    (e,) = snap.engines
    assert (e.model_name, e.engine) == ("tiny-llama", "0")
    assert (e.prompt_tokens, e.generation_tokens, e.cached_prompt_tokens, e.computed_prompt_tokens) == (
        2557,
        1576,
        1280,
        1277,
    )
    assert (e.steps, e.step_tokens) == (1068, 2853)
    assert e.created == pytest.approx(1.7954355204573598e9)
    assert e.kv_cache_capacity_tokens == 524288
    assert (e.kv_cache_usage, e.requests_running, e.requests_waiting) == (0.0, 0.0, 0.0)


def test_real_page_under_load():
    (e,) = parse((FIXTURES / "vllm-0.32-cpu-metrics-under-load.txt").read_text(), 0).engines
    assert (e.prompt_tokens, e.generation_tokens, e.steps) == (109, 1021, 256)
    assert (e.requests_running, e.requests_waiting) == (4, 4)


TWO_ENGINES_TWO_MODELS = """\
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="llama"} 100.0
vllm:prompt_tokens_total{engine="1",model_name="llama"} 50.0
vllm:prompt_tokens_total{engine="0",model_name="qwen"} 7.0
vllm:generation_tokens_total{engine="0",model_name="llama"} 10.0
vllm:generation_tokens_total{engine="1",model_name="llama"} 5.0
vllm:generation_tokens_total{engine="0",model_name="qwen"} 3.0
vllm:prompt_tokens_total_extra{engine="0",model_name="llama"} 999.0
vllm:cache_config_info{engine="0",num_gpu_blocks="100",block_size="16"} 1.0
vllm:cache_config_info{engine="1",kv_cache_size_tokens="3200"} 1.0
"""


def test_engines_and_models_are_kept_apart():
    engines = {(e.model_name, e.engine): e for e in parse(TWO_ENGINES_TWO_MODELS, 0).engines}
    assert set(engines) == {("llama", "0"), ("llama", "1"), ("qwen", "0")}
    assert engines[("llama", "1")].prompt_tokens == 50
    assert engines[("qwen", "0")].generation_tokens == 3
    assert engines[("llama", "0")].prompt_tokens == 100  # not the look-alike family
    assert engines[("llama", "0")].kv_cache_capacity_tokens == 1600
    assert engines[("llama", "1")].kv_cache_capacity_tokens == 3200


LEGACY = """\
vllm:prompt_tokens_total{model_name="old"} 40
vllm:generation_tokens_total{model_name="old"} 20
vllm:gpu_cache_usage_perc{model_name="old"} 0.25
vllm:num_requests_running{model_name="old"} 1
"""


def test_older_vllm_names_degrade_without_failing():
    snap = parse(LEGACY, 0)
    (e,) = snap.engines
    assert (e.engine, e.prompt_tokens, e.kv_cache_usage) == ("0", 40, 0.25)
    assert e.cached_prompt_tokens is None and e.steps is None and e.created is None
    assert snap.missing_families == {"cached_prompt_tokens", "steps"}


def test_timestamps_escapes_and_odd_spacing():
    text = 'vllm:prompt_tokens_total{model_name="a \\"q\\" b",engine="0"}\t12 1700000000000\n'
    (e,) = parse(text, 0).engines
    assert e.model_name == 'a "q" b' and e.prompt_tokens == 12


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html>502 Bad Gateway</html>",
        'vllm:prompt_tokens_total{model_name="x"} not-a-number\n',
        "\x00\x01garbage",
        "vllm:prompt_tokens_total\n",
    ],
)
def test_garbage_is_a_typed_parse_error(text):
    with pytest.raises(SourceError) as err:
        parse(text, 0)
    assert err.value.reason == "parse"


@pytest.mark.parametrize("cut", [1, 7, 40, 80])
def test_a_page_cut_short_is_rejected_not_read_as_smaller_counters(cut):
    # Cut mid-number, "...generation_tokens_total{...} 12345" would read as 12: a restart.
    page = (
        'vllm:prompt_tokens_total{model_name="m",engine="0"} 100\n'
        'vllm:generation_tokens_total{model_name="m",engine="0"} 12345\n'
    )
    with pytest.raises(SourceError) as err:
        parse(page[: len(page) - cut], 0)
    assert err.value.reason == "truncated"


@pytest.mark.parametrize("value", ["+Inf", "-Inf", "NaN", "1e308", "-5", "9.1e15"])
def test_a_value_no_counter_can_hold_is_left_out_and_named(value):
    page = (
        f'vllm:prompt_tokens_total{{model_name="m",engine="0"}} {value}\n'
        'vllm:generation_tokens_total{model_name="m",engine="0"} 7\n'
    )
    snapshot = parse(page, 0)
    (engine,) = snapshot.engines
    assert engine.prompt_tokens is None and engine.generation_tokens == 7
    assert snapshot.rejected == ("bad_value",)


@pytest.mark.parametrize(
    ("family", "value"), [("vllm:kv_cache_usage_perc", "1.5"), ("vllm:num_requests_running", "-1")]
)
def test_a_gauge_out_of_its_range_is_left_out(family, value):
    page = (
        f'{family}{{model_name="m",engine="0"}} {value}\nvllm:generation_tokens_total{{model_name="m",engine="0"}} 7\n'
    )
    snapshot = parse(page, 0)
    assert snapshot.rejected == ("bad_value",)


def test_a_series_given_twice_is_neither_summed_nor_either_one():
    page = (
        'vllm:generation_tokens_total{model_name="m",engine="0"} 7\n'
        'vllm:generation_tokens_total{model_name="m",engine="0"} 9000\n'
        'vllm:generation_tokens_total{model_name="m",engine="0"} 8\n'
        'vllm:prompt_tokens_total{model_name="m",engine="0"} 3\n'
    )
    snapshot = parse(page, 0)
    (engine,) = snapshot.engines
    assert engine.generation_tokens is None and engine.prompt_tokens == 3
    assert snapshot.rejected == ("duplicate_series", "duplicate_series")


def test_a_bad_line_among_good_ones_is_skipped():
    text = 'vllm:prompt_tokens_total{model_name="m"} NaNx\nvllm:generation_tokens_total{model_name="m"} 5\n'
    (e,) = parse(text, 0).engines
    assert e.prompt_tokens is None and e.generation_tokens == 5
