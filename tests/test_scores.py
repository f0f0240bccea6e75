"""Recall statistics (DESIGN.md §4): KN scores, null thresholds, recall decisions, categories, bootstrap CIs.

Every expected value is computed by hand from small synthetic tables written out below.
"""

import random
import statistics

import polars as pl
import pytest

from knrecall.errors import KnrecallError
from knrecall.recall.bootstrap import (bootstrap_ci, bootstrap_share_ci, category_share_cis, difference_ci,
                                       paired_difference_ci)
from knrecall.recall.scores import (MODES, categories, category_shares, kn_score_table, kn_scores, null_deltas,
                                    null_pairs, null_thresholds, recall_decisions)

# c1: hop1 KNs (0,1) (0,2), hop2 KN (1,5).  c2: hop1 has no KNs, hop2 KN (1,5).
# c3: hop1 KNs (0,1) with baseline 0 (dropped in ratio mode) and (0,3); hop2 KN (0,1) with baseline 0 only.
KN_SETS = pl.DataFrame({"case_id": ["c1", "c1", "c2", "c2", "c3", "c3"], "hop": [1, 2, 1, 2, 1, 2],
                        "n_kns": [2, 1, 0, 1, 2, 1], "fact_id": ["f1", "f2", "f3", "f2", "f4", "f5"]})
BASELINES = pl.DataFrame(
    [("c1", 1, 0, 1, 2.0), ("c1", 1, 0, 2, 4.0), ("c1", 2, 1, 5, 0.5), ("c2", 2, 1, 5, 1.0),
     ("c3", 1, 0, 1, 0.0), ("c3", 1, 0, 3, 2.0), ("c3", 2, 0, 1, 0.0)],
    schema=["case_id", "hop", "layer", "neuron", "baseline"], orient="row")
ACTS = pl.DataFrame(
    [("c1", "direct", 1, 0, 1, 3.0), ("c1", "direct", 1, 0, 2, 2.0), ("c1", "direct", 2, 1, 5, 1.0),
     ("c2", "direct", 2, 1, 5, 3.0),
     ("c3", "direct", 1, 0, 1, 5.0), ("c3", "direct", 1, 0, 3, 1.0), ("c3", "direct", 2, 0, 1, 7.0)],
    schema=["case_id", "condition", "hop", "layer", "neuron", "activation"], orient="row")


def _by_key(df, col):
    return {(r["case_id"], r["hop"]): r[col] for r in df.iter_rows(named=True)}


def test_ratio_scores_by_hand():
    s = kn_scores(ACTS, BASELINES, KN_SETS)
    assert s.height == 6 and set(s.get_column("condition")) == {"direct"}
    delta = _by_key(s, "delta")
    assert delta[("c1", 1)] == pytest.approx((3 / 2 + 2 / 4) / 2)  # 1.0
    assert delta[("c1", 2)] == pytest.approx(2.0)
    assert delta[("c2", 2)] == pytest.approx(3.0)
    assert delta[("c3", 1)] == pytest.approx(0.5)  # (0,1) dropped: only 1/2 remains
    assert delta[("c2", 1)] is None  # empty KN set
    assert delta[("c3", 2)] is None  # every neuron dropped
    assert _by_key(s, "n_kns") == {("c1", 1): 2, ("c1", 2): 1, ("c2", 1): 0, ("c2", 2): 1, ("c3", 1): 2,
                                   ("c3", 2): 1}
    assert _by_key(s, "n_dropped") == {("c1", 1): 0, ("c1", 2): 0, ("c2", 1): 0, ("c2", 2): 0, ("c3", 1): 1,
                                       ("c3", 2): 1}
    assert _by_key(s, "n_used")[("c3", 1)] == 1
    assert _by_key(s, "fact_id")[("c3", 2)] == "f5"  # carried from kn_sets


