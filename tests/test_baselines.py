"""rnnkit.baselines: naive forecasts, AutoARIMA / AutoETS / AutoTheta from statsforecast, Holt-Winters and
ARIMA from statsmodels, rolling-origin backtests."""

from pathlib import Path

import numpy as np
import pytest
from statsmodels.tsa.arima.model import ARIMA as StatsmodelsARIMA
from statsmodels.tsa.holtwinters import ExponentialSmoothing

from rnnkit.baselines import ARIMA, AutoARIMA, AutoETS, AutoTheta, HoltWinters, Naive, SeasonalNaive, backtest
from rnnkit.data.series import read_series
from rnnkit.metrics import mase, smape

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def seasonal_series(n=120, m=12, noise=0.1, seed=0):
    """Trend + season + noise, all values well above 0."""
    t = np.arange(n)
    return 20 + 0.1 * t + 3 * np.sin(2 * np.pi * t / m) + np.random.default_rng(seed).normal(0, noise, n)


def test_naive_and_seasonal_naive_by_hand():
    history = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(Naive().fit(history).predict(history, 3), [5, 5, 5])
    np.testing.assert_array_equal(SeasonalNaive(2).predict(history, 5), [4, 5, 4, 5, 4])
    two_columns = np.stack([history, -history], axis=1)
    np.testing.assert_array_equal(SeasonalNaive(3).predict(two_columns, 2), [[3, -3], [4, -4]])
    with pytest.raises(ValueError, match=r"history: expected at least 6 steps for SeasonalNaive, got 5"):
        SeasonalNaive(6).predict(history, 1)
    with pytest.raises(ValueError, match=r"horizon: expected an integer >= 1, got 0"):
        Naive().predict(history, 0)


def test_naive_and_seasonal_naive_equal_statsforecasts():
    from statsforecast.models import Naive as SFNaive, SeasonalNaive as SFSeasonalNaive
    y = seasonal_series(n=50)
    np.testing.assert_array_equal(SeasonalNaive(12).predict(y, 17), SFSeasonalNaive(12).fit(y).predict(17)["mean"])
    np.testing.assert_array_equal(Naive().predict(y, 5), SFNaive().fit(y).predict(5)["mean"])


def test_auto_models_continue_a_pure_trend_and_a_pure_season():
    t = np.arange(60.0)
    trend = 5 + 2 * t
    for model in (AutoARIMA(), AutoETS()):  # ETS(A,A,N) and ARIMA with drift extend a line exactly
        model.fit(trend[:48])
        np.testing.assert_allclose(model.predict(trend[:48], 4), trend[48:52], atol=1e-6)
        np.testing.assert_allclose(model.predict(trend[:56], 4), trend[56:60], atol=1e-6)
    # Theta extrapolates half the regression slope plus the exponentially smoothed level: close, not exact
    np.testing.assert_allclose(AutoTheta().fit(trend[:48]).predict(trend[:48], 4), trend[48:52], atol=0.05)
    assert AutoETS().fit(trend[:48]).results_[0].model_["method"] == "ETS(A,A,N)"
    season = np.tile([10.0, 20.0, 30.0, 15.0], 15)
    for model in (AutoARIMA(season=4), AutoETS(season=4), AutoTheta(season=4)):
        model.fit(season[:48])
        np.testing.assert_allclose(model.predict(season[:50], 6), season[50:56], atol=1e-6)
    # without the season the same series is not continued
    assert np.abs(AutoETS().fit(season[:48]).predict(season[:48], 4) - season[48:52]).max() > 1


