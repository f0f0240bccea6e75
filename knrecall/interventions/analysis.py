"""Intervention statistics: accuracy and gold-answer probability per condition and intervention, their paired
changes against the base run with bootstrap CIs, and the knowledge-neuron vs random-neuron effect ratio.

Units are items. For an intervention on a target (hop1, hop2, both), the items are those with a non-empty KN set for
that target (the others have no rows; counted as `n_items_without_kns`), and every change is paired with the same
items' base run. A random control's value per item is the mean over its control seeds, so each item is one unit.

- `delta_accuracy`, `delta_gold_prob`: mean over items of (intervention − base), with a paired bootstrap 95 % CI.
- `random`: the same for the layer-matched random control of the same mode and target.
- `kn_vs_random_ratio`: how many times more the KNs move the model than the random neurons do: mean over items of
  |Δ gold probability| under the KN intervention / the same under its random control (per item, the mean of
  |Δ| over the control seeds). Absolute changes keep the denominator positive, so the ratio and its bootstrap CI
  over items stay finite even when random neurons change almost nothing on average (a ratio of signed means has a
  denominator near 0 then, and a useless CI); the direction of an effect is in `delta_accuracy` and
  `delta_gold_prob`. `kn_vs_random_accuracy_ratio` is the ratio of the signed accuracy changes, null where the
  control's change is 0; `kn_minus_random_accuracy` (with a paired CI) is defined always.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from knrecall.recall.bootstrap import bootstrap_ci, paired_difference_ci, paired_ratio_ci
from knrecall.skips import condition_entry, counts


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _pair(ci: tuple[float | None, float | None]) -> list[float] | None:
    return None if ci[0] is None else [round(ci[0], 4), round(ci[1], 4)]


def _per_item(rows: pl.DataFrame) -> pl.DataFrame:
    """case_id, correct, gold_prob: per item, averaged over control seeds (a no-op for base and KN rows)."""
    return (rows.group_by("case_id").agg(pl.col("correct").cast(pl.Float64).mean(),
                                         pl.col("gold_prob").cast(pl.Float64).mean())
            .sort("case_id"))  # a fixed row order: the seeded bootstrap resamples by position


def _changes(rows: pl.DataFrame, base: pl.DataFrame) -> pl.DataFrame:
    """case_id, correct, gold_prob, d_correct, d_gold_prob against `base` (per-item table), sorted by case_id."""
    return (_per_item(rows).join(base, on="case_id", suffix="_base")
            .with_columns((pl.col("correct") - pl.col("correct_base")).alias("d_correct"),
                          (pl.col("gold_prob") - pl.col("gold_prob_base")).alias("d_gold_prob"))
            .sort("case_id"))


def _abs_change(rows: pl.DataFrame, base: pl.DataFrame) -> pl.DataFrame:
    """case_id, size_random: per item, the mean over control seeds of |gold_prob − the base gold_prob|."""
    return (rows.select("case_id", pl.col("gold_prob").cast(pl.Float64)).join(base.select("case_id", "gold_prob"),
                                                                               on="case_id", suffix="_base")
            .group_by("case_id").agg((pl.col("gold_prob") - pl.col("gold_prob_base")).abs().mean().alias("size_random"))
            .sort("case_id"))


def _effect(changes: pl.DataFrame, resamples: int, seed: int) -> dict[str, Any]:
    many = changes.height > 1
    return {
        "accuracy": _round(changes["correct"].mean()),
        "delta_accuracy": _round(changes["d_correct"].mean()),
        "delta_accuracy_ci": _pair(paired_difference_ci(changes["correct"], changes["correct_base"], resamples, seed))
        if many else None,
        "gold_prob": _round(changes["gold_prob"].mean()),
        "delta_gold_prob": _round(changes["d_gold_prob"].mean()),
        "delta_gold_prob_ci": _pair(paired_difference_ci(changes["gold_prob"], changes["gold_prob_base"], resamples,
                                                         seed)) if many else None,
    }


def analyse_interventions(rows: pl.DataFrame, n_items: int, resamples: int, seed: int,
                          skipped: dict[str, Any] | None = None) -> dict[str, Any]:
    """The per-condition metrics of one model's intervention rows (the schema of `knrecall.interventions.run`).
    `skipped`: the shards' skip counts (`knrecall.skips.counts`, merged); each condition's `base` entry gets the
    condition's `n_skipped` and `skipped` (reason -> count), and a condition every item was skipped under an entry
    with only that."""
    out: dict[str, Any] = {}
    for condition in (skipped or {}).get("by_condition", {}):
        if condition not in rows["condition"].unique().to_list():
            out[condition] = {"base": {"n_items": 0, **condition_entry(skipped, condition)}}
    for condition in rows["condition"].unique(maintain_order=True).to_list():
        here = rows.filter(pl.col("condition") == condition)
        base = _per_item(here.filter(pl.col("kind") == "base"))
        entry: dict[str, Any] = {"base": {
            "accuracy": _round(base["correct"].mean()),
            "accuracy_ci": _pair(bootstrap_ci(base["correct"], "mean", resamples, seed)) if base.height > 1 else None,
            "gold_prob": _round(base["gold_prob"].mean()),
            "n_items": base.height,
            **condition_entry(skipped, condition),
        }}
        kn_rows = here.filter(pl.col("kind") == "kn")
        for name in kn_rows["intervention"].unique(maintain_order=True).to_list():
            kn = _changes(kn_rows.filter(pl.col("intervention") == name), base)
            result = {**_effect(kn, resamples, seed), "n_items": kn.height, "n_items_without_kns": base.height - kn.height,
                      "factor": float(kn_rows.filter(pl.col("intervention") == name)["factor"][0])}
            random_rows = here.filter((pl.col("kind") == "random") & (pl.col("intervention") == f"random_{name}"))
            if random_rows.height:
                control = _changes(random_rows, base)
                size = _abs_change(random_rows, base)  # per item: mean over seeds of |Δ gold prob|
                both = (kn.join(control.select("case_id", "d_correct", "d_gold_prob"), on="case_id", suffix="_random")
                        .join(size, on="case_id").with_columns(pl.col("d_gold_prob").abs().alias("size_kn"))
                        .sort("case_id"))
                d_random_acc = both["d_correct_random"].mean()
                result["random"] = {**_effect(control, resamples, seed),
                                    "seeds": random_rows["control_seed"].n_unique(),
                                    "n_items": control.height}
                result["n_items_without_control"] = kn.height - both.height
                size_random = both["size_random"].mean()
                result["kn_vs_random_ratio"] = _round(both["size_kn"].mean() / size_random) if size_random else None
                result["kn_vs_random_ratio_ci"] = _pair(paired_ratio_ci(both["size_kn"], both["size_random"],
                                                                        resamples, seed)) if both.height > 1 else None
                result["kn_vs_random_accuracy_ratio"] = (_round(both["d_correct"].mean() / d_random_acc)
                                                         if d_random_acc else None)
                result["kn_minus_random_accuracy"] = _round(both["d_correct"].mean() - d_random_acc)
                result["kn_minus_random_accuracy_ci"] = _pair(paired_difference_ci(
                    both["d_correct"], both["d_correct_random"], resamples, seed)) if both.height > 1 else None
            entry[name] = result
        out[condition] = entry
    intervened = rows.filter(pl.col("kind") == "base")["case_id"].n_unique()
    return {"n_items": n_items, "n_items_intervened": intervened, "policy": rows["policy"][0] if rows.height else None,
            "conditions": out, "skipped": dict(skipped) if skipped else counts([])}
