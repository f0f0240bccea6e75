"""Planning the prompts to answer: every item's two-hop question under one condition, and its single-hop paraphrases.

Prompts come from `knrecall.data.conditions` (direct, zero- and few-shot chain of thought, conflicting context).
Single-hop paraphrases are always asked under `direct`. An item without a conflict candidate or without enough
few-shot exemplars is left out of that condition only (`knrecall.skips`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from knrecall.data.conditions import (
    candidates_by_relation,
    choose_exemplars,
    conflict_choice,
    conflict_context,
    no_candidate_reason,
    render,
    single_hop_prompt,
)
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.skips import Skip, record

COT_CONDITIONS = ("zero_shot_cot", "few_shot_cot")
CONFLICT_HOPS = {"conflict_hop1": 1, "conflict_hop2": 2}

@dataclass(frozen=True)
class Query:
    prompt: str
    gold: str
    aliases: tuple[str, ...]
    cot: bool = False


@dataclass(frozen=True)
class PlannedPrompt:
    item: Item
    kind: str
    paraphrase: int
    query: Query
    context_answer: str | None = None
    context_source: str | None = None


def hop2_of_bridge(items: list[Item]) -> dict[tuple[str, str | None], str]:
    """(bridge entity, relation 2) -> o2, from every item: what a fake bridge implies for the answer."""
    return {(item.fact1_ans, item.relation2): item.fact2_ans for item in items}


def plan_prompts(items: list[Item], templates: dict[str, str], condition: str, seed: int, few_shot_k: int,
                 single_hop: bool = True, *, wrap: Callable[[str], str] | None = None,
                 skipped: list[Skip] | None = None, phase: str = "answer",
                 cases: set[str] | None = None, quiet: bool = False) -> list[PlannedPrompt]:
    """The two-hop question of every item under `condition`, and (if `single_hop`) its single-hop paraphrases.

    `wrap` (a model's chat prompt, `knrecall.models.chat`) is applied to every prompt. An item without a conflict
    candidate or without enough few-shot exemplars has no two-hop prompt under that condition: it is recorded in
    `skipped` (one log line) and the plan goes on. With `cases`, only those items are planned (every item still
    serves as an exemplar and a conflict candidate). `quiet`: record skips without logging them (the caller does).
    """
    wrap = wrap or (lambda prompt: prompt)
    plan: list[PlannedPrompt] = []
    candidates = candidates_by_relation(items) if condition in CONFLICT_HOPS else {}
    pool = sorted(items, key=lambda x: (x.case_id, x.two_hop))  # choose_exemplars' own order: its sort is then O(n)
    implied = hop2_of_bridge(items) if condition == "conflict_hop1" else {}
    for item in items:
        if cases is not None and item.case_id not in cases:
            continue
        for kind, questions, gold, aliases in () if not single_hop else (
            ("hop1", item.fact1_query, item.fact1_ans, item.fact1_aliases),
            ("hop2", item.fact2_query, item.fact2_ans, item.answer_aliases),
        ):
            for index, question in enumerate(questions):
                prompt = wrap(single_hop_prompt(question, templates))
                plan.append(PlannedPrompt(item, kind, index, Query(prompt, gold, tuple(aliases))))
        context_answer = source = None
        if condition == "few_shot_cot":
            try:
                exemplars = choose_exemplars(item, pool, few_shot_k, seed)
            except KnrecallError as exc:
                record(skipped, Skip(phase, "no_exemplars", str(exc), item.case_id, condition=condition), quiet)
                continue
            prompt = render(condition, item, templates, exemplars=exemplars)
        elif condition in CONFLICT_HOPS:
            hop = CONFLICT_HOPS[condition]
            choice = conflict_choice(item, hop, candidates, seed)
            if choice is None:
                record(skipped, Skip(phase, "no_conflict_candidate", no_candidate_reason(item, hop), item.case_id,
                                     condition=condition), quiet)
                continue
            fake, context_answer, source = choice
            prompt = render(condition, item, templates, context=conflict_context(item, hop, fake))
            if context_answer is None:
                context_answer = implied.get((fake, item.relation2))
        else:
            prompt = render(condition, item, templates)
        query = Query(wrap(prompt), item.fact2_ans, tuple(item.answer_aliases), cot=condition in COT_CONDITIONS)
        plan.append(PlannedPrompt(item, "two_hop", 0, query, context_answer, source))
    return plan
