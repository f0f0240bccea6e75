"""Interventions: random controls, the run plan over shards, the statistics, and the `intervene-prompt` command."""

from __future__ import annotations

import subprocess
from collections import Counter

import polars as pl
import pytest
import torch

from conftest import run_cli
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.interventions.analysis import analyse_interventions
from knrecall.interventions.controls import random_control
from knrecall.interventions.generate import greedy_generate
from knrecall.interventions.run import (
    Settings,
    answer_step,
    interventions,
    item_kn_sets,
    run_shard,
    sampled_cases,
    shard_of_case,
)
from knrecall.recall.bootstrap import paired_ratio_ci
from knrecall.world.tokenizer import build_tokenizer
from tests.tiny_models import WIDTHS, tiny_model

KNS = [(0, 3), (0, 17), (1, 5), (1, 6), (1, 40), (3, 2)]
BOTH = KNS + [(1, 7), (2, 9)]


def test_random_controls_match_per_layer_counts_and_avoid_the_kns():
    for seed in range(20):
        control = random_control(KNS, BOTH, width=48, key=f"m:case:hop1:{seed}")
        assert Counter(layer for layer, _ in control) == Counter(layer for layer, _ in KNS)
        assert not set(control) & set(BOTH)
        assert len(set(control)) == len(control)


def test_random_controls_are_deterministic_by_key_and_differ_by_seed():
    a = random_control(KNS, BOTH, 48, "m:case:hop1:0")
    assert a == random_control(KNS, BOTH, 48, "m:case:hop1:0")
    draws = {tuple(random_control(KNS, BOTH, 48, f"m:case:hop1:{seed}")) for seed in range(5)}
    assert len(draws) == 5


def test_random_control_needs_enough_neurons_outside_the_kns():
    with pytest.raises(KnrecallError, match="layer 1 has 1 neurons outside the knowledge neurons, 3 needed"):
        random_control([(1, 0), (1, 1), (1, 2)], [(1, 0), (1, 1), (1, 2)], width=4, key="k")


def test_interventions_plan_has_every_kn_intervention_and_its_controls():
    settings = Settings(("direct",), 2.0, 0.0, 3, "last_prompt", 4, 8, 1, 0)
    plan = interventions(settings)
    assert plan[0].name == "base"
    kn = [p for p in plan if p.kind == "kn"]
    assert {p.name for p in kn} == {f"{m}_{t}" for m in ("enhance", "suppress") for t in ("hop1", "hop2", "both")}
    assert {p.factor for p in kn if p.name.startswith("enhance")} == {2.0}
    controls = [p for p in plan if p.kind == "random"]
    assert len(controls) == 3 * 6 and {p.control_seed for p in controls} == {0, 1, 2}


def test_shards_partition_the_items():
    cases = [f"comp:{i}" for i in range(200)]
    for shards in (1, 2, 5):
        assigned = [shard_of_case(c, shards) for c in cases]
        assert set(assigned) <= set(range(shards)) and len(set(assigned)) == shards


def test_item_sample_is_deterministic_and_nested():
    items = _world_items()
    assert sampled_cases(items, None, 0) == {i.case_id for i in items}
    assert sampled_cases(items, 100, 0) == {i.case_id for i in items}
    three = sampled_cases(items, 3, 0)
    assert len(three) == 3 and three == sampled_cases(items, 3, 0)
    assert three < sampled_cases(items, 4, 0)  # a larger sample keeps the smaller one
    assert {frozenset(sampled_cases(items, 3, seed)) for seed in range(6)} != {frozenset(three)}


def test_answer_step_locates_the_span_after_the_marker():
    tok = build_tokenizer(["Where was Ann born ? Paris . So the answer is France ."])
    ids = tok("Paris . So the answer is France .", add_special_tokens=False).input_ids
    generation = tok.decode(ids, skip_special_tokens=True)
    assert answer_step(tok, ids, generation, "France") == ids.index(tok.convert_tokens_to_ids("France"))
    assert answer_step(tok, ids, generation, "Paris") == 0
    assert answer_step(tok, ids, generation, "") == len(ids) - 1
    twice = tok("Paris Paris .", add_special_tokens=False).input_ids
    text = tok.decode(twice, skip_special_tokens=True)
    assert answer_step(tok, twice, text, "Paris", cot=False) == 0 and answer_step(tok, twice, text, "Paris") == 1


