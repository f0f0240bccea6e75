"""`knrecall.recall.activations`: batched, left-padded reads of FFN neuron activations, for every family."""

from __future__ import annotations

import functools

import pytest
import torch

from knrecall.errors import KnrecallError
from knrecall.models.adapters import adapter_for
from knrecall.recall.activations import activations_at, columns_for, selected_columns
from tests.tiny_models import FAMILIES, LAYERS, POSITIONS, VOCAB, WIDTHS, explicit_pre_activation_hooks, tiny_model

# different lengths, so a batch needs padding; token 0 (the pad id) also occurs as a real token
SEQUENCES = [
    [2, 5, 9, 17, 33, 8, 41, 12, 0, 7, 60, 19],
    [2, 11, 4],
    [2, 30, 22, 9, 50, 6, 0],
    [2, 45],
    [2, 8, 8, 8, 19, 27, 35, 44, 52],
]
POSITIONS_OF = [
    [0, 5, 11],
    [2, 0],
    [6, 1, 3],
    [1],
    [0, 8, 4, 4],
]


@functools.cache
def _model(family: str):
    return tiny_model(family)


def _manual(model, adapter, sequence: list[int]) -> torch.Tensor:
    """[layers, seq, width] FFN inputs of one unpadded sequence, from pre-hooks placed here, not by the package."""
    captured = {}
    handles = [
        projection.register_forward_pre_hook(
            lambda module, args, layer=layer: captured.__setitem__(layer, args[0].detach().clone()))
        for layer, projection in enumerate(adapter.layers(model))
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([sequence]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    width = adapter.width(model)
    # OPT flattens tokens to [batch * seq, width]; with one sequence that is [seq, width] either way
    return torch.stack([captured[layer].reshape(len(sequence), width) for layer in range(len(captured))])


def _all_hooks_removed(model) -> bool:
    return all(not module._forward_pre_hooks and not module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_single_and_manual(family):
    model = _model(family)
    adapter = adapter_for(model)
    width = adapter.width(model)
    batched = activations_at(model, adapter, SEQUENCES, POSITIONS_OF, batch_size=3)
    single = [activations_at(model, adapter, [seq], [pos])[0] for seq, pos in zip(SEQUENCES, POSITIONS_OF)]
    assert _all_hooks_removed(model)
    for s, (seq, pos) in enumerate(zip(SEQUENCES, POSITIONS_OF)):
        assert batched[s].dtype == torch.float32 and batched[s].device.type == "cpu"
        assert batched[s].shape == (len(pos), LAYERS * width)
        assert torch.isfinite(batched[s]).all()
        torch.testing.assert_close(batched[s], single[s], atol=1e-5, rtol=1e-5)
        manual = _manual(model, adapter, seq)  # [layers, seq, width]
        expected = manual[:, pos].permute(1, 0, 2).reshape(len(pos), LAYERS * width)  # layer-major columns
        torch.testing.assert_close(batched[s], expected, atol=1e-5, rtol=1e-5)
        # the positions are distinguishable: reading a neighbouring position would not pass
        assert not torch.allclose(manual[:, 0], manual[:, 1], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_pre_activation_reads_equal_a_plain_forward_hook(family):
    """With `pre_activation` neurons the batched, left-padded reads are the first projection's outputs (the gate
    half for Phi-3), as plain forward hooks placed here record them on each unpadded sequence."""
    model = _model(family)
    adapter = adapter_for(model, "pre_activation")
    width = adapter.width(model)
    batched = activations_at(model, adapter, SEQUENCES, POSITIONS_OF, batch_size=3)
    assert _all_hooks_removed(model)
    for s, (seq, pos) in enumerate(zip(SEQUENCES, POSITIONS_OF)):
        captured = {}
        with torch.no_grad(), explicit_pre_activation_hooks(model, lambda l, x: captured.__setitem__(l, x[0].clone())):
            model(input_ids=torch.tensor([seq]), use_cache=False)
        manual = torch.stack([captured[layer] for layer in range(LAYERS)])  # [layers, seq, width]
        expected = manual[:, pos].permute(1, 0, 2).reshape(len(pos), LAYERS * width)
        torch.testing.assert_close(batched[s], expected, atol=1e-5, rtol=1e-5)
    neurons = {1: [width - 1, 0], 0: [3]}
    chosen = activations_at(model, adapter, SEQUENCES[:2], POSITIONS_OF[:2], neurons=neurons)[0]
    torch.testing.assert_close(chosen[:, 0], batched[0][:, 3], atol=1e-6, rtol=0)
    torch.testing.assert_close(chosen[:, 1], batched[0][:, width + width - 1], atol=1e-6, rtol=0)
    # the other definition reads another tensor
    ffn_input = activations_at(model, adapter_for(model), SEQUENCES[:1], POSITIONS_OF[:1])[0]
    assert not torch.allclose(ffn_input, batched[0], atol=1e-3)


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama"])
def test_selected_neurons_follow_column_order(family):
    model = _model(family)
    adapter = adapter_for(model)
    width = WIDTHS[family]
    neurons = {1: [width - 1, 0, 3], 0: [7, 2]}  # given out of layer order on purpose
    columns = columns_for(model, neurons)
    assert columns.pairs == ((0, 7), (0, 2), (1, width - 1), (1, 0), (1, 3))
    assert columns == selected_columns(neurons, LAYERS, width)
    assert columns.index(1, 0) == 3 and columns.layers() == [0, 1]

    seq, pos = SEQUENCES[0], [0, len(SEQUENCES[0]) - 1]  # first and last position
    full = activations_at(model, adapter, [seq], [pos])[0]
    chosen = activations_at(model, adapter, [seq, SEQUENCES[1]], [pos, [2]], neurons=neurons)[0]
    assert chosen.shape == (2, len(columns))
    for column, (layer, neuron) in enumerate(columns.pairs):
        torch.testing.assert_close(chosen[:, column], full[:, layer * width + neuron], atol=1e-6, rtol=0)
    manual = _manual(model, adapter, seq)
    torch.testing.assert_close(chosen[1, 2], manual[1, len(seq) - 1, width - 1], atol=1e-5, rtol=1e-5)


def test_full_column_order_is_layer_major():
    columns = selected_columns(None, 2, 3)
    assert columns.pairs == ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2))


def test_empty_selections_and_position_lists():
    model = _model("gpt2")
    out = activations_at(model, None, [[2, 5, 6], [2, 7]], [[], [1]], neurons={0: [1, 2]})
    assert out[0].shape == (0, 2) and out[1].shape == (1, 2)
    out = activations_at(model, None, [[2, 5, 6]], [[0, 2]], neurons={1: []})
    assert out[0].shape == (2, 0)
    assert activations_at(model, None, [], []) == []


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_errors_name_the_offending_index(family):
    model = _model(family)
    adapter = adapter_for(model)
    width = WIDTHS[family]
    sequences, ok = [[2, 5, 6], [2, 7, 8, 9]], [[0], [0]]
    with pytest.raises(KnrecallError, match=r"position 4 of sequence 1"):
        activations_at(model, adapter, sequences, [[0], [1, 4]])
    with pytest.raises(KnrecallError, match=r"position -1 of sequence 0"):
        activations_at(model, adapter, sequences, [[-1], [0]])
    with pytest.raises(KnrecallError, match=rf"neuron {width} of layer 1"):
        activations_at(model, adapter, sequences, ok, neurons={1: [0, width]})
    with pytest.raises(KnrecallError, match=rf"layer {LAYERS}\b"):
        activations_at(model, adapter, sequences, ok, neurons={LAYERS: [0]})
    with pytest.raises(KnrecallError, match=r"layer -1\b"):
        activations_at(model, adapter, sequences, ok, neurons={-1: [0]})
    with pytest.raises(KnrecallError, match=r"sequence 1 has 65 tokens.*context of 64"):
        activations_at(model, adapter, [[2], [2] * (POSITIONS + 1)], [[0], [0]])
    with pytest.raises(KnrecallError, match=rf"sequence 0 contains token id {VOCAB}"):
        activations_at(model, adapter, [[2, VOCAB]], [[0]])
    with pytest.raises(KnrecallError, match=r"2 sequences but 1 position lists"):
        activations_at(model, adapter, sequences, [[0]])
    assert _all_hooks_removed(model)


def test_hooks_removed_when_the_forward_raises(monkeypatch):
    model = _model("llama")
    adapter = adapter_for(model)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(adapter.decoder_layers(model)[1], "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        activations_at(model, adapter, SEQUENCES[:2], POSITIONS_OF[:2])
    monkeypatch.undo()
    assert _all_hooks_removed(model)


def test_left_padding_without_position_ids_would_be_caught():
    """The comparison above can fail: GPT-2 left-padded without explicit position ids gives other activations."""
    model = _model("gpt2")
    adapter = adapter_for(model)
    seq = SEQUENCES[1]
    captured = {}
    handle = adapter.layers(model)[0].register_forward_pre_hook(
        lambda module, args: captured.__setitem__("x", args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[0, 0] + seq]), attention_mask=torch.tensor([[0, 0] + [1] * len(seq)]),
                  use_cache=False)
    finally:
        handle.remove()
    naive = captured["x"][0, 2:]  # the real tokens, read at their padded indices
    right = _manual(model, adapter, seq)[0]
    assert not torch.allclose(naive, right, atol=1e-3)