def test_projection_and_ratio_of_sums_by_hand():
    p = _by_key(kn_scores(ACTS, BASELINES, KN_SETS, mode="projection"), "delta")
    assert p[("c1", 1)] == pytest.approx((3 * 2 + 2 * 4) / (2 ** 2 + 4 ** 2))  # 14 / 20
    assert p[("c1", 2)] == pytest.approx(1.0 * 0.5 / 0.25)
    assert p[("c3", 1)] == pytest.approx((5 * 0 + 1 * 2) / (0 + 4))  # the zero baseline is kept, weighs nothing
    assert p[("c3", 2)] is None  # Σ b² = 0
    r = _by_key(kn_scores(ACTS, BASELINES, KN_SETS, mode="ratio_of_sums"), "delta")
    assert r[("c1", 1)] == pytest.approx((3 + 2) / (2 + 4))
    assert r[("c3", 1)] == pytest.approx((5 + 1) / (0 + 2))
    assert r[("c3", 2)] is None and r[("c2", 1)] is None  # Σ b = 0; an empty set


def test_variants_with_near_zero_and_negative_baselines():
    """One neuron with a tiny baseline dominates the mean of ratios; a negative baseline flips its term's sign.
    The projection is a least-squares coefficient: 1 for the single-hop pattern itself, any scale times it gives
    that scale, whatever the baselines' signs."""
    keys = pl.DataFrame({"case_id": ["a", "b", "c"], "hop": [1, 1, 1], "n_kns": [3, 3, 3], "fact_id": ["f"] * 3})
    base = [2.0, -1.0, 1e-4]  # a gated FFN input can be negative; one baseline is nearly zero
    acts = {"a": [2.0, -1.0, 1e-4],  # the single-hop pattern at full strength
            "b": [1.0, -0.5, 5e-5],  # at half strength
            "c": [2.0, -1.0, 0.05]}  # full strength, plus noise of 0.05 on the near-zero neuron
    baselines = pl.DataFrame([(c, 1, 0, i, b) for c in acts for i, b in enumerate(base)],
                             schema=["case_id", "hop", "layer", "neuron", "baseline"], orient="row")
    activations = pl.DataFrame([(c, "direct", 1, 0, i, a) for c, values in acts.items() for i, a in enumerate(values)],
                               schema=["case_id", "condition", "hop", "layer", "neuron", "activation"], orient="row")
    delta = {m: {c: d for (c, _), d in _by_key(kn_scores(activations, baselines, keys, mode=m), "delta").items()}
             for m in MODES}
    assert delta["projection"]["a"] == pytest.approx(1.0) and delta["projection"]["b"] == pytest.approx(0.5)
    assert delta["ratio"]["a"] == pytest.approx(1.0) and delta["ratio"]["b"] == pytest.approx(0.5)
    # the noise on the near-zero baseline: the mean of ratios jumps by (0.05 / 1e-4) / 3 ≈ 167; the projection
    # hardly moves
    assert delta["ratio"]["c"] > 100
    assert delta["projection"]["c"] == pytest.approx(1.0, abs=1e-3)
    assert delta["ratio_of_sums"]["a"] == pytest.approx(1.0)
    assert delta["difference"]["a"] == pytest.approx(0.0) and delta["difference"]["b"] == pytest.approx(
        ((1 - 2) + (-0.5 + 1) + (5e-5 - 1e-4)) / 3)


def test_score_table_is_every_variant_at_every_position():
    acts = ACTS.with_columns((pl.col("activation") * 2).alias("activation_last"))
    keys = KN_SETS.join(pl.DataFrame({"condition": ["direct"]}), how="cross")
    table = kn_score_table(acts, BASELINES, keys, ["case_id", "condition", "hop"], ["case_id", "hop"],
                           {"step": "activation", "last": "activation_last"})
    assert table.height == KN_SETS.height * len(MODES) * 2
    for mode in MODES:
        single = _by_key(kn_scores(ACTS, BASELINES, KN_SETS, mode=mode), "delta")
        here = table.filter((pl.col("variant") == mode) & (pl.col("position") == "step"))
        assert _by_key(here, "delta") == pytest.approx(single)
        doubled = _by_key(table.filter((pl.col("variant") == mode) & (pl.col("position") == "last")), "delta")
        for key, value in single.items():
            if value is None:
                assert doubled[key] is None
            elif mode != "difference":  # every scale-free variant doubles with the activations
                assert doubled[key] == pytest.approx(2 * value)
    assert set(table["fact_id"]) == set(KN_SETS["fact_id"])  # carried


