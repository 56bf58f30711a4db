"""Time-series forecasting: a recurrent encoder and a linear output layer, with covariates, scaling,
probabilistic outputs, rolling-origin backtests and statistical baselines (Darts / neuralforecast style).

    fc = Forecaster.fit(df, date_column="Month", target="Passengers", test=48, horizon=12, epochs=50)
    fc.predict()                  # DataFrame of the next 12 months (+ _lower/_upper when probabilistic)
    fc.backtest(horizon=12)       # rolling origins over the test span, beside naive, seasonal naive, HW
    fc.save("runs/airline/best"); Forecaster.load("runs/airline/best").predict(df=new_history)

Many series, one global model: a long-format frame (one row per series and step) with
``id_column`` (e.g. ``unique_id``), the time column (dates or integer steps) and the targets::

    fc = Forecaster.fit(df, id_column="unique_id", date_column="ds", target="y",
                        static_covariates=["category"], test=24, horizon=24, season=12)
    fc.backtests[24].metrics   # means over series; .series_metrics per series and method

Each series is split on its own (its last ``data.test`` steps), transformed and scaled by
scalers fitted on its own training part (kept per series id in the checkpoint); the windows of
all series train one network. Static categorical covariates are one-hot at every input step (the
input projection is then a learnt embedding of each category); the categories are kept with the
checkpoint. Backtests score each series (MASE by its own in-sample seasonal-naive error) and
average over series; ``predict`` returns a long frame (id, time, targets).

The data path: ``read_series`` (clean, sorted, numeric; calendar features) → transform ("log",
"log1p") → scalers fitted on the training part only → windows of ``lookback`` inputs and
``horizon`` targets → each window shifted by its reference level (``forecast.normalize``: the last
observed value, so that a trend beyond the training range stays in range) → the network. Outputs
take the way back: + reference → inverse scaling → inverse transform. The split is chronological:
train | val | test, the test being the tail (``data.test``: a count of steps or a fraction).

Shapes: W windows, L lookback, H horizon, C targets, Pc past covariates (known up to the forecast
origin), Fc future covariates (known ahead: the data's ``future_covariates`` and calendar features),
K outputs per value (1 point, 2 Gaussian mean/spread, Q quantiles). The network input, per step:

    layout "last"   (direct, Fc = 0)  x <float>[W, L, C+Pc]            → last state → Linear → [W, H·C·K]
    layout "steps"  (direct, Fc > 0)  x <float>[W, L+H, C+Pc+Fc+1]     → per-step Linear, last H steps
    layout "recursive"                x <float>[W, L+H−1, C+Pc+Fc+1]   → per-step Linear, next value

"last" is the classic direct multi-output model: all H steps read off the final state at once.
With future covariates the sequence runs on over the H horizon steps, which carry the covariates,
a 0 target and a 0 flag (the last column: 1 where the target was observed); the outputs of those
steps are the forecast, still all at once, and step h depends only on covariates up to h.
"recursive" learns the next value at every step (teacher forcing; input step t holds y_t, the past
covariates while observed and the future covariates of step t+1) and feeds its own forecast back.

Probabilistic outputs: "gaussian" (mean and spread, trained by negative log-likelihood; interval
mean ± z·spread at ``forecast.level``; a recursive model samples ``forecast.samples`` paths) or
"quantile" (pinball loss on ``forecast.quantiles``; the interval spans the outer two). Intervals
are quantiles of the transformed series, and every step back (shift, scaling, exp) is monotone,
so they stay quantiles in the data's units; the point forecast of a log model is a median.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor
from torch.nn import functional as F

from ..baselines import (ARIMA, AutoARIMA, AutoETS, AutoTheta, Backtest, HoltWinters, Naive, SeasonalNaive,
                         backtest as baseline_backtest)
from ..config import Config
from ..data.datasets import dataset_file
from ..data.text import TextFileConfig
from ..data.series import (MinMaxScaler, Panel, PanelSeries, RobustScaler, Scaler, SeriesData, StandardScaler,
                           calendar_features, chronological_split, make_windows, read_csv, read_panel, read_series)
from ..metrics import coverage, mae, mape, mase, rmse, smape
from ..model import ModelConfig, SequenceModel
from ..train import TrainConfig, Trainer
from .base import Task, Training

logger = logging.getLogger(__name__)

__all__ = ["ForecastDataConfig", "ForecastConfig", "EvaluationConfig", "ForecastExperiment", "Forecaster",
           "ForecastBacktest", "PanelBacktest", "forecast_to_files", "backtest_to_files", "format_tables",
           "format_metrics", "score_forecast"]


# ------------------------------------------------------------------------------------ configs
class ForecastDataConfig(TextFileConfig):
    """The series: where it comes from, which columns play which role, the split and the windows."""

    path: str = Field("", description="CSV file with a date column and value columns; '' uses dataset/file "
                                      "(or the DataFrame given to Forecaster.fit)")
    dataset: str = Field("", description="a registered data set holding the file, e.g. 'timeseries'")
    file: str = Field("", description="file of the data set, e.g. 'airline-passengers.csv'")
    data_dir: str = Field("", description="root holding <dataset>/<file> (default: $RNNKIT_DATA, then the cache)")
    date_column: str = Field("date", description="column of timestamps (with id_column: dates or integer step numbers)")
    id_column: str = Field("", description="column naming the series of a long-format frame (one row per series and "
                                           "step): one global model over all of them; '' = one series")
    static_covariates: list[str] = Field(default_factory=list,
                                         description="with id_column: columns with one value per series (e.g. a "
                                                     "category), one-hot into the network's input at every step")
    target_columns: list[str] = Field(default_factory=list, description="the series to forecast (one or more)")
    past_covariates: list[str] = Field(default_factory=list,
                                       description="columns observed up to the forecast origin only")
    future_covariates: list[str] = Field(default_factory=list,
                                         description="columns known ahead (given for the horizon at forecast time)")
    calendar: list[str] = Field(default_factory=list, description="calendar features added as future covariates: "
                                                                  "month, day_of_week, day, day_of_year, hour")
    calendar_encoding: Literal["sincos", "onehot"] = Field("sincos", description="encoding of calendar features")
    freq: str = Field("", description="pandas frequency ('MS', 'D', 'h'); '' infers it from the dates")
    date_format: str = Field("", description="strftime format of the dates; '' lets pandas parse them")
    missing: Literal["interpolate", "ffill", "mask"] = Field(
        "interpolate", description="missing values: interpolate in time, carry forward, or mask (left out of "
                                   "the loss and the scores, read as the window's reference level)")
    val: int | float = Field(0, ge=0, description="validation part before the test: a count of steps or a "
                                                  "fraction; 0 = none (the best epoch is then by training loss)")
    test: int | float = Field(0.2, ge=0, description="test part at the end: a count of steps or a fraction")
    lookback: int = Field(24, ge=1, description="input steps per window")
    horizon: int = Field(12, ge=1, description="steps forecast at once (direct) or trained on (recursive)")
    transform: Literal["none", "log", "log1p"] = Field("none", description="applied to the targets before scaling")
    scaler: Literal["standard", "minmax", "robust", "none"] = Field(
        "standard", description="per-column scaling fitted on the training part (targets and covariates)")
    batch_size: int = Field(32, ge=1, description="windows per training batch")
    stride: int = Field(1, ge=1, description="steps between training windows")

    @model_validator(mode="after")
    def _check_panel(self) -> ForecastDataConfig:
        if self.static_covariates and not self.id_column:
            raise ValueError(f"static_covariates: {self.static_covariates} are per-series values of a long-format "
                             "frame; set data.id_column too")
        return self


class ForecastConfig(Config):
    """How the network forecasts: strategy, output distribution, level normalisation."""

    strategy: Literal["direct", "recursive"] = Field(
        "direct", description="direct: all horizon steps at once; recursive: one step, fed back")
    output: Literal["point", "gaussian", "quantile"] = Field(
        "point", description="point (MSE), gaussian (mean and spread, NLL) or quantile (pinball loss)")
    quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9],
                                   description="quantile output: increasing levels in (0, 1), with 0.5 (the point)")
    level: float = Field(0.8, gt=0, lt=1, description="gaussian output: probability of the prediction interval")
    samples: int = Field(200, ge=10, description="recursive gaussian: sampled paths for the intervals")
    normalize: Literal["none", "last", "mean"] = Field(
        "last", description="subtract each window's last observed (or mean) scaled target from inputs and targets")
    seed: int = Field(0, description="seed of the sampled paths (recursive gaussian)")

    @model_validator(mode="after")
    def _check(self) -> ForecastConfig:
        q = self.quantiles
        if self.output == "quantile":
            if (len(q) < 3 or any(not 0 < v < 1 for v in q) or any(b <= a for a, b in zip(q, q[1:]))
                    or 0.5 not in q):
                raise ValueError(f"quantiles: expected at least 3 increasing levels in (0, 1) including 0.5 "
                                 f"(the point forecast), got {q}")
            if self.strategy == "recursive":
                raise ValueError("output: 'quantile' needs strategy='direct' (a recursive model feeds one value "
                                 "back, so one-step quantiles would not compound); use output='gaussian', "
                                 "which samples paths")
        return self


STATISTICAL = ("auto_ets", "auto_arima", "auto_theta", "holt_winters", "arima")


class EvaluationConfig(Config):
    """Backtests after training: horizons, the seasonal period and the statistical baselines."""

    season: int = Field(1, ge=1, description="seasonal period m (12 for monthly data): seasonal naive and MASE's scale")
    horizons: list[int] = Field(default_factory=list, description="backtest horizons; empty = [1, data.horizon]")
    stride: int = Field(1, ge=1, description="steps between backtest origins")
    statistical: list[str] = Field(
        default_factory=lambda: ["auto_ets", "auto_arima", "auto_theta"],
        description="statistical baselines beside naive and seasonal naive, fitted on the part before the first "
                    "origin: auto_ets, auto_arima, auto_theta (statsforecast, seasonal with period `season`), "
                    "holt_winters, arima (statsmodels, with the hw_* and arima_* settings); a name alone or 'none'")
    hw_trend: Literal["add", "mul", "none"] = Field("add", description="Holt-Winters trend")
    hw_seasonal: Literal["add", "mul", "none"] = Field(
        "add", description="Holt-Winters season (of period `season`; 'none' when season = 1)")
    hw_damped: bool = Field(False, description="Holt-Winters damped trend")
    arima_order: list[int] = Field(default_factory=lambda: [2, 1, 2], description="ARIMA (p, d, q)")
    arima_seasonal_order: list[int] = Field(default_factory=lambda: [0, 0, 0, 0],
                                            description="ARIMA seasonal (P, D, Q, s)")

    @field_validator("statistical", mode="before")
    @classmethod
    def _one_or_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [] if value == "none" else [value]
        return value

    @field_validator("statistical")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in STATISTICAL]
        if unknown:
            raise ValueError(f"expected names from {list(STATISTICAL)} (or 'none'), got {unknown}")
        return value


class ForecastExperiment(Config):
    """A forecasting run: `rnnkit train CONFIG` with task = "forecaster"."""

    task: Literal["forecaster"] = Field("forecaster", description="the task this config trains")
    data: ForecastDataConfig = Field(default_factory=ForecastDataConfig, description="series, columns, split, windows")
    forecast: ForecastConfig = Field(default_factory=ForecastConfig, description="strategy and output distribution")
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(cell="lstm", hidden_size=32, output_per="sequence"),
        description="the network; input and output sizes are set from the data")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=100, lr=3e-3),
                               description="optimiser, schedule, checkpoints")
    evaluate: EvaluationConfig = Field(default_factory=EvaluationConfig, description="backtests and baselines")

    @model_validator(mode="after")
    def _check(self) -> ForecastExperiment:
        if self.model.vocab_size:
            raise ValueError(f"model.vocab_size: a forecaster reads continuous values, expected 0, "
                             f"got {self.model.vocab_size}")
        if self.forecast.strategy == "recursive" and self.model.bidirectional:
            raise ValueError("model.bidirectional: a recursive forecaster predicts each next step from the past "
                             "only; a backward direction would read the future. Set bidirectional = false")
        return self


# ----------------------------------------------------------------------------- transforms
def _transform(y: np.ndarray, kind: str, columns: Sequence[str], index: pd.DatetimeIndex | None = None) -> np.ndarray:
    """The targets through ``data.transform`` (NaN passes), checking its domain."""
    if kind == "none":
        return y
    low, op = (0.0, np.log) if kind == "log" else (-1.0, np.log1p)
    bad = np.argwhere(y <= low)
    if bad.size:
        row, col = (int(v) for v in bad[0])
        when = (f" (date {index[row].date()})" if isinstance(index, pd.DatetimeIndex)
                else f" (step {index[row]})" if index is not None else "")
        raise ValueError(f"data.transform={kind!r}: expected target values > {low:g}, got {y[row, col]:g} in column "
                         f"{columns[col]!r} at row {row}{when}; use transform='log1p' or 'none'")
    return op(y)


def _untransform(y: np.ndarray, kind: str) -> np.ndarray:
    return np.exp(y) if kind == "log" else np.expm1(y) if kind == "log1p" else y


def _make_scaler(kind: str) -> Scaler | None:
    return {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}[kind]() if kind != "none" else None


def _scale(scaler: Scaler | None, x: np.ndarray) -> np.ndarray:
    return x if scaler is None or x.shape[1] == 0 else scaler.transform(x)


def _fit_scalers(kind: str, s: PanelSeries, transform: str, targets: Sequence[str], train: slice
                 ) -> dict[str, Scaler | None]:
    """Scalers of one series' targets (transformed) and covariates, fitted on its ``train`` steps."""
    scalers: dict[str, Scaler | None] = {}
    for role, values in (("target", _transform(s.target, transform, targets, s.index)), ("past", s.past),
                         ("future", s.future)):
        scalers[role] = _make_scaler(kind) if values.shape[1] else None
        if scalers[role] is not None:
            scalers[role].fit(values[train])
    return scalers


