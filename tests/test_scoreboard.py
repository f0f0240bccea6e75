"""The validation scoreboard (knrecall.validation.scoreboard) on synthetic tables with a known answer."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from knrecall.recall.scores import MODES, POSITIONS
from knrecall.validation.scoreboard import choose, pathway_answers, scoreboard

N_FACTS, PER_FACT = 6, 10


def _tables(seed: int = 0):
    """Items of 6 facts (hop 1); under `projection @ last_prompt` an item's Δ is high exactly when suppressing its
    KNs hurts (drop = Δ / 2), and its own Δ is far above its fact's null; every other variant × position is noise.
    The first half of each fact's items are pathway-revealing: those with an even index answered by composition
    (and given a high Δ under the good measurement), the odd ones by the shortcut."""
    rng = np.random.default_rng(seed)
    rows, nulls, causal, items, predictions = [], [], [], [], []
    for f in range(N_FACTS):
        for k in range(PER_FACT):
            case = f"c{f}_{k}"
            strength = rng.uniform(0, 1)
            probe = k < PER_FACT // 2
            composed = probe and k % 2 == 0
            if probe:
                strength = 0.8 + 0.2 * strength if composed else 0.2 * strength
            for variant in MODES:
                for position in POSITIONS:
                    good = (variant, position) == ("projection", "last_prompt")
                    rows.append({"case_id": case, "condition": "direct", "hop": 1, "variant": variant,
                                 "position": position, "delta": strength if good else float(rng.normal()),
                                 "fact_id": f"f{f}", "category": "TT" if strength > 0.5 else "FT",
                                 "shortcut_planted": not probe and k % 2 == 0, "composable": not probe and k % 2 == 1})
            causal.append({"case_id": case, "condition": "direct", "hop": 1, "gold_prob_base": 0.9,
                           "gold_prob_kn": 0.9 - strength / 2, "breaks": strength > 0.6, "effect_kn": -strength / 2,
                           "effect_random": 0.0, "breaks_random": 0.0})
            items.append({"case_id": case, "shortcut_conflicting": probe, "fact2_ans": "Oslo", "answer_aliases": [],
                          "shortcut_answer": "Lima"})
            predictions.append({"case_id": case, "kind": "two_hop", "condition": "direct",
                                "answer_span": ("Oslo" if composed else "Lima") if probe else "Oslo"})
        for j in range(20):  # the fact's null sample: below every own item under the good measurement
            for variant in MODES:
                for position in POSITIONS:
                    good = (variant, position) == ("projection", "last_prompt")
                    nulls.append({"fact_id": f"f{f}", "case_id": f"n{f}_{j}", "condition": "direct",
                                  "variant": variant, "position": position,
                                  "delta": -1.0 - j / 20 if good else float(rng.normal())})
    return (pl.DataFrame(items), pl.DataFrame(predictions), pl.DataFrame(rows), pl.DataFrame(nulls),
            pl.DataFrame(causal))


@pytest.fixture(scope="module")
def board():
    return scoreboard(*_tables(), configured={"variant": "ratio", "position": "step"}, resamples=200, seed=0)


def _row(board, variant, position):
    return next(r for r in board["rows"] if (r["variant"], r["position"]) == (variant, position))


def test_the_good_measurement_scores_perfectly(board):
    good = _row(board, "projection", "last_prompt")
    assert good["specificity_auc"] == 1.0 and good["specificity_auc_ci"] == [1.0, 1.0]
    assert good["causal_spearman"] == 1.0
    assert good["break_auc"] == 1.0 and good["n_breaks"] > 0
    assert good["pathway_auc"] == 1.0
    assert good["n_pathway_composed"] == N_FACTS * 3 and good["n_pathway_shortcut"] == N_FACTS * 2
    assert good["n_own"] == N_FACTS * PER_FACT and good["n_null"] == N_FACTS * 20


def test_noise_measurements_score_near_chance_and_their_cis_cover_it(board):
    for variant in MODES:
        for position in POSITIONS:
            if (variant, position) == ("projection", "last_prompt"):
                continue
            r = _row(board, variant, position)
            assert abs(r["specificity_auc"] - 0.5) < 0.2
            low, high = r["causal_spearman_ci"]
            assert low < 0.35 and high > -0.35 and abs(r["causal_spearman"]) < 0.4


def test_the_rule_picks_the_measurement_with_the_best_causal_agreement(board):
    assert board["rule"]["chosen"] == {"variant": "projection", "position": "last_prompt"}
    assert board["rule"]["configured"] == {"variant": "ratio", "position": "step"}
    assert board["rule"]["ranking"][0]["score"] == 1.0 and len(board["rule"]["ranking"]) == len(MODES) * len(POSITIONS)
    assert len(board["rows"]) == len(MODES) * len(POSITIONS)  # one condition, one hop
    assert board["pathways"]["direct"] == {"composed": N_FACTS * 3, "shortcut": N_FACTS * 2, "neither": 0}


def test_rule_ties_go_to_the_papers_reading_and_undefined_cells_are_not_ranked():
    rows = [{"variant": v, "position": p, "condition": c, "causal_spearman": 0.3}
            for v in MODES for p in POSITIONS for c in ("direct", "zero_shot_cot", "few_shot_cot")]
    assert choose(rows)["chosen"] == {"variant": "ratio", "position": "step"}
    for r in rows:
        if (r["variant"], r["position"]) == ("ratio", "step") and r["condition"] == "few_shot_cot":
            r["causal_spearman"] = None
    ranked = choose(rows)
    assert {"variant": "ratio", "position": "step"} not in [{"variant": r["variant"], "position": r["position"]}
                                                           for r in ranked["ranking"]]
    assert ranked["chosen"] == {"variant": "ratio", "position": "last_prompt"}  # the first in MODES × POSITIONS


def test_sc_planted_minus_composed(board):
    items, predictions, scores, nulls, causal = _tables()
    good = scores.filter((pl.col("variant") == "projection") & (pl.col("position") == "last_prompt"))
    correct = good.filter(pl.col("category").is_in(["TT", "FT"]))
    planted = (correct.filter(pl.col("shortcut_planted"))["category"] == "FT").mean()
    composed = (correct.filter(pl.col("composable"))["category"] == "FT").mean()
    row = _row(board, "projection", "last_prompt")
    assert row["sc_planted"] == pytest.approx(planted, abs=1e-4) and row["sc_composed"] == pytest.approx(composed, abs=1e-4)
    assert row["sc_difference"] == pytest.approx(planted - composed, abs=1e-4)
    low, high = row["sc_difference_ci"]
    assert low <= row["sc_difference"] <= high


def test_pathway_answers_without_ground_truth_is_empty():
    items = pl.DataFrame({"case_id": ["a"], "fact2_ans": ["Oslo"]})
    predictions = pl.DataFrame({"case_id": ["a"], "kind": ["two_hop"], "condition": ["direct"], "answer_span": ["Oslo"]})
    assert pathway_answers(items, predictions).height == 0


def test_rows_computed_side_by_side_equal_rows_computed_one_by_one(board):
    side_by_side = scoreboard(*_tables(), configured={"variant": "ratio", "position": "step"}, resamples=200, seed=0,
                              workers=3)
    assert side_by_side == board  # the same rows in the same order, every CI to the last digit
    assert len(board["rows"]) > 3
