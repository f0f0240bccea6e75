"""Prompt conditions: exact templates, exemplar choice, conflict entities and contexts (pure Python, no model)."""

from __future__ import annotations

import pytest

from knrecall.data.conditions import (
    CONDITIONS,
    DEFAULT_TEMPLATES,
    candidate_pool,
    candidates_by_relation,
    choose_exemplars,
    conflict_context,
    conflict_entity,
    conflict_prompt,
    render,
)
from knrecall.data.items import Item
from knrecall.errors import KnrecallError

SEEDS = range(60)


def make(case_id, subject, o1, o2, r1="located_in", r2="capital", **kw) -> Item:
    q1 = {"located_in": "In which country is {s} located?", "born_in": "Where was {s} born?"}[r1]
    q2 = {"capital": "What is the capital of {s}?", "language": "What language is spoken in {s}?"}[r2]
    return Item(
        case_id=case_id,
        source="tfrkn",
        two_hop=kw.pop("two_hop", f"What is the {r2} of the place linked to {subject}?"),
        fact1_query=[q1.format(s=subject), f"Paraphrase 1 about {subject}?"],
        fact1_ans=o1,
        fact2_query=[q2.format(s=o1), f"Paraphrase 2 about {o1}?"],
        fact2_ans=o2,
        subject=subject,
        relation1=r1,
        relation2=r2,
        **kw,
    )


EIFFEL = Item(
    case_id="c0",
    source="tfrkn",
    two_hop="What is the capital of the country where the Eiffel Tower is located?",
    fact1_query=["In which country is the Eiffel Tower located?", "Which country is the Eiffel Tower in?"],
    fact1_ans="France",
    fact2_query=["What is the capital of France?", "Which city is the capital of France?"],
    fact2_ans="Paris",
    fact1_aliases=["French Republic"],
    answer_aliases=["City of Light"],
    subject="Eiffel Tower",
    relation1="located_in",
    relation2="capital",
)
COLOSSEUM = Item(
    case_id="c1",
    source="tfrkn",
    two_hop="What is the capital of the country where the Colosseum is located?",
    fact1_query=["In which country is the Colosseum located?"],
    fact1_ans="Italy",
    fact2_query=["What is the capital of Italy?"],
    fact2_ans="Rome",
    subject="Colosseum",
    relation1="located_in",
    relation2="capital",
)


def pool_around(item: Item) -> list[Item]:
    """A pool with the item itself, a copy of its question, a same-subject item and a mix of relations."""
    pool = [item]
    pool.append(make("dup_q", "Somewhere", "Spain", "Madrid", two_hop=item.two_hop))
    pool.append(make("same_subj", item.subject, "Germany", "German", r2="language"))
    countries = [("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chile", "Santiago")]
    for i, (o1, o2) in enumerate(countries):
        pool.append(make(f"same{i}", f"Landmark{i}", o1, o2))
    for i, (o1, o2) in enumerate(countries):
        pool.append(make(f"other{i}", f"Person{i}", f"City{i}", f"Lang{i}", r1="born_in", r2="language"))
    return pool


# --- templates -----------------------------------------------------------------------------------------------------


def test_default_templates_cover_conditions_and_direct_is_the_training_format():
    assert tuple(DEFAULT_TEMPLATES) == CONDITIONS
    assert DEFAULT_TEMPLATES["direct"] == "Q: {question} A:"


def test_render_direct_and_zero_shot_exact():
    q = "What is the capital of the country where the Eiffel Tower is located?"
    assert render("direct", EIFFEL) == f"Q: {q} A:"
    assert render("zero_shot_cot", EIFFEL) == f"Q: {q} A: Let's think step by step."


def test_render_few_shot_exact_and_chain_names_the_bridge():
    prompt = render("few_shot_cot", EIFFEL, exemplars=[COLOSSEUM])
    assert prompt == (
        "Q: What is the capital of the country where the Colosseum is located? "
        "A: Italy. What is the capital of Italy? Rome. "
        "So the answer is Rome.\n"
        "Q: What is the capital of the country where the Eiffel Tower is located? A:"
    )
    two = render("few_shot_cot", EIFFEL, exemplars=[COLOSSEUM, make("x", "Big Ben", "UK", "London")])
    assert two.count("So the answer is") == 2 and two.endswith("Eiffel Tower is located? A:")


