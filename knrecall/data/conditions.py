"""Prompt conditions of the recall study: pure, deterministic prompt builders (no model involved).

Templates: `knrecall.prompts` (`CONDITIONS`, `DEFAULT_TEMPLATES`, `EXEMPLAR_TEMPLATE`, `single_hop_prompt`, re-exported
here); `{question}` is the item's two-hop question.

Few-shot exemplars. `{exemplars}` is the concatenation of one block per exemplar, `EXEMPLAR_TEMPLATE`:
"Q: {question} A: {chain} So the answer is {answer}.\\n", where the chain is built generically from the
exemplar's own single-hop facts (real items only have labels, not relation phrasings): the bridge, then its first
hop-2 question followed by the answer, e.g. "France. What is the capital of France? Paris." — so the reasoning
always names the bridge entity first and then asks the second hop about it. (The bridge comes first, without
restating the hop-1 question, because that is what the world model learns to generate reliably: the hop-1
question would make it copy the subject's name, which a small model does poorly.) `choose_exemplars` never picks the item itself (same case_id), an item with the same
two-hop question or the same subject, nor one whose chain would state one of the item's own single-hop facts (its
chain question is one of the item's hop questions); it prefers exemplars with the item's (relation1, relation2).
`render` refuses an exemplar that is the item or shares its two-hop question.

Conflict. The counterfactual passage (`{context}`) contradicts one hop with another entity of the same type:
hop 1 replaces o1 (the bridge), hop 2 replaces o2 (the answer). The fake comes first from the record's OWN
counterfactual when it has one (`counterfactual_entities`: MQuAKE's `new_single_hops` / `requested_rewrite` /
`new_answer`, kept by the importer in `extra["counterfactual"]`; source `rewrite`), else from another object of
the same relation in the dataset (`candidates_by_relation`; source `same_relation`). The fake is never the true
entity or one of its aliases (case-insensitive). `conflict_choice` returns None when neither exists: the caller
skips that item for that condition only (`knrecall.skips`). The passage is the hop's first single-hop question
followed by the fake answer — "{fact1_query[0]} {fake}." or "{fact2_query[0]} {fake}." — the same Q/A surface the
world model is trained on.

All choices are deterministic: seeded by strings of (seed, case_id[, hop]) through `random.Random`, which hashes
string seeds with SHA-512 (independent of PYTHONHASHSEED and of the pool's order).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence

from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.prompts import CONDITIONS, DEFAULT_TEMPLATES, EXEMPLAR_TEMPLATE, single_hop_prompt  # noqa: F401


@functools.lru_cache(maxsize=1 << 16)
def _norm(text: str | None) -> str:
    return " ".join((text or "").split()).casefold()


def _sentence(question: str, answer: str) -> str:
    """'Question? Answer.' (no doubled full stop when the answer already ends with one)."""
    answer = answer.strip()
    return f"{question.strip()} {answer}" + ("" if answer.endswith(".") else ".")


def _first(item: Item, hop: int) -> str:
    queries = item.fact1_query if hop == 1 else item.fact2_query
    if not queries:
        raise KnrecallError(f"item '{item.case_id}': no fact{hop}_query to build the prompt from")
    return queries[0]


def _check_hop(item: Item, hop: int) -> None:
    if hop not in (1, 2):
        raise KnrecallError(f"item '{item.case_id}': hop must be 1 or 2, got {hop!r}")


def exemplar_chain(item: Item) -> str:
    """The reasoning chain of an exemplar: 'bridge. hop-2 question answer.'"""
    bridge = item.fact1_ans.strip()
    bridge = bridge if bridge.endswith(".") else f"{bridge}."
    return f"{bridge} {_sentence(_first(item, 2), item.fact2_ans)}"


def render_exemplar(item: Item, template: str = EXEMPLAR_TEMPLATE) -> str:
    """One few-shot block: the exemplar's two-hop question, its chain and its answer."""
    answer = item.fact2_ans.strip().rstrip(".")
    return template.format(question=item.two_hop, chain=exemplar_chain(item), answer=answer)


