"""Validation-scoreboard statistics (knrecall.validation.stats): AUC, stratified AUC, Spearman and their bootstrap CIs.

Synthetic data with a known answer: hand-worked examples, the all-pairs definitions, and large samples from
distributions whose population value is known in closed form.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from knrecall.errors import KnrecallError
from knrecall.validation.stats import (auc, auc_ci, drop_missing, drop_missing_pairs, spearman, spearman_ci,
                                       stratified_auc, stratified_auc_ci)


def _phi(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _auc_all_pairs(pos, neg):
    """The definition: the mean over all (positive, negative) pairs of [p > n] + ½·[p = n]."""
    p, n = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(((p > n) + 0.5 * (p == n)).mean())


def _avg_ranks_by_hand(v):
    """Average ranks by the definition: 1 + #smaller + (#equal − 1)/2."""
    v = np.asarray(v, float)
    return np.array([1 + (v < x).sum() + ((v == x).sum() - 1) / 2 for x in v])


# --- AUC ----------------------------------------------------------------------------------------------------------


def test_auc_perfect_separation():
    assert auc([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0
    assert auc([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0
    assert isinstance(auc([1.0], [0.0]), float)


def test_auc_identical_distributions_near_half():
    rng = np.random.default_rng(7)
    assert abs(auc(rng.normal(size=5000), rng.normal(size=5000)) - 0.5) < 0.03


def test_auc_all_ties_is_half():
    assert auc([3.0, 3.0], [3.0, 3.0, 3.0]) == 0.5
    assert auc([math.inf], [math.inf]) == 0.5  # inf == inf is a tie, not NaN


def test_auc_hand_worked_with_ties():
    # positives 1, 2, 2 against negatives 2, 0: pairs (1,2)=0 (1,0)=1 (2,2)=½ (2,0)=1 (2,2)=½ (2,0)=1 → 4/6.
    # By ranks: pooled 1,2,2,2,0 → ranks 2,4,4,4,1; U = 2+4+4 − 3·4/2 = 4.
    assert auc([1.0, 2.0, 2.0], [2.0, 0.0]) == pytest.approx(4 / 6, abs=1e-15)
    assert auc([2.0, 0.0], [1.0, 2.0, 2.0]) == pytest.approx(2 / 6, abs=1e-15)  # AUC(N, P) = 1 − AUC(P, N)


@pytest.mark.parametrize("seed", range(5))
def test_auc_rank_formula_equals_all_pairs(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        n_pos, n_neg = rng.integers(1, 80, size=2)
        continuous = (rng.normal(0.3, 1, n_pos), rng.normal(0, 1, n_neg))
        tied = (np.round(rng.normal(0.3, 1, n_pos)), np.round(rng.normal(0, 1, n_neg)))  # many ties
        for pos, neg in (continuous, tied):
            assert auc(pos, neg) == pytest.approx(_auc_all_pairs(pos, neg), abs=1e-12)


def test_auc_drops_missing():
    assert auc([1.0, None, float("nan"), 2.0], [0.0, None]) == 1.0
    kept, dropped = drop_missing([1.0, None, float("nan"), 2.0, math.inf])
    assert kept.tolist() == [1.0, 2.0, math.inf] and dropped == 2
    assert auc(np.array([1.0, np.nan]), np.array([2.0])) == 0.0


def test_auc_undefined():
    assert auc([], [1.0]) is None
    assert auc([1.0], []) is None
    assert auc([None, float("nan")], [1.0]) is None


# --- stratified AUC -----------------------------------------------------------------------------------------------


def test_stratified_one_stratum_equals_auc():
    rng = np.random.default_rng(3)
    pos, neg = np.round(rng.normal(0.5, 1, 40), 1), np.round(rng.normal(0, 1, 30), 1)
    assert stratified_auc([(pos, neg)]) == pytest.approx(auc(pos, neg), abs=1e-15)


def test_stratified_differs_from_pooled_with_offsets():
    a = ([11.0, 12.0], [9.0, 10.0])  # stratum A: around 10, positives above negatives
    b = ([1.0, 2.0], [-1.0, 0.0])  # stratum B: around 0, positives above negatives
    assert stratified_auc([a, b]) == 1.0
    # Pooled: the positives 1, 2 of B lose to the negatives 9, 10 of A: (4·2 + 2·2) / 16 = 0.75.
    pooled = auc(a[0] + b[0], a[1] + b[1])
    assert pooled == pytest.approx(0.75) and pooled < 1.0


def test_stratified_equals_within_stratum_pair_count():
    rng = np.random.default_rng(11)
    groups, wins, pairs = [], 0.0, 0
    for _ in range(20):
        off = rng.normal(0, 10)
        pos = np.round(rng.normal(off + 0.5, 1, rng.integers(1, 15)))
        neg = np.round(rng.normal(off, 1, rng.integers(1, 15)))
        groups.append((pos, neg))
        wins += _auc_all_pairs(pos, neg) * pos.size * neg.size
        pairs += pos.size * neg.size
    assert stratified_auc(groups) == pytest.approx(wins / pairs, abs=1e-12)


def test_stratified_empty_sides_contribute_nothing():
    a = ([1.0, 2.0, 3.0], [0.0, 2.0])
    assert stratified_auc([a, ([], [5.0]), ([5.0], []), ([None], [1.0])]) == auc(*a)
    assert stratified_auc([]) is None
    assert stratified_auc([([], [1.0]), ([1.0], [float("nan")])]) is None
    with pytest.raises(KnrecallError):
        stratified_auc([[1.0, 2.0, 3.0]])


# --- Spearman -----------------------------------------------------------------------------------------------------


def test_spearman_monotone_transforms():
    rng = np.random.default_rng(5)
    x = rng.normal(size=200)
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0, abs=1e-12)
    assert spearman(x, -x ** 3) == pytest.approx(-1.0, abs=1e-12)
    assert spearman([1, 2, 3], [10, 20, 30]) == 1.0  # clipped to [-1, 1], exact here


def test_spearman_ties_hand_computed():
    # x = 1,2,2,3,5 → ranks 1, 2.5, 2.5, 4, 5; y = 2,1,4,4,4 → ranks 2, 1, 4, 4, 4; both mean 3.
    # Σdx·dy = 5.5, Σdx² = 9.5, Σdy² = 8 → ρ = 5.5/√76 (scipy.stats.spearmanr gives 0.6308932681440449).
    assert spearman([1, 2, 2, 3, 5], [2, 1, 4, 4, 4]) == pytest.approx(5.5 / math.sqrt(76), abs=1e-14)
    assert spearman([1, 2, 2, 3, 5], [2, 1, 4, 4, 4]) == pytest.approx(0.6308932681440449, abs=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_spearman_equals_pearson_of_average_ranks(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 6, 50).astype(float), rng.integers(0, 4, 50).astype(float)
    rx, ry = _avg_ranks_by_hand(x), _avg_ranks_by_hand(y)
    assert spearman(x, y) == pytest.approx(float(np.corrcoef(rx, ry)[0, 1]), abs=1e-12)


def test_spearman_drops_missing_pairs():
    x, y = [1.0, 2.0, None, 3.0, 4.0], [1.0, float("nan"), 5.0, 2.0, 3.0]
    a, b, dropped = drop_missing_pairs(x, y)
    assert a.tolist() == [1.0, 3.0, 4.0] and b.tolist() == [1.0, 2.0, 3.0] and dropped == 2
    assert spearman(x, y) == 1.0
    with pytest.raises(KnrecallError):
        spearman([1.0, 2.0], [1.0])


def test_spearman_undefined():
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant input
    assert spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) is None
    assert spearman([1.0], [2.0]) is None  # one item
    assert spearman([], []) is None
    assert spearman([1.0, None], [2.0, 3.0]) is None  # one pair left


# --- bootstrap CIs ------------------------------------------------------------------------------------------------


def _normals(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(d, 1, n), rng.normal(0, 1, n)


def test_auc_ci_covers_true_value():
    d = 1.0
    pos, neg = _normals(2000, d, 1)
    lo, hi = auc_ci(pos, neg)
    true = _phi(d / math.sqrt(2))  # P(X > Y), X ~ N(d, 1), Y ~ N(0, 1): 0.7602...
    assert lo < true < hi
    assert lo <= auc(pos, neg) <= hi
    assert hi - lo < 0.05


def test_auc_ci_deterministic_seed_and_shrinks():
    pos, neg = _normals(300, 0.5, 2)
    assert auc_ci(pos, neg, seed=4) == auc_ci(pos, neg, seed=4)
    assert auc_ci(pos, neg, seed=4) != auc_ci(pos, neg, seed=5)
    small, large = auc_ci(*_normals(250, 0.5, 3)), auc_ci(*_normals(4000, 0.5, 3))
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])  # ~ 1/√16 of the width
    assert auc_ci(pos, neg, n_resamples=200, level=0.5) is not None


def test_auc_ci_undefined_and_degenerate():
    assert auc_ci([], [1.0, 2.0]) is None
    assert auc_ci([1.0, None], [float("nan")]) is None
    assert auc_ci([2.0], [1.0]) == (1.0, 1.0)  # one item per class: every resample is the data
    assert auc_ci([5.0, 6.0], [1.0, 2.0]) == (1.0, 1.0)


def test_ci_bad_arguments():
    with pytest.raises(KnrecallError):
        auc_ci([1.0], [0.0], n_resamples=0)
    with pytest.raises(KnrecallError):
        spearman_ci([1.0, 2.0], [1.0, 2.0], level=1.0)
    with pytest.raises(KnrecallError):
        stratified_auc_ci([([1.0], [0.0])], level=0.0)


def _strata(n_strata, n_each, d, seed):
    rng = np.random.default_rng(seed)
    return [(rng.normal(off + d, 1, n_each), rng.normal(off, 1, n_each)) for off in rng.normal(0, 10, n_strata)]


def test_stratified_auc_ci_covers_true_value():
    d = 1.0
    groups = _strata(300, 10, d, 6)
    lo, hi = stratified_auc_ci(groups)
    true = _phi(d / math.sqrt(2))  # within each stratum P(X > Y) = Φ(d/√2), whatever the offset
    assert lo < true < hi
    assert lo <= stratified_auc(groups) <= hi
    assert auc(np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups])) < lo  # offsets hide it


def test_stratified_auc_ci_deterministic_shrinks_and_undefined():
    groups = _strata(40, 8, 0.5, 7)
    assert stratified_auc_ci(groups, seed=1) == stratified_auc_ci(groups, seed=1)
    assert stratified_auc_ci(groups, seed=1) != stratified_auc_ci(groups, seed=2)
    small, large = stratified_auc_ci(_strata(30, 8, 0.5, 8)), stratified_auc_ci(_strata(480, 8, 0.5, 8))
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])
    assert stratified_auc_ci([]) is None
    assert stratified_auc_ci([([], [1.0])]) is None
    one = ([1.0, 3.0], [2.0, 0.0])
    assert stratified_auc_ci([one, ([], [4.0])]) == (0.75, 0.75)  # one informative stratum: zero width


