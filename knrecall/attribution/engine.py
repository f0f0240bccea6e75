"""The attribution engine: per-layer integrated gradients of one prompt, computed the fast way (DESIGN.md §6).

Per layer l (Dai et al. 2022), the FFN activations w̄ (the neurons as the adapter defines them: `ffn_input` or
`pre_activation`) at the predicting position are scaled by α (every other layer
and position untouched) and neuron i gets  attr_i = w̄_i · Σ_k ω_k ∂f(α_k w̄)/∂w_i  (quadrature nodes α_k, weights
ω_k). Causality makes this cheap: scaling happens at the last position only, so nothing before it changes.

- The prompt prefix (every token but the last) runs once, without grad, into a KV cache.
- One single-token forward of the last token on a copy of that cache gives the baseline activations w̄ of every
  layer and f(w̄).
- Every (layer, α) pair is then one row: a copy of the last token against the cached prefix in which a hook
  replaces that row's own layer's activations by α·w̄. The rows are packed along the sequence of one forward
  (same position id, a 4D mask letting each row see only the prefix and itself), so the prefix's keys and values
  are shared, not copied per row. Rows are chunked to `max_rows`; one `autograd.grad` over the per-layer leaves
  returns every layer's gradients. One extra row per layer with α = 0 gives f(0 at l)
  for the completeness check Σ_i attr_i ≈ f(w̄) − f(0 at l).
- A multi-token answer is teacher-forced: the cache is extended with each gold token instead of re-running the
  prompt, and the map is the mean of the per-token maps.

Weights never require grad; hooks are always removed (`hook_neurons`); the HF cache is copied before reuse.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from knrecall.attribution.quadrature import quadrature
from knrecall.attribution.target import target_values
from knrecall.errors import KnrecallError
from knrecall.models.adapters import FFNAdapter, hook_neurons


@dataclass
class LayerwiseIG:
    """Per-layer IG of one prompt and answer. Tensors are float32 on the CPU."""

    attributions: torch.Tensor  # [layers, width], mean over answer tokens
    activations: torch.Tensor  # [layers, width], w̄ at the position that predicts the first answer token
    attribution_sums: torch.Tensor  # [layers], Σ_i attr_i
    target_deltas: torch.Tensor  # [layers], mean over answer tokens of f(w̄) − f(0 at layer l)
    base_target: float  # mean over answer tokens of f(w̄)
    n_answer_tokens: int
    neuron: str = "ffn_input"  # the neuron definition the map was computed under (the adapter's)

    @property
    def completeness_error(self) -> torch.Tensor:
        """Relative completeness error per layer: |Σ_i attr_i − Δf| / |Δf|."""
        return (self.attribution_sums - self.target_deltas).abs() / self.target_deltas.abs().clamp_min(1e-12)

    def table(self):
        """The whole map as a pyarrow table, one row per neuron: layer (int16), neuron (int32), attribution and
        activation (float32), layer-major."""
        import pyarrow as pa

        n_layers, width = self.attributions.shape
        return pa.table({
            "layer": pa.array([layer for layer in range(n_layers) for _ in range(width)], pa.int16()),
            "neuron": pa.array(list(range(width)) * n_layers, pa.int32()),
            "attribution": pa.array(self.attributions.flatten().tolist(), pa.float32()),
            "activation": pa.array(self.activations.flatten().tolist(), pa.float32()),
        })

    def frame(self):
        """`table()` as a polars DataFrame."""
        import polars as pl

        return pl.from_arrow(self.table())

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The k neurons with the largest attribution: (layer, neuron, attribution), largest first."""
        values, flat = self.attributions.flatten().topk(min(k, self.attributions.numel()))
        width = self.attributions.shape[1]
        return [(int(i) // width, int(i) % width, float(v)) for v, i in zip(values, flat)]


def check_inputs(model, prompt_ids: list[int], answer_ids: list[int]) -> None:
    if not prompt_ids:
        raise KnrecallError("attribution: the prompt tokenizes to nothing")
    if not answer_ids:
        raise KnrecallError("attribution: the answer tokenizes to nothing")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and len(prompt_ids) + len(answer_ids) > limit:
        raise KnrecallError(
            f"attribution: prompt and answer need {len(prompt_ids) + len(answer_ids)} positions, "
            f"more than the model's context of {limit}"
        )


class _Accumulator:
    """Sums per-token maps and deltas, then averages them into a `LayerwiseIG`."""

    def __init__(self, layers: int, width: int):
        self.attr = torch.zeros(layers, width, dtype=torch.float64)
        self.deltas = torch.zeros(layers, dtype=torch.float64)
        self.base = 0.0
        self.first_activations: torch.Tensor | None = None
        self.tokens = 0

    def add(self, attr: torch.Tensor, acts: torch.Tensor, f_base: float, f_zero: torch.Tensor) -> None:
        self.attr += attr
        self.deltas += f_base - f_zero
        self.base += f_base
        if self.first_activations is None:
            self.first_activations = acts.float().cpu()
        self.tokens += 1

    def result(self, neuron: str = "ffn_input") -> LayerwiseIG:
        attr = self.attr / self.tokens
        return LayerwiseIG(
            attributions=attr.float(),
            activations=self.first_activations,
            attribution_sums=attr.sum(dim=1).float(),
            target_deltas=(self.deltas / self.tokens).float(),
            base_target=self.base / self.tokens,
            n_answer_tokens=self.tokens,
            neuron=neuron,
        )


def _baseline(model, adapter, token: int, cache, gold: int, target: str, device):
    """Single-token forward on `cache` (which it extends): activations of every layer and f(w̄)."""
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int, ffn_input: torch.Tensor):
        captured[layer] = ffn_input[0, -1].detach().clone()
        return None

    with torch.no_grad(), hook_neurons(model, adapter, capture):
        out = model(input_ids=torch.tensor([[token]], device=device), cache=cache, use_cache=True, logits_to_keep=1)
    f_base = float(target_values(out.logits[:, -1], gold, target)[0])
    acts = torch.stack([captured[layer] for layer in range(len(captured))])
    return acts, f_base, out.cache


def _row_mask(prefix_len: int, rows: int, dtype, device) -> torch.Tensor:
    """4D additive mask for `rows` packed query tokens: each sees the whole prefix and itself, no other row."""
    blocked = torch.finfo(dtype).min
    mask = torch.full((rows, prefix_len + rows), blocked, dtype=dtype, device=device)
    mask[:, :prefix_len] = 0
    mask[:, prefix_len:].fill_diagonal_(0)
    return mask[None, None]


def row_plan(rows, alphas, acts: torch.Tensor, device):
    """What the hook writes for a chunk of (layer, step) rows (step None: α = 0, no gradient), shared by the
    engines. `acts` is w̄ as [layers, width], or [units, layers, width] with a batch of units. Returns
    (plan {layer: [(row indices, values)]}, leaves [(layer, step indices, leaf)], zero_rows {layer: row index}); a
    leaf is α_k·w̄ of its layer's rows, [steps, width] (or [units, steps, width]), requiring grad."""
    plan: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    leaves: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    zero_rows: dict[int, int] = {}
    for layer in sorted({layer for layer, _ in rows}):
        own = acts[..., layer, None, :]  # [1, width] or [units, 1, width]
        grad_rows = [i for i, (l, k) in enumerate(rows) if l == layer and k is not None]
        if grad_rows:
            steps = torch.tensor([rows[i][1] for i in grad_rows])
            scale = alphas[steps].to(device=device, dtype=acts.dtype)
            leaf = (scale[:, None] * own).detach().requires_grad_(True)
            leaves.append((layer, steps, leaf))
            plan.setdefault(layer, []).append((torch.tensor(grad_rows, device=device), leaf))
        for i, (l, k) in enumerate(rows):
            if l == layer and k is None:
                zero_rows[layer] = i
                plan.setdefault(layer, []).append((torch.tensor([i], device=device), torch.zeros_like(own)))
    return plan, leaves, zero_rows


def layer_blocks(n_layers: int, rows_per_layer: int, max_rows: int) -> list[range]:
    """The batched engines' passes: runs of consecutive layers whose IG rows share forwards that start at the run's
    lowest layer (the layers below it are skipped: a row scaled at layer l computes below l what the baseline
    computed). One layer per pass skips the most arithmetic, but each pass costs a forward and a backward of its
    own, which small batches of a small model do not repay: a pass takes as few layers as give it a quarter of
    `max_rows` rows (one layer each when `rows_per_layer` reaches that)."""
    per_pass = max(1, -(-max(1, max_rows // 4) // max(1, rows_per_layer)))
    return [range(first, min(first + per_pass, n_layers)) for first in range(0, n_layers, per_pass)]


def _rows_pass(model, adapter, token, cache, prefix_len, acts, rows, alphas, weights, gold, target, device):
    """One chunk of (layer, step) rows; step None means α = 0 (no gradient). Returns IG partial sums and f(0).

    The rows are packed along the sequence dimension of ONE sequence that continues the cached prefix: every row
    is the last prompt token again, at the same position id, and a 4D mask lets each row attend to the prefix and
    to itself only. The prefix's keys and values are therefore shared by all rows instead of copied per row.
    """
    plan, leaves, zero_rows = row_plan(rows, alphas, acts, device)

    def replace(layer: int, ffn_input: torch.Tensor):
        if layer not in plan:
            return None
        new = ffn_input.clone()  # never write into a tensor autograd saved
        for index, values in plan[layer]:
            new[0, index, :] = values
        return new

    n = len(rows)
    row_cache = copy.deepcopy(cache) if cache is not None else None  # the forward appends the rows to it
    ids = torch.full((1, n), token, dtype=torch.long, device=device)
    positions = torch.full((1, n), prefix_len, dtype=torch.long, device=device)
    mask = _row_mask(prefix_len, n, next(model.parameters()).dtype, device)
    with torch.enable_grad(), hook_neurons(model, adapter, replace):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=row_cache, use_cache=True,
                    logits_to_keep=0)
        f = target_values(out.logits[0], gold, target)
        grads = torch.autograd.grad(f.sum(), [leaf for *_, leaf in leaves]) if leaves else []
    partial = torch.zeros(acts.shape, dtype=torch.float64)
    for (layer, steps, _), grad in zip(leaves, grads):
        weighted = (weights[steps][:, None] * grad.detach().double().cpu()).sum(dim=0)
        partial[layer] += weighted
    f_zero = {layer: float(f[i].detach()) for layer, i in zero_rows.items()}
    return partial, f_zero


def attribute_prompt(
    model,
    adapter: FFNAdapter,
    prompt_ids: list[int],
    answer_ids: list[int],
    *,
    steps: int = 20,
    rule: str = "gauss_legendre",
    target: str = "prob",
    max_rows: int = 256,
) -> LayerwiseIG:
    """Per-layer IG of `answer_ids` after `prompt_ids` (prompt ids include the tokenizer's BOS, if any)."""
    check_inputs(model, prompt_ids, answer_ids)
    model.requires_grad_(False)
    device = next(model.parameters()).device
    n_layers, width = len(adapter.layers(model)), adapter.width(model)
    alphas, weights = quadrature(rule, steps)
    rows = [(layer, k) for layer in range(n_layers) for k in range(steps)] + [(layer, None) for layer in range(n_layers)]
    acc = _Accumulator(n_layers, width)

    cache = None
    if len(prompt_ids) > 1:
        with torch.no_grad():
            prefix = torch.tensor([prompt_ids[:-1]], device=device)
            cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache
    token = prompt_ids[-1]
    prefix_len = len(prompt_ids) - 1
    for gold in answer_ids:
        extended = copy.deepcopy(cache) if cache is not None else None
        acts, f_base, extended = _baseline(model, adapter, token, extended, gold, target, device)
        ig_sum = torch.zeros(n_layers, width, dtype=torch.float64)
        f_zero = torch.zeros(n_layers, dtype=torch.float64)
        for start in range(0, len(rows), max_rows):
            chunk = rows[start : start + max_rows]
            partial, zeros = _rows_pass(model, adapter, token, cache, prefix_len, acts, chunk, alphas, weights, gold,
                                        target, device)
            ig_sum += partial
            for layer, value in zeros.items():
                f_zero[layer] = value
        acc.add(acts.double().cpu() * ig_sum, acts, f_base, f_zero)
        cache, token = extended, gold  # teacher forcing: extend the cache with the gold token
        prefix_len += 1
    return acc.result(adapter.neuron)
