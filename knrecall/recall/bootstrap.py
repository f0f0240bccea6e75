"""Percentile bootstrap confidence intervals (DESIGN.md §4: recall shares, interventions against the base run).

Method. Draw `n_resamples` resamples of the units (values, items or pairs) with replacement, each the size of the
sample, compute the statistic on each, and return the (1 − level)/2 and (1 + level)/2 quantiles of those statistics
(linear interpolation, numpy's default). Resample indices come from numpy's `Generator(PCG64(seed))`, so a result is
deterministic for a given seed and input; the resamples are vectorized as one (n_resamples × n) index matrix
(float64 throughout). numpy, not torch: the rules that only compute statistics start without importing torch.

* `bootstrap_ci`: one sample, statistic "mean" / "median" (vectorized) or any callable on a list of floats.
* `bootstrap_share_ci`: a ratio of category counts (e.g. MH = TT/(TT+FT)) over per-item categories: resample items,
  recount, recompute. Resamples whose denominator is 0 have no ratio and are left out (the interval is conditional
  on a defined ratio); their number is not reported. If no resample has a ratio, (None, None).
* `paired_difference_ci`: resample pairs (i.e. the differences a_k − b_k), CI of mean(a − b).
* `paired_ratio_ci`: resample units (each with a numerator and a denominator value), CI of mean(a) / mean(b);
  resamples whose mean(b) is 0 have no ratio and are left out, as for `bootstrap_share_ci`.
* `difference_ci`: two independent groups, each resampled on its own (a first, then b, from the same generator),
  CI of mean(a) − mean(b).
* `category_share_cis`: MH and SC intervals per condition from a `categories` table.

Null or NaN inputs are errors (filter them first); empty inputs are errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import polars as pl

from knrecall.errors import KnrecallError

Statistic = str | Callable[[list[float]], float]


def _values(values, name: str) -> np.ndarray:
    if isinstance(values, pl.Series):
        if values.null_count():
            raise KnrecallError(f"{name}: {values.null_count()} null value(s)")
        values = values.to_list()
    vals = list(values)
    if not vals:
        raise KnrecallError(f"{name}: no values")
    if any(v is None for v in vals):
        raise KnrecallError(f"{name}: null value(s)")
    t = np.array([float(v) for v in vals], dtype=np.float64)
    if np.isnan(t).any():
        raise KnrecallError(f"{name}: NaN value(s)")
    return t


def _check(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise KnrecallError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise KnrecallError(f"level must be in (0, 1), got {level}")


def _generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int(seed)))


def _indices(n: int, n_resamples: int, gen: np.random.Generator) -> np.ndarray:
    return gen.integers(0, n, size=(n_resamples, n))


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    q = np.quantile(stats, [alpha, 1.0 - alpha], method="linear")
    return float(q[0]), float(q[1])


def _apply(samples: np.ndarray, statistic: Statistic) -> np.ndarray:
    """The statistic of each row of `samples` (n_resamples × n)."""
    if statistic == "mean":
        return samples.mean(axis=1)
    if statistic == "median":  # the mean of the two middle values for even n, as statistics.median
        s = np.sort(samples, axis=1)
        n = s.shape[1]
        return (s[:, (n - 1) // 2] + s[:, n // 2]) / 2.0
    if isinstance(statistic, str):
        raise KnrecallError(f"unknown statistic {statistic!r}; use 'mean', 'median' or a callable")
    return np.array([float(statistic(row.tolist())) for row in samples], dtype=np.float64)


def bootstrap_ci(values: Iterable[float] | pl.Series, statistic: Statistic = "mean", n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI (low, high) of `statistic` over `values`."""
    _check(n_resamples, level)
    x = _values(values, "values")
    idx = _indices(len(x), n_resamples, _generator(seed))
    return _interval(_apply(x[idx], statistic), level)