def _bivariate(n, rho, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, rho * x + math.sqrt(1 - rho ** 2) * rng.normal(size=n)


def test_spearman_ci_covers_true_value():
    rho = 0.6
    x, y = _bivariate(2000, rho, 9)
    lo, hi = spearman_ci(x, y)
    true = 6 / math.pi * math.asin(rho / 2)  # Spearman's ρ of a bivariate normal: 0.5822...
    assert lo < true < hi
    assert lo <= spearman(x, y) <= hi


def test_spearman_ci_deterministic_and_shrinks():
    x, y = _bivariate(300, 0.3, 10)
    assert spearman_ci(x, y, seed=3) == spearman_ci(x, y, seed=3)
    assert spearman_ci(x, y, seed=3) != spearman_ci(x, y, seed=4)
    small, large = spearman_ci(*_bivariate(250, 0.3, 11)), spearman_ci(*_bivariate(4000, 0.3, 11))
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])


def test_spearman_ci_undefined():
    assert spearman_ci([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant input
    assert spearman_ci([1.0], [1.0]) is None  # one item
    assert spearman_ci([], []) is None
    # One 1 among 49 zeros in x: a resample misses it (x constant, undefined) with P = (49/50)^50 ≈ 0.36; those are
    # left out and the rest give the interval.
    x = [0.0] * 49 + [1.0]
    y = list(range(50))
    assert spearman_ci(x, y) is not None
    # ... and with y's single 1 on another item, a resample misses one or the other with P ≈ 0.60 > ½: None,
    # although spearman on the data is defined.
    y2 = [1.0] + [0.0] * 49
    assert spearman(x, y2) is not None
    assert spearman_ci(x, y2) is None


# --- imports -----------------------------------------------------------------------------------------------


def test_module_does_not_import_torch():
    code = ("import sys, knrecall.validation.stats; "
            "bad = [m for m in ('torch', 'polars') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