def test_auto_models_keep_the_training_fit_or_refit():
    from statsforecast.models import AutoETS as SFAutoETS
    y = seasonal_series(n=120, noise=1.0)
    reference = SFAutoETS(season_length=12).fit(y[:96])
    model = AutoETS(season=12).fit(y[:96])
    np.testing.assert_allclose(model.predict(y[:96], 12), reference.predict(12)["mean"], rtol=1e-10)
    # a later origin: the parameters estimated on y[:96], the states filtered over y[:108]
    np.testing.assert_allclose(model.predict(y[:108], 12), reference.forward(y=y[:108], h=12)["mean"], rtol=1e-10)
    refit = AutoETS(season=12, refit=True).fit(y[:96])
    np.testing.assert_allclose(refit.predict(y[:108], 12), SFAutoETS(season_length=12).fit(y[:108]).predict(12)["mean"],
                               rtol=1e-10)
    two = AutoTheta(season=12).fit(np.stack([y[:96], 2 * y[:96]], axis=1))
    assert two.predict(np.stack([y[:100], 2 * y[:100]], axis=1), 3).shape == (3, 2)
    with pytest.raises(ValueError, match=r"train: AutoARIMA needs complete data, got 1 NaN"):
        AutoARIMA().fit(np.append(y[:47], np.nan))
    with pytest.raises(ValueError, match=r"season: expected an integer >= 1, got 0"):
        AutoTheta(season=0)
    with pytest.raises(ValueError, match=r"model: expected three letters .* got 'AA'"):
        AutoETS(model="AA")
    with pytest.raises(RuntimeError, match=r"AutoETS: call fit\(\) before predict\(\)"):
        AutoETS().predict(y, 3)


def test_auto_arima_beats_seasonal_naive_on_a_noisy_seasonal_series():
    y = seasonal_series(n=144, noise=0.5, seed=3)
    start = 120
    scores = {name: backtest(model.fit(y[:start]).predict, y, start, 12, stride=3).score(mase, train=y[:start], m=12)
              for name, model in (("seasonal", SeasonalNaive(12)), ("arima", AutoARIMA(season=12)),
                                  ("ets", AutoETS(season=12)))}
    assert scores["arima"] < scores["seasonal"] and scores["ets"] < scores["seasonal"]


def test_holt_winters_runs_the_training_fit_forward_from_each_origin():
    y = seasonal_series()
    model = HoltWinters(trend="add", seasonal="add", seasonal_periods=12).fit(y[:96])
    reference = ExponentialSmoothing(y[:96], trend="add", seasonal="add", seasonal_periods=12).fit()
    np.testing.assert_allclose(model.predict(y[:96], 12), reference.forecast(12), rtol=1e-10)
    # from a later origin: the same parameters, the states filtered over the longer history
    later = model.predict(y[:108], 6)
    assert later.shape == (6,) and np.all(np.abs(later - y[108:114]) < 1.0)


def test_holt_winters_beats_naive_on_a_clean_seasonal_series():
    y = seasonal_series()
    start, horizon = 96, 6
    scores = {}
    for name, model in [("naive", Naive()), ("seasonal", SeasonalNaive(12)),
                        ("hw", HoltWinters(trend="add", seasonal="add", seasonal_periods=12)),
                        ("hw_mul", HoltWinters(trend="add", seasonal="mul", seasonal_periods=12))]:
        bt = backtest(model.fit(y[:start]).predict, y, start, horizon, stride=2)
        scores[name] = bt.score(mase, train=y[:start], m=12)
    assert scores["hw"] < 0.5 * scores["seasonal"] < 0.5 * scores["naive"]
    assert scores["hw_mul"] < scores["seasonal"]  # a multiplicative season still helps on an additive one


def test_holt_winters_refit_and_argument_errors():
    y = seasonal_series(n=72)
    refit = HoltWinters(trend=None, seasonal="add", seasonal_periods=12, refit=True).fit(y[:48])
    assert refit.predict(y[:60], 4).shape == (4,)
    with pytest.raises(ValueError, match=r"train: a multiplicative trend or season needs values > 0, got minimum -1.0"):
        HoltWinters(seasonal="mul", seasonal_periods=12).fit(np.append(y[:47], -1.0))
    with pytest.raises(ValueError, match=r"train: HoltWinters needs complete data, got 1 NaN"):
        HoltWinters(seasonal_periods=12).fit(np.append(y[:47], np.nan))
    with pytest.raises(ValueError, match=r"train: expected at least 24 steps for HoltWinters, got 20"):
        HoltWinters(seasonal_periods=12).fit(y[:20])
    with pytest.raises(ValueError, match=r"seasonal_periods: expected an integer >= 2, got None"):
        HoltWinters(seasonal="add")
    with pytest.raises(ValueError, match=r"trend: expected None, 'add' or 'mul', got 'additive'"):
        HoltWinters(trend="additive", seasonal_periods=12)
    with pytest.raises(RuntimeError, match=r"HoltWinters: call fit\(\) before predict\(\)"):
        HoltWinters(seasonal_periods=12).predict(y, 3)


