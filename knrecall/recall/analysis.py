"""The recall analysis: Δ per item, hop and condition for every score variant × position, recall decisions,
TT/TF/FT/FF, MH/SC with bootstrap CIs, and (for the world) the ground-truth validation. Pure tables in, tables and
one JSON-ready dict out.

The reported measurement (recall.parquet, the summary's per-condition figures, MH/SC) is the configured one,
`recall.delta` × `recall.position`; the paper's reading (ratio at the reasoning step) is summarised beside it
(`paper_reading`). Every variant × position is kept, long, in the `scores` table (items) and the `null_scores`
table (the null samples), for the validation scoreboard (`knrecall.validation`).

Pathway-revealing world items (`shortcut_conflicting`: a conflicting shortcut was planted, so their gold answer has
no single meaning) stay in the tables, flagged, but are left out of every summary figure here.

Skipped items (`knrecall.skips`): an item the answering phase skipped under a condition has no prediction there,
so it has no rows under that condition here (it is not "no KNs" nor "undecided": it was never asked); each
condition's entry counts them (`n_skipped`, `skipped`: reason -> count), and the summary's `skipped` holds the
answering and measuring phases' counts. A condition every item was skipped under keeps an entry with `n_items` 0.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from knrecall.recall.bootstrap import bootstrap_ci, category_share_cis, difference_ci
from knrecall.skips import condition_entry
from knrecall.recall.scores import (
    MODES,
    PAPER_READING,
    POSITION_COLUMNS,
    categories,
    category_shares,
    kn_score_table,
    null_thresholds,
    recall_decisions,
)

META_COLUMNS = ("split", "shortcut_planted", "composable", "shortcut_conflicting")


def _ci(values: pl.Series, resamples: int, seed: int) -> list[float] | None:
    values = values.drop_nulls()
    return [round(x, 4) for x in bootstrap_ci(values.cast(pl.Float64), n_resamples=resamples, seed=seed)] if len(values) > 1 else None


def _mean(values: pl.Series) -> float | None:
    values = values.drop_nulls()
    return round(float(values.mean()), 4) if len(values) else None


def item_meta(items: pl.DataFrame) -> pl.DataFrame:
    """case_id and the ground-truth columns (null where the items have none, e.g. before pathway items existed)."""
    return items.select("case_id", *[pl.col(c) if c in items.columns else pl.lit(None).alias(c) for c in META_COLUMNS]
                        ).cast({"split": pl.String, "shortcut_planted": pl.Boolean, "composable": pl.Boolean,
                                "shortcut_conflicting": pl.Boolean})


def all_scores(baselines: pl.DataFrame, activations: pl.DataFrame, links: pl.DataFrame, conditions: list[str],
               answered: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(item scores, null scores), long over variant × position. Items: case_id, condition, hop, variant, position,
    delta, n_kns, n_used, n_dropped, fact_id. Nulls: fact_id, case_id, condition, variant, position, delta, ...
    `answered` (case_id, condition): the pairs that have a prediction (default: every item under every condition)."""
    items_acts = activations.filter(pl.col("kind") == "item").drop("kind", "fact_id")
    item_baselines = links.join(baselines, on="fact_id").select("case_id", "hop", "layer", "neuron", "baseline")
    keys = links.select("case_id", "hop", "n_kns", "fact_id").join(
        pl.DataFrame({"condition": conditions}, schema={"condition": pl.String}), how="cross")
    if answered is not None:
        keys = keys.join(answered.select("case_id", "condition").unique(), on=["case_id", "condition"], how="semi")
    scores = kn_score_table(items_acts, item_baselines, keys, ["case_id", "condition", "hop"], ["case_id", "hop"],
                            POSITION_COLUMNS)
    nulls = activations.filter(pl.col("kind") == "null").drop("kind", "hop")
    fact_sets = links.select("fact_id", "n_kns").unique().filter(pl.col("n_kns") > 0)
    # the (fact, item, condition) triples measured: an item skipped under a condition is nobody's null there
    null_keys = (nulls.select("fact_id", "case_id", "condition").unique().join(fact_sets, on="fact_id")
                 .filter(pl.col("condition").is_in(conditions)))
    null_scores = kn_score_table(nulls, baselines, null_keys, ["fact_id", "case_id", "condition"], ["fact_id"],
                                 POSITION_COLUMNS)
    return scores, null_scores


