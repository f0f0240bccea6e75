"""Statistics for the validation scoreboard: does the KN score Δ mean what it claims?

Three kinds of check use them:

* Specificity: a fact's own items should score above that fact's null scores. `auc` gives P(own > null);
  `stratified_auc` pairs items only inside a stratum (e.g. per fact: the fact's own items against the same fact's
  null scores), so differences in level between facts cannot create or hide separation.
* Causal agreement: does Δ predict what an intervention does? `spearman` gives the rank correlation of Δ with the
  intervention's effect; `auc` (or `stratified_auc`) of Δ for items whose answer broke versus items whose answer
  survived.
* Ground truth: where the answer pathway is known by construction, `auc` of Δ for the items of the pathway that
  uses the fact against the items of the pathway that does not.

Definitions (each function's docstring repeats its own):

* AUC(P, N) = U / (|P|·|N|), U = Σ_{p∈P} Σ_{n∈N} [p > n] + ½·[p = n] (the Mann–Whitney U of P), computed from the
  average ranks of the pooled sample in O(n log n): U = Σ_{p∈P} rank(p) − |P|(|P|+1)/2.
* Stratified AUC over strata g = Σ_g U_g / Σ_g |P_g|·|N_g|: pairs are formed only inside a stratum.
* Spearman ρ(x, y) = Pearson correlation of the average ranks of x and of y (as scipy.stats.spearmanr).

Inputs are sequences or 1-D numpy arrays of floats (anything iterable; a polars Series works). None and NaN are
dropped before computing (±inf are kept: they rank first / last); in `spearman` a pair is dropped when either of its
values is missing. `drop_missing` and `drop_missing_pairs` give the values kept and the number dropped, for the
scoreboard to report the counts. Results are plain Python floats, or None where the statistic is undefined (an empty
class, fewer than 2 pairs, a constant input to `spearman`).

Bootstrap CIs follow knrecall.recall.bootstrap: percentile intervals (the (1 − level)/2 and (1 + level)/2 quantiles
of the resampled statistics, numpy's linear interpolation), resample indices from `numpy.random.default_rng(seed)`
(PCG64), so a result is deterministic for a given seed and input. Resamples are vectorized as (rows × n) index
matrices, drawn and evaluated in chunks of rows so that memory stays bounded for large n (the chunk size depends
only on n and n_resamples, so results stay deterministic). Resamples on which the statistic is undefined are left
out; if more than half are undefined, or the statistic is undefined on the data itself, the CI is None.

Pure numpy: these run in processes that must not import torch (nor polars).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from knrecall.errors import KnrecallError

Values = Iterable[float | None] | np.ndarray
Interval = tuple[float, float]

# Elements (rows × columns) per chunk of resamples: a few tens of MB of float64 / int64 work arrays.
_CHUNK_ELEMENTS = 1 << 21


# --------------------------------------------------------------------------------------------------------------------
# Inputs


def _as_float_array(values: Values, name: str) -> np.ndarray:
    """float64 1-D array of `values`, None → NaN."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        arr = values.astype(np.float64, copy=False)
    else:
        try:
            arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise KnrecallError(f"{name}: not a sequence of numbers ({e})") from None
    if arr.ndim != 1:
        raise KnrecallError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
    return arr


def drop_missing(values: Values, name: str = "values") -> tuple[np.ndarray, int]:
    """(kept values as a float64 array, number dropped): None and NaN are dropped, ±inf kept."""
    arr = _as_float_array(values, name)
    keep = ~np.isnan(arr)
    return arr[keep], int(arr.size - keep.sum())


def drop_missing_pairs(x: Values, y: Values) -> tuple[np.ndarray, np.ndarray, int]:
    """(kept x, kept y, number of pairs dropped): a pair (x[k], y[k]) is dropped when either value is None or NaN.

    x and y must have the same length (KnrecallError otherwise).
    """
    a, b = _as_float_array(x, "x"), _as_float_array(y, "y")
    if a.size != b.size:
        raise KnrecallError(f"x has {a.size} values, y has {b.size}: pairs need equal lengths")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep], int(a.size - keep.sum())


def _check(n_resamples: int, level: float) -> None:
    if int(n_resamples) < 1:
        raise KnrecallError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise KnrecallError(f"level must be in (0, 1), got {level}")


