"""The hybrid forecaster (forecast.normalize = "auto_ets" | "auto_arima" | "auto_theta"): the network's
outputs are corrections to a statsforecast model's forecast from each origin; forecast.combine averages the
two. Generated series, tiny models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import rnnkit
from rnnkit.baselines import AutoETS, AutoTheta
from rnnkit.tasks.forecasting import Forecaster, ForecastExperiment
from rnnkit.tasks.forecasting.heads import fit_weights

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


def test_several_statistical_models_combine_as_their_equal_mean_in_the_transformed_space(tmp_path):
    """combine = ["auto_ets", "auto_theta"]: the component is the mean of the two fits' log forecasts, each
    the same as that model's own component, and the list survives a checkpoint."""
    df = monthly()
    exp = experiment("seasonal", forecast={"combine": ["auto_ets", "auto_theta"], "combine_weight": 0.0})
    fc = Forecaster.fit(df, experiment=exp)
    both = fc.backtests[6]
    assert "component_auto_ets+auto_theta" in both.metrics.index
    each = [Forecaster.fit(df, experiment=experiment("seasonal", forecast={"combine": name})).backtests[6]
            .backtests[f"component_{name}"].forecasts for name in ("auto_ets", "auto_theta")]
    expected = np.exp((np.log(each[0]) + np.log(each[1])) / 2)
    np.testing.assert_allclose(both.backtests["component_auto_ets+auto_theta"].forecasts, expected, rtol=1e-5)
    np.testing.assert_allclose(both.backtests["model"].forecasts, expected, rtol=1e-4)  # weight 0: the component
    assert Forecaster.load(fc.save(tmp_path / "both")).experiment.forecast.combine == ["auto_ets", "auto_theta"]
    assert ForecastExperiment.from_dict({"forecast": {"combine": ["auto_theta"]}}).forecast.combine == "auto_theta"
    with pytest.raises(ValueError, match=r"combine.*different statsforecast models, got \['auto_ets', 'auto_ets'\]"):
        ForecastExperiment.from_dict({"forecast": {"combine": ["auto_ets", "auto_ets"]}})
    with pytest.raises(ValueError, match=r"forecast.combine"):
        ForecastExperiment.from_dict({"forecast": {"combine": ["auto_ets", "holt"]}})


def test_validation_weights_weigh_each_step_by_its_inverse_squared_error_and_survive_a_checkpoint(tmp_path):
    """combine_weight = "validation": one network weight per step, MSE_stat / (MSE_net + MSE_stat) over the
    validation span's forecasts (the ratio is the same in log and in scaled log space), applied per step."""
    df = monthly(120)
    combine = {"combine": "auto_ets", "combine_weight": "validation"}
    fc = Forecaster.fit(df, experiment=experiment("seasonal", forecast=combine, val=24), out_dir=tmp_path)
    alone = Forecaster.fit(df, experiment=experiment("seasonal", forecast={**combine, "combine_weight": 1.0}, val=24))
    # the validation span (steps 72-95) as a backtest of the network alone, its component fitted on steps 0-71
    val = alone.backtest(6, df=df.iloc[:96], start=72, baselines=False).backtests
    w = fc.net.weights
    expected = fit_weights(*(np.log(a) for a in (val["model"].forecasts, val["component_auto_ets"].forecasts,
                                                 val["model"].actuals)))
    np.testing.assert_allclose(w, expected, rtol=1e-4)
    assert w.shape == (6,) and ((w > 0) & (w < 1)).all() and np.ptp(w) > 0.01
    test = fc.backtests[6].backtests
    network, component = alone.backtests[6].backtests["model"].forecasts, test["component_auto_ets"].forecasts
    np.testing.assert_allclose(test["model"].forecasts,
                               np.exp(w[None, :, None] * np.log(network) + (1 - w[None, :, None]) * np.log(component)),
                               rtol=1e-4)
    loaded = rnnkit.load(tmp_path / "best")
    np.testing.assert_allclose(loaded.net.weights, w)
    np.testing.assert_allclose(loaded.predict(6, df=df)["y"], fc.predict(6, df=df)["y"], rtol=1e-5)


def test_fit_weights_by_hand():
    net = np.array([[[1.0], [0.0]], [[-1.0], [5.0]]])      # step 0: errors 1, -1 (MSE 1); step 1: 0 (MSE 0)
    stat = np.array([[[3.0], [2.0]], [[0.0], [0.0]]])      # step 0: errors 3, 0 (MSE 4.5); step 1: 2 (MSE 4)
    actual = np.array([[[0.0], [0.0]], [[0.0], [np.nan]]])  # no actual for window 1's step 1
    np.testing.assert_allclose(fit_weights(net, stat, actual), [4.5 / 5.5, 1.0])
    assert fit_weights(net, stat, np.full_like(actual, np.nan)).tolist() == [0.5, 0.5]


def test_validation_weights_need_a_validation_span_and_a_combination():
    with pytest.raises(ValueError, match=r"forecast.combine_weight: 'validation' .* set forecast.combine .*data.val"):
        ForecastExperiment.from_dict({"forecast": {"combine": "auto_ets", "combine_weight": "validation"}})
    with pytest.raises(ValueError, match=r"forecast.combine_weight: 'validation' .*got 'none'"):
        ForecastExperiment.from_dict({"data": {"val": 12}, "forecast": {"combine_weight": "validation"}})
    with pytest.raises(ValueError, match=r"combine_weight.*expected a number in \[0, 1\] or 'validation', got 1.5"):
        ForecastExperiment.from_dict({"forecast": {"combine": "auto_ets", "combine_weight": 1.5}})


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
