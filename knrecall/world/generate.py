"""Generate the synthetic world: entities, facts, two-hop items with ground truth, and the training corpus.

Everything is a pure function of the parameters and the seed. Ground truth per item:

- `split`: `train_subject` (the model is trained on this two-hop question), `heldout_subject` (the subject's
  two-hop questions are never trained) or `heldout_bridge` (no trained two-hop question passes through the bridge);
- `shortcut_planted`: for a share of held-out items, sentences linking the subject directly to the answer
  (the composition's statements) are in the corpus;
- `composable`: the model saw only the two separate facts, so answering needs composition.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

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


def generate_world(
    seed: int,
    size: WorldSize,
    heldout_subject_fraction: float,
    heldout_bridge_fraction: float,
    shortcut_fraction: float,
    qa_template: str,
) -> dict[str, Any]:
    """Return {'entities', 'facts', 'items', 'corpus'}; items are TFRKN-shaped dicts with ground truth."""
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
        corpus.append({"prompt": template.replace(" {o}", "").format(s=s), "answer": o, "kind": kind})

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
                    "composition": comp.name,
                }
            )
    rng.shuffle(corpus)
    return {
        "entities": entities,
        "facts": facts,
        "heldout_subjects": sorted(heldout_subjects),
        "heldout_bridges": sorted(heldout_bridges),
        "items": items,
        "corpus": corpus,
    }
