"""Several prompts' IG rows in one forward: the attribution engine for small models and short prompts.

The single-prompt engine (`knrecall.attribution.engine.attribute_prompt`, the reference this module is tested
against) runs layers × (steps + 1) rows per answer token. For a small model and a short prompt that is far too
little work per forward: the per-call overhead dominates, not arithmetic. Here the rows of several prompts share
one forward, with a batch dimension over prompts:

- Each answer token j of each prompt is one *unit*: context = prompt_ids + answer_ids[:j] (teacher forcing),
  predicting gold = answer_ids[j]. A unit's prefix is its context minus the last token.
- Units are sorted by context length and grouped, up to `max_rows` rows per forward (a unit whose rows alone
  exceed `max_rows` runs alone, its rows chunked as in the single-prompt engine).
- A group's prefixes are LEFT-padded to the longest and run once, without grad, into one KV cache, with explicit
  position ids (the real tokens of every unit at 0, 1, ... as unbatched) and a 4D additive mask: causal over real
  tokens, pads never seen by a real token; a pad position sees only itself, so no row of softmax is ever fully
  masked (which gives NaN with some attention kernels).
- One single-token forward of every unit's last token gives its baseline activations w̄, f(w̄), and the hidden
  states every decoder layer receives at that token.
- The rows pass is the single-prompt engine's, with a batch dimension: row (b, r) is unit b's last token at its
  own position id, seeing unit b's real prefix and itself only; a hook replaces its layer's activations by α·w̄_b.
  Each unit's f depends only on its own leaves, so one `autograd.grad` of the sum gives every unit's gradients.
- The rows go in passes of consecutive layers (`layer_blocks`), each forward starting at its pass's lowest layer
  a: a row scaled at layer l ≥ a computes in the layers below a exactly what the baseline computed, so those layers
  are skipped (`skip_layers_below`) and layer a receives the baseline's hidden states instead
  (`hook_layer_inputs`). With one layer per pass a row runs (L + 1) / 2 of L layers on average, forward and
  backward, instead of L; a small batch of a small model takes several layers per pass, so that the forwards it
  saves arithmetic in are not outweighed by the forwards' own overhead.

Results equal the single-prompt engine's to float rounding (tested for every family, with padding and
multi-token answers); they do not depend on how prompts are grouped beyond that rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from knrecall.attribution.engine import LayerwiseIG, _Accumulator, check_inputs, layer_blocks, row_plan
from knrecall.attribution.quadrature import quadrature
from knrecall.attribution.target import target_values
from knrecall.models.adapters import FFNAdapter, hook_layer_inputs, hook_neurons, skip_layers_below


@dataclass(frozen=True)
class _Unit:
    prompt: int  # index of the prompt in the caller's list
    token: int  # j: which answer token this unit predicts
    context: tuple[int, ...]  # prompt_ids + answer_ids[:j]
    gold: int  # answer_ids[j]


@dataclass
class _UnitResult:
    attr: torch.Tensor  # [layers, width] float64: w̄ · Σ_k ω_k ∂f/∂w
    acts: torch.Tensor  # [layers, width] w̄
    f_base: float
    f_zero: torch.Tensor  # [layers] float64


def _group(units: list[_Unit], per_forward: int) -> list[list[_Unit]]:
    """Units sorted by context length, cut into groups of `per_forward`; units without a prefix (a one-token
    context) never share a group with units that have one (they run without a cache)."""
    ordered = sorted(units, key=lambda u: (len(u.context), u.prompt, u.token))
    groups: list[list[_Unit]] = []
    for unit in ordered:
        if groups and len(groups[-1]) < per_forward and (len(groups[-1][0].context) > 1) == (len(unit.context) > 1):
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups


def _prefix_mask(real: torch.Tensor, queries: int, dtype) -> torch.Tensor:
    """4D additive mask [B, 1, queries, P + queries] for `queries` new tokens per unit after a left-padded prefix
    whose real columns `real` [B, P] marks: each query sees its unit's real prefix and itself, nothing else."""
    batch, prefix = real.shape
    blocked = torch.finfo(dtype).min
    itself = torch.eye(queries, dtype=torch.bool, device=real.device).expand(batch, queries, queries)
    allowed = torch.cat([real[:, None, :].expand(batch, queries, prefix), itself], dim=2)
    return torch.where(allowed, 0.0, blocked).to(dtype)[:, None]


