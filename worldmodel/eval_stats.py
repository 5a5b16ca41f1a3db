"""eval-wm's statistics: bootstrap intervals over starts and paired tests between arms.

Every figure of the evaluation is a *statistic of the starts*: a mean of per-start values (PSNR,
MPJPE, ...), or a ratio pooled over them (occupancy IoU: summed intersections over summed
unions; a visibility F-score from summed true and false positives and negatives; a Fréchet
distance of two feature sets). A statistic is written here as a function of index rows
``idx`` (R, n) -> (R,) values, so that one call evaluates it on R bootstrap resamples of the n
starts at once; the point estimate is the statistic on ``arange(n)``.

- ``interval``: the point estimate and a 95 % percentile interval over ``resamples`` bootstrap
  resamples of the starts (seeded: the same n and seed give the same resamples, so every arm of a
  horizon is resampled alike).
- ``paired_test``: model vs baseline on the same starts: the bootstrap distribution of the
  difference of the two statistics under the *same* resamples (for a mean this is the bootstrap
  of the per-start paired differences). ``won`` when the 95 % interval of the difference lies
  wholly on the better side; ``p`` is the two-sided bootstrap p-value (twice the smaller tail).

A Fréchet distance is biased under resampling with replacement (a resample repeats frames, which
raises the distance between the sets), so its percentile interval can miss the estimate: its
bootstrap values are first shifted to have the estimate as their mean (``recentre``), which keeps
their spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]  # index rows (R, n) -> (R,) values
LEVEL = 0.95


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices drawn with replacement from range(n), seeded by (seed, n)."""
    return np.random.default_rng([int(seed), int(n)]).integers(0, n, size=(int(resamples), n))


def finite(x: float | None) -> float | None:
    """JSON has no NaN: an undefined value is written as null."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _percentiles(vals: np.ndarray) -> list[float | None]:
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return [None, None]
    lo, hi = np.percentile(vals, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return [float(lo), float(hi)]


def _recentred(value: float, boot: np.ndarray) -> np.ndarray:
    """The bootstrap values shifted so that their mean is the estimate: the spread of a statistic
    that resampling biases, without the bias."""
    return boot - (boot[np.isfinite(boot)].mean() - value) if np.isfinite(boot).any() else boot


def interval(stat: Statistic, n: int, resamples: int, seed: int, recentre: bool = False) -> dict:
    """``{"value", "ci": [lo, hi], "n"}`` of ``stat`` over n starts (None where undefined).
    ``recentre``: the percentiles of the recentred bootstrap values (see ``_recentred``)."""
    if n == 0:
        return {"value": None, "ci": [None, None], "n": 0}
    value = finite(stat(np.arange(n)[None])[0])
    if value is None or resamples <= 0:
        return {"value": value, "ci": [None, None], "n": int(n)}
    boot = stat(bootstrap_indices(n, resamples, seed))
    return {"value": value, "ci": _percentiles(_recentred(value, boot) if recentre else boot), "n": int(n)}


def paired_test(
    stat_model: Statistic, stat_base: Statistic, n: int, higher_is_better: bool, resamples: int, seed: int, recentre: bool = False
) -> dict:
    """Model minus baseline on the same n starts: ``{"diff", "ci", "p", "won", "n"}`` (``recentre``:
    as for ``interval``)."""
    if n < 2:
        return {"diff": None, "ci": [None, None], "p": None, "won": False, "n": int(n)}
    full = np.arange(n)[None]
    diff = finite(stat_model(full)[0] - stat_base(full)[0])
    idx = bootstrap_indices(n, resamples, seed)
    d = stat_model(idx) - stat_base(idx)
    d = d[np.isfinite(d)]
    if recentre and diff is not None and len(d):
        d = _recentred(diff, d)
    if diff is None or len(d) == 0:
        return {"diff": diff, "ci": [None, None], "p": None, "won": False, "n": int(n)}
    lo, hi = _percentiles(d)
    p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
    won = bool(lo > 0) if higher_is_better else bool(hi < 0)
    return {"diff": diff, "ci": [lo, hi], "p": p, "won": won, "n": int(n)}


# ------------------------------------------------------------------------------ statistics
def mean_of(x: np.ndarray) -> Statistic:
    """The mean of per-start values ``x`` (n,) (NaN entries left out of each resample)."""

    def stat(idx: np.ndarray) -> np.ndarray:
        v = x[idx]
        ok = np.isfinite(v)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok, v, 0.0).sum(1) / ok.sum(1)

    return stat


def ratio_of(num: np.ndarray, den: np.ndarray) -> Statistic:
    """Summed ``num`` over summed ``den`` (n,) each: a pooled ratio (IoU from counts, ratio of means)."""

    def stat(idx: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return num[idx].sum(1) / den[idx].sum(1)

    return stat


def miou_of(class_inter: np.ndarray, class_union: np.ndarray) -> Statistic:
    """Mean over classes (columns of (n, C) counts) of pooled IoU, classes with no union left out."""

    def stat(idx: np.ndarray) -> np.ndarray:
        i, u = class_inter[idx].sum(1), class_union[idx].sum(1)  # (R, C)
        iou = np.where(u > 0, i / np.maximum(u, 1e-12), np.nan)
        cnt = np.isfinite(iou).sum(1)
        return np.where(cnt > 0, np.nansum(iou, 1) / np.maximum(cnt, 1), np.nan)

    return stat


def fscore_of(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> Statistic:
    """F1 = 2 TP / (2 TP + FP + FN) of counts summed over starts ((n,) each); NaN when all are 0."""

    def stat(idx: np.ndarray) -> np.ndarray:
        t, f, m = tp[idx].sum(1), fp[idx].sum(1), fn[idx].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2 * t / (2 * t + f + m)

    return stat


def pearson_of(a: np.ndarray, b: np.ndarray) -> Statistic:
    """Pearson correlation of paired samples (n,) each; NaN when either has no spread."""

    def stat(idx: np.ndarray) -> np.ndarray:
        x, y = a[idx], b[idx]
        x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
        nx, ny = np.sqrt((x * x).sum(1)), np.sqrt((y * y).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((nx > 1e-12) & (ny > 1e-12), (x * y).sum(1) / (nx * ny), np.nan)

    return stat


def set_statistic(fn: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray) -> Statistic:
    """A statistic of two paired sets of rows (n, F) each, e.g. a Fréchet distance, evaluated
    resample by resample (slow: give it few resamples)."""

    def stat(idx: np.ndarray) -> np.ndarray:
        return np.array([fn(a[r], b[r]) for r in idx], np.float64)

    return stat
