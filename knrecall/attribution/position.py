"""Integrated gradients of the neurons at an earlier prompt position, for the same target (DESIGN.md §6).

The engine (`knrecall.attribution.engine`) scales the neurons at the predicting position, the prompt's last token:
nothing before it changes, so every IG row is that one token against the cached prefix. Scaling the neurons at an
earlier position p (e.g. the subject's last token, `knrecall.validation.subject_site`) changes every later
position, so here each row is the whole suffix context[p:]:

- The prefix context[:p] runs once, without grad, into a KV cache, repeated over the rows of a forward.
- One plain forward of the context gives the baseline activations w̄ at p of every layer and f(w̄).
- Every (layer, α) pair is one row, a batch element: the suffix against the prefix, a hook replacing that row's
  own layer's activations at p (the suffix's first token) by α·w̄; f is read at the row's last token. Rows are
  chunked to `max_rows` per forward; one `autograd.grad` per chunk. One extra row per layer with α = 0 gives
  f(0 at l) for the completeness check, as in the engine.
- A multi-token answer is teacher-forced (context = prompt + answer[:j] for answer token j; w̄ at p is the same
  for every j) and the map is the mean of the per-token maps.

At p = the last prompt position this is the engine's computation (tested), at more cost per row.

`attribute_at_positions` does the same for many (prompt, answer, position) jobs: answer tokens with the same scaled
position and context length share a forward (a batch dimension over them; no padding, no mask), which saves the
per-call overhead. It also runs the rows in passes of consecutive layers (`layer_blocks`), each forward starting at
its pass's lowest layer: a row scaled at layer l computes in the layers below l exactly what the baseline forward
computed, at every suffix position, so those layers are skipped and the pass's lowest layer receives the
baseline's hidden states (with one layer per pass, of L layers a row runs (L + 1) / 2 on average, forward and
backward, instead of L). `attribute_at_position` stays the one-job reference it is tested against.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from knrecall.attribution.engine import LayerwiseIG, _Accumulator, check_inputs, layer_blocks, row_plan
from knrecall.attribution.quadrature import quadrature
from knrecall.attribution.target import target_values
from knrecall.errors import KnrecallError
from knrecall.models.adapters import FFNAdapter, hook_layer_inputs, hook_neurons, skip_layers_below


def _baseline(model, adapter, context: list[int], position: int, gold: int, target: str, device):
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int, activations: torch.Tensor):
        captured[layer] = activations[0, position].detach().clone()
        return None

    with torch.no_grad(), hook_neurons(model, adapter, capture):
        out = model(input_ids=torch.tensor([context], device=device), use_cache=False, logits_to_keep=1)
    f_base = float(target_values(out.logits[:, -1], gold, target)[0])
    return torch.stack([captured[layer] for layer in range(len(captured))]), f_base


def _suffix_forward(model, adapter, replace, suffix, position, prefix_cache, repeats, golds, target, leaves,
                    start: int = 0, received: torch.Tensor | None = None):
    """The rows' forward and backward: `suffix` [rows, S] from the scaled position on (position ids position, ...),
    each row against its own copy of the cached prefix (each cached sequence repeated `repeats` times), `replace`
    hooking the neurons. With `received` [rows, S, hidden size], the forward starts at decoder layer `start`, which
    receives those hidden states (the layers below are skipped). Returns (f at each row's last token [rows], the
    gradients of `leaves`)."""
    positions = torch.arange(position, position + suffix.shape[1], device=suffix.device)[None].expand(len(suffix), -1)
    kwargs = {}
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(repeats)
        kwargs = {"cache": cache, "use_cache": True}
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.enable_grad())
        stack.enter_context(hook_neurons(model, adapter, replace))
        if received is not None:  # the batched path; the one-job reference runs every layer
            stack.enter_context(skip_layers_below(model, adapter, start))
            stack.enter_context(hook_layer_inputs(model, adapter, lambda i, hidden: received if i == start else None))
        out = model(input_ids=suffix, position_ids=positions, logits_to_keep=1, **kwargs)
        f = target_values(out.logits[:, -1], golds, target)
        grads = torch.autograd.grad(f.sum(), [leaf for *_, leaf in leaves]) if leaves else []
    return f, grads


def _rows_pass(model, adapter, context, position, prefix_cache, acts, rows, alphas, weights, gold, target, device):
    """One chunk of (layer, step) rows (step None: α = 0, no gradient): IG partial sums and f(0 at l)."""
    plan, leaves, zero_rows = row_plan(rows, alphas, acts, device)

    def replace(layer: int, activations: torch.Tensor):
        if layer not in plan:
            return None
        new = activations.clone()  # never write into a tensor autograd saved
        for index, values in plan[layer]:
            new[index, 0, :] = values  # the suffix's first token is the scaled position
        return new

    n = len(rows)
    suffix = torch.tensor([context[position:]], device=device).expand(n, -1)
    f, grads = _suffix_forward(model, adapter, replace, suffix, position, prefix_cache, n, gold, target, leaves)
    partial = torch.zeros(acts.shape, dtype=torch.float64)
    for (layer, steps, _), grad in zip(leaves, grads):
        partial[layer] += (weights[steps][:, None] * grad.detach().double().cpu()).sum(dim=0)
    f_zero = {layer: float(f[i].detach()) for layer, i in zero_rows.items()}
    return partial, f_zero


def attribute_at_position(
    model,
    adapter: FFNAdapter,
    prompt_ids: list[int],
    answer_ids: list[int],
    position: int,
    *,
    steps: int = 20,
    rule: str = "gauss_legendre",
    target: str = "prob",
    max_rows: int = 256,
) -> LayerwiseIG:
    """Per-layer IG of `answer_ids` after `prompt_ids` with the neurons scaled at prompt position `position`
    (0-based, counting the tokenizer's BOS if any); `activations` are w̄ at that position. At most `max_rows` rows
    (each a copy of the suffix from `position` on) per forward."""
    check_inputs(model, prompt_ids, answer_ids)
    if not 0 <= position < len(prompt_ids):
        raise KnrecallError(f"attribution: position {position} is outside the prompt's {len(prompt_ids)} tokens")
    model.requires_grad_(False)
    device = next(model.parameters()).device
    n_layers, width = len(adapter.layers(model)), adapter.width(model)
    alphas, weights = quadrature(rule, steps)
    rows = [(layer, k) for layer in range(n_layers) for k in range(steps)]
    rows += [(layer, None) for layer in range(n_layers)]
    prefix_cache = None
    if position > 0:
        with torch.no_grad():
            prefix_cache = model(input_ids=torch.tensor([prompt_ids[:position]], device=device), use_cache=True,
                                 logits_to_keep=1).cache
    acc = _Accumulator(n_layers, width)
    acts = None
    for j, gold in enumerate(answer_ids):
        context = list(prompt_ids) + list(answer_ids[:j])
        token_acts, f_base = _baseline(model, adapter, context, position, gold, target, device)
        acts = token_acts if acts is None else acts  # the same at every j (causal), taken once
        ig_sum = torch.zeros(n_layers, width, dtype=torch.float64)
        f_zero = torch.zeros(n_layers, dtype=torch.float64)
        for start in range(0, len(rows), max(1, max_rows)):
            partial, zeros = _rows_pass(model, adapter, context, position, prefix_cache, acts,
                                        rows[start : start + max(1, max_rows)], alphas, weights, gold, target, device)
            ig_sum += partial
            for layer, value in zeros.items():
                f_zero[layer] = value
        acc.add(acts.double().cpu() * ig_sum, acts, f_base, f_zero)
    return acc.result(adapter.neuron)


def _shape_groups(units: list[tuple[int, int, tuple[int, ...], int, int]], per_forward: int):
    """Units (job, token j, context, gold, position) grouped by (position, context length), at most `per_forward`
    a group: a group's prefixes and suffixes then have one length each, with no padding and no mask."""
    by_shape: dict[tuple[int, int], list] = {}
    for unit in units:
        by_shape.setdefault((unit[4], len(unit[2])), []).append(unit)
    for shape in sorted(by_shape):
        members = by_shape[shape]
        for start in range(0, len(members), per_forward):
            yield members[start : start + per_forward]


def _group_pass(model, adapter, group, rows, alphas, weights, target, max_rows, device):
    """The IG of every unit of a shape group: (attr [B, layers, width] float64, acts [B, layers, width], f_base [B],
    f_zero [B, layers] float64)."""
    position = group[0][4]
    contexts = torch.tensor([unit[2] for unit in group], device=device)
    golds = torch.tensor([unit[3] for unit in group], device=device)
    batch = len(contexts)
    captured: dict[int, torch.Tensor] = {}
    received: dict[int, torch.Tensor] = {}  # the hidden states each layer receives from the position on

    def capture(layer: int, activations: torch.Tensor):
        captured[layer] = activations[:, position].detach().clone()
        return None

    def capture_input(layer: int, hidden: torch.Tensor):
        received[layer] = hidden[:, position:].detach().clone()
        return None

    with torch.no_grad(), hook_neurons(model, adapter, capture), hook_layer_inputs(model, adapter, capture_input):
        out = model(input_ids=contexts, use_cache=False, logits_to_keep=1)
    f_base = target_values(out.logits[:, -1], golds, target)
    acts = torch.stack([captured[layer] for layer in range(len(captured))], dim=1)  # [B, layers, width]
    prefix_cache = None
    if position > 0:
        with torch.no_grad():
            prefix_cache = model(input_ids=contexts[:, :position], use_cache=True, logits_to_keep=1).cache
    n_layers, width = acts.shape[1:]
    ig_sum = torch.zeros((batch, n_layers, width), dtype=torch.float64)
    f_zero = torch.zeros((batch, n_layers), dtype=torch.float64)
    chunk = max(1, max_rows // batch)
    # passes of consecutive layers, each forward starting at the pass's lowest layer: below it a row computes what
    # the baseline did
    blocks = layer_blocks(n_layers, batch * len(rows) // n_layers, max_rows)
    by_block = [([row for row in rows if row[0] in block], block[0]) for block in blocks]
    for part, start in ((block_rows[i : i + chunk], first) for block_rows, first in by_block
                        for i in range(0, len(block_rows), chunk)):
        plan, leaves, zero_rows = row_plan(part, alphas, acts, device)
        n = len(part)

        def replace(layer: int, activations: torch.Tensor):
            if layer not in plan:
                return None
            new = activations.clone()  # never write into a tensor autograd saved
            view = new.view(batch, n, *new.shape[1:])  # row b * n + r is unit b's row r
            for index, values in plan[layer]:
                view[:, index, 0, :] = values  # the suffix's first token is the scaled position
            return new

        suffix = contexts[:, position:].repeat_interleave(n, dim=0)
        f, grads = _suffix_forward(model, adapter, replace, suffix, position, prefix_cache, n,
                                   golds.repeat_interleave(n), target, leaves, start,
                                   received[start].repeat_interleave(n, dim=0))
        f = f.view(batch, n)
        for (layer, steps, _), grad in zip(leaves, grads):
            ig_sum[:, layer] += (weights[steps][None, :, None] * grad.detach().double().cpu()).sum(dim=1)
        for layer, i in zero_rows.items():
            f_zero[:, layer] = f[:, i].detach().double().cpu()
    return acts.double().cpu() * ig_sum, acts, f_base, f_zero


def attribute_at_positions(
    model,
    adapter: FFNAdapter,
    jobs: list[tuple[list[int], list[int], int]],
    *,
    steps: int = 20,
    rule: str = "gauss_legendre",
    target: str = "prob",
    max_rows: int = 256,
    progress=None,
) -> list[LayerwiseIG]:
    """`attribute_at_position` of every (prompt_ids, answer_ids, position) job, several jobs per forward: the
    answer tokens of all jobs with the same scaled position and context length share a forward (a batch dimension
    over them, each row a copy of its own suffix against its own cached prefix), at most `max_rows` IG rows in all
    per forward. Equal to the one-job path to float rounding (tested for every family). `progress(n)` is called
    with the number of answer tokens done after each group."""
    for prompt_ids, answer_ids, position in jobs:
        check_inputs(model, prompt_ids, answer_ids)
        if not 0 <= position < len(prompt_ids):
            raise KnrecallError(f"attribution: position {position} is outside the prompt's {len(prompt_ids)} tokens")
    if not jobs:
        return []
    model.requires_grad_(False)
    device = next(model.parameters()).device
    n_layers, width = len(adapter.layers(model)), adapter.width(model)
    alphas, weights = quadrature(rule, steps)
    rows = [(layer, k) for layer in range(n_layers) for k in range(steps)]
    rows += [(layer, None) for layer in range(n_layers)]
    units = [(index, j, tuple(prompt_ids) + tuple(answer_ids[:j]), gold, position)
             for index, (prompt_ids, answer_ids, position) in enumerate(jobs) for j, gold in enumerate(answer_ids)]
    results = {}
    for group in _shape_groups(units, max(1, max_rows // (steps + 1))):  # a forward: one layer's rows of its units
        attr, acts, f_base, f_zero = _group_pass(model, adapter, group, rows, alphas, weights, target, max_rows,
                                                 device)
        for b, unit in enumerate(group):
            results[unit[:2]] = (attr[b], acts[b], float(f_base[b]), f_zero[b])
        if progress is not None:
            progress(len(group))
    out = []
    for index, (_, answer_ids, _) in enumerate(jobs):
        acc = _Accumulator(n_layers, width)
        acts = results[(index, 0)][1]  # w̄ at the position is the same for every answer token (causal)
        for j in range(len(answer_ids)):
            attr, _, f_base, f_zero = results[(index, j)]
            acc.add(attr, acts, f_base, f_zero)
        out.append(acc.result(adapter.neuron))
    return out
