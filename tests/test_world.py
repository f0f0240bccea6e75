"""The synthetic world: determinism, ground truth, templates, and the word-level tokenizer."""

import hashlib
import json
from collections import Counter, defaultdict

import polars as pl
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from knrecall.config import WorldParams, parse_params
from knrecall.data.conditions import (
    candidate_pool,
    candidates_by_relation,
    conflict_context,
    conflict_prompt,
    exemplar_chain,
    render,
    render_exemplar,
)
from knrecall.data.importers import import_dataset
from knrecall.data.items import Item, items_table, read_items, write_items
from knrecall.errors import KnrecallError
from knrecall.interventions.run import sampled_cases
from knrecall.world.generate import WorldSize, as_item, generate_world
from knrecall.world.metrics import world_metrics
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


# ------------------------------------------------------------------- CoT and context training text (off by default)

NEW_KINDS = {"cot_question", "cot_onehop", "context_question"}
# sha256 of make(seed) before cot_fraction / context_fraction existed (this SIZE, `make` defaults).
# If the templates or the name inventor change on purpose, recompute: the point is that adding the two new
# parameters (at 0) changed no random draw.
DIGEST_BEFORE_REASONING_TEXT = {
    0: "90a03ecd73d4fa9de2929424f3580d8353d0fdc8a4527a7de73dcf5d9dd57566",
    1: "3e904bf697eaceceed0fef3e1210b3f000a7bcbc01825d2857616c5f43268dd1",
}


def digest(world):
    return hashlib.sha256(json.dumps(world, sort_keys=True).encode()).hexdigest()


def by_question(world):
    return {i["two_hop"]: i for i in world["items"]}


def owner(prompt, questions):
    """The item whose two-hop question the prompt finally asks ("... Q: {two_hop} A:" or "... A: Let's think ...")."""
    tail = prompt.rsplit("Q: ", 1)[1]
    question = tail.split(" A:", 1)[0]
    return questions[question]


PATHWAY_KEYS = ("shortcut_conflicting", "shortcut_answer")


def without_pathway_keys(world):
    """The world as it was before pathway items existed: the same, less the two item keys they added."""
    items = [{k: v for k, v in item.items() if k not in PATHWAY_KEYS} for item in world["items"]]
    return {**world, "items": items}


@pytest.mark.parametrize("seed", [0, 1])
def test_new_fractions_at_zero_leave_the_world_as_it_was(seed):
    base = make(seed)
    # byte for byte the world of before (entities, facts, items, corpus and its order), but for the two new keys
    assert digest(without_pathway_keys(base)) == DIGEST_BEFORE_REASONING_TEXT[seed]
    assert all(i["shortcut_conflicting"] is False and i["shortcut_answer"] is None for i in base["items"])
    assert make(seed, cot_fraction=0.0, context_fraction=0.0, pathway_fraction=0.0) == base
    assert not any(ex["kind"] in NEW_KINDS | {"conflicting_shortcut_statement"} for ex in base["corpus"])


