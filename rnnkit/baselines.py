"""Forecasting baselines and rolling-origin backtests.

Every baseline is fitted once, then forecasts from any origin::

    model = AutoARIMA(season=12).fit(series[:start])
    bt = backtest(model.predict, series, start=start, horizon=12)
    bt.score(mase, train=series[:start], m=12)

``fit(train)`` takes the training series <float>[N] or [N, C]; ``predict(history, horizon)`` takes the
series up to the forecast origin (from its start, as in a backtest) and returns <float>[horizon] or
[horizon, C], matching the rank of ``history``. The statistical models run one per column:
AutoARIMA, AutoETS and AutoTheta from statsforecast (fast, automatic order and model selection:
the baselines a practitioner runs first), Holt-Winters and ARIMA of a given order from statsmodels.
``Naive`` and ``SeasonalNaive`` are computed here (they equal statsforecast's ``Naive`` and
``SeasonalNaive``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from statsmodels.tsa.arima.model import ARIMA as _StatsmodelsARIMA
from statsmodels.tsa.holtwinters import ExponentialSmoothing


def _positive_int(value: Any, arg: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{arg}: expected an integer >= {low}, got {value!r}")
    return int(value)


class Baseline:
    """The common interface: ``fit(train) -> self``, ``predict(history, horizon) -> forecast``."""

    def min_length(self) -> int:
        """The shortest series that ``fit`` and ``predict`` accept."""
        return 1

    def _series(self, x: Any, arg: str) -> tuple[np.ndarray, bool]:
        """x <float>[N] or [N, C] → (<float64>[N, C], whether x was 1-D), validated."""
        a = np.asarray(x, dtype=np.float64)
        if a.ndim not in (1, 2):
            raise ValueError(f"{arg}: expected shape [N] or [N, C], got {a.shape}")
        if len(a) < self.min_length():
            raise ValueError(f"{arg}: expected at least {self.min_length()} steps for {type(self).__name__}, "
                             f"got {len(a)}")
        return (a[:, None] if a.ndim == 1 else a), a.ndim == 1

    def fit(self, train: Any) -> Baseline:
        self._series(train, "train")
        return self

    def predict(self, history: Any, horizon: int) -> np.ndarray:
        x, one_d = self._series(history, "history")
        out = self._forecast(x, _positive_int(horizon, "horizon"))
        return out[:, 0] if one_d else out

    def _forecast(self, x: np.ndarray, horizon: int) -> np.ndarray:
        """x <float64>[N, C] → <float64>[horizon, C]."""
        raise NotImplementedError


class Naive(Baseline):
    """Repeats the last value: ŷ_{N+h} = y_N."""

    def _forecast(self, x, horizon):
        return np.repeat(x[-1:], horizon, axis=0)


class SeasonalNaive(Baseline):
    """Repeats the last season: ŷ_{N+h} = y_{N−m+(h mod m)} (h from 0)."""

    def __init__(self, m: int) -> None:
        self.m = _positive_int(m, "m")

    def min_length(self) -> int:
        return self.m

    def _forecast(self, x, horizon):
        return x[len(x) - self.m + np.arange(horizon) % self.m]


class _PerColumnModel(Baseline):
    """A statsmodels model per column: estimated once by ``fit``; ``predict`` runs the fitted
    parameters over the history (or, with ``refit=True``, estimates them again from the history)."""

    def __init__(self, refit: bool) -> None:
        self.refit = bool(refit)
        self.results_: list[Any] | None = None

    def _fit_column(self, y: np.ndarray) -> Any:
        """Estimate the model on y <float64>[N]; returns statsmodels results (with ``forecast``)."""
        raise NotImplementedError

    def _apply(self, results: Any, y: np.ndarray) -> Any:
        """The fitted parameters of ``results`` run over y <float64>[N]; returns results."""
        raise NotImplementedError

    def _forecast_column(self, fitted: Any, y: np.ndarray, horizon: int) -> np.ndarray:
        """<float64>[horizon] from the history y <float64>[N] with the model fitted on train."""
        run = self._fit_column(y) if self.refit else self._apply(fitted, y)
        return np.asarray(run.forecast(horizon), dtype=np.float64)

    def fit(self, train: Any) -> _PerColumnModel:
        x, _ = self._series(train, "train")
        self.results_ = [self._fit_column(y) for y in x.T]
        return self

    def _forecast(self, x, horizon):
        if self.results_ is None:
            raise RuntimeError(f"{type(self).__name__}: call fit() before predict()")
        if x.shape[1] != len(self.results_):
            raise ValueError(f"history: expected {len(self.results_)} columns (as train), got {x.shape[1]}")
        return np.column_stack([self._forecast_column(r, y, horizon) for r, y in zip(self.results_, x.T)])


def _complete(a: np.ndarray, arg: str, name: str) -> None:
    if np.isnan(a).any():
        raise ValueError(f"{arg}: {name} needs complete data, got {int(np.isnan(a).sum())} NaN "
                         "(fill them, e.g. read_series(missing='interpolate'))")


class _StatsForecastModel(_PerColumnModel):
    """A statsforecast model per column. Without ``refit`` the model selected and estimated on
    ``train`` (its order or components and their parameters) is run over each ``history``
    (statsforecast's ``forward``): the states are filtered anew, the parameters kept."""

    def __init__(self, season: int = 1, refit: bool = False) -> None:
        super().__init__(refit)
        self.season = _positive_int(season, "season")

    def min_length(self) -> int:
        return 3

    def _series(self, x, arg):
        a, one_d = super()._series(x, arg)
        _complete(a, arg, type(self).__name__)
        return a, one_d

    def _model(self) -> Any:
        """A new, unfitted statsforecast model."""
        raise NotImplementedError

    def _fit_column(self, y):
        return self._model().fit(y)

    def _forecast_column(self, fitted, y, horizon):
        model = self._fit_column(y) if self.refit else fitted
        out = model.predict(h=horizon) if self.refit else model.forward(y=y, h=horizon)
        return np.asarray(out["mean"], dtype=np.float64)


class AutoARIMA(_StatsForecastModel):
    """statsforecast's AutoARIMA (Hyndman-Khandakar order search as R's ``auto.arima``), seasonal with
    period ``season`` (1: non-seasonal)."""

    def _model(self):
        from statsforecast.models import AutoARIMA as Model
        return Model(season_length=self.season)


class AutoETS(_StatsForecastModel):
    """statsforecast's AutoETS: the exponential-smoothing state-space model (error, trend, season:
    each additive, multiplicative or none, and a damped trend) with the lowest AICc, as R's ``ets``.
    ``model``: a three-letter ETS spec, "Z" letting that component be chosen (default "ZZZ")."""

    def __init__(self, season: int = 1, model: str = "ZZZ", damped: bool | None = None, refit: bool = False) -> None:
        super().__init__(season, refit)
        if not (isinstance(model, str) and len(model) == 3 and model[0] in "AMZ" and model[1] in "NAMZ"
                and model[2] in "NAMZ"):
            raise ValueError(f"model: expected three letters (error A/M/Z, trend N/A/M/Z, season N/A/M/Z) such as "
                             f"'ZZZ' or 'AAN', got {model!r}")
        self.model, self.damped = model, damped

    def _model(self):
        from statsforecast.models import AutoETS as Model
        return Model(season_length=self.season, model=self.model, damped=self.damped)


class AutoTheta(_StatsForecastModel):
    """statsforecast's AutoTheta: the best of the standard, optimised and dynamic Theta models, with
    a multiplicative seasonal decomposition of period ``season`` when a seasonality test finds one."""

    def _model(self):
        from statsforecast.models import AutoTheta as Model
        return Model(season_length=self.season)


class HoltWinters(_PerColumnModel):
    """Holt-Winters exponential smoothing (statsmodels ``ExponentialSmoothing``).

    trend, seasonal: None, "add" or "mul" ("mul" needs strictly positive data); damped_trend damps an
    additive or multiplicative trend. Without ``refit`` the smoothing parameters and initial states
    estimated on ``train`` are run over each ``history``, which must therefore start where ``train``
    started (as in ``backtest``). Missing values must be filled first.
    """

    def __init__(self, trend: str | None = "add", seasonal: str | None = "add", seasonal_periods: int | None = None,
                 damped_trend: bool = False, refit: bool = False) -> None:
        super().__init__(refit)
        for arg, value in (("trend", trend), ("seasonal", seasonal)):
            if value not in (None, "add", "mul"):
                raise ValueError(f"{arg}: expected None, 'add' or 'mul', got {value!r}")
        if seasonal is not None:
            seasonal_periods = _positive_int(seasonal_periods, "seasonal_periods", 2)
        if damped_trend and trend is None:
            raise ValueError("damped_trend: needs a trend, got trend=None")
        self.trend, self.seasonal, self.seasonal_periods = trend, seasonal, seasonal_periods
        self.damped_trend = bool(damped_trend)

    def min_length(self) -> int:
        return 2 * self.seasonal_periods if self.seasonal else 3

    def _series(self, x, arg):
        a, one_d = super()._series(x, arg)
        _complete(a, arg, "HoltWinters")
        if "mul" in (self.trend, self.seasonal) and a.min() <= 0:
            raise ValueError(f"{arg}: a multiplicative trend or season needs values > 0, got minimum {a.min()}")
        return a, one_d

    def _model(self, y: np.ndarray, **initial: Any) -> ExponentialSmoothing:
        return ExponentialSmoothing(y, trend=self.trend, damped_trend=self.damped_trend, seasonal=self.seasonal,
                                    seasonal_periods=self.seasonal_periods, **initial)

    def _fit_column(self, y):
        return self._model(y).fit()

    def _apply(self, results, y):
        p = results.params
        initial, smoothing = {"initial_level": p["initial_level"]}, {"smoothing_level": p["smoothing_level"]}
        if self.trend:
            initial["initial_trend"], smoothing["smoothing_trend"] = p["initial_trend"], p["smoothing_trend"]
        if self.seasonal:
            initial["initial_seasonal"] = p["initial_seasons"]
            smoothing["smoothing_seasonal"] = p["smoothing_seasonal"]
        if self.damped_trend:
            smoothing["damping_trend"] = p["damping_trend"]
        return self._model(y, initialization_method="known", **initial).fit(**smoothing, optimized=False)


class ARIMA(_PerColumnModel):
    """(Seasonal) ARIMA from statsmodels: ``order`` (p, d, q), ``seasonal_order`` (P, D, Q, s), ``trend``
    ("n", "c", "t", "ct" or None for statsmodels' default). Without ``refit`` the parameters estimated on
    ``train`` filter each ``history`` (which may start anywhere). NaN in the data is handled as missing.
    """

    def __init__(self, order: Sequence[int] = (1, 0, 0), seasonal_order: Sequence[int] = (0, 0, 0, 0),
                 trend: str | None = None, refit: bool = False) -> None:
        super().__init__(refit)
        for arg, value, size in (("order", order, 3), ("seasonal_order", seasonal_order, 4)):
            if len(value) != size or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0
                                         for v in value):
                raise ValueError(f"{arg}: expected {size} integers >= 0, got {tuple(value)!r}")
        self.order, self.seasonal_order, self.trend = tuple(order), tuple(seasonal_order), trend

    def min_length(self) -> int:
        p, d, q = self.order
        big_p, big_d, big_q, s = self.seasonal_order
        return d + big_d * s + max(p + q, (big_p + big_q) * s) + 1

    def _fit_column(self, y):
        return _StatsmodelsARIMA(y, order=self.order, seasonal_order=self.seasonal_order, trend=self.trend).fit()

    def _apply(self, results, y):
        return results.apply(y, refit=False)


