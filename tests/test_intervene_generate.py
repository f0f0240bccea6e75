"""`knrecall.interventions.generate`: cached greedy generation with scaled KN activations, for every family.

The references here never use a KV cache: every step re-runs the whole sequence and scales exactly the positions
`policy_positions` names, so a cached run that scaled any other position (or missed one) gives other tokens or
other probabilities.
"""

from __future__ import annotations

import functools

import pytest
import torch

from knrecall.errors import KnrecallError
from knrecall.interventions.generate import POSITION_POLICIES, greedy_generate, policy_positions
from knrecall.models.adapters import adapter_for, hook_neurons
from tests.tiny_models import FAMILIES, LAYERS, WIDTHS, explicit_pre_activation_hooks, tiny_model

PROMPTS = [[2, 5, 9, 17, 33, 8, 41], [2, 11, 4], [2, 30, 22, 9, 50]]
NEURONS = [{0: [1, 5, 7], 1: [3]}, {1: [0, 2, 11, 20]}, {0: [4]}]
GOLD = [9, 17, 4]
STEPS = 6


@functools.cache
def _model(family: str):
    return tiny_model(family)


def _reference(model, prompt, neurons, factor, policy, steps, stops=(), neuron="ffn_input"):
    """Unbatched, uncached greedy decoding; each step scales the policy's positions of the sequence read so far.
    `pre_activation` neurons are scaled by plain forward hooks placed by the test (not by knrecall)."""
    adapter = adapter_for(model)
    sequence = list(prompt)
    generated, probs = [], []
    for _ in range(steps):
        read = len(sequence)  # positions 0 .. read - 1; the last one predicts the next token
        scaled = set(policy_positions(policy, len(prompt), read - len(prompt) + 1))
        columns = torch.tensor([p in scaled for p in range(read)])

        def scale(layer, x, columns=columns):
            if layer not in neurons:
                return None
            multiplier = torch.ones(x.shape[-1])
            multiplier[neurons[layer]] = factor
            return torch.where(columns[None, :, None], x * multiplier, x)

        hooks = hook_neurons(model, adapter, scale) if neuron == "ffn_input" else \
            explicit_pre_activation_hooks(model, scale)
        with torch.no_grad(), hooks:
            logits = model(input_ids=torch.tensor([sequence]), use_cache=False).logits[0, -1].float()
        token = int(logits.argmax())
        probs.append(torch.softmax(logits, -1))
        generated.append(token)
        sequence.append(token)
        if token in stops:
            break
    return generated, probs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", POSITION_POLICIES)
def test_cached_batched_generation_matches_uncached_reference(family, policy):
    model = _model(family)
    factor = 0.0 if policy == "last_prompt" else 3.0
    results = greedy_generate(model, PROMPTS, STEPS, stop_ids=[], neurons=NEURONS, factor=factor, policy=policy,
                              gold_ids=GOLD)
    for prompt, neurons, gold, result in zip(PROMPTS, NEURONS, GOLD, results):
        tokens, probs = _reference(model, prompt, neurons, factor, policy, STEPS)
        assert result.generated_ids == tokens
        expected = [float(p[gold]) for p in probs]
        assert result.gold_probs == pytest.approx(expected, rel=1e-4, abs=1e-6)


@functools.cache
def _sharp_model(family: str):
    """The tiny model with its weights ×3, so that the pre-activations leave the activation functions' nearly
    linear range around 0 (there scaling a pre-activation by k is almost scaling the activation by k)."""
    model = tiny_model(family)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                parameter.mul_(3)
    return model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", POSITION_POLICIES)