# ------------------------------------------------------------------------------- reading
def _load_frame(source: Any, date_column: str, reading: dict | None = None) -> pd.DataFrame:
    """A CSV path or DataFrame as a DataFrame with the dates in ``date_column`` (a DatetimeIndex is
    taken as the date column when the frame has no such column). ``reading``: ``read_csv``'s
    decoding keywords (``TextFileConfig.reading()``)."""
    if isinstance(source, (str, Path)):
        return read_csv(source, **(reading or {}))
    if not isinstance(source, pd.DataFrame):
        raise TypeError(f"df: expected a pandas DataFrame or a CSV path, got {type(source).__name__}")
    df = source.copy()
    if date_column not in df.columns and isinstance(df.index, pd.DatetimeIndex):
        df.index.name = date_column
        df = df.reset_index()
    return df


def _trailing_future_rows(df: pd.DataFrame, date_column: str, targets: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off the rows after the last target value (in date order): (history, future rows)."""
    if date_column not in df.columns or any(t not in df.columns for t in targets):
        return df, df.iloc[:0]  # read_series names what is missing
    order = np.argsort(pd.to_datetime(df[date_column], errors="coerce").to_numpy(), kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    has_target = df[list(targets)].notna().any(axis=1).to_numpy()
    last = int(np.flatnonzero(has_target)[-1]) + 1 if has_target.any() else 0
    return df.iloc[:last], df.iloc[last:]


def _future_index(end: pd.Timestamp, steps: int, freq: str | None) -> pd.DatetimeIndex:
    if not freq:
        raise ValueError("data.freq: the dates are irregular, so the dates of the forecast cannot be built; "
                         "pass freq= (e.g. 'MS', 'D') to put the series on a regular grid")
    return pd.date_range(end, periods=steps + 1, freq=freq)[1:]


# ---------------------------------------------------------------------------- the network
@dataclass
class _Batch:
    """Windows in model space: targets (transformed, scaled) and covariates (scaled).

    y_in <float32>[W, L, C] (NaN where missing); past <float32>[W, L, Pc]; fut_in <float32>[W, L, Fc];
    fut_out <float32>[W, h, Fc]; y_out <float32>[W, h, C] or None (forecasting past the data)."""

    y_in: np.ndarray
    past: np.ndarray
    fut_in: np.ndarray
    fut_out: np.ndarray
    y_out: np.ndarray | None = None


def _gather(y: np.ndarray, past: np.ndarray, fut: np.ndarray, origins: np.ndarray, lookback: int, horizon: int,
            with_targets: bool) -> _Batch:
    """Windows ending at each origin (the first forecast step) from full arrays over time."""
    steps_in = origins[:, None] - lookback + np.arange(lookback)
    steps_out = origins[:, None] + np.arange(horizon)
    f32 = np.float32
    return _Batch(y[steps_in].astype(f32), past[steps_in].astype(f32), fut[steps_in].astype(f32),
                  fut[steps_out].astype(f32), y[steps_out].astype(f32) if with_targets else None)


def _reference(y_in: np.ndarray, how: str) -> np.ndarray:
    """<float32>[W, 1, C]: each window's level that inputs and targets are taken relative to."""
    if how == "none":
        return np.zeros((y_in.shape[0], 1, y_in.shape[2]), np.float32)
    if how == "mean":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmean(y_in, axis=1, keepdims=True)
    else:  # the last observed value of each column
        seen = ~np.isnan(y_in)
        last = y_in.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)          # [W, C]
        ref = np.take_along_axis(y_in, last[:, None, :], axis=1)
    return np.nan_to_num(ref).astype(np.float32)