def render(
    condition: str,
    item: Item,
    templates: Mapping[str, str] = DEFAULT_TEMPLATES,
    *,
    exemplars: Sequence[Item] = (),
    context: str | None = None,
    exemplar_template: str = EXEMPLAR_TEMPLATE,
) -> str:
    """The prompt for the item's two-hop question under `condition`.

    `few_shot_cot` needs `exemplars` (never the item itself nor an item with the same two-hop question);
    `conflict_hop1`/`conflict_hop2` need `context`. Values a template does not use are ignored.
    """
    if condition not in CONDITIONS:
        raise KnrecallError(f"item '{item.case_id}': unknown condition '{condition}' (known: {', '.join(CONDITIONS)})")
    try:
        template = templates[condition]
    except KeyError:
        raise KnrecallError(
            f"item '{item.case_id}': no prompt template for condition '{condition}' "
            f"(given: {', '.join(sorted(templates))})"
        ) from None
    values = {"question": item.two_hop}
    if condition == "few_shot_cot":
        if not exemplars:
            raise KnrecallError(f"item '{item.case_id}': condition 'few_shot_cot' needs exemplars, none given")
        for ex in exemplars:
            if ex.case_id == item.case_id:
                raise KnrecallError(f"item '{item.case_id}': few-shot exemplars include the item itself")
            if _norm(ex.two_hop) == _norm(item.two_hop):
                raise KnrecallError(
                    f"item '{item.case_id}': few-shot exemplar '{ex.case_id}' has the same two-hop question"
                )
        values["exemplars"] = "".join(render_exemplar(ex, exemplar_template) for ex in exemplars)
    if condition.startswith("conflict_"):
        if context is None or not context.strip():
            raise KnrecallError(f"item '{item.case_id}': condition '{condition}' needs a context, none given")
        values["context"] = context
    try:
        return template.format(**values)
    except KeyError as e:
        raise KnrecallError(
            f"item '{item.case_id}': template for condition '{condition}' uses {{{e.args[0]}}}, which has no value"
        ) from None
    except (IndexError, ValueError) as e:
        raise KnrecallError(f"item '{item.case_id}': bad template for condition '{condition}': {e}") from None


def _own_questions(item: Item) -> frozenset[str]:
    return frozenset(_norm(q) for q in [*item.fact1_query, *item.fact2_query])


def _leaks(ex: Item, item: Item, own: frozenset[str] | None = None) -> str | None:
    """Why `ex` may not be an exemplar for `item` (None when it may); `own` is `_own_questions(item)`."""
    if ex.case_id == item.case_id:
        return "the item itself"
    if _norm(ex.two_hop) == _norm(item.two_hop):
        return "same two-hop question"
    if item.subject is not None and ex.subject is not None and _norm(ex.subject) == _norm(item.subject):
        return "same subject"
    own = _own_questions(item) if own is None else own
    if (ex.fact1_query and _norm(ex.fact1_query[0]) in own) or (ex.fact2_query and _norm(ex.fact2_query[0]) in own):
        return "its chain states one of the item's facts"
    return None


def choose_exemplars(item: Item, pool: Sequence[Item], k: int, seed: int) -> list[Item]:
    """k few-shot exemplars for `item` from `pool`, deterministic by (seed, item.case_id).

    Same-(relation1, relation2) exemplars are used first; others fill up when there are fewer than k of them.
    """
    if k < 1:
        raise KnrecallError(f"item '{item.case_id}': the number of exemplars must be at least 1, got {k}")
    seen_ids: set[str] = set()
    seen_questions: set[str] = set()
    candidates: list[Item] = []
    own = _own_questions(item)
    for ex in sorted(pool, key=lambda x: (x.case_id, x.two_hop)):
        if ex.case_id in seen_ids or _norm(ex.two_hop) in seen_questions or _leaks(ex, item, own):
            continue
        if not ex.fact1_query or not ex.fact2_query:
            continue
        seen_ids.add(ex.case_id)
        seen_questions.add(_norm(ex.two_hop))
        candidates.append(ex)
    if len(candidates) < k:
        raise KnrecallError(
            f"item '{item.case_id}': only {len(candidates)} usable few-shot exemplars in the pool, {k} needed"
        )
    rng = random.Random(f"few_shot:{seed}:{item.case_id}")
    if item.relation1 is not None and item.relation2 is not None:
        rels = (item.relation1, item.relation2)
        same = [ex for ex in candidates if (ex.relation1, ex.relation2) == rels]
    else:
        same = []
    if len(same) >= k:
        chosen = rng.sample(same, k)
    else:
        same_ids = {ex.case_id for ex in same}
        others = [ex for ex in candidates if ex.case_id not in same_ids]
        chosen = same + rng.sample(others, k - len(same))
        rng.shuffle(chosen)
    return chosen


