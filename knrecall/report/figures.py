"""The report's figures: one function per figure, tables in, a PNG file out (matplotlib, Agg backend).

Every function returns the figure's caption, which says what it shows and which file the numbers come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import polars as pl  # noqa: E402

CATEGORY_COLOURS = {"TT": "#2b8a3e", "TF": "#74b816", "FT": "#e8590c", "FF": "#868e96"}
HOP_COLOURS = {1: "#1c7ed6", 2: "#ae3ec9"}


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def accuracy(single_hop: float | None, by_condition: dict[str, dict[str, Any]], path: Path, source: str) -> str:
    labels = ["single-hop"] + list(by_condition)
    values = [single_hop or 0.0] + [by_condition[c]["accuracy"] or 0.0 for c in by_condition]
    errors = [(0.0, 0.0)] + [
        (v - (by_condition[c].get("accuracy_ci") or [v, v])[0], (by_condition[c].get("accuracy_ci") or [v, v])[1] - v)
        for c, v in zip(by_condition, values[1:])]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(labels, values, color=["#495057"] + ["#1c7ed6"] * len(by_condition),
           yerr=list(zip(*errors)) if errors else None, capsize=3)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    for i, v in enumerate(values):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    _save(fig, path)
    return (f"Accuracy on the single-hop paraphrases (each distinct prompt once) and on the two-hop questions under each "
            f"prompt condition, with 95 % bootstrap CIs for the two-hop bars. Source: {source}.")


def kn_layers(kn_hops: pl.DataFrame, n_layers: int, path: Path, source: str) -> str:
    """`kn_hops`: layer, hop (1 or 2), one row per refined KN of a fact playing that hop."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.4
    for offset, hop in ((-width / 2, 1), (width / 2, 2)):
        counts = kn_hops.filter(pl.col("hop") == hop).group_by("layer").len()
        by_layer = dict(zip(counts["layer"].to_list(), counts["len"].to_list()))
        ax.bar([layer + offset for layer in range(n_layers)], [by_layer.get(layer, 0) for layer in range(n_layers)],
               width=width, color=HOP_COLOURS[hop], label=f"hop {hop} facts")
    ax.set_xticks(range(n_layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("refined KNs")
    ax.legend(fontsize=8)
    _save(fig, path)
    return (f"Where the knowledge neurons sit: refined KNs per layer, for facts used as hop 1 and as hop 2 (a fact "
            f"counts once per role it plays). Source: {source}.")


def kn_counts(per_fact: pl.Series, path: Path, source: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    top = int(per_fact.max() or 0)
    ax.hist(per_fact.to_list(), bins=range(0, top + 2), color="#495057")
    ax.set_xlabel("refined KNs per fact")
    ax.set_ylabel("facts")
    _save(fig, path)
    return f"Refined knowledge neurons per fact ({per_fact.len()} facts). Source: {source}."


def delta_distributions(recall: pl.DataFrame, path: Path, source: str, threshold_label: str,
                        order: list[str] | None = None) -> str:
    """`recall`: condition, hop, delta, threshold (the recall.parquet rows); `order`: the conditions' order."""
    present = recall["condition"].unique(maintain_order=True).to_list()
    conditions = [c for c in order or [] if c in present] + [c for c in present if c not in (order or [])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, hop in zip(axes, (1, 2)):
        rows = recall.filter((pl.col("hop") == hop) & pl.col("delta").is_not_null())
        data = [rows.filter(pl.col("condition") == c)["delta"].to_list() or [0.0] for c in conditions]
        parts = ax.boxplot(data, showfliers=False, patch_artist=True)
        for box in parts["boxes"]:
            box.set_facecolor(HOP_COLOURS[hop])
            box.set_alpha(0.5)
        for i, c in enumerate(conditions, start=1):
            thresholds = rows.filter(pl.col("condition") == c)["threshold"].drop_nulls()
            if thresholds.len():
                ax.hlines(float(thresholds.median()), i - 0.4, i + 0.4, colors="#c92a2a", linestyles="dashed")
        ax.axhline(1.0, color="#868e96", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(1, len(conditions) + 1), conditions, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"Δ{hop} (hop {hop})", fontsize=10)
    axes[0].set_ylabel("KN score Δ")
    _save(fig, path)
    return (f"KN activation scores Δ1 and Δ2 per prompt condition (boxes: quartiles, whiskers 1.5 IQR, outliers "
            f"hidden); dashed red: the recall threshold ({threshold_label}); dotted: Δ = 1 (the single-hop baseline "
            f"for the ratio score). Source: {source}.")


def categories(conditions: dict[str, dict[str, Any]], path: Path, source: str) -> str:
    names = list(conditions)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    bottom = [0.0] * len(names)
    for cat, colour in CATEGORY_COLOURS.items():
        values = [conditions[c].get(cat) or 0.0 for c in names]
        ax.bar(names, values, bottom=bottom, color=colour, label=cat)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of items")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    ax.tick_params(axis="x", labelsize=8)
    _save(fig, path)
    return ("TT / TF / FT / FF shares per condition: both hops recalled (T) or not (F) × the answer right (T) or "
            f"wrong (F); FT is a correct answer without recall (a shortcut). Source: {source}.")


def conflict(by_condition: dict[str, dict[str, Any]], path: Path, source: str) -> str:
    names = [c for c in by_condition if c.startswith("conflict")]
    fig, ax = plt.subplots(figsize=(6, 3))
    bottom = [0.0] * len(names)
    for key, colour in (("follows_context", "#e8590c"), ("follows_memory", "#2b8a3e"), ("follows_neither", "#adb5bd")):
        values = [by_condition[c].get(key) or 0.0 for c in names]
        ax.barh(names, values, left=bottom, color=colour, label=key.replace("follows_", "follows "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, 1.25))
    _save(fig, path)
    return ("Conflicting context: how often the answer follows the (counterfactual) context, the model's memory (the "
            f"true answer) or neither. Source: {source}.")


def interventions(conditions: dict[str, dict[str, Any]], path: Path, source: str) -> str:
    names = list(conditions)
    kinds = [k for k in next(iter(conditions.values()), {}) if k != "base"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * max(len(names), 1), 3.8), sharey=True, squeeze=False)
    for ax, condition in zip(axes[0], names):
        entry = conditions[condition]
        ys = range(len(kinds))
        for dy, key, colour, label in ((-0.18, None, "#1c7ed6", "KNs"), (0.18, "random", "#adb5bd", "random")):
            values, lows, highs = [], [], []
            for kind in kinds:
                m = entry.get(kind, {})
                m = m.get(key, {}) if key else m
                v = m.get("delta_accuracy") or 0.0
                low, high = m.get("delta_accuracy_ci") or [v, v]
                values.append(v)
                lows.append(v - low)
                highs.append(high - v)
            ax.barh([y + dy for y in ys], values, height=0.34, color=colour, xerr=[lows, highs], capsize=2,
                    label=label)
        ax.axvline(0, color="#212529", linewidth=0.8)
        ax.set_yticks(list(ys), kinds, fontsize=8)
        ax.set_title(condition, fontsize=9)
        ax.set_xlabel("Δ accuracy vs base")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)
    return ("Interventions: change in two-hop accuracy against the unmodified run, for enhancing (×k) and suppressing "
            "each hop's KNs, and for layer-matched random neurons (mean over control seeds), with paired bootstrap "
            f"95 % CIs. Source: {source}.")


def completeness(errors: pl.Series, path: Path, source: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    clipped = errors.drop_nulls().clip(0, 2).to_list()
    ax.hist(clipped, bins=50, color="#495057")
    ax.set_yscale("log")
    ax.set_xlabel("relative completeness error (clipped at 2)")
    ax.set_ylabel("prompt × layer")
    _save(fig, path)
    return ("IG diagnostics: |Σ attributions − (f(w̄) − f(0))| / |f(w̄) − f(0)| per prompt and layer; near 0 means "
            f"the quadrature integrated the gradient path well. Source: {source}.")
