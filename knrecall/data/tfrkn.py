"""The TFRKN record format (also the JSON Lines line format and what the synthetic world writes) (DESIGN.md §3)."""

from __future__ import annotations

from knrecall.data.fields import Fields
from knrecall.data.items import SOURCES, SPLITS, Item


def tfrkn_item(f: Fields, default_source: str) -> Item:
    """A TFRKN-shaped record (also the JSONL line format and what the synthetic world writes)."""
    item = Item(
        case_id=f.case_id(),
        source=f.choice("source", SOURCES) or default_source,
        two_hop=f.text("two_hop"),
        fact1_query=f.texts("fact1_query"),
        fact1_ans=f.text("fact1_ans"),
        fact2_query=f.texts("fact2_query"),
        fact2_ans=f.text("fact2_ans"),
        fact1_aliases=f.texts("fact1_aliases", required=False, allow_empty=True) or [],
        answer_aliases=answer_aliases_of(f),
        split=f.choice("split", SPLITS),
        shortcut_planted=f.flag("shortcut_planted"),
        composable=f.flag("composable"),
        shortcut_conflicting=f.flag("shortcut_conflicting"),
        shortcut_answer=f.text("shortcut_answer", required=False),
    )
    fill_chain(item, ids=f.triplets("two_hop_id", ids=True), labels=f.triplets("two_hop_label"))
    item.extra = f.rest()
    return item


def answer_aliases_of(f: Fields) -> list[str]:
    """`answer_aliases`, or its synonym `fact2_aliases`; both may be given only if they agree."""
    aliases = f.texts("answer_aliases", required=False, allow_empty=True)
    synonym = f.texts("fact2_aliases", required=False, allow_empty=True)
    if aliases is not None and synonym is not None and aliases != synonym:
        raise f.error("fact2_aliases", "is a synonym of 'answer_aliases' but differs from it; give only one")
    return aliases if aliases is not None else synonym or []


def fill_chain(item: Item, ids: list[list[str]] | None, labels: list[list[str]] | None) -> None:
    if labels is not None:
        (item.subject, item.relation1, _), (_, item.relation2, _) = labels
    if ids is not None:
        (item.subject_id, item.relation1_id, item.bridge_id), (_, item.relation2_id, item.answer_id) = ids
