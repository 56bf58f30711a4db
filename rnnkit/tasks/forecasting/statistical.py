"""A statistical model beside the network: the hybrid forecasters. ``forecast.normalize = "auto_ets" |
"auto_arima" | "auto_theta"`` makes the network's outputs corrections to that model's forecast (ES-RNN's
recipe of a statistical component that a network corrects); ``forecast.combine`` averages the two
forecasts (a forecast combination).

Several models (``forecast.combine = ["auto_ets", "auto_theta"]``) are fitted each and their forecasts
averaged (a ``Combination``): the equal-weight combination of statistical forecasts that has been hard
to beat since the M3 competition.

The statsforecast model is fitted on one series' transformed targets (``data.transform`` applied,
before scaling; or on the data's own units with ``forecast.statistical_space = "data"``) up to
``fit_end``: the training part when training, the part before the first origin in a backtest, the
whole history given when forecasting past it. From each origin it then forecasts the horizon with
the fitted parameters run over the history up to that origin (``rnnkit.baselines``' ``predict``),
and those forecasts are taken into model space (transformed, scaled like the targets). A fit that
fails (a series too short or constant) falls back to seasonal naive (or naive), and an origin
whose forecast fails to the window's last value.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pandas as pd

from ...baselines import AutoARIMA, AutoETS, AutoTheta, Naive, SeasonalNaive
from .data import _transform

LOWEST = {"log": 1e-6, "log1p": -1 + 1e-6}  # a forecast in the data's units is floored here before the transform


def transformed(forecast: np.ndarray, kind: str, columns: list[str]) -> np.ndarray:
    """A forecast <float>[M, C] in the data's units through ``data.transform`` (floored into its domain)."""
    return _transform(np.maximum(forecast, LOWEST[kind]) if kind in LOWEST else forecast, kind, columns)

logger = logging.getLogger(__name__)

MODELS = {"auto_ets": AutoETS, "auto_arima": AutoARIMA, "auto_theta": AutoTheta}


def filled(y: np.ndarray) -> np.ndarray:
    """<float64>[N, C] with missing values interpolated in time (and the ends carried)."""
    return pd.DataFrame(y).interpolate(limit_direction="both").to_numpy(np.float64)


FITS_KEPT = 4096  # fits kept for the next call on the same values (backtests at several horizons, seeds)
_fits: OrderedDict[tuple, StatisticalModel] = OrderedDict()


def fitted(name: str, season: int, train: np.ndarray) -> StatisticalModel:
    """``StatisticalModel(name, season, train)``, or the same fit made before on equal values; names
    joined by '+' make a ``Combination`` of those fits."""
    if "+" in name:
        return Combination([fitted(part, season, train) for part in name.split("+")])
    train = np.ascontiguousarray(train, dtype=np.float64)
    key = (name, season, train.shape, hashlib.sha1(train.tobytes()).hexdigest())
    if key in _fits:
        _fits.move_to_end(key)
    else:
        _fits[key] = StatisticalModel(name, season, train)
        if len(_fits) > FITS_KEPT:
            _fits.popitem(last=False)
    return _fits[key]


class StatisticalModel:
    """A statsforecast model fitted on ``train`` <float>[N, C] (transformed targets; NaN filled in time)
    with ``MODELS[name](season)``; seasonal naive (or naive) where that fit fails (``fallback`` then
    holds the error)."""

    def __init__(self, name: str, season: int, train: np.ndarray) -> None:
        self.name, self.fallback = name, ""
        train = filled(train)
        try:
            self.model = MODELS[name](season).fit(train)
        except Exception as error:  # statsforecast raises several kinds on short or flat series
            simple = SeasonalNaive(season) if season > 1 and len(train) >= season else Naive()
            self.model, self.fallback = simple.fit(train), f"{type(error).__name__}: {error}"
            logger.info("forecast.normalize=%r: the fit on %d steps failed (%s); using %s", name, len(train),
                        error, type(simple).__name__)

    def forecasts(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        """<float64>[W, horizon, C]: the forecast from each origin over the history ``y[:origin]`` (filled);
        NaN where it failed (e.g. a history shorter than the model needs)."""
        out = np.full((len(origins), horizon, y.shape[1]), np.nan)
        for k, origin in enumerate(origins):
            try:
                out[k] = self.model.predict(y[:int(origin)], horizon)
            except Exception:  # the window's last value is taken instead (heads._Network.inputs)
                continue
        return out

    def reference(self, y: np.ndarray, to_model: Callable[[np.ndarray], np.ndarray]
                  ) -> Callable[[np.ndarray, int], np.ndarray]:
        """(origins, horizon) -> <float32>[W, horizon, C]: the forecasts over the series ``y`` <float>[N, C]
        (in the space the model was fitted in), taken to model space by ``to_model`` (<float>[M, C] -> [M, C])."""
        history = filled(y)

        def run(origins: np.ndarray, horizon: int) -> np.ndarray:
            out = self.forecasts(history, origins, horizon)
            return to_model(out.reshape(-1, out.shape[2])).reshape(out.shape).astype(np.float32)

        return run


class Combination(StatisticalModel):
    """The equal mean of several fitted models' forecasts, where each has one (NaN where none has)."""

    def __init__(self, members: list[StatisticalModel]) -> None:
        self.members = members
        self.name = "+".join(m.name for m in members)
        self.fallback = "; ".join(f"{m.name}: {m.fallback}" for m in members if m.fallback)

    def forecasts(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        each = np.stack([m.forecasts(y, origins, horizon) for m in self.members])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an origin where every member failed: NaN
            return np.nanmean(each, axis=0)
