"""Split-conformal prediction intervals, calibrated on the validation span.

The best model forecasts from every origin of the validation span whose horizon lies in it; the
absolute errors |y − ŷ| per horizon step and target column, in model space (the targets transformed
and scaled), are the calibration scores. At level 1 − α the half-width of step h is the
⌈(n + 1)(1 − α)⌉-th smallest of its n scores, the split-conformal quantile (Vovk et al. 2005; Lei
et al. 2018), so that ŷ ± q covers a new actual with probability at least 1 − α when errors are
exchangeable. The interval is formed in model space and mapped back by the same monotone steps as
the forecast (scaling, exp), so a log model's interval is asymmetric in the data's units.

A backtest recalibrates as it goes (``recalibrated``): at each origin the scores are the validation
span's and the errors of the earlier origins whose actuals were already observed there, as a
forecaster in use would refresh its intervals with the errors it has seen (Darts's conformal models
calibrate on past historical forecasts the same way). The exchangeability this needs holds better
for the recent errors than for a validation span that may have been calmer than what followed. With
``adapt`` γ > 0 the level itself moves too, by adaptive conformal inference (ACI; Gibbs & Candès 2021,
"Adaptive conformal inference under distribution shift"): each step's miscoverage rate starts at
α = 1 − level and, as each earlier origin's actual of that step is observed, moves by γ·(α − miss)
(miss = 1 where the actual fell outside its interval), so the intervals widen after misses and narrow
after hits and the long-run coverage holds whatever the drift.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_SCORES = 1000  # scores kept per step and column: more are summarised by as many evenly spaced quantiles


def calibrate(errors: np.ndarray) -> dict[str, Any]:
    """errors <float>[W, H, C] (NaN where the actual was not observed) → the JSON-ready calibration
    ``{"scores": [K][H][C] sorted absolute errors, "count": [H][C] errors behind them}``."""
    errors = np.abs(np.asarray(errors, dtype=np.float64))
    count = (~np.isnan(errors)).sum(axis=0)
    if count.min() == 0:
        raise ValueError("data.val: the validation span holds no observed window to calibrate conformal intervals "
                         "on; lengthen data.val to at least data.horizon observed steps")
    if len(errors) > MAX_SCORES:
        scores = np.nanquantile(errors, np.linspace(0, 1, MAX_SCORES), axis=0)
    else:
        scores = np.sort(errors, axis=0)  # NaN sort last
    return {"scores": np.where(np.isnan(scores), None, scores).tolist(), "count": count.tolist()}


def halfwidth(calibration: dict[str, Any], level: float, horizon: int) -> np.ndarray:
    """<float64>[horizon, C]: the conformal half-width of each step at ``level`` (steps past the
    calibrated horizon take the last one's); inf where too few scores for that level."""
    scores, weights = _scores(calibration)
    out = np.array([[_order_statistic(v, w, level) for v, w in zip(*step)] for step in zip(scores, weights)])
    steps = np.minimum(np.arange(horizon), len(out) - 1)
    return out[steps]


def recalibrated(calibration: dict[str, Any], errors: np.ndarray, times: np.ndarray, level: float,
                 decay: float = 1.0, adapt: float = 0.0) -> np.ndarray:
    """<float64>[O, H, C]: the half-widths of a backtest's origins, each calibrated on the validation
    scores and the earlier origins' errors already observed at it.

    errors <float>[O, H, C]: forecast − actual of each origin in model space (NaN where the actual
    was not observed); times <int>[O]: each origin's step index, ascending; the actual of step h
    from origin j is known at origin i when ``times[j] + h < times[i]``. Steps past the calibrated
    horizon start from the last calibrated step's scores. ``decay`` ρ < 1 weighs a score ρ^age (age
    in steps since its actual; the validation scores count as observed at the first origin), the
    weighted conformal quantile of Barber et al. 2023 for series whose errors drift. ``adapt`` γ > 0:
    origin i's level for step h is 1 − α_i, α_i = α + γ Σ_j (α − miss_j) over the earlier origins j
    whose step-h actual is known at it (ACI), clipped to [0, 1]; where no score reaches that level, the
    largest score (a finite interval, where ACI's own would be unbounded)."""
    scores, weights = _scores(calibration)
    n_origins, horizon, columns = errors.shape
    out = np.empty(errors.shape)
    alpha = 1 - level
    for h in range(horizon):
        base = min(h, len(scores) - 1)
        for c in range(columns):
            seen = np.abs(errors[:, h, c])
            missed = np.zeros(n_origins)
            for i, t in enumerate(times):
                known = (times[:i] + h < t) & ~np.isnan(seen[:i])
                new, age = seen[:i][known], t - (times[:i][known] + h)
                values = np.concatenate([scores[base][c], new])
                adapted = alpha + adapt * float(np.sum(alpha - missed[:i][known]))
                width = _order_statistic(
                    values,
                    np.concatenate([weights[base][c] * decay ** float(t - times[0]), decay ** age.astype(float)]),
                    min(max(1 - adapted, 0.0), 1.0))
                out[i, h, c] = values.max() if adapt and math.isinf(width) else width
                missed[i] = seen[i] > out[i, h, c]
    return out


def fewest_scores(level: float) -> int:
    """The fewest scores a step needs for a bounded interval at ``level``: the ⌈(n + 1)·level⌉-th smallest
    of n exists from n = ⌈level / (1 − level)⌉."""
    return math.ceil(level / (1 - level) - 1e-9)


def _scores(calibration: dict[str, Any]) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """The kept scores of each step and column, [H][C] arrays, and the errors each stands for (1 each,
    or n / K where n errors were summarised by K quantiles)."""
    kept = np.array(calibration["scores"], dtype=np.float64)   # [K, H, C], NaN for None
    count = np.asarray(calibration["count"], dtype=np.int64)   # [H, C]
    scores = [[kept[:, h, c][~np.isnan(kept[:, h, c])] for c in range(count.shape[1])] for h in range(count.shape[0])]
    weights = [[np.full(len(v), n / len(v)) for v, n in zip(row, count[h])] for h, row in enumerate(scores)]
    return scores, weights


def _order_statistic(values: np.ndarray, weights: np.ndarray, level: float) -> float:
    """The split-conformal quantile of weighted scores: the smallest score whose cumulative weight
    reaches ``level`` of their total plus one (the new point's weight); with unit weights the
    ⌈(n + 1) · level⌉-th smallest of n. inf where no score reaches it."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    need = (cumulative[-1] + 1) * level
    rank = math.ceil(round(need, 9)) if np.all(weights == np.round(weights)) else need
    reached = cumulative >= rank - 1e-9
    return float(values[order][np.argmax(reached)]) if reached.any() else math.inf


def coverage_by_step(actuals: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """<float64>[H]: the fraction of observed actuals <float>[origins, H, C] inside [lower, upper] at each step."""
    seen = ~np.isnan(actuals)
    inside = (actuals >= lower) & (actuals <= upper) & seen
    with np.errstate(invalid="ignore"):
        return inside.sum(axis=(0, 2)) / seen.sum(axis=(0, 2))
