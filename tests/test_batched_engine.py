"""The batched attribution engine (several prompts per forward) equals the single-prompt engine, every family."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from knrecall.attribution.batched import attribute_prompts
from knrecall.attribution.engine import attribute_prompt, layer_blocks
from knrecall.attribution.quadrature import RULES
from knrecall.models.adapters import adapter_for

from tiny_models import FAMILIES, tiny_config, tiny_model

# different lengths (left padding), single- and multi-token answers, one prompt without a prefix
PROMPTS = [
    ([2, 17, 23, 5, 41, 9, 30], [12]),
    ([2, 8, 40], [12, 44, 7]),
    ([2, 33, 21, 19, 5, 6, 7, 8, 9, 10, 11], [50, 3 + 1]),
    ([2, 17, 23, 5, 41, 9, 30], [13]),
]


def relative_difference(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_same(batched, single):
    assert relative_difference(batched.attributions, single.attributions) < 1e-5
    assert relative_difference(batched.activations, single.activations) < 1e-5
    # a delta f(w̄) − f(0) is a difference of two values of f: it is only as exact as f itself (with target logprob,
    # f ≈ −4.5 and a delta of 0.002 is 5e-7 from its neighbour float after one rounding of f)
    ulp_of_f = 1e-6 * max(abs(single.base_target), 0.1)
    assert torch.allclose(batched.target_deltas, single.target_deltas, rtol=1e-5, atol=ulp_of_f)
    assert batched.base_target == pytest.approx(single.base_target, rel=1e-5)
    assert batched.n_answer_tokens == single.n_answer_tokens
    assert single.attributions.abs().max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_single_prompt_engine_for_every_family(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    singles = [attribute_prompt(model, adapter, p, a, steps=4, max_rows=1000) for p, a in PROMPTS]
    # everything in one forward, and groups of two units (rows of both in one forward)
    for max_rows in (10_000, 2 * 2 * 5):
        batched = attribute_prompts(model, adapter, PROMPTS, steps=4, max_rows=max_rows)
        for b, s in zip(batched, singles):
            assert_same(b, s)
    assert all(not layer._forward_pre_hooks for layer in adapter.layers(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_single_prompt_engine_with_pre_activation_neurons(family):
    model = tiny_model(family)
    adapter = adapter_for(model, "pre_activation")
    singles = [attribute_prompt(model, adapter, p, a, steps=4, max_rows=1000) for p, a in PROMPTS]
    for max_rows in (10_000, 2 * 2 * 5):
        batched = attribute_prompts(model, adapter, PROMPTS, steps=4, max_rows=max_rows)
        for b, s in zip(batched, singles):
            assert_same(b, s)
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("target", ["prob", "logprob"])
def test_batched_equals_single_for_every_rule_and_target(rule, target):
    model = tiny_model("llama", seed=1)
    adapter = adapter_for(model)
    batched = attribute_prompts(model, adapter, PROMPTS, steps=5, rule=rule, target=target, max_rows=10_000)
    for (p, a), b in zip(PROMPTS, batched):
        assert_same(b, attribute_prompt(model, adapter, p, a, steps=5, rule=rule, target=target))


def test_rows_chunked_when_one_unit_exceeds_max_rows_and_one_token_prompts():
    model = tiny_model("gpt2")
    adapter = adapter_for(model)
    prompts = [([17], [12]), ([9], [4, 5]), *PROMPTS[:2]]
    batched = attribute_prompts(model, adapter, prompts, steps=6, max_rows=5)  # 2 layers x 7 rows > 5
    for (p, a), b in zip(prompts, batched):
        assert_same(b, attribute_prompt(model, adapter, p, a, steps=6))


def test_grouping_does_not_change_the_result():
    model = tiny_model("qwen2", seed=2)
    adapter = adapter_for(model)
    alone = [attribute_prompts(model, adapter, [pair], steps=4)[0] for pair in PROMPTS]
    together = attribute_prompts(model, adapter, PROMPTS[::-1], steps=4, max_rows=10_000)[::-1]
    for a, t in zip(alone, together):
        assert relative_difference(t.attributions, a.attributions) < 1e-6


def test_layer_blocks_take_as_few_layers_as_fill_a_quarter_of_max_rows():
    assert layer_blocks(4, 300, 1024) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]  # 300 >= 256
    assert layer_blocks(4, 147, 1024) == [range(0, 2), range(2, 4)]  # a fact's 7 prompts x 21 rows of the world
    assert layer_blocks(4, 147, 2048) == [range(0, 4)]  # one pass, nothing skipped
    assert layer_blocks(5, 100, 1024) == [range(0, 3), range(3, 5)]
    assert layer_blocks(3, 1, 1) == [range(0, 1), range(1, 2), range(2, 3)]


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_passes_of_several_layers_starting_above_the_first(family):
    """A 4-layer model whose rows go in passes of two layers ([0, 1] and [2, 3]: the second pass starts at layer 2 with
    the baseline's hidden states) and of one layer each: both equal the single-prompt engine."""
    config = tiny_config(family)
    config.update({"n_layer": 4} if family == "gpt2" else {"num_hidden_layers": 4})
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = adapter_for(model)
    prompts = PROMPTS[:2]
    singles = [attribute_prompt(model, adapter, p, a, steps=4) for p, a in prompts]
    units_per_group, rows_per_unit_layer = 4, 5  # 4 answer tokens in all; steps 4 + the alpha = 0 row
    for max_rows, blocks in ((4 * 2 * units_per_group * rows_per_unit_layer, 2), (4 * units_per_group, 4)):
        assert len(layer_blocks(4, units_per_group * rows_per_unit_layer, max_rows)) == blocks
        for b, s in zip(attribute_prompts(model, adapter, prompts, steps=4, max_rows=max_rows), singles):
            assert_same(b, s)
