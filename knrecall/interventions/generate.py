"""Greedy generation with a KV cache while knowledge-neuron activations are scaled (DESIGN.md §4, "Interventions").

An intervention multiplies the activations of chosen FFN neurons (each row of a batch has its own neurons, `Scaling`)
by a factor, at the positions a POSITION POLICY names. With a prompt of P tokens and n generated tokens, the
positions the model reads are 0 .. P + n - 2 (the last generated token is never read back); position p is the one
whose output predicts token p + 1. The policies, as sets of those positions:

- `last_prompt`: {P - 1}, the position that predicts the first answer (or chain) token;
- `all_generated`: {P - 1, ..., P + n - 2}, every position that predicts a generated token;
- `all`: {0, ..., P + n - 2}, every position of the prompt and of the generation.

`policy_positions` states these sets; `greedy_generate` applies them. With a KV cache the first forward reads the
whole (left-padded) prompt and every later forward reads ONE new position, so the loop tells the hook, per forward,
which of the positions it reads are in the policy's set: `last_prompt` scales only the prompt's last column of the
first forward and nothing during decoding; `all_generated` that column and every decoding forward; `all` every real
(non-pad) column of the first forward and every decoding forward. Pads are never scaled.

Everything a forward reads is fed with explicit `position_ids` (real tokens of every row at 0, 1, ... as in an
unbatched call) and an attention mask that hides the pads; families whose forward takes no `position_ids` derive
them from the mask. Hooks are removed afterwards, also when the forward raises (`hook_ffn_inputs`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from knrecall.errors import KnrecallError
from knrecall.models.adapters import FFNAdapter, adapter_for, hook_ffn_inputs

POSITION_POLICIES = ("last_prompt", "all_generated", "all")

Neurons = dict[int, list[int]]  # layer -> neuron indices
TouchRecorder = Callable[[int, int, list[int]], None]  # (layer, row, absolute positions scaled in this forward)


@dataclass(frozen=True)
class Generation:
    """One row's greedy continuation: its tokens (up to and including the first stop token) and, per generated
    token, the probability the model gave the row's gold token at that step (fp32 softmax; None without a gold)."""

    generated_ids: list[int]
    gold_probs: list[float] | None


def policy_positions(policy: str, prompt_len: int, generated_len: int) -> list[int]:
    """The absolute positions `policy` scales for a prompt of `prompt_len` tokens and `generated_len` generated ones."""
    check_policy(policy)
    if prompt_len < 1:
        raise KnrecallError("interventions: a prompt needs at least one token")
    last_read = prompt_len + max(generated_len, 1) - 2  # the last position whose output was used
    if policy == "last_prompt":
        return [prompt_len - 1]
    if policy == "all_generated":
        return list(range(prompt_len - 1, last_read + 1))
    return list(range(0, last_read + 1))


def check_policy(policy: str) -> None:
    if policy not in POSITION_POLICIES:
        raise KnrecallError(f"interventions: unknown position policy '{policy}' (known: {', '.join(POSITION_POLICIES)})")


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _multipliers(neurons: Sequence[Neurons | None], factor: float, n_layers: int, width: int,
                 device: torch.device, dtype: torch.dtype) -> dict[int, torch.Tensor]:
    """Per layer with any selected neuron: a [batch, width] tensor, `factor` at each row's neurons, 1 elsewhere."""
    out: dict[int, torch.Tensor] = {}
    for row, selection in enumerate(neurons):
        for layer, indices in (selection or {}).items():
            if not 0 <= layer < n_layers:
                raise KnrecallError(f"interventions: layer {layer} is out of range; the model has {n_layers} layers")
            if not indices:
                continue
            bad = [i for i in indices if not 0 <= i < width]
            if bad:
                raise KnrecallError(f"interventions: neuron {bad[0]} of layer {layer} is out of range "
                                    f"(layers have {width} neurons)")
            if layer not in out:
                out[layer] = torch.ones(len(neurons), width, device=device, dtype=dtype)
            out[layer][row, torch.tensor(indices, dtype=torch.long, device=device)] = factor
    return out


