"""Forecast and classification metrics over numpy arrays.

Forecast metrics take ``y_true`` and ``y_pred`` of one shape (any, e.g. <float>[windows, horizon] from a
backtest) and reduce over every element to a float. They are NaN-safe: a pair where either value is
NaN is left out (missing actuals under ``missing="mask"``, say); with no pair left they raise.
With e_t = y_t − ŷ_t over the n pairs kept:

    MAE   = mean |e_t|
    RMSE  = sqrt(mean e_t²)
    MAPE  = 100 · mean |e_t| / |y_t|                 (%; undefined where an actual is 0: raises)
    sMAPE = 100 · mean 2|e_t| / (|y_t| + |ŷ_t|)      (%, in [0, 200]; a term with y_t = ŷ_t = 0 is 0)
    MASE  = mean |e_t| / s,  s = mean_t |x_t − x_{t−m}| over the training series x
            (the in-sample MAE of the seasonal-naive forecast with season m; m = 1 is the naive forecast)
    coverage = fraction of actuals inside [lower, upper]

Classification metrics take integer labels <int>[N] for ``y_true``, and labels <int>[N] or scores
<float>[N, K] (argmax taken) for ``y_pred``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


# ----------------------------------------------------------------------------------- forecast
def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """The two arrays as float64, flattened to the pairs where neither is NaN."""
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_pred: expected shape {t.shape} (as y_true), got {p.shape}")
    keep = ~(np.isnan(t) | np.isnan(p))
    if not keep.any():
        raise ValueError(f"y_true, y_pred: no pair of values without NaN (shape {t.shape})")
    return t[keep], p[keep]


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse(y_true: Any, y_pred: Any) -> float:
    """Root mean squared error."""
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mape(y_true: Any, y_pred: Any) -> float:
    """Mean absolute percentage error, in %. Raises where an actual is 0."""
    t, p = _pair(y_true, y_pred)
    zeros = int(np.sum(t == 0))
    if zeros:
        raise ValueError(f"y_true: MAPE is undefined where the actual is 0, found {zeros} zeros; use smape or mase")
    return float(100.0 * np.mean(np.abs(t - p) / np.abs(t)))


def smape(y_true: Any, y_pred: Any) -> float:
    """Symmetric mean absolute percentage error, in % (0 to 200)."""
    t, p = _pair(y_true, y_pred)
    denom = np.abs(t) + np.abs(p)
    terms = np.divide(2.0 * np.abs(t - p), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(100.0 * np.mean(terms))


def seasonal_naive_scale(train: Any, m: int = 1) -> float | np.ndarray:
    """MASE's scale: the in-sample MAE of the season-``m`` naive forecast of ``train`` <float>[N] or
    [N, C] (one scale per column), NaN-safe. Raises if it is 0 up to rounding (MASE would divide by it)."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m: expected a seasonality (integer) >= 1, got {m!r}")
    x = np.asarray(train, dtype=np.float64)
    if x.ndim not in (1, 2) or len(x) <= m:
        raise ValueError(f"train: expected shape [N] or [N, C] with N > m = {m}, got {x.shape}")
    diffs = np.abs(x[m:] - x[:-m])
    if np.isnan(diffs).all(axis=0).any():
        raise ValueError(f"train: no pair of values {m} steps apart without NaN in some column")
    scale = np.nanmean(diffs, axis=0)
    if np.any(scale <= 1e-12 * np.nanmax(np.abs(x), axis=0)):  # 0 up to rounding
        raise ValueError(f"train: the in-sample seasonal-naive MAE (m={m}) is 0, so MASE is undefined; "
                         "a series that repeats exactly every m steps has no error to scale by")
    return float(scale) if x.ndim == 1 else scale


def mase(y_true: Any, y_pred: Any, train: Any, m: int = 1) -> float:
    """Mean absolute scaled error: MAE / ``seasonal_naive_scale(train, m)``. With ``train`` <float>[N, C]
    the errors (last dim C) are scaled per column. Below 1: better than the in-sample seasonal-naive."""
    scale = seasonal_naive_scale(train, m)
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if np.ndim(scale) and (t.ndim == 0 or t.shape[-1] != len(scale)):
        raise ValueError(f"y_true: expected {len(scale)} columns in the last dim (as train), got shape {t.shape}")
    return mae(t / scale, p / scale)


def coverage(y_true: Any, lower: Any, upper: Any) -> float:
    """Fraction (0 to 1) of actuals inside their interval [lower, upper], NaN actuals left out."""
    t, lo, hi = (np.asarray(a, dtype=np.float64) for a in (y_true, lower, upper))
    for name, bound in (("lower", lo), ("upper", hi)):
        if bound.shape != t.shape:
            raise ValueError(f"{name}: expected shape {t.shape} (as y_true), got {bound.shape}")
    keep = ~np.isnan(t)
    if not keep.any():
        raise ValueError(f"y_true: no value without NaN (shape {t.shape})")
    t, lo, hi = t[keep], lo[keep], hi[keep]
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise ValueError("lower, upper: expected an interval wherever y_true has a value, got NaN")
    if np.any(lo > hi):
        raise ValueError(f"lower, upper: expected lower <= upper, got {int(np.sum(lo > hi))} intervals reversed")
    return float(np.mean((t >= lo) & (t <= hi)))


# ------------------------------------------------------------------------------ classification
def _labels(y: Any, arg: str) -> np.ndarray:
    a = np.asarray(y)
    if a.size == 0:
        raise ValueError(f"{arg}: expected at least one label, got none")
    if arg == "y_pred" and a.ndim == 2 and np.issubdtype(a.dtype, np.floating):
        a = a.argmax(axis=1)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        expected = "integer labels <int>[N]" + (" or scores <float>[N, K]" if arg == "y_pred" else "")
        raise TypeError(f"{arg}: expected {expected}, got {a.dtype} of shape {a.shape}")
    if a.min() < 0:
        raise ValueError(f"{arg}: expected labels >= 0, got {int(a.min())}")
    return a


def _label_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_pred: expected {len(t)} predictions (as y_true), got {len(p)}")
    return t, p


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of predictions equal to the true label."""
    t, p = _label_pair(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None) -> np.ndarray:
    """<int64>[K, K]: entry [i, j] counts examples of true class i predicted as j.
    K = ``num_classes``, or the largest label seen + 1."""
    t, p = _label_pair(y_true, y_pred)
    seen = int(max(t.max(), p.max())) + 1
    k = seen if num_classes is None else num_classes
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < seen:
        raise ValueError(f"num_classes: expected an integer > every label (>= {seen}), got {num_classes!r}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def precision_recall_f1(y_true: Any, y_pred: Any, num_classes: int | None = None,
                        average: str | None = None) -> tuple[Any, Any, Any]:
    """Precision TP/(TP+FP), recall TP/(TP+FN) and F1 (their harmonic mean) per class, 0 where undefined.

    average None: three <float64>[K] arrays; "macro": three floats, the unweighted means over the
    classes that occur in ``y_true`` or ``y_pred`` (a class in neither does not count).
    """
    if average not in (None, "macro"):
        raise ValueError(f"average: expected None or 'macro', got {average!r}")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp, predicted, actual = np.diag(cm).astype(np.float64), cm.sum(axis=0), cm.sum(axis=1)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, actual)
    f1 = ratio(2 * precision * recall, precision + recall)
    if average is None:
        return precision, recall, f1
    present = (predicted + actual) > 0
    return tuple(float(v[present].mean()) for v in (precision, recall, f1))
