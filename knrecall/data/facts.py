"""Single-hop facts of the items: each distinct (paraphrase list, answer) is one fact with a stable id.

Facts shared by several items (a city's country is hop 2 of many items) are attributed once. Ids are content
hashes, so they are the same whatever the item order or shard count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from knrecall.data.items import Item


@dataclass(frozen=True)
class Fact:
    fact_id: str
    questions: tuple[str, ...]
    answer: str
    aliases: tuple[str, ...]


def fact_id(questions: list[str], answer: str) -> str:
    return hashlib.sha1(json.dumps([questions, answer]).encode()).hexdigest()[:16]


def facts_of(items: list[Item]) -> tuple[dict[str, Fact], list[tuple[str, int, str]]]:
    """(facts by id in first-seen order, [(case_id, hop, fact_id)] for hop 1 and hop 2 of every item)."""
    facts: dict[str, Fact] = {}
    links: list[tuple[str, int, str]] = []
    for item in items:
        for hop, questions, answer, aliases in (
            (1, item.fact1_query, item.fact1_ans, item.fact1_aliases),
            (2, item.fact2_query, item.fact2_ans, item.answer_aliases),
        ):
            fid = fact_id(questions, answer)
            facts.setdefault(fid, Fact(fid, tuple(questions), answer, tuple(aliases)))
            links.append((item.case_id, hop, fid))
    return facts, links


def shard_of(fid: str, shards: int) -> int:
    """Deterministic shard of a fact: the same for the same fact whatever the item order."""
    return int(fid, 16) % shards
