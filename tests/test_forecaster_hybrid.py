"""The hybrid forecaster (forecast.normalize = "auto_ets" | "auto_arima" | "auto_theta"): the network's
outputs are corrections to a statsforecast model's forecast from each origin. Generated series, tiny models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.baselines import AutoETS, AutoTheta
from rnnkit.tasks.forecasting import Forecaster, ForecastExperiment

torch.set_num_threads(1)


def monthly(n: int = 96, seed: int = 0, level: float = 100.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = level * (1 + 0.01 * t) * (1 + 0.2 * np.sin(2 * np.pi * t / 12)) * np.exp(rng.normal(0, 0.03, n))
    return pd.DataFrame({"month": pd.date_range("2000-01-01", periods=n, freq="MS"), "y": y})


def experiment(normalize: str = "auto_ets", epochs: int = 3, forecast: dict | None = None, **data
               ) -> ForecastExperiment:
    return ForecastExperiment.from_dict({
        "data": {"date_column": "month", "target_columns": ["y"], "lookback": 24, "horizon": 6, "test": 24,
                 "transform": "log", "batch_size": 16, **data},
        "forecast": {"normalize": normalize, **(forecast or {})},
        "model": {"cell": "gru", "hidden_size": 8},
        "train": {"epochs": epochs, "lr": 1e-2, "log_every": 10_000},
        "evaluate": {"season": 12, "statistical": "none", "horizons": [6]}})


def silence(fc: Forecaster) -> Forecaster:
    """The network's output layer set to zero: the hybrid then forecasts its statistical component exactly."""
    with torch.no_grad():
        for p in fc.model.output.parameters():
            p.zero_()
    return fc


def test_the_component_is_the_statistical_model_fitted_on_the_transformed_history_before_the_test():
    df = monthly()
    fc = Forecaster.fit(df, experiment=experiment())
    bt = fc.backtests[6]
    assert list(bt.metrics.index) == ["model", "component_auto_ets", "naive", "seasonal_naive_12"]
    # the component's row: AutoETS fitted on log(y) before the first origin, run from every origin, exp'd back
    logy = np.log(df["y"].to_numpy())
    ets = AutoETS(12).fit(logy[:72])
    expected = np.stack([np.exp(ets.predict(logy[:o], 6)) for o in range(72, 96 - 6 + 1)])
    np.testing.assert_allclose(bt.backtests["component_auto_ets"].forecasts[..., 0], expected, rtol=1e-5)
    # the network's output is the correction: silenced, the model's forecasts are the component's
    silence(fc)
    again = fc.backtest(6, baselines=False)
    np.testing.assert_allclose(again.backtests["model"].forecasts, again.backtests["component_auto_ets"].forecasts,
                               rtol=1e-5)
    assert not np.allclose(bt.backtests["model"].forecasts, bt.backtests["component_auto_ets"].forecasts)


def test_a_hybrid_forecast_refits_its_component_on_the_history_given_and_survives_a_checkpoint(tmp_path):
    df = monthly()
    fc = Forecaster.fit(df, experiment=experiment("auto_theta"), evaluate=False)
    loaded = Forecaster.load(fc.save(tmp_path / "hybrid"))
    assert loaded.experiment.forecast.normalize == "auto_theta"
    history = df.iloc[:80]
    pd.testing.assert_frame_equal(loaded.predict(df=history), fc.predict(df=history))
    silence(loaded)
    logy = np.log(history["y"].to_numpy())
    expected = np.exp(AutoTheta(12).fit(logy).predict(logy, 6))
    np.testing.assert_allclose(loaded.predict(df=history)["y"].to_numpy(), expected, rtol=1e-5)
    # `rnnkit backtest`'s path: the component refitted on the history before the first origin it is given
    bt = loaded.backtest(6, df=history, start=60, baselines=False)
    before = np.exp(AutoTheta(12).fit(logy[:60]).predict(logy[:60], 6))
    np.testing.assert_allclose(bt.backtests["component_auto_theta"].forecasts[0, :, 0], before, rtol=1e-5)
    np.testing.assert_allclose(bt.backtests["model"].forecasts, bt.backtests["component_auto_theta"].forecasts,
                               rtol=1e-5)


def test_many_series_each_get_their_own_component():
    frames = [monthly(72, seed=i, level=10.0 ** i).assign(unique_id=f"s{i}") for i in range(3)]
    df = pd.concat(frames, ignore_index=True)
    fc = Forecaster.fit(df, experiment=experiment(id_column="unique_id", test=6))
    assert "component_auto_ets" in fc.backtests[6].metrics.index
    silence(fc)  # the model's forecasts are then each series' component
    bt = fc.backtest(6, baselines=False)
    forecast = fc.predict(6)
    for i in range(3):  # each series' component: AutoETS fitted on that series' own log history
        logy = np.log(frames[i]["y"].to_numpy())
        before_test = np.exp(AutoETS(12).fit(logy[:66]).predict(logy[:66], 6))
        np.testing.assert_allclose(bt.forecasts[bt.forecasts["series"] == f"s{i}"]["forecast"], before_test, rtol=1e-5)
        after_end = np.exp(AutoETS(12).fit(logy).predict(logy, 6))
        np.testing.assert_allclose(forecast[forecast["unique_id"] == f"s{i}"]["y"], after_end, rtol=1e-5)


def test_a_combining_hybrid_averages_the_network_and_its_component_in_the_transformed_space():
    df = monthly()
    alone = Forecaster.fit(df, experiment=experiment("seasonal")).backtests[6]
    combined = Forecaster.fit(df, experiment=experiment("seasonal", forecast={"combine": "auto_ets",
                                                                             "combine_weight": 0.25})).backtests[6]
    assert "component_auto_ets" in combined.metrics.index
    network = alone.backtests["model"].forecasts          # the same network: combining leaves training alone
    component = combined.backtests["component_auto_ets"].forecasts
    expected = np.exp(0.25 * np.log(network) + 0.75 * np.log(component))
    np.testing.assert_allclose(combined.backtests["model"].forecasts, expected, rtol=1e-4)
    assert not np.allclose(network, component, rtol=1e-3)


def test_the_component_may_be_fitted_in_the_datas_own_units():
    df = monthly()
    exp = experiment("seasonal", forecast={"combine": "auto_ets", "combine_weight": 0.0, "statistical_space": "data"})
    bt = Forecaster.fit(df, experiment=exp).backtests[6]
    y = df["y"].to_numpy()
    ets = AutoETS(12).fit(y[:72])  # on the passengers themselves, not their log
    expected = np.stack([ets.predict(y[:o], 6) for o in range(72, 96 - 6 + 1)])
    np.testing.assert_allclose(bt.backtests["component_auto_ets"].forecasts[..., 0], expected, rtol=1e-4)
    np.testing.assert_allclose(bt.backtests["model"].forecasts[..., 0], expected, rtol=1e-4)  # weight 0


def test_a_recursive_hybrid_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="forecast.normalize.*strategy='direct'"):
        ForecastExperiment.from_dict({"forecast": {"normalize": "auto_arima", "strategy": "recursive"}})
    with pytest.raises(ValueError, match="forecast.combine: a hybrid fits one statistical model"):
        ForecastExperiment.from_dict({"forecast": {"normalize": "auto_arima", "combine": "auto_ets"}})
