"""IG at an earlier prompt position (`attribute_at_position`) equals the naive reference, every family; at the last
position it is the engine's computation."""

import pytest
import torch

from knrecall.attribution.engine import attribute_prompt
from knrecall.attribution.position import attribute_at_position, attribute_at_positions
from knrecall.attribution.reference import attribute_prompt_naive
from knrecall.errors import KnrecallError
from knrecall.models.adapters import adapter_for

from tiny_models import FAMILIES, tiny_model

PROMPT, ANSWER = [2, 17, 23, 5, 41, 9, 30], [12]


def relative_difference(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_same(fast, naive):
    assert naive.attributions.abs().max() > 0
    assert relative_difference(fast.attributions, naive.attributions) < 1e-5
    assert relative_difference(fast.activations, naive.activations) < 1e-6
    assert torch.allclose(fast.target_deltas, naive.target_deltas, rtol=1e-5, atol=1e-7)
    assert fast.base_target == pytest.approx(naive.base_target, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_earlier_position_equals_the_naive_reference_for_every_family(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    fast = attribute_at_position(model, adapter, PROMPT, ANSWER, 3, steps=4, max_rows=7)  # several chunks
    assert_same(fast, attribute_prompt_naive(model, adapter, PROMPT, ANSWER, steps=4, position=3))


@pytest.mark.parametrize("neuron", ["ffn_input", "pre_activation"])
def test_multi_token_answer_first_position_and_neuron_definitions(neuron):
    model = tiny_model("llama")
    adapter = adapter_for(model, neuron)
    for position in (0, 2):  # position 0: no prefix to cache
        fast = attribute_at_position(model, adapter, PROMPT, [12, 44, 7], position, steps=3)
        naive = attribute_prompt_naive(model, adapter, PROMPT, [12, 44, 7], steps=3, position=position)
        assert_same(fast, naive)
        assert fast.n_answer_tokens == 3


def test_the_position_changes_the_map_and_the_last_position_is_the_engine():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    last = attribute_at_position(model, adapter, PROMPT, ANSWER, len(PROMPT) - 1, steps=4)
    assert_same(last, attribute_prompt(model, adapter, PROMPT, ANSWER, steps=4))
    earlier = attribute_at_position(model, adapter, PROMPT, ANSWER, 2, steps=4)
    assert relative_difference(earlier.attributions, last.attributions) > 0.1
    assert not torch.allclose(earlier.activations, last.activations)


def test_a_position_outside_the_prompt_is_an_error():
    model = tiny_model("llama")
    with pytest.raises(KnrecallError, match="position 7 is outside the prompt's 7 tokens"):
        attribute_at_position(model, adapter_for(model), PROMPT, ANSWER, 7)


# same shape (position 3, 7 tokens: one group of three), a multi-token answer (its units in two groups), no prefix
JOBS = [(PROMPT, ANSWER, 3), (PROMPT, [12, 44], 3), ([2, 8, 40, 9, 30, 31, 5], [13], 3), (PROMPT, ANSWER, 0),
        ([2, 8, 40], [7], 1), (PROMPT, [13], 3)]


@pytest.mark.parametrize("family", FAMILIES)
def test_several_jobs_per_forward_equal_one_job_at_a_time_for_every_family(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    single = [attribute_at_position(model, adapter, p, a, q, steps=3) for p, a, q in JOBS]
    done = []
    for max_rows in (5, 64):  # 5: one unit per forward, its rows in chunks; 64: units of one shape together
        batched = attribute_at_positions(model, adapter, JOBS, steps=3, max_rows=max_rows, progress=done.append)
        assert len(batched) == len(JOBS)
        for fast, one in zip(batched, single):
            assert_same(fast, one)
            assert fast.n_answer_tokens == one.n_answer_tokens
    assert sum(done) == 2 * sum(len(a) for _, a, _ in JOBS)  # progress counts answer tokens
    assert relative_difference(single[0].attributions, single[5].attributions) > 1e-3  # distinct jobs stay distinct


def test_several_jobs_check_each_position_and_accept_none():
    model = tiny_model("llama")
    assert attribute_at_positions(model, adapter_for(model), []) == []
    with pytest.raises(KnrecallError, match="position 7 is outside the prompt's 7 tokens"):
        attribute_at_positions(model, adapter_for(model), [(PROMPT, ANSWER, 2), (PROMPT, ANSWER, 7)])
