"""The world's optional training text: chain-of-thought and context examples (used by `knrecall.world.generate`).

Two-hop text is only ever about `train_subject` items, so held-out items' prompts stay new at evaluation:

- `cot_question` (`cot_fraction` of the train_subject items): the item's two-hop question under the zero-shot CoT
  prompt and under `few_shot_prompts` one-exemplar few-shot CoT prompts (below); the answer is the exemplar chain
  followed by "So the answer is {o2}" (the trainer appends " ." and EOS), i.e. exactly what an exemplar block
  (`EXEMPLAR_TEMPLATE`) puts after "A: ".
- `cot_onehop` (whenever `cot_fraction` > 0): for every single-hop fact, one of its questions (drawn by seed) under
  the zero-shot CoT prompt, answered "{o}. So the answer is {o}" — and for the relations that are a second hop
  (located_in, headquartered_in, official_language, currency) in the chain's own form, "{s}. {the relation's first
  question about s} {o}. So the answer is {o}". Single-hop facts are trained for every subject anyway, so this
  reveals no two-hop answer; it teaches the chain's closing step (repeat the entity just produced after "So the
  answer is") on every entity, and the chain's second step (ask the bridge's question, answer it) on every bridge,
  held-out bridges included, instead of on the CoT items' bridges only. Without the closing step the world model
  copied the wrong entity into its chains far more often (zero-shot CoT accuracy 0.64 without, 0.94 with); without
  the chain form and the few-shot prompt for every CoT item, few-shot CoT accuracy was 0.65 (benchmarks/RESULTS.md).
- `context_question` (`context_fraction` of the train_subject items): the conflict prompts with a truthful and a
  counterfactual passage for hop 2 (answer: the passage's entity) and for hop 1 (answer: relation 2 of the
  passage's bridge, from the graph). A hop-1 counterfactual whose answer equals the truth is left out.
  `context_min_per_relation` (`context_plan`): a hop-2 relation with fewer context items than that gets more of its
  train items, and when it has too few, several counterfactual passages per item and hop (distinct fakes). Reading
  a context is learned per relation: with 12 countries, `official_language` and `currency` have ~28 train items,
  ~14 of them with passages at 0.5, and the model followed a hop-2 context for them 0.00 on the default run of
  2026-12-06 (benchmarks/RESULTS.md).
- `few_shot_prompts`: each CoT item's few-shot prompt is trained with that many exemplars (one per prompt,
  distinct, drawn from the train items); the first is the one-prompt world's. With one, the model often copied the
  exemplar's answer into its own chain (few-shot CoT accuracy 0.82 / 0.74 / 0.96 on world seeds 0 / 1 / 2).

The prompts are built by `knrecall.data.conditions` (the evaluation's own builders), so the formats cannot drift.
Their random draws come from generators seeded by "{seed}:cot", "{seed}:cot1", "{seed}:context",
"{seed}:context_floor", "{seed}:context_fakes" and "{seed}:mix", never from the world's own stream: items are the same
whatever these fractions, and the other examples keep their order. With `context_min_per_relation` 0 and
`few_shot_prompts` 1 (the function's defaults) the corpus is exactly what it was before they existed.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping

from knrecall.data.conditions import (
    candidate_pool,
    candidates_by_relation,
    choose_exemplars,
    conflict_context,
    conflict_entity,
    exemplar_chain,
    render,
)
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.prompts import DEFAULT_TEMPLATES
from knrecall.world.templates import COMPOSITIONS, RELATIONS


def onehop_cot_examples(seed: int, facts: dict[str, dict[str, str]],
                        templates: Mapping[str, str] = DEFAULT_TEMPLATES) -> list[dict[str, str]]:
    """`cot_onehop` examples: per single-hop fact, one question (drawn with "{seed}:cot1") under the zero-shot CoT
    prompt, answered '{o}. So the answer is {o}'; for a relation that is the second hop of a composition, in the
    chain's own form: '{s}. {first question of the relation about s} {o}. So the answer is {o}'."""
    rng = random.Random(f"{seed}:cot1")
    second = {c.second for c in COMPOSITIONS.values()}
    examples = []
    for rel in RELATIONS.values():
        for s, o in facts[rel.name].items():
            question = rng.choice(rel.questions).format(s=s)
            answer = f"{o}. So the answer is {o}"
            if rel.name in second:
                answer = f"{s}. {rel.questions[0].format(s=s)} {o}. So the answer is {o}"
            examples.append({"prompt": templates["zero_shot_cot"].format(question=question),
                             "answer": answer, "kind": "cot_onehop"})
    return examples


def cot_answer(item: Item) -> str:
    """The CoT target: what `EXEMPLAR_TEMPLATE` puts after "A: ", less the final ".\\n" (the trainer adds " .")."""
    return f"{exemplar_chain(item)} So the answer is {item.fact2_ans.strip().rstrip('.')}"