def test_difference_scores_by_hand():
    s = kn_scores(ACTS, BASELINES, KN_SETS, mode="difference")
    delta = _by_key(s, "delta")
    assert delta[("c1", 1)] == pytest.approx(((3 - 2) + (2 - 4)) / 2)  # -0.5
    assert delta[("c1", 2)] == pytest.approx(0.5)
    assert delta[("c3", 1)] == pytest.approx(((5 - 0) + (1 - 2)) / 2)  # 2.0: nothing dropped
    assert delta[("c3", 2)] == pytest.approx(7.0)
    assert delta[("c2", 1)] is None
    assert s.get_column("n_dropped").sum() == 0


def test_empty_kn_set_reported_in_every_condition():
    only_empty = KN_SETS.filter(pl.col("n_kns") == 0)
    s = kn_scores(ACTS.clear(), BASELINES, only_empty, conditions=["direct", "few_shot_cot"])
    assert s.select("case_id", "condition", "hop").rows() == [("c2", "direct", 1), ("c2", "few_shot_cot", 1)]
    assert s.get_column("delta").null_count() == 2 and s.get_column("n_kns").to_list() == [0, 0]


def test_score_input_errors():
    with pytest.raises(KnrecallError, match="differs from n_kns"):  # a condition with KNs but no activations
        kn_scores(ACTS, BASELINES, KN_SETS, conditions=["direct", "zero_shot_cot"])
    with pytest.raises(KnrecallError, match="duplicate"):
        kn_scores(pl.concat([ACTS, ACTS.head(1)]), BASELINES, KN_SETS)
    with pytest.raises(KnrecallError, match="no baseline"):
        kn_scores(ACTS, BASELINES.filter(pl.col("case_id") != "c2"), KN_SETS)
    with pytest.raises(KnrecallError, match="not in the KN sets"):
        kn_scores(ACTS, BASELINES, KN_SETS.filter(pl.col("case_id") != "c1"))
    with pytest.raises(KnrecallError, match="null/NaN"):
        kn_scores(ACTS.with_columns(pl.lit(float("nan")).alias("activation")), BASELINES, KN_SETS)
    with pytest.raises(KnrecallError, match="unknown score mode"):
        kn_scores(ACTS, BASELINES, KN_SETS, mode="log")


ITEM_FACTS = pl.DataFrame({"case_id": ["c1", "c1", "c2", "c2", "c3", "c3", "c4", "c4", "c5", "c5"],
                           "hop": [1, 2] * 5,
                           "fact_id": ["f1", "f2", "f3", "f2", "f4", "f5", "f1", "f6", "f7", "f7"]})


def _pairs(df, fact):
    return df.filter(pl.col("fact_id") == fact).get_column("case_id").to_list()


def test_null_pairs_exclude_items_with_the_fact_in_either_hop():
    p = null_pairs(ITEM_FACTS)
    assert _pairs(p, "f1") == ["c2", "c3", "c5"]
    assert _pairs(p, "f2") == ["c3", "c4", "c5"]
    assert _pairs(p, "f7") == ["c1", "c2", "c3", "c4"]
    assert _pairs(p, "f3") == ["c1", "c3", "c4", "c5"]


def test_null_pairs_sampling_is_deterministic():
    a = null_pairs(ITEM_FACTS, rng_seed=3, max_per_fact=2)
    shuffled = ITEM_FACTS.sample(fraction=1.0, shuffle=True, seed=11)
    assert null_pairs(shuffled, rng_seed=3, max_per_fact=2).equals(a)  # independent of row order
    assert null_pairs(ITEM_FACTS.filter(pl.col("fact_id") != "f7"), 3, 2).filter(pl.col("fact_id") == "f3") \
        .get_column("case_id").len() == 2
    full = null_pairs(ITEM_FACTS)
    for fact in ("f1", "f3", "f7"):
        got = _pairs(a, fact)
        assert len(got) == 2 and set(got) <= set(_pairs(full, fact))
    samples = {tuple(_pairs(null_pairs(ITEM_FACTS, rng_seed=s, max_per_fact=2), "f7")) for s in range(20)}
    assert len(samples) > 1  # the seed matters