def _sizes(columns: dict[str, Any]) -> dict[str, int]:
    """The network's input widths from the column roles: targets, past and future covariates (the
    one-hot static categories count as future covariates: known at every step)."""
    static = sum(len(values) for values in columns.get("categories", {}).values())
    return {"target": len(columns["target"]), "past": len(columns["past"]),
            "future": len(columns["future_all"]) + static}


class _Network:
    """Builds the inputs of a layout, reads its outputs and computes the loss (module docstring)."""

    def __init__(self, experiment: ForecastExperiment, sizes: dict[str, int]) -> None:
        self.fc, self.data = experiment.forecast, experiment.data
        self.c, self.pc, self.fcov = sizes["target"], sizes["past"], sizes["future"]
        self.k = {"point": 1, "gaussian": 2, "quantile": len(self.fc.quantiles)}[self.fc.output]
        if self.fc.strategy == "recursive":
            self.layout = "recursive"
        else:
            self.layout = "steps" if self.fcov else "last"

    def model_fields(self) -> dict[str, Any]:
        """The ModelConfig fields that the data decides."""
        h, c, k = self.data.horizon, self.c, self.k
        if self.layout == "last":
            return {"input_size": c + self.pc, "output_size": h * c * k, "output_per": "sequence",
                    "pooling": "last", "vocab_size": 0, "output_activation": "linear"}
        return {"input_size": c + self.pc + self.fcov + 1, "output_size": c * k, "output_per": "step",
                "vocab_size": 0, "output_activation": "linear"}

    # ---------------------------------------------------------------------------- inputs
    def inputs(self, b: _Batch, horizon: int) -> tuple[Tensor, np.ndarray]:
        """(x, reference) for ``horizon`` steps; for "recursive" x holds the lookback steps only
        unless ``b.y_out`` is given (teacher forcing)."""
        ref = _reference(b.y_in, self.fc.normalize)
        y_in = np.nan_to_num(b.y_in - ref)
        w, lookback = y_in.shape[:2]
        if self.layout == "last":
            return torch.from_numpy(np.concatenate([y_in, b.past], axis=2)), ref
        if self.layout == "steps":
            hist = np.concatenate([y_in, b.past, b.fut_in, np.ones((w, lookback, 1), np.float32)], axis=2)
            ahead = np.concatenate([np.zeros((w, horizon, self.c + self.pc), np.float32), b.fut_out[:, :horizon],
                                    np.zeros((w, horizon, 1), np.float32)], axis=2)
            return torch.from_numpy(np.concatenate([hist, ahead], axis=1)), ref
        # recursive: step t reads y_t, past_t (while observed), future covariates of step t+1, flag
        fut_next = np.concatenate([b.fut_in[:, 1:], b.fut_out[:, :1]], axis=1)
        hist = np.concatenate([y_in, b.past, fut_next, np.ones((w, lookback, 1), np.float32)], axis=2)
        if b.y_out is None:
            return torch.from_numpy(hist), ref
        y_ahead = np.nan_to_num(b.y_out[:, :horizon - 1] - ref)
        ahead = self.step_inputs(y_ahead, b.fut_out[:, 1:horizon])
        return torch.from_numpy(np.concatenate([hist, ahead], axis=1)), ref

    def step_inputs(self, y: np.ndarray, fut_next: np.ndarray) -> np.ndarray:
        """Recursive inputs past the origin: value fed back, no past covariates, flag 0."""
        w, t = y.shape[:2]
        return np.concatenate([y, np.zeros((w, t, self.pc), np.float32), fut_next,
                               np.zeros((w, t, 1), np.float32)], axis=2).astype(np.float32)

    def targets(self, b: _Batch, ref: np.ndarray) -> Tensor:
        """Training targets, relative to the reference: [W, H, C], or [W, L+H−1, C] for recursive."""
        if self.layout == "recursive":
            seq = np.concatenate([b.y_in[:, 1:], b.y_out], axis=1)
            return torch.from_numpy(seq - ref)
        return torch.from_numpy(b.y_out - ref)

    def split_outputs(self, logits: Tensor, horizon: int) -> Tensor:
        """Network output → <float>[W, steps, C, K] (steps: horizon, or every step for recursive)."""
        w = logits.shape[0]
        if self.layout == "last":
            return logits.view(w, self.data.horizon, self.c, self.k)[:, :horizon]
        out = logits.view(w, logits.shape[1], self.c, self.k)
        return out if self.layout == "recursive" else out[:, -horizon:]

    # ------------------------------------------------------------------------------ loss
    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        """Mean loss over the observed targets: MSE, Gaussian NLL or pinball."""
        mask = ~torch.isnan(target)
        t = torch.nan_to_num(target)
        if self.fc.output == "point":
            elem = (out[..., 0] - t) ** 2
        elif self.fc.output == "gaussian":
            mu, sigma = out[..., 0], self.spread(out[..., 1])
            elem = torch.log(sigma) + 0.5 * ((t - mu) / sigma) ** 2
        else:
            q = torch.tensor(self.fc.quantiles, dtype=out.dtype, device=out.device)
            err = t.unsqueeze(-1) - out
            elem = torch.maximum(q * err, (q - 1) * err).mean(-1)
        return (elem * mask).sum() / mask.sum().clamp(min=1)

    @staticmethod
    def spread(raw: Tensor) -> Tensor:
        return F.softplus(raw) + 1e-3

    # ------------------------------------------------------------------------- inference
    @torch.no_grad()
    def forecast(self, model: SequenceModel, b: _Batch, horizon: int, level: float) -> dict[str, np.ndarray]:
        """Forecasts in model space plus the reference: {"point", "lower", "upper", "quantiles"}, each
        <float32>[W, horizon, C] ("quantiles": [W, horizon, C, Q]); intervals only when probabilistic."""
        model.eval()
        device = next(model.parameters()).device
        x, ref = self.inputs(b, horizon)
        if self.layout != "recursive":
            logits, _ = model(x.to(device))
            params = self.split_outputs(logits, horizon).cpu()
            out = self._read(params, level)
        else:
            out = self._recursive(model, x.to(device), b, horizon, level, device)
        return {name: (v + (ref[..., None] if v.ndim == 4 else ref)).astype(np.float32) for name, v in out.items()}

    def _read(self, params: Tensor, level: float) -> dict[str, np.ndarray]:
        if self.fc.output == "point":
            return {"point": params[..., 0].numpy()}
        if self.fc.output == "gaussian":
            mu, sigma = params[..., 0], self.spread(params[..., 1])
            z = NormalDist().inv_cdf(0.5 + level / 2)
            return {"point": mu.numpy(), "lower": (mu - z * sigma).numpy(), "upper": (mu + z * sigma).numpy()}
        qs = params.sort(dim=-1).values.numpy()
        return {"point": qs[..., self.fc.quantiles.index(0.5)], "lower": qs[..., 0], "upper": qs[..., -1],
                "quantiles": qs}

    def _recursive(self, model: SequenceModel, x: Tensor, b: _Batch, horizon: int, level: float,
                   device: torch.device) -> dict[str, np.ndarray]:
        """Feed the mean back for the point forecast; sample paths for the Gaussian interval."""
        fut_next = torch.from_numpy(np.ascontiguousarray(b.fut_out[:, 1:horizon])).to(device)

        def run(inputs: Tensor, sample: torch.Generator | None, reps: int) -> Tensor:
            logits, state = model(inputs.repeat(reps, 1, 1) if reps > 1 else inputs)
            steps = []
            for k in range(horizon):
                params = logits[:, -1].view(logits.shape[0], self.c, self.k)
                value = params[..., 0]
                if sample is not None:  # the same draws for every origin: a backtest agrees with predict
                    noise = torch.randn((reps, 1, self.c), generator=sample, dtype=value.dtype)
                    noise = noise.expand(reps, value.shape[0] // reps, self.c).reshape(value.shape).to(device)
                    value = value + self.spread(params[..., 1]) * noise
                steps.append(value)
                if k == horizon - 1:
                    break
                f = fut_next[:, k:k + 1].repeat(reps, 1, 1) if reps > 1 else fut_next[:, k:k + 1]
                step = torch.cat([value[:, None], value.new_zeros(value.shape[0], 1, self.pc), f,
                                  value.new_zeros(value.shape[0], 1, 1)], dim=2)
                logits, state = model(step, state=state)
            return torch.stack(steps, dim=1).cpu()  # [reps*W, horizon, C]

        out = {"point": run(x, None, 1).numpy()}
        if self.fc.output == "gaussian":
            first, _ = model(x)
            w, reps = x.shape[0], self.fc.samples
            paths = run(x, torch.Generator().manual_seed(self.fc.seed), reps).view(reps, w, horizon, self.c)
            lo, hi = torch.quantile(paths, torch.tensor([0.5 - level / 2, 0.5 + level / 2]), dim=0)
            params = first[:, -1].view(w, self.c, self.k).cpu()   # step 1: the exact Gaussian
            z = NormalDist().inv_cdf(0.5 + level / 2)
            lo[:, 0] = params[..., 0] - z * self.spread(params[..., 1])
            hi[:, 0] = params[..., 0] + z * self.spread(params[..., 1])
            out["lower"], out["upper"] = lo.numpy(), hi.numpy()
        return out


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
                f"{self.origin_dates[0].date()} .. {self.origin_dates[-1].date()}")
        if self.level is not None:
            head += f"; interval level {self.level:g}"
        return head + "\n" + format_metrics(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (metrics, origins, seconds)."""
        return {"horizon": self.horizon, "origins": len(self.origin_dates),
                "first_origin": str(self.origin_dates[0].date()), "last_origin": str(self.origin_dates[-1].date()),
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
        return head + "\n" + format_metrics(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (mean metrics, series, seconds)."""
        return {"horizon": self.horizon, "series": self.series, "level": self.level, "seconds": self.seconds,
                "metrics": {name: {k: (None if math.isnan(v) else v) for k, v in row.items()}
                            for name, row in self.metrics.to_dict(orient="index").items()}}

    def frame(self) -> pd.DataFrame:
        """The model's forecasts as rows (series, origin, step, column, actual, forecast, lower, upper)."""
        return self.forecasts


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


# -------------------------------------------------------------------------------- the task
@dataclass
class _Prepared:
    """A series in model space, ready for windows: the cleaned data, the arrays and, past its end,
    the future covariates of up to ``ahead`` steps."""

    data: SeriesData | PanelSeries
    y: np.ndarray       # <float64>[N, C] transformed and scaled (NaN where missing)
    past: np.ndarray    # <float64>[N, Pc] scaled
    fut: np.ndarray     # <float64>[N + ahead, Fc] scaled (+ the one-hot static categories)
    ahead: int
    scalers: dict[str, Scaler | None] = field(default_factory=dict)  # those that scaled it


class Forecaster(Task):
    """A trained forecaster with its scalers and column roles (module docstring)."""

    name = "forecaster"
    experiment_cls = ForecastExperiment

    def __init__(self, model: SequenceModel, experiment: ForecastExperiment, scalers: dict[str, Scaler | None],
                 columns: dict[str, Any], series_scalers: dict[str, dict[str, Scaler | None]] | None = None) -> None:
        super().__init__(model, experiment)
        self.scalers, self.columns = scalers, columns
        self.series_scalers = series_scalers or {}  # many series: {id: {role: scaler}}, each fitted on its training part
        self.net = _Network(experiment, _sizes(columns))
        self.data: SeriesData | None = None       # the series given to fit
        self.test_start: int | None = None        # its first test step
        self.panel: Panel | None = None           # many series: those given to fit
        self.test_starts: dict[str, int] = {}     # and the first test step of each
        self.backtests: dict[int, ForecastBacktest] = {}
        self._fitted_baselines: dict[tuple[str, int], Any] = {}  # (name, first origin) → fitted on self.data

    # ------------------------------------------------------------------------------ fit
    keywords = {"target": "data.target_columns"}

    @classmethod
    def fit(cls, data: ForecastExperiment | pd.DataFrame | str | Path | None = None, out_dir: str | Path | None = None,
            resume: bool = False, *, experiment: ForecastExperiment | None = None, evaluate: bool = True,
            **overrides: Any) -> Forecaster:
        """Train on a series; returns the forecaster with the best epoch's weights (in memory, on the CPU).

        Args:
            data: the series: a DataFrame (a date column, or a DatetimeIndex, and value columns) or a
                CSV path; or a ``ForecastExperiment`` whose data section names the file (the form
                ``rnnkit train`` uses). None: the file of ``experiment`` / the keywords.
            out_dir: where ``best/``, ``last/``, ``metrics.jsonl`` and ``backtest.json``/``.txt`` go;
                None (default) writes nothing.
            resume: continue from ``out_dir/last``.
            experiment: the config the keywords start from (default ``ForecastExperiment()``: an
                LSTM of 32 units, lookback 24, horizon 12, the last 20% as test, 100 epochs).
            evaluate: backtest the best model on the test part beside the baselines (per series with
                ``id_column``), into
                ``results`` and ``backtests`` (rank 0).
            **overrides: config fields by name: ``target="y"`` (or ``target_columns=[...]``),
                ``date_column="Month"``, ``id_column="unique_id"`` (a long-format frame of many
                series, one global model), ``static_covariates=["category"]``, ``horizon=12``, ``lookback=24``, ``test=48``, ``cell="gru"``,
                ``epochs=50``, ``output="gaussian"``, ``season=12``, ...; dotted
                (``**{"forecast.strategy": "recursive"}``) or a section as a dict
                (``model={"hidden_size": 64}``). A string for a list field is one column.

        Returns:
            The trained Forecaster; ``predict()`` forecasts after the series' end.

        Raises:
            TypeError: an unknown keyword (with the close valid ones), a wrong type of data.
            ValueError: a wrong config value naming its key; a series too short for lookback + horizon.

        Example::

            fc = Forecaster.fit(df, target="y", horizon=12, lookback=24, epochs=50)
            fc.predict()   # DataFrame of the next 12 steps
        """
        if isinstance(data, ForecastExperiment):
            if experiment is not None:
                raise TypeError("experiment: give the experiment once, as data or as experiment=, not both")
            experiment, data = data, None
        frame = None
        if isinstance(data, (str, Path)):
            overrides["data.path"] = str(data)
        elif isinstance(data, pd.DataFrame):
            frame = data
        elif data is not None:
            raise TypeError(f"data: expected a ForecastExperiment, a DataFrame or a CSV path, "
                            f"got {type(data).__name__}")
        experiment = cls._experiment(experiment, overrides)
        return cls._fit_experiment(experiment, {"frame": frame, "evaluate": evaluate}, out_dir, resume)

    @classmethod
    def _read_data(cls, experiment: ForecastExperiment, given: dict | None) -> tuple[ForecastExperiment, dict]:
        given = given or {"frame": None, "evaluate": True}
        cfg = experiment.data
        if not cfg.target_columns:
            raise ValueError("data.target_columns: expected at least one column to forecast (target=), got none")
        if cfg.id_column:
            return cls._read_panel_data(experiment, given)
        series = cls._read_training(cfg, given["frame"])
        lookback, horizon = cfg.lookback, cfg.horizon
        if len(series) < lookback + horizon:
            raise ValueError(f"data: series of {len(series)} steps is shorter than lookback + horizon = "
                             f"{lookback} + {horizon} = {lookback + horizon}")
        split = chronological_split(len(series), val=cfg.val, test=cfg.test)
        n_train = split.train.stop
        if n_train < lookback + horizon:
            raise ValueError(f"data: the training part ({n_train} of {len(series)} steps, after val={cfg.val} and "
                             f"test={cfg.test}) is shorter than lookback + horizon = {lookback + horizon}")

        y = _transform(series.target, cfg.transform, series.target_columns, series.index)
        scalers = {"target": _make_scaler(cfg.scaler),
                   "past": _make_scaler(cfg.scaler) if series.past_columns else None,
                   "future": _make_scaler(cfg.scaler) if series.future_columns else None}
        for role, values in (("target", y), ("past", series.past), ("future", series.future)):
            if scalers[role] is not None:
                scalers[role].fit(values[split.train])
        columns = {"date_column": cfg.date_column, "target": list(series.target_columns),
                   "past": list(series.past_columns), "future": list(cfg.future_covariates),
                   "future_all": list(series.future_columns), "calendar": list(cfg.calendar),
                   "calendar_encoding": cfg.calendar_encoding, "freq": series.report.freq,
                   "transform": cfg.transform, "train_end": str(series.index[n_train - 1])}
        model_fields = _Network(experiment, _sizes(columns)).model_fields()
        experiment = experiment.model_copy(update={"model": ModelConfig.from_dict(
            {**experiment.model.to_dict(), **model_fields}, "model")})
        return experiment, {"series": series, "split": split, "scalers": scalers, "columns": columns,
                            "evaluate": given["evaluate"]}

    @classmethod
    def _read_panel_data(cls, experiment: ForecastExperiment, given: dict) -> tuple[ForecastExperiment, dict]:
        """Many series from a long-format frame: a split and scalers per series, the static categories."""
        cfg = experiment.data
        panel = cls._read_training(cfg, given["frame"])
        need = cfg.lookback + cfg.horizon
        splits, series_scalers = {}, {}
        for s in panel.series:
            try:
                split = chronological_split(len(s), val=cfg.val, test=cfg.test)
            except ValueError as error:
                raise ValueError(f"data: series {s.id!r} of {len(s)} steps: {error}") from None
            if split.train.stop < need:
                raise ValueError(f"data: the training part of series {s.id!r} ({split.train.stop} of {len(s)} steps, "
                                 f"after val={cfg.val} and test={cfg.test}) is shorter than lookback + horizon = "
                                 f"{cfg.lookback} + {cfg.horizon}; shorten data.lookback or leave the series out")
            splits[s.id] = split
            series_scalers[s.id] = _fit_scalers(cfg.scaler, s, cfg.transform, panel.target_columns, split.train)
        categories = {name: sorted({s.static[i] for s in panel.series}) for i, name in enumerate(panel.static_columns)}
        columns = {"date_column": cfg.date_column, "id_column": cfg.id_column, "target": list(panel.target_columns),
                   "past": list(panel.past_columns), "future": list(cfg.future_covariates),
                   "future_all": list(panel.future_columns), "calendar": list(cfg.calendar),
                   "calendar_encoding": cfg.calendar_encoding, "freq": panel.freq, "integer_time": panel.integer_time,
                   "transform": cfg.transform, "static": list(panel.static_columns), "categories": categories}
        model_fields = _Network(experiment, _sizes(columns)).model_fields()
        experiment = experiment.model_copy(update={"model": ModelConfig.from_dict(
            {**experiment.model.to_dict(), **model_fields}, "model")})
        return experiment, {"panel": panel, "splits": splits, "series_scalers": series_scalers, "scalers": {},
                            "columns": columns, "evaluate": given["evaluate"]}

    @classmethod
    def _build(cls, experiment: ForecastExperiment, prepared: dict) -> Forecaster:
        fc = cls(SequenceModel(experiment.model), experiment, prepared["scalers"], prepared["columns"],
                 prepared.get("series_scalers"))
        if "panel" in prepared:
            fc.panel = prepared["panel"]
            fc.test_starts = {key: split.test.start for key, split in prepared["splits"].items()}
        else:
            fc.data, fc.test_start = prepared["series"], prepared["split"].test.start
        return fc

    def _training(self, prepared: dict, rank: int, world_size: int) -> Training:
        cfg, horizon = self.experiment.data, self.experiment.data.horizon
        if "panel" in prepared:  # one global model: the windows of every series, each in its own scale
            parts = {"train": [], "val": []}
            for s in prepared["panel"].series:
                split, arrays = prepared["splits"][s.id], self._panel_arrays(s)
                for part, span in (("train", split.train), ("val", split.val)):
                    if span.stop - span.start >= horizon:
                        windows = self._windows(arrays, span, part, required=False)
                        if windows is not None:
                            parts[part].append(windows)
            if not parts["train"]:
                raise ValueError("data: no series has a training window with observed inputs and targets")
            train_set = tuple(torch.cat(t) for t in zip(*parts["train"]))
            val_set = tuple(torch.cat(t) for t in zip(*parts["val"])) if parts["val"] else None
        else:
            split = prepared["split"]
            arrays = self._arrays(prepared["series"], None)
            train_set = self._windows(arrays, split.train, "train")
            val_set = self._windows(arrays, split.val, "val") if split.val.stop > split.val.start else None
            if val_set is None and split.val.stop > split.val.start:
                logger.warning("data.val: the validation part holds no window; selecting the epoch by training loss")

        def loss_fn(net, batch, state):
            x, target = batch
            logits, _ = net(x)
            return self.net.loss(self.net.split_outputs(logits, horizon), target), None, x.shape[0]

        def evaluate_fn(net):
            x, target = val_set
            logits, _ = net(x.to(next(net.parameters()).device))
            return {"val_loss": self.net.loss(self.net.split_outputs(logits, horizon), target.to(logits.device)).item()}

        seed, batch_size, (x_all, t_all) = self.experiment.train.seed, cfg.batch_size, train_set

        def batches(epoch: int) -> list[tuple[Tensor, Tensor]]:
            """Shuffled from the epoch's own seed; with several processes each takes its share of a batch."""
            order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            return [(x_all[i[rank::world_size]], t_all[i[rank::world_size]]) for i in order.split(batch_size)
                    if len(i) >= world_size]

        splits = {"train": len(x_all), **({"valid": len(val_set[0])} if val_set else {})}
        count = len(prepared["panel"]) if "panel" in prepared else 1
        summary = {"unit": "windows", "splits": splits, "series": count * len(self.columns["target"]),
                   "batch_size": batch_size, "batches_per_epoch": len(batches(1))}
        return Training(loss_fn, batches, evaluate_fn if val_set else None, summary)

    def _finish(self, prepared: dict, trainer: Trainer, out_dir: Path | None) -> None:
        """Backtests of the best model on the test part; with an out_dir, backtest.json/.txt there."""
        horizon = self.experiment.data.horizon
        self.results = {"best_epoch": float(trainer.best_epoch or 0), "epochs": float(trainer.epoch)}
        splits = list(prepared["splits"].values()) if "panel" in prepared else [prepared["split"]]
        test_steps = min(split.test.stop - split.test.start for split in splits)
        if not prepared["evaluate"] or test_steps <= 0:
            return
        for h in self.experiment.evaluate.horizons or sorted({1, horizon}):
            if h > test_steps:
                warnings.warn(f"evaluate.horizons: no backtest at horizon {h}: the test part has only "
                              f"{test_steps} steps", stacklevel=2)
                continue
            bt = self.backtest(horizon=h)
            self.backtests[h] = bt
            for method, row in bt.metrics.iterrows():
                self.results.update({f"h{h}_{method}_{k}": float(v) for k, v in row.items() if not math.isnan(v)})
        if self.backtests:
            logger.info("test backtests:\n%s", format_tables(list(self.backtests.values())))
            if out_dir is not None:
                (out_dir / "backtest.json").write_text(
                    json.dumps({str(h): bt.to_dict() for h, bt in self.backtests.items()}, indent=2))
                (out_dir / "backtest.txt").write_text(format_tables(list(self.backtests.values())) + "\n")

    @staticmethod
    def _read_training(cfg: ForecastDataConfig, frame: pd.DataFrame | None) -> SeriesData | Panel:
        if frame is None:
            if cfg.path:
                source: Any = cfg.path
            elif cfg.dataset and cfg.file:
                source = dataset_file(cfg.dataset, cfg.file, data_dir=cfg.data_dir or None)
            else:
                raise ValueError("data.path: expected a CSV file (or data.dataset and data.file, or a DataFrame "
                                 "given to Forecaster.fit), got none")
            frame = _load_frame(source, cfg.date_column, cfg.reading())
        else:
            frame = _load_frame(frame, cfg.date_column)
        if cfg.id_column:
            return read_panel(frame, cfg.id_column, cfg.date_column, cfg.target_columns, cfg.past_covariates,
                              cfg.future_covariates, cfg.static_covariates, missing=cfg.missing, freq=cfg.freq or None,
                              date_format=cfg.date_format or None, calendar=cfg.calendar,
                              calendar_encoding=cfg.calendar_encoding)
        frame, future_rows = _trailing_future_rows(frame, cfg.date_column, cfg.target_columns)
        if len(future_rows):
            warnings.warn(f"data: ignored the last {len(future_rows)} rows, which have no target value", stacklevel=3)
        return read_series(frame, cfg.date_column, cfg.target_columns, cfg.past_covariates, cfg.future_covariates,
                           missing=cfg.missing, freq=cfg.freq or None, date_format=cfg.date_format or None,
                           calendar=cfg.calendar, calendar_encoding=cfg.calendar_encoding)

    def _windows(self, p: _Prepared, span: slice, part: str, required: bool = True) -> tuple[Tensor, Tensor] | None:
        """Training or validation tensors (x, target) of the windows whose horizon lies in ``span``;
        None where no window has observed values, unless ``required`` (then an error)."""
        cfg = self.experiment.data
        n_span = span.stop - span.start
        if part == "val" and n_span < cfg.horizon:
            logger.warning("data.val: the validation part (%d steps) is shorter than the horizon %d; no validation",
                           n_span, cfg.horizon)
            return None
        stride = cfg.stride if part == "train" else 1
        windows = make_windows(p.y, cfg.lookback, cfg.horizon, span=span, stride=stride, all_nan="drop")
        if len(windows) == 0:
            if not required:
                return None
            raise ValueError(f"data: every {part} window has an all-NaN input or target "
                             f"({windows.dropped} dropped); check the missing values of {list(self.columns['target'])}")
        b = _gather(p.y, p.past, p.fut, windows.starts + cfg.lookback, cfg.lookback, cfg.horizon, True)
        x, ref = self.net.inputs(b, cfg.horizon)
        return x.contiguous(), self.net.targets(b, ref).contiguous()

    # ------------------------------------------------------------------------ checkpoint
    def extras(self) -> dict[str, Any]:
        out = {"scaler": {role: (s.to_dict() if s is not None else None) for role, s in self.scalers.items()},
               "columns": self.columns}
        if self.series_scalers:
            out["series_scalers"] = {key: {role: (s.to_dict() if s is not None else None) for role, s in roles.items()}
                                     for key, roles in self.series_scalers.items()}
        return out

    @classmethod
    def from_parts(cls, model: SequenceModel, experiment: ForecastExperiment, extras: dict) -> Forecaster:
        for name in ("scaler", "columns"):
            if name not in extras:
                raise ValueError(f"checkpoint: expected {name}.json beside the model, found none")
        def read(states: dict) -> dict[str, Scaler | None]:
            return {role: (Scaler.from_dict(state) if state is not None else None) for role, state in states.items()}

        series_scalers = {key: read(states) for key, states in extras.get("series_scalers", {}).items()}
        return cls(model, experiment, read(extras["scaler"]), extras["columns"], series_scalers)

    # ----------------------------------------------------------------------- preparation
    def _arrays(self, series: SeriesData | PanelSeries, future_cov: np.ndarray | None,
                scalers: dict[str, Scaler | None] | None = None, static: np.ndarray | None = None) -> _Prepared:
        """A cleaned series (and the raw future covariates past its end, <float>[ahead, Fc]) in model space;
        ``scalers`` default to the forecaster's; ``static``: the one-hot categories, appended at every step."""
        scalers = self.scalers if scalers is None else scalers
        y = _transform(series.target, self.columns["transform"], self.columns["target"], series.index)
        y = _scale(scalers["target"], y)
        past = _scale(scalers["past"], series.past)
        fut = series.future
        ahead = 0
        if future_cov is not None:
            fut, ahead = np.concatenate([fut, future_cov], axis=0), len(future_cov)
        fut = _scale(scalers["future"], fut)
        if static is not None and static.size:
            fut = np.concatenate([fut, np.tile(static, (len(fut), 1))], axis=1)
        return _Prepared(series, y, past, fut, ahead, scalers)

    def _panel_arrays(self, s: PanelSeries, future_cov: np.ndarray | None = None) -> _Prepared:
        """One of many series in model space, with its own scalers (fitted on its whole history when
        the series was not among those trained on) and its one-hot static categories."""
        scalers = self.series_scalers.get(s.id)
        if scalers is None:
            cfg = self.experiment.data
            scalers = _fit_scalers(cfg.scaler, s, cfg.transform, self.columns["target"], slice(0, len(s)))
        return self._arrays(s, future_cov, scalers, self._one_hot(s))

    def _one_hot(self, s: PanelSeries) -> np.ndarray:
        """<float64>[sum of category counts]: the series' static categories, one-hot per column."""
        parts = []
        for name, value in zip(self.columns.get("static", []), s.static):
            known = self.columns["categories"][name]
            if value not in known:
                raise ValueError(f"df: series {s.id!r} has {name} = {value!r}, a category the model was not trained "
                                 f"with; known: {known}")
            parts.append(np.eye(len(known))[known.index(value)])
        return np.concatenate(parts) if parts else np.zeros(0)

    def _read_history(self, df: Any, extra_columns: str) -> tuple[SeriesData, pd.DataFrame]:
        """A new history (DataFrame or CSV path) checked against the trained columns: (series, future rows)."""
        if extra_columns not in ("error", "ignore"):
            raise ValueError(f"extra_columns: expected 'error' or 'ignore', got {extra_columns!r}")
        cols = self.columns
        frame = _load_frame(df, cols["date_column"])
        self._check_columns(frame, "df", extra_columns, with_targets=True)
        frame, future_rows = _trailing_future_rows(frame, cols["date_column"], cols["target"])
        if len(future_rows) and not cols["future"]:
            warnings.warn(f"df: ignored the last {len(future_rows)} rows, which have no target value (the model "
                          "has no future covariates to read from them)", stacklevel=4)
            future_rows = future_rows.iloc[:0]
        series = read_series(frame, cols["date_column"], cols["target"], cols["past"], cols["future"],
                             missing=self.experiment.data.missing, freq=cols["freq"] or None,
                             date_format=self.experiment.data.date_format or None, calendar=cols["calendar"],
                             calendar_encoding=cols["calendar_encoding"])
        return series, future_rows

    def _check_columns(self, frame: pd.DataFrame, arg: str, extra_columns: str, with_targets: bool) -> None:
        cols = self.columns
        date = cols["date_column"]
        if date not in frame.columns:
            raise ValueError(f"{arg}: date column {date!r} is missing; got columns {[str(c) for c in frame.columns]}")
        roles = {"target": cols["target"] if with_targets else [], "past covariate": cols["past"] if with_targets else [],
                 "future covariate": cols["future"]}
        for role, names in roles.items():
            missing = [n for n in names if n not in frame.columns]
            if missing:
                raise ValueError(f"{arg}: the model was trained with {role} columns {names}; missing {missing}")
        known = {date, *cols["target"], *cols["past"], *cols["future"]}
        extra = [str(c) for c in frame.columns if c not in known]
        if extra and extra_columns == "error":
            raise ValueError(
                f"{arg}: columns {extra} were not used in training; this model was trained with targets "
                f"{cols['target']}, past covariates {cols['past']} and future covariates {cols['future']}"
                f"{' (+ calendar ' + str(cols['calendar']) + ')' if cols['calendar'] else ''}, and will not forecast "
                "with covariates it was not trained with. Drop those columns (or pass extra_columns='ignore' "
                "if they are not covariates)")

    def _future_covariates(self, series: SeriesData, future_rows: pd.DataFrame, future: Any, steps: int,
                           extra_columns: str) -> np.ndarray:
        """<float64>[steps, Fc] of the steps after the history: the data's future covariates from
        ``future`` (or the history's trailing rows) and the calendar features of the future dates."""
        cols = self.columns
        if not cols["future_all"]:
            if future is not None:
                frame = _load_frame(future, cols["date_column"])
                extra = [str(c) for c in frame.columns if c != cols["date_column"]]
                raise ValueError(f"future: this model was trained without future covariates and will not forecast "
                                 f"with covariates it was not trained with; got {extra}")
            return np.zeros((steps, 0))
        index = _future_index(series.index[-1], steps, cols["freq"])
        parts = []
        if cols["future"]:
            if future is not None:
                if len(future_rows):
                    raise ValueError("future: the history already ends with rows of future covariates; give them "
                                     "one way, not both")
                rows = _load_frame(future, cols["date_column"])
                self._check_columns(rows, "future", extra_columns, with_targets=False)
            else:
                rows = future_rows
            if not len(rows):
                rows = pd.DataFrame({cols["date_column"]: pd.to_datetime([]), **{c: [] for c in cols["future"]}})
            have = pd.DataFrame(rows[cols["future"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64),
                                index=pd.to_datetime(rows[cols["date_column"]], errors="coerce"), columns=cols["future"])
            got = have.reindex(index)
            lacking = got.isna().any(axis=1).to_numpy()
            if lacking.any():
                first = index[int(np.argmax(lacking))]
                raise ValueError(
                    f"future: expected the future covariates {cols['future']} for the {steps} steps after "
                    f"{series.index[-1].date()} ({index[0].date()} .. {index[-1].date()}), as rows after the last "
                    f"target value or as future=; missing or not numeric from {first.date()} "
                    f"({int(lacking.sum())} of {steps} steps)")
            parts.append(got.to_numpy())
        if cols["calendar"]:
            parts.append(calendar_features(index, cols["calendar"], cols["calendar_encoding"]).to_numpy())
        return np.concatenate(parts, axis=1)

    def _prepare(self, df: Any, future: Any, horizon: int, extra_columns: str) -> _Prepared:
        if df is None:
            if self.data is None:
                raise ValueError("df: this Forecaster was loaded from a checkpoint and holds no series; pass the "
                                 "history to forecast from (a DataFrame or a CSV path)")
            series, future_rows = self.data, pd.DataFrame()
        else:
            series, future_rows = self._read_history(df, extra_columns)
        return self._arrays(series, self._future_covariates(series, future_rows, future, horizon, extra_columns))

    def _horizon(self, horizon: int | None) -> int:
        trained = self.experiment.data.horizon
        if horizon is None:
            return trained
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon: expected an integer >= 1, got {horizon!r}")
        if horizon > trained and self.net.layout != "recursive":
            raise ValueError(f"horizon: a direct model forecasts at most the {trained} steps it was trained for "
                             f"(data.horizon), got {horizon}; retrain with a longer horizon or strategy='recursive'")
        return int(horizon)

    def _level(self, level: float | None) -> float | None:
        fc = self.experiment.forecast
        if fc.output == "point":
            if level is not None:
                raise ValueError(f"level: a point forecaster has no intervals (forecast.output='point'), got {level}")
            return None
        if fc.output == "quantile":
            fixed = fc.quantiles[-1] - fc.quantiles[0]
            if level is not None and not math.isclose(level, fixed):
                raise ValueError(f"level: a quantile model's interval is fixed by forecast.quantiles {fc.quantiles} "
                                 f"(level {fixed:g}), got {level}")
            return fixed
        level = fc.level if level is None else level
        if not 0 < level < 1:
            raise ValueError(f"level: expected a probability in (0, 1), got {level}")
        return float(level)

    # -------------------------------------------------------------------------- forecast
    def _run(self, p: _Prepared, origins: np.ndarray, horizon: int, level: float | None,
             batch: int = 1024) -> dict[str, np.ndarray]:
        """Forecasts from each origin in the data's units: {"point", "lower", "upper", "quantiles"}."""
        lookback = self.experiment.data.lookback
        if origins.size and origins.min() < lookback:
            raise ValueError(f"df: series of {origins.min()} steps before the first forecast origin is shorter "
                             f"than the lookback {lookback}")
        parts: list[dict[str, np.ndarray]] = []
        for i in range(0, len(origins), batch):
            b = _gather(p.y, p.past, p.fut, origins[i:i + batch], lookback, horizon, False)
            empty = np.isnan(b.y_in).all(axis=(1, 2))
            if empty.any():
                at = p.data.index[int(origins[i + int(np.argmax(empty))]) - 1]
                at = at.date() if at == at.normalize() else at
                raise ValueError(f"df: the {lookback} lookback steps up to {at} have no target value (all NaN); "
                                 "cannot forecast from them")
            parts.append(self.net.forecast(self.model, b, horizon, level if level is not None else 0.8))
        out = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        scaler, kind = p.scalers["target"], self.columns["transform"]

        def back(v: np.ndarray) -> np.ndarray:
            v = v.astype(np.float64)
            if scaler is not None:
                v = scaler.inverse_transform(v)
            return _untransform(v, kind)

        result = {k: back(v) for k, v in out.items() if k != "quantiles"}
        if "quantiles" in out:
            result["quantiles"] = back(np.moveaxis(out["quantiles"], -1, -2)).swapaxes(-1, -2)
        return result

    def predict(self, horizon: int | None = None, df: Any = None, future: Any = None, level: float | None = None,
                extra_columns: str = "error") -> pd.DataFrame:
        """Forecast ``horizon`` steps (default: the trained horizon) after the end of the series.

        df: the history to forecast from (a DataFrame or CSV path with the trained columns); default:
            the series given to ``fit``. Rows after the last target value may carry the future
            covariates of the horizon.
        future: the future covariates of the horizon (DataFrame with the date column), instead.
        level: interval probability (gaussian output; default ``forecast.level``).
        extra_columns: "error" (default) refuses columns the model was not trained with; "ignore".

        Returns a DataFrame indexed by the forecast dates: one column per target, and
        ``<target>_lower`` / ``<target>_upper`` (and ``<target>_q<level>`` for quantile output) when
        the forecaster is probabilistic. With many series (``data.id_column``): a long frame with
        the id and time columns, one block of rows per series (``df``: a long frame like fit's).
        """
        horizon, level = self._horizon(horizon), self._level(level)
        if self.columns.get("id_column"):
            return self._predict_panel(horizon, df, future, level)
        p = self._prepare(df, future, horizon, extra_columns)
        series = p.data
        out = self._run(p, np.array([len(series)]), horizon, level)
        index = _future_index(series.index[-1], horizon, self.columns["freq"]) if self.columns["freq"] else \
            pd.RangeIndex(len(series), len(series) + horizon)
        index.name = self.columns["date_column"]
        frame = {}
        for c, name in enumerate(self.columns["target"]):
            frame[name] = out["point"][0, :, c]
            if "lower" in out:
                frame[f"{name}_lower"], frame[f"{name}_upper"] = out["lower"][0, :, c], out["upper"][0, :, c]
            if "quantiles" in out:
                for j, q in enumerate(self.experiment.forecast.quantiles):
                    frame[f"{name}_q{q:g}"] = out["quantiles"][0, :, c, j]
        return pd.DataFrame(frame, index=index)

    # -------------------------------------------------------------------------- backtest
    def backtest(self, horizon: int | None = None, df: Any = None, start: int | None = None, stride: int | None = None,
                 level: float | None = None, baselines: bool = True, extra_columns: str = "error") -> ForecastBacktest:
        """Rolling-origin backtest: forecasts of ``horizon`` steps from origins ``start, start + stride, …``
        while the horizon lies in the series, scored beside naive, seasonal naive and the statistical
        baseline of ``experiment.evaluate``, which are fitted on the series before ``start``.

        df: the series (default: the one given to fit). start: the first origin (default: the start
        of the test part, ``data.test`` of the experiment). MASE is scaled by the season-m naive
        error on the series before ``start`` (m = ``evaluate.season``).
        """
        ev, cfg = self.experiment.evaluate, self.experiment.data
        horizon, level = self._horizon(horizon), self._level(level)
        stride = ev.stride if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
        if self.columns.get("id_column"):
            if start is not None:
                raise ValueError("start: with many series each backtest starts at its own series' test part "
                                 "(data.test); pass df with the series instead")
            return self._backtest_panel(horizon, df, stride, level, baselines)
        if df is None and self.data is None:
            raise ValueError("df: this Forecaster was loaded from a checkpoint and holds no series; pass the "
                             "series to backtest on")
        series = self.data if df is None else self._read_history(df, extra_columns)[0]
        n = len(series)
        if start is None:
            start = self.test_start if df is None and self.test_start is not None else \
                chronological_split(n, test=cfg.test).test.start
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
            raise TypeError(f"start: expected a step index (int), got {start!r}")
        if not cfg.lookback <= start <= n - horizon:
            raise ValueError(f"start: expected a first origin in [lookback, len - horizon] = [{cfg.lookback}, "
                             f"{n - horizon}] for a series of {n} steps, got {start}")
        # past the data end the direct "steps" layout needs no covariates (step h reads up to h),
        # so the arrays cover exactly the series
        p = self._arrays(series, None)
        origins = np.arange(start, n - horizon + 1, stride, dtype=np.int64)
        truth = series.target
        actuals = np.stack([truth[o:o + horizon] for o in origins])
        seconds = {}
        t0 = _now()
        out = self._run(p, origins, horizon, level)
        seconds["model"] = _now() - t0
        runs = {"model": Backtest(origins, out["point"], actuals)}
        if baselines:
            for name, model in self._baselines().items():
                t0 = _now()
                key = (name, int(start))  # a baseline fitted on the fit series is reused at other horizons
                try:
                    if df is None and key in self._fitted_baselines:
                        fitted = self._fitted_baselines[key]
                    else:
                        fitted = model.fit(truth[:start])
                        if df is None:
                            self._fitted_baselines[key] = fitted
                    runs[name] = baseline_backtest(fitted.predict, truth, start, horizon, stride)
                except ValueError as error:  # e.g. Holt-Winters on too short or non-positive data
                    logger.warning("backtest: baseline %s skipped: %s", name, error)
                    warnings.warn(f"backtest: baseline {name} skipped: {error}", stacklevel=2)
                seconds[name] = _now() - t0
        train = truth[:start]
        rows = {name: score_forecast(bt.actuals, bt.forecasts, train, ev.season,
                              out.get("lower") if name == "model" else None,
                              out.get("upper") if name == "model" else None) for name, bt in runs.items()}
        metrics = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRICS))
        return ForecastBacktest(horizon, int(start), series.index[origins], tuple(self.columns["target"]), runs,
                                out.get("lower"), out.get("upper"), level, metrics, seconds)

    # ------------------------------------------------------------------------- many series
    def _history_panel(self, df: Any) -> Panel:
        """Many series to forecast from: those given to fit, or ``df`` read with the trained columns."""
        if df is None:
            if self.panel is None:
                raise ValueError("df: this Forecaster was loaded from a checkpoint and holds no series; pass the "
                                 "long-format frame to forecast from")
            return self.panel
        cols, cfg = self.columns, self.experiment.data
        frame = _load_frame(df, cols["date_column"])
        return read_panel(frame, cols["id_column"], cols["date_column"], cols["target"], cols["past"], cols["future"],
                          cols["static"], missing=cfg.missing, freq=cols["freq"] or None,
                          date_format=cfg.date_format or None, calendar=cols["calendar"],
                          calendar_encoding=cols["calendar_encoding"])

    def _future_steps(self, s: PanelSeries, steps: int) -> pd.Index:
        if self.columns["integer_time"]:
            return pd.RangeIndex(int(s.index[-1]) + 1, int(s.index[-1]) + 1 + steps)
        return _future_index(s.index[-1], steps, self.columns["freq"])

    def _predict_panel(self, horizon: int, df: Any, future: Any, level: float | None) -> pd.DataFrame:
        """The next ``horizon`` steps of every series, as a long frame: id, time, targets (+ intervals)."""
        cols = self.columns
        if cols["future"] or future is not None:
            raise ValueError(f"future: forecasting many series with future covariates {cols['future']} is not "
                             "supported; backtest() scores them over the data")
        rows = []
        for s in self._history_panel(df).series:
            steps = self._future_steps(s, horizon)
            ahead = (calendar_features(steps, cols["calendar"], cols["calendar_encoding"]).to_numpy()
                     if cols["calendar"] else np.zeros((horizon, 0)))  # the static categories go on past the end
            out = self._run(self._panel_arrays(s, ahead), np.array([len(s)]), horizon, level)
            frame = {cols["id_column"]: s.id, cols["date_column"]: steps}
            for c, name in enumerate(cols["target"]):
                frame[name] = out["point"][0, :, c]
                if "lower" in out:
                    frame[f"{name}_lower"], frame[f"{name}_upper"] = out["lower"][0, :, c], out["upper"][0, :, c]
            rows.append(pd.DataFrame(frame))
        return pd.concat(rows, ignore_index=True)

    def _backtest_panel(self, horizon: int, df: Any, stride: int, level: float | None,
                        baselines: bool) -> PanelBacktest:
        """Per series: rolling origins over its test part, the model and the baselines (fitted on that
        series before its first origin) scored; the table averages the scores over series."""
        ev, cfg = self.experiment.evaluate, self.experiment.data
        panel = self._history_panel(df)
        seconds: dict[str, float] = {}
        per_series: dict[tuple[str, str], dict[str, float]] = {}
        frames = []
        for s in panel.series:
            start = self.test_starts[s.id] if df is None else chronological_split(len(s), test=cfg.test).test.start
            if not cfg.lookback <= start <= len(s) - horizon:
                raise ValueError(f"df: series {s.id!r} of {len(s)} steps has its first origin at {start}, outside "
                                 f"[lookback, len - horizon] = [{cfg.lookback}, {len(s) - horizon}]")
            origins = np.arange(start, len(s) - horizon + 1, stride, dtype=np.int64)
            truth = s.target
            actuals = np.stack([truth[o:o + horizon] for o in origins])
            t0 = _now()
            out = self._run(self._panel_arrays(s), origins, horizon, level)
            seconds["model"] = seconds.get("model", 0.0) + _now() - t0
            runs = {"model": Backtest(origins, out["point"], actuals)}
            for name, model in (self._baselines() if baselines else {}).items():  # new models per series
                t0 = _now()
                key = (name, s.id, int(start))
                try:
                    if df is None and key in self._fitted_baselines:
                        fitted = self._fitted_baselines[key]
                    else:
                        fitted = model.fit(truth[:start])
                        if df is None:
                            self._fitted_baselines[key] = fitted
                    runs[name] = baseline_backtest(fitted.predict, truth, start, horizon, stride)
                except ValueError as error:
                    logger.warning("backtest: baseline %s skipped on series %s: %s", name, s.id, error)
                seconds[name] = seconds.get(name, 0.0) + _now() - t0
            for name, bt in runs.items():
                model_run = name == "model"
                per_series[(s.id, name)] = score_forecast(bt.actuals, bt.forecasts, truth[:start], ev.season,
                                                          out.get("lower") if model_run else None,
                                                          out.get("upper") if model_run else None)
            frames.append(_forecast_rows(s.id, s.index[origins], horizon, self.columns["target"], runs["model"],
                                         out.get("lower"), out.get("upper")))
        table = pd.DataFrame.from_dict(per_series, orient="index", columns=list(METRICS))
        table.index = pd.MultiIndex.from_tuples(table.index, names=["series", "method"])
        methods = list(dict.fromkeys(name for _, name in per_series))
        counts = table.groupby(level="method").size().reindex(methods)
        missing = {name: len(panel) - int(n) for name, n in counts.items() if n < len(panel)}
        if missing:
            warnings.warn(f"backtest: baselines skipped on some series {missing}; their means cover the rest",
                          stacklevel=3)
        metrics = table.groupby(level="method", sort=False).mean().reindex(methods)
        return PanelBacktest(horizon, len(panel), level, metrics, table, pd.concat(frames, ignore_index=True),
                             seconds, tuple(self.columns["target"]))

    def _baselines(self) -> dict[str, Any]:
        ev = self.experiment.evaluate
        models: dict[str, Any] = {"naive": Naive()}
        if ev.season > 1:
            models[f"seasonal_naive_{ev.season}"] = SeasonalNaive(ev.season)
        season = ev.season
        for name in ev.statistical:
            if name == "auto_ets":
                models[name] = AutoETS(season)
            elif name == "auto_arima":
                models[name] = AutoARIMA(season)
            elif name == "auto_theta":
                models[name] = AutoTheta(season)
            elif name == "holt_winters":
                seasonal = None if ev.hw_seasonal == "none" or season == 1 else ev.hw_seasonal
                trend = None if ev.hw_trend == "none" else ev.hw_trend
                models[name] = HoltWinters(trend=trend, seasonal=seasonal, damped_trend=ev.hw_damped and trend is not None,
                                           seasonal_periods=season if seasonal else None)
            else:
                models[name] = ARIMA(order=tuple(ev.arima_order), seasonal_order=tuple(ev.arima_seasonal_order))
        return models


