"""Many series, one global forecaster: a long-format frame (unique_id, ds, y, category) trains one model
with per-series scaling and a one-hot static category; backtests and metrics per series, averaged.
Generated series, tiny models, a few epochs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.tasks.forecasting import (Forecaster, ForecastExperiment, PanelBacktest, backtest_to_files,
                                     forecast_to_files)

torch.set_num_threads(1)


def tiny(epochs: int = 15, **sections) -> ForecastExperiment:
    base = {"data": {"id_column": "unique_id", "date_column": "ds", "target_columns": ["y"], "lookback": 12,
                     "horizon": 4, "test": 8, "batch_size": 16},
            "model": {"cell": "gru", "hidden_size": 8},
            "train": {"epochs": epochs, "lr": 1e-2, "log_every": 10_000},
            "evaluate": {"season": 6, "statistical": "none", "horizons": [4]}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return ForecastExperiment.from_dict(base)


def panel(n_series: int = 4, n: int = 48, seed: int = 0, dates: bool = False) -> pd.DataFrame:
    """Series of one seasonal shape (period 6) at scales 1, 10, 100, ...; categories 'a'/'b' alternate."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    frames = []
    for i in range(n_series):
        shape = 5 + np.sin(2 * np.pi * t / 6) + 0.02 * t + rng.normal(0, 0.05, n)
        ds = pd.date_range("2020-01-01", periods=n, freq="MS") if dates else t
        frames.append(pd.DataFrame({"unique_id": f"s{i}", "ds": ds, "y": 10.0 ** i * shape,
                                    "category": "ab"[i % 2]}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def global_model() -> Forecaster:
    return Forecaster.fit(panel(), experiment=tiny(data={"static_covariates": ["category"]},
                                                   evaluate={"statistical": ["auto_ets"]}))


def test_one_model_over_series_of_very_different_scales(global_model):
    bt = global_model.backtests[4]
    assert isinstance(bt, PanelBacktest) and bt.series == 4
    # per series: the model, naive, seasonal naive and AutoETS, each scored on that series' test part
    assert bt.series_metrics.shape[0] == 4 * 4
    assert list(bt.metrics.index) == ["model", "naive", "seasonal_naive_6", "auto_ets"]
    # the table's row is the mean over series of the per-series scores (MASE scaled per series)
    per_series = bt.series_metrics.xs("model", level="method")
    assert len(per_series) == 4
    np.testing.assert_allclose(bt.metrics.loc["model", "MASE"], per_series["MASE"].mean())
    # trained on every series together, the network forecasts each in its own units, well below naive
    assert bt.metrics.loc["model", "MASE"] < 0.6 * bt.metrics.loc["naive", "MASE"]
    assert global_model.results["h4_model_MASE"] == pytest.approx(bt.metrics.loc["model", "MASE"])
    assert set(bt.frame()["series"]) == {"s0", "s1", "s2", "s3"}


def test_predict_gives_a_long_frame_that_continues_each_series(global_model):
    out = global_model.predict()
    assert list(out.columns) == ["unique_id", "ds", "y"] and len(out) == 4 * 4
    s3 = out[out.unique_id == "s3"]
    assert s3.ds.tolist() == [48, 49, 50, 51]
    # each forecast is in its series' own units (scales 1 .. 1000)
    means = out.groupby("unique_id").y.mean()
    np.testing.assert_allclose(means / means["s0"], [1, 10, 100, 1000], rtol=0.3)


def test_per_series_scaling_makes_the_forecast_scale_equivariant():
    df = panel(n_series=2)
    df.loc[df.unique_id == "s1", "y"] = 1000 * df.loc[df.unique_id == "s0", "y"].to_numpy()
    df["category"] = "a"
    fc = Forecaster.fit(df, experiment=tiny(epochs=3), evaluate=False)
    out = fc.predict().set_index("unique_id").y
    np.testing.assert_allclose(out["s1"].to_numpy(), 1000 * out["s0"].to_numpy(), rtol=1e-4)


def test_a_series_not_trained_on_is_named_and_backtested_on_its_past_only(global_model):
    new = panel(n_series=1, seed=1).assign(unique_id="new")
    with pytest.warns(UserWarning, match=r"df: 1 series the model was not trained on \('new'\): each is scaled"):
        out = global_model.predict(df=new)
    assert out.unique_id.tolist() == ["new"] * 4
    # a backtest scales it on the steps before its first origin: a test span ten times larger moves nothing
    spiked = new.copy()
    spiked.loc[spiked.index[-8:], "y"] *= 10
    with pytest.warns(UserWarning, match="not trained on"):
        calm, jump = (global_model.backtest(4, df=frame, baselines=False) for frame in (new, spiked))
    np.testing.assert_allclose(jump.frame()["forecast"].iloc[:1], calm.frame()["forecast"].iloc[:1], rtol=1e-5)


def test_static_category_is_an_input_kept_with_the_checkpoint(global_model, tmp_path):
    assert global_model.columns["categories"] == {"category": ["a", "b"]}
    # the input per step: target, the one-hot category (2, as future covariates known at every step), a flag
    assert global_model.experiment.model.input_size == 1 + 2 + 1
    df = panel()
    flipped = df.assign(category=df.category.map({"a": "b", "b": "a"}))
    assert not np.allclose(global_model.predict(df=df).y, global_model.predict(df=flipped).y)
    global_model.save(tmp_path / "ckpt")
    loaded = Forecaster.load(tmp_path / "ckpt")
    pd.testing.assert_frame_equal(loaded.predict(df=df), global_model.predict())
    with pytest.raises(ValueError, match=r"series 's0' has category = 'c', a category the model was not trained "
                                         r"with; known: \['a', 'b'\]"):
        loaded.predict(df=df.assign(category="c"))
    bt = loaded.backtest(df=df, baselines=False)
    np.testing.assert_allclose(bt.metrics.loc["model", "MASE"], global_model.backtests[4].metrics.loc["model", "MASE"])


def test_command_line_entry_points_write_long_frames(global_model, tmp_path):
    global_model.save(tmp_path / "ckpt")
    panel().to_csv(tmp_path / "series.csv", index=False)
    files = forecast_to_files(tmp_path / "ckpt", tmp_path / "series.csv", out_prefix=tmp_path / "fc")
    written = pd.read_csv(files["csv"])
    assert list(written.columns) == ["unique_id", "ds", "y"] and len(written) == 16 and files["png"] == []
    result = backtest_to_files(tmp_path / "ckpt", tmp_path / "series.csv", out_prefix=tmp_path / "bt")
    assert "4 series, 20 origins; means over series" in result.table()
    rows = pd.read_csv(tmp_path / "bt.csv")
    assert len(rows) == 4 * 5 * 4 and set(rows.columns) >= {"series", "origin", "step", "actual", "forecast"}
    # a plot per series (the first four): the series with the forecasts from its origins
    assert sorted(p.name for p in tmp_path.glob("bt*.png")) == [f"bt_s{i}.png" for i in range(4)]
    assert all(p.stat().st_size > 5_000 for p in tmp_path.glob("bt*.png"))
    with pytest.raises(ValueError, match=r"test: a model of many series backtests each series over its own last "
                                         r"data.test = \d+ steps; another test part is not supported \(got 10\): "
                                         r"leave it out"):
        backtest_to_files(tmp_path / "ckpt", tmp_path / "series.csv", test=10)
    # the model's own test part is accepted: the same backtest as without it
    same = backtest_to_files(tmp_path / "ckpt", tmp_path / "series.csv", test=global_model.experiment.data.test)
    pd.testing.assert_frame_equal(same.metrics, result.metrics)


def test_dated_series_with_calendar_features():
    fc = Forecaster.fit(panel(n_series=2, dates=True), experiment=tiny(epochs=2, data={"calendar": ["month"]}),
                        evaluate=False)
    out = fc.predict()
    assert fc.columns["freq"] == "MS"
    assert out[out.unique_id == "s1"].ds.tolist() == list(pd.date_range("2024-01-01", periods=4, freq="MS"))


def test_panel_errors():
    with pytest.raises(ValueError, match=r"static_covariates: \['category'\] are per-series values .* set "
                                         r"data.id_column too"):
        ForecastExperiment.from_dict({"data": {"static_covariates": ["category"]}})
    short = pd.concat([panel(n_series=1), panel(n_series=1, n=20).assign(unique_id="short")])
    with pytest.raises(ValueError, match=r"the training part of series 'short' \(12 of 20 steps.*shorter than "
                                         r"lookback \+ horizon = 12 \+ 4"):
        Forecaster.fit(short, experiment=tiny(epochs=1))
    with pytest.raises(ValueError, match=r"id_column: 'series' is not a column"):
        Forecaster.fit(panel(), experiment=tiny(epochs=1, data={"id_column": "series"}))
    with pytest.raises(ValueError, match=r"calendar, freq: the time column 'ds' holds step numbers"):
        Forecaster.fit(panel(), experiment=tiny(epochs=1, data={"calendar": ["month"]}))
    fc = Forecaster.fit(panel(n_series=1), experiment=tiny(epochs=1), evaluate=False)
    with pytest.raises(ValueError, match=r"start: with many series each backtest starts at its own"):
        fc.backtest(start=30)


def test_series_too_short_for_a_validation_part_train_without_one():
    df = pd.concat([panel(n_series=2), panel(n_series=1, n=26).assign(unique_id="short")])
    with pytest.warns(UserWarning, match=r"data.val: 1 of 3 series \(first 'short'\) are too short to keep a "
                                         r"validation part of 4"):
        fc = Forecaster.fit(df, experiment=tiny(epochs=2, data={"val": 4}), evaluate=False)
    # the short series trains on its 18 steps before the test; the others keep 4 steps for validation
    assert fc.test_starts == {"s0": 40, "s1": 40, "short": 18}
    bt = fc.backtest(4, baselines=False)
    assert set(bt.series_metrics.index.get_level_values("series")) == {"s0", "s1", "short"}


def test_many_series_forecast_with_numeric_known_future_covariates():
    rng = np.random.default_rng(1)
    df = panel(n_series=3, n=60)
    df["promo"] = rng.integers(0, 2, len(df)).astype(float)
    df["y"] = df["y"] * (1 + 0.5 * df["promo"])       # a promotion lifts each series by half
    fc = Forecaster.fit(df, experiment=tiny(40, data={"future_covariates": ["promo"]}), evaluate=False)
    with pytest.raises(ValueError, match="future: expected the future covariates"):
        fc.predict(4)

    def plan(value: float) -> pd.DataFrame:
        return pd.DataFrame([{"unique_id": f"s{i}", "ds": 60 + k, "promo": value} for i in range(3) for k in range(4)])

    on, off = fc.predict(4, future=plan(1.0)), fc.predict(4, future=plan(0.0))
    assert list(on.columns[:3]) == ["unique_id", "ds", "y"] and len(on) == 12
    assert (on["y"].to_numpy() > 1.15 * off["y"].to_numpy()).all()    # the covariates reach every series
    with pytest.raises(ValueError, match="future: series 's2' lacks its future covariates"):
        fc.predict(4, future=plan(1.0).iloc[:-1])


def test_conformal_intervals_recalibrate_per_series():
    fc = Forecaster.fit(panel(n=60), experiment=tiny(epochs=5, data={"val": 8}, forecast={"intervals": "conformal"}))
    bt = fc.backtests[4]
    assert bt.coverage_by_step().shape == (4,)

    def spread(forecasts: pd.DataFrame) -> pd.Series:
        """Per series: the largest step-1 interval width over its origins ÷ the smallest."""
        rows = forecasts[forecasts["step"] == 1]
        return (rows["upper"] - rows["lower"]).groupby(rows["series"]).agg(lambda w: w.max() / w.min())

    # each series' own errors enter its later origins' widths; without recalibration one width per series
    assert (spread(bt.forecasts) > 1.001).any()
    fc.experiment.forecast.recalibrate = False
    np.testing.assert_allclose(spread(fc.backtest(4, baselines=False).forecasts), 1.0, rtol=1e-5)