def test_null_deltas_and_thresholds_by_hand():
    fact_kns = pl.DataFrame({"fact_id": ["f1", "f9"], "n_kns": [2, 0]})
    base = pl.DataFrame({"fact_id": ["f1", "f1"], "layer": [0, 0], "neuron": [1, 2], "baseline": [2.0, 4.0]})
    pairs = pl.DataFrame({"fact_id": ["f1", "f1", "f9"], "case_id": ["c2", "c3", "c1"]})
    acts = pl.DataFrame({"fact_id": ["f1"] * 4, "case_id": ["c2", "c2", "c3", "c3"], "condition": ["direct"] * 4,
                         "layer": [0] * 4, "neuron": [1, 2, 1, 2], "activation": [4.0, 4.0, 1.0, 2.0]})
    nd = null_deltas(acts, base, fact_kns, pairs)
    got = {(r["fact_id"], r["case_id"]): r["delta_null"] for r in nd.iter_rows(named=True)}
    assert got == {("f1", "c2"): pytest.approx(1.5), ("f1", "c3"): pytest.approx(0.5), ("f9", "c1"): None}

    sample = pl.DataFrame({"fact_id": ["f1"] * 6 + ["f2"] * 4 + ["f3"],
                           "condition": ["direct"] * 11,
                           "delta_null": [5.0, 1.0, 3.0, None, 2.0, 4.0, 0.4, 0.1, 0.3, 0.2, None]})
    th = null_thresholds(sample)
    rows = {r["fact_id"]: (r["threshold"], r["n_null"]) for r in th.iter_rows(named=True)}
    assert rows["f1"][0] == pytest.approx(1 + 0.95 * 4) and rows["f1"][1] == 5  # 4.8, null excluded
    assert rows["f2"][0] == pytest.approx(0.1 + 0.95 * 3 * 0.1)  # sorted .1 .2 .3 .4, position 2.85 -> 0.385
    assert rows["f3"] == (None, 0)
    med = {r["fact_id"]: r["threshold"] for r in null_thresholds(sample, quantile=0.5).iter_rows(named=True)}
    assert med["f1"] == pytest.approx(3.0) and med["f2"] == pytest.approx(0.25)


def test_recall_decisions_fixed_tau_and_null_thresholds():
    s = kn_scores(ACTS, BASELINES, KN_SETS)
    fixed = _by_key(recall_decisions(s, fixed_tau=1.0), "recalled")
    assert fixed == {("c1", 1): False, ("c1", 2): True, ("c2", 1): None, ("c2", 2): True, ("c3", 1): False,
                     ("c3", 2): None}  # strict: delta 1.0 is not above tau 1.0
    th = pl.DataFrame({"fact_id": ["f1", "f2", "f3", "f4", "f5"], "condition": ["direct"] * 5,
                       "threshold": [0.5, 2.5, 0.0, None, 0.0]})
    dec = recall_decisions(s, thresholds=th)
    assert _by_key(dec, "recalled") == {("c1", 1): True, ("c1", 2): False, ("c2", 1): None, ("c2", 2): True,
                                        ("c3", 1): None, ("c3", 2): None}
    # the fact comes from item_facts when the scores do not carry it
    facts = KN_SETS.select("case_id", "hop", "fact_id")
    dec2 = recall_decisions(s.drop("fact_id"), thresholds=th, item_facts=facts)
    assert _by_key(dec2, "recalled") == _by_key(dec, "recalled")
    with pytest.raises(KnrecallError, match="exactly one"):
        recall_decisions(s, thresholds=th, fixed_tau=1.0)
    with pytest.raises(KnrecallError, match="exactly one"):
        recall_decisions(s)
    with pytest.raises(KnrecallError, match="thresholds: none"):
        recall_decisions(s, thresholds=th.filter(pl.col("fact_id") != "f2"))
    with pytest.raises(KnrecallError, match="pass item_facts"):
        recall_decisions(s.drop("fact_id"), thresholds=th)


# (case, hop1 n_kns, hop1 recalled, hop2 n_kns, hop2 recalled, correct) -> expected category
TABLE = [
    ("a", 2, True, 1, True, True, "TT"),
    ("b", 2, True, 1, True, False, "TF"),
    ("c", 2, True, 1, False, True, "FT"),
    ("d", 2, False, 1, False, False, "FF"),
    ("e", 0, None, 1, True, True, "no_kns"),
    ("f", 2, None, 1, True, True, "undecided"),
    ("g", 2, False, 3, True, True, "FT"),
]