# --------------------------------------------------------------------------------------------------------------------
# Ranks and the statistics, row-wise on 2-D arrays (one row per sample / resample)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties get the mean of the ranks they span) along the last axis of a 2-D array."""
    rows, n = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    new = np.ones((rows, n), dtype=bool)  # True where a run of equal values starts
    new[:, 1:] = s[:, 1:] != s[:, :-1]  # != rather than diff: inf − inf is NaN, but inf == inf is a tie
    flat = new.ravel()
    starts = np.flatnonzero(flat)
    lengths = np.diff(np.append(starts, flat.size))
    avg = (starts % n) + (lengths + 1) / 2.0  # start column (0-based) + mean of 1..length
    ranked_sorted = avg[np.cumsum(flat) - 1].reshape(rows, n)
    out = np.empty((rows, n), dtype=np.float64)
    np.put_along_axis(out, order, ranked_sorted, axis=1)
    return out


def _tie_groups(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's tie group (0 .. G-1, ascending by value) and G."""
    unique, inverse = np.unique(a, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), unique.size


def _resampled_ranks(group: np.ndarray, n_groups: int, idx: np.ndarray) -> np.ndarray:
    """Average ranks along each row of a[idx] (idx: rows × m indices into a), from a's tie groups: a value's rank is
    the count of drawn values in lower groups plus (the count in its own group + 1) / 2 — exact, O(m) per row."""
    rows = idx.shape[0]
    flat = group[idx] + n_groups * np.arange(rows)[:, None]  # (row, group) as one index into rows × n_groups
    counts = np.bincount(flat.ravel(), minlength=rows * n_groups).reshape(rows, n_groups)
    rank_of_group = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2.0
    return rank_of_group.ravel()[flat]


def _u_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann–Whitney U of each row of `pos` (rows × n_pos) against the same row of `neg` (rows × n_neg)."""
    n_pos = pos.shape[1]
    r = _ranks(np.concatenate([pos, neg], axis=1))
    return r[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0


def _pearson_rows(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson correlation per row; NaN where a row has zero variance (or fewer than 2 columns)."""
    dx = rx - rx.mean(axis=1, keepdims=True)
    dy = ry - ry.mean(axis=1, keepdims=True)
    sxx, syy = (dx * dx).sum(axis=1), (dy * dy).sum(axis=1)
    sxy = (dx * dy).sum(axis=1)
    den = np.sqrt(sxx * syy)
    # Ranks are half-integers: a constant row has an exactly zero sum of squares; scale guards the rest.
    ok = (sxx > 0) & (syy > 0) & (den > 0)
    out = np.full(rx.shape[0], np.nan)
    out[ok] = np.clip(sxy[ok] / den[ok], -1.0, 1.0)
    return out


def _u_and_pairs(positives: Values, negatives: Values) -> tuple[float, float, np.ndarray, np.ndarray]:
    pos, _ = drop_missing(positives, "positives")
    neg, _ = drop_missing(negatives, "negatives")
    pairs = float(pos.size) * float(neg.size)
    if pairs == 0:
        return 0.0, 0.0, pos, neg
    return float(_u_rows(pos[None, :], neg[None, :])[0]), pairs, pos, neg


# --------------------------------------------------------------------------------------------------------------------
# Point statistics


def auc(positives: Values, negatives: Values) -> float | None:
    """P(a random positive scores above a random negative), ties counting ½.

    Definition: AUC = U / (n_pos·n_neg), U = Σ_i Σ_j ([p_i > n_j] + ½·[p_i = n_j]) (Mann–Whitney U), computed by
    ranks: U = Σ_i rank(p_i) − n_pos(n_pos + 1)/2 with average ranks in the pooled sample, O(n log n). None and NaN
    are dropped first. 1.0: every positive above every negative; 0.0: every positive below; 0.5: no separation (or
    all tied). None if either class is empty (after dropping).
    """
    u, pairs, _, _ = _u_and_pairs(positives, negatives)
    return None if pairs == 0 else u / pairs


def _strata(groups: Iterable[tuple[Values, Values]]) -> tuple[np.ndarray, np.ndarray]:
    """(U_g, n_pos,g·n_neg,g) of the strata with both sides non-empty (after dropping None / NaN), all strata ranked
    in one pass: the pooled values sorted by (stratum, value), average ranks within each stratum's ties. None / NaN
    are dropped from the pooled values at once (one pass, not one per stratum: the scoreboard has ~1000 strata)."""
    values, sides = [], []
    for k, group in enumerate(groups):
        try:
            positives, negatives = group
        except (TypeError, ValueError):
            raise KnrecallError(f"groups[{k}]: expected a (positives, negatives) pair") from None
        pos, neg = _as_float_array(positives, "positives"), _as_float_array(negatives, "negatives")
        values += [pos, neg]
        sides += [pos.size, neg.size]
    if not values:
        return np.zeros(0), np.zeros(0)
    v = np.concatenate(values)
    side = np.repeat(np.arange(len(sides)), sides)  # 2k: stratum k's positives, 2k + 1: its negatives
    keep = ~np.isnan(v)
    v, side = v[keep], side[keep]
    counts = np.bincount(side, minlength=len(sides)).reshape(-1, 2)
    full = (counts[:, 0] > 0) & (counts[:, 1] > 0)  # strata with both sides non-empty, renumbered 0, 1, ...
    if not full.any():
        return np.zeros(0), np.zeros(0)
    number = np.cumsum(full) - 1
    used = full[side // 2]
    v, g, is_pos = v[used], number[side[used] // 2], side[used] % 2 == 0
    order = np.lexsort((v, g))
    sv, sg, sp = v[order], g[order], is_pos[order]
    n = sv.size
    new_stratum = np.ones(n, dtype=bool)
    new_stratum[1:] = sg[1:] != sg[:-1]
    new_run = new_stratum.copy()
    new_run[1:] |= sv[1:] != sv[:-1]  # != rather than diff: inf == inf is a tie
    stratum_start = np.maximum.accumulate(np.where(new_stratum, np.arange(n), 0))
    run_starts = np.flatnonzero(new_run)
    run_lengths = np.diff(np.append(run_starts, n))
    run_of = np.cumsum(new_run) - 1
    ranks = (run_starts[run_of] - stratum_start) + (run_lengths[run_of] + 1) / 2.0  # 1-based, within the stratum
    n_strata = int(sg.max()) + 1
    n_pos = np.bincount(sg, weights=sp, minlength=n_strata)
    n_all = np.bincount(sg, minlength=n_strata)
    u = np.bincount(sg, weights=np.where(sp, ranks, 0.0), minlength=n_strata) - n_pos * (n_pos + 1) / 2.0
    return u.astype(np.float64), (n_pos * (n_all - n_pos)).astype(np.float64)


def stratified_auc(groups: Iterable[tuple[Values, Values]]) -> float | None:
    """Pooled within-stratum AUC: positives are compared only with negatives of their own stratum.

    `groups` is a sequence of (positives, negatives) pairs, one per stratum (e.g. per fact: the fact's own items'
    scores and the same fact's null scores). Definition: Σ_g U_g / Σ_g n_pos,g·n_neg,g, with U_g the Mann–Whitney U
    of stratum g (ties ½), i.e. the fraction of within-stratum (positive, negative) pairs in which the positive
    scores higher. Each stratum weighs by its number of pairs. None and NaN are dropped first; strata with an empty
    side contribute nothing. With one stratum it equals `auc`. None if no stratum has both sides.
    """
    u, m = _strata(groups)
    return None if m.size == 0 else float(u.sum() / m.sum())


def spearman(x: Values, y: Values) -> float | None:
    """Spearman rank correlation of the pairs (x[k], y[k]).

    Definition: the Pearson correlation of rank(x) and rank(y), average ranks for ties (equal to
    scipy.stats.spearmanr(x, y).statistic). Pairs with a None / NaN on either side are dropped first. In [−1, 1]:
    1.0 for any strictly increasing relation, −1.0 for a strictly decreasing one. None if fewer than 2 pairs remain
    or either side is constant.
    """
    a, b, _ = drop_missing_pairs(x, y)
    if a.size < 2:
        return None
    r = _pearson_rows(_ranks(a[None, :]), _ranks(b[None, :]))[0]
    return None if np.isnan(r) else float(r)


# --------------------------------------------------------------------------------------------------------------------
# Bootstrap CIs


def _chunks(n_resamples: int, width: int) -> list[int]:
    """Rows per chunk so that each chunk holds about _CHUNK_ELEMENTS elements (deterministic in its arguments)."""
    rows = max(1, min(n_resamples, _CHUNK_ELEMENTS // max(1, width)))
    sizes = [rows] * (n_resamples // rows)
    if n_resamples % rows:
        sizes.append(n_resamples % rows)
    return sizes


def _interval(stats: np.ndarray, n_resamples: int, level: float) -> Interval | None:
    """Percentile interval of the defined (non-NaN) resampled statistics; None if more than half are undefined."""
    ok = stats[~np.isnan(stats)]
    if ok.size == 0 or 2 * (n_resamples - ok.size) > n_resamples:
        return None
    alpha = (1.0 - level) / 2.0
    q = np.quantile(ok, [alpha, 1.0 - alpha], method="linear")
    return float(q[0]), float(q[1])


def auc_ci(positives: Values, negatives: Values, n_resamples: int = 1000, seed: int = 0,
           level: float = 0.95) -> Interval | None:
    """Percentile bootstrap CI (low, high) of `auc(positives, negatives)`.

    Each resample draws n_pos positives and n_neg negatives with replacement, each class on its own (positives
    first, then negatives, chunk by chunk, from `numpy.random.default_rng(seed)`), and computes the AUC by ranks;
    the CI is the (1 − level)/2 and (1 + level)/2 quantiles of the n_resamples AUCs. None and NaN are dropped first.
    None if either class is empty. Deterministic for a given seed and input.
    """
    _check(n_resamples, level)
    _, pairs, pos, neg = _u_and_pairs(positives, negatives)
    if pairs == 0:
        return None
    gen = np.random.default_rng(int(seed))
    group, n_groups = _tie_groups(np.concatenate([pos, neg]))
    stats = []
    for rows in _chunks(int(n_resamples), pos.size + neg.size):
        ip = gen.integers(0, pos.size, size=(rows, pos.size))
        ineg = gen.integers(0, neg.size, size=(rows, neg.size))
        ranks = _resampled_ranks(group, n_groups, np.concatenate([ip, pos.size + ineg], axis=1))
        stats.append((ranks[:, :pos.size].sum(axis=1) - pos.size * (pos.size + 1) / 2.0) / pairs)
    return _interval(np.concatenate(stats), int(n_resamples), level)


def stratified_auc_ci(groups: Iterable[tuple[Values, Values]], n_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> Interval | None:
    """Cluster-bootstrap percentile CI (low, high) of `stratified_auc(groups)`.

    The strata with both sides non-empty (after dropping None / NaN) are the clusters: each resample draws that many
    strata with replacement (from `numpy.random.default_rng(seed)`), keeping each drawn stratum whole, and computes
    Σ U_g / Σ n_pos,g·n_neg,g over the drawn strata (a stratum drawn twice counts twice). The items inside a stratum
    are not resampled, so the interval reflects variation between strata (e.g. facts). With a single stratum the
    interval has zero width. None if no stratum has both sides. Deterministic for a given seed and input.
    """
    _check(n_resamples, level)
    return _strata_ci(*_strata(groups), int(n_resamples), int(seed), level)


def stratified_auc_with_ci(groups: Iterable[tuple[Values, Values]], n_resamples: int = 1000, seed: int = 0,
                           level: float = 0.95) -> tuple[float | None, Interval | None]:
    """(`stratified_auc(groups)`, `stratified_auc_ci(groups, ...)`) from one ranking of the strata."""
    _check(n_resamples, level)
    u, m = _strata(groups)
    point = None if m.size == 0 else float(u.sum() / m.sum())
    return point, _strata_ci(u, m, int(n_resamples), int(seed), level)


def _strata_ci(u: np.ndarray, m: np.ndarray, n_resamples: int, seed: int, level: float) -> Interval | None:
    if m.size == 0:
        return None
    gen = np.random.default_rng(int(seed))
    stats = []
    for rows in _chunks(int(n_resamples), m.size):
        idx = gen.integers(0, m.size, size=(rows, m.size))
        stats.append(u[idx].sum(axis=1) / m[idx].sum(axis=1))
    return _interval(np.concatenate(stats), int(n_resamples), level)


def spearman_ci(x: Values, y: Values, n_resamples: int = 1000, seed: int = 0,
                level: float = 0.95) -> Interval | None:
    """Percentile bootstrap CI (low, high) of `spearman(x, y)`, resampling pairs.

    Each resample draws n pairs (x[k], y[k]) with replacement (from `numpy.random.default_rng(seed)`), re-ranks both
    sides (average ranks) and computes the rank correlation. Resamples with a constant side are undefined and left
    out; None if more than half are, or if `spearman(x, y)` itself is None (fewer than 2 pairs, a constant side).
    Pairs with a None / NaN are dropped first. Deterministic for a given seed and input.
    """
    _check(n_resamples, level)
    a, b, _ = drop_missing_pairs(x, y)
    if spearman(a, b) is None:
        return None
    gen = np.random.default_rng(int(seed))
    (group_a, n_a), (group_b, n_b) = _tie_groups(a), _tie_groups(b)
    stats = []
    for rows in _chunks(int(n_resamples), 2 * a.size):
        idx = gen.integers(0, a.size, size=(rows, a.size))
        stats.append(_pearson_rows(_resampled_ranks(group_a, n_a, idx), _resampled_ranks(group_b, n_b, idx)))
    return _interval(np.concatenate(stats), int(n_resamples), level)


__all__ = ["auc", "stratified_auc", "spearman", "auc_ci", "stratified_auc_ci", "stratified_auc_with_ci", "spearman_ci",
           "drop_missing", "drop_missing_pairs"]