def _prefill(model, group: list[_Unit], pad_id: int, device, dtype):
    """The group's prefixes (contexts minus the last token), left-padded, run once into a KV cache.
    Returns (cache, real [B, P] bool, prefix lengths [B])."""
    lengths = torch.tensor([len(u.context) - 1 for u in group], device=device)
    longest = int(lengths.max())
    ids = torch.full((len(group), longest), pad_id, dtype=torch.long, device=device)
    real = torch.zeros((len(group), longest), dtype=torch.bool, device=device)
    for row, unit in enumerate(group):
        n = len(unit.context) - 1
        ids[row, longest - n :] = torch.tensor(unit.context[:-1], device=device)
        real[row, longest - n :] = True
    positions = (real.long().cumsum(dim=-1) - 1).clamp_min(0)
    blocked = torch.finfo(dtype).min
    causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
    allowed = causal[None] & real[:, None, :]  # real keys at or before the query
    allowed |= torch.eye(longest, dtype=torch.bool, device=device)[None]  # a pad query sees itself only
    mask = torch.where(allowed, 0.0, blocked).to(dtype)[:, None]
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                      logits_to_keep=1).cache
    return cache, real, lengths


def _baseline(model, adapter, tokens, cache, real, lengths, golds, target, device, dtype):
    """One forward of every unit's last token on a copy of the cache: activations [B, layers, width], f(w̄) [B], and
    the hidden states each decoder layer receives at that token [B, layers, hidden size]."""
    captured: dict[int, torch.Tensor] = {}
    received: dict[int, torch.Tensor] = {}

    def capture(layer: int, ffn_input: torch.Tensor):
        captured[layer] = ffn_input[:, -1].detach().clone()
        return None

    def capture_input(layer: int, hidden: torch.Tensor):
        received[layer] = hidden[:, -1].detach().clone()
        return None

    kwargs = {}
    if cache is not None:
        kwargs = {"cache": copy.deepcopy(cache), "attention_mask": _prefix_mask(real, 1, dtype)}
    with torch.no_grad(), hook_neurons(model, adapter, capture), hook_layer_inputs(model, adapter, capture_input):
        out = model(input_ids=tokens[:, None], position_ids=lengths[:, None], use_cache=cache is not None,
                    logits_to_keep=1, **kwargs)
    f_base = target_values(out.logits[:, -1], golds, target)
    stack = lambda found: torch.stack([found[layer] for layer in range(len(found))], dim=1)  # noqa: E731
    return stack(captured), f_base, stack(received)


def _rows_pass(model, adapter, tokens, cache, real, lengths, acts, layer_input, rows, alphas, weights, golds, target,
               device, dtype):
    """One chunk of (layer, step) rows of one run of layers (`layer_blocks`) for every unit of the group; step None
    means α = 0 (no gradient). The layers below the run are skipped: they would compute for each row exactly what
    they computed for the baseline, whose output at that token (`layer_input` [B, hidden size]) the run's lowest
    layer receives instead.
    Returns the IG partial sums [B, layers, width] (float64, CPU) and f(0 at l) per unit {layer: [B]}."""
    batch, n_layers, width = acts.shape
    start = min(layer for layer, _ in rows)
    plan, leaves, zero_rows = row_plan(rows, alphas, acts, device)

    def replace(layer: int, ffn_input: torch.Tensor):
        if layer not in plan:
            return None
        new = ffn_input.clone()  # never write into a tensor autograd saved
        for index, values in plan[layer]:
            new[:, index, :] = values
        return new

    n = len(rows)

    def received(layer: int, hidden: torch.Tensor):
        return layer_input[:, None, :].expand(batch, n, -1) if layer == start else None

    ids = tokens[:, None].expand(batch, n)
    positions = lengths[:, None].expand(batch, n)
    kwargs = {}
    if cache is not None:  # the forward appends the rows to the cache: work on a copy
        kwargs = {"cache": copy.deepcopy(cache), "attention_mask": _prefix_mask(real, n, dtype)}
    else:  # no prefix: each row sees itself only
        blocked = torch.finfo(dtype).min
        eye = torch.eye(n, dtype=torch.bool, device=device)
        kwargs = {"attention_mask": torch.where(eye, 0.0, blocked).to(dtype)[None, None].expand(batch, 1, n, n)}
    with (torch.enable_grad(), hook_neurons(model, adapter, replace), skip_layers_below(model, adapter, start),
          hook_layer_inputs(model, adapter, received)):
        out = model(input_ids=ids, position_ids=positions, use_cache=cache is not None, logits_to_keep=0, **kwargs)
        f = target_values(out.logits.reshape(batch * n, -1), golds.repeat_interleave(n), target).view(batch, n)
        grads = torch.autograd.grad(f.sum(), [leaf for *_, leaf in leaves]) if leaves else []
    partial = torch.zeros((batch, n_layers, width), dtype=torch.float64)
    for (layer, steps, _), grad in zip(leaves, grads):
        partial[:, layer] += (weights[steps][None, :, None] * grad.detach().double().cpu()).sum(dim=1)
    f_zero = {layer: f[:, i].detach().double().cpu() for layer, i in zero_rows.items()}
    return partial, f_zero