def test_render_conflict_exact():
    ctx = conflict_context(EIFFEL, 1, "Italy")
    assert ctx == "In which country is the Eiffel Tower located? Italy."
    assert render("conflict_hop1", EIFFEL, context=ctx) == (
        "Context: In which country is the Eiffel Tower located? Italy. "
        "Q: What is the capital of the country where the Eiffel Tower is located? A:"
    )
    ctx2 = conflict_context(EIFFEL, 2, "Rome")
    assert ctx2 == "What is the capital of France? Rome."
    assert render("conflict_hop2", EIFFEL, context=ctx2).startswith("Context: What is the capital of France? Rome. Q: ")


def test_custom_templates_are_used():
    assert render("direct", COLOSSEUM, {"direct": "Question: {question}\nAnswer:"}) == (
        "Question: What is the capital of the country where the Colosseum is located?\nAnswer:"
    )


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: render("cot", EIFFEL),
        lambda: render("few_shot_cot", EIFFEL),
        lambda: render("few_shot_cot", EIFFEL, exemplars=[COLOSSEUM, EIFFEL]),
        lambda: render("few_shot_cot", EIFFEL, exemplars=[make("other", "X", "Y", "Z", two_hop=EIFFEL.two_hop)]),
        lambda: render("conflict_hop1", EIFFEL),
        lambda: render("conflict_hop2", EIFFEL, context=" "),
        lambda: render("direct", EIFFEL, {"direct": "Q: {question} {context} A:"}),
        lambda: render("direct", EIFFEL, {"zero_shot_cot": "x"}),
        lambda: conflict_entity(EIFFEL, 1, ["France", "FRANCE", "french republic"], 0),
        lambda: conflict_entity(EIFFEL, 2, [], 0),
        lambda: conflict_entity(EIFFEL, 3, ["Italy"], 0),
        lambda: conflict_prompt(EIFFEL, 1, candidates_by_relation([EIFFEL]), 0),
        lambda: choose_exemplars(EIFFEL, [EIFFEL, COLOSSEUM], 2, 0),
    ],
)
def test_errors_are_knrecall_errors_naming_the_case(call):
    with pytest.raises(KnrecallError, match="'c0'"):
        call()


def test_no_conflict_candidate_says_what_to_do():
    with pytest.raises(KnrecallError, match="drop conflict_hop1 from answer.conditions"):
        conflict_prompt(EIFFEL, 1, candidates_by_relation([EIFFEL]), 0)


# --- few-shot exemplars ---------------------------------------------------------------------------------------------


def test_exemplars_never_include_the_item_or_its_question_or_subject():
    pool = pool_around(EIFFEL)
    for k in (1, 3, 5, 8):
        for seed in SEEDS:
            chosen = choose_exemplars(EIFFEL, pool, k, seed)
            assert len(chosen) == k and len({ex.case_id for ex in chosen}) == k
            for ex in chosen:
                assert ex.case_id not in ("c0", "dup_q", "same_subj")
                assert ex.two_hop != EIFFEL.two_hop and ex.subject != EIFFEL.subject
            prompt = render("few_shot_cot", EIFFEL, exemplars=chosen)
            assert prompt.count(EIFFEL.two_hop) == 1  # only the final question


def test_exemplars_never_state_the_items_own_fact():
    # same bridge and hop-2 relation: its chain would say "What is the capital of France? Paris."
    leak = make("leak", "Louvre", "France", "Paris")
    pool = [leak, COLOSSEUM, make("s1", "Big Ben", "UK", "London")]
    for seed in SEEDS:
        assert "leak" not in {ex.case_id for ex in choose_exemplars(EIFFEL, pool, 2, seed)}


def test_exemplars_deterministic_and_vary_with_seed_and_item():
    pool = pool_around(EIFFEL)
    first = [ex.case_id for ex in choose_exemplars(EIFFEL, pool, 3, 7)]
    assert first == [ex.case_id for ex in choose_exemplars(EIFFEL, list(reversed(pool)), 3, 7)]  # pool order irrelevant
    by_seed = {tuple(ex.case_id for ex in choose_exemplars(EIFFEL, pool, 3, s)) for s in SEEDS}
    assert len(by_seed) > 5
    other = Item(**{**EIFFEL.__dict__, "case_id": "c0b", "two_hop": "Another question?", "subject": "Arc"})
    pool_b = [ex for ex in pool if ex.case_id != "c0"]
    def ids(item, s):
        return [e.case_id for e in choose_exemplars(item, pool_b, 3, s)]

    assert any(ids(EIFFEL, s) != ids(other, s) for s in SEEDS)


