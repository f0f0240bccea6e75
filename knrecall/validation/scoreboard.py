"""The validation scoreboard (DESIGN.md §9): does a KN score mean recall? Per score variant × position ×
condition × hop, with bootstrap 95 % CIs:

(a) specificity — `specificity_auc`: the AUC of the items' own Δ_j against the null (the same fact's KN set read on
    items that do not involve the fact), pairs formed within a fact only (stratified AUC; CI: facts resampled).
    0.5 = an item's own score is no higher than on unrelated prompts.
(b) causal agreement — `causal_spearman`: the rank correlation of Δ_j with the drop in the teacher-forced gold
    probability when hop j's KNs are suppressed at every position (`knrecall.interventions.causal`; drop =
    gold_prob_base − gold_prob_kn), and `break_auc`: the AUC of Δ_j for items whose top-1 answer breaks under that
    suppression against items whose answer survives (items whose gold was top-1 at base only).
(c) ground truth (world only) — `pathway_auc`: the AUC of Δ_j for pathway-revealing items answered through the
    composition (o2) against those answered through the planted conflicting shortcut (o2′); and `sc_planted`,
    `sc_composed`, `sc_difference` (with CI): the share FT among correctly answered (TT + FT) consistent-shortcut
    items and composed items, under that variant × position's recall decisions (an item-level figure, the same in
    the hop 1 and hop 2 rows).

The rule that picks the default measurement (README, "Which measurement"; fixed before the scoreboard was first
looked at): the variant × position with the highest causal agreement, the mean of `causal_spearman` over hops 1
and 2 and the conditions direct, zero_shot_cot and few_shot_cot (the conditions without a conflicting context);
a candidate with any of those cells undefined is not ranked; ties go to the paper's reading, then to the order of
MODES × POSITIONS. `rule.chosen` is what the rule picks on this run, `rule.configured` what `recall.delta` ×
`recall.position` report.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl

from knrecall.data.correctness import is_correct
from knrecall.recall.bootstrap import difference_ci
from knrecall.recall.scores import MODES, PAPER_READING, POSITIONS
from knrecall.validation.stats import auc, auc_ci, spearman, spearman_ci, stratified_auc_with_ci

RULE_CONDITIONS = ("direct", "zero_shot_cot", "few_shot_cot")
RULE_TEXT = ("the variant x position with the highest mean causal_spearman over hops 1 and 2 and the conditions "
             "direct, zero_shot_cot and few_shot_cot; candidates with an undefined cell are not ranked; ties go to "
             "the paper's reading (ratio at the reasoning step)")


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _ci(ci) -> list[float] | None:
    return None if ci is None or ci[0] is None else [round(float(ci[0]), 4), round(float(ci[1]), 4)]


def pathway_answers(items: pl.DataFrame, predictions: pl.DataFrame) -> pl.DataFrame:
    """case_id, condition, pathway ("composed" | "shortcut" | "neither") of every pathway-revealing item's answer."""
    if "shortcut_conflicting" not in items.columns:
        return pl.DataFrame(schema={"case_id": pl.String, "condition": pl.String, "pathway": pl.String})
    probes = items.filter(pl.col("shortcut_conflicting").fill_null(False)).select(
        "case_id", "fact2_ans", "answer_aliases", "shortcut_answer")
    rows = predictions.filter(pl.col("kind") == "two_hop").join(probes, on="case_id")
    out = []
    for r in rows.iter_rows(named=True):
        composed = is_correct(r["answer_span"], r["fact2_ans"], tuple(r["answer_aliases"] or ()))
        shortcut = is_correct(r["answer_span"], r["shortcut_answer"], ())
        out.append((r["case_id"], r["condition"],
                    "composed" if composed and not shortcut else "shortcut" if shortcut and not composed else "neither"))
    return pl.DataFrame(out, schema={"case_id": pl.String, "condition": pl.String, "pathway": pl.String},
                        orient="row")


