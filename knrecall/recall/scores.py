"""KN activation scores, null thresholds, recall decisions and categories (DESIGN.md §4), as pure polars functions.

Pipeline (one row = one record; every function validates its input and raises `KnrecallError` naming the problem):

1. `kn_scores(activations, baselines, kn_sets)` -> per (case_id, condition, hop): Δ_j and KN counts, by one of the
   score VARIANTS (`mode`):
   - "ratio" (the paper's reading): mean_{i∈K_j} a_i / b_i — fragile: one neuron with a baseline near zero, or a
     negative one (gated FFN inputs can be negative), can dominate or flip the mean;
   - "difference": mean_{i∈K_j} (a_i − b_i) (0 = the single-hop strength; in activation units, not scale-free);
   - "projection": Σ_i a_i b_i / Σ_i b_i² — the least-squares coefficient of the item's KN pattern on the
     single-hop pattern (1 = the single-hop pattern at full strength, 0 = orthogonal to it); dominated by the
     neurons with large |b_i|, so tiny baselines cannot blow it up;
   - "ratio_of_sums": Σ_i a_i / Σ_i b_i (1 = the same total activation); fragile only when the baselines nearly
     cancel.
   `kn_score_table(...)` gives every variant at once, for several activation columns (positions), in long form.
2. `null_pairs(item_facts)` lists, per fact, other items that do not involve that fact (either hop); the caller
   measures the fact's KN set on those items' two-hop prompts, `null_deltas(...)` turns those activations into Δ with
   the same formula, and `null_thresholds(...)` takes the quantile (95th percentile by default) per (fact, condition).
3. `recall_decisions(scores, thresholds=... | fixed_tau=...)` adds `recalled` = Δ > threshold (strict).
4. `categories(decisions, correct)` -> per (case_id, condition): TT/TF/FT/FF (first letter: both hops recalled,
   second: answer correct), or "no_kns" / "undecided" (reported, never dropped).
5. `category_shares(cats)` -> per condition: counts, shares, MH = TT/(TT+FT), SC = FT/(TT+FT).

Design decisions:

* Empty KN sets. `kn_sets` carries `n_kns` per (case_id, hop) (and optionally per condition); every key of it
  appears in the output, an empty set with delta null and n_kns 0. Its other columns (e.g. fact_id) are carried
  through. Activation rows must match the KN set exactly: one row per KN, no extra keys, no duplicates.
* Tiny baselines (ratio mode). A neuron with |b_i| < eps (default 1e-8) is dropped from that Δ and counted in
  `n_dropped`; `n_used` is the number of neurons averaged. If every neuron of a non-empty set is dropped, delta is
  null with n_kns > 0 (such an item gets category "undecided"). In the other modes nothing is dropped (n_used =
  n_kns); projection is null when Σ b_i² < eps², ratio_of_sums when |Σ b_i| < eps.
* Null or NaN activations / baselines are errors (never averaged silently).
* Null thresholds: null delta_null values (empty or all-dropped sets) are excluded; `n_null` counts the values used;
  with none the threshold is null. The quantile uses linear interpolation (numpy's default, type 7).
* Recall is strict: Δ > threshold. A null delta or a null threshold gives recalled null.
* Categories: an item with a hop whose KN set is empty is "no_kns"; otherwise one with a hop whose recalled is null
  (all baselines dropped, or no null sample for the fact) is "undecided". Shares and MH/SC are over TT/TF/FT/FF only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import polars as pl

from knrecall.errors import KnrecallError

MODES = ("ratio", "difference", "projection", "ratio_of_sums")
# where a KN score is read in the two-hop sequence -> the activations table's column (knrecall.recall.measure)
POSITION_COLUMNS = {"step": "activation", "last_prompt": "activation_last_prompt",
                    "subject_last": "activation_subject_last"}
POSITIONS = tuple(POSITION_COLUMNS)
PAPER_READING = ("ratio", "step")  # the paper's Δ: mean of ratios at the reasoning step
CATEGORIES = ("TT", "TF", "FT", "FF")
NO_KNS = "no_kns"
UNDECIDED = "undecided"
DEFAULT_EPS = 1e-8
NEURON_COLS = ["layer", "neuron"]


def _require(df: pl.DataFrame, cols: Sequence[str], name: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KnrecallError(f"{name}: missing column(s) {missing}; has {df.columns}")


def _no_duplicates(df: pl.DataFrame, cols: Sequence[str], name: str) -> None:
    dup = df.group_by(cols).len().filter(pl.col("len") > 1)
    if dup.height:
        raise KnrecallError(f"{name}: {dup.height} duplicate row(s) for key {list(cols)}, "
                            f"e.g. {dup.drop('len').row(0, named=True)}")


def _finite(df: pl.DataFrame, col: str, name: str) -> None:
    bad = df.filter(pl.col(col).is_null() | pl.col(col).cast(pl.Float64).is_nan())
    if bad.height:
        raise KnrecallError(f"{name}: {bad.height} null/NaN value(s) in '{col}', e.g. {bad.row(0, named=True)}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise KnrecallError(f"unknown score mode {mode!r}; choose one of {list(MODES)}")


def _variant_aggregates(joined: pl.DataFrame, key_cols: list[str], value_col: str, eps: float) -> pl.DataFrame:
    """Per key: every variant's Δ (columns named after MODES), n_used (ratio's count) and _n_rows."""
    a = pl.col(value_col).cast(pl.Float64)
    b = pl.col("baseline").cast(pl.Float64)
    used = b.abs() >= eps
    agg = joined.group_by(key_cols).agg(
        pl.when(used).then(a / b).otherwise(None).mean().alias("ratio"),  # mean ignores the dropped neurons' nulls
        (a - b).mean().alias("difference"),
        (a * b).sum().alias("_ab"), (b * b).sum().alias("_bb"), a.sum().alias("_a"), b.sum().alias("_b"),
        pl.len().cast(pl.Int64).alias("_n_rows"),
        used.sum().cast(pl.Int64).alias("n_used"),
    )
    return agg.with_columns(
        pl.when(pl.col("_bb") >= eps * eps).then(pl.col("_ab") / pl.col("_bb")).otherwise(None).alias("projection"),
        pl.when(pl.col("_b").abs() >= eps).then(pl.col("_a") / pl.col("_b")).otherwise(None).alias("ratio_of_sums"),
    ).drop("_ab", "_bb", "_a", "_b")


def _joined(activations: pl.DataFrame, baselines: pl.DataFrame, keys: pl.DataFrame, key_cols: list[str],
            base_key_cols: list[str], value_cols: list[str], eps: float) -> pl.DataFrame:
    """The activation rows (key, neuron, value columns) checked against the KN sets and joined with baselines."""
    if eps < 0:
        raise KnrecallError(f"eps must be >= 0, got {eps}")
    _require(activations, key_cols + NEURON_COLS + value_cols, "activations")
    _require(baselines, base_key_cols + NEURON_COLS + ["baseline"], "baselines")
    _require(keys, key_cols + ["n_kns"], "KN sets")
    _no_duplicates(keys, key_cols, "KN sets")
    _no_duplicates(activations, key_cols + NEURON_COLS, "activations")
    _no_duplicates(baselines, base_key_cols + NEURON_COLS, "baselines")
    for col in value_cols:
        _finite(activations, col, "activations")
    _finite(baselines, "baseline", "baselines")
    bad_n = keys.filter(pl.col("n_kns").is_null() | (pl.col("n_kns") < 0))
    if bad_n.height:
        raise KnrecallError(f"KN sets: null or negative n_kns, e.g. {bad_n.row(0, named=True)}")
    acts = activations.select(key_cols + NEURON_COLS + value_cols)
    extra = acts.join(keys.select(key_cols), on=key_cols, how="anti")
    if extra.height:
        raise KnrecallError(f"activations: {extra.height} row(s) for a key not in the KN sets, "
                            f"e.g. {extra.row(0, named=True)}")
    joined = acts.join(baselines.select(base_key_cols + NEURON_COLS + ["baseline"]),
                       on=base_key_cols + NEURON_COLS, how="left")
    no_base = joined.filter(pl.col("baseline").is_null())
    if no_base.height:
        raise KnrecallError(f"baselines: no baseline for {no_base.height} activation row(s), "
                            f"e.g. {no_base.drop('baseline').row(0, named=True)}")
    return joined


def _with_counts(keys: pl.DataFrame, agg: pl.DataFrame, key_cols: list[str], n_used_all: bool) -> pl.DataFrame:
    """keys left-joined with the aggregates; checks that every key has n_kns rows; n_used / n_dropped."""
    out = keys.join(agg, on=key_cols, how="left").with_columns(
        pl.col("_n_rows").fill_null(0), pl.col("n_used").fill_null(0))
    mismatch = out.filter(pl.col("_n_rows") != pl.col("n_kns"))
    if mismatch.height:
        r = mismatch.row(0, named=True)
        raise KnrecallError(f"activations: {mismatch.height} key(s) whose activation row count differs from "
                            f"n_kns, e.g. {({c: r[c] for c in key_cols})}: {r['_n_rows']} rows, n_kns {r['n_kns']}")
    if n_used_all:
        out = out.with_columns(pl.col("_n_rows").alias("n_used"))
    return out.with_columns(pl.col("n_kns").cast(pl.Int64),
                            (pl.col("_n_rows") - pl.col("n_used")).alias("n_dropped")).drop("_n_rows")


def kn_score_table(activations: pl.DataFrame, baselines: pl.DataFrame, keys: pl.DataFrame, key_cols: list[str],
                   base_key_cols: list[str], positions: dict[str, str], eps: float = DEFAULT_EPS) -> pl.DataFrame:
    """Every score variant at every position, long: key_cols, variant, position, delta, n_kns, n_used, n_dropped,
    then the keys' carried columns. `positions` maps a position name to its activation column. `keys` as in
    `_deltas` (key_cols + n_kns). Empty sets give null deltas."""
    joined = _joined(activations, baselines, keys, key_cols, base_key_cols, list(positions.values()), eps)
    frames = []
    for position, col in positions.items():
        agg = _variant_aggregates(joined, key_cols, col, eps)
        for variant in MODES:
            wide = _with_counts(keys, agg.select(key_cols + [variant, "_n_rows", "n_used"]), key_cols,
                                variant != "ratio")
            frames.append(wide.rename({variant: "delta"}).with_columns(
                pl.when(pl.col("n_used") > 0).then(pl.col("delta")).otherwise(None).cast(pl.Float64),
                pl.lit(variant).alias("variant"), pl.lit(position).alias("position")))
    out = pl.concat(frames, how="vertical_relaxed")
    first = key_cols + ["variant", "position", "delta", "n_kns", "n_used", "n_dropped"]
    return out.select(first + [c for c in out.columns if c not in first]).sort(key_cols + ["variant", "position"])


def _deltas(activations: pl.DataFrame, baselines: pl.DataFrame, keys: pl.DataFrame, key_cols: list[str],
            base_key_cols: list[str], mode: str, eps: float, out_col: str) -> pl.DataFrame:
    """Δ per key of `keys` (key_cols + n_kns [+ carried columns]); see the module docstring."""
    _check_mode(mode)
    joined = _joined(activations, baselines, keys, key_cols, base_key_cols, ["activation"], eps)
    agg = _variant_aggregates(joined, key_cols, "activation", eps).select(key_cols + [mode, "_n_rows", "n_used"])
    out = _with_counts(keys, agg.rename({mode: out_col}), key_cols, mode != "ratio").with_columns(
        pl.when(pl.col("n_used") > 0).then(pl.col(out_col)).otherwise(None).cast(pl.Float64).alias(out_col))
    first = key_cols + [out_col, "n_kns", "n_used", "n_dropped"]
    return out.select(first + [c for c in out.columns if c not in first]).sort(key_cols)


def _with_conditions(kn_sets: pl.DataFrame, conditions: Sequence[str] | None, activations: pl.DataFrame,
                     name: str) -> pl.DataFrame:
    if "condition" in kn_sets.columns:
        if conditions is not None:
            kn_sets = kn_sets.filter(pl.col("condition").is_in(list(conditions)))
        return kn_sets
    if conditions is None:
        _require(activations, ["condition"], "activations")
        conditions = activations.get_column("condition").unique().sort().to_list()
    if not conditions:
        raise KnrecallError(f"{name}: no conditions (pass conditions=[...] or a 'condition' column)")
    return kn_sets.join(pl.DataFrame({"condition": list(conditions)}, schema={"condition": pl.String}),
                        how="cross")


def kn_scores(activations: pl.DataFrame, baselines: pl.DataFrame, kn_sets: pl.DataFrame,
              conditions: Sequence[str] | None = None, mode: str = "ratio", eps: float = DEFAULT_EPS) -> pl.DataFrame:
    """KN activation score Δ per (case_id, condition, hop).

    activations: case_id, condition, hop, layer, neuron, activation (a_i; one row per KN of that item's hop).
    baselines: case_id, hop, layer, neuron, baseline (b_i).
    kn_sets: case_id, hop, n_kns [, condition] [, any carried column such as fact_id]; one row per expected key.
      Without a condition column it is crossed with `conditions` (default: the conditions present in activations;
      pass them explicitly so a condition is never lost). With one, `conditions` (if given) filters it.
    Returns case_id, condition, hop, delta (Float64, null for an empty or all-dropped set), n_kns, n_used,
    n_dropped, then kn_sets' carried columns; sorted by key.
    """
    keys = _with_conditions(kn_sets, conditions, activations, "kn_sets")
    return _deltas(activations, baselines, keys, ["case_id", "condition", "hop"], ["case_id", "hop"],
                   mode, eps, "delta")


def null_pairs(item_facts: pl.DataFrame, rng_seed: int = 0, max_per_fact: int | None = None) -> pl.DataFrame:
    """For each fact, the items that do not involve it (in either hop): rows (fact_id, case_id), sorted.

    item_facts: case_id, hop, fact_id. With `max_per_fact`, a uniform sample without replacement of that many
    items per fact, drawn by `random.Random(f"{rng_seed}:{fact_id}")` from the sorted candidates, so a fact's sample
    depends only on the seed, the fact and the candidate set (not on the other facts or on row order).
    A fact involved in every item gets no rows.
    """
    _require(item_facts, ["case_id", "hop", "fact_id"], "item_facts")
    if max_per_fact is not None and max_per_fact < 0:
        raise KnrecallError(f"max_per_fact must be >= 0, got {max_per_fact}")
    links = item_facts.select("fact_id", "case_id").unique()
    involved: dict = {}
    for fact, case in links.iter_rows():
        involved.setdefault(fact, set()).add(case)
    all_cases = sorted(item_facts.get_column("case_id").unique().to_list())
    fact_ids, case_ids = [], []
    for fact in sorted(involved):
        candidates = [c for c in all_cases if c not in involved[fact]]
        if max_per_fact is not None and len(candidates) > max_per_fact:
            candidates = sorted(random.Random(f"{rng_seed}:{fact}").sample(candidates, max_per_fact))
        fact_ids += [fact] * len(candidates)
        case_ids += candidates
    schema = {"fact_id": item_facts.schema["fact_id"], "case_id": item_facts.schema["case_id"]}
    return pl.DataFrame({"fact_id": fact_ids, "case_id": case_ids}, schema=schema)


def null_deltas(activations: pl.DataFrame, baselines: pl.DataFrame, fact_kn_sets: pl.DataFrame,
                pairs: pl.DataFrame, conditions: Sequence[str] | None = None, mode: str = "ratio",
                eps: float = DEFAULT_EPS) -> pl.DataFrame:
    """Δ of a fact's KN set on other items' two-hop prompts (the null sample), same formula as `kn_scores`.

    activations: fact_id, case_id, condition, layer, neuron, activation (the fact's KNs read on item case_id).
    baselines: fact_id, layer, neuron, baseline (over the fact's own paraphrase prompts).
    fact_kn_sets: fact_id, n_kns. pairs: fact_id, case_id (from `null_pairs`); crossed with `conditions`
      (default: those in activations).
    Returns fact_id, case_id, condition, delta_null, n_kns, n_used, n_dropped.
    """
    _require(fact_kn_sets, ["fact_id", "n_kns"], "fact_kn_sets")
    _require(pairs, ["fact_id", "case_id"], "pairs")
    _no_duplicates(fact_kn_sets, ["fact_id"], "fact_kn_sets")
    keys = pairs.select("fact_id", "case_id").join(fact_kn_sets.select("fact_id", "n_kns"), on="fact_id", how="left")
    missing = keys.filter(pl.col("n_kns").is_null())
    if missing.height:
        raise KnrecallError(f"fact_kn_sets: no KN set for fact(s) {missing.get_column('fact_id').unique().to_list()}")
    keys = _with_conditions(keys, conditions, activations, "pairs")
    return _deltas(activations, baselines, keys, ["fact_id", "case_id", "condition"], ["fact_id"],
                   mode, eps, "delta_null")


def null_thresholds(null_deltas: pl.DataFrame, quantile: float = 0.95) -> pl.DataFrame:
    """Per (fact_id, condition): `threshold` = the `quantile` of delta_null (linear interpolation) and `n_null`.

    Null delta_null values are excluded (n_null counts the rest); no values -> threshold null, n_null 0.
    """
    if not 0.0 <= quantile <= 1.0:
        raise KnrecallError(f"quantile must be in [0, 1], got {quantile}")
    _require(null_deltas, ["fact_id", "condition", "delta_null"], "null_deltas")
    nan = null_deltas.filter(pl.col("delta_null").cast(pl.Float64).is_nan())
    if nan.height:
        raise KnrecallError(f"null_deltas: NaN delta_null, e.g. {nan.row(0, named=True)}")
    d = pl.col("delta_null").cast(pl.Float64)
    return (null_deltas.group_by("fact_id", "condition")
            .agg(d.drop_nulls().quantile(quantile, interpolation="linear").alias("threshold"),
                 d.drop_nulls().len().cast(pl.Int64).alias("n_null"))
            .sort("fact_id", "condition"))


def recall_decisions(scores: pl.DataFrame, thresholds: pl.DataFrame | None = None, fixed_tau: float | None = None,
                     item_facts: pl.DataFrame | None = None) -> pl.DataFrame:
    """Add `threshold` and `recalled` (delta > threshold; null when delta or threshold is null) to `scores`.

    Exactly one of `thresholds` (fact_id, condition, threshold, from `null_thresholds`) or `fixed_tau`.
    With thresholds, scores need a fact_id column (carried from kn_sets) or `item_facts` (case_id, hop, fact_id)
    to attach it. A (fact, condition) absent from `thresholds` is an error; a null threshold gives recalled null.
    """
    if (thresholds is None) == (fixed_tau is None):
        raise KnrecallError("recall_decisions: give exactly one of thresholds= or fixed_tau=")
    _require(scores, ["case_id", "condition", "hop", "delta"], "scores")
    if fixed_tau is not None:
        out = scores.with_columns(pl.lit(float(fixed_tau), dtype=pl.Float64).alias("threshold"))
    else:
        _require(thresholds, ["fact_id", "condition", "threshold"], "thresholds")
        _no_duplicates(thresholds, ["fact_id", "condition"], "thresholds")
        if "fact_id" not in scores.columns:
            if item_facts is None:
                raise KnrecallError("recall_decisions: scores have no fact_id column; pass item_facts")
            _require(item_facts, ["case_id", "hop", "fact_id"], "item_facts")
            _no_duplicates(item_facts, ["case_id", "hop"], "item_facts")
            scores = scores.join(item_facts.select("case_id", "hop", "fact_id"), on=["case_id", "hop"], how="left")
            nofact = scores.filter(pl.col("fact_id").is_null())
            if nofact.height:
                raise KnrecallError(f"item_facts: no fact for {nofact.height} (case_id, hop), "
                                    f"e.g. {nofact.select('case_id', 'hop').row(0, named=True)}")
        if "threshold" in scores.columns:
            scores = scores.drop("threshold")
        th = thresholds.select("fact_id", "condition", pl.col("threshold").cast(pl.Float64), pl.lit(True).alias("_th"))
        out = scores.join(th, on=["fact_id", "condition"], how="left")
        missing = out.filter(pl.col("_th").is_null())
        if missing.height:
            raise KnrecallError(f"thresholds: none for {missing.height} score row(s), e.g. "
                                f"{missing.select('fact_id', 'condition').row(0, named=True)}")
        out = out.drop("_th")
    return out.with_columns((pl.col("delta") > pl.col("threshold")).alias("recalled"))


def categories(decisions: pl.DataFrame, correct: pl.DataFrame) -> pl.DataFrame:
    """Per (case_id, condition): hop1_recalled, hop2_recalled, both_recalled, correct, category.

    decisions: case_id, condition, hop (1 and 2 for each item), n_kns, recalled. correct: case_id, condition,
    correct (bool). category: "no_kns" if a hop's KN set is empty; else "undecided" if a hop's recalled is null;
    else (both recalled T/F) + (correct T/F): TT, TF, FT, FF. both_recalled is null for no_kns/undecided.
    """
    _require(decisions, ["case_id", "condition", "hop", "n_kns", "recalled"], "decisions")
    _require(correct, ["case_id", "condition", "correct"], "correct")
    _no_duplicates(decisions, ["case_id", "condition", "hop"], "decisions")
    _no_duplicates(correct, ["case_id", "condition"], "correct")
    bad_hop = decisions.filter(~pl.col("hop").is_in([1, 2]))
    if bad_hop.height:
        raise KnrecallError(f"decisions: hop must be 1 or 2, e.g. {bad_hop.row(0, named=True)}")
    if correct.get_column("correct").null_count():
        raise KnrecallError("correct: null values in 'correct'")
    keys = ["case_id", "condition"]
    wide = decisions.group_by(keys).agg(
        pl.col("recalled").filter(pl.col("hop") == 1).first().alias("hop1_recalled"),
        pl.col("recalled").filter(pl.col("hop") == 2).first().alias("hop2_recalled"),
        pl.len().alias("_n_hops"),
        (pl.col("n_kns") == 0).any().alias("_no_kns"),
    )
    incomplete = wide.filter(pl.col("_n_hops") != 2)
    if incomplete.height:
        raise KnrecallError(f"decisions: {incomplete.height} item(s) without both hops, "
                            f"e.g. {incomplete.select(keys).row(0, named=True)}")
    out = wide.join(correct.select(keys + ["correct"]), on=keys, how="left")
    nocorr = out.filter(pl.col("correct").is_null())
    if nocorr.height:
        raise KnrecallError(f"correct: no correctness for {nocorr.height} item(s), "
                            f"e.g. {nocorr.select(keys).row(0, named=True)}")
    both = pl.col("hop1_recalled") & pl.col("hop2_recalled")
    undecided = pl.col("hop1_recalled").is_null() | pl.col("hop2_recalled").is_null()
    letter = lambda e: pl.when(e).then(pl.lit("T")).otherwise(pl.lit("F"))  # noqa: E731
    category = (pl.when(pl.col("_no_kns")).then(pl.lit(NO_KNS))
                .when(undecided).then(pl.lit(UNDECIDED))
                .otherwise(pl.concat_str([letter(both), letter(pl.col("correct"))])))
    return (out.with_columns(
                pl.when(pl.col("_no_kns") | undecided).then(None).otherwise(both).alias("both_recalled"),
                category.alias("category"))
            .select(keys + ["hop1_recalled", "hop2_recalled", "both_recalled", "correct", "category"])
            .sort(keys))


def category_shares(cats: pl.DataFrame) -> pl.DataFrame:
    """Per condition: n_TT, n_TF, n_FT, n_FF, n_categorized, share_TT..share_FF (of n_categorized), n_no_kns,
    n_undecided, MH = TT/(TT+FT), SC = FT/(TT+FT). Shares are null when n_categorized is 0, MH/SC when TT+FT is 0.
    """
    _require(cats, ["condition", "category"], "categories")
    known = set(CATEGORIES) | {NO_KNS, UNDECIDED}
    unknown = set(cats.get_column("category").unique().to_list()) - known
    if unknown:
        raise KnrecallError(f"categories: unknown category value(s) {sorted(map(str, unknown))}")
    c = pl.col("category")
    counts = [(c == k).sum().cast(pl.Int64).alias(f"n_{k}") for k in CATEGORIES]
    out = cats.group_by("condition").agg(
        *counts,
        (c == NO_KNS).sum().cast(pl.Int64).alias(f"n_{NO_KNS}"),
        (c == UNDECIDED).sum().cast(pl.Int64).alias(f"n_{UNDECIDED}"),
    )
    n_cat = sum(pl.col(f"n_{k}") for k in CATEGORIES)
    out = out.with_columns(n_cat.alias("n_categorized"))
    shares = [pl.when(pl.col("n_categorized") > 0).then(pl.col(f"n_{k}") / pl.col("n_categorized"))
              .otherwise(None).alias(f"share_{k}") for k in CATEGORIES]
    denom = pl.col("n_TT") + pl.col("n_FT")
    out = out.with_columns(
        *shares,
        pl.when(denom > 0).then(pl.col("n_TT") / denom).otherwise(None).alias("MH"),
        pl.when(denom > 0).then(pl.col("n_FT") / denom).otherwise(None).alias("SC"),
    )
    order = (["condition"] + [f"n_{k}" for k in CATEGORIES] + ["n_categorized"]
             + [f"share_{k}" for k in CATEGORIES] + [f"n_{NO_KNS}", f"n_{UNDECIDED}", "MH", "SC"])
    return out.select(order).sort("condition")