def test_pre_activation_scaling_matches_a_plain_forward_hook_reference(family, policy):
    """With `pre_activation` neurons, cached batched generation scales the first projection's OUTPUT at the policy's
    positions, as an uncached reference with plain forward hooks on that projection does; scaling the other
    definition's neurons instead would not pass."""
    model = _sharp_model(family)
    adapter = adapter_for(model, "pre_activation")
    factor = 0.0 if policy == "last_prompt" else 3.0
    results = greedy_generate(model, PROMPTS, STEPS, stop_ids=[], neurons=NEURONS, factor=factor, policy=policy,
                              gold_ids=GOLD, adapter=adapter)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for prompt, neurons, gold, result in zip(PROMPTS, NEURONS, GOLD, results):
        tokens, probs = _reference(model, prompt, neurons, factor, policy, STEPS, neuron="pre_activation")
        assert result.generated_ids == tokens
        assert result.gold_probs == pytest.approx([float(p[gold]) for p in probs], rel=1e-4, abs=1e-6)
    # ×3 on the gate is not ×3 on act(gate) · up (SiLU, GELU): the other definition gives other numbers. OPT's ReLU
    # is positively homogeneous (relu(3g) = 3 relu(g)), so there both definitions are the same intervention.
    if factor != 0.0 and family != "opt":
        other = greedy_generate(model, PROMPTS, STEPS, stop_ids=[], neurons=NEURONS, factor=factor, policy=policy,
                                gold_ids=GOLD)
        assert any(a.gold_probs != pytest.approx(b.gold_probs, rel=1e-3) for a, b in zip(results, other))


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2", "opt"])
def test_suppression_is_the_same_under_both_definitions(family):
    """act(0) = 0 for SiLU, GELU and ReLU: zeroing a pre-activation zeroes the neuron's FFN input too."""
    model = _sharp_model(family)
    kwargs = dict(stop_ids=[], neurons=NEURONS, factor=0.0, policy="all", gold_ids=GOLD)
    pre = greedy_generate(model, PROMPTS, STEPS, adapter=adapter_for(model, "pre_activation"), **kwargs)
    ffn = greedy_generate(model, PROMPTS, STEPS, **kwargs)
    for a, b in zip(pre, ffn):
        assert a.generated_ids == b.generated_ids
        assert a.gold_probs == pytest.approx(b.gold_probs, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", POSITION_POLICIES)
def test_rows_sharing_a_prompt_with_their_own_neurons_and_factors(family, policy):
    """The interventions' batches: one prompt in several rows (its prefix then runs once), each row with its own
    neurons and factor, beside other prompts."""
    model = _model(family)
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[1]]
    neurons = [NEURONS[0], NEURONS[1], NEURONS[1], None, NEURONS[2]]
    factors = [0.0, 3.0, 2.0, 1.0, 0.0]
    results = greedy_generate(model, prompts, STEPS, stop_ids=[], neurons=neurons, factor=factors, policy=policy,
                              gold_ids=[GOLD[0]] * 5)
    for prompt, selection, factor, result in zip(prompts, neurons, factors, results):
        tokens, probs = _reference(model, prompt, selection or {}, factor, policy, STEPS)
        assert result.generated_ids == tokens
        assert result.gold_probs == pytest.approx([float(p[GOLD[0]]) for p in probs], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "gemma2"])