def _rows(correct_base, correct_kn, prob_base, prob_kn, random_correct, random_prob):
    rows = []
    for i, (cb, ck, pb, pk, rc, rp) in enumerate(zip(correct_base, correct_kn, prob_base, prob_kn, random_correct,
                                                     random_prob)):
        common = {"case_id": f"c{i:03d}", "condition": "direct", "policy": "last_prompt", "target": "hop1"}
        rows.append({**common, "intervention": "base", "kind": "base", "target": None, "factor": 1.0,
                     "control_seed": None, "correct": cb, "gold_prob": pb})
        rows.append({**common, "intervention": "suppress_hop1", "kind": "kn", "factor": 0.0, "control_seed": None,
                     "correct": ck, "gold_prob": pk})
        for seed, (c, p) in enumerate(zip(rc, rp)):
            rows.append({**common, "intervention": "random_suppress_hop1", "kind": "random", "factor": 0.0,
                         "control_seed": seed, "correct": c, "gold_prob": p})
    return pl.DataFrame(rows)


def test_statistics_on_known_effects():
    n = 40
    base_correct = [True] * n
    kn_correct = [i % 2 == 0 for i in range(n)]  # suppression breaks half the items: Δacc = -0.5
    base_prob = [0.8] * n
    kn_prob = [0.2] * n  # Δp = -0.6 for every item
    random_correct = [[True, True]] * n
    random_prob = [[0.7, 0.5]] * n  # per item mean 0.6: Δp = -0.2
    metrics = analyse_interventions(_rows(base_correct, kn_correct, base_prob, kn_prob, random_correct, random_prob),
                                    n_items=n + 3, resamples=500, seed=0)
    entry = metrics["conditions"]["direct"]
    assert metrics["n_items"] == 43 and metrics["n_items_intervened"] == n and metrics["policy"] == "last_prompt"
    assert entry["base"]["accuracy"] == 1.0 and entry["base"]["n_items"] == n
    kn = entry["suppress_hop1"]
    assert kn["delta_accuracy"] == -0.5 and kn["accuracy"] == 0.5
    low, high = kn["delta_accuracy_ci"]
    assert low < -0.5 < high and high < 0
    assert kn["delta_gold_prob"] == pytest.approx(-0.6) and kn["delta_gold_prob_ci"] == pytest.approx([-0.6, -0.6])
    assert kn["random"]["delta_gold_prob"] == pytest.approx(-0.2) and kn["random"]["delta_accuracy"] == 0.0
    assert kn["random"]["seeds"] == 2
    # |Δp| per item: 0.6 under the KNs; random seeds move it by |0.7-0.8| and |0.5-0.8|, mean 0.2
    assert kn["kn_vs_random_ratio"] == pytest.approx(3.0) and kn["kn_vs_random_ratio_ci"] == pytest.approx([3.0, 3.0])
    assert kn["kn_vs_random_accuracy_ratio"] is None  # the control never changed an answer
    assert kn["kn_minus_random_accuracy"] == -0.5


def test_ratio_uses_effect_sizes_so_opposite_random_effects_do_not_cancel():
    n = 20
    rows = _rows([True] * n, [True] * n, [0.5] * n, [0.3] * n, [[True, True]] * n, [[0.6, 0.4]] * n)
    kn = analyse_interventions(rows, n, 200, 0)["conditions"]["direct"]["suppress_hop1"]
    assert kn["random"]["delta_gold_prob"] == pytest.approx(0.0)  # the signed changes cancel ...
    assert kn["kn_vs_random_ratio"] == pytest.approx(2.0)  # ... the sizes do not: 0.2 / mean(0.1, 0.1)


def test_items_without_kns_are_counted_not_paired():
    rows = _rows([True] * 6, [False] * 6, [0.9] * 6, [0.1] * 6, [[True]] * 6, [[0.85]] * 6)
    rows = rows.filter(~((pl.col("case_id") == "c000") & (pl.col("kind") != "base")))
    kn = analyse_interventions(rows, 6, 200, 0)["conditions"]["direct"]["suppress_hop1"]
    assert kn["n_items"] == 5 and kn["n_items_without_kns"] == 1


def test_paired_ratio_ci_leaves_out_zero_denominators():
    assert paired_ratio_ci([1.0, 1.0], [0.0, 0.0], 100, 0) == (None, None)
    low, high = paired_ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], 200, 0)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)


def _world_items() -> list[Item]:
    people = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
    cities = {"Ann": "Paris", "Bob": "Rome", "Cid": "Oslo", "Dee": "Paris", "Eve": "Rome", "Fay": "Oslo"}
    country = {"Paris": "France", "Rome": "Italy", "Oslo": "Norway"}
    return [Item(case_id=f"born:{p}", source="test", two_hop=f"In which country was {p} born ?",
                 fact1_query=[f"Where was {p} born ?"], fact1_ans=cities[p],
                 fact2_query=[f"In which country is {cities[p]} ?"], fact2_ans=country[cities[p]],
                 subject=p, relation1="born", relation2="country") for p in people]


