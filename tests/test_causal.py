"""Per-item causal effects (knrecall.interventions.causal): equal to the intervention phase's numbers where the
settings coincide, and their table's meaning on a tiny random model."""

from __future__ import annotations

import polars as pl
import pytest

from knrecall.answer import plan_prompts
from knrecall.data.facts import facts_of
from knrecall.interventions.causal import causal_effects
from knrecall.interventions.run import Settings, answer_step, run_shard
from tests.test_interventions import _tiny_world_model, _world_items

TEMPLATES = {"direct": "Q: {question} A:", "zero_shot_cot": "Q: {question} A: Let's think step by step."}


@pytest.fixture(scope="module")
def setting():
    items = _world_items()
    model, tok = _tiny_world_model(items)
    facts, _ = facts_of(items)
    refined = {fid: [(index % 2, 3 + index), (1, 10 + index), (0, 20 + index)] for index, fid in enumerate(facts)}
    settings = Settings(tuple(TEMPLATES), 2.0, 0.0, 2, "all", 3, 6, 1, 0)
    rows = pl.from_arrow(run_shard(items, refined, model, tok, TEMPLATES, settings, 0, 1, 4, "m"))
    # the answering phase's predictions = the interventions' base rows (plain greedy decoding of the same prompts)
    prompts = {(p.item.case_id, c): p for c in TEMPLATES for p in plan_prompts(items, TEMPLATES, c, 0, 1,
                                                                               single_hop=False)}
    base = rows.filter(pl.col("kind") == "base")
    predictions = base.select("case_id", "condition", "generation", "generated_ids", "answer_span").with_columns(
        pl.lit("two_hop").alias("kind"),
        pl.Series("prompt", [prompts[(c, k)].query.prompt for c, k in zip(base["case_id"], base["condition"])]),
        pl.Series("gold", [prompts[(c, k)].query.gold for c, k in zip(base["case_id"], base["condition"])]))
    table, skipped = causal_effects(items, predictions, refined, model, tok, 0.0, 2, "m", batch_size=5)
    return items, tok, rows, table, skipped


def test_one_row_per_item_condition_and_hop(setting):
    items, _, _, table, skipped = setting
    assert table.height == len(items) * 2 * 2 and skipped == []
    assert set(table["hop"]) == {1, 2} and (table["n_kns"] == 3).all() and (table["n_random"] == 2).all()
    assert (table["effect_kn"] - (table["gold_prob_kn"] - table["gold_prob_base"])).abs().max() < 1e-6
    # breaks is defined exactly where the gold was top-1 at base
    assert (table["breaks"].is_null() == ~table["top1_base"]).all()


def test_base_gold_probability_equals_the_intervention_phase(setting):
    _, _, rows, table, _ = setting
    base = rows.filter(pl.col("kind") == "base").select("case_id", "condition", "gold_prob")
    joined = table.filter(pl.col("hop") == 1).join(base, on=["case_id", "condition"])
    assert joined.height == table.height // 2
    assert (joined["gold_prob_base"] - joined["gold_prob"]).abs().max() < 1e-5  # both conditions, chains included


def test_suppression_equals_the_intervention_phase_where_the_settings_coincide(setting):
    """Without chain of thought, with policy `all` and the answer at the first step, the intervention phase's
    suppress_hop{j} (and its random controls) read the gold probability at the same position with the same
    neurons scaled at every position: the numbers must be the same."""
    _, tok, rows, table, _ = setting
    direct = rows.filter(pl.col("condition") == "direct")
    steps = [answer_step(tok, ids, gen, span, cot=False) for ids, gen, span in
             zip(direct["generated_ids"].to_list(), direct["generation"], direct["answer_span"])]
    direct = direct.with_columns(pl.Series("step", steps)).filter(pl.col("step") == 0)
    compared = 0
    for hop in (1, 2):
        kn = direct.filter(pl.col("intervention") == f"suppress_hop{hop}").select("case_id", "gold_prob")
        mine = table.filter((pl.col("condition") == "direct") & (pl.col("hop") == hop)).join(kn, on="case_id")
        assert (mine["gold_prob_kn"] - mine["gold_prob"]).abs().max() < 1e-5
        control = (direct.filter(pl.col("intervention") == f"random_suppress_hop{hop}")
                   .group_by("case_id").agg(pl.col("gold_prob").mean()))
        mine = mine.drop("gold_prob").join(control, on="case_id")
        assert (mine["gold_prob_random"] - mine["gold_prob"]).abs().max() < 1e-5  # the same random neurons
        compared += mine.height
    assert compared >= 6  # most items answer at the first step


def test_no_kns_gives_null_kn_figures(setting):
    items, tok, rows, _, _ = setting
    model, tok = _tiny_world_model(items)
    base = rows.filter((pl.col("kind") == "base") & (pl.col("condition") == "direct"))
    predictions = base.select("case_id", "condition", "generation", "generated_ids", "answer_span").with_columns(
        pl.lit("two_hop").alias("kind"),
        pl.Series("prompt", [TEMPLATES["direct"].format(question=next(i.two_hop for i in items if i.case_id == c))
                             for c in base["case_id"]]),
        pl.Series("gold", [next(i.fact2_ans for i in items if i.case_id == c) for c in base["case_id"]]))
    table, _ = causal_effects(items, predictions, {}, model, tok, 0.0, 1, "m")
    assert table.height == len(items) * 2 and table["gold_prob_kn"].is_null().all() and (table["n_kns"] == 0).all()
    assert table["gold_prob_base"].is_not_null().all()
