"""Missing dates and frequencies: a daily series with missing days is put on its inferred grid (kept
with the checkpoint), the filled days feed the inputs but are not scored, and a model trained on
irregular dates forecasts dated steps when given ``freq``."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.metrics import mae
from rnnkit.tasks.forecasting import Forecaster, forecast_to_files

torch.set_num_threads(1)


def daily(n: int = 200, drop: tuple[int, ...] = (150, 151, 170), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    df = pd.DataFrame({"date": pd.date_range("2021-01-01", periods=n, freq="D"),
                       "y": 10 + 3 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 0.2, n)})
    return df.drop(index=list(drop)).reset_index(drop=True)


def fit(df: pd.DataFrame, test: int = 60) -> Forecaster:
    return Forecaster.fit(df, target="y", lookback=14, horizon=3, test=test, epochs=3, season=7, hidden_size=8,
                          log_every=10**6, statistical="none", horizons=[3])


def test_missing_days_are_gridded_and_left_out_of_the_scores(tmp_path):
    fc = fit(daily())
    assert fc.columns["freq"] == "D" and len(fc.data) == 200
    bt = fc.backtests[3]
    actuals = bt.backtests["model"].actuals[:, :, 0]
    # the three missing days (interpolated for the inputs) appear as NaN actuals: 3 days x 3 steps each
    assert np.isnan(actuals).sum() == 9
    gap_days = pd.DatetimeIndex(["2021-05-31", "2021-06-01", "2021-06-20"])
    origin_of = {d: k for k, d in enumerate(bt.origin_dates)}
    assert all(np.isnan(actuals[origin_of[d]][0]) for d in gap_days)
    # the scores are those of the observed values only; a baseline's too
    np.testing.assert_allclose(bt.metrics.loc["model", "MAE"], mae(actuals, bt.backtests["model"].forecasts[:, :, 0]))
    assert np.isnan(bt.backtests["naive"].actuals).sum() == 9
    # the grid travels with the checkpoint: a forecast from the gappy history is dated daily
    fc.save(tmp_path / "ckpt")
    out = Forecaster.load(tmp_path / "ckpt").predict(df=daily())
    assert list(out.index) == list(pd.date_range("2021-07-20", periods=3, freq="D"))


def test_irregular_training_dates_forecast_with_freq(tmp_path):
    missing = np.random.default_rng(1).choice(np.arange(1, 199), 120, replace=False)  # 60% of the days, at random
    sparse = daily(drop=tuple(missing))
    fc = fit(sparse, test=10)
    assert fc.columns["freq"] is None
    assert isinstance(fc.predict().index, pd.RangeIndex)  # undated without a frequency
    with pytest.warns(UserWarning, match=r"freq: the model was trained on irregular dates, one row a step; on the "
                                         r"'D' grid 120 of 200 steps were filled"):
        dated = fc.predict(df=sparse, freq="D")
    assert list(dated.index) == list(pd.date_range(sparse.date.iloc[-1], periods=4, freq="D")[1:])
    fc.save(tmp_path / "ckpt")
    sparse.to_csv(tmp_path / "sparse.csv", index=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        files = forecast_to_files(tmp_path / "ckpt", tmp_path / "sparse.csv", out_prefix=tmp_path / "fc", freq="D")
    assert sum("trained on irregular dates" in str(w.message) for w in seen) == 1  # said once, not per reading
    assert pd.read_csv(files["csv"]).date.tolist()[0] == str(dated.index[0].date())
    with pytest.raises(ValueError, match=r"freq: expected a pandas frequency such as 'D', 'MS' or 'h', got 'daily'"):
        fc.predict(df=sparse, freq="daily")
    gridded = fit(daily())
    with pytest.raises(ValueError, match=r"freq: this model was trained on 'D' steps, got 'h'"):
        gridded.predict(freq="h")