def decide(scores: pl.DataFrame, null_scores: pl.DataFrame, correct: pl.DataFrame, params: dict[str, Any],
           conditions: list[str]) -> pl.DataFrame:
    """Every variant × position's scores with threshold, recalled and the item's category (long)."""
    frames = []
    for (variant, position), here in scores.group_by(["variant", "position"], maintain_order=True):
        here = here.drop("variant", "position")
        if params["threshold"] == "null":
            nulls = null_scores.filter((pl.col("variant") == variant) & (pl.col("position") == position))
            thresholds = null_thresholds(nulls.rename({"delta": "delta_null"}), params["null_quantile"])
            # a (fact, condition) without any null sample (every other item skipped there, or none exists): no
            # threshold, so its decisions are undecided
            missing = here.select("fact_id", "condition").unique().join(
                thresholds.select("fact_id", "condition").unique(), on=["fact_id", "condition"], how="anti")
            thresholds = pl.concat([thresholds, missing.with_columns(pl.lit(None, pl.Float64).alias("threshold"),
                                                                     pl.lit(0, pl.UInt32).alias("n_null"))],
                                   how="diagonal_relaxed")
            decisions = recall_decisions(here, thresholds=thresholds.select("fact_id", "condition", "threshold"))
        else:
            decisions = recall_decisions(here, fixed_tau=params["tau"])
        cats = categories(decisions, correct)
        frames.append(decisions.join(cats.select("case_id", "condition", "category", "correct"),
                                     on=["case_id", "condition"])
                      .with_columns(pl.lit(variant).alias("variant"), pl.lit(position).alias("position")))
    out = pl.concat(frames)
    first = ["case_id", "condition", "hop", "variant", "position"]
    return out.select(first + [c for c in out.columns if c not in first]).sort(first)


def _condition_entry(table: pl.DataFrame, condition: str, resamples: int, seed: int) -> dict[str, Any]:
    """Accuracy, TT/TF/FT/FF, MH/SC and mean Δ per hop of one condition, from one measurement's rows."""
    here = table.filter(pl.col("condition") == condition)
    rows = here.unique(["case_id"]).sort("case_id").select("case_id", "condition", "category", "correct")
    shares = category_shares(rows).to_dicts()[0]
    cis = category_share_cis(rows, n_resamples=resamples, seed=seed).to_dicts()[0]
    decided = rows.filter(pl.col("category").is_in(["TT", "TF", "FT", "FF"]))
    entry: dict[str, Any] = {"accuracy": _mean(rows["correct"].cast(pl.Float64)),
                             "accuracy_ci": _ci(rows["correct"].cast(pl.Float64), resamples, seed)}
    for name in ("TT", "TF", "FT", "FF"):
        indicator = (decided["category"] == name).cast(pl.Float64)
        entry[name] = _mean(indicator)
        entry[f"{name}_ci"] = _ci(indicator, resamples, seed)
    for name in ("MH", "SC"):
        value = shares[name]
        entry[name] = None if value is None else round(float(value), 4)
        low, high = cis[f"{name}_low"], cis[f"{name}_high"]
        entry[f"{name}_ci"] = None if low is None else [round(low, 4), round(high, 4)]
    for hop in (1, 2):
        deltas = here.filter(pl.col("hop") == hop).sort("case_id")["delta"]
        entry[f"delta{hop}_mean"] = _mean(deltas)
        entry[f"delta{hop}_mean_ci"] = _ci(deltas, resamples, seed)
    entry["n_items"] = rows.height
    entry["n_no_kns"] = int((rows["category"] == "no_kns").sum())
    entry["n_undecided"] = int((rows["category"] == "undecided").sum())
    return entry