def test_reasoning_text_draws_nothing_from_the_world_stream():
    base = make(0)
    world = make(0, cot_fraction=0.5, context_fraction=0.5)
    for key in ("entities", "facts", "heldout_subjects", "heldout_bridges", "items"):
        assert world[key] == base[key]
    # the old examples are all there, in their old order; the new ones are spread over the corpus
    assert [ex for ex in world["corpus"] if ex["kind"] not in NEW_KINDS] == base["corpus"]
    kinds = [ex["kind"] in NEW_KINDS for ex in world["corpus"]]
    assert any(kinds[: len(kinds) // 2]) and any(kinds[len(kinds) // 2 :])
    # each fraction draws from its own generator: one does not move the other's choice
    only_cot = [ex for ex in make(0, cot_fraction=0.5)["corpus"] if ex["kind"] == "cot_question"]
    assert only_cot == [ex for ex in world["corpus"] if ex["kind"] == "cot_question"]


def test_reasoning_text_is_deterministic_by_seed():
    kw = dict(cot_fraction=0.4, context_fraction=0.4)
    assert make(0, **kw) == make(0, **kw)
    new = lambda w: [ex for ex in w["corpus"] if ex["kind"] in NEW_KINDS]
    assert new(make(1, **kw)) != new(make(0, **kw))


def test_world_items_import_as_the_items_the_text_was_built_from(tmp_path):
    world = make()
    path = tmp_path / "items.json"
    path.write_text(json.dumps(world["items"]))
    for imported, record in zip(import_dataset(path, "tfrkn"), world["items"], strict=True):
        mine = as_item(record)
        for field in ("case_id", "two_hop", "fact1_query", "fact1_ans", "fact2_query", "fact2_ans", "subject",
                      "relation1", "relation2", "split", "fact1_aliases", "answer_aliases"):
            assert getattr(imported, field) == getattr(mine, field), field


def test_cot_examples():
    fraction = 0.5
    world = make(cot_fraction=fraction)
    questions = by_question(world)
    train = [i for i in world["items"] if i["split"] == "train_subject"]
    cot = [ex for ex in world["corpus"] if ex["kind"] == "cot_question"]
    assert len(cot) == 2 * round(len(train) * fraction)
    owners = [owner(ex["prompt"], questions) for ex in cot]
    assert len({o["case_id"] for o in owners}) == len(cot) // 2  # two examples per chosen item
    zero = few = 0
    for ex, record in zip(cot, owners):
        assert record["split"] == "train_subject"
        item = as_item(record)
        o1, o2 = record["fact1_ans"], record["fact2_ans"]
        assert ex["answer"] == f"{exemplar_chain(item)} So the answer is {o2}"
        assert ex["answer"].endswith(f"So the answer is {o2}")
        assert ex["answer"].startswith(f"{o1}. {record['fact2_query'][0]} {o2}.")  # bridge, then hop 2 about it
        # the training text (the trainer appends " .") is word for word an exemplar block of the item
        assert render_exemplar(item) == f"Q: {record['two_hop']} A: {ex['answer']}.\n"
        if ex["prompt"] == render("zero_shot_cot", item):
            assert ex["prompt"] == f"Q: {record['two_hop']} A: Let's think step by step."
            zero += 1
        else:
            few += 1
            assert ex["prompt"].endswith(f".\nQ: {record['two_hop']} A:")
            assert ex["prompt"].count("Q: ") == 2 and "So the answer is" in ex["prompt"]  # one exemplar
            assert exemplar_chain(item) not in ex["prompt"]
            assert not any(q in ex["prompt"] for q in record["fact1_query"] + record["fact2_query"])
            exemplar = owner(ex["prompt"].split("\n")[0] + " A:", questions)
            assert exemplar["split"] == "train_subject" and exemplar["case_id"] != record["case_id"]
            assert ex["prompt"] == render("few_shot_cot", item, exemplars=[as_item(exemplar)])
    assert few == len(cot) // 2 and zero == len(cot) - few
    for record in {o["case_id"]: o for o in owners}.values():  # each chosen item: zero-shot and one-shot
        prompts = [ex["prompt"] for ex, o in zip(cot, owners) if o["case_id"] == record["case_id"]]
        assert prompts[0] == render("zero_shot_cot", as_item(record)) and prompts[1].count("Q: ") == 2


def test_several_few_shot_prompts_per_cot_item():
    one, three = make(cot_fraction=0.5), make(cot_fraction=0.5, few_shot_prompts=3)
    assert make(cot_fraction=0.5, few_shot_prompts=1) == one
    questions = by_question(three)

    def few_shot_exemplars(world):
        found = defaultdict(list)
        for ex in world["corpus"]:
            if ex["kind"] == "cot_question" and ex["prompt"].count("Q: ") == 2:
                record = owner(ex["prompt"], questions)
                exemplar = owner(ex["prompt"].split("\n")[0] + " A:", questions)
                assert exemplar["split"] == "train_subject" and exemplar["case_id"] != record["case_id"]
                assert ex["prompt"] == render("few_shot_cot", as_item(record), exemplars=[as_item(exemplar)])
                assert ex["answer"] == f"{exemplar_chain(as_item(record))} So the answer is {record['fact2_ans']}"
                found[record["case_id"]].append(exemplar["case_id"])
        return found

    before, after = few_shot_exemplars(one), few_shot_exemplars(three)
    assert set(after) == set(before)
    for case_id, exemplars in after.items():
        assert exemplars[0] == before[case_id][0]  # the first draw is the one-prompt world's
        assert len(exemplars) == len(set(exemplars)) <= 3  # distinct exemplars (a repeated draw is dropped)
    assert sum(len(e) for e in after.values()) > 2 * len(after)  # most items get all three
    with pytest.raises(KnrecallError, match="few_shot_prompts"):
        make(cot_fraction=0.5, few_shot_prompts=0)
    with pytest.raises(KnrecallError, match="world.few_shot_prompts"):
        parse_params({"world": {"few_shot_prompts": 0}})


def test_onehop_cot_examples():
    world = make(cot_fraction=0.2)
    onehop = [ex for ex in world["corpus"] if ex["kind"] == "cot_onehop"]
    n_facts = sum(len(by_subject) for by_subject in world["facts"].values())
    assert len(onehop) == n_facts  # one per single-hop fact, whatever the fraction
    fact_questions = {(q, ex["answer"]) for ex in world["corpus"] if ex["kind"] == "fact_question"
                      for q in [ex["prompt"]]}
    second_hops = {c.second for c in COMPOSITIONS.values()}
    chains = 0
    for ex in onehop:
        assert ex["prompt"].endswith(" A: Let's think step by step.")
        entity = ex["answer"].split(". So the answer is ")[-1]
        direct = ex["prompt"].replace(" A: Let's think step by step.", " A:")
        assert (direct, entity) in fact_questions  # a trained single-hop question and its true answer
        relation = next(r for r in RELATIONS.values()
                        if any(direct == f"Q: {q.format(s=s)} A:" for s in world["facts"][r.name] for q in r.questions))
        if relation.name in second_hops:  # the chain's own form: the subject, its first question, the answer
            subject = next(s for s in world["facts"][relation.name]
                           if any(direct == f"Q: {q.format(s=s)} A:" for q in relation.questions))
            assert ex["answer"] == f"{subject}. {relation.questions[0].format(s=subject)} {entity}. So the answer is {entity}"
            chains += 1
        else:
            assert ex["answer"] == f"{entity}. So the answer is {entity}"
    assert 0 < chains < len(onehop)
    assert [ex for ex in make(cot_fraction=0.7)["corpus"] if ex["kind"] == "cot_onehop"] == onehop
    assert not any(ex["kind"] == "cot_onehop" for ex in make(context_fraction=0.5)["corpus"])


def test_context_examples():
    fraction, seed = 0.5, 0
    world = make(seed, context_fraction=fraction)
    facts, questions = world["facts"], by_question(world)
    by_relation = candidates_by_relation([as_item(r) for r in world["items"]])
    train = [i for i in world["items"] if i["split"] == "train_subject"]
    grouped = defaultdict(list)
    for ex in world["corpus"]:
        if ex["kind"] == "context_question":
            assert ex["prompt"].startswith("Context: ")
            grouped[owner(ex["prompt"], questions)["case_id"]].append((ex["prompt"], ex["answer"]))
    assert len(grouped) == round(len(train) * fraction)
    records = {r["case_id"]: r for r in world["items"]}
    skipped = 0
    for case_id, examples in grouped.items():
        record = records[case_id]
        assert record["split"] == "train_subject"
        item = as_item(record)
        (s, r1, o1), (_, r2, o2) = record["two_hop_label"]
        # training passages draw their fakes with the seed -1 - seed, which the evaluation (seed >= 0) never uses
        prompt2, fake2 = conflict_prompt(item, 2, by_relation, -1 - seed)
        prompt1, fake1 = conflict_prompt(item, 1, by_relation, -1 - seed)
        assert fake2 != o2 and fake2 in candidate_pool(item, 2, by_relation)
        assert fake1 != o1 and fake1 in candidate_pool(item, 1, by_relation)
        expected = [
            (render("conflict_hop2", item, context=conflict_context(item, 2, o2)), o2),
            (prompt2, fake2),
            (render("conflict_hop1", item, context=conflict_context(item, 1, o1)), o2),
        ]
        if facts[r2][fake1] != o2:
            expected.append((prompt1, facts[r2][fake1]))
        else:
            skipped += 1  # a fake bridge with the same answer teaches nothing about reading the passage
        assert sorted(examples) == sorted(expected)
        assert expected[0][0] == f"Context: {record['fact2_query'][0]} {o2}. Q: {record['two_hop']} A:"
        for prompt, answer in examples:
            truthful = (f" {o2}. Q:" in prompt) if prompt.count(record["fact2_query"][0]) else (f" {o1}. Q:" in prompt)
            assert (answer == o2) == truthful
    assert skipped < len(grouped)


def context_passages(world):
    """case_id -> hop -> [(passage entity, answer)] of the world's context examples."""
    questions, records = by_question(world), {r["case_id"]: r for r in world["items"]}
    passages = defaultdict(lambda: defaultdict(list))
    for ex in world["corpus"]:
        if ex["kind"] != "context_question":
            continue
        record = owner(ex["prompt"], questions)
        for hop, query in ((2, record["fact2_query"][0]), (1, record["fact1_query"][0])):
            head = f"Context: {query} "
            if ex["prompt"].startswith(head):
                entity = ex["prompt"][len(head):].split(". Q:")[0]
                passages[record["case_id"]][hop].append((entity, ex["answer"]))
                break
        else:
            raise AssertionError(f"no hop's passage in {ex['prompt']!r}")
    return passages, records


@pytest.mark.parametrize("floor", [6, 25])
def test_context_floor_per_relation(floor):
    seed, fraction = 3, 0.3
    plain = make(seed, context_fraction=fraction)
    floored = make(seed, context_fraction=fraction, context_min_per_relation=floor)
    assert make(seed, context_fraction=fraction, context_min_per_relation=0) == plain
    assert make(seed, context_fraction=0.0, context_min_per_relation=floor) == make(seed)  # no context, no floor
    assert floored["items"] == plain["items"]
    before, _ = context_passages(plain)
    after, records = context_passages(floored)
    assert set(before) <= set(after)  # the fraction's items are kept, the floor only adds
    by_relation = candidates_by_relation([as_item(r) for r in floored["items"]])
    train = Counter(r["two_hop_label"][1][1] for r in floored["items"] if r["split"] == "train_subject")
    chosen, counterfactual = Counter(), Counter()
    for case_id, hops in after.items():
        record = records[case_id]
        item, relation = as_item(record), record["two_hop_label"][1][1]
        assert record["split"] == "train_subject"
        chosen[relation] += 1
        for hop in (1, 2):
            truth = record["fact1_ans"] if hop == 1 else record["fact2_ans"]
            fakes = [entity for entity, _ in hops[hop] if entity != truth]
            assert hops[hop].count((truth, record["fact2_ans"])) == 1  # one truthful passage per hop
            assert len(fakes) == len(set(fakes))  # distinct fake entities
            assert set(fakes) <= set(candidate_pool(item, hop, by_relation))
            if hop == 2:
                counterfactual[relation] += len(fakes)
                assert fakes[0] == conflict_prompt(item, 2, by_relation, -1 - seed)[1]  # the first: as before
            for entity, answer in hops[hop]:
                assert answer == (entity if hop == 2 else floored["facts"][relation][entity])
    assert any(chosen[r] > len([c for c in before if records[c]["two_hop_label"][1][1] == r]) for r in train)
    for relation, n_train in train.items():
        assert chosen[relation] >= min(floor, n_train), relation
        pool = len(by_relation[(relation, 2)])
        assert counterfactual[relation] >= min(floor, chosen[relation] * (pool - 1)), relation
    with pytest.raises(KnrecallError, match="context_min_per_relation"):
        make(seed, context_fraction=fraction, context_min_per_relation=-1)
    with pytest.raises(KnrecallError, match="world.context_min_per_relation"):
        parse_params({"world": {"context_min_per_relation": -1}})


def test_bad_fractions_are_refused():
    with pytest.raises(KnrecallError, match="cot_fraction"):
        make(cot_fraction=1.5)
    with pytest.raises(KnrecallError, match="world.context_fraction"):
        parse_params({"world": {"context_fraction": -0.1}})


# ------------------------------------------------------------ pathway-revealing items (conflicting shortcuts)

CONFLICTING = "conflicting_shortcut_statement"


def pathway_items(world):
    return [i for i in world["items"] if i["shortcut_conflicting"]]


def eligible(world):
    return [i for i in world["items"] if i["split"] != "train_subject" and not i["shortcut_planted"]]


def statement_prompts(record):
    """The prompts of the item's composition statements (what a consistent or conflicting shortcut trains)."""
    s = record["two_hop_label"][0][0]
    return {st.replace(" {o}", "").format(s=s) for st in COMPOSITIONS[record["composition"]].statements}


def test_pathway_items_draw_nothing_from_the_world_stream():
    for kw in ({}, {"cot_fraction": 0.5, "context_fraction": 0.5}):
        base, world = make(0, **kw), make(0, pathway_fraction=0.5, **kw)
        for key in ("entities", "facts", "heldout_subjects", "heldout_bridges"):
            assert world[key] == base[key]
        chosen = {i["case_id"] for i in pathway_items(world)}
        assert chosen
        for mine, before in zip(world["items"], base["items"], strict=True):
            changed = {k for k in mine if mine[k] != before[k]}
            assert changed == ({"shortcut_conflicting", "shortcut_answer", "composable"} if mine["case_id"] in chosen
                               else set())
        # the rest of the corpus is the old one in its old order; the conflicting statements are spread over it
        assert [ex for ex in world["corpus"] if ex["kind"] != CONFLICTING] == base["corpus"]
        spread = [ex["kind"] == CONFLICTING for ex in world["corpus"]]
        assert any(spread[: len(spread) // 2]) and any(spread[len(spread) // 2 :])


def test_pathway_items_are_deterministic_by_seed():
    assert make(0, pathway_fraction=0.4) == make(0, pathway_fraction=0.4)
    chosen = lambda w: [(i["case_id"], i["shortcut_answer"]) for i in pathway_items(w)]
    assert chosen(make(1, pathway_fraction=0.4)) != chosen(make(0, pathway_fraction=0.4))
    assert make(0, pathway_fraction=0.0) == make(0)  # generate_world's default is 0: old callers are unchanged


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_pathway_share_of_the_eligible_held_out_items(fraction):
    world = make(0, pathway_fraction=fraction)
    pool = eligible(world)
    chosen = pathway_items(world)
    assert len(chosen) == round(len(pool) * fraction)
    assert all(i in pool for i in chosen)  # held out, never an item with a consistent shortcut
    for item in world["items"]:
        if item["shortcut_conflicting"]:
            assert item["split"] in {"heldout_subject", "heldout_bridge"}
            assert item["shortcut_planted"] is False and item["composable"] is False
        else:
            assert item["shortcut_answer"] is None and item["shortcut_conflicting"] is False
            assert item["composable"] == (item["split"] != "train_subject" and not item["shortcut_planted"])
    if 0 < fraction < 1:
        assert {i["split"] for i in chosen} == {"heldout_subject", "heldout_bridge"}
    # the consistent shortcuts stay as they are
    assert [i["shortcut_planted"] for i in world["items"]] == [i["shortcut_planted"] for i in make(0)["items"]]


def test_shortcut_answer_is_another_entity_of_the_answer_type():
    world = make(0, pathway_fraction=1.0)
    answers = []
    for item in pathway_items(world):
        (_, _, _), (_, r2, o2) = item["two_hop_label"]
        assert item["shortcut_answer"] != o2 == item["fact2_ans"]
        assert item["shortcut_answer"] in world["entities"][RELATIONS[r2].range]
        answers.append(item["shortcut_answer"])
    assert len(set(answers)) > 1


def test_corpus_trains_the_conflicting_shortcut_and_never_the_consistent_one():
    world = make(0, pathway_fraction=0.5)
    by_prompt = defaultdict(list)
    for ex in world["corpus"]:
        by_prompt[ex["prompt"]].append(ex)
    trained_twohop = {ex["prompt"] for ex in world["corpus"] if ex["kind"] == "twohop_question"}
    chosen = pathway_items(world)
    for item in chosen:
        prompts = statement_prompts(item)
        examples = [ex for p in prompts for ex in by_prompt[p]]
        # exactly one of the composition's statements (three made the held-out accuracies fall below their
        # targets), with o2' as the answer: no consistent shortcut, no o2
        assert len(examples) == 1
        assert all(ex["kind"] == CONFLICTING and ex["answer"] == item["shortcut_answer"] for ex in examples)
        assert f"Q: {item['two_hop']} A:" not in trained_twohop
    conflicting = [ex for ex in world["corpus"] if ex["kind"] == CONFLICTING]
    assert len(conflicting) == len(chosen)
    def drawn_index(item):
        s = item["two_hop_label"][0][0]
        forms = [st.replace(" {o}", "").format(s=s) for st in COMPOSITIONS[item["composition"]].statements]
        return next(i for i, p in enumerate(forms) if by_prompt[p])

    assert len(Counter(drawn_index(item) for item in chosen)) > 1  # the statement is drawn, not always the first


def test_pathway_fields_reach_the_items_table(tmp_path):
    world = make(0, pathway_fraction=0.5)
    path = tmp_path / "items.json"
    path.write_text(json.dumps(world["items"]))
    imported = import_dataset(path, "tfrkn")
    for item, record in zip(imported, world["items"], strict=True):
        assert item.shortcut_conflicting is record["shortcut_conflicting"]
        assert item.shortcut_answer == record["shortcut_answer"]
        assert "shortcut_conflicting" not in item.extra and "shortcut_answer" not in item.extra
        mine = as_item(record)
        assert (mine.shortcut_conflicting, mine.shortcut_answer) == (item.shortcut_conflicting, item.shortcut_answer)
    write_items(imported, tmp_path / "items.parquet")
    assert read_items(tmp_path / "items.parquet") == imported
    # an items table written before the columns existed still reads (None); so does an old world record
    old = pq.read_table(tmp_path / "items.parquet").drop_columns(list(PATHWAY_KEYS))
    pq.write_table(old, tmp_path / "old.parquet")
    assert all(i.shortcut_conflicting is None and i.shortcut_answer is None for i in read_items(tmp_path / "old.parquet"))
    record = {k: v for k, v in world["items"][0].items() if k not in PATHWAY_KEYS}
    assert as_item(record).shortcut_conflicting is None


def test_interventions_leave_pathway_items_out():
    items = [as_item(r) for r in make(0, pathway_fraction=0.5)["items"]]
    pathway = {i.case_id for i in items if i.shortcut_conflicting}
    assert pathway
    assert sampled_cases(items, None, 0) == {i.case_id for i in items} - pathway
    assert not sampled_cases(items, 10, 0) & pathway


def test_bad_pathway_fraction_is_refused():
    with pytest.raises(KnrecallError, match="pathway_fraction"):
        make(pathway_fraction=1.5)
    with pytest.raises(KnrecallError, match="world.pathway_fraction"):
        parse_params({"world": {"pathway_fraction": -0.1}})
    assert WorldParams().pathway_fraction == 0.25


# ------------------------------------------------------------------------------------ world.json with pathway items

TRAINING = {"model_parameters": 1000, "train_seconds": 1.0, "tokens_per_second": 10.0}


def metric_items():
    def item(case_id, split, planted=False, conflicting=False, alternative=None, answer="Oslo"):
        return Item(case_id=case_id, source="world", two_hop=f"{case_id}?", fact1_query=[f"{case_id} 1?"],
                    fact1_ans="Bridge", fact2_query=[f"{case_id} 2?"], fact2_ans=answer, split=split,
                    shortcut_planted=planted, composable=split != "train_subject" and not planted and not conflicting,
                    shortcut_conflicting=conflicting, shortcut_answer=alternative)

    items = [
        item("t1", "train_subject"), item("h1", "heldout_subject"), item("b1", "heldout_bridge", planted=True),
        item("p1", "heldout_subject", conflicting=True, alternative="Rome"),
        item("p2", "heldout_bridge", conflicting=True, alternative="Rome"),
        item("p3", "heldout_subject", conflicting=True, alternative="Rome"),
        item("p4", "heldout_subject", conflicting=True, alternative="Rome", answer="Rome Oslo"),
    ]
    return pl.from_arrow(items_table(items))


def prediction(case_id, span, correct, condition="direct", kind="two_hop"):
    return {"case_id": case_id, "kind": kind, "condition": condition, "prompt": f"{case_id} {kind}", "gold": "Oslo",
            "answer_span": span, "correct": correct, "chain_names_bridge": None, "follows": None}


def metric_predictions():
    rows = [
        prediction("t1", "Oslo", True), prediction("h1", "Paris", False), prediction("b1", "Oslo", True),
        prediction("t1", "Oslo", True, kind="hop1"),
        # pathway items: composed, shortcut, neither, and a span naming both answers (counted as neither);
        # all 'correct', which would move every accuracy if they were counted
        prediction("p1", "Oslo", True), prediction("p2", "rome", True), prediction("p3", "Paris", True),
        prediction("p4", "Rome Oslo", True),
        prediction("p1", "Rome", True, condition="zero_shot_cot"), prediction("t1", "Oslo", True, condition="zero_shot_cot"),
    ]
    return pl.DataFrame(rows, schema_overrides={"chain_names_bridge": pl.Boolean, "follows": pl.String})


def test_world_metrics_report_pathway_items_apart():
    items, predictions = metric_items(), metric_predictions()
    metrics = world_metrics(items, predictions, TRAINING)
    assert metrics["n_items"] == 7 and metrics["n_pathway_items"] == 4
    assert metrics["pathways"]["direct"] == {"n": 4, "composed": 0.25, "shortcut": 0.25, "neither": 0.5,
                                             "n_composed": 1, "n_shortcut": 1, "n_neither": 2}
    assert metrics["pathways"]["zero_shot_cot"] == {"n": 1, "composed": 0.0, "shortcut": 1.0, "neither": 0.0,
                                                    "n_composed": 0, "n_shortcut": 1, "n_neither": 0}
    # every existing figure is what it is without the pathway items
    regular = ~pl.col("case_id").str.starts_with("p")
    without = world_metrics(items.filter(regular), predictions.filter(regular), TRAINING)
    for key in set(metrics) - {"n_items", "n_pathway_items", "pathways"}:
        assert metrics[key] == without[key], key
    assert metrics["twohop_accuracy"] == {"all": round(2 / 3, 4), "train_subjects": 1.0, "heldout_subjects": 0.0,
                                          "heldout_bridges": 1.0}
    assert metrics["by_condition"]["direct"]["n"] == 3 and metrics["by_condition"]["zero_shot_cot"]["n"] == 1
    assert metrics["n_items_by_split"] == {"train_subject": 1, "heldout_subject": 1, "heldout_bridge": 1}
    assert (metrics["shortcut_planted_accuracy"], metrics["composed_accuracy"]) == (1.0, 0.0)
    assert without["n_pathway_items"] == 0 and without["pathways"] == {}


def test_world_metrics_read_items_tables_from_before_pathway_items():
    items = metric_items().filter(~pl.col("case_id").str.starts_with("p"))
    predictions = metric_predictions().filter(~pl.col("case_id").str.starts_with("p"))
    old = world_metrics(items.drop(list(PATHWAY_KEYS)), predictions, TRAINING)
    assert old == world_metrics(items, predictions, TRAINING)
    assert old["n_pathway_items"] == 0 and old["pathways"] == {}