@torch.no_grad()
def greedy_generate(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                    *, neurons: Sequence[Neurons | None] | None = None, factor: float = 1.0,
                    policy: str = "last_prompt", gold_ids: Sequence[int] | None = None,
                    adapter: FFNAdapter | None = None, pad_id: int | None = None,
                    on_touch: TouchRecorder | None = None) -> list[Generation]:
    """Greedy continuation of each prompt (token ids, one batch) with row r's `neurons[r]` scaled by `factor` at the
    positions of `policy`; stops a row at its first token in `stop_ids`. `neurons=None` (or factor 1) changes nothing.

    `gold_ids[r]`, if given, is the token whose probability is recorded at every step of row r. `on_touch`, if given,
    is called for every layer, row and forward with the absolute positions that forward scaled (for tests and audits).
    """
    check_policy(policy)
    if max_new_tokens < 1:
        raise KnrecallError(f"interventions: max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise KnrecallError("interventions: every prompt needs at least one token")
    if neurons is not None and len(neurons) != len(prompts):
        raise KnrecallError(f"interventions: {len(neurons)} neuron sets for {len(prompts)} prompts")
    if gold_ids is not None and len(gold_ids) != len(prompts):
        raise KnrecallError(f"interventions: {len(gold_ids)} gold tokens for {len(prompts)} prompts")
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(p) for p in prompts)
    if limit and longest + max_new_tokens > limit:
        raise KnrecallError(f"interventions: a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds "
                            f"the model's context of {limit} positions")

    adapter = adapter or adapter_for(model)
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    n_layers, width = len(adapter.layers(model)), adapter.width(model)
    batch = len(prompts)
    if pad_id is None:
        pad_id = getattr(model.config, "pad_token_id", None)
        pad_id = 0 if pad_id is None else int(pad_id)
    multipliers = _multipliers(neurons or [None] * batch, factor, n_layers, width, device, dtype)
    if factor == 1.0:
        multipliers = {}

    ids = torch.full((batch, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    prompt_lens = torch.tensor([len(p) for p in prompts], device=device)

    # which columns of the current forward the policy scales: [batch, seq] bool, set before every forward
    first = mask.bool() if policy == "all" else torch.zeros_like(mask, dtype=torch.bool)
    if policy != "all":
        first[:, -1] = True  # left padding: the last column is every row's last prompt token
    state = {"columns": first, "offset": longest - prompt_lens}  # absolute position = column - pad (first forward)

    def scale(layer: int, ffn_input: torch.Tensor) -> torch.Tensor | None:
        columns = state["columns"]
        if on_touch is not None:
            for row in range(batch):
                touched = torch.nonzero(columns[row]).flatten()
                if layer in multipliers and bool((multipliers[layer][row] != 1).any()):
                    on_touch(layer, row, [int(c - state["offset"][row]) for c in touched])
        multiplier = multipliers.get(layer)
        if multiplier is None or not bool(columns.any()):
            return None
        scaled = ffn_input * multiplier[:, None, :].to(ffn_input.dtype)
        return torch.where(columns[:, :, None], scaled, ffn_input)

    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    with_positions = _accepts(model, "position_ids")
    stops = torch.tensor(list(stop_ids), device=device)
    gold = torch.tensor(list(gold_ids), device=device) if gold_ids is not None else None
    generated = torch.zeros((batch, 0), dtype=torch.long, device=device)
    gold_probs: list[torch.Tensor] = []
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
    with hook_ffn_inputs(model, adapter, scale):
        kwargs = {"position_ids": positions} if with_positions else {}
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs, **extra)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if gold is not None:
                gold_probs.append(torch.softmax(logits, dim=-1).gather(1, gold[:, None]).squeeze(1))
            token = torch.where(finished, torch.full_like(finished, pad_id, dtype=torch.long), logits.argmax(dim=-1))
            generated = torch.cat([generated, token[:, None]], dim=1)
            finished = finished | torch.isin(token, stops)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
            reads = torch.full((batch, 1), policy != "last_prompt", dtype=torch.bool, device=device)
            state["columns"] = reads & ~finished[:, None]  # rows that have stopped are not scaled (nor reported)
            state["offset"] = -(prompt_lens + step)  # the one column read is the row's position P + step
            kwargs = {"position_ids": (prompt_lens + step)[:, None]} if with_positions else {}
            out = model(input_ids=token[:, None], attention_mask=mask, cache=out.cache, use_cache=True, **kwargs, **extra)

    results = []
    for row in range(batch):
        tokens = generated[row].tolist()
        kept: list[int] = []
        for token in tokens:
            kept.append(token)
            if token in stop_ids:
                break
        probs = [float(p[row]) for p in gold_probs[:len(kept)]] if gold is not None else None
        results.append(Generation(kept, probs))
    return results
