"""Backtests and their metrics: the scores of a forecast, one series' table of methods, many series'
per-series and mean tables, and plain-text formatting."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...baselines import Backtest
from ...data.series import date_text
from ...metrics import coverage, mae, mape, mase, rmse, smape
from .conformal import coverage_by_step


# ------------------------------------------------------------------------------- backtests
METRICS = ("MAE", "RMSE", "MAPE", "sMAPE", "MASE", "coverage")


def score_forecast(actual: np.ndarray, forecast: np.ndarray, train: np.ndarray, season: int,
            lower: np.ndarray | None = None, upper: np.ndarray | None = None) -> dict[str, float]:
    """The table's metrics over every origin, step and column (arrays <float>[origins, horizon, C], train
    <float>[N, C]); MAPE is NaN where an actual is 0, MASE is scaled per column, coverage needs bounds."""
    scores = {"MAE": mae(actual, forecast), "RMSE": rmse(actual, forecast), "sMAPE": smape(actual, forecast),
              "MASE": mase(actual, forecast, train, m=season)}
    try:
        scores["MAPE"] = mape(actual, forecast)
    except ValueError:  # an actual of 0
        scores["MAPE"] = float("nan")
    scores["coverage"] = coverage(actual, lower, upper) if lower is not None else float("nan")
    return {k: scores[k] for k in METRICS}


@dataclass
class ForecastBacktest:
    """Rolling-origin forecasts of the model and the baselines over one span, and their scores.

    ``backtests[name]``: a ``rnnkit.baselines.Backtest`` whose forecasts and actuals are
    <float64>[origins, horizon, C] in the data's units; the model's intervals are in ``lower`` and
    ``upper`` (None for a point model). ``metrics``: one row per method, columns ``METRICS``."""

    horizon: int
    start: int
    origin_dates: pd.DatetimeIndex
    target_columns: tuple[str, ...]
    backtests: dict[str, Backtest]
    lower: np.ndarray | None
    upper: np.ndarray | None
    level: float | None
    metrics: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """The metrics as a plain-text table with a header line."""
        head = (f"backtest horizon {self.horizon}: {len(self.origin_dates)} origins "
                f"{date_text(self.origin_dates[0])} .. {date_text(self.origin_dates[-1])}")
        if self.level is not None:
            head += f"; interval level {self.level:g}"
        return head + "\n" + format_metrics(self.metrics) + _coverage_line(self.coverage_by_step())

    def coverage_by_step(self) -> np.ndarray | None:
        """<float64>[horizon]: the model's interval coverage of the actuals at each step; None without intervals."""
        if self.lower is None:
            return None
        return coverage_by_step(self.backtests["model"].actuals, self.lower, self.upper)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (metrics, origins, seconds, coverage by step)."""
        steps = self.coverage_by_step()
        return {"horizon": self.horizon, "origins": len(self.origin_dates),
                "coverage_by_step": None if steps is None else [None if math.isnan(v) else v for v in steps],
                "first_origin": date_text(self.origin_dates[0]), "last_origin": date_text(self.origin_dates[-1]),
                "level": self.level, "seconds": self.seconds,
                "metrics": {name: {k: (None if math.isnan(v) else v) for k, v in row.items()}
                            for name, row in self.metrics.to_dict(orient="index").items()}}

    def frame(self) -> pd.DataFrame:
        """The model's forecasts as rows (origin, step, date, column, actual, forecast, lower, upper)."""
        bt = self.backtests["model"]
        rows = []
        for k, origin in enumerate(self.origin_dates):
            for h in range(self.horizon):
                for c, name in enumerate(self.target_columns):
                    rows.append({"origin": origin, "step": h + 1, "column": name,
                                 "actual": bt.actuals[k, h, c], "forecast": bt.forecasts[k, h, c],
                                 **({"lower": self.lower[k, h, c], "upper": self.upper[k, h, c]}
                                    if self.lower is not None else {})})
        return pd.DataFrame(rows)