def _tiny_world_model(items):
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [q for it in items for q in (it.two_hop, *it.fact1_query, *it.fact2_query, it.fact1_ans, it.fact2_ans)]
    texts.append("Q: A: Let's think step by step. So the answer is")
    tok = build_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(config).eval(), tok


def test_run_shard_is_deterministic_and_shard_invariant():
    items = _world_items()
    model, tok = _tiny_world_model(items)
    refined = {}
    from knrecall.data.facts import facts_of

    facts, _ = facts_of(items)
    for index, fid in enumerate(facts):
        refined[fid] = [(index % 2, 3 + index), (1, 10 + index)]
    settings = Settings(("direct", "zero_shot_cot"), 2.0, 0.0, 2, "all_generated", 3, 6, 1, 0)
    templates = {"direct": "Q: {question} A:", "zero_shot_cot": "Q: {question} A: Let's think step by step."}
    whole = pl.from_arrow(run_shard(items, refined, model, tok, templates, settings, 0, 1, 4, "m"))
    parts = pl.concat([pl.from_arrow(run_shard(items, refined, model, tok, templates, settings, s, 3, 2, "m"))
                       for s in range(3)])
    keys = ["case_id", "condition", "intervention", "control_seed"]
    whole_sorted, parts_sorted = whole.sort(keys, nulls_last=True), parts.sort(keys, nulls_last=True)
    # other batch compositions change float rounding only: tokens, spans and correctness are identical
    assert whole_sorted.drop("gold_prob").equals(parts_sorted.drop("gold_prob"))
    assert (whole_sorted["gold_prob"] - parts_sorted["gold_prob"]).abs().max() < 1e-6
    again = pl.from_arrow(run_shard(items, refined, model, tok, templates, settings, 0, 1, 4, "m"))
    assert whole.equals(again)
    per_condition = 1 + 6 + 2 * 6
    assert whole.height == len(items) * 2 * per_condition
    sets = item_kn_sets(items, refined)
    kn = whole.filter(pl.col("intervention") == "suppress_both")
    assert all(n == len(sets[c]["both"]) for c, n in zip(kn["case_id"], kn["n_neurons"]))
    # the base rows are plain greedy decoding of the same prompts
    base = whole.filter((pl.col("kind") == "base") & (pl.col("condition") == "direct")).sort("case_id")
    from knrecall.recall.steps import prompt_input_ids

    for row in base.iter_rows(named=True):
        prompt = templates["direct"].format(question=next(i.two_hop for i in items if i.case_id == row["case_id"]))
        plain = greedy_generate(model, [prompt_input_ids(tok, prompt)], 3, [tok.eos_token_id,
                                tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids("\n")])[0]
        assert row["generated_ids"] == plain.generated_ids