def reasoning_examples(
    seed: int,
    items: list[Item],
    facts: dict[str, dict[str, str]],
    cot_fraction: float,
    context_fraction: float,
    templates: Mapping[str, str] = DEFAULT_TEMPLATES,
    *,
    context_min_per_relation: int = 0,
    few_shot_prompts: int = 1,
) -> list[dict[str, str]]:
    """`cot_question` and `context_question` examples for shares of the train_subject items (see the module doc)."""
    if cot_fraction <= 0 and context_fraction <= 0:
        return []
    train = [it for it in items if it.split == "train_subject"]
    examples: list[dict[str, str]] = []

    cot_rng = random.Random(f"{seed}:cot")
    cot_items = cot_rng.sample(train, round(len(train) * cot_fraction))
    for item in cot_items:  # the zero-shot and the one-shot CoT prompts of every chosen item
        examples.append({"prompt": render("zero_shot_cot", item, templates), "answer": cot_answer(item),
                         "kind": "cot_question"})
        used: set[str] = set()
        for draw in range(few_shot_prompts):  # draw 0 with the seed as before, further ones with negative seeds
            try:
                exemplars = choose_exemplars(item, train, k=1, seed=seed if draw == 0 else -1000 * (seed + 1) - draw)
            except KnrecallError:  # no usable exemplar (tiny worlds): zero-shot only
                break
            if exemplars[0].case_id in used:
                continue
            used.add(exemplars[0].case_id)
            examples.append({"prompt": render("few_shot_cot", item, templates, exemplars=exemplars),
                             "answer": cot_answer(item), "kind": "cot_question"})

    context_items, passages = context_plan(seed, train, context_fraction, context_min_per_relation)
    if context_items:
        by_relation = candidates_by_relation(items)
    fakes_rng = random.Random(f"{seed}:context_fakes")
    for item in context_items:
        o1, o2 = item.fact1_ans, item.fact2_ans

        def add(hop: int, passage_entity: str, answer: str) -> None:
            prompt = render(f"conflict_hop{hop}", item, templates, context=conflict_context(item, hop, passage_entity))
            examples.append({"prompt": prompt, "answer": answer, "kind": "context_question"})

        add(2, o2, o2)
        for fake in _fakes(item, 2, by_relation, seed, passages[item.relation2], fakes_rng):
            add(2, fake, fake)
        add(1, o1, o2)
        for fake_bridge in _fakes(item, 1, by_relation, seed, passages[item.relation2], fakes_rng):
            if facts[item.relation2][fake_bridge] != o2:
                add(1, fake_bridge, facts[item.relation2][fake_bridge])
    return examples


def context_plan(seed: int, train: list[Item], fraction: float, min_per_relation: int
                 ) -> tuple[list[Item], dict[str | None, int]]:
    """The train items that get context passages, and per relation 2 how many counterfactual passages each gets.

    `fraction` of the train items, drawn with "{seed}:context"; then, for every relation 2 with fewer than
    `min_per_relation` of them, more of its train items (drawn with "{seed}:context_floor") up to that many or all;
    a relation whose chosen items are still fewer gets ceil(min_per_relation / chosen) counterfactual passages per
    item and hop, so every relation is trained to follow a context on at least about `min_per_relation` passages.
    With `min_per_relation` 0 this is exactly the plan before the floor existed (one passage each); with `fraction` 0
    there are no context passages at all."""
    chosen = random.Random(f"{seed}:context").sample(train, round(len(train) * fraction))
    passages: dict[str | None, int] = defaultdict(lambda: 1)
    if min_per_relation <= 0 or fraction <= 0:  # no floor, or no context training at all
        return chosen, passages
    floor_rng = random.Random(f"{seed}:context_floor")
    taken = {it.case_id for it in chosen}
    for relation in sorted({it.relation2 for it in train}):
        have = sum(it.relation2 == relation for it in chosen)
        rest = [it for it in train if it.relation2 == relation and it.case_id not in taken]
        added = floor_rng.sample(rest, min(max(min_per_relation - have, 0), len(rest)))
        chosen += added
        count = have + len(added)
        passages[relation] = max(1, math.ceil(min_per_relation / count)) if count else 1
    return chosen, passages


def _fakes(item: Item, hop: int, by_relation: dict, seed: int, count: int, rng: random.Random) -> list[str]:
    """A training passage's fake entities: the first drawn with a seed the evaluation never uses (-1 - seed); `count`
    - 1 more, distinct, drawn by `rng` from the rest of the pool (fewer when the pool runs out). The pools are small,
    so a fake can still be the one the evaluation draws for the item (README, `corpus.jsonl`)."""
    pool = candidate_pool(item, hop, by_relation)
    try:
        first = conflict_entity(item, hop, pool, -1 - seed)
    except KnrecallError:  # the pool holds only the true entity
        return []
    if count <= 1:
        return [first]
    truth = item.fact1_ans if hop == 1 else item.fact2_ans
    rest = [c for c in pool if c not in (first, truth)]
    return [first, *rng.sample(rest, min(count - 1, len(rest)))]