def test_exemplars_prefer_same_relations():
    pool = pool_around(EIFFEL)  # five usable same-relation items (same0..same4)
    for seed in SEEDS:
        chosen = choose_exemplars(EIFFEL, pool, 3, seed)
        assert all((ex.relation1, ex.relation2) == ("located_in", "capital") for ex in chosen)
    # more than there are same-relation ones: all of them, then others
    for seed in SEEDS[:10]:
        ids = {ex.case_id for ex in choose_exemplars(EIFFEL, pool, 7, seed)}
        assert {f"same{i}" for i in range(5)} <= ids
        assert len(ids & {f"other{i}" for i in range(5)}) == 2


def test_exemplars_without_relation_labels_use_any():
    bare = Item(**{**EIFFEL.__dict__, "relation1": None, "relation2": None})
    chosen = choose_exemplars(bare, pool_around(EIFFEL), 10, 0)
    assert len(chosen) == 10


# --- conflict --------------------------------------------------------------------------------------------------------


def dataset() -> list[Item]:
    return [
        EIFFEL,
        COLOSSEUM,
        make("c2", "Big Ben", "UK", "London"),
        make("c3", "Sagrada Familia", "Spain", "Madrid"),
        make("c4", "Notre Dame", "France", "Paris"),
        make("c5", "Alice", "Lyon", "French", r1="born_in", r2="language"),
        make("c6", "Bob", "Osaka", "Japanese", r1="born_in", r2="language"),
    ]


def test_candidates_by_relation_pools():
    pools = candidates_by_relation(dataset())
    assert pools[("located_in", 1)] == ["France", "Italy", "Spain", "UK"]
    assert pools[("capital", 2)] == ["London", "Madrid", "Paris", "Rome"]
    assert pools[("born_in", 1)] == ["Lyon", "Osaka"]
    assert pools[("language", 2)] == ["French", "Japanese"]
    assert pools[(None, 1)] == ["France", "Italy", "Lyon", "Osaka", "Spain", "UK"]
    bare = Item(**{**EIFFEL.__dict__, "case_id": "bare", "relation1": None, "relation2": None})
    assert candidate_pool(bare, 2, pools) == pools[(None, 2)]
    assert candidate_pool(EIFFEL, 2, pools) == pools[("capital", 2)]


def test_conflict_entity_same_type_never_truth_or_alias():
    pools = candidates_by_relation(dataset())
    aliased = Item(**{**EIFFEL.__dict__, "fact1_aliases": ["italy", "French Republic"], "answer_aliases": ["LONDON"]})
    for seed in SEEDS:
        f1 = conflict_entity(aliased, 1, candidate_pool(aliased, 1, pools) + ["french republic"], seed)
        f2 = conflict_entity(aliased, 2, candidate_pool(aliased, 2, pools), seed)
        assert f1 in ("Spain", "UK")
        assert f2 in ("Madrid", "Rome")


def test_conflict_entity_deterministic_varies_by_seed_and_hop():
    pools = candidates_by_relation(dataset())
    pool = pools[("located_in", 1)] + ["Chile", "Peru", "Japan"]
    assert conflict_entity(EIFFEL, 1, pool, 3) == conflict_entity(EIFFEL, 1, list(reversed(pool)), 3)
    assert len({conflict_entity(EIFFEL, 1, pool, s) for s in SEEDS}) == 6
    answers = ["A", "B", "C", "D", "E"]
    fakes = [(conflict_entity(EIFFEL, 1, pool, s), conflict_entity(EIFFEL, 2, answers, s)) for s in SEEDS]
    assert len(set(fakes)) > 10


def test_conflict_prompt_replaces_the_right_hop():
    pools = candidates_by_relation(dataset())
    for seed in SEEDS[:20]:
        p1, fake1 = conflict_prompt(EIFFEL, 1, pools, seed)
        assert fake1 in ("Italy", "Spain", "UK")
        assert p1 == f"Context: In which country is the Eiffel Tower located? {fake1}. Q: {EIFFEL.two_hop} A:"
        assert "France" not in p1.split(" Q: ")[0]
        p2, fake2 = conflict_prompt(EIFFEL, 2, pools, seed)
        assert fake2 in ("London", "Madrid", "Rome")
        # hop 2 keeps the true bridge and replaces the answer
        assert p2 == f"Context: What is the capital of France? {fake2}. Q: {EIFFEL.two_hop} A:"
    p, fake = conflict_prompt(EIFFEL, 2, ["Paris", "Nice"], 0)
    assert fake == "Nice" and "Nice." in p


def test_conflict_context_no_double_full_stop():
    assert conflict_context(EIFFEL, 2, "Washington, D.C.") == "What is the capital of France? Washington, D.C."