# --------------------------------------------------------------------------------- backtest
@dataclass(frozen=True)
class Backtest:
    """Historical forecasts from rolling origins: forecast k was made from ``series[:origins[k]]``
    and ``actuals[k, h] == series[origins[k] + h]``."""

    origins: np.ndarray    # <int64>[K]
    forecasts: np.ndarray  # <float64>[K, H] or [K, H, C]
    actuals: np.ndarray    # like forecasts

    def score(self, metric: Callable[..., float], **kwargs: Any) -> float:
        """``metric(actuals, forecasts, **kwargs)``, e.g. ``bt.score(mase, train=series[:start], m=12)``."""
        return metric(self.actuals, self.forecasts, **kwargs)


def backtest(predict_fn: Callable[[np.ndarray, int], Any], series: Any, start: int, horizon: int,
             stride: int = 1) -> Backtest:
    """Forecast ``horizon`` steps from origins ``start, start + stride, ...`` while the whole horizon
    lies in ``series`` <float>[N] or [N, C]; each call is ``predict_fn(series[:origin], horizon)``
    and must return <float>[horizon] or [horizon, C]. ``len(history)`` is the origin, by which a
    forecaster with covariates can look them up. ``model.predict`` of any baseline fits.
    """
    y = np.asarray(series, dtype=np.float64)
    if y.ndim not in (1, 2):
        raise ValueError(f"series: expected shape [N] or [N, C], got {y.shape}")
    horizon, stride = _positive_int(horizon, "horizon"), _positive_int(stride, "stride")
    start = _positive_int(start, "start")
    if start + horizon > len(y):
        raise ValueError(f"start: expected at most len(series) - horizon = {len(y)} - {horizon} = "
                         f"{len(y) - horizon}, got {start}")
    origins = np.arange(start, len(y) - horizon + 1, stride, dtype=np.int64)
    expected = (horizon, *y.shape[1:])
    forecasts = []
    for origin in origins:
        forecast = np.asarray(predict_fn(y[:origin], horizon), dtype=np.float64)
        if forecast.shape != expected:
            raise ValueError(f"predict_fn: expected a forecast of shape {expected}, got {forecast.shape} "
                             f"(origin {origin})")
        forecasts.append(forecast)
    actuals = np.stack([y[o:o + horizon] for o in origins])
    return Backtest(origins, np.stack(forecasts), actuals)
