"""The KN activation score of one hop on one prompt (DESIGN.md §4), on a model in memory (`knrecall.load`).

Δ compares the hop's refined KNs' activations a_i on the prompt with their baselines b_i (their mean activation at
the answer-predicting position over the hop's paraphrase prompts, kept by `knrecall.select_kns`), by the same
formula as the `recall` rule (`knrecall.recall.scores.kn_scores`; `mode`: ratio | difference | projection |
ratio_of_sums). The activations are read by `knrecall.recall.activations.activations_at` at the last prompt token
(the reasoning step without chain of thought) or at `position`. With `threshold` (a fixed τ) the hop is recalled
when Δ > τ; the workflow's default threshold, the null distribution's quantile, needs other items (the `recall` rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from knrecall.attribution.kns import FactKNs
from knrecall.errors import KnrecallError
from knrecall.models.adapters import adapter_for
from knrecall.recall.activations import activations_at
from knrecall.recall.scores import kn_scores, recall_decisions
from knrecall.recall.steps import prompt_input_ids

KEY = {"case_id": "prompt", "hop": 1}


@dataclass(frozen=True)
class HopRecall:
    """One hop's KN score on one prompt: Δ (None for an empty or all-dropped KN set), the KN counts, the position
    read, and with a threshold the decision. `activations`: layer, neuron, activation (a_i), baseline (b_i)."""

    delta: float | None
    n_kns: int
    n_used: int
    mode: str
    position: int
    threshold: float | None
    recalled: bool | None
    activations: pl.DataFrame


def recall_score(model, tokenizer, kns: FactKNs, prompt: str, *, mode: str = "projection",
                 threshold: float | None = None, position: int | None = None, batch_size: int = 16) -> HopRecall:
    """Δ of the hop whose KNs are `kns` (from `knrecall.select_kns`) on `prompt`, read at the last prompt token or at
    `position` (an index into the prompt's token ids, negative from the end); see the module docstring."""
    if not isinstance(kns, FactKNs):
        raise KnrecallError("recall score: kns must be the FactKNs of knrecall.select_kns (it holds the baselines)")
    prompt_ids = prompt_input_ids(tokenizer, prompt)
    where = len(prompt_ids) - 1 if position is None else position
    where = where + len(prompt_ids) if where < 0 else where
    if not 0 <= where < len(prompt_ids):
        raise KnrecallError(f"recall score: position {position} is outside the prompt's {len(prompt_ids)} tokens")
    selection: dict[int, list[int]] = {}
    for layer, neuron in kns.neurons:
        selection.setdefault(layer, []).append(neuron)
    measured = activations_at(model, adapter_for(model, kns.neuron), [prompt_ids], [[where]], neurons=selection,
                              batch_size=batch_size)[0][0] if len(kns) else []
    rows = kns.refined.select("layer", "neuron", "baseline").with_columns(
        activation=pl.Series([float(a) for a in measured], dtype=pl.Float32))
    keyed = rows.with_columns(**{k: pl.lit(v) for k, v in KEY.items()}, condition=pl.lit("prompt"))
    sets = pl.DataFrame({**{k: [v] for k, v in KEY.items()}, "n_kns": [len(kns)]})
    score = kn_scores(keyed.drop("baseline"), keyed.drop("activation"), sets, conditions=["prompt"], mode=mode)
    if threshold is not None:
        score = recall_decisions(score, fixed_tau=threshold)
    row = score.row(0, named=True)
    return HopRecall(row["delta"], row["n_kns"], row["n_used"], mode, where, threshold, row.get("recalled"),
                     rows.select("layer", "neuron", "activation", "baseline"))
