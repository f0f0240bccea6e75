"""Greedy generation with a KV cache while knowledge-neuron activations are scaled (DESIGN.md §4, "Interventions").

An intervention multiplies the activations of chosen FFN neurons (as the adapter defines them: the output
projection's input, or with `pre_activation` the first projection's output, which a forward hook on that projection
replaces; each row of a batch has its own neurons, `Scaling`) by a factor, at the positions a POSITION POLICY
names. With a prompt of P tokens and n generated tokens, the
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
them from the mask. Hooks are removed afterwards, also when the forward raises (`hook_neurons`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from knrecall.errors import KnrecallError
from knrecall.models.adapters import FFNAdapter, adapter_for, hook_neurons

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


def _multipliers(neurons: Sequence[Neurons | None], factors: Sequence[float], n_layers: int, width: int,
                 device: torch.device, dtype: torch.dtype) -> dict[int, torch.Tensor]:
    """Per layer with any selected neuron: a [batch, width] tensor, row r's factor at its neurons, 1 elsewhere."""
    out: dict[int, torch.Tensor] = {}
    for row, (selection, factor) in enumerate(zip(neurons, factors)):
        if factor == 1.0:
            continue
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


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of `prompts`, left-padded to the longest."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, longest - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, longest - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: real tokens at 0, 1, ... (pads at 0)."""
    return (mask.cumsum(dim=-1) - 1).clamp_min(0)


@torch.no_grad()
def greedy_generate(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                    *, neurons: Sequence[Neurons | None] | None = None, factor: float | Sequence[float] = 1.0,
                    policy: str = "last_prompt", gold_ids: Sequence[int] | None = None,
                    adapter: FFNAdapter | None = None, pad_id: int | None = None,
                    on_touch: TouchRecorder | None = None) -> list[Generation]:
    """Greedy continuation of each prompt (token ids, one batch) with row r's `neurons[r]` scaled by `factor` (one
    for every row, or one per row) at the positions of `policy`; stops a row at its first token in `stop_ids`.
    `neurons=None` (or factor 1) changes nothing.

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
    factors = [float(factor)] * len(prompts) if isinstance(factor, (int, float)) else [float(f) for f in factor]
    if len(factors) != len(prompts):
        raise KnrecallError(f"interventions: {len(factors)} factors for {len(prompts)} prompts")
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
    multipliers = _multipliers(neurons or [None] * batch, factors, n_layers, width, device, dtype)

    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    with_positions = _accepts(model, "position_ids")
    prompt_lens = torch.tensor([len(p) for p in prompts], device=device)
    share_prefix = policy != "all" and min(len(p) for p in prompts) > 1
    if share_prefix:
        # Positions 0 .. P-2 are never scaled under this policy, so every distinct prompt's prefix runs once
        # (without hooks) and its cache is copied to the rows that share it; the first hooked forward reads the
        # last prompt token only.
        distinct = list(dict.fromkeys(tuple(p) for p in prompts))
        row_of = torch.tensor([distinct.index(tuple(p)) for p in prompts], device=device) if len(distinct) > 1 \
            else torch.zeros(batch, dtype=torch.long, device=device)
        prefix_ids, prefix_mask = _left_padded([p[:-1] for p in distinct], pad_id, device)
        kwargs = {"position_ids": _positions(prefix_mask)} if with_positions else {}
        prefix = model(input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=True, **kwargs, **extra)
        cache = prefix.cache
        cache.reorder_cache(row_of)
        ids = torch.tensor([[p[-1]] for p in prompts], device=device)
        mask = torch.cat([prefix_mask[row_of], torch.ones((batch, 1), dtype=torch.long, device=device)], dim=1)
        first_positions = (prompt_lens - 1)[:, None]
        first = torch.ones((batch, 1), dtype=torch.bool, device=device)  # the last prompt token: in the policy
        offset = -(prompt_lens - 1)  # absolute position = column - offset
    else:
        cache = None
        ids, mask = _left_padded(prompts, pad_id, device)
        first_positions = _positions(mask)
        # which columns of the current forward the policy scales: [batch, seq] bool, set before every forward
        first = mask.bool() if policy == "all" else torch.zeros_like(mask, dtype=torch.bool)
        if policy != "all":
            first[:, -1] = True  # left padding: the last column is every row's last prompt token
        offset = longest - prompt_lens  # absolute position = column - pad (first forward)
    state = {"columns": first, "offset": offset, "rows": torch.arange(batch, device=device),
             "multipliers": multipliers}

    def scale(layer: int, ffn_input: torch.Tensor) -> torch.Tensor | None:
        columns, rows, multiplier = state["columns"], state["rows"], state["multipliers"].get(layer)
        if on_touch is not None and multiplier is not None:
            for index, row in enumerate(rows.tolist()):
                touched = torch.nonzero(columns[index]).flatten()
                if bool((multiplier[index] != 1).any()):
                    on_touch(layer, row, [int(c - state["offset"][index]) for c in touched])
        if multiplier is None or not bool(columns.any()):
            return None
        scaled = ffn_input * multiplier[:, None, :].to(ffn_input.dtype)
        return torch.where(columns[:, :, None], scaled, ffn_input)

    stops = torch.tensor(list(stop_ids), device=device)
    gold = torch.tensor(list(gold_ids), device=device) if gold_ids is not None else None
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    probs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    alive = torch.arange(batch, device=device)  # the rows still in the batch, in its order
    with hook_neurons(model, adapter, scale):
        kwargs = {"position_ids": first_positions} if with_positions else {}
        if cache is not None:
            kwargs["cache"] = cache
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs, **extra)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if gold is not None:
                probs[alive, step] = torch.softmax(logits, dim=-1).gather(1, gold[alive, None]).squeeze(1)
            token = torch.where(finished[alive], torch.full_like(alive, pad_id), logits.argmax(dim=-1))
            tokens[alive, step] = token
            finished[alive] |= torch.isin(token, stops)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            going = ~finished[alive]
            if 4 * int((~going).sum()) >= len(alive):  # a quarter of the batch has stopped: drop those rows
                keep = torch.nonzero(going).flatten()
                alive, token, mask = alive[keep], token[keep], mask[keep]
                out.cache.reorder_cache(keep)
                state["multipliers"] = {layer: m[keep] for layer, m in state["multipliers"].items()}
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
            reads = torch.full((len(alive), 1), policy != "last_prompt", dtype=torch.bool, device=device)
            state["columns"] = reads & ~finished[alive][:, None]  # rows that have stopped are not scaled (nor reported)
            state["offset"] = -(prompt_lens[alive] + step)  # the one column read is the row's position P + step
            state["rows"] = alive
            kwargs = {"position_ids": (prompt_lens[alive] + step)[:, None]} if with_positions else {}
            out = model(input_ids=token[:, None], attention_mask=mask, cache=out.cache, use_cache=True, **kwargs,
                        **extra)

    results = []
    for row in range(batch):
        kept: list[int] = []
        for token in tokens[row].tolist():
            kept.append(token)
            if token in stop_ids:
                break
        results.append(Generation(kept, probs[row, :len(kept)].tolist() if gold is not None else None))
    return results