def test_arima_applies_fitted_parameters_at_new_origins():
    rng = np.random.default_rng(1)
    y = np.zeros(200)
    for t in range(1, 200):
        y[t] = 0.8 * y[t - 1] + rng.normal()
    model = ARIMA(order=(1, 0, 0)).fit(y[:150])
    reference = StatsmodelsARIMA(y[:150], order=(1, 0, 0)).fit()
    np.testing.assert_allclose(model.predict(y[:150], 5), reference.forecast(5), rtol=1e-6)
    np.testing.assert_allclose(model.predict(y[:170], 5), reference.apply(y[:170]).forecast(5), rtol=1e-6)
    two = ARIMA(order=(1, 0, 0)).fit(np.stack([y[:150], 2 * y[:150]], axis=1))
    assert two.predict(np.stack([y[:160], 2 * y[:160]], axis=1), 3).shape == (3, 2)
    with pytest.raises(ValueError, match=r"history: expected 2 columns \(as train\), got 1"):
        two.predict(y[:160, None], 3)
    with pytest.raises(ValueError, match=r"order: expected 3 integers >= 0, got \(1, 0\)"):
        ARIMA(order=(1, 0))


def test_backtest_alignment_and_errors():
    series = np.arange(30.0)
    calls = []

    def oracle(history, horizon):  # the true continuation of series = arange
        calls.append(len(history))
        return np.arange(len(history), len(history) + horizon, dtype=float)

    bt = backtest(oracle, series, start=20, horizon=3, stride=2)
    assert bt.origins.tolist() == [20, 22, 24, 26] == calls
    assert bt.forecasts.shape == bt.actuals.shape == (4, 3)
    for k, origin in enumerate(bt.origins):
        np.testing.assert_array_equal(bt.actuals[k], series[origin:origin + 3])
    np.testing.assert_array_equal(bt.forecasts, bt.actuals)

    two = np.stack([series, -series], axis=1)
    bt2 = backtest(Naive().predict, two, start=25, horizon=5)
    assert bt2.forecasts.shape == (1, 5, 2) and bt2.actuals[0, -1].tolist() == [29, -29]
    np.testing.assert_array_equal(bt2.forecasts[0], np.tile([24, -24], (5, 1)))

    with pytest.raises(ValueError, match=r"start: expected at most len\(series\) - horizon = 30 - 3 = 27, got 28"):
        backtest(oracle, series, start=28, horizon=3)
    with pytest.raises(ValueError, match=r"predict_fn: expected a forecast of shape \(3,\), got \(2,\) \(origin 20\)"):
        backtest(lambda h, n: np.zeros(2), series, start=20, horizon=3)
    with pytest.raises(ValueError, match=r"stride: expected an integer >= 1, got 0"):
        backtest(oracle, series, start=20, horizon=3, stride=0)


@pytest.mark.skipif(not (DATA / "timeseries" / "airline-passengers.csv").exists(), reason="shared data absent")
def test_airline_passengers_backtest(capsys):
    data = read_series(DATA / "timeseries" / "airline-passengers.csv", "Month", "Passengers")
    y = data.target[:, 0]
    start, horizon = len(y) - 36, 12  # the last three years as test span, 12-month forecasts
    models = {"naive": Naive(), "seasonal naive": SeasonalNaive(12),
              "holt-winters (add trend, mul season)": HoltWinters("add", "mul", seasonal_periods=12)}
    scores = {}
    for name, model in models.items():
        bt = backtest(model.fit(y[:start]).predict, y, start, horizon)
        scores[name] = (bt.score(mase, train=y[:start], m=12), bt.score(smape))
    with capsys.disabled():
        print(f"\nairline passengers, {len(bt.origins)} origins from {start}, horizon {horizon}:")
        for name, (mase_value, smape_value) in scores.items():
            print(f"  {name:38s} MASE(m=12) {mase_value:.3f}  sMAPE {smape_value:.2f}%")
    naive, seasonal, hw = (mase_value for mase_value, _ in scores.values())
    assert hw < 1.0 < seasonal < naive