def _forecast_rows(series_id: str | None, origin_steps: pd.Index, horizon: int, targets: Sequence[str],
                   bt: Backtest, lower: np.ndarray | None, upper: np.ndarray | None) -> pd.DataFrame:
    """A backtest's forecasts as rows (series, origin, step, column, actual, forecast, lower, upper)."""
    k, h, c = np.meshgrid(np.arange(len(bt.origins)), np.arange(horizon), np.arange(len(targets)), indexing="ij")
    k, h, c = k.ravel(), h.ravel(), c.ravel()
    rows = {"origin": np.asarray(origin_steps)[k], "step": h + 1, "column": np.asarray(targets, dtype=object)[c],
            "actual": bt.actuals[k, h, c], "forecast": bt.forecasts[k, h, c]}
    if lower is not None:
        rows["lower"], rows["upper"] = lower[k, h, c], upper[k, h, c]
    return pd.DataFrame(rows if series_id is None else {"series": series_id, **rows})


@dataclass
class PanelBacktest:
    """Backtests of many series: ``series_metrics`` has one row per (series, method), ``metrics`` the
    mean over series per method (MASE scaled per series by its own in-sample seasonal-naive error)."""

    horizon: int
    series: int
    level: float | None
    metrics: pd.DataFrame
    series_metrics: pd.DataFrame
    forecasts: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    target_columns: tuple[str, ...] = ()

    def table(self) -> str:
        """The mean metrics over series as a plain-text table with a header line."""
        origins = self.forecasts.groupby("series")["origin"].nunique()
        head = (f"backtest horizon {self.horizon}: {self.series} series, {int(origins.sum())} origins; "
                "means over series")
        if self.level is not None:
            head += f"; interval level {self.level:g}"
        return head + "\n" + format_metrics(self.metrics) + _coverage_line(self.coverage_by_step())

    def coverage_by_step(self) -> np.ndarray | None:
        """<float64>[horizon]: the model's interval coverage of the actuals at each step, over every series
        and origin; None without intervals."""
        if "lower" not in self.forecasts:
            return None
        f = self.forecasts
        inside = (f["actual"] >= f["lower"]) & (f["actual"] <= f["upper"])
        seen = f["actual"].notna()
        return (inside & seen).groupby(f["step"]).sum().to_numpy() / seen.groupby(f["step"]).sum().to_numpy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (mean metrics, series, seconds, coverage by step)."""
        steps = self.coverage_by_step()
        return {"horizon": self.horizon, "series": self.series, "level": self.level, "seconds": self.seconds,
                "coverage_by_step": None if steps is None else [None if math.isnan(v) else v for v in steps],
                "metrics": {name: {k: (None if math.isnan(v) else v) for k, v in row.items()}
                            for name, row in self.metrics.to_dict(orient="index").items()}}

    def frame(self) -> pd.DataFrame:
        """The model's forecasts as rows (series, origin, step, column, actual, forecast, lower, upper)."""
        return self.forecasts


def _coverage_line(steps: np.ndarray | None) -> str:
    if steps is None:
        return ""
    return "\ninterval coverage by step: " + " ".join(f"{v:.2f}" for v in steps)


def format_metrics(frame: pd.DataFrame) -> str:
    """A metrics frame (rows: methods) as a plain-text table; all-NaN columns left out, NaN as n/a."""
    cols = [c for c in frame.columns if not frame[c].isna().all()]
    width = max(len(str(i)) for i in frame.index)
    lines = [f"{'method':<{width}}  " + "  ".join(f"{c:>8}" for c in cols)]
    for name, row in frame.iterrows():
        cells = ["     n/a" if math.isnan(row[c]) else f"{row[c]:8.3f}" for c in cols]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def format_tables(backtests: Sequence[ForecastBacktest]) -> str:
    """Several backtests' tables, one after another."""
    return "\n\n".join(bt.table() for bt in backtests)


def _now() -> float:
    return time.perf_counter()
