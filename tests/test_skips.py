"""Real datasets flow through the run: conflict contexts from the records' own counterfactuals, per-item problems
skipped and counted (never fatal), every later phase coping with an item that lacks a condition's prediction, and
instruction-tuned models whose prompts are wrapped in their chat template in every phase."""

from __future__ import annotations

import json
import logging

import polars as pl
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import FIXTURES
from knrecall.answer import plan_prompts, predictions_table, stop_token_ids
from knrecall.attribution.kns import refined_sets
from knrecall.attribution.run import AttributionSettings, attribute_shard
from knrecall.data.conditions import (
    CONDITIONS,
    DEFAULT_TEMPLATES,
    candidates_by_relation,
    conflict_choice,
    counterfactual_entities,
)
from knrecall.data.facts import facts_of
from knrecall.data.importers import import_dataset
from knrecall.data.items import Item, items_table
from knrecall.errors import KnrecallError
from knrecall.interventions.causal import causal_effects
from knrecall.interventions.generate import greedy_generate
from knrecall.interventions.run import Settings, run_shard
from knrecall.models.chat import chat_wrapper, prompt_wrapper
from knrecall.recall.analysis import analyse
from knrecall.recall.measure import measure
from knrecall.recall.steps import prompt_input_ids
from knrecall.skips import Skip, counts, merge_counts, table
from knrecall.targets import answer_token_ids
from knrecall.validation.scoreboard import scoreboard
from knrecall.world.tokenizer import build_tokenizer

REAL = FIXTURES / "tfrkn_real.json"
MQUAKE = FIXTURES / "mquake_rewrites.json"
EXTRA_WORDS = "Q: A: Let's think step by step. So the answer is Context: User: Assistant:"
CHAT_TEMPLATE = ("{% for message in messages %}User: {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}Assistant:{% endif %}")
# the real-fact fixture: relations with a single object give no conflict candidate
REAL_SKIPS = {"conflict_hop1": {"7", "8", "14"}, "conflict_hop2": {"5", "7", "8", "14"}}
# the MQuAKE fixture with rewrites: only records without a rewrite of the hop and with a single-object relation
MQUAKE_SKIPS = {"conflict_hop1": {"110"}, "conflict_hop2": {"104", "110"}}