def _by_fact(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """fact_id -> its non-null deltas (one sort and split, not a group-by per fact)."""
    frame = frame.select("fact_id", "delta").drop_nulls().sort("fact_id")
    facts, starts = np.unique(frame["fact_id"].to_numpy(), return_index=True)
    return dict(zip(facts.tolist(), np.split(frame["delta"].to_numpy(), starts[1:])))


def _specificity(own: pl.DataFrame, nulls: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, Any]:
    """(a) from the own items' deltas and the null deltas by fact (`_by_fact`)."""
    groups = [(values, nulls.get(f, np.array([]))) for f, values in sorted(_by_fact(own).items())]
    point, ci = stratified_auc_with_ci(groups, n_resamples=resamples, seed=seed)
    return {"specificity_auc": _r(point), "specificity_auc_ci": _ci(ci),
            "n_own": int(sum(len(p) for p, n in groups if len(n))), "n_null": int(sum(len(v) for v in nulls.values()))}


def _causal(own: pl.DataFrame, causal: pl.DataFrame, resamples: int, seed: int) -> dict[str, Any]:
    joined = own.select("case_id", "delta").join(causal.select("case_id", "gold_prob_base", "gold_prob_kn", "breaks"),
                                                 on="case_id").drop_nulls(["delta", "gold_prob_kn"]).sort("case_id")
    delta = joined["delta"].to_numpy()
    drop = (joined["gold_prob_base"] - joined["gold_prob_kn"]).to_numpy()
    broke = joined.filter(pl.col("breaks") == True)["delta"].to_numpy()  # noqa: E712
    survived = joined.filter(pl.col("breaks") == False)["delta"].to_numpy()  # noqa: E712
    return {"causal_spearman": _r(spearman(delta, drop)),
            "causal_spearman_ci": _ci(spearman_ci(delta, drop, n_resamples=resamples, seed=seed)),
            "break_auc": _r(auc(broke, survived)),
            "break_auc_ci": _ci(auc_ci(broke, survived, n_resamples=resamples, seed=seed)),
            "n_causal": len(delta), "n_breaks": len(broke)}


def _ground_truth(own: pl.DataFrame, pathways: pl.DataFrame, resamples: int, seed: int) -> dict[str, Any]:
    joined = (own.select("case_id", "delta").join(pathways.select("case_id", "pathway"), on="case_id").drop_nulls()
              .sort("case_id"))  # a fixed order: the seeded bootstrap resamples by position
    composed = joined.filter(pl.col("pathway") == "composed")["delta"].to_numpy()
    shortcut = joined.filter(pl.col("pathway") == "shortcut")["delta"].to_numpy()
    out: dict[str, Any] = {"pathway_auc": _r(auc(composed, shortcut)),
                           "pathway_auc_ci": _ci(auc_ci(composed, shortcut, n_resamples=resamples, seed=seed)),
                           "n_pathway_composed": len(composed), "n_pathway_shortcut": len(shortcut)}
    correct = own.filter(pl.col("category").is_in(["TT", "FT"])).sort("case_id")
    planted = (correct.filter(pl.col("shortcut_planted") == True)["category"] == "FT").cast(pl.Float64)  # noqa: E712
    composed_sc = (correct.filter(pl.col("composable") == True)["category"] == "FT").cast(pl.Float64)  # noqa: E712
    both = len(planted) > 1 and len(composed_sc) > 1
    out.update({"sc_planted": _r(planted.mean()) if len(planted) else None,
                "sc_composed": _r(composed_sc.mean()) if len(composed_sc) else None,
                "sc_difference": _r(planted.mean() - composed_sc.mean()) if both else None,
                "sc_difference_ci": _ci(difference_ci(planted, composed_sc, n_resamples=resamples, seed=seed))
                if both else None})
    return out


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule (module docstring) applied to scoreboard rows: the chosen variant × position and the ranking."""
    ranking = []
    for variant in MODES:
        for position in POSITIONS:
            cells = [r["causal_spearman"] for r in rows if r["variant"] == variant and r["position"] == position
                     and r["condition"] in RULE_CONDITIONS]
            if not cells or any(c is None for c in cells):
                continue
            paper = (variant, position) == PAPER_READING
            ranking.append({"variant": variant, "position": position, "score": round(float(np.mean(cells)), 4),
                            "_tie": 0 if paper else 1})
    ranking.sort(key=lambda r: (-r["score"], r["_tie"]))  # stable: MODES × POSITIONS order after that
    for r in ranking:
        del r["_tie"]
    chosen = {"variant": ranking[0]["variant"], "position": ranking[0]["position"]} if ranking else None
    return {"text": RULE_TEXT, "chosen": chosen, "ranking": ranking}


def causal_summary(causal: pl.DataFrame, resamples: int, seed: int) -> dict[str, Any]:
    """Per condition and hop: mean effect of suppressing the KNs and of random neurons, share of answers broken."""
    out: dict[str, Any] = {}
    for (condition, hop), g in causal.sort("condition", "hop", "case_id").group_by(["condition", "hop"],
                                                                                 maintain_order=True):
        kn = g.drop_nulls("effect_kn")
        entry = {"n_items": kn.height, "effect_kn": _r(kn["effect_kn"].mean()) if kn.height else None,
                 "effect_random": _r(kn["effect_random"].mean()) if kn["effect_random"].drop_nulls().len() else None,
                 "breaks": _r(kn["breaks"].drop_nulls().cast(pl.Float64).mean()) if kn["breaks"].drop_nulls().len() else None,
                 "breaks_random": _r(kn["breaks_random"].drop_nulls().mean()) if kn["breaks_random"].drop_nulls().len() else None}
        out.setdefault(condition, {})[f"hop{hop}"] = entry
    return out


def board_rows(scores: pl.DataFrame, null_scores: pl.DataFrame, causal: pl.DataFrame, pathways: pl.DataFrame,
               resamples: int, seed: int, workers: int = 1) -> list[dict[str, Any]]:
    """One scoreboard row per (condition, hop, variant, position) of `scores` (the recall phase's long table, with
    `category`, `shortcut_planted`, `composable`), from its nulls, the per-item causal table and the pathway
    answers (`pathway_answers`). Rows are independent (each bootstrap seeded on its own): `workers` threads compute
    them side by side, with the same result as one (numpy's sorts and array loops release the GIL)."""
    scores = scores.sort("condition", "hop", "variant", "position", "case_id")
    # the null deltas by fact, once per (condition, variant, position): both hops' rows read the same ones
    nulls = {key: _by_fact(g) for key, g in null_scores.group_by(["condition", "variant", "position"])}
    causal_by = {key: g for key, g in causal.group_by(["condition", "hop"])}
    paths_by = {key: g for key, g in pathways.group_by(["condition"])}
    empty_causal = causal.clear()

    def row_of(cell: tuple[tuple, pl.DataFrame]) -> dict[str, Any]:
        (condition, hop, variant, position), own = cell
        row: dict[str, Any] = {"condition": condition, "hop": int(hop), "variant": variant, "position": position}
        row.update(_specificity(own, nulls.get((condition, variant, position), {}), resamples, seed))
        row.update(_causal(own, causal_by.get((condition, hop), empty_causal), resamples, seed))
        row.update(_ground_truth(own, paths_by.get((condition,), pathways.clear()), resamples, seed))
        return row

    cells = list(scores.group_by(["condition", "hop", "variant", "position"], maintain_order=True))
    if workers > 1 and len(cells) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(row_of, cells))
    return [row_of(cell) for cell in cells]


def scoreboard(items: pl.DataFrame, predictions: pl.DataFrame, scores: pl.DataFrame, null_scores: pl.DataFrame,
               causal: pl.DataFrame, configured: dict[str, str], resamples: int, seed: int,
               workers: int = 1) -> dict[str, Any]:
    """The scoreboard dict (module docstring) from the recall phase's long `scores` / `null_scores` tables, the
    per-item causal table and the predictions (for the pathway answers); `workers` threads (`board_rows`)."""
    pathways = pathway_answers(items, predictions)
    rows = board_rows(scores, null_scores, causal, pathways, resamples, seed, workers)
    pathway_counts = {c: {k: int((g["pathway"] == k).sum()) for k in ("composed", "shortcut", "neither")}
                      for (c,), g in pathways.sort("condition").group_by(["condition"], maintain_order=True)}
    return {"variants": list(MODES), "positions": list(POSITIONS), "rows": rows,
            "rule": {**choose(rows), "configured": dict(configured)},
            "causal": causal_summary(causal, resamples, seed), "pathways": pathway_counts}


def subject_site_rows(scores: pl.DataFrame, null_scores: pl.DataFrame, causal: pl.DataFrame, case_ids: list[str],
                      items: pl.DataFrame, pathways: pl.DataFrame, recall_scores: pl.DataFrame,
                      recall_null_scores: pl.DataFrame, recall_causal: pl.DataFrame, resamples: int,
                      seed: int, workers: int = 1) -> dict[str, list]:
    """{"rows": the variant's hop-1 scoreboard rows, "answer_site_rows": those of the recall phase's own hop-1 KNs
    on the same items} (`board_rows`; SC is null in `rows`). Torch-free: the scoreboard rule calls it
    on the subject-site rule's outputs (`knrecall.validation.subject_site`)."""
    meta = items.select("case_id", "shortcut_planted", "composable") if "composable" in items.columns else None
    own = scores.with_columns(pl.lit(None, dtype=pl.String).alias("category"))  # SC needs both hops' decisions
    rows = board_rows(_with_meta(own, meta), null_scores, causal, pathways, resamples, seed, workers)
    usual = recall_scores.filter((pl.col("hop") == 1) & pl.col("case_id").is_in(case_ids))
    answer_rows = board_rows(usual, recall_null_scores.filter(pl.col("fact_id").is_in(usual["fact_id"].unique())),
                             recall_causal.filter((pl.col("hop") == 1) & pl.col("case_id").is_in(case_ids)), pathways,
                             resamples, seed, workers)
    return {"rows": rows, "answer_site_rows": answer_rows}


def _with_meta(scores: pl.DataFrame, meta: pl.DataFrame | None) -> pl.DataFrame:
    """The item ground-truth flags the scoreboard's SC figures read (null SC here: no categories)."""
    if meta is None:
        return scores.with_columns(pl.lit(None, pl.Boolean).alias("shortcut_planted"),
                                   pl.lit(None, pl.Boolean).alias("composable"))
    return scores.join(meta, on="case_id", how="left")
