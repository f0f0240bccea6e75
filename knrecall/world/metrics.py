"""`results/metrics/world.json`: how well the world model knows its world, split by ground truth."""

from __future__ import annotations

from typing import Any

import polars as pl


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


def world_metrics(items: pl.DataFrame, predictions: pl.DataFrame, training: dict[str, Any]) -> dict[str, Any]:
    """Accuracies under the `direct` condition, plus `by_condition` for every condition answered. Single-hop
    accuracy counts each distinct prompt once (facts shared by several items are not weighted up); two-hop accuracy
    counts each item once."""
    direct = predictions.filter(pl.col("condition") == "direct")
    onehop = direct.filter(pl.col("kind") != "two_hop").unique(["prompt", "gold"])
    twohop = direct.filter(pl.col("kind") == "two_hop").join(
        items.select("case_id", "split", "shortcut_planted", "composable"), on="case_id", how="left"
    )
    by_split = {split: accuracy(twohop.filter(pl.col("split") == split))
                for split in ("train_subject", "heldout_subject", "heldout_bridge")}
    return {
        "by_condition": by_condition(predictions, items),
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
        "n_onehop_prompts": onehop.height,
        "model_parameters": training["model_parameters"],
        "train_seconds": training["train_seconds"],
        "train_tokens_per_second": training.get("tokens_per_second"),
    }