def _decisions(table, condition="direct"):
    rows = []
    for case, n1, r1, n2, r2, _, _ in table:
        rows += [(case, condition, 1, n1, r1), (case, condition, 2, n2, r2)]
    dec = pl.DataFrame(rows, schema={"case_id": pl.String, "condition": pl.String, "hop": pl.Int64,
                                     "n_kns": pl.Int64, "recalled": pl.Boolean}, orient="row")
    cor = pl.DataFrame({"case_id": [t[0] for t in table], "condition": [condition] * len(table),
                        "correct": [t[5] for t in table]})
    return dec, cor


def test_categories_from_hand_made_table():
    dec, cor = _decisions(TABLE)
    cats = categories(dec, cor)
    assert dict(zip(cats.get_column("case_id"), cats.get_column("category"))) == {t[0]: t[6] for t in TABLE}
    both = dict(zip(cats.get_column("case_id"), cats.get_column("both_recalled")))
    assert both == {"a": True, "b": True, "c": False, "d": False, "e": None, "f": None, "g": False}


def test_category_errors():
    dec, cor = _decisions(TABLE)
    with pytest.raises(KnrecallError, match="without both hops"):
        categories(dec.filter(~((pl.col("case_id") == "a") & (pl.col("hop") == 2))), cor)
    with pytest.raises(KnrecallError, match="no correctness"):
        categories(dec, cor.filter(pl.col("case_id") != "b"))


def test_category_shares_and_mh_sc():
    dec, cor = _decisions(TABLE)
    only_wrong = [t for t in TABLE if t[6] in ("TF", "FF")]
    dec2, cor2 = _decisions(only_wrong, condition="zero_shot_cot")
    cats = categories(pl.concat([dec, dec2]), pl.concat([cor, cor2]))
    sh = {r["condition"]: r for r in category_shares(cats).iter_rows(named=True)}
    d = sh["direct"]
    assert (d["n_TT"], d["n_TF"], d["n_FT"], d["n_FF"], d["n_categorized"]) == (1, 1, 2, 1, 5)
    assert (d["n_no_kns"], d["n_undecided"]) == (1, 1)
    assert d["share_FT"] == pytest.approx(2 / 5) and d["share_TT"] == pytest.approx(1 / 5)
    assert d["MH"] == pytest.approx(1 / 3) and d["SC"] == pytest.approx(2 / 3)
    z = sh["zero_shot_cot"]
    assert (z["n_TF"], z["n_FF"], z["n_categorized"]) == (1, 1, 2)
    assert z["MH"] is None and z["SC"] is None  # TT + FT = 0


def test_end_to_end_scores_to_categories():
    s = kn_scores(ACTS, BASELINES, KN_SETS)
    dec = recall_decisions(s, fixed_tau=0.25)  # c1: 1.0, 2.0 -> both; c3: 0.5 and null -> undecided
    cor = pl.DataFrame({"case_id": ["c1", "c2", "c3"], "condition": ["direct"] * 3, "correct": [False, True, True]})
    cats = categories(dec, cor)
    assert cats.select("case_id", "category").rows() == [("c1", "TF"), ("c2", "no_kns"), ("c3", "undecided")]


# ---------------------------------------------------------------- bootstrap

def _normal(n, mu, sigma, seed):
    rng = random.Random(seed)
    return [rng.gauss(mu, sigma) for _ in range(n)]


def test_bootstrap_ci_contains_true_mean_and_shrinks_with_n():
    big = _normal(4000, 5.0, 2.0, seed=1)
    lo, hi = bootstrap_ci(big, seed=0)
    assert lo < 5.0 < hi and lo < statistics.fmean(big) < hi
    assert hi - lo < 0.2  # about 2 * 1.96 * 2 / sqrt(4000) = 0.124
    small_lo, small_hi = bootstrap_ci(big[:100], seed=0)
    assert (small_hi - small_lo) > 3 * (hi - lo)  # sqrt(40) = 6.3 times wider in expectation
    assert small_lo < 5.0 < small_hi
    assert bootstrap_ci(pl.Series(big), seed=0) == (lo, hi)  # a polars Series works too