def candidates_by_relation(items: Sequence[Item]) -> dict[tuple[str | None, int], list[str]]:
    """Conflict pools: (relation1, 1) -> distinct fact1_ans, (relation2, 2) -> distinct fact2_ans, sorted.

    (None, 1) and (None, 2) hold every fact1_ans / fact2_ans of the dataset: the pool for items without relation labels.
    """
    pools: dict[tuple[str | None, int], set[str]] = {(None, 1): set(), (None, 2): set()}
    for it in items:
        pools[(None, 1)].add(it.fact1_ans)
        pools[(None, 2)].add(it.fact2_ans)
        if it.relation1 is not None:
            pools.setdefault((it.relation1, 1), set()).add(it.fact1_ans)
        if it.relation2 is not None:
            pools.setdefault((it.relation2, 2), set()).add(it.fact2_ans)
    return {key: sorted(values) for key, values in pools.items()}


def candidate_pool(item: Item, hop: int, by_relation: Mapping[tuple[str | None, int], Sequence[str]]) -> list[str]:
    """The item's same-type pool for `hop` from `candidates_by_relation` (the whole dataset's when unlabelled)."""
    _check_hop(item, hop)
    relation = item.relation1 if hop == 1 else item.relation2
    return list(by_relation.get((relation, hop), ()))


def _truth(item: Item, hop: int) -> list[str]:
    return [item.fact1_ans, *item.fact1_aliases] if hop == 1 else [item.fact2_ans, *item.answer_aliases]


def _usable_fakes(item: Item, hop: int, candidates: Sequence[str]) -> list[str]:
    banned = {_norm(t) for t in _truth(item, hop)}
    return sorted({c for c in candidates if isinstance(c, str) and c.strip() and _norm(c) not in banned})


def conflict_entity(item: Item, hop: int, candidates: Sequence[str], seed: int) -> str:
    """A fake o1 (hop 1) or o2 (hop 2) from `candidates`, deterministic by (seed, case_id, hop).

    Never the true entity nor one of its aliases (case-insensitive).
    """
    _check_hop(item, hop)
    truth = _truth(item, hop)
    pool = _usable_fakes(item, hop, candidates)
    if not pool:
        raise KnrecallError(
            f"item '{item.case_id}': no conflict candidate for hop {hop} other than the true entity '{truth[0]}'"
            f" (conflict_hop{hop} needs another answer of the same relation in the dataset: add items of that relation"
            f" or drop conflict_hop{hop} from answer.conditions)"
        )
    return random.Random(f"conflict:{seed}:{item.case_id}:{hop}").choice(pool)


def _entity_name(value) -> str | None:
    """An entity as MQuAKE writes it: a string, or an object with its label under "str"."""
    if isinstance(value, dict):
        value = value.get("str")
    return value.strip() if isinstance(value, str) and value.strip() else None


