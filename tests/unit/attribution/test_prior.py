import pytest

from exporter.attribution.gpu_table import GPU_TABLE
from exporter.attribution.model_spec import ModelSpec, from_config
from exporter.attribution.prior import roofline_prior

LLAMA2_70B = ModelSpec(69e9, 69e9, 2.0, 2 * 80 * 8 * 128 * 2.0, "test")


def prior(gpu="H100", n=2, model=LLAMA2_70B, **kw):
    args = {
        "compute_efficiency": 0.5,
        "bandwidth_efficiency": 0.7,
        "step_overhead_seconds": 0.002,
        "relative_stddev": 0.5,
    }
    args.update(kw)
    return roofline_prior(GPU_TABLE[gpu], n, model, **args)


def test_llama2_70b_on_two_h100_lands_near_published_figures():
    p = prior()
    assert 0.2 / 1.5 <= p.energy.input <= 0.2 * 1.5
    per_output_at_batch_16 = p.energy.output + p.energy.step / 16 + p.energy.kv * 1000
    assert 2.0 / 2.0 <= per_output_at_batch_16 <= 2.0 * 1.5


def test_output_tokens_cost_more_than_input_tokens_at_production_batch():
    p = prior()
    assert (p.energy.output + p.energy.step / 64) / p.energy.input > 2


def test_energy_per_unit_does_not_depend_on_gpu_count_but_time_does():
    one, two = prior(n=1), prior(n=2)
    assert one.energy.step == pytest.approx(two.energy.step)
    assert one.time.step == pytest.approx(2 * two.time.step)


def test_explicit_weights_replace_the_roofline_one_by_one():
    p = prior(explicit={"input_joules_per_token": 0.5, "step_joules": 3.0})
    assert (p.energy.input, p.energy.step) == (0.5, 3.0)
    assert p.energy.output == prior().energy.output


def test_phase_power_settings_override_the_table():
    assert prior(prefill_watts=1075.0).energy.input == pytest.approx(prior().energy.input * 1000 / 625)


def test_config_json_of_a_llama_8b_counts_about_8_billion_parameters():
    spec = from_config(
        {
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "vocab_size": 128256,
            "torch_dtype": "bfloat16",
            "tie_word_embeddings": False,
        }
    )
    assert spec.total_params == pytest.approx(8.03e9, rel=0.01)
    assert spec.bytes_per_param == 2.0
    assert spec.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2


def test_moe_config_counts_active_experts_only_for_flops():
    spec = from_config(
        {
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "vocab_size": 32000,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
        }
    )
    assert 12e9 < spec.active_params < 14e9 < 45e9 < spec.total_params < 48e9
