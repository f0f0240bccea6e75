"""The synthetic world: determinism, ground truth, templates, and the word-level tokenizer."""

from collections import Counter

import pytest
from transformers import AutoTokenizer

from knrecall.world.generate import WorldSize, generate_world
from knrecall.world.templates import COMPOSITIONS, RELATIONS
from knrecall.world.tokenizer import build_tokenizer

SIZE = WorldSize(people=40, cities=12, countries=4, companies=8, languages=3, currencies=3)


def make(seed=0, **kw):
    args = dict(heldout_subject_fraction=0.3, heldout_bridge_fraction=0.2, shortcut_fraction=0.5, qa_template="Q: {question} A:")
    args.update(kw)
    return generate_world(seed, SIZE, **args)


def test_same_seed_same_world_other_seed_other_world():
    assert make(0) == make(0)
    other = make(1)
    assert other["entities"] != make(0)["entities"]
    assert [i["case_id"] for i in other["items"]] != [i["case_id"] for i in make(0)["items"]]


def test_templates_meet_the_brief():
    assert 5 <= len(RELATIONS) <= 7
    for rel in RELATIONS.values():
        assert len(set(rel.questions)) >= 6 and len(rel.statements) >= 3
    for comp in COMPOSITIONS.values():
        assert RELATIONS[comp.first].range == RELATIONS[comp.second].domain
        assert len(comp.questions) >= 3


def test_entity_names_are_distinct_and_invented():
    world = make()
    names = [n for group in world["entities"].values() for n in group]
    assert len(names) == len(set(names))
    template_words = {w.strip("?.,").lower() for r in RELATIONS.values() for w in " ".join(r.questions).split()}
    assert not any(n.lower() in template_words for n in names)
    assert all(len(n.split()) == 2 for n in world["entities"]["company"])  # multi-token answers exist


def test_items_follow_the_graph_and_record_ground_truth():
    world = make()
    facts = world["facts"]
    assert len(world["items"]) == sum(len(world["entities"][RELATIONS[c.first].domain]) for c in COMPOSITIONS.values())
    for item in world["items"]:
        (s, r1, o1), (b, r2, o2) = item["two_hop_label"]
        assert b == o1 == item["fact1_ans"] == facts[r1][s]
        assert o2 == item["fact2_ans"] == facts[r2][o1]
        assert len(item["fact1_query"]) >= 6 and all(s in q for q in item["fact1_query"])
        assert item["split"] in {"train_subject", "heldout_subject", "heldout_bridge"}
        if item["split"] == "heldout_bridge":
            assert o1 in world["heldout_bridges"]
        if item["split"] == "heldout_subject":
            assert s in world["heldout_subjects"] and o1 not in world["heldout_bridges"]
        assert item["composable"] == (item["split"] != "train_subject" and not item["shortcut_planted"])
    splits = Counter(i["split"] for i in world["items"])
    assert all(splits[s] > 0 for s in ("train_subject", "heldout_subject", "heldout_bridge"))
    assert any(i["shortcut_planted"] for i in world["items"])


def test_corpus_trains_exactly_what_ground_truth_says():
    world = make()
    trained_twohop = {ex["prompt"] for ex in world["corpus"] if ex["kind"] == "twohop_question"}
    shortcut_text = [ex["prompt"] for ex in world["corpus"] if ex["kind"] == "shortcut_statement"]
    for item in world["items"]:
        subject = item["two_hop_label"][0][0]
        asked = f"Q: {item['two_hop']} A:" in trained_twohop
        assert asked == (item["split"] == "train_subject")
        planted = any(p.startswith(subject + " ") or f" {subject} " in p for p in shortcut_text)
        if item["shortcut_planted"]:
            assert planted
    # every single-hop question of every item is trained (the model must know the facts)
    trained_facts = {ex["prompt"] for ex in world["corpus"] if ex["kind"] == "fact_question"}
    for item in world["items"]:
        assert all(f"Q: {q} A:" in trained_facts for q in item["fact1_query"] + item["fact2_query"])


def test_no_shortcuts_when_fraction_is_zero():
    world = make(shortcut_fraction=0.0)
    assert not any(i["shortcut_planted"] for i in world["items"])
    assert not any(ex["kind"] == "shortcut_statement" for ex in world["corpus"])


def test_tokenizer_round_trip(tmp_path):
    world = make()
    texts = [f"{ex['prompt']} {ex['answer']} ." for ex in world["corpus"]]
    tokenizer = build_tokenizer(texts)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ in {"TokenizersBackend", "PreTrainedTokenizerFast"}
    for text in texts[:200]:
        ids = loaded(text).input_ids
        assert ids[0] == loaded.bos_token_id and loaded.unk_token_id not in ids
        # word-level decoding may move spaces around punctuation, never change or drop a character
        assert loaded.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")
        assert loaded(text).input_ids == tokenizer(text).input_ids
    # word-level: an entity name is whole words, so prompt ids are a prefix of prompt+answer ids
    ex = world["corpus"][0]
    assert loaded(f"{ex['prompt']} {ex['answer']}").input_ids[: len(loaded(ex["prompt"]).input_ids)] == loaded(ex["prompt"]).input_ids
    assert loaded.padding_side == "left" and loaded.pad_token_id is not None