def bootstrap_share_ci(categories: Iterable[str] | pl.Series, numerator: Sequence[str] = ("TT",),
                       denominator: Sequence[str] = ("TT", "FT"), n_resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float | None, float | None]:
    """CI of count(numerator) / count(denominator) over per-item category labels, resampling items.

    Pass the items the ratio is defined over (e.g. the categorized ones of one condition); labels outside both sets
    count in neither but are resampled as items. MH: numerator ("TT",); SC: numerator ("FT",); both over
    ("TT", "FT").
    """
    _check(n_resamples, level)
    labels = categories.to_list() if isinstance(categories, pl.Series) else list(categories)
    if not labels:
        raise KnrecallError("categories: no items")
    if any(v is None for v in labels):
        raise KnrecallError("categories: null label(s)")
    num = np.array([lab in numerator for lab in labels], dtype=np.float64)
    den = np.array([lab in denominator for lab in labels], dtype=np.float64)
    idx = _indices(len(labels), n_resamples, _generator(seed))
    n_num, n_den = num[idx].sum(axis=1), den[idx].sum(axis=1)
    ok = n_den > 0
    if not ok.any():
        return None, None
    return _interval(n_num[ok] / n_den[ok], level)


def paired_difference_ci(a: Iterable[float] | pl.Series, b: Iterable[float] | pl.Series, n_resamples: int = 1000,
                         seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """CI of mean(a − b) for paired data (a[k], b[k] measured on the same unit k): resample pairs."""
    x, y = _values(a, "a"), _values(b, "b")
    if len(x) != len(y):
        raise KnrecallError(f"paired_difference_ci: a has {len(x)} values, b has {len(y)}")
    return bootstrap_ci((x - y).tolist(), "mean", n_resamples, seed, level)


def paired_ratio_ci(a: Iterable[float] | pl.Series, b: Iterable[float] | pl.Series, n_resamples: int = 1000,
                    seed: int = 0, level: float = 0.95) -> tuple[float | None, float | None]:
    """CI of mean(a) / mean(b) for paired data (a[k], b[k] on the same unit k): resample units."""
    _check(n_resamples, level)
    x, y = _values(a, "a"), _values(b, "b")
    if len(x) != len(y):
        raise KnrecallError(f"paired_ratio_ci: a has {len(x)} values, b has {len(y)}")
    idx = _indices(len(x), n_resamples, _generator(seed))
    num, den = x[idx].mean(axis=1), y[idx].mean(axis=1)
    ok = den != 0
    if not ok.any():
        return None, None
    return _interval(num[ok] / den[ok], level)


def difference_ci(a: Iterable[float] | pl.Series, b: Iterable[float] | pl.Series, n_resamples: int = 1000,
                  seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """CI of mean(a) − mean(b) for two independent groups: each group resampled on its own."""
    _check(n_resamples, level)
    x, y = _values(a, "a"), _values(b, "b")
    gen = _generator(seed)
    ix = _indices(len(x), n_resamples, gen)
    iy = _indices(len(y), n_resamples, gen)
    return _interval(x[ix].mean(axis=1) - y[iy].mean(axis=1), level)


def category_share_cis(cats: pl.DataFrame, n_resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> pl.DataFrame:
    """Per condition: MH_low, MH_high, SC_low, SC_high from a `scores.categories` table (items with category
    TT/TF/FT/FF are resampled; "no_kns" / "undecided" items are left out). Null where no resample defines the ratio.
    """
    if "condition" not in cats.columns or "category" not in cats.columns:
        raise KnrecallError(f"categories: need columns condition, category; has {cats.columns}")
    rows = []
    for cond in sorted(cats.get_column("condition").unique().to_list()):
        labels = cats.filter((pl.col("condition") == cond)
                             & pl.col("category").is_in(["TT", "TF", "FT", "FF"])).get_column("category")
        if labels.len() == 0:
            mh = sc = (None, None)
        else:
            mh = bootstrap_share_ci(labels, ("TT",), ("TT", "FT"), n_resamples, seed, level)
            sc = bootstrap_share_ci(labels, ("FT",), ("TT", "FT"), n_resamples, seed, level)
        rows.append({"condition": cond, "MH_low": mh[0], "MH_high": mh[1], "SC_low": sc[0], "SC_high": sc[1]})
    schema = {"condition": pl.String, "MH_low": pl.Float64, "MH_high": pl.Float64, "SC_low": pl.Float64,
              "SC_high": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


__all__ = ["bootstrap_ci", "bootstrap_share_ci", "paired_difference_ci", "paired_ratio_ci", "difference_ci",
           "category_share_cis"]
