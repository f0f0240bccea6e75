"""The recall analysis: Δ per item, hop and condition, recall decisions, TT/TF/FT/FF, MH/SC, with bootstrap CIs,
and (for the world) the ground-truth validation. Pure tables in, one table and one JSON-ready dict out."""

from __future__ import annotations

from typing import Any

import polars as pl

from knrecall.recall.bootstrap import bootstrap_ci, category_share_cis, difference_ci
from knrecall.recall.scores import (
    categories,
    category_shares,
    kn_scores,
    null_deltas,
    null_thresholds,
    recall_decisions,
)


def _ci(values: pl.Series, resamples: int, seed: int) -> list[float] | None:
    values = values.drop_nulls()
    return [round(x, 4) for x in bootstrap_ci(values.cast(pl.Float64), n_resamples=resamples, seed=seed)] if len(values) > 1 else None


def _mean(values: pl.Series) -> float | None:
    values = values.drop_nulls()
    return round(float(values.mean()), 4) if len(values) else None


def analyse(items: pl.DataFrame, predictions: pl.DataFrame, baselines: pl.DataFrame, activations: pl.DataFrame,
            links: pl.DataFrame, params: dict[str, Any], seed: int) -> tuple[pl.DataFrame, dict[str, Any]]:
    """`links`: case_id, hop, fact_id, n_kns for every item and hop (n_kns 0 when the fact has no refined KNs)."""
    mode, resamples = params["delta"], params["bootstrap_resamples"]
    two_hop = predictions.filter(pl.col("kind") == "two_hop")
    conditions = two_hop["condition"].unique(maintain_order=True).to_list()
    items_acts = activations.filter(pl.col("kind") == "item").drop("kind")
    item_baselines = links.join(baselines, on="fact_id").select("case_id", "hop", "layer", "neuron", "baseline")
    scores = kn_scores(items_acts.drop("fact_id"), item_baselines, links.select("case_id", "hop", "n_kns", "fact_id"),
                       conditions=conditions, mode=mode)
    if params["threshold"] == "null":
        nulls = activations.filter(pl.col("kind") == "null")
        fact_sets = links.select("fact_id", "n_kns").unique().filter(pl.col("n_kns") > 0)
        deltas = null_deltas(nulls.select("fact_id", "case_id", "condition", "layer", "neuron", "activation"),
                             baselines, fact_sets, nulls.select("fact_id", "case_id").unique(), conditions, mode)
        thresholds = null_thresholds(deltas, params["null_quantile"])
        missing = scores.select("fact_id").unique().join(thresholds.select("fact_id").unique(), on="fact_id", how="anti")
        thresholds = pl.concat([thresholds, missing.join(pl.DataFrame({"condition": conditions}), how="cross").with_columns(
            pl.lit(None, pl.Float64).alias("threshold"), pl.lit(0, pl.UInt32).alias("n_null"))], how="diagonal_relaxed")
        decisions = recall_decisions(scores, thresholds=thresholds.select("fact_id", "condition", "threshold"))
    else:
        decisions = recall_decisions(scores, fixed_tau=params["tau"])
    correct = two_hop.select("case_id", "condition", "correct")
    cats = categories(decisions, correct)
    shares = category_shares(cats)
    cis = category_share_cis(cats, n_resamples=resamples, seed=seed)
    meta = items.select("case_id", "split", "shortcut_planted", "composable")
    table = decisions.join(cats.select("case_id", "condition", "category", "correct"), on=["case_id", "condition"])
    table = table.join(meta, on="case_id", how="left")
    metrics: dict[str, Any] = {}
    for condition in conditions:
        rows = cats.filter(pl.col("condition") == condition)
        share_row = shares.filter(pl.col("condition") == condition).to_dicts()[0]
        ci_row = cis.filter(pl.col("condition") == condition).to_dicts()[0]
        decided = rows.filter(pl.col("category").is_in(["TT", "TF", "FT", "FF"]))
        entry: dict[str, Any] = {"accuracy": _mean(rows["correct"].cast(pl.Float64)),
                                 "accuracy_ci": _ci(rows["correct"].cast(pl.Float64), resamples, seed)}
        for name in ("TT", "TF", "FT", "FF"):
            indicator = (decided["category"] == name).cast(pl.Float64)
            entry[name] = _mean(indicator)
            entry[f"{name}_ci"] = _ci(indicator, resamples, seed)
        for name in ("MH", "SC"):
            value = share_row[name]
            entry[name] = None if value is None else round(float(value), 4)
            low, high = ci_row[f"{name}_low"], ci_row[f"{name}_high"]
            entry[f"{name}_ci"] = None if low is None else [round(low, 4), round(high, 4)]
        for hop in (1, 2):
            deltas = table.filter((pl.col("condition") == condition) & (pl.col("hop") == hop))["delta"]
            entry[f"delta{hop}_mean"] = _mean(deltas)
            entry[f"delta{hop}_mean_ci"] = _ci(deltas, resamples, seed)
        entry["n_items"] = rows.height
        entry["n_no_kns"] = int((rows["category"] == "no_kns").sum())
        entry["n_undecided"] = int((rows["category"] == "undecided").sum())
        metrics[condition] = entry
    return table, {"conditions": metrics, "validation": validation(table, cats, meta, resamples, seed)}


def validation(table: pl.DataFrame, cats: pl.DataFrame, meta: pl.DataFrame, resamples: int, seed: int) -> dict[str, Any]:
    """World ground truth: SC share on planted-shortcut vs composed items; Δ on held-out-bridge vs held-out-subject
    items (each with a bootstrap CI of the difference), per condition. Empty when the items carry no ground truth."""
    if meta["split"].null_count() == meta.height:
        return {}
    out: dict[str, Any] = {}
    correct_answers = cats.filter(pl.col("category").is_in(["TT", "FT"])).join(meta, on="case_id")
    for condition in cats["condition"].unique(maintain_order=True).to_list():
        rows = correct_answers.filter(pl.col("condition") == condition)
        planted = (rows.filter(pl.col("shortcut_planted"))["category"] == "FT").cast(pl.Float64)
        composed = (rows.filter(pl.col("composable"))["category"] == "FT").cast(pl.Float64)
        entry: dict[str, Any] = {
            "sc_shortcut_planted": _mean(planted), "n_shortcut_planted": len(planted),
            "sc_composed": _mean(composed), "n_composed": len(composed),
        }
        entry["sc_difference_ci"] = ([round(x, 4) for x in difference_ci(planted, composed, n_resamples=resamples, seed=seed)]
                                     if len(planted) > 1 and len(composed) > 1 else None)
        for hop in (1, 2):
            deltas = table.filter((pl.col("condition") == condition) & (pl.col("hop") == hop))
            bridge = deltas.filter(pl.col("split") == "heldout_bridge")["delta"].drop_nulls().cast(pl.Float64)
            subject = deltas.filter(pl.col("split") == "heldout_subject")["delta"].drop_nulls().cast(pl.Float64)
            entry[f"delta{hop}_heldout_bridge"] = _mean(bridge)
            entry[f"delta{hop}_heldout_subject"] = _mean(subject)
            entry[f"delta{hop}_difference_ci"] = ([round(x, 4) for x in difference_ci(bridge, subject, n_resamples=resamples, seed=seed)]
                                                  if len(bridge) > 1 and len(subject) > 1 else None)
        out[condition] = entry
    return out
