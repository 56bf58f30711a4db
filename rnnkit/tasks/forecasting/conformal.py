"""Split-conformal prediction intervals, calibrated on the validation span.

The best model forecasts from every origin of the validation span whose horizon lies in it; the
absolute errors |y − ŷ| per horizon step and target column, in model space (the targets transformed
and scaled), are the calibration scores. At level 1 − α the half-width of step h is the
⌈(n + 1)(1 − α)⌉-th smallest of its n scores, the split-conformal quantile (Vovk et al. 2005; Lei
et al. 2018), so that ŷ ± q covers a new actual with probability at least 1 − α when errors are
exchangeable. The interval is formed in model space and mapped back by the same monotone steps as
the forecast (scaling, exp), so a log model's interval is asymmetric in the data's units.
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
    scores = np.array(calibration["scores"], dtype=np.float64)   # [K, H, C], NaN for None
    count = np.asarray(calibration["count"], dtype=np.int64)     # [H, C]
    out = np.empty(count.shape)
    for (h, c), n in np.ndenumerate(count):
        rank = math.ceil((n + 1) * level)
        if rank > n:
            out[h, c] = np.inf
            continue
        column = scores[:, h, c]
        column = column[~np.isnan(column)]
        if len(column) == n:
            out[h, c] = column[rank - 1]
        else:  # summarised: the same order statistic read off the kept quantiles
            out[h, c] = np.quantile(column, (rank - 1) / max(n - 1, 1))
    steps = np.minimum(np.arange(horizon), len(out) - 1)
    return out[steps]


def coverage_by_step(actuals: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """<float64>[H]: the fraction of observed actuals <float>[origins, H, C] inside [lower, upper] at each step."""
    seen = ~np.isnan(actuals)
    inside = (actuals >= lower) & (actuals <= upper) & seen
    with np.errstate(invalid="ignore"):
        return inside.sum(axis=(0, 2)) / seen.sum(axis=(0, 2))
