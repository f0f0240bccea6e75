"""Generate the synthetic world: entities, facts, two-hop items with ground truth, and the training corpus.

Everything is a pure function of the parameters and the seed. Ground truth per item:

- `split`: `train_subject` (the model is trained on this two-hop question), `heldout_subject` (the subject's
  two-hop questions are never trained) or `heldout_bridge` (no trained two-hop question passes through the bridge);
- `shortcut_planted`: for a share of held-out items, sentences linking the subject directly to the answer
  (the composition's statements) are in the corpus;
- `composable`: the model saw only the two separate facts, so answering needs composition;
- `shortcut_conflicting` / `shortcut_answer` (pathway-revealing items): for `pathway_fraction` of the held-out items
  without a planted shortcut, the composition's statements are in the corpus with another answer, s -> o2'
  (`shortcut_answer`: another entity of the answer's type, never o2; kind `conflicting_shortcut_statement`), so the
  answer tells which pathway won: o2 (composition through the bridge) or o2' (the shortcut). These items have
  `shortcut_planted` and `composable` False (their accuracy has no single gold meaning); every other item has
  `shortcut_conflicting` False and `shortcut_answer` None. The items and o2' are drawn by a generator seeded
  "{seed}:pathway" and the statements spread over the corpus by one seeded "{seed}:pathway_mix", so with the
  fraction 0 the world is exactly what it was before (only the two keys are new).

Optional extra training text (with both fractions 0 the world is exactly what it was before they existed). Two-hop
text is only ever about `train_subject` items, so held-out items' prompts stay new at evaluation:

- `cot_question` (`cot_fraction` of the train_subject items): the item's two-hop question under the zero-shot CoT
  prompt and under a one-exemplar few-shot CoT prompt (two examples per item); the answer is the exemplar chain
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

The prompts are built by `knrecall.data.conditions` (the evaluation's own builders), so the formats cannot drift.
Their random draws come from generators seeded by "{seed}:cot", "{seed}:cot1", "{seed}:context" and "{seed}:mix",
never from the world's own stream: items are the same whatever these fractions, and the other examples keep their order.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
from knrecall.world.names import invent_names
from knrecall.world.templates import COMPOSITIONS, RELATIONS

COMPANY_SUFFIXES = ["Labs", "Works", "Group", "Systems", "Holdings", "Motors"]
LANGUAGE_ENDINGS = ["ish", "ese", "ic", "ian"]


@dataclass(frozen=True)
class WorldSize:
    people: int
    cities: int
    countries: int
    companies: int
    languages: int
    currencies: int


def invent_entities(rng: random.Random, size: WorldSize, reserved: set[str]) -> dict[str, list[str]]:
    taken = set(reserved)
    countries = invent_names(rng, size.countries, taken, syllables=(2, 3))
    cities = invent_names(rng, size.cities, taken, syllables=(2, 3))
    people = invent_names(rng, size.people, taken, syllables=(2,), words=2)
    companies = [invent_names(rng, 1, taken, syllables=(2,), suffix=rng.choice(COMPANY_SUFFIXES))[0] for _ in range(size.companies)]
    languages = [n + rng.choice(LANGUAGE_ENDINGS) for n in invent_names(rng, size.languages, taken, syllables=(2,))]
    currencies = invent_names(rng, size.currencies, taken, syllables=(1, 2))
    return {
        "person": people,
        "city": cities,
        "country": countries,
        "company": companies,
        "language": languages,
        "currency": currencies,
    }


def assign_facts(rng: random.Random, entities: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """Each relation is a function subject -> object; objects spread evenly over the range."""
    facts: dict[str, dict[str, str]] = {}
    for rel in RELATIONS.values():
        subjects = entities[rel.domain]
        objects = entities[rel.range]
        pool = [objects[i % len(objects)] for i in range(len(subjects))]
        rng.shuffle(pool)
        facts[rel.name] = dict(zip(subjects, pool))
    return facts


def template_words(extra: list[str]) -> set[str]:
    words = set(w.lower() for w in extra)
    for group in (RELATIONS.values(), COMPOSITIONS.values()):
        for t in group:
            for text in t.questions + t.statements:
                words.update(w.strip("?.,{}").lower() for w in text.split())
    return words


def statement_example(template: str, s: str, o: str, kind: str) -> dict[str, str]:
    """A statement as a training example: the statement up to its object is the prompt, the object the answer."""
    return {"prompt": template.replace(" {o}", "").format(s=s), "answer": o, "kind": kind}


def generate_world(
    seed: int,
    size: WorldSize,
    heldout_subject_fraction: float,
    heldout_bridge_fraction: float,
    shortcut_fraction: float,
    qa_template: str,
    *,
    cot_fraction: float = 0.0,
    context_fraction: float = 0.0,
    context_min_per_relation: int = 0,
    few_shot_prompts: int = 1,
    pathway_fraction: float = 0.0,
    templates: Mapping[str, str] = DEFAULT_TEMPLATES,
) -> dict[str, Any]:
    """Return {'entities', 'facts', 'items', 'corpus'}; items are TFRKN-shaped dicts with ground truth."""
    for name, value in (("cot_fraction", cot_fraction), ("context_fraction", context_fraction),
                        ("pathway_fraction", pathway_fraction)):
        if not 0.0 <= value <= 1.0:
            raise KnrecallError(f"world: {name} must be between 0 and 1, got {value!r}")
    if few_shot_prompts < 1:
        raise KnrecallError(f"world: few_shot_prompts must be 1 or more, got {few_shot_prompts!r}")
    if context_min_per_relation < 0:
        raise KnrecallError(f"world: context_min_per_relation must be 0 or more, got {context_min_per_relation!r}")
    rng = random.Random(seed)
    reserved = template_words(qa_template.split() + COMPANY_SUFFIXES)
    entities = invent_entities(rng, size, reserved)
    facts = assign_facts(rng, entities)

    def sample(names: list[str], fraction: float) -> set[str]:
        k = round(len(names) * fraction)
        return set(rng.sample(sorted(names), k))

    bridge_types = sorted({RELATIONS[c.first].range for c in COMPOSITIONS.values()})
    subject_types = sorted({RELATIONS[c.first].domain for c in COMPOSITIONS.values()})
    heldout_bridges = set().union(*(sample(entities[t], heldout_bridge_fraction) for t in bridge_types))
    heldout_subjects = set().union(*(sample(entities[t], heldout_subject_fraction) for t in subject_types))

    corpus: list[dict[str, str]] = []

    def qa(question: str, answer: str, kind: str) -> None:
        corpus.append({"prompt": qa_template.format(question=question), "answer": answer, "kind": kind})

    def statement(template: str, s: str, o: str, kind: str) -> None:
        corpus.append(statement_example(template, s, o, kind))

    # Single-hop facts: every question paraphrase and every statement.
    for rel in RELATIONS.values():
        for s, o in facts[rel.name].items():
            for q in rel.questions:
                qa(q.format(s=s), o, "fact_question")
            for st in rel.statements:
                statement(st, s, o, "fact_statement")

    items: list[dict[str, Any]] = []
    for comp in COMPOSITIONS.values():
        r1, r2 = RELATIONS[comp.first], RELATIONS[comp.second]
        for s in entities[r1.domain]:
            o1 = facts[r1.name][s]
            o2 = facts[r2.name][o1]
            if o1 in heldout_bridges:
                split = "heldout_bridge"
            elif s in heldout_subjects:
                split = "heldout_subject"
            else:
                split = "train_subject"
            shortcut = split != "train_subject" and rng.random() < shortcut_fraction
            if split == "train_subject":
                for q in comp.questions:
                    qa(q.format(s=s), o2, "twohop_question")
                for st in comp.statements:
                    statement(st, s, o2, "twohop_statement")
            elif shortcut:
                for st in comp.statements:
                    statement(st, s, o2, "shortcut_statement")
            items.append(
                {
                    "case_id": f"{comp.name}:{s}",
                    "source": "world",
                    "two_hop": rng.choice(comp.questions).format(s=s),
                    "fact1_query": [q.format(s=s) for q in r1.questions],
                    "fact1_ans": o1,
                    "fact2_query": [q.format(s=o1) for q in r2.questions],
                    "fact2_ans": o2,
                    "two_hop_label": [[s, r1.name, o1], [o1, r2.name, o2]],
                    "split": split,
                    "shortcut_planted": shortcut,
                    "composable": split != "train_subject" and not shortcut,
                    "shortcut_conflicting": False,
                    "shortcut_answer": None,
                    "composition": comp.name,
                }
            )
    rng.shuffle(corpus)
    conflicting = plant_conflicting_shortcuts(seed, items, entities, pathway_fraction)
    extra = reasoning_examples(seed, items, facts, cot_fraction, context_fraction, templates,
                               context_min_per_relation=context_min_per_relation, few_shot_prompts=few_shot_prompts)
    if cot_fraction > 0:
        extra += onehop_cot_examples(seed, facts, templates)
    if extra:
        corpus = interleave(corpus, extra, random.Random(f"{seed}:mix"))
    if conflicting:
        corpus = interleave(corpus, conflicting, random.Random(f"{seed}:pathway_mix"))
    return {
        "entities": entities,
        "facts": facts,
        "heldout_subjects": sorted(heldout_subjects),
        "heldout_bridges": sorted(heldout_bridges),
        "items": items,
        "corpus": corpus,
    }


def as_item(record: dict[str, Any]) -> Item:
    """The `Item` an importer makes of a world record (what the prompt conditions take)."""
    (subject, r1, _), (_, r2, _) = record["two_hop_label"]
    return Item(
        case_id=record["case_id"],
        source=record["source"],
        two_hop=record["two_hop"],
        fact1_query=list(record["fact1_query"]),
        fact1_ans=record["fact1_ans"],
        fact2_query=list(record["fact2_query"]),
        fact2_ans=record["fact2_ans"],
        subject=subject,
        relation1=r1,
        relation2=r2,
        split=record["split"],
        shortcut_planted=record["shortcut_planted"],
        composable=record["composable"],
        shortcut_conflicting=record.get("shortcut_conflicting"),
        shortcut_answer=record.get("shortcut_answer"),
        extra={"composition": record["composition"]},
    )


def plant_conflicting_shortcuts(seed: int, items: list[dict[str, Any]], entities: dict[str, list[str]],
                                fraction: float) -> list[dict[str, str]]:
    """Make `fraction` of the eligible items (held out, no planted shortcut) pathway-revealing, in place: each gets
    o2' (another entity of relation 2's range, != o2) and its composition's statements s -> o2' (returned, in item
    order). Every draw comes from the generator seeded "{seed}:pathway", never from the world's own stream."""
    eligible = [r for r in items if r["split"] != "train_subject" and not r["shortcut_planted"]]
    k = round(len(eligible) * fraction)
    if k == 0:
        return []
    rng = random.Random(f"{seed}:pathway")
    chosen = {r["case_id"] for r in rng.sample(eligible, k)}
    statements: list[dict[str, str]] = []
    for record in items:
        if record["case_id"] not in chosen:
            continue
        comp = COMPOSITIONS[record["composition"]]
        (s, _, _), (_, r2, o2) = record["two_hop_label"]
        others = [e for e in entities[RELATIONS[r2].range] if e != o2]
        if not others:
            raise KnrecallError(f"world: pathway_fraction needs two entities of type {RELATIONS[r2].range!r}")
        alternative = rng.choice(others)
        record.update(shortcut_conflicting=True, shortcut_answer=alternative, composable=False)
        statements.append(statement_example(rng.choice(comp.statements), s, alternative,
                                            "conflicting_shortcut_statement"))
    return statements


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
    records: list[dict[str, Any]],
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
    items = [as_item(r) for r in records]
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
    With `min_per_relation` 0 this is exactly the plan before the floor existed (one passage each)."""
    chosen = random.Random(f"{seed}:context").sample(train, round(len(train) * fraction))
    passages: dict[str | None, int] = defaultdict(lambda: 1)
    if min_per_relation <= 0:
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
    """A training passage's fake entities: the first drawn with a seed the evaluation never uses (-1 - seed), so the
    conflict prompts asked at evaluation are never the ones trained on; `count` - 1 more, distinct, drawn by `rng`
    from the rest of the pool (fewer when the pool runs out)."""
    try:
        first = conflict_entity(item, hop, candidate_pool(item, hop, by_relation), -1 - seed)
    except KnrecallError:  # the pool holds only the true entity
        return []
    if count <= 1:
        return [first]
    truth = item.fact1_ans if hop == 1 else item.fact2_ans
    rest = [c for c in candidate_pool(item, hop, by_relation) if c not in (first, truth)]
    return [first, *rng.sample(rest, min(count - 1, len(rest)))]


def interleave(corpus: list[dict[str, str]], extra: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """`corpus` with `extra` spread over random positions; both keep their own order."""
    total = len(corpus) + len(extra)
    slots = set(rng.sample(range(total), len(extra)))
    main, added = iter(corpus), iter(extra)
    return [next(added) if i in slots else next(main) for i in range(total)]
