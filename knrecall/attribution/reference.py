"""The naive reference: per-layer IG the slow, obvious way — the definition the engine must equal.

For every answer token and every layer, the full context (prompt + earlier gold tokens) is re-run once per
quadrature step (the steps of one layer form one batch); a hook replaces that layer's activations at the
predicting position (or at an earlier `position`, the target still read at the predicting one) by α·w̄. Kept for
tests and benchmarks only.
"""

from __future__ import annotations

import torch

from knrecall.attribution.engine import LayerwiseIG, _Accumulator, check_inputs
from knrecall.attribution.quadrature import quadrature
from knrecall.attribution.target import target_values
from knrecall.models.adapters import FFNAdapter, hook_neurons


def _full_forward(model, adapter, ids: torch.Tensor, pos: int, layer: int | None, values: torch.Tensor | None,
                  read: int | None = None):
    """Logits at `read` (default `pos`) with layer `layer`'s activations at `pos` replaced by `values`."""
    def replace(index: int, ffn_input: torch.Tensor):
        if index != layer:
            return None
        new = ffn_input.clone()
        new[:, pos, :] = values
        return new

    with hook_neurons(model, adapter, replace):
        return model(input_ids=ids, use_cache=False).logits[:, pos if read is None else read]


def attribute_prompt_naive(
    model,
    adapter: FFNAdapter,
    prompt_ids: list[int],
    answer_ids: list[int],
    *,
    steps: int = 20,
    rule: str = "gauss_legendre",
    target: str = "prob",
    position: int | None = None,
) -> LayerwiseIG:
    """`position`: the prompt position whose neurons are scaled (default: the predicting position of each answer
    token, as the engine; `knrecall.attribution.position` for an earlier one)."""
    check_inputs(model, prompt_ids, answer_ids)
    model.requires_grad_(False)
    device = next(model.parameters()).device
    n_layers, width = len(adapter.layers(model)), adapter.width(model)
    alphas, weights = quadrature(rule, steps)
    acc = _Accumulator(n_layers, width)
    for j, gold in enumerate(answer_ids):
        context = prompt_ids + answer_ids[:j]
        ids = torch.tensor([context], device=device)
        read = len(context) - 1
        pos = read if position is None else position
        captured: dict[int, torch.Tensor] = {}

        def capture(index: int, ffn_input: torch.Tensor):
            captured[index] = ffn_input[0, pos].detach().clone()

        with torch.no_grad(), hook_neurons(model, adapter, capture):
            f_base = float(target_values(model(input_ids=ids, use_cache=False).logits[:, read], gold, target)[0])
        acts = torch.stack([captured[index] for index in range(n_layers)])
        attr = torch.zeros(n_layers, width, dtype=torch.float64)
        f_zero = torch.zeros(n_layers, dtype=torch.float64)
        for layer in range(n_layers):
            leaf = (alphas.to(device=device, dtype=acts.dtype)[:, None] * acts[layer][None, :]).requires_grad_(True)
            with torch.enable_grad():
                logits = _full_forward(model, adapter, ids.repeat(steps, 1), pos, layer, leaf, read)
                (grad,) = torch.autograd.grad(target_values(logits, gold, target).sum(), [leaf])
            attr[layer] = acts[layer].double().cpu() * (weights[:, None] * grad.double().cpu()).sum(dim=0)
            with torch.no_grad():
                zero = torch.zeros(1, width, dtype=acts.dtype, device=device)
                f_zero[layer] = float(target_values(_full_forward(model, adapter, ids, pos, layer, zero, read), gold, target)[0])
        acc.add(attr, acts, f_base, f_zero)
    return acc.result(adapter.neuron)