def counterfactual_entities(item: Item) -> dict[int, tuple[str, str | None]]:
    """The record's own counterfactual, per hop: hop -> (fake entity, the two-hop answer it implies or None).

    Read from `item.extra["counterfactual"]` (MQuAKE's fields, which the importer keeps there; a TFRKN or JSON
    Lines record may carry a `counterfactual` object of the same shape). Hop 1: the new chain's bridge
    (`new_single_hops[0].answer`), else the `target_new` of a `requested_rewrite` whose `target_true` is o1; it
    implies the new chain's answer (`new_single_hops[1].answer`, else `new_answer` when the rewrite is of hop 1).
    Hop 2: the new chain's answer (`new_single_hops[1].answer`), else `new_answer`, else the `target_new` of a
    rewrite whose `target_true` is o2 (an object of relation 2 either way: the passage then says o1 has it). A
    candidate equal to the true entity or one of its aliases is not a counterfactual of that hop (a rewrite of
    the other hop leaves it unchanged). Malformed or missing parts are ignored: no counterfactual for that hop.
    """
    cf = item.extra.get("counterfactual") if isinstance(item.extra, dict) else None
    if not isinstance(cf, dict):
        return {}
    hops = cf.get("new_single_hops")
    new = ([_entity_name(h.get("answer")) if isinstance(h, dict) else None for h in hops]
           if isinstance(hops, list) and len(hops) == 2 else [None, None])
    rewrites = [r for r in cf.get("requested_rewrite") or [] if isinstance(r, dict)] \
        if isinstance(cf.get("requested_rewrite"), list) else []
    new_answer = _entity_name(cf.get("new_answer"))

    def rewritten(true: str) -> str | None:
        for rewrite in rewrites:
            if _norm(_entity_name(rewrite.get("target_true"))) == _norm(true):
                return _entity_name(rewrite.get("target_new"))
        return None

    def first_fake(hop: int, candidates: list[str | None]) -> str | None:
        banned = {_norm(t) for t in _truth(item, hop)}
        return next((c for c in candidates if c is not None and _norm(c) not in banned), None)

    out: dict[int, tuple[str, str | None]] = {}
    by_rewrite = rewritten(item.fact1_ans)
    bridge = first_fake(1, [new[0], by_rewrite])
    if bridge is not None:
        implied = new[1] if bridge == new[0] else (new_answer if bridge == by_rewrite else None)
        out[1] = (bridge, implied)
    answer = first_fake(2, [new[1], new_answer, rewritten(item.fact2_ans)])
    if answer is not None:
        out[2] = (answer, answer)
    return out


def conflict_choice(item: Item, hop: int, by_relation: Mapping[tuple[str | None, int], Sequence[str]],
                    seed: int) -> tuple[str, str | None, str] | None:
    """(fake, the answer the context implies when the record says so, source) for `conflict_hop{hop}`, or None
    when there is no candidate (the caller skips the item for that condition only).

    Source `rewrite`: the record's own counterfactual (`counterfactual_entities`); `same_relation`: another object
    of the same relation in the dataset (`conflict_entity` over the item's pool), whose implied answer the caller
    looks up in the dataset (hop 1) or is the fake itself (hop 2).
    """
    _check_hop(item, hop)
    own = counterfactual_entities(item).get(hop)
    if own is not None:
        return own[0], own[1], "rewrite"
    pool = candidate_pool(item, hop, by_relation)
    if not _usable_fakes(item, hop, pool):
        return None
    fake = conflict_entity(item, hop, pool, seed)
    return fake, (fake if hop == 2 else None), "same_relation"


def no_candidate_reason(item: Item, hop: int) -> str:
    """Why `conflict_choice` found nothing (the skip's detail)."""
    relation = item.relation1 if hop == 1 else item.relation2
    pool = (f"relation '{relation}' has no other object in the dataset" if relation is not None
            else f"the dataset has no other hop-{hop} answer")
    return (f"no conflict candidate for hop {hop} other than the true entity '{_truth(item, hop)[0]}': the record "
            f"has no counterfactual rewrite of hop {hop}, and {pool}")


def conflict_context(item: Item, hop: int, fake: str) -> str:
    """The counterfactual passage: the hop's first single-hop question followed by the fake answer."""
    _check_hop(item, hop)
    return _sentence(_first(item, hop), fake)


def conflict_prompt(
    item: Item,
    hop: int,
    candidates: Mapping[tuple[str | None, int], Sequence[str]] | Sequence[str],
    seed: int,
    templates: Mapping[str, str] = DEFAULT_TEMPLATES,
) -> tuple[str, str]:
    """(prompt, fake) for condition `conflict_hop{hop}`.

    `candidates` is the `candidates_by_relation` mapping (the item's pool is looked up) or a plain list of entities.
    """
    _check_hop(item, hop)
    pool = candidate_pool(item, hop, candidates) if isinstance(candidates, Mapping) else list(candidates)
    fake = conflict_entity(item, hop, pool, seed)
    prompt = render(f"conflict_hop{hop}", item, templates, context=conflict_context(item, hop, fake))
    return prompt, fake

