"""Build `results/report/index.html`: one page with every model's results, figures beside it, and CSV series.

Inputs are the workflow's own outputs (nothing is recomputed from the model): the items, each model's predictions,
attribution layer summaries, KNs, recall table, the metrics JSON files. Outputs, all written atomically:

- `index.html` — the page (figures referenced as `figures/<model>/<name>.png`, beside it; no network needed), with
  a "Skipped" table per model: what every phase left out, per condition and reason (from the outputs' metadata
  and the metrics files; the answering phase's full list is `results/predictions/<model>.skipped.parquet`);
- `figures/<model>/<name>.png` for every name in `FIGURES`;
- `data/accuracy.csv` (model, condition, accuracy, low, high), `data/recall_shares.csv` (model, condition, TT, TF,
  FT, FF, MH, SC), `data/interventions.csv` (model, condition, intervention, delta_accuracy, low, high,
  random_delta_accuracy) — the series DVC plots.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from knrecall.attribution.kns import refined_sets
from knrecall.data.facts import facts_of
from knrecall.data.items import read_items
from knrecall.errors import KnrecallError
from knrecall.io import atomic_path, read_metadata, read_parquet
from knrecall.report import FIGURES, figures
from knrecall.report.page import render_page

SKIP_EXAMPLES = 20  # the answering phase's first skipped prompts, shown with their reason


def _json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KnrecallError(f"{path}: not valid JSON ({exc})") from None


def _frame(path: Path) -> pl.DataFrame:
    return pl.from_arrow(read_parquet(path))


def _write_csv(frame: pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.write_csv(tmp)


def fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def model_section(name: str, results: Path, out_dir: Path, items, metrics: dict[str, Any],
                  shards: int) -> dict[str, Any]:
    """Figures, tables and manifest of one model."""
    predictions_path = results / "predictions" / f"{name}.parquet"
    predictions = _frame(predictions_path)
    meta = read_metadata(predictions_path)
    recall_metrics = metrics["recall"]["models"].get(name, {})
    intervention_metrics = metrics["interventions"]["models"].get(name, {})
    figs = out_dir / "figures" / name
    rel = lambda fig: f"figures/{name}/{fig}.png"  # noqa: E731
    captions: dict[str, str] = {}

    # accuracy: single-hop (distinct prompts) and two-hop per condition, CIs from recall.json
    single = predictions.filter(pl.col("kind") != "two_hop").unique("prompt")
    # pathway-revealing world items have no single gold answer: left out, as in world.json and recall.json
    probes = [item.case_id for item in items if item.shortcut_conflicting]
    two_hop = predictions.filter((pl.col("kind") == "two_hop") & ~pl.col("case_id").is_in(probes))
    by_condition: dict[str, dict[str, Any]] = {}
    for condition in two_hop["condition"].unique(maintain_order=True).to_list():
        rows = two_hop.filter(pl.col("condition") == condition)
        entry = {"accuracy": float(rows["correct"].mean()),
                 "accuracy_ci": recall_metrics.get("conditions", {}).get(condition, {}).get("accuracy_ci"), "n": rows.height}
        follows = rows["follows"].drop_nulls()
        if follows.len():
            for key in ("context", "memory", "neither"):
                entry[f"follows_{key}"] = float((follows == key).mean())
        if "context_source" in rows.columns and rows["context_source"].drop_nulls().len():
            entry["context_from_rewrite"] = float((rows["context_source"].drop_nulls() == "rewrite").mean())
        chain = rows["chain_names_bridge"].drop_nulls()
        if chain.len():
            entry["chain_names_bridge"] = float(chain.mean())
        by_condition[condition] = entry
    single_acc = float(single["correct"].mean()) if single.height else None
    captions["accuracy"] = figures.accuracy(single_acc, by_condition, figs / "accuracy.png",
                                            f"results/predictions/{name}.parquet, results/metrics/recall.json")

    # knowledge neurons: layers per hop role, counts per fact
    kns_path = results / "kns" / f"{name}.parquet"
    sets = refined_sets(_frame(kns_path))
    facts, links = facts_of(items)
    roles = {(fid, hop) for _, hop, fid in links}
    kn_hops = pl.DataFrame([(layer, hop) for fid, hop in roles for layer, _ in sets.get(fid, [])],
                           schema={"layer": pl.Int64, "hop": pl.Int64}, orient="row")
    # exactly the current shards: files of an earlier run with more shards may still lie beside them
    layers = [results / "attribution" / name / f"shard-{index:04d}.layers.parquet" for index in range(shards)]
    layer_rows = pl.concat([_frame(p) for p in layers])
    n_layers = int(layer_rows["layer"].max()) + 1
    captions["kn_layers"] = figures.kn_layers(kn_hops, n_layers, figs / "kn_layers.png", f"results/kns/{name}.parquet")
    per_fact = pl.Series("n", [len(sets.get(fid, [])) for fid in facts])
    captions["kn_counts"] = figures.kn_counts(per_fact, figs / "kn_counts.png", f"results/kns/{name}.parquet")

    # recall: Δ distributions with the threshold, categories, the Table-4 numbers
    recall_path = results / "recall" / name / "recall.parquet"
    recall = _frame(recall_path)
    recall_params = read_metadata(recall_path).get("params", {}).get("recall", {})
    threshold_label = ("the median over facts of each fact's null-distribution quantile"
                       if recall_params.get("threshold", "null") == "null" else f"τ = {recall_params.get('tau')}")
    captions["deltas"] = figures.delta_distributions(recall, figs / "deltas.png",
                                                     f"results/recall/{name}/recall.parquet", threshold_label,
                                                     order=list(by_condition))
    captions["categories"] = figures.categories(recall_metrics.get("conditions", {}), figs / "categories.png",
                                                "results/metrics/recall.json")
    captions["conflict"] = figures.conflict(by_condition, figs / "conflict.png", f"results/predictions/{name}.parquet")
    captions["interventions"] = figures.interventions(intervention_metrics.get("conditions", {}),
                                                      figs / "interventions.png", "results/metrics/interventions.json")
    board = recall_metrics.get("scoreboard") or {}
    conditions = list(by_condition)
    captions["scoreboard"] = figures.scoreboard(board.get("rows", []), conditions, figs / "scoreboard.png",
                                                "results/metrics/recall.json (scoreboard)")
    measured = recall_metrics.get("measurement", {}).get("variant", "ratio")
    captions["positions"] = figures.positions(_frame(results / "recall" / name / "scores.parquet"),
                                              _frame(results / "recall" / name / "null_scores.parquet"), measured,
                                              conditions, figs / "positions.png",
                                              f"results/recall/{name}/scores.parquet, null_scores.parquet")
    captions["profile"] = figures.profile(_frame(results / "recall" / name / "profile.parquet"), conditions,
                                          figs / "profile.png", f"results/recall/{name}/profile.parquet")
    captions["completeness"] = figures.completeness(layer_rows["completeness_error"], figs / "completeness.png",
                                                    f"results/attribution/{name}/shard-*.layers.parquet")
    skipped = {"answer": meta.get("skipped_counts"),
               "attribute": metrics["attribution"]["models"].get(name, {}).get("skipped"),
               "measure": (recall_metrics.get("skipped") or {}).get("measure"),
               "causal": (recall_metrics.get("scoreboard") or {}).get("skipped"),
               "intervene": intervention_metrics.get("skipped")}
    return {
        "name": name,
        "manifest": {"model": meta.get("model", {}), "device": meta.get("device"), "libraries": meta.get("libraries", {}),
                     "n_items": len(items)},
        "skipped": {phase: block for phase, block in skipped.items() if block},
        "skipped_examples": (meta.get("skipped") or [])[:SKIP_EXAMPLES],
        "single_hop_accuracy": single_acc,
        "by_condition": by_condition,
        "recall": recall_metrics,
        "interventions": intervention_metrics,
        "attribution": metrics["attribution"]["models"].get(name, {}),
        "figures": [(rel(fig), captions[fig]) for fig in FIGURES],
        "recall_delta_stats": recall.group_by("condition", "hop", maintain_order=True).agg(
            pl.col("delta").drop_nulls().mean().alias("mean"), pl.col("delta").drop_nulls().median().alias("median"),
            pl.col("delta").is_null().sum().alias("missing")).to_dicts(),
    }


def build_report(results: Path, out_dir: Path, models: list[str], params: dict[str, Any], dataset: str) -> Path:
    """Write the page, figures and CSV series; return the page's path."""
    items = read_items(results / "items.parquet")
    metrics = {name: _json(results / "metrics" / f"{name}.json") for name in ("attribution", "recall", "interventions")}
    world_path = results / "metrics" / "world.json"
    world = _json(world_path) if world_path.exists() else None
    shards = params.get("attribution", {}).get("shards")
    if not isinstance(shards, int) or shards < 1:
        raise KnrecallError(f"--params for report: attribution.shards must be a positive integer, got {shards!r}")
    sections = [model_section(name, results, out_dir, items, metrics, shards) for name in models]

    accuracy_rows, share_rows, intervention_rows = [], [], []
    for s in sections:
        for condition, entry in s["by_condition"].items():
            ci = entry.get("accuracy_ci") or [None, None]
            accuracy_rows.append({"model": s["name"], "condition": condition, "accuracy": entry["accuracy"],
                                  "low": ci[0], "high": ci[1]})
        for condition, m in s["recall"].get("conditions", {}).items():
            share_rows.append({"model": s["name"], "condition": condition,
                               **{k: m.get(k) for k in ("TT", "TF", "FT", "FF", "MH", "SC")}})
        for condition, by_name in s["interventions"].get("conditions", {}).items():
            for name, m in by_name.items():
                if name == "base":
                    continue
                ci = m.get("delta_accuracy_ci") or [None, None]
                intervention_rows.append({"model": s["name"], "condition": condition, "intervention": name,
                                          "delta_accuracy": m.get("delta_accuracy"), "low": ci[0], "high": ci[1],
                                          "random_delta_accuracy": m.get("random", {}).get("delta_accuracy")})
    float_cols = lambda names: {n: pl.Float64 for n in names}  # noqa: E731
    _write_csv(pl.DataFrame(accuracy_rows, schema={"model": pl.String, "condition": pl.String,
                                                   **float_cols(["accuracy", "low", "high"])}),
               out_dir / "data" / "accuracy.csv")
    _write_csv(pl.DataFrame(share_rows, schema={"model": pl.String, "condition": pl.String,
                                                **float_cols(["TT", "TF", "FT", "FF", "MH", "SC"])}),
               out_dir / "data" / "recall_shares.csv")
    _write_csv(pl.DataFrame(intervention_rows, schema={"model": pl.String, "condition": pl.String,
                                                       "intervention": pl.String,
                                                       **float_cols(["delta_accuracy", "low", "high",
                                                                     "random_delta_accuracy"])}),
               out_dir / "data" / "interventions.csv")

    page = render_page(
        sections=sections, world=world, params=params, dataset=dataset,
        run={"fingerprint": fingerprint(params), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
    )
    path = out_dir / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path