@pytest.mark.parametrize("policy", POSITION_POLICIES)
def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(family, policy):
    """Rows stop at different steps; once a quarter of the batch has stopped those rows are dropped from the
    batch (and its cache). Every row must still equal its own unbatched reference."""
    model = _model(family)
    prompts = PROMPTS * 3
    neurons = (NEURONS * 3)[: len(prompts)]
    free = greedy_generate(model, prompts, STEPS, stop_ids=[], neurons=neurons, factor=2.0, policy=policy)
    stops = sorted({free[0].generated_ids[1], free[1].generated_ids[2]})  # some rows stop after 2-3 tokens
    results = greedy_generate(model, prompts, STEPS, stop_ids=stops, neurons=neurons, factor=2.0, policy=policy,
                              gold_ids=[GOLD[0]] * len(prompts))
    lengths = {len(r.generated_ids) for r in results}
    assert min(lengths) < STEPS and len(lengths) > 1  # rows did stop early, and not all at once
    for prompt, selection, result in zip(prompts, neurons, results):
        tokens, probs = _reference(model, prompt, selection, 2.0, policy, STEPS, stops=stops)
        assert result.generated_ids == tokens
        assert result.gold_probs == pytest.approx([float(p[GOLD[0]]) for p in probs], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_factor_one_and_no_neurons_change_nothing(family):
    model = _model(family)
    base = greedy_generate(model, PROMPTS, STEPS, stop_ids=[], gold_ids=GOLD)
    for policy in POSITION_POLICIES:
        plain = greedy_generate(model, PROMPTS, STEPS, stop_ids=[], policy=policy, gold_ids=GOLD)
        same = greedy_generate(model, PROMPTS, STEPS, stop_ids=[], neurons=NEURONS, factor=1.0, policy=policy,
                               gold_ids=GOLD)
        # the same computation with and without neurons at factor 1: bitwise equal
        assert [r.generated_ids for r in same] == [r.generated_ids for r in plain]
        assert [r.gold_probs for r in same] == [r.gold_probs for r in plain]
        # across policies the forwards differ (policy `all` runs the prompt in one forward, the others share its
        # prefix), so the probabilities agree to float rounding only (bitwise on some CPUs, not on others)
        assert [r.generated_ids for r in same] == [r.generated_ids for r in base]
        for got, want in zip(same, base):
            assert got.gold_probs == pytest.approx(want.gold_probs, rel=1e-5, abs=1e-9)
    # and the loop itself is plain greedy decoding: the same tokens as the uncached reference without scaling
    for prompt, result in zip(PROMPTS, base):
        assert result.generated_ids == _reference(model, prompt, {}, 1.0, "all", STEPS)[0]


def test_suppressing_at_last_prompt_equals_a_manual_computation():
    """×0 at `last_prompt`: the first step's distribution equals a forward whose down_proj input is zeroed by hand
    at the last prompt position only, for the chosen neurons only."""
    model = _model("llama")
    prompt, layer, chosen = PROMPTS[0], 1, [3, 8, 40]

    def zero_last(module, args):
        x = args[0].clone()
        x[:, -1, chosen] = 0.0
        return (x,)

    handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(zero_last)
    try:
        with torch.no_grad():
            manual = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    finally:
        handle.remove()
    with torch.no_grad():
        plain = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    result = greedy_generate(model, [prompt], 1, stop_ids=[], neurons=[{layer: chosen}], factor=0.0,
                             policy="last_prompt", gold_ids=[int(manual.argmax())])[0]
    assert result.generated_ids == [int(manual.argmax())]
    assert result.gold_probs[0] == pytest.approx(float(manual.max()), rel=1e-5)
    assert not torch.allclose(manual, plain)  # the manual intervention did change something


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "gemma2"])
@pytest.mark.parametrize("policy", POSITION_POLICIES)
def test_each_policy_touches_exactly_its_positions(family, policy):
    model = _model(family)
    touched: dict[tuple[int, int], list[int]] = {}

    def record(layer, row, positions):
        touched.setdefault((layer, row), []).extend(positions)

    stops = [7]
    results = greedy_generate(model, PROMPTS, STEPS, stop_ids=stops, neurons=NEURONS, factor=0.5, policy=policy,
                              on_touch=record)
    for row, (prompt, neurons, result) in enumerate(zip(PROMPTS, NEURONS, results)):
        expected = policy_positions(policy, len(prompt), len(result.generated_ids))
        for layer in range(LAYERS):
            got = touched.get((layer, row), [])
            assert got == (expected if layer in neurons else [])


def test_policy_positions_semantics():
    assert policy_positions("last_prompt", 5, 3) == [4]
    assert policy_positions("all_generated", 5, 3) == [4, 5, 6]
    assert policy_positions("all", 3, 2) == [0, 1, 2, 3]
    assert policy_positions("all_generated", 5, 1) == [4]
    with pytest.raises(KnrecallError, match="unknown position policy 'every'"):
        policy_positions("every", 5, 1)


def test_stop_tokens_end_a_row_and_rows_stay_independent():
    model = _model("llama")
    free = greedy_generate(model, PROMPTS, STEPS, stop_ids=[])
    stop = free[0].generated_ids[1]
    stopped = greedy_generate(model, PROMPTS, STEPS, stop_ids=[stop])
    for a, b in zip(free, stopped):
        cut = a.generated_ids.index(stop) + 1 if stop in a.generated_ids else len(a.generated_ids)
        assert b.generated_ids == a.generated_ids[:cut]
    alone = [greedy_generate(model, [p], STEPS, stop_ids=[stop])[0].generated_ids for p in PROMPTS]
    assert alone == [r.generated_ids for r in stopped]


def test_bad_arguments_are_named():
    model = _model("llama")
    with pytest.raises(KnrecallError, match="neuron 999 of layer 0 is out of range"):
        greedy_generate(model, PROMPTS[:1], 2, [], neurons=[{0: [999]}], factor=0.0)
    with pytest.raises(KnrecallError, match="layer 5 is out of range"):
        greedy_generate(model, PROMPTS[:1], 2, [], neurons=[{5: [1]}], factor=0.0)
    with pytest.raises(KnrecallError, match="2 neuron sets for 1 prompts"):
        greedy_generate(model, PROMPTS[:1], 2, [], neurons=NEURONS[:2], factor=0.0)
    with pytest.raises(KnrecallError, match="exceeds the model's context"):
        greedy_generate(model, [[2] * 60], 10, [])
    assert WIDTHS["llama"] > 40  # the neuron ids used above exist in the gated tiny models
