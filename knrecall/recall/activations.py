"""FFN neuron activations at chosen positions of chosen sequences (DESIGN.md §4, "KN activation score").

What is measured. A neuron is, by default (`attribution.neuron: ffn_input`), one component of the INPUT of a
decoder layer's FFN output projection at one token position (`down_proj` for gated MLPs, `c_proj` for GPT-2,
`fc_out` for GPT-J, `dense_4h_to_h` for GPT-NeoX, `fc2` for OPT); with `pre_activation`, one component of the
OUTPUT of the FFN's first projection, before the activation function (`gate_proj`, `c_fc`, ...). Which module that
is for a model is decided by the adapter (`knrecall.models.adapters.adapter_for(model, neuron)`); this module is
family-agnostic and reads the activations through `hook_neurons`. Neuron (l, i) is component i of layer l's
neurons, 0 <= i < width = the adapter's width.

Inputs. Each sequence is a list of token ids (a full prompt, or prompt + generated tokens), and each of its
positions indexes into that UNPADDED sequence: 0 is its first token, len(sequence) - 1 its last (negative positions
are rejected rather than read Python-style). The activation at position p is the FFN input computed while the model
reads token p, i.e. the one that feeds the prediction of token p + 1.

Selected neurons (the column order). `neurons` maps a layer to neuron indices; the columns are
`[(layer, neuron) for layer in sorted(neurons) for neuron in neurons[layer]]` (layers ascending, neurons in the
given order, repeats kept). `neurons=None` selects every neuron of every layer, flattened layer-major:
column l * width + i is neuron (l, i). `selected_columns(...)` returns that order as an `ActivationColumns`.

Batching and padding. Sequences are grouped into batches of `batch_size` (by length, to keep padding small; the
results come back in the input order). Each row is LEFT-padded to the batch's longest sequence with an attention
mask that hides the pads, and with explicit `position_ids = cumsum(mask) - 1` (clamped at 0 on the pads), so the
real tokens of every row get positions 0, 1, ... exactly as in an unbatched call. Without them GPT-2 (learned
absolute positions) would read shifted position embeddings; OPT derives its positions from the mask itself and
rotary families only see relative positions, but every family gets the explicit ids. A requested position
p of a row with `pad` leading pads is read at padded index `pad + p`. One forward per batch, no KV cache, no grad;
the capture hooks are removed afterwards, also when the forward raises.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from knrecall.errors import KnrecallError
from knrecall.models.adapters import FFNAdapter, adapter_for, hook_neurons


@dataclass(frozen=True)
class ActivationColumns:
    """The (layer, neuron) pair of each column of an `activations_at` result, in order."""

    pairs: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.pairs)

    def index(self, layer: int, neuron: int) -> int:
        """The column of neuron (layer, neuron); its first column if it was selected more than once."""
        return self.pairs.index((layer, neuron))

    def layers(self) -> list[int]:
        """The distinct layers that contribute columns, ascending."""
        return sorted({layer for layer, _ in self.pairs})


def _normalise_neurons(neurons: dict[int, list[int]] | None, n_layers: int, width: int) -> dict[int, list[int]]:
    """Checked `neurons` with ascending layers (None -> every neuron of every layer)."""
    if neurons is None:
        return {layer: list(range(width)) for layer in range(n_layers)}
    checked: dict[int, list[int]] = {}
    for layer in sorted(neurons):
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise KnrecallError(f"activations: layer {layer!r} is out of range; the model has {n_layers} layers "
                                f"(0..{n_layers - 1})")
        indices = [int(i) for i in neurons[layer]]
        for index in indices:
            if not 0 <= index < width:
                raise KnrecallError(f"activations: neuron {index} of layer {layer} is out of range; "
                                    f"layers have {width} neurons (0..{width - 1})")
        checked[layer] = indices
    return checked


def selected_columns(neurons: dict[int, list[int]] | None, n_layers: int, width: int) -> ActivationColumns:
    """The column order of `activations_at(..., neurons)` for a model with `n_layers` layers of `width` neurons."""
    checked = _normalise_neurons(neurons, n_layers, width)
    return ActivationColumns(tuple((layer, i) for layer, indices in checked.items() for i in indices))


def columns_for(model: nn.Module, neurons: dict[int, list[int]] | None = None,
                adapter: FFNAdapter | None = None) -> ActivationColumns:
    """`selected_columns` with the layer count and width taken from `model`."""
    adapter = adapter or adapter_for(model)
    return selected_columns(neurons, len(adapter.layers(model)), adapter.width(model))


def _check_sequences(model: nn.Module, sequences: list[list[int]], positions: list[list[int]]) -> None:
    if len(sequences) != len(positions):
        raise KnrecallError(f"activations: {len(sequences)} sequences but {len(positions)} position lists")
    limit = getattr(model.config, "max_position_embeddings", None)
    vocab = getattr(model.config, "vocab_size", None)
    for s, (sequence, wanted) in enumerate(zip(sequences, positions)):
        if len(sequence) == 0:
            raise KnrecallError(f"activations: sequence {s} is empty")
        if limit and len(sequence) > limit:
            raise KnrecallError(f"activations: sequence {s} has {len(sequence)} tokens, more than the model's "
                                f"context of {limit}")
        if vocab and any(not 0 <= token < vocab for token in sequence):
            bad = next(token for token in sequence if not 0 <= token < vocab)
            raise KnrecallError(f"activations: sequence {s} contains token id {bad}, outside the vocabulary of "
                                f"{vocab}")
        for p in wanted:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < len(sequence):
                raise KnrecallError(f"activations: position {p!r} of sequence {s} is out of range; the sequence "
                                    f"has {len(sequence)} tokens (positions 0..{len(sequence) - 1})")


def _device_of(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def activations_at(model: nn.Module, adapter: FFNAdapter | None, sequences: list[list[int]],
                   positions: list[list[int]], neurons: dict[int, list[int]] | None = None,
                   batch_size: int = 16) -> list[torch.Tensor]:
    """Activations of the selected neurons at the given positions of each sequence.

    Returns, per sequence, a float32 CPU tensor [len(positions[s]), n_selected] whose columns follow
    `selected_columns(neurons, n_layers, width)` (see the module docstring). `adapter=None` picks
    `adapter_for(model)`. Out-of-range positions, layers or neurons and over-long sequences raise `KnrecallError`.
    """
    if batch_size < 1:
        raise KnrecallError(f"activations: batch_size must be at least 1, got {batch_size}")
    adapter = adapter or adapter_for(model)
    n_layers = len(adapter.layers(model))
    width = adapter.width(model)
    selection = _normalise_neurons(neurons, n_layers, width)
    n_columns = sum(len(indices) for indices in selection.values())
    positions = [list(wanted) for wanted in positions]
    _check_sequences(model, sequences, positions)

    device = _device_of(model)
    pad_id = getattr(model.config, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    neuron_index = {layer: torch.tensor(indices, dtype=torch.long, device=device)
                    for layer, indices in selection.items() if indices}

    results: list[torch.Tensor | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda s: len(sequences[s]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        wanted = [s for s in batch if positions[s]]
        for s in batch:
            if not positions[s] or not neuron_index:
                results[s] = torch.zeros(len(positions[s]), n_columns, dtype=torch.float32)
        if not wanted or not neuron_index:
            continue
        longest = max(len(sequences[s]) for s in wanted)
        ids = torch.full((len(wanted), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(wanted), longest), dtype=torch.long)
        rows, columns = [], []  # one entry per requested (sequence, position), in the padded batch
        for row, s in enumerate(wanted):
            pad = longest - len(sequences[s])
            ids[row, pad:] = torch.tensor(sequences[s], dtype=torch.long)
            mask[row, pad:] = 1
            rows.extend([row] * len(positions[s]))
            columns.extend(pad + p for p in positions[s])
        position_ids = (mask.cumsum(dim=-1) - 1).clamp_min(0)
        row_index = torch.tensor(rows, dtype=torch.long, device=device)
        column_index = torch.tensor(columns, dtype=torch.long, device=device)
        captured: dict[int, torch.Tensor] = {}

        def capture(layer: int, ffn_input: torch.Tensor, captured=captured, row_index=row_index,
                    column_index=column_index) -> None:
            selected = neuron_index.get(layer)
            if selected is not None:
                captured[layer] = ffn_input[row_index, column_index][:, selected].float().cpu()
            return None

        with hook_neurons(model, adapter, capture):
            model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                  use_cache=False, **extra)
        missing = [layer for layer in neuron_index if layer not in captured]
        if missing:
            raise KnrecallError(f"activations: the forward pass never reached the FFN of layer(s) {missing}")
        flat = torch.cat([captured[layer] for layer in sorted(neuron_index)], dim=1)
        offset = 0
        for s in wanted:
            count = len(positions[s])
            results[s] = flat[offset:offset + count].clone()
            offset += count
    return results  # type: ignore[return-value]