def _group_pass(model, adapter, group, steps, alphas, weights, target, max_rows, pad_id, device, dtype):
    tokens = torch.tensor([u.context[-1] for u in group], device=device)
    golds = torch.tensor([u.gold for u in group], device=device)
    if len(group[0].context) > 1:
        cache, real, lengths = _prefill(model, group, pad_id, device, dtype)
    else:
        cache, real, lengths = None, None, torch.zeros(len(group), dtype=torch.long, device=device)
    acts, f_base, inputs = _baseline(model, adapter, tokens, cache, real, lengths, golds, target, device, dtype)
    n_layers, width = acts.shape[1:]
    ig_sum = torch.zeros((len(group), n_layers, width), dtype=torch.float64)
    f_zero = torch.zeros((len(group), n_layers), dtype=torch.float64)
    chunk = max(1, max_rows // len(group))
    for block in layer_blocks(n_layers, len(group) * (steps + 1), max_rows):  # each pass starts at its lowest layer
        rows = [(layer, k) for layer in block for k in range(steps)] + [(layer, None) for layer in block]
        for start in range(0, len(rows), chunk):
            partial, zeros = _rows_pass(model, adapter, tokens, cache, real, lengths, acts, inputs[:, block[0]],
                                        rows[start : start + chunk], alphas, weights, golds, target, device, dtype)
            ig_sum += partial
            for done, values in zeros.items():
                f_zero[:, done] = values
    acts_cpu = acts.double().cpu()
    return [_UnitResult(acts_cpu[b] * ig_sum[b], acts[b], float(f_base[b]), f_zero[b]) for b in range(len(group))]


def attribute_prompts(
    model,
    adapter: FFNAdapter,
    prompts: Sequence[tuple[list[int], list[int]]],
    *,
    steps: int = 20,
    rule: str = "gauss_legendre",
    target: str = "prob",
    max_rows: int = 256,
) -> list[LayerwiseIG]:
    """Per-layer IG of each (prompt_ids, answer_ids) pair, as `attribute_prompt` computes it, batched over prompts
    (at most `max_rows` IG rows per forward)."""
    for prompt_ids, answer_ids in prompts:
        check_inputs(model, prompt_ids, answer_ids)
    if not prompts:
        return []
    model.requires_grad_(False)
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    n_layers, width = len(adapter.layers(model)), adapter.width(model)
    alphas, weights = quadrature(rule, steps)
    pad_id = getattr(model.config, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    units = [_Unit(index, j, tuple(prompt_ids) + tuple(answer_ids[:j]), gold)
             for index, (prompt_ids, answer_ids) in enumerate(prompts) for j, gold in enumerate(answer_ids)]
    results: dict[tuple[int, int], _UnitResult] = {}
    for group in _group(units, max(1, max_rows // (steps + 1))):  # a forward holds one layer's rows of its units
        for unit, result in zip(group, _group_pass(model, adapter, group, steps, alphas, weights, target, max_rows,
                                                   pad_id, device, dtype)):
            results[(unit.prompt, unit.token)] = result
    out = []
    for index, (_, answer_ids) in enumerate(prompts):
        acc = _Accumulator(n_layers, width)
        for j in range(len(answer_ids)):
            r = results[(index, j)]
            acc.add(r.attr, r.acts, r.f_base, r.f_zero)
        out.append(acc.result(adapter.neuron))
    return out