def analyse(items: pl.DataFrame, predictions: pl.DataFrame, baselines: pl.DataFrame, activations: pl.DataFrame,
            links: pl.DataFrame, params: dict[str, Any], seed: int, *, skipped: dict[str, Any] | None = None,
            conditions: list[str] | None = None, exclude: set[tuple[str, str]] | None = None
            ) -> tuple[pl.DataFrame, dict[str, Any], pl.DataFrame, pl.DataFrame]:
    """(recall table of the configured measurement, summary, all-variant scores, null scores).
    `links`: case_id, hop, fact_id, n_kns for every item and hop (n_kns 0 when the fact has no refined KNs).
    `skipped`: the phases' skip counts (`knrecall.skips.counts`) by phase ("answer", "measure"); `conditions`: the
    conditions asked (default: those answered); `exclude`: (case_id, condition) pairs the measuring phase skipped."""
    resamples = params["bootstrap_resamples"]
    chosen = (params["delta"], params.get("position", "step"))
    two_hop = predictions.filter(pl.col("kind") == "two_hop")
    if exclude:
        gone = pl.DataFrame(sorted(exclude), schema={"case_id": pl.String, "condition": pl.String}, orient="row")
        two_hop = two_hop.join(gone, on=["case_id", "condition"], how="anti")
    answered_conditions = two_hop["condition"].unique(maintain_order=True).to_list()
    asked = list(dict.fromkeys([*(conditions or []), *answered_conditions]))
    conditions = answered_conditions
    scores, null_scores = all_scores(baselines, activations, links, conditions,
                                     answered=two_hop.select("case_id", "condition"))
    correct = two_hop.select("case_id", "condition", "correct")
    meta = item_meta(items)
    decided = decide(scores, null_scores, correct, params, conditions).join(meta, on="case_id", how="left")
    reported = decided.filter(~pl.col("shortcut_conflicting").fill_null(False))

    def measurement(variant: str, position: str) -> pl.DataFrame:
        return reported.filter((pl.col("variant") == variant) & (pl.col("position") == position))

    table = decided.filter((pl.col("variant") == chosen[0]) & (pl.col("position") == chosen[1])).drop(
        "variant", "position")
    chosen_rows, paper_rows = measurement(*chosen), measurement(*PAPER_READING)
    answer_skips = (skipped or {}).get("answer")
    entries: dict[str, Any] = {}
    for c in asked:
        entry = (_condition_entry(chosen_rows, c, resamples, seed) if c in conditions
                 else {"n_items": 0, "n_no_kns": 0, "n_undecided": 0})
        entries[c] = {**entry, **condition_entry(answer_skips, c)}
    metrics: dict[str, Any] = {"measurement": {"variant": chosen[0], "position": chosen[1]},
                               "conditions": entries,
                               "paper_reading": {"variant": PAPER_READING[0], "position": PAPER_READING[1],
                                                 "conditions": {}}}
    for condition in conditions:
        entry = _condition_entry(paper_rows, condition, resamples, seed)
        metrics["paper_reading"]["conditions"][condition] = {k: entry[k] for k in (
            "MH", "MH_ci", "SC", "SC_ci", "delta1_mean", "delta1_mean_ci", "delta2_mean", "delta2_mean_ci")}
    metrics["skipped"] = {phase: block for phase, block in (skipped or {}).items()}
    metrics["n_pathway_items_excluded"] = int(meta["shortcut_conflicting"].fill_null(False).sum())
    cats = chosen_rows.unique(["case_id", "condition"]).select("case_id", "condition", "category")
    metrics["validation"] = validation(chosen_rows, cats, meta, resamples, seed)
    return table, metrics, decided, null_scores


def validation(table: pl.DataFrame, cats: pl.DataFrame, meta: pl.DataFrame, resamples: int, seed: int) -> dict[str, Any]:
    """World ground truth: SC share on planted-shortcut vs composed items; Δ on held-out-bridge vs held-out-subject
    items (each with a bootstrap CI of the difference), per condition. Empty when the items carry no ground truth."""
    if meta["split"].null_count() == meta.height:
        return {}
    out: dict[str, Any] = {}
    correct_answers = cats.filter(pl.col("category").is_in(["TT", "FT"])).join(meta, on="case_id").sort("case_id")
    for condition in cats["condition"].unique(maintain_order=True).sort().to_list():
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
            deltas = table.filter((pl.col("condition") == condition) & (pl.col("hop") == hop)).sort("case_id")
            bridge = deltas.filter(pl.col("split") == "heldout_bridge")["delta"].drop_nulls().cast(pl.Float64)
            subject = deltas.filter(pl.col("split") == "heldout_subject")["delta"].drop_nulls().cast(pl.Float64)
            entry[f"delta{hop}_heldout_bridge"] = _mean(bridge)
            entry[f"delta{hop}_heldout_subject"] = _mean(subject)
            entry[f"delta{hop}_difference_ci"] = ([round(x, 4) for x in difference_ci(bridge, subject, n_resamples=resamples, seed=seed)]
                                                  if len(bridge) > 1 and len(subject) > 1 else None)
        out[condition] = entry
    return out


__all__ = ["MODES", "all_scores", "analyse", "decide", "item_meta", "validation"]