def _model(tokenizer, positions: int = 256, seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def _tokenizer(path, chat: bool = False):
    tokenizer = build_tokenizer([path.read_text(), EXTRA_WORDS])
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _answer(items, model, tokenizer, wrap=None, conditions=CONDITIONS):
    skipped: list[Skip] = []
    table_ = predictions_table(items, DEFAULT_TEMPLATES, list(conditions), model, tokenizer, 3, 8, "cpu",
                               cot_max_new_tokens=5, few_shot_k=1, wrap=wrap, skipped=skipped)
    return pl.from_arrow(table_), skipped


def _by_condition(skipped: list[Skip]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in skipped:
        out.setdefault(s.condition, set()).add(s.case_id)
    return out


# ------------------------------------------------------------------------------ conflict contexts from the record
def test_the_records_own_counterfactual_is_the_conflict():
    items = {item.case_id: item for item in import_dataset(MQUAKE)}
    # a rewrite of hop 1: the new bridge, which implies the new chain's answer; hop 2 gets the new answer
    assert counterfactual_entities(items["101"]) == {1: ("Italy", "Italian"), 2: ("Italian", "Italian")}
    # a rewrite of hop 2: the bridge is unchanged, so hop 1 has no counterfactual of its own
    assert counterfactual_entities(items["102"]) == {2: ("Lyon", "Lyon")}
    # only requested_rewrite and new_answer (no new_single_hops)
    assert counterfactual_entities(items["106"]) == {2: ("euro", "euro")}
    assert counterfactual_entities(items["104"]) == {}  # no rewrite at all
    pools = candidates_by_relation(list(items.values()))
    assert conflict_choice(items["103"], 1, pools, 0) == ("Christopher Marlowe", "Canterbury", "rewrite")
    assert conflict_choice(items["102"], 1, pools, 0)[2] == "same_relation"  # no hop-1 rewrite: the dataset's
    assert conflict_choice(items["109"], 2, pools, 0) == ("French", "French", "same_relation")
    assert conflict_choice(items["110"], 1, pools, 0) is None and conflict_choice(items["110"], 2, pools, 0) is None


def test_a_malformed_or_unchanged_counterfactual_is_ignored():
    item = Item("c", "tfrkn", "Q?", ["Where is X?"], "France", ["Capital of France?"], "Paris",
                fact1_aliases=["French Republic"])
    item.extra = {"counterfactual": {"new_single_hops": "not a list", "requested_rewrite": [5, {"target_true": 3}]}}
    assert counterfactual_entities(item) == {}
    item.extra = {"counterfactual": {"new_single_hops": [{"answer": "french republic"}, {"answer": 7}]}}
    assert counterfactual_entities(item) == {}  # an alias of the truth is no counterfactual; 7 is no entity
    assert conflict_choice(item, 1, candidates_by_relation([item]), 0) is None


def test_a_tfrkn_record_may_carry_a_counterfactual(tmp_path):
    record = {**json.loads(REAL.read_text())[0],
              "counterfactual": {"new_single_hops": [{"answer": "Italy"}, {"answer": "Rome"}]}}
    path = tmp_path / "one.json"
    path.write_text(json.dumps([record]))
    (item,) = import_dataset(path)
    plan = plan_prompts([item], DEFAULT_TEMPLATES, "conflict_hop1", 0, 1, single_hop=False)
    assert plan[0].context_source == "rewrite" and plan[0].context_answer == "Rome"
    assert "? Italy. Q:" in plan[0].query.prompt


# ------------------------------------------------------------------------------ the answering phase
def test_the_real_fixture_is_answered_under_all_five_conditions(caplog):
    items = import_dataset(REAL)
    tokenizer = _tokenizer(REAL)
    with caplog.at_level(logging.WARNING, logger="knrecall.skips"):
        predictions, skipped = _answer(items, _model(tokenizer), tokenizer)
    two_hop = predictions.filter(pl.col("kind") == "two_hop")
    assert _by_condition(skipped) == REAL_SKIPS
    for condition in CONDITIONS:
        answered = set(two_hop.filter(pl.col("condition") == condition)["case_id"])
        assert answered == {item.case_id for item in items} - REAL_SKIPS.get(condition, set())
    assert {s.reason for s in skipped} == {"no_conflict_candidate"}
    assert counts(skipped)["by_condition"] == {"conflict_hop1": {"no_conflict_candidate": 3},
                                               "conflict_hop2": {"no_conflict_candidate": 4}}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 7 and "skipped item '7' under conflict_hop1 (answer): no_conflict_candidate" in lines[0]
    assert "relation 'place of birth' has no other object in the dataset" in lines[0]
    conflict = two_hop.filter(pl.col("condition").str.starts_with("conflict"))
    assert set(conflict["context_source"]) == {"same_relation"} and two_hop["context_source"].null_count() == 45


def test_the_mquake_fixture_takes_its_conflicts_from_its_rewrites():
    items = import_dataset(MQUAKE)
    assert len(items) == 9  # the three-hop record is skipped on import
    tokenizer = _tokenizer(MQUAKE)
    predictions, skipped = _answer(items, _model(tokenizer), tokenizer)
    two_hop = predictions.filter(pl.col("kind") == "two_hop")
    assert _by_condition(skipped) == MQUAKE_SKIPS and two_hop.height == 5 * 9 - 3
    assert set(two_hop["condition"]) == set(CONDITIONS)
    source = {(r["case_id"], r["condition"]): (r["context_source"], r["context_answer"])
              for r in two_hop.filter(pl.col("condition").str.starts_with("conflict")).iter_rows(named=True)}
    assert source[("101", "conflict_hop1")] == ("rewrite", "Italian")
    assert source[("102", "conflict_hop1")][0] == "same_relation" and source[("102", "conflict_hop2")] == ("rewrite", "Lyon")
    assert source[("109", "conflict_hop2")] == ("same_relation", "French")
    rewrites = [key for key, (s, _) in source.items() if s == "rewrite"]
    assert len(rewrites) == 10  # 4 of hop 1 (101, 103, 105, 107), 6 of hop 2 (all but 104, 109, 110)
    prompt = two_hop.filter((pl.col("case_id") == "103") & (pl.col("condition") == "conflict_hop1"))["prompt"][0]
    assert prompt.startswith("Context: Who wrote Hamlet? Christopher Marlowe. Q:")


def _items_with_an_unknown_answer(tmp_path):
    records = json.loads(REAL.read_text())[:4]
    records[1] = {**records[1], "fact2_ans": "Zyxwv"}  # a word the tokenizer below has never seen: [UNK]
    path = tmp_path / "data.json"
    tokenizer = build_tokenizer([json.dumps(json.loads(REAL.read_text())[:4]), EXTRA_WORDS])
    path.write_text(json.dumps(records))
    return import_dataset(path), tokenizer


def test_an_answer_that_cannot_be_tokenized_skips_only_its_prompts(tmp_path, caplog):
    items, tokenizer = _items_with_an_unknown_answer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="knrecall.skips"):
        predictions, skipped = _answer(items, _model(tokenizer), tokenizer, conditions=["direct", "zero_shot_cot"])
    assert [(s.case_id, s.kind, s.paraphrase, s.condition, s.reason) for s in skipped] == [
        *[("1", "hop2", k, None, "answer_tokens") for k in range(4)],  # its four hop-2 paraphrases
        ("1", "two_hop", None, "direct", "answer_tokens"), ("1", "two_hop", None, "zero_shot_cot", "answer_tokens")]
    assert all("[UNK]" in s.detail for s in skipped) and len(caplog.records) == 6  # one line per skipped prompt
    two_hop = predictions.filter(pl.col("kind") == "two_hop")
    assert set(two_hop["case_id"]) == {"0", "2", "3"} and two_hop.height == 6
    assert predictions.filter((pl.col("case_id") == "1") & (pl.col("kind") == "hop1")).height == 4  # still asked
    assert table(skipped).num_rows == 6


def test_a_prompt_too_long_for_the_context_skips_that_item_only():
    items = import_dataset(REAL)[:4]
    items[2].two_hop = " ".join(["Where"] * 40) + " ?"
    tokenizer = _tokenizer(REAL)
    predictions, skipped = _answer(items, _model(tokenizer, positions=40), tokenizer, conditions=["direct"])
    assert [(s.case_id, s.reason) for s in skipped] == [("2", "prompt_too_long")]
    assert "more than the model's context of 40" in skipped[0].detail
    assert set(predictions.filter(pl.col("kind") == "two_hop")["case_id"]) == {"0", "1", "3"}


def test_when_every_two_hop_question_is_skipped_the_phase_stops_with_one_message(caplog):
    items = import_dataset(REAL)[:2]
    for item in items:
        item.two_hop = " ".join(["Where"] * 40) + " ?"
    tokenizer = _tokenizer(REAL)
    with caplog.at_level(logging.WARNING, logger="knrecall.skips"), \
            pytest.raises(KnrecallError, match=r"every two-hop question was skipped \(2 prompt_too_long\); e.g. "
                                               r"item '0' under direct: .*context of 40"):
        _answer(items, _model(tokenizer, positions=40), tokenizer, conditions=["direct"])
    assert not caplog.records  # checked before anything was generated or logged


def test_skip_counts_add_up_across_shards():
    a = counts([Skip("intervene", "prompt_too_long", "x", "1", condition="few_shot_cot")])
    b = counts([Skip("intervene", "prompt_too_long", "y", "2", condition="few_shot_cot"),
                Skip("attribute", "answer_tokens", "z", kind="fact", paraphrase=0, fact_id="f")])
    merged = merge_counts(a, b, None)
    assert merged["n_skipped"] == 3 and merged["by_condition"] == {"few_shot_cot": {"prompt_too_long": 2}}
    assert merged["single_hop"] == {"answer_tokens": 1}
    with pytest.raises(ValueError, match="unknown skip reason"):
        Skip("answer", "bad luck", "")


# ------------------------------------------------------------------------------ the later phases cope
@pytest.fixture(scope="module")
def mquake_run():
    """The MQuAKE fixture answered under all five conditions (3 items skipped under a conflict condition), with
    hand-made KNs for every fact, then measured, analysed, causal effects and the scoreboard."""
    items = import_dataset(MQUAKE)
    tokenizer = _tokenizer(MQUAKE)
    model = _model(tokenizer)
    predictions, skipped = _answer(items, model, tokenizer)
    facts, _ = facts_of(items)
    kns = pl.DataFrame([{"fact_id": fid, "level": "refined", "paraphrase": None, "layer": layer,
                         "neuron": (3 * i + layer) % 32, "attribution": 1.0, "share": 1.0}
                        for i, fid in enumerate(facts) for layer in (0, 1)],
                       schema={"fact_id": pl.String, "level": pl.String, "paraphrase": pl.Int16, "layer": pl.Int16,
                               "neuron": pl.Int32, "attribution": pl.Float32, "share": pl.Float32})
    baselines, activations, _, _ = measure(items, predictions, kns, model, tokenizer, DEFAULT_TEMPLATES, 5, 0, 8, 2)
    _, links = facts_of(items)
    link_table = pl.DataFrame([(c, h, f, 2) for c, h, f in links], orient="row",
                              schema={"case_id": pl.String, "hop": pl.Int8, "fact_id": pl.String, "n_kns": pl.Int64})
    params = {"delta": "ratio", "position": "step", "threshold": "null", "tau": 1.0, "null_quantile": 0.95,
              "bootstrap_resamples": 100}
    item_frame = pl.from_arrow(items_table(items))
    recall, summary, scores, null_scores = analyse(item_frame, predictions, baselines, activations, link_table, params,
                                                   0, skipped={"answer": counts(skipped)},
                                                   conditions=list(CONDITIONS))
    refined = refined_sets(kns)
    causal, causal_skipped = causal_effects(items, predictions, refined, model, tokenizer, 0.0, 1, "m", 16)
    board = scoreboard(item_frame, predictions, scores, null_scores, causal, {"variant": "ratio", "position": "step"},
                       100, 0)
    return items, predictions, activations, recall, summary, causal, causal_skipped, board


def test_measure_and_recall_leave_skipped_items_out_of_that_condition(mquake_run):
    items, predictions, activations, recall, summary, *_ = mquake_run
    answered = predictions.filter(pl.col("kind") == "two_hop").select("case_id", "condition")
    assert recall.height == answered.height * 2
    assert recall.select("case_id", "condition").unique().join(answered, on=["case_id", "condition"],
                                                               how="anti").height == 0
    # nobody's null under a condition where that item was not answered
    nulls = activations.filter(pl.col("kind") == "null").select("case_id", "condition").unique()
    assert nulls.join(answered, on=["case_id", "condition"], how="anti").height == 0
    for condition in CONDITIONS:
        entry = summary["conditions"][condition]
        assert entry["n_skipped"] == len(MQUAKE_SKIPS.get(condition, ()))
        assert entry["n_items"] + entry["n_skipped"] == len(items)
    assert summary["conditions"]["conflict_hop2"]["skipped"] == {"no_conflict_candidate": 2}
    assert summary["skipped"]["answer"]["n_skipped"] == 3


def test_causal_effects_and_scoreboard_cope(mquake_run):
    _, predictions, _, _, _, causal, causal_skipped, board = mquake_run
    assert causal.height == predictions.filter(pl.col("kind") == "two_hop").height * 2 and causal_skipped == []
    assert {row["condition"] for row in board["rows"]} == set(CONDITIONS)


def test_a_condition_every_item_was_skipped_under_keeps_its_count():
    items = import_dataset(REAL)
    alone = [i for i in items if i.case_id in {"5", "14"}]  # currency and located-in: single-object relations
    tokenizer = _tokenizer(REAL)
    predictions, skipped = _answer(alone, _model(tokenizer), tokenizer, conditions=["direct", "conflict_hop2"])
    assert set(predictions.filter(pl.col("kind") == "two_hop")["condition"]) == {"direct"}
    assert counts(skipped)["by_condition"] == {"conflict_hop2": {"no_conflict_candidate": 2}}


def test_interventions_skip_what_the_answering_phase_skips():
    items = import_dataset(REAL)
    tokenizer = _tokenizer(REAL)
    model = _model(tokenizer)
    facts, _ = facts_of(items)
    refined = {fid: [(0, i % 32), (1, (i + 5) % 32)] for i, fid in enumerate(facts)}
    settings = Settings(("direct", "conflict_hop2"), 2.0, 0.0, 1, "last_prompt", 3, 5, 1, 0)
    parts, skipped = [], []
    for shard in range(2):
        parts.append(pl.from_arrow(run_shard(items, refined, model, tokenizer, DEFAULT_TEMPLATES, settings, shard, 2,
                                             16, "m", skipped=skipped)))
    base = pl.concat(parts).filter(pl.col("kind") == "base")
    assert _by_condition(skipped) == {"conflict_hop2": REAL_SKIPS["conflict_hop2"]}  # each item once, in its shard
    assert set(base.filter(pl.col("condition") == "conflict_hop2")["case_id"]) == (
        {i.case_id for i in items} - REAL_SKIPS["conflict_hop2"])
    assert base.filter(pl.col("condition") == "direct").height == len(items)


def test_attribution_skips_a_prompt_whose_answer_cannot_be_tokenized(tmp_path, caplog):
    items, tokenizer = _items_with_an_unknown_answer(tmp_path)
    settings = AttributionSettings(steps=4, rule="gauss_legendre", target="prob", store_threshold=0.1, full_maps=False)
    skipped: list[Skip] = []
    with caplog.at_level(logging.WARNING, logger="knrecall.skips"):
        _, layers = attribute_shard(items, _model(tokenizer), tokenizer, DEFAULT_TEMPLATES, settings, 0, 1, 64,
                                    skipped=skipped)
    facts, _ = facts_of(items)
    (bad,) = [fid for fid, fact in facts.items() if fact.answer == "Zyxwv"]
    assert [(s.kind, s.fact_id, s.paraphrase, s.reason) for s in skipped] == [
        ("fact", bad, k, "answer_tokens") for k in range(len(facts[bad].questions))]
    assert len(caplog.records) == len(skipped) and f"skipped fact {bad} paraphrase 0" in caplog.records[0].getMessage()
    attributed = set(pl.from_arrow(layers)["fact_id"])
    assert attributed == set(facts) - {bad}


# ------------------------------------------------------------------------------ instruction-tuned models
def test_the_chat_wrapper_renders_one_user_turn_and_drops_a_doubled_bos():
    tokenizer = _tokenizer(REAL, chat=True)
    wrap = chat_wrapper(tokenizer, "m")
    assert wrap("Q: Who wrote Hamlet? A:") == "User: Q: Who wrote Hamlet? A:\nAssistant:"
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    wrapped = chat_wrapper(tokenizer, "m")("Q: Who wrote Hamlet? A:")
    assert wrapped.startswith("User:")  # the tokenizer adds BOS itself: the template's BOS text is dropped
    assert tokenizer(wrapped).input_ids.count(tokenizer.bos_token_id) == 1
    assert prompt_wrapper(tokenizer, False, "m")("x") == "x"


def test_chat_template_on_without_a_template_names_the_model():
    with pytest.raises(KnrecallError, match="model 'llama-chat': chat_template is on, but its tokenizer has no chat "
                                            "template"):
        prompt_wrapper(_tokenizer(REAL), True, "llama-chat")


def test_the_chat_prompt_is_used_and_stored_in_every_phase():
    items = import_dataset(REAL)[:6]
    tokenizer = _tokenizer(REAL, chat=True)
    model = _model(tokenizer)
    wrap = chat_wrapper(tokenizer, "m")
    predictions, _ = _answer(items, model, tokenizer, wrap=wrap, conditions=["direct", "few_shot_cot"])
    assert predictions["prompt"].str.starts_with("User: ").all()
    assert predictions["prompt"].str.ends_with("\nAssistant:").all()
    direct = predictions.filter((pl.col("kind") == "two_hop") & (pl.col("condition") == "direct"))
    assert direct["prompt"][0] == f"User: Q: {items[0].two_hop} A:\nAssistant:"
    # attribution attributes the same wrapped single-hop prompts the answering phase asked
    settings = AttributionSettings(steps=4, rule="gauss_legendre", target="prob", store_threshold=0.1, full_maps=False)
    _, layers = attribute_shard(items, model, tokenizer, DEFAULT_TEMPLATES, settings, 0, 1, 64, wrap=wrap)
    single = set(predictions.filter(pl.col("kind") != "two_hop")["prompt"])
    assert set(pl.from_arrow(layers)["prompt"]) == single
    # the interventions' base run generates from the same wrapped prompts
    facts, _ = facts_of(items)
    refined = {fid: [(0, i)] for i, fid in enumerate(facts)}
    settings = Settings(("direct",), 2.0, 0.0, 0, "last_prompt", 3, 5, 1, 0)
    rows = pl.from_arrow(run_shard(items, refined, model, tokenizer, DEFAULT_TEMPLATES, settings, 0, 1, 8, "m",
                                   wrap=wrap))
    base = rows.filter(pl.col("kind") == "base").sort("case_id")
    stops = stop_token_ids(tokenizer, cot=False)
    for row, prompt in zip(base.iter_rows(named=True), direct.sort("case_id")["prompt"]):
        gold = answer_token_ids(tokenizer, prompt, next(i.fact2_ans for i in items if i.case_id == row["case_id"]))
        wrapped = greedy_generate(model, [prompt_input_ids(tokenizer, prompt)], 3, stops, gold_ids=gold[:1])[0]
        assert row["generated_ids"] == wrapped.generated_ids
        assert row["gold_prob"] == pytest.approx(wrapped.gold_probs[0], rel=1e-5)
        unwrapped = f"Q: {next(i.two_hop for i in items if i.case_id == row['case_id'])} A:"
        plain = greedy_generate(model, [prompt_input_ids(tokenizer, unwrapped)], 3, stops, gold_ids=gold[:1])[0]
        assert plain.gold_probs[0] != pytest.approx(row["gold_prob"], rel=1e-5)  # the wrapper makes a difference