def test_intervene_prompt_prints_both_answers(tmp_path):
    model = tiny_model("llama")
    items = _world_items()
    _, tok = _tiny_world_model(items)
    assert len(tok) <= model.config.vocab_size
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    args = ["intervene-prompt", "--model", str(tmp_path / "m"), "--prompt", "Q: Where was Ann born ? A:",
            "--gold", "Paris", "--neuron", "0:3", "--neuron", "1:7", "--factor", "0", "--max-new-tokens", "3"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("without intervention: answer ")
    assert lines[1].startswith("with intervention (x0 on 2 neurons, last_prompt): answer ")
    assert "P(gold first token) = " in lines[1]
    bad = run_cli(args[:-8] + ["--neuron", "three", "--max-new-tokens", "3"])
    assert bad.returncode == 2 and bad.stderr.strip() == "knrecall: error: --neuron 'three': expected LAYER:INDEX, e.g. 3:117"
    big = run_cli(args[:7] + ["--neuron", f"0:{WIDTHS['llama']}"])
    assert big.returncode == 2 and f"neuron {WIDTHS['llama']} of layer 0 is out of range" in big.stderr


def test_tables_command_prints_every_table(tmp_path, knrecall_cmd):
    import json

    recall = {"models": {"world": {"conditions": {"direct": {
        "n_items": 10, "accuracy": 0.9, "accuracy_ci": [0.8, 1.0], "TT": 0.1, "TF": 0.0, "FT": 0.8, "FF": 0.1,
        "MH": 0.111, "SC": 0.889, "delta1_mean": 0.2, "delta2_mean": 0.7}},
        "measurement": {"variant": "projection", "position": "last_prompt"},
        "paper_reading": {"conditions": {"direct": {"MH": 0.25, "SC": 0.75}}},
        "validation": {"direct": {"sc_shortcut_planted": 0.9, "n_shortcut_planted": 4, "sc_composed": 0.8,
                                  "n_composed": 5, "sc_difference_ci": [-0.1, 0.3]}}}}}
    interventions = {"models": {"world": {"conditions": {"direct": {
        "base": {"accuracy": 0.9, "n_items": 10},
        "suppress_hop1": {"n_items": 9, "accuracy": 0.5, "delta_accuracy": -0.4, "delta_accuracy_ci": [-0.6, -0.2],
                          "delta_gold_prob": -0.3, "kn_vs_random_ratio": 7.5,
                          "random": {"delta_accuracy": 0.0, "delta_gold_prob": -0.04}}}}}}}
    (tmp_path / "recall.json").write_text(json.dumps(recall))
    (tmp_path / "interventions.json").write_text(json.dumps(interventions))
    result = subprocess.run(knrecall_cmd + ["tables", "--metrics", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert ("| world | projection @ last_prompt | direct | 10 | 0.900 [0.80, 1.00] | 0.100 | 0.000 | 0.800 | 0.100 "
            "| 0.111 | 0.889 | 0.200 | 0.700 | 0.250 | 0.750 |") in result.stdout  # the paper's reading last
    assert "| world | direct | 0.900 (4) | 0.800 (5) | [-0.100, +0.300] |" in result.stdout
    assert "| world | direct | suppress_hop1 | 9 | 0.500 | -0.400 [-0.60, -0.20] | -0.300 | +0.000 | -0.040 | 7.500 |" \
        in result.stdout
    empty = subprocess.run(knrecall_cmd + ["tables", "--metrics", str(tmp_path / "none")], capture_output=True, text=True)
    assert empty.returncode == 2 and "neither recall.json nor interventions.json" in empty.stderr


def test_intervene_rejects_a_shard_outside_the_shard_count(tmp_path):
    import json

    params = {"interventions": {"shards": 2}, "answer": {}, "prompts": {"direct": "Q: {question} A:"},
              "model": {"path": "world"}, "seed": 0}
    out = tmp_path / "shard.parquet"
    result = run_cli(["intervene", "--items", "i.parquet", "--kns", "k.parquet", "--params", json.dumps(params),
                      "--shard", "2", "--out", str(out)])
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.strip() == "knrecall: error: --shard 2 is outside 0..1 (interventions.shards = 2)"
    params["interventions"]["position_policy"] = "everywhere"
    result = run_cli(["intervene", "--items", "i.parquet", "--kns", "k.parquet", "--params", json.dumps(params),
                      "--shard", "0", "--out", str(out)])
    assert result.returncode == 2 and "key 'position_policy'" in result.stderr and not out.exists()


def test_statistics_do_not_depend_on_row_order():
    n = 30
    rows = _rows([i % 3 != 0 for i in range(n)], [i % 2 == 0 for i in range(n)], [0.1 * (i % 7) for i in range(n)],
                 [0.05 * (i % 5) for i in range(n)], [[i % 4 != 0, True] for i in range(n)],
                 [[0.3, 0.01 * i] for i in range(n)])
    first = analyse_interventions(rows, n, 300, 0)
    for seed in range(3):
        assert analyse_interventions(rows.sample(fraction=1.0, shuffle=True, seed=seed), n, 300, 0) == first


def test_an_impossible_random_control_is_skipped_and_counted(caplog):
    from knrecall.interventions.run import Intervention, neurons_for

    sets = {"hop1": [(0, i) for i in range(3)], "hop2": [(0, 3)], "both": [(0, i) for i in range(4)]}
    control = Intervention("random_suppress_hop1", "random", "hop1", 0.0, 0)
    assert neurons_for(control, "c1", sets, width=6, model_name="m") == []  # 2 free neurons, 3 needed
    assert "no random control for item c1" in caplog.text
    assert len(neurons_for(control, "c1", sets, width=8, model_name="m")) == 3
    rows = _rows([True] * 4, [False] * 4, [0.9] * 4, [0.1] * 4, [[True]] * 4, [[0.8]] * 4)
    rows = rows.filter(~((pl.col("case_id") == "c000") & (pl.col("kind") == "random")))
    kn = analyse_interventions(rows, 4, 200, 0)["conditions"]["direct"]["suppress_hop1"]
    assert kn["n_items"] == 4 and kn["random"]["n_items"] == 3 and kn["n_items_without_control"] == 1
