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

Optional extra training text (chain-of-thought and context examples, `cot_fraction`, `context_fraction`,
`context_min_per_relation`, `few_shot_prompts`) is built by `knrecall.world.reasoning`; with the fractions 0
the world is exactly what it was before it existed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.prompts import DEFAULT_TEMPLATES
from knrecall.world.names import invent_names
from knrecall.world.reasoning import onehop_cot_examples, reasoning_examples
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
    extra = reasoning_examples(seed, [as_item(r) for r in items], facts, cot_fraction, context_fraction,
                               templates, context_min_per_relation=context_min_per_relation,
                               few_shot_prompts=few_shot_prompts)
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


def interleave(corpus: list[dict[str, str]], extra: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """`corpus` with `extra` spread over random positions; both keep their own order."""
    total = len(corpus) + len(extra)
    slots = set(rng.sample(range(total), len(extra)))
    main, added = iter(corpus), iter(extra)
    return [next(added) if i in slots else next(main) for i in range(total)]
