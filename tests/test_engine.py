"""The attribution engine equals the naive reference (every family, single/multi-token answers, every rule, both
neuron definitions)."""

import pytest
import torch

from knrecall.attribution.engine import attribute_prompt
from knrecall.attribution.quadrature import RULES, quadrature
from knrecall.attribution.reference import attribute_prompt_naive
from knrecall.errors import KnrecallError
from knrecall.models.adapters import adapter_for

from tiny_models import FAMILIES, explicit_pre_activation_hooks, tiny_model

PROMPT = [2, 17, 23, 5, 41, 9, 30]  # BOS + six ordinary tokens
SINGLE = [12]
MULTI = [12, 44, 7]


def relative_difference(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def _assert_engine_equals_naive(family, model, adapter, answer, rule):
    """The fast engine's maps, activations and target deltas equal the naive reference's (and are not all zero)."""
    fast = attribute_prompt(model, adapter, PROMPT, answer, steps=6, rule=rule, max_rows=5)
    naive = attribute_prompt_naive(model, adapter, PROMPT, answer, steps=6, rule=rule)
    assert relative_difference(fast.attributions, naive.attributions) < 1e-5, family
    assert relative_difference(fast.activations, naive.activations) < 1e-5
    assert torch.allclose(fast.target_deltas, naive.target_deltas, rtol=1e-5, atol=1e-7)
    assert fast.base_target == pytest.approx(naive.base_target, rel=1e-5)
    assert fast.attributions.abs().max() > 0  # not trivially equal
    return fast


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("answer", [SINGLE, MULTI], ids=["single-token", "multi-token"])
def test_engine_equals_naive_for_every_family(family_model, answer, rule):
    family, model = family_model
    adapter = adapter_for(model)
    fast = _assert_engine_equals_naive(family, model, adapter, answer, rule)
    assert fast.n_answer_tokens == len(answer)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(not layer._forward_pre_hooks for layer in adapter.layers(model))


def _no_hooks_left(model) -> bool:
    return all(not module._forward_pre_hooks and not module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("rule", ["gauss_legendre", "linspace"])
@pytest.mark.parametrize("answer", [SINGLE, MULTI], ids=["single-token", "multi-token"])
def test_engine_equals_naive_with_pre_activation_neurons_for_every_family(family_model, answer, rule):
    family, model = family_model
    adapter = adapter_for(model, "pre_activation")
    fast = _assert_engine_equals_naive(family, model, adapter, answer, rule)
    assert _no_hooks_left(model)
    # the activations are the first projection's outputs (read by a plain forward hook) at the predicting position
    seen = {}
    with torch.no_grad(), explicit_pre_activation_hooks(model, lambda i, x: seen.__setitem__(i, x[0, -1].clone())):
        model(input_ids=torch.tensor([PROMPT]))
    torch.testing.assert_close(fast.activations, torch.stack([seen[0], seen[1]]), rtol=1e-5, atol=1e-6)


def test_pre_activation_completeness_holds():
    """Σ_i attr_i ≈ f(w̄) − f(0 at l) with pre-activation neurons too (zeroing the gate zeroes the FFN)."""
    model = tiny_model("llama", seed=3)
    ig = attribute_prompt(model, adapter_for(model, "pre_activation"), PROMPT, SINGLE, steps=16)
    assert float(ig.completeness_error.max()) < 1e-4


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("target", ["prob", "logprob"])
def test_engine_equals_naive_for_both_targets(rule, target):
    model = tiny_model("llama", seed=1)
    adapter = adapter_for(model)
    fast = attribute_prompt(model, adapter, PROMPT, MULTI, steps=5, rule=rule, target=target, max_rows=7)
    naive = attribute_prompt_naive(model, adapter, PROMPT, MULTI, steps=5, rule=rule, target=target)
    assert relative_difference(fast.attributions, naive.attributions) < 1e-5


def test_chunking_does_not_change_the_result():
    model = tiny_model("qwen2", seed=2)
    adapter = adapter_for(model)
    one_batch = attribute_prompt(model, adapter, PROMPT, MULTI, steps=8, max_rows=10_000)
    tiny_chunks = attribute_prompt(model, adapter, PROMPT, MULTI, steps=8, max_rows=3)
    assert relative_difference(tiny_chunks.attributions, one_batch.attributions) < 1e-6


def test_one_token_prompt_without_prefix():
    model = tiny_model("gpt2")
    adapter = adapter_for(model)
    fast = attribute_prompt(model, adapter, [17], SINGLE, steps=4)
    naive = attribute_prompt_naive(model, adapter, [17], SINGLE, steps=4)
    assert relative_difference(fast.attributions, naive.attributions) < 1e-5


def test_completeness_error_shrinks_as_steps_grow():
    model = tiny_model("llama", seed=3)
    with torch.no_grad():  # larger weights make the path integral visibly non-linear
        for parameter in model.parameters():
            parameter.mul_(2)
    adapter = adapter_for(model)
    for rule in ("left", "midpoint"):
        errors = [float(attribute_prompt(model, adapter, PROMPT, SINGLE, steps=m, rule=rule).completeness_error.max())
                  for m in (2, 4, 16, 64)]
        assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 20, (rule, errors)
    gauss = [float(attribute_prompt(model, adapter, PROMPT, SINGLE, steps=m).completeness_error.max()) for m in (2, 16)]
    assert gauss[1] < gauss[0] / 20 and gauss[1] < 1e-4


def test_quadrature_weights_and_exactness():
    for rule in RULES:
        alphas, weights = quadrature(rule, 7)
        assert float(weights.sum()) == pytest.approx(1.0)
        assert float(alphas.min()) >= 0 and float(alphas.max()) <= 1
    alphas, weights = quadrature("gauss_legendre", 5)
    assert float((weights * alphas**9).sum()) == pytest.approx(0.1, rel=1e-12)  # degree 2m-1 exact
    with pytest.raises(KnrecallError, match="at least 2"):
        quadrature("midpoint", 1)


def test_hooks_are_removed_after_an_error():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    with pytest.raises(IndexError):
        attribute_prompt(model, adapter, PROMPT, [10_000], steps=3)  # gold id outside the vocabulary
    assert all(not layer._forward_pre_hooks for layer in adapter.layers(model))


def test_prompt_longer_than_context_is_refused():
    model = tiny_model("llama")
    with pytest.raises(KnrecallError, match="context"):
        attribute_prompt(model, adapter_for(model), [5] * 200, SINGLE, steps=3)
