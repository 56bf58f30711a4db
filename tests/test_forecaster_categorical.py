"""Categorical (text) covariates of the forecaster: one-hot from the training data's categories, kept
with the checkpoint, given for the horizon as text; unseen values; the config's checks."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.tasks.forecasting import Forecaster, ForecastExperiment

torch.set_num_threads(1)
WIND_EFFECT = {"N": -3.0, "SE": 0.0, "W": 4.0}


def windy(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A daily series shifted by the day's wind direction (text), which is known ahead (a forecast)."""
    rng = np.random.default_rng(seed)
    wind = rng.choice(list(WIND_EFFECT), n)
    y = 20 + 2 * np.sin(np.arange(n) * 2 * np.pi / 7) + pd.Series(wind).map(WIND_EFFECT).to_numpy()
    return pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="D"), "y": y + rng.normal(0, 0.3, n),
                         "wind": wind})


def fit(df: pd.DataFrame, **keywords) -> Forecaster:
    return Forecaster.fit(df, target="y", lookback=14, horizon=3, test=60, epochs=20, season=7, statistical="none",
                          hidden_size=16, log_every=10**6, horizons=[3], **keywords)


@pytest.fixture(scope="module")
def wind_model() -> Forecaster:
    return fit(windy(), future_covariates=["wind"], categorical=["wind"])


def test_a_text_covariate_is_one_hot_and_helps(wind_model):
    assert wind_model.columns["categorical"] == {"wind": ["N", "SE", "W"]}
    assert wind_model.experiment.model.input_size == 1 + 3 + 1   # target, one-hot wind, observed flag
    without = fit(windy().drop(columns="wind"))
    with_wind = wind_model.backtests[3].metrics.loc["model", "MASE"]
    assert with_wind < 0.7 * without.backtests[3].metrics.loc["model", "MASE"]


def test_text_values_for_the_horizon_and_the_checkpoint(wind_model, tmp_path):
    history = windy().iloc[:-3]
    ahead = windy().iloc[-3:][["date", "wind"]]
    wind_model.save(tmp_path / "ckpt")
    loaded = Forecaster.load(tmp_path / "ckpt")
    out = loaded.predict(df=history, future=ahead)
    pd.testing.assert_frame_equal(out, wind_model.predict(df=history, future=ahead))
    # the wind decides the level: a west wind forecasts higher than a north wind on the same days
    west, north = (loaded.predict(df=history, future=ahead.assign(wind=w)).y for w in ("W", "N"))
    assert (west - north > 3).all()
    with pytest.warns(UserWarning, match=r"future: column 'wind' has values \['NNE'\] not seen in training"):
        loaded.predict(df=history, future=ahead.assign(wind="NNE"))


def test_text_and_numeric_covariates_in_one_list():
    """A categorical covariate beside numeric ones keeps each numeric column as it is and one-hots the text."""
    df = windy(120).assign(rain=lambda d: np.random.default_rng(1).random(len(d)))
    fc = Forecaster.fit(df, target="y", lookback=14, horizon=3, test=30, epochs=1, season=7, statistical="none",
                        hidden_size=8, log_every=10**6, horizons=[3], future_covariates=["rain", "wind"],
                        categorical=["wind"])
    assert fc.experiment.model.input_size == 1 + 1 + 3 + 1   # target, rain, one-hot wind, observed flag
    out = fc.predict(df=df.iloc[:-3], future=df.iloc[-3:][["date", "rain", "wind"]])
    assert out["y"].notna().all() and len(out) == 3


def test_categorical_config_errors():
    with pytest.raises(ValueError, match=r"categorical: \['wind'\] must also be named in past_covariates or "
                                         r"future_covariates"):
        ForecastExperiment.from_dict({"data": {"categorical": ["wind"]}})
    with pytest.raises(ValueError, match=r"future_covariates 'wind': expected numbers, got 'W' at row 0 .*one-hot "
                                         r"when named in the forecaster's data.categorical"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(windy(), future_covariates=["wind"])