def test_bootstrap_ci_deterministic_by_seed():
    x = _normal(50, 0.0, 1.0, seed=2)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)
    assert difference_ci(x, x[:20], seed=3) == difference_ci(x, x[:20], seed=3)
    assert bootstrap_share_ci(["TT", "FT", "FF"] * 10, seed=4) == bootstrap_share_ci(["TT", "FT", "FF"] * 10, seed=4)


def test_bootstrap_statistics_and_levels():
    x = _normal(200, 1.0, 1.0, seed=5)
    m = bootstrap_ci(x, "mean", n_resamples=300, seed=1)
    c = bootstrap_ci(x, statistics.fmean, n_resamples=300, seed=1)  # callable path, same resamples
    assert c == pytest.approx(m)
    med = bootstrap_ci(x, "median", n_resamples=300, seed=1)
    cmed = bootstrap_ci(x, statistics.median, n_resamples=300, seed=1)
    assert cmed == pytest.approx(med)
    lo90, hi90 = bootstrap_ci(x, level=0.90, seed=1)
    lo99, hi99 = bootstrap_ci(x, level=0.99, seed=1)
    assert lo99 < lo90 < hi90 < hi99
    assert bootstrap_ci([3.0], seed=0) == (3.0, 3.0)
    with pytest.raises(KnrecallError):
        bootstrap_ci([])
    with pytest.raises(KnrecallError):
        bootstrap_ci([1.0, None])
    with pytest.raises(KnrecallError):
        bootstrap_ci([1.0, 2.0], statistic="mode")


def test_paired_difference_ci_excludes_zero_under_a_shift_and_uses_pairing():
    a = _normal(300, 0.0, 10.0, seed=6)  # large spread between units
    noise = _normal(300, 0.0, 0.1, seed=7)
    b = [x + 3.0 + e for x, e in zip(a, noise)]  # the same units shifted by 3
    lo, hi = paired_difference_ci(a, b, seed=0)
    assert lo < -3.0 < hi and hi < 0
    assert hi - lo < 0.05  # pairing removes the between-unit spread ...
    ilo, ihi = difference_ci(a, b, seed=0)
    assert ihi - ilo > 1.0 and ilo < -3.0 < ihi  # ... which independent resampling cannot
    same = paired_difference_ci(a, [x + e for x, e in zip(a, noise)], seed=0)
    assert same[0] < 0 < same[1]
    with pytest.raises(KnrecallError, match="a has 300 values, b has 299"):
        paired_difference_ci(a, b[:-1])


def test_difference_ci_independent_groups():
    a = _normal(500, 0.0, 1.0, seed=8)
    b = _normal(300, 1.0, 1.0, seed=9)
    lo, hi = difference_ci(a, b, seed=0)
    assert lo < -1.0 < hi and hi < 0


def test_share_ci_for_mh_and_sc():
    labels = ["TT"] * 60 + ["FT"] * 40 + ["FF"] * 50 + ["TF"] * 10
    lo, hi = bootstrap_share_ci(labels, seed=0)
    assert 0.45 < lo < 0.6 < hi < 0.75
    slo, shi = bootstrap_share_ci(labels, numerator=("FT",), seed=0)
    assert slo == pytest.approx(1 - hi) and shi == pytest.approx(1 - lo)  # SC = 1 - MH on the same resamples
    assert bootstrap_share_ci(["FF", "TF"], seed=0) == (None, None)
    cats = pl.DataFrame({"condition": ["direct"] * len(labels) + ["cot"] * 3,
                         "category": labels + ["FF", "no_kns", "TF"]})
    cis = {r["condition"]: r for r in category_share_cis(cats, seed=0).iter_rows(named=True)}
    assert (cis["direct"]["MH_low"], cis["direct"]["MH_high"]) == pytest.approx((lo, hi))
    assert cis["cot"]["MH_low"] is None and cis["cot"]["SC_high"] is None


def test_bootstrap_ci_width_matches_normal_theory():
    # for the mean of n iid values the 95% percentile interval is close to mean ± 1.96 s / sqrt(n)
    x = _normal(2000, 0.0, 3.0, seed=10)
    lo, hi = bootstrap_ci(x, n_resamples=4000, seed=0)
    theory = 2 * 1.96 * statistics.stdev(x) / len(x) ** 0.5
    assert 0.93 < (hi - lo) / theory < 1.07
    assert abs((lo + hi) / 2 - statistics.fmean(x)) < 0.1 * theory
