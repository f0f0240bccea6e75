"""Per-model attribution summary: what `results/metrics/attribution.json` reports for each model."""

from __future__ import annotations

from typing import Any

import polars as pl


def _r(value: Any, digits: int = 6):
    return None if value is None else round(float(value), digits)


def attribution_summary(layers: pl.DataFrame, kns: pl.DataFrame, info: dict[str, Any], model: str) -> dict[str, Any]:
    prompts = layers.group_by("fact_id", "paraphrase").agg(pl.col("seconds").first(), pl.col("n_answer_tokens").first())
    facts = layers.select("fact_id").unique()
    refined = kns.filter(pl.col("level") == "refined")
    coarse = kns.filter(pl.col("level") == "coarse")
    per_fact = facts.join(refined.group_by("fact_id").agg(pl.len().alias("n")), on="fact_id", how="left").fill_null(0)
    per_prompt = prompts.join(coarse.group_by("fact_id", "paraphrase").agg(pl.len().alias("n")),
                              on=["fact_id", "paraphrase"], how="left").fill_null(0)
    abs_error = (layers["attribution_sum"] - layers["target_delta"]).abs()
    by_layer = refined.group_by("layer").agg(pl.len().alias("n")).sort("layer")
    return {
        "model": model,
        "prompts_attributed": prompts.height,
        "facts": facts.height,
        "multi_token_prompts": int((prompts["n_answer_tokens"] > 1).sum()),
        "completeness_error_median": _r(layers["completeness_error"].median()),
        "completeness_error_p95": _r(layers["completeness_error"].quantile(0.95, "nearest")),
        "completeness_abs_error_median": _r(abs_error.median(), 9),
        "completeness_abs_error_p95": _r(abs_error.quantile(0.95, "nearest"), 9),
        "seconds_per_prompt": _r(prompts["seconds"].mean(), 5),
        "coarse_kns_per_prompt_mean": _r(per_prompt["n"].mean(), 3),
        "kns_per_fact": {
            "mean": _r(per_fact["n"].mean(), 3),
            "median": _r(per_fact["n"].median(), 3),
            "min": int(per_fact["n"].min()),
            "max": int(per_fact["n"].max()),
            "facts_without_kns": int((per_fact["n"] == 0).sum()),
        },
        "refined_kns_by_layer": {str(row["layer"]): row["n"] for row in by_layer.iter_rows(named=True)},
        "thresholds": info,
    }