def _now() -> float:
    return time.perf_counter()


# ------------------------------------------------------------------------- CLI entry points
def _load(checkpoint: str | Path) -> Forecaster:
    return Forecaster.load(checkpoint)


def forecast_to_files(checkpoint: str | Path, input: str | Path | pd.DataFrame, horizon: int | None = None,
                      out_prefix: str | Path = "forecast", future: str | Path | None = None, level: float | None = None,
                      extra_columns: str = "error", history_steps: int = 240) -> dict[str, Any]:
    """`rnnkit forecast CHECKPOINT --input series.csv --horizon 12 --out forecast`: forecast after the
    input's end, write ``<out_prefix>.csv`` (date, forecast and intervals) and ``<out_prefix>.png``
    (``<out_prefix>_<target>.png`` for several targets: history, forecast, interval band).

    Returns {"forecast": DataFrame, "csv": Path, "png": [Path, ...]}."""
    from ..plots import plot_forecast
    fc = _load(checkpoint)
    forecast = fc.predict(horizon, df=input, future=future, level=level, extra_columns=extra_columns)
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv = prefix.with_name(prefix.name + ".csv")
    if fc.columns.get("id_column"):  # many series: the long frame, no plot
        forecast.to_csv(csv, index=False)
        return {"forecast": forecast, "csv": csv, "png": []}
    series, _ = fc._read_history(input, extra_columns)
    forecast.to_csv(csv)
    pngs = []
    targets = fc.columns["target"]
    level_used = fc._level(level)
    tail = series.frame.iloc[-history_steps:]
    for name in targets:
        path = prefix.with_name(prefix.name + (f"_{name}" if len(targets) > 1 else "") + ".png")
        bounds = ({"lower": forecast[f"{name}_lower"], "upper": forecast[f"{name}_upper"],
                   "interval_label": f"{level_used:.0%} interval"} if f"{name}_lower" in forecast else {})
        pngs.append(plot_forecast(tail[name].to_numpy(), forecast[name].to_numpy(), path,
                                  history_index=tail.index, forecast_index=forecast.index,
                                  title=f"{name}: {len(forecast)}-step forecast from {series.index[-1].date()}",
                                  **bounds))
    return {"forecast": forecast, "csv": csv, "png": pngs}


