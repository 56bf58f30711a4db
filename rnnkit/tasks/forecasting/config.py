"""The forecaster's configuration: the data and its roles, the network's strategy and output, the
backtests and baselines, and the experiment that holds them (``rnnkit train`` with task = "forecaster")."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from ...config import Config
from ...data.series import CALENDAR_FEATURES
from ...data.text import TextFileConfig
from ...model import ModelConfig
from ...train import TrainConfig


# ------------------------------------------------------------------------------------ configs
SEASONAL_REFERENCES = ("seasonal", "seasonal_trend")
"""The values of forecast.normalize whose reference is a seasonal-naive forecast (one per horizon step)."""


def known_names(names: list[str], known, alternatives: str = "") -> list[str]:
    """``names`` where each is one of ``known``, else a ValueError listing them."""
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"expected names from {list(known)}{alternatives}, got {unknown}")
    return names


class ForecastDataConfig(TextFileConfig):
    """The series: where it comes from, which columns play which role, the split and the windows."""

    path: str = Field("", description="CSV file with a date column and value columns; '' uses dataset/file "
                                      "(or the DataFrame given to Forecaster.fit)")
    dataset: str = Field("", description="a registered data set holding the file, e.g. 'timeseries'")
    file: str = Field("", description="file of the data set, e.g. 'airline-passengers.csv'")
    data_dir: str = Field("", description="root holding <dataset>/<file> (default: $RNNKIT_DATA, then the cache)")
    competition: str = Field("", description="a forecasting competition's collection, e.g. 'tourism/monthly' or "
                                             "'m3/monthly' (rnnkit.data.competitions): each series' training part "
                                             "then its hold-out, as a long frame with the columns unique_id, ds "
                                             "(step), y and category; with data.test = the competition's horizon "
                                             "the backtest forecasts the hold-out")
    date_column: str = Field("date", description="column of timestamps (with id_column: dates or integer step numbers)")
    date_parts: list[str] = Field(default_factory=list,
                                  description="columns that together hold the date, in the order year, month, day, "
                                              "hour, minute, second (later ones may be left out: ['year', 'month'] "
                                              "for monthly data; month names are read too), assembled into "
                                              "date_column; [] = the dates are in date_column")
    id_column: str = Field("", description="column naming the series of a long-format frame (one row per series and "
                                           "step): one global model over all of them; '' = one series")
    static_covariates: list[str] = Field(default_factory=list,
                                         description="with id_column: columns with one value per series (e.g. a "
                                                     "category), one-hot into the network's input at every step")
    target_columns: list[str] = Field(default_factory=list, description="the series to forecast (one or more)")
    units: str = Field("", description="units of the targets for the plots' axis labels, e.g. 'thousand passengers'")
    past_covariates: list[str] = Field(default_factory=list,
                                       description="columns observed up to the forecast origin only")
    future_covariates: list[str] = Field(default_factory=list,
                                         description="columns known ahead (given for the horizon at forecast time)")
    categorical: list[str] = Field(default_factory=list,
                                   description="covariates (past or future) holding categories, e.g. a wind direction "
                                               "'NW': one-hot, the categories of the training data kept with the "
                                               "checkpoint; a value not seen in training is no category")
    calendar: list[str] = Field(default_factory=list, description="calendar features added as future covariates: "
                                                                  "month, day_of_week, day, day_of_year, hour")
    calendar_encoding: Literal["sincos", "onehot"] = Field("sincos", description="encoding of calendar features")
    freq: str = Field("", description="pandas frequency ('MS', 'D', 'h'); '' infers it from the dates")
    date_format: str = Field("", description="strftime format of the dates; '' lets pandas parse them")
    missing: Literal["interpolate", "ffill", "mask"] = Field(
        "interpolate", description="missing values: interpolate in time, carry forward, or mask (left out of "
                                   "the loss and the scores, read as the window's reference level)")

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, value: list[str]) -> list[str]:
        return known_names(value, CALENDAR_FEATURES)

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

    @field_validator("competition")
    @classmethod
    def _collection(cls, value: str) -> str:
        from ...data.competitions import FREQUENCIES
        name, _, frequency = value.partition("/")
        if value and frequency not in FREQUENCIES.get(name, ()):
            known = [f"{n}/{f}" for n, frequencies in FREQUENCIES.items() for f in frequencies]
            raise ValueError(f"expected one of {known}, got {value!r}")
        return value

    @field_validator("date_parts")
    @classmethod
    def _parts(cls, value: list[str]) -> list[str]:
        if len(value) > 6 or len(set(value)) < len(value):
            raise ValueError(f"expected up to 6 different columns (year, month, day, hour, minute, second), "
                             f"got {value}")
        return value

    @model_validator(mode="after")
    def _check_panel(self) -> ForecastDataConfig:
        roles = {"target_columns": self.target_columns, "past_covariates": self.past_covariates,
                 "future_covariates": self.future_covariates, "static_covariates": self.static_covariates,
                 "id_column": [self.id_column], "date_column": [self.date_column]}
        for role, names in roles.items():
            shared = [c for c in self.date_parts if c in names]
            if shared:
                raise ValueError(f"date_parts: {shared} also named in {role}; the date's parts are read into the "
                                 "date only (calendar features give a model the month or the hour)")
        unknown = [c for c in self.categorical if c not in (*self.past_covariates, *self.future_covariates)]
        if unknown:
            raise ValueError(f"categorical: {unknown} must also be named in past_covariates or future_covariates")
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
    level: float = Field(0.8, gt=0, lt=1, description="probability of the prediction interval (gaussian output or "
                                                      "conformal intervals)")
    intervals: Literal["model", "conformal"] = Field(
        "model", description="model: the gaussian or quantile head's intervals; conformal: split-conformal intervals "
                             "from the validation span's absolute errors per horizon step, for any output (needs "
                             "data.val of at least data.horizon steps)")
    recalibrate: bool = Field(
        True, description="conformal intervals in a backtest: recalibrate at each origin with the errors of the "
                          "earlier origins already observed there (as a forecaster in use refreshes its intervals); "
                          "false: the validation span's scores only")
    conformal_decay: float = Field(
        0.99, gt=0, le=1, description="recalibrated conformal intervals: each score weighs decay^age (age in steps "
                                      "since its actual was observed; the weighted conformal quantile of Barber et "
                                      "al. 2023, whose experiments use 0.99), so that recent errors count more where "
                                      "they drift; 1: all alike")
    conformal_adapt: float = Field(
        0.0, ge=0, lt=1, description="recalibrated conformal intervals: adaptive conformal inference (Gibbs & "
                                     "Candès 2021), each step's level moved by this step size after each observed "
                                     "actual (up after one outside its interval, down after one inside), so that "
                                     "coverage holds where the errors drift; 0: off")
    samples: int = Field(200, ge=10, description="recursive gaussian: sampled paths for the intervals")
    normalize: Literal["none", "last", "mean", "seasonal", "seasonal_trend", "auto_ets", "auto_arima",
                       "auto_theta"] = Field(
        "last", description="subtract each window's last observed (or mean) scaled target from inputs and targets; "
                            "seasonal: inputs relative to the last value, targets to the seasonal-naive forecast "
                            "(period evaluate.season), so that the network learns the correction to it; "
                            "seasonal_trend: the same, the seasonal-naive forecast moved by the change over the "
                            "last season (the forecast of ARIMA(0,1,0)(0,1,0) with that period: for a growing "
                            "seasonal series); auto_ets, "
                            "auto_arima, auto_theta: a hybrid, targets relative to that statsforecast model's "
                            "forecast from each origin (fitted per series on its transformed training part, on "
                            "the history before the first origin in a backtest, on the history given when "
                            "forecasting), the network learning the correction to it")
    combine: Literal["none", "auto_ets", "auto_arima", "auto_theta"] | list[Literal["auto_ets", "auto_arima",
                                                                                  "auto_theta"]] = Field(
        "none", description="a hybrid: the forecast is the weighted mean (in the transformed, scaled space) of the "
                            "network's and that statsforecast model's forecast, the model fitted per series as for "
                            "normalize = 'auto_*'; a list of models (e.g. ['auto_ets', 'auto_theta']): their equal "
                            "mean takes the statistical side; intervals move with the point")
    combine_weight: float | Literal["validation"] = Field(
        0.5, description="the network's weight in forecast.combine: a number in [0, 1] at every step, or "
                         "'validation': one weight per step from the validation span's errors of the two "
                         "forecasts, each weighed by its inverse mean squared error (Bates & Granger 1969), kept "
                         "with the checkpoint")
    statistical_space: Literal["transformed", "data"] = Field(
        "transformed", description="a hybrid's statsforecast model is fitted on the targets after data.transform "
                                   "(e.g. log), or on the data's own units (its forecast then transformed)")
    ensemble: int = Field(
        1, ge=1, le=64, description="networks trained side by side, each from its own initial weights and on its "
                                    "own order of the windows (a deep ensemble; N-BEATS's recipe: as if trained "
                                    "apart): the forecast is their mean, a "
                                    "Gaussian interval their mixture's, quantiles their mean; with a validation "
                                    "part each keeps its own best epoch (val_loss: the mean of their best losses "
                                    "so far, so an early stop waits for the last to stop improving); training and "
                                    "forecasting cost this many networks")
    seed: int = Field(0, description="seed of the sampled paths (recursive gaussian)")

    @field_validator("combine_weight")
    @classmethod
    def _weight(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 <= value <= 1:
            raise ValueError(f"expected a number in [0, 1] or 'validation', got {value}")
        return value

    @field_validator("combine")
    @classmethod
    def _models(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value or len(set(value)) < len(value):
                raise ValueError(f"expected one or more different statsforecast models, got {value}")
            return value[0] if len(value) == 1 else value
        return value

    def statistical(self) -> str:
        """The statsforecast model a hybrid fits ('' for none): forecast.normalize's or forecast.combine's,
        several joined by '+' (``statistical.fitted`` fits each and averages them)."""
        if self.normalize.startswith("auto_"):
            return self.normalize
        if isinstance(self.combine, list):
            return "+".join(self.combine)
        return "" if self.combine == "none" else self.combine

    @model_validator(mode="after")
    def _check(self) -> ForecastConfig:
        if self.normalize.startswith("auto_") and self.combine not in ("none", self.normalize):
            raise ValueError(f"forecast.combine: a hybrid fits one statistical model; got normalize "
                             f"{self.normalize!r} and combine {self.combine!r}; set both to the same or combine "
                             "to 'none'")
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

    season: int = Field(0, ge=0, description="seasonal period m: seasonal naive, MASE's scale and the statistical "
                                             "models' season; 0: from the data's frequency (``season_of``: 12 "
                                             "monthly, 4 quarterly, 52 weekly, 7 daily, the steps of a day below "
                                             "daily; 1 yearly or irregular)")
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
            value = [value]
        return [] if value == ["none"] else value  # "none", alone or as a list of one (a keyword's string)

    @field_validator("statistical")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return known_names(value, STATISTICAL, " (or 'none')")


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
        if self.forecast.normalize not in ("none", "last", "mean") and self.forecast.strategy != "direct":
            raise ValueError(f"forecast.normalize: {self.forecast.normalize!r} needs strategy='direct' (the "
                             f"reference is a forecast of the whole horizon), got {self.forecast.strategy!r}")
        if self.evaluate.season:  # a season inferred from the data is checked once known (``with_season``)
            self.check_season(self.evaluate.season)
        fc = self.forecast
        if fc.conformal_adapt and not (fc.intervals == "conformal" and fc.recalibrate):
            raise ValueError(f"forecast.conformal_adapt: adapts recalibrated conformal intervals in a backtest; set "
                             f"forecast.intervals = \"conformal\" and forecast.recalibrate = true, or "
                             f"conformal_adapt = 0 (got intervals {fc.intervals!r}, recalibrate {fc.recalibrate})")
        if self.forecast.intervals == "conformal" and not self.data.val:
            raise ValueError("forecast.intervals: conformal intervals are calibrated on the validation span; set "
                             "data.val (a count of at least data.horizon steps, or a fraction)")
        if self.forecast.combine_weight == "validation" and (self.forecast.combine == "none" or not self.data.val):
            raise ValueError(f"forecast.combine_weight: 'validation' fits the weights of forecast.combine on the "
                             f"validation span; set forecast.combine (got {self.forecast.combine!r}) and data.val "
                             f"(got {self.data.val}: a count of at least data.horizon steps, or a fraction)")
        if self.forecast.strategy == "recursive" and self.model.bidirectional:
            raise ValueError("model.bidirectional: a recursive forecaster predicts each next step from the past "
                             "only; a backward direction would read the future. Set bidirectional = false")
        return self

    def check_season(self, season: int) -> None:
        """The seasonal references (``forecast.normalize = "seasonal"`` or ``"seasonal_trend"``) need the
        direct strategy and a season of 2 or more that the lookback covers (one step more for the trend)."""
        how = self.forecast.normalize
        if how not in SEASONAL_REFERENCES:
            return
        where = f"{season}{'' if self.evaluate.season else ', from the frequency'}"
        need = season + (how == "seasonal_trend")
        if self.forecast.strategy != "direct":
            problem = f"strategy='direct' (got {self.forecast.strategy!r})"
        elif season < 2:
            problem = (f"a season of 2 or more (got {where}: no seasonal period); set evaluate.season or use "
                       "normalize='last'")
        elif self.data.lookback < need:
            problem = (f"data.lookback >= {need} (a season of {where}{', and one step' if need > season else ''}), "
                       f"got {self.data.lookback}")
        else:
            return
        raise ValueError(f"forecast.normalize: {how!r} needs {problem}")

    def with_season(self, freq: str | None) -> ForecastExperiment:
        """This config with ``evaluate.season`` inferred from the data's frequency where it is 0."""
        if self.evaluate.season:
            return self
        season = season_of(freq)
        self.check_season(season)
        return self.model_copy(update={"evaluate": self.evaluate.model_copy(update={"season": season})})


