"""`results/metrics/world.json`: how well the world model knows its world, split by ground truth.

Pathway-revealing items (`shortcut_conflicting`: a conflicting shortcut s -> o2' was trained) have no single gold
answer, so every accuracy figure (`twohop_accuracy`, `by_condition`, `shortcut_planted_accuracy`,
`composed_accuracy`) and every item count but `n_items` (`n_items_by_split`, `n_shortcut_planted`) leaves them out
and means what it meant before they existed; `n_items` is every item, `n_pathway_items` the pathway items, and
single-hop accuracy counts their facts (true facts like any other). They are reported apart in `pathways`: per
condition answered, over the pathway items' two-hop predictions, the share (and count) whose extracted answer span
names o2, the composed answer (`composed`, `n_composed`: composition through the bridge won), o2', the shortcut's
answer (`shortcut`, `n_shortcut`), or neither (`neither`, `n_neither`; also a span naming both, impossible with
distinct names), with `n` the predictions counted. A span "names" an answer by `knrecall.answer.is_correct`, the
answer phase's own test (o2 with its aliases, o2' without). Items tables without the `shortcut_conflicting` column
(written before it existed, or from other sources: null) have no pathway items.

Skipped items (`knrecall.skips`): `by_condition` counts, per condition, the items the answering phase skipped
there (`n_skipped`, `skipped`: reason -> count; `n` counts the answered ones), and `skipped` holds the answering
phase's whole count block. A condition every item was skipped under keeps an entry with `n` 0.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from knrecall.data.correctness import is_correct
from knrecall.skips import condition_entry, counts


def accuracy(frame: pl.DataFrame) -> float | None:
    return round(float(frame["correct"].mean()), 4) if frame.height else None


def share(frame: pl.DataFrame, column: str, value=True) -> float | None:
    return round(float((frame[column] == value).mean()), 4) if frame.height else None


def by_condition(predictions: pl.DataFrame, items: pl.DataFrame) -> dict[str, Any]:
    """Two-hop accuracy per prompt condition (all items and held-out subjects); for chain of thought the share of
    chains that name the right bridge, for conflict how often the answer follows the context or the memory."""
    twohop = predictions.filter(pl.col("kind") == "two_hop").join(items.select("case_id", "split"), on="case_id")
    out: dict[str, Any] = {}
    for condition in twohop["condition"].unique(maintain_order=True).to_list():
        rows = twohop.filter(pl.col("condition") == condition)
        entry: dict[str, Any] = {
            "accuracy": accuracy(rows),
            "heldout_subjects_accuracy": accuracy(rows.filter(pl.col("split") == "heldout_subject")),
            "n": rows.height,
        }
        if rows["chain_names_bridge"].null_count() < rows.height:
            entry["chain_names_bridge"] = share(rows, "chain_names_bridge")
        if rows["follows"].null_count() < rows.height:
            for value in ("context", "memory", "neither"):
                entry[f"follows_{value}"] = share(rows, "follows", value)
        out[condition] = entry
    return out


def is_pathway(items: pl.DataFrame) -> pl.Series:
    """True for the pathway-revealing items (`shortcut_conflicting`); False where the column is absent or null."""
    if "shortcut_conflicting" not in items.columns:
        return pl.Series("shortcut_conflicting", [False] * items.height, dtype=pl.Boolean)
    return items["shortcut_conflicting"].fill_null(False)


def pathways(predictions: pl.DataFrame, items: pl.DataFrame) -> dict[str, Any]:
    """Per condition, which answer the pathway items' two-hop predictions name: o2 (composed), o2' (shortcut) or
    neither (see the module docstring)."""
    if not items.height:
        return {}
    answers = {row["case_id"]: (row["fact2_ans"], tuple(row["answer_aliases"] or ()), row["shortcut_answer"])
               for row in items.select("case_id", "fact2_ans", "answer_aliases", "shortcut_answer").to_dicts()}
    twohop = predictions.filter((pl.col("kind") == "two_hop") & pl.col("case_id").is_in(list(answers)))
    out: dict[str, Any] = {}
    for condition in twohop["condition"].unique(maintain_order=True).to_list():
        counts = {"composed": 0, "shortcut": 0, "neither": 0}
        rows = twohop.filter(pl.col("condition") == condition).select("case_id", "answer_span").to_dicts()
        for row in rows:
            o2, aliases, alternative = answers[row["case_id"]]
            composed = is_correct(row["answer_span"], o2, aliases)
            shortcut = alternative is not None and is_correct(row["answer_span"], alternative, ())
            counts["composed" if composed and not shortcut else "shortcut" if shortcut and not composed
                   else "neither"] += 1
        n = len(rows)
        entry: dict[str, Any] = {"n": n}
        entry.update({key: round(count / n, 4) if n else None for key, count in counts.items()})
        entry.update({f"n_{key}": count for key, count in counts.items()})
        out[condition] = entry
    return out


def world_metrics(items: pl.DataFrame, predictions: pl.DataFrame, training: dict[str, Any],
                  skipped: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracies under the `direct` condition, plus `by_condition` for every condition answered, both without the
    pathway items, which `pathways` reports apart. Single-hop accuracy counts each distinct prompt once (facts
    shared by several items are not weighted up); two-hop accuracy counts each item once."""
    pathway = is_pathway(items)
    pathway_items, regular_items = items.filter(pathway), items.filter(~pathway)
    regular = predictions.filter(~pl.col("case_id").is_in(pathway_items["case_id"].to_list()))
    direct = predictions.filter(pl.col("condition") == "direct")
    onehop = direct.filter(pl.col("kind") != "two_hop").unique(["prompt", "gold"])
    twohop = regular.filter((pl.col("condition") == "direct") & (pl.col("kind") == "two_hop")).join(
        regular_items.select("case_id", "split", "shortcut_planted", "composable"), on="case_id", how="left"
    )
    by_split = {split: accuracy(twohop.filter(pl.col("split") == split))
                for split in ("train_subject", "heldout_subject", "heldout_bridge")}
    conditions = by_condition(regular, regular_items)
    if skipped is not None:
        for condition in skipped.get("by_condition", {}):
            conditions.setdefault(condition, {"accuracy": None, "heldout_subjects_accuracy": None, "n": 0})
        conditions = {c: {**entry, **condition_entry(skipped, c)} for c, entry in conditions.items()}
    out = {
        "by_condition": conditions,
        "onehop_accuracy": accuracy(onehop),
        "twohop_accuracy": {
            "all": accuracy(twohop),
            "train_subjects": by_split["train_subject"],
            "heldout_subjects": by_split["heldout_subject"],
            "heldout_bridges": by_split["heldout_bridge"],
        },
        "shortcut_planted_accuracy": accuracy(twohop.filter(pl.col("shortcut_planted"))),
        "composed_accuracy": accuracy(twohop.filter(pl.col("composable"))),
        "n_items": items.height,
        "n_items_by_split": {
            split: int(twohop.filter(pl.col("split") == split).height)
            for split in ("train_subject", "heldout_subject", "heldout_bridge")
        },
        "n_shortcut_planted": int(twohop.filter(pl.col("shortcut_planted")).height),
        "n_pathway_items": pathway_items.height,
        "pathways": pathways(predictions, pathway_items),
        "n_onehop_prompts": onehop.height,
        "model_parameters": training["model_parameters"],
        "train_seconds": training["train_seconds"],
        "train_tokens_per_second": training.get("tokens_per_second"),
    }
    if skipped is not None:
        out["skipped"] = dict(skipped) or counts([])
    return out
