"""The MQuAKE record format: two-hop records become items; the counterfactual edit is kept in
`extra["counterfactual"]` (DESIGN.md §3)."""

from __future__ import annotations

from typing import Any

from knrecall.data.fields import Fields
from knrecall.data.items import Item
from knrecall.data.tfrkn import fill_chain

# MQuAKE fields that describe the counterfactual edit; kept together as extra["counterfactual"].
COUNTERFACTUAL_KEYS = ("requested_rewrite", "new_answer", "new_answer_alias", "new_single_hops")


def mquake_item(f: Fields) -> Item | str:
    """An MQuAKE-style record; only two-hop records become items (others return the skip reason)."""
    case_id = f.case_id()
    hops = f.objects("single_hops")
    if len(hops) != 2:
        return f"{len(hops)} hop{'s' if len(hops) != 1 else ''}"

    questions = f.texts("questions")
    answer = f.text("answer")
    answer_aliases = f.texts("answer_alias", allow_empty=True)
    hop1, hop2 = (single_hop(hop) for hop in hops)
    if hop2["answer"] != answer:
        raise f.error("answer", f"{answer!r} differs from single_hops[1].answer {hop2['answer']!r}")
    orig = f.object("orig")
    item = Item(
        case_id=case_id,
        source="mquake",
        two_hop=questions[0],
        fact1_query=[hop1["question"]],
        fact1_ans=hop1["answer"],
        fact2_query=[hop2["question"]],
        fact2_ans=hop2["answer"],
        fact1_aliases=hop1["aliases"],
        answer_aliases=union(answer_aliases, hop2["aliases"]),
    )
    fill_chain(item, ids=orig.triplets("triples", ids=True, required=True),
                labels=orig.triplets("triples_labeled", required=True))
    item.extra = mquake_extra(f, orig, questions, hop1, hop2)
    return item


def single_hop(hop: Fields) -> dict[str, Any]:
    return {
        "question": hop.text("question"),
        "cloze": hop.text("cloze", required=False),
        "answer": hop.text("answer"),
        "aliases": hop.texts("answer_alias", required=False, allow_empty=True) or [],
        "rest": hop.rest(),
    }


def mquake_extra(f: Fields, orig: Fields, questions: list[str], hop1: dict[str, Any],
                  hop2: dict[str, Any]) -> dict[str, Any]:
    """Unknown fields, the question paraphrases, the cloze prompts and the counterfactual rewrite."""
    counterfactual = {key: f.raw(key) for key in COUNTERFACTUAL_KEYS if f.has(key)}
    extra = f.rest()
    extra["question_paraphrases"] = questions[1:]
    for n, hop in ((1, hop1), (2, hop2)):
        if hop["cloze"] is not None:
            extra[f"fact{n}_cloze"] = hop["cloze"]
        if hop["rest"]:
            extra[f"fact{n}_hop"] = hop["rest"]
    if orig.rest():
        extra["orig"] = orig.rest()
    if counterfactual:
        extra["counterfactual"] = counterfactual
    return extra


def union(first: list[str], second: list[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))