SEASONS = {**dict.fromkeys(("MS", "ME", "M", "BMS", "BME", "SMS"), 12),
           **dict.fromkeys(("QS", "QE", "Q", "BQS", "BQE"), 4), "W": 52, "D": 7, "B": 5, "C": 5}
"""A calendar frequency's seasonal period (steps a year, or days a week)."""


def season_of(freq: str | None) -> int:
    """The usual seasonal period of a pandas frequency: 12 monthly, 4 quarterly, 52 weekly, 7 daily (5
    business days), the steps of a day below daily (24 hourly, 48 half-hourly, up to 288 five-minute steps);
    1 yearly, irregular (None) or anything else.

    Examples:
        >>> season_of("MS"), season_of("QE-DEC"), season_of("W-SUN"), season_of("D"), season_of("30min")
        (12, 4, 52, 7, 48)
    """
    if not freq:
        return 1
    offset = pd.tseries.frequencies.to_offset(freq)
    name = offset.name.split("-")[0]  # "W-SUN", "QE-DEC": the anchor does not change the period
    if offset.n == 1 and name in SEASONS:
        return SEASONS[name]
    try:
        step = pd.Timedelta(offset)
    except ValueError:  # months, years and other calendar offsets of no fixed length
        return 1
    day = pd.Timedelta(days=1)
    per_day = day // step if step < day and day % step == pd.Timedelta(0) else 1
    return int(per_day) if per_day <= 288 else 1  # minutes or seconds: no day-long season guessed
