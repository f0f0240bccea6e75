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


SCOREBOARD_FIGURES = (("specificity_auc", "specificity AUC", 0.5), ("causal_spearman", "causal Spearman", 0.0),
                      ("break_auc", "break AUC", 0.5), ("pathway_auc", "pathway AUC", 0.5))


def scoreboard(rows: list[dict[str, Any]], conditions: list[str], path: Path, source: str) -> str:
    """Heatmaps of the scoreboard: variant × position (rows) against condition × hop (columns), one per figure."""
    keys = sorted({(r["variant"], r["position"]) for r in rows})
    columns = [(c, h) for c in conditions for h in (1, 2)]
    index = {(r["variant"], r["position"], r["condition"], r["hop"]): r for r in rows}
    fig, axes = plt.subplots(1, len(SCOREBOARD_FIGURES), figsize=(4.3 * len(SCOREBOARD_FIGURES), 0.32 * len(keys) + 2.2),
                             sharey=True)
    for ax, (name, title, reference) in zip(axes, SCOREBOARD_FIGURES):
        values = [[index.get((v, p, c, h), {}).get(name) for c, h in columns] for v, p in keys]
        grid = [[float("nan") if x is None else x - reference for x in row] for row in values]
        span = 0.5 if name.endswith("auc") else 1.0
        ax.imshow(grid, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
        for i, row in enumerate(values):
            for j, x in enumerate(row):
                ax.text(j, i, "–" if x is None else f"{x:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(columns)), [f"{c} h{h}" for c, h in columns], rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(keys)), [f"{v} @ {p}" for v, p in keys], fontsize=7)
        ax.set_title(f"{title} (reference {reference:g})", fontsize=9)
    _save(fig, path)
    return ("The validation scoreboard: each KN score variant × position (rows) under each condition and hop "
            "(columns). Specificity AUC: an item's own Δ against the same KN set on unrelated items (0.5: none); "
            "causal Spearman: rank correlation of Δ with the drop in gold probability when the hop's KNs are "
            "suppressed (0: none); break AUC: Δ of items whose answer breaks under that suppression against items "
            "whose answer survives; pathway AUC (world only): Δ of pathway-revealing items answered by composition "
            "against those answered by the planted conflicting shortcut. Blue: above the reference, red: below; "
            f"–: undefined. Source: {source}.")


def positions(scores: pl.DataFrame, null_scores: pl.DataFrame, variant: str, conditions: list[str], path: Path,
              source: str) -> str:
    """Median Δ (variant `variant`) with its interquartile range at each named position, items against null."""
    names = ("step", "last_prompt", "subject_last")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, hop in zip(axes, (1, 2)):
        own = scores.filter((pl.col("hop") == hop) & (pl.col("variant") == variant))
        facts = own["fact_id"].unique()
        null = null_scores.filter((pl.col("variant") == variant) & pl.col("fact_id").is_in(facts.implode()))
        for k, (frame, label, marker) in enumerate(((own, "items", "o"), (null, "null", "x"))):
            for p, position in enumerate(names):
                xs, med, low, high = [], [], [], []
                for i, c in enumerate(conditions):
                    d = frame.filter((pl.col("condition") == c) & (pl.col("position") == position))["delta"].drop_nulls()
                    if d.len():
                        xs.append(i + (p - 1) * 0.22 + (k - 0.5) * 0.08)
                        med.append(d.median())
                        low.append(d.median() - d.quantile(0.25))
                        high.append(d.quantile(0.75) - d.median())
                ax.errorbar(xs, med, yerr=[low, high], fmt=marker, markersize=4, capsize=2, color=f"C{p}",
                            alpha=1.0 if k == 0 else 0.5, label=f"{position} ({label})")
        ax.set_xticks(range(len(conditions)), conditions, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"Δ{hop} ({variant}) by position", fontsize=10)
    axes[0].set_ylabel("KN score Δ (median, IQR)")
    axes[1].legend(fontsize=6, ncol=2)
    _save(fig, path)
    return (f"The {variant} KN score of each hop read at the reasoning step, the last prompt token and the "
            f"subject's last token: median and interquartile range over items (circles) and over the null samples "
            f"(crosses: the same fact's KNs on items that do not involve it). Source: {source}.")


def profile(table: pl.DataFrame, conditions: list[str], path: Path, source: str, window: int = 24) -> str:
    """Mean projection Δ by prompt offset (0 = last prompt token) per layer group, items (solid) vs null (dashed)."""
    present = [c for c in conditions if c in table["condition"].unique().to_list()] or conditions[:1]
    fig, axes = plt.subplots(2, len(present), figsize=(2.6 * len(present) + 1, 5.2), sharex=True, sharey="row",
                             squeeze=False)
    groups = table.select("layer_group", "layers").unique().sort("layer_group").rows()
    for col, condition in enumerate(present):
        for row, hop in enumerate((1, 2)):
            ax = axes[row][col]
            here = table.filter((pl.col("condition") == condition) & (pl.col("hop") == hop)
                                & (pl.col("offset") > -window))
            for g, layers in groups:
                for kind, style in (("item", "-"), ("null", "--")):
                    line = (here.filter((pl.col("layer_group") == g) & (pl.col("kind") == kind))
                            .group_by("offset").agg(pl.col("delta").drop_nans().mean()).sort("offset"))
                    ax.plot(line["offset"], line["delta"], style, color=f"C{g}", linewidth=1,
                            label=f"layers {layers}" if kind == "item" else None)
            subject = here.filter(pl.col("is_subject_last"))["offset"]
            if subject.len():
                ax.axvline(float(subject.median()), color="#868e96", linewidth=0.8, linestyle=":")
            ax.set_title(f"{condition}, hop {hop}", fontsize=8)
    axes[0][0].set_ylabel("Δ1 (projection)")
    axes[1][0].set_ylabel("Δ2 (projection)")
    for ax in axes[1]:
        ax.set_xlabel("position − last prompt token", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    _save(fig, path)
    return ("Per-position profile of the sampled items: the projection KN score (Σ a·b / Σ b² over the KNs of one "
            "layer group) at every prompt position (0 = the last prompt token), mean over items; solid: the item's "
            "own hop KNs, dashed: a null (the KNs of another fact of the same hop, on the same prompt); dotted: the "
            f"median position of the subject's last token. Source: {source}.")