def backtest_to_files(checkpoint: str | Path, input: str | Path | pd.DataFrame, horizon: int | None = None,
                      start: int | None = None, test: int | float | None = None, stride: int | None = None,
                      level: float | None = None, out_prefix: str | Path | None = None,
                      extra_columns: str = "error") -> ForecastBacktest:
    """`rnnkit backtest CHECKPOINT --input series.csv --horizon 12 [--test 48] [--out bt]`: rolling-origin
    backtest beside the baselines; with ``out_prefix`` writes ``<out_prefix>.json`` (metrics) and
    ``<out_prefix>.csv`` (the model's forecasts per origin and step). Print ``result.table()``.

    test: the test part (count or fraction) whose start is the first origin, when ``start`` is not given."""
    fc = _load(checkpoint)
    if test is not None and fc.columns.get("id_column"):
        raise ValueError(f"test: a model of many series backtests each over its last data.test = "
                         f"{fc.experiment.data.test} steps; got test={test}")
    if start is None and test is not None:
        series, _ = fc._read_history(input, extra_columns)
        start = chronological_split(len(series), test=test).test.start
    result = fc.backtest(horizon, df=input, start=start, stride=stride, level=level, extra_columns=extra_columns)
    if out_prefix is not None:
        prefix = Path(out_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_name(prefix.name + ".json").write_text(json.dumps(result.to_dict(), indent=2))
        result.frame().to_csv(prefix.with_name(prefix.name + ".csv"), index=False)
    return result
