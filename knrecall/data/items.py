"""The items table: one row per two-hop item, the same whatever the source (world, TFRKN, MQuAKE, JSONL).

Every importer produces `Item` objects; `write_items` turns them into `items.parquet`; `read_items` gives them
back. The column list here is the contract documented in the README.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from knrecall.io import provenance, read_parquet, write_parquet

SOURCES = ("world", "tfrkn", "mquake", "jsonl")
SPLITS = ("train_subject", "heldout_subject", "heldout_bridge")


@dataclass
class Item:
    case_id: str
    source: str
    two_hop: str  # the two-hop question
    fact1_query: list[str]  # paraphrased questions for (s, r1, o1)
    fact1_ans: str  # o1, the bridge entity
    fact2_query: list[str]  # paraphrased questions for (o1, r2, o2)
    fact2_ans: str  # o2, the answer
    fact1_aliases: list[str] = field(default_factory=list)
    answer_aliases: list[str] = field(default_factory=list)  # aliases of o2
    subject: str | None = None
    relation1: str | None = None
    relation2: str | None = None
    subject_id: str | None = None
    relation1_id: str | None = None
    bridge_id: str | None = None
    relation2_id: str | None = None
    answer_id: str | None = None
    split: str | None = None  # world only: train_subject / heldout_subject / heldout_bridge
    shortcut_planted: bool | None = None  # world only: a sentence linking s to o2 directly was trained
    composable: bool | None = None  # world only: the model saw only the separate facts (must compose)
    shortcut_conflicting: bool | None = None  # world only: a conflicting shortcut s -> o2' was trained (pathway item)
    shortcut_answer: str | None = None  # world only: o2', the conflicting shortcut's answer (pathway items)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown input fields, kept verbatim


ITEMS_SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("two_hop", pa.string(), nullable=False),
        pa.field("fact1_query", pa.list_(pa.string()), nullable=False),
        pa.field("fact1_ans", pa.string(), nullable=False),
        pa.field("fact2_query", pa.list_(pa.string()), nullable=False),
        pa.field("fact2_ans", pa.string(), nullable=False),
        pa.field("fact1_aliases", pa.list_(pa.string()), nullable=False),
        pa.field("answer_aliases", pa.list_(pa.string()), nullable=False),
        pa.field("subject", pa.string()),
        pa.field("relation1", pa.string()),
        pa.field("relation2", pa.string()),
        pa.field("subject_id", pa.string()),
        pa.field("relation1_id", pa.string()),
        pa.field("bridge_id", pa.string()),
        pa.field("relation2_id", pa.string()),
        pa.field("answer_id", pa.string()),
        pa.field("split", pa.string()),
        pa.field("shortcut_planted", pa.bool_()),
        pa.field("composable", pa.bool_()),
        pa.field("shortcut_conflicting", pa.bool_()),
        pa.field("shortcut_answer", pa.string()),
        pa.field("extra", pa.string(), nullable=False),  # JSON object
    ]
)


def items_table(items: list[Item]) -> pa.Table:
    rows = []
    for item in items:
        row = asdict(item)
        row["extra"] = json.dumps(item.extra, sort_keys=True)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA)


def write_items(items: list[Item], path: str | Path, params: dict[str, Any] | None = None, **meta: Any) -> None:
    write_parquet(items_table(items), path, provenance(params, n_items=len(items), **meta))


def read_items(path: str | Path) -> list[Item]:
    table = read_parquet(path)
    items = []
    for row in table.to_pylist():
        row["extra"] = json.loads(row["extra"])
        items.append(Item(**row))
    return items
