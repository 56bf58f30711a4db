"""rnnkit.tasks.forecasting: fit / predict / backtest, covariates, probabilistic outputs, checkpoints,
the CLI entry points and the errors for bad input. Synthetic series, tiny models, a few epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.config import load_toml
from rnnkit.data.synthetic import covariate_series
from rnnkit.tasks.forecasting import (Forecaster, ForecastExperiment, backtest_to_files, forecast_to_files,
                                     format_tables)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"


def tiny(epochs: int = 4, **sections) -> ForecastExperiment:
    """A small network trained for a few epochs; ``sections`` override whole config sections."""
    base = {"model": {"cell": "lstm", "hidden_size": 8},
            "train": {"epochs": epochs, "lr": 1e-2, "log_every": 10_000},
            "evaluate": {"season": 12, "statistical": "none"}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return ForecastExperiment.from_dict(base)


def monthly(n: int = 96, seed: int = 0) -> pd.DataFrame:
    """Trend + yearly season + noise, monthly from 2010-01."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n)
    return pd.DataFrame({"date": pd.date_range("2010-01-01", periods=n, freq="MS"), "y": y})


@pytest.fixture(scope="module")
def point_model() -> Forecaster:
    return Forecaster.fit(monthly(), experiment=tiny(), target_columns="y", lookback=12, horizon=6, test=24,
                          evaluate=False)


@pytest.fixture(scope="module")
def gaussian_model() -> Forecaster:
    return Forecaster.fit(monthly(), experiment=tiny(forecast={"output": "gaussian"}), target_columns="y",
                          lookback=12, horizon=6, test=24, transform="log", evaluate=False)


# ---------------------------------------------------------------------------------- predict
def test_predict_continues_the_dates_with_one_column_per_target(point_model):
    out = point_model.predict()
    assert list(out.columns) == ["y"]
    assert list(out.index) == list(pd.date_range("2018-01-01", periods=6, freq="MS"))
    assert out.index.name == "date"
    assert np.isfinite(out.to_numpy()).all()
    short = point_model.predict(3)
    np.testing.assert_allclose(short["y"].to_numpy(), out["y"].to_numpy()[:3], rtol=1e-6)


def test_forecast_is_in_the_data_units_and_learns_the_series():
    df = monthly(120)
    fc = Forecaster.fit(df, experiment=tiny(epochs=60, model={"cell": "gru", "hidden_size": 16}),
                        target_columns="y", lookback=12, horizon=6, test=24, evaluate=False)
    bt = fc.backtest(horizon=6)
    assert bt.metrics.loc["model", "MASE"] < bt.metrics.loc["naive", "MASE"]
    assert 100 < fc.predict()["y"].mean() < 200  # inverse scaling: the series lives around 130-160


def test_scalers_are_fitted_on_the_training_part_only(gaussian_model):
    y = np.log(monthly()["y"].to_numpy())
    n_train = 96 - 24
    scaler = gaussian_model.scalers["target"]
    np.testing.assert_allclose(scaler.center, [y[:n_train].mean()], rtol=1e-12)
    np.testing.assert_allclose(scaler.scale, [y[:n_train].std()], rtol=1e-12)
    assert gaussian_model.columns["train_end"].startswith("2015-12-01")


def test_predict_from_new_history_equals_the_backtest_at_that_origin(gaussian_model):
    df = monthly()
    bt = gaussian_model.backtest(horizon=6, baselines=False)
    k = 4
    origin = int(bt.backtests["model"].origins[k])
    out = gaussian_model.predict(df=df.iloc[:origin])
    np.testing.assert_allclose(out["y"].to_numpy(), bt.backtests["model"].forecasts[k, :, 0], rtol=1e-5)
    np.testing.assert_allclose(out["y_lower"].to_numpy(), bt.lower[k, :, 0], rtol=1e-5)


def test_gaussian_intervals_bracket_the_point_and_widen_with_level(gaussian_model):
    out80, out95 = gaussian_model.predict(), gaussian_model.predict(level=0.95)
    assert (out80["y_lower"] < out80["y"]).all() and (out80["y"] < out80["y_upper"]).all()
    assert (out95["y_upper"] - out95["y_lower"] > out80["y_upper"] - out80["y_lower"]).all()


def test_quantile_output_has_ordered_quantiles():
    fc = Forecaster.fit(monthly(), experiment=tiny(forecast={"output": "quantile", "quantiles": [0.05, 0.5, 0.95]}),
                        target_columns="y", lookback=12, horizon=6, test=24, evaluate=False)
    out = fc.predict()
    assert list(out.columns) == ["y", "y_lower", "y_upper", "y_q0.05", "y_q0.5", "y_q0.95"]
    assert (out["y_q0.05"] <= out["y_q0.5"]).all() and (out["y_q0.5"] <= out["y_q0.95"]).all()
    np.testing.assert_allclose(out["y"], out["y_q0.5"])
    bt = fc.backtest(horizon=3, baselines=False)
    assert 0 <= bt.metrics.loc["model", "coverage"] <= 1 and bt.level == pytest.approx(0.9)


def test_recursive_strategy_forecasts_beyond_its_training_horizon_with_sampled_intervals():
    fc = Forecaster.fit(monthly(), experiment=tiny(forecast={"strategy": "recursive", "output": "gaussian", "samples": 50}),
                        target_columns="y", lookback=12, horizon=6, test=24, evaluate=False)
    out = fc.predict(10)
    assert out.shape == (10, 3) and np.isfinite(out.to_numpy()).all()
    assert (out["y_lower"] <= out["y_upper"]).all()
    pd.testing.assert_frame_equal(out, fc.predict(10))  # seeded samples: reproducible
    bt = fc.backtest(horizon=6, baselines=False)
    k = 3
    again = fc.predict(6, df=monthly().iloc[:int(bt.backtests["model"].origins[k])])
    np.testing.assert_allclose(again["y_upper"].to_numpy(), bt.upper[k, :, 0], rtol=1e-5)


# ------------------------------------------------------------------------------- covariates
def test_covariates_improve_a_multivariate_forecast():
    df = covariate_series()
    targets = ["y0", "y1", "y2"]
    experiment = tiny(epochs=15, model={"cell": "gru", "hidden_size": 16}, train={"lr": 1e-2, "seed": 0},
                      evaluate={"season": 7})
    common = dict(experiment=experiment, date_column="date", target_columns=targets, lookback=14, horizon=7,
                  test=70, evaluate=False)
    with_cov = Forecaster.fit(df, future_covariates=["promo"], calendar=["day_of_week"], **common)
    without = Forecaster.fit(df.drop(columns=["promo"]), **common)
    mase_with = with_cov.backtest(horizon=7, baselines=False).metrics.loc["model", "MASE"]
    mase_without = without.backtest(horizon=7, baselines=False).metrics.loc["model", "MASE"]
    assert with_cov.net.layout == "steps" and without.net.layout == "last"
    assert mase_with < 0.8 * mase_without, (mase_with, mase_without)


@pytest.fixture(scope="module")
def promo_model() -> Forecaster:
    return Forecaster.fit(covariate_series(120, 2), experiment=tiny(evaluate={"season": 7}), target_columns=["y0", "y1"],
                          future_covariates=["promo"], calendar=["day_of_week"], lookback=14, horizon=7, test=21,
                          evaluate=False)


def test_future_covariates_come_from_trailing_rows_or_a_frame(promo_model):
    df = covariate_series(130, 2)
    history, ahead = df.iloc[:120], df.iloc[120:127]
    trailing = pd.concat([history, ahead.assign(y0=np.nan, y1=np.nan)])
    a = promo_model.predict(df=trailing)
    b = promo_model.predict(df=history, future=ahead[["date", "promo"]])
    pd.testing.assert_frame_equal(a, b)
    assert list(a.index) == list(ahead["date"])
    c = promo_model.predict(df=history, future=ahead[["date", "promo"]].assign(promo=1.0))
    assert not np.allclose(a.to_numpy(), c.to_numpy())  # the covariate is read


def test_missing_future_covariates_are_named(promo_model):
    df = covariate_series(130, 2)
    with pytest.raises(ValueError, match=r"future: expected the future covariates \['promo'\] for the 7 steps"):
        promo_model.predict(df=df.iloc[:120], future=df.iloc[120:124][["date", "promo"]])
    with pytest.raises(ValueError, match=r"trained with future covariate columns \['promo'\]; missing \['promo'\]"):
        promo_model.predict(df=df.iloc[:120].drop(columns=["promo"]))


def test_past_covariates_are_used_up_to_the_origin_only():
    df = covariate_series(120, 1).rename(columns={"promo": "lagged"})
    df["lagged"] = df["y0"].shift(1).bfill()
    fc = Forecaster.fit(df, experiment=tiny(evaluate={"season": 7}), target_columns="y0", past_covariates=["lagged"],
                        lookback=14, horizon=7, test=21, evaluate=False)
    assert fc.model.config.input_size == 2 and fc.net.layout == "last"
    assert fc.predict().shape == (7, 1)


# ------------------------------------------------------------------------------ checkpoints
def test_save_load_round_trip_keeps_scaler_and_columns(gaussian_model, tmp_path):
    path = gaussian_model.save(tmp_path / "fc")
    assert {"scaler.json", "columns.json", "config.json", "model.safetensors"} <= {p.name for p in path.iterdir()}
    loaded = Forecaster.load(path)
    assert loaded.columns == gaussian_model.columns
    df = monthly()
    pd.testing.assert_frame_equal(loaded.predict(df=df), gaussian_model.predict())
    with pytest.raises(ValueError, match="loaded from a checkpoint and holds no series"):
        loaded.predict()


def test_checkpoint_refuses_covariates_it_was_not_trained_with(point_model, tmp_path):
    loaded = Forecaster.load(point_model.save(tmp_path / "fc"))
    df = monthly().assign(promo=0.0)
    with pytest.raises(ValueError, match=r"columns \['promo'\] were not used in training.*will not forecast with "
                                         r"covariates it was not trained with"):
        loaded.predict(df=df)
    with pytest.raises(ValueError, match=r"trained without future covariates.*got \['promo'\]"):
        loaded.predict(df=monthly(), future=pd.DataFrame({"date": pd.date_range("2018-01-01", periods=6, freq="MS"),
                                                           "promo": 1.0}))
    out = loaded.predict(df=df, extra_columns="ignore")
    pd.testing.assert_frame_equal(out, loaded.predict(df=monthly()))


def test_fit_with_out_dir_writes_checkpoints_and_results(tmp_path):
    experiment = tiny(evaluate={"statistical": ["auto_ets", "holt_winters"], "hw_seasonal": "add", "horizons": [1, 6]})
    fc = Forecaster.fit(monthly(), tmp_path / "run", experiment=experiment, target_columns="y", lookback=12,
                        horizon=6, test=24)
    assert (tmp_path / "run" / "best" / "scaler.json").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()
    assert set(fc.backtests) == {1, 6}
    for key in ("h1_model_RMSE", "h6_model_MASE", "h6_naive_MASE", "h6_seasonal_naive_12_MASE", "h6_holt_winters_MASE",
                "h6_auto_ets_MASE"):
        assert np.isfinite(fc.results[key]), key
    # the noise-free season + trend of monthly(): AutoETS continues it far better than seasonal naive
    assert fc.results["h6_auto_ets_MASE"] < 0.5 * fc.results["h6_seasonal_naive_12_MASE"]
    table = format_tables(list(fc.backtests.values()))
    assert "holt_winters" in table and "auto_ets" in table and "backtest horizon 6: 19 origins 2016-01-01 .. 2017-07-01" in table
    assert json.loads((tmp_path / "run" / "backtest.json").read_text())["6"]["origins"] == 19
    reloaded = Forecaster.load(tmp_path / "run" / "best")
    pd.testing.assert_frame_equal(reloaded.predict(df=monthly()), fc.predict())


# ------------------------------------------------------------------------------ entry points
def test_forecast_to_files_writes_csv_and_png(gaussian_model, tmp_path):
    checkpoint = gaussian_model.save(tmp_path / "fc")
    csv_in = tmp_path / "series.csv"
    monthly().to_csv(csv_in, index=False)
    out = forecast_to_files(checkpoint, csv_in, horizon=4, out_prefix=tmp_path / "out" / "fcst")
    frame = pd.read_csv(out["csv"], index_col="date", parse_dates=True)
    assert list(frame.columns) == ["y", "y_lower", "y_upper"] and len(frame) == 4
    assert out["png"][0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # on the command line an error about the history names --input, not Python's df
    from typer.testing import CliRunner

    from rnnkit.cli import app
    monthly().iloc[:8].to_csv(tmp_path / "short.csv", index=False)
    result = CliRunner().invoke(app, ["forecast", str(checkpoint), "--input", str(tmp_path / "short.csv")])
    assert result.exit_code == 2 and "error: --input: " in result.output and "error: df:" not in result.output


def test_backtest_to_files_writes_metrics_and_rows(point_model, tmp_path):
    checkpoint = point_model.save(tmp_path / "fc")
    result = backtest_to_files(checkpoint, monthly(), horizon=3, test=12, out_prefix=tmp_path / "bt")
    assert result.start == 84 and len(result.origin_dates) == 10
    summary = json.loads((tmp_path / "bt.json").read_text())
    assert set(summary["metrics"]) == {"model", "naive", "seasonal_naive_12"}
    rows = pd.read_csv(tmp_path / "bt.csv")
    assert len(rows) == 10 * 3 and {"origin", "step", "actual", "forecast"} <= set(rows.columns)
    assert (tmp_path / "bt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the forecasts over the series


# ------------------------------------------------------------------------------- bad input
def test_series_shorter_than_lookback_plus_horizon():
    with pytest.raises(ValueError, match=r"series of 20 steps is shorter than lookback \+ horizon = 12 \+ 12 = 24"):
        Forecaster.fit(monthly(20), experiment=tiny(), target_columns="y", lookback=12, horizon=12, test=0)
    with pytest.raises(ValueError, match=r"training part \(20 of 40 steps.*shorter than lookback \+ horizon = 24"):
        Forecaster.fit(monthly(40), experiment=tiny(), target_columns="y", lookback=12, horizon=12, test=20)


def test_history_shorter_than_lookback_at_predict(point_model):
    with pytest.raises(ValueError, match="shorter than the lookback 12"):
        point_model.predict(df=monthly().iloc[:8])


def test_non_numeric_target_names_column_and_row():
    df = monthly(40).astype({"y": object})
    df.loc[7, "y"] = "n/a"
    with pytest.raises(ValueError, match=r"target_columns 'y': expected numbers, got 'n/a' at row 7"):
        Forecaster.fit(df, experiment=tiny(), target_columns="y", lookback=6, horizon=3, test=6)
    # rows out of date order are sorted before they are read; an error still names the row of the file
    shuffled = df.sample(frac=1, random_state=0).reset_index(drop=True)
    row = int(np.flatnonzero(shuffled["y"].eq("n/a"))[0])
    with pytest.raises(ValueError, match=rf"expected numbers, got 'n/a' at row {row} "):
        Forecaster.fit(shuffled, experiment=tiny(), target_columns="y", lookback=6, horizon=3, test=6)
    dates = monthly(40).astype({"date": str})
    dates.loc[5, "date"] = "2021-13-45"
    with pytest.raises(ValueError, match=r"expected dates, got '2021-13-45' at row 5 "):
        Forecaster.fit(dates, experiment=tiny(), target_columns="y", lookback=6, horizon=3, test=6)


def test_missing_date_column_and_unknown_column(tmp_path):
    with pytest.raises(ValueError, match=r"date_column: 'Month' is not a column; available: \['date', 'y'\]"):
        Forecaster.fit(monthly(40), experiment=tiny(), date_column="Month", target_columns="y", lookback=6, horizon=3)
    with pytest.raises(ValueError, match=r"future_covariates: 'price' is not a column"):
        Forecaster.fit(monthly(40), experiment=tiny(), target_columns="y", future_covariates="price", lookback=6,
                       horizon=3)
    with pytest.raises(TypeError, match=r"Forecaster.fit: unknown keyword 'lookbak'; did you mean 'lookback'"):
        Forecaster.fit(monthly(40), experiment=tiny(), target_columns="y", lookbak=6)
    with pytest.raises(ValueError, match="data.target_columns: expected at least one column"):
        Forecaster.fit(monthly(40), experiment=tiny())
    with pytest.raises(ValueError, match=r"data.calendar: expected names from \['month', 'day_of_week', .*\], got "
                                         r"\['weekday'\]"):
        Forecaster.fit(monthly(40), experiment=tiny(), target_columns="y", calendar=["weekday"])


def test_log_transform_needs_positive_values():
    df = monthly(40)
    df.loc[5, "y"] = 0.0
    with pytest.raises(ValueError, match=r"transform='log': expected target values > 0, got 0 in column 'y' at row 5"):
        Forecaster.fit(df, experiment=tiny(), target_columns="y", transform="log", lookback=6, horizon=3, test=6)


def test_all_nan_windows_are_reported():
    df = monthly(60)
    df.loc[:40, "y"] = np.nan
    with pytest.raises(ValueError, match=r"every train window has an all-NaN input or target"):
        Forecaster.fit(df, experiment=tiny(), target_columns="y", missing="mask", lookback=6, horizon=3, test=18)


def test_masked_missing_values_train_and_an_empty_lookback_is_refused():
    df = monthly(80)
    df.loc[[10, 11, 30, 50], "y"] = np.nan
    fc = Forecaster.fit(df, experiment=tiny(), target_columns="y", missing="mask", lookback=6, horizon=3, test=12,
                        evaluate=False)
    assert np.isfinite(fc.predict().to_numpy()).all()
    gap = monthly(80)
    gap.loc[60:67, "y"] = np.nan  # origin 66 has nothing but NaN in its lookback 60..65
    with pytest.raises(ValueError, match=r"the 6 lookback steps up to 2015-06-01 have no target value"):
        fc.backtest(horizon=3, df=gap, start=62, baselines=False)


def test_horizon_and_level_errors(point_model, gaussian_model):
    with pytest.raises(ValueError, match=r"horizon: a direct model forecasts at most the 6 steps"):
        point_model.predict(7)
    with pytest.raises(ValueError, match=r"level: a point forecaster has no intervals"):
        point_model.predict(level=0.9)
    with pytest.raises(ValueError, match=r"level: expected a probability in \(0, 1\), got 1.5"):
        gaussian_model.predict(level=1.5)


def test_config_errors():
    with pytest.raises(ValueError, match="output: 'quantile' needs strategy='direct'"):
        tiny(forecast={"strategy": "recursive", "output": "quantile"})
    with pytest.raises(ValueError, match="quantiles: expected at least 3 increasing levels"):
        tiny(forecast={"output": "quantile", "quantiles": [0.1, 0.9]})
    with pytest.raises(ValueError, match="data.lookbak: unknown key"):
        ForecastExperiment.from_dict({"data": {"lookbak": 3}})
    with pytest.raises(ValueError, match=r"evaluate.statistical.*expected names from \['auto_ets'.*got \['ets'\]"):
        tiny(evaluate={"statistical": ["auto_arima", "ets"]})
    assert tiny(evaluate={"statistical": "none"}).evaluate.statistical == []
    assert tiny(evaluate={"statistical": "auto_theta"}).evaluate.statistical == ["auto_theta"]
    assert ForecastExperiment().evaluate.statistical == ["auto_ets", "auto_arima", "auto_theta"]


@pytest.mark.parametrize("name", ["airline.toml", "sunspots.toml", "tourism_monthly.toml", "tourism_quarterly.toml",
                                  "m3_monthly.toml"])
def test_shipped_configs_load(name):
    experiment = load_toml(REPO / "configs" / name, ForecastExperiment)
    assert experiment.task == "forecaster" and experiment.data.target_columns


@pytest.mark.skipif(not (DATA_DIR / "timeseries" / "airline-passengers.csv").is_file(), reason="no shared data")
def test_reads_a_registered_data_set():
    experiment = load_toml(REPO / "configs" / "airline.toml", ForecastExperiment)
    experiment = experiment.model_copy(update={
        "data": experiment.data.model_copy(update={"data_dir": str(DATA_DIR)}),
        "train": experiment.train.model_copy(update={"epochs": 1}),
        "model": experiment.model.model_copy(update={"hidden_size": 4})})
    fc = Forecaster.fit(experiment, evaluate=False)
    assert len(fc.data) == 144 and fc.predict().index[0] == pd.Timestamp("1961-01-01")


def test_seasonal_normalisation_takes_targets_relative_to_the_seasonal_naive_forecast():
    from rnnkit.tasks.forecasting.heads import _seasonal_reference
    y_in = np.arange(12.0, dtype=np.float32).reshape(2, 6, 1)       # 2 windows, lookback 6
    y_in[1, 3, 0] = np.nan
    last = y_in[:, -1:, :]
    ref = _seasonal_reference(y_in, horizon=6, season=4, last=last)
    # step h reads the lookback at L - m + (h mod m): positions 2, 3, 4, 5, 2, 3
    np.testing.assert_array_equal(ref[0, :, 0], [2, 3, 4, 5, 2, 3])
    np.testing.assert_array_equal(ref[1, :, 0], [8, 11, 10, 11, 8, 11])  # the missing value: the last one
    # a model trained this way forecasts a seasonal series; the reference is added back
    fc = Forecaster.fit(monthly(), experiment=tiny(forecast={"normalize": "seasonal"}), target_columns="y",
                        lookback=12, horizon=6, test=24, evaluate=False)
    out = fc.backtest(6, baselines=False)
    assert out.metrics.loc["model", "MASE"] < 1.0
    with pytest.raises(ValueError, match=r"forecast.normalize: 'seasonal' needs data.lookback >= 12 \(a season of "
                                         r"12\), got 6"):
        tiny(forecast={"normalize": "seasonal"}, data={"lookback": 6})
    with pytest.raises(ValueError, match=r"'seasonal' needs a season of 2 or more \(got 1: no seasonal "
                                         r"period\); set evaluate.season or use normalize='last'"):
        tiny(forecast={"normalize": "seasonal"}, evaluate={"season": 1})


def test_train_command_prints_the_checkpoint_and_the_backtest_tables(tmp_path):
    """`rnnkit train` on a forecasting config: the run's facts as JSON (each metric stays in backtest.json),
    then the backtest tables beside the baselines."""
    from typer.testing import CliRunner

    from rnnkit.cli import app
    monthly(48).to_csv(tmp_path / "series.csv", index=False)
    (tmp_path / "f.toml").write_text(
        f'task = "forecaster"\n[data]\npath = "{tmp_path / "series.csv"}"\ndate_column = "date"\n'
        'target_columns = ["y"]\nlookback = 6\nhorizon = 3\ntest = 6\n[model]\nhidden_size = 4\n'
        '[train]\nepochs = 1\nlog_every = 1000\n[evaluate]\nstatistical = "none"\n')
    result = CliRunner().invoke(app, ["train", str(tmp_path / "f.toml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):result.output.index("}") + 1])
    assert report["checkpoint"] == str(tmp_path / "run" / "best")
    assert report["backtest"] == str(tmp_path / "run" / "backtest.json")
    assert not [k for k in report if k.startswith("h3_")]  # the metrics: in the tables and backtest.json
    assert "model" in json.loads((tmp_path / "run" / "backtest.json").read_text())["3"]["metrics"]
    assert "backtest horizon 3:" in result.output and "\nnaive " in result.output


# ------------------------------------------------------------------------------- a date from several columns
def hourly_parts(n: int = 96) -> pd.DataFrame:
    """An hourly series whose date is spread over year, month (names), day and hour columns."""
    stamps = pd.date_range("2021-02-27 00:00", periods=n, freq="h")
    t = np.arange(n)
    return pd.DataFrame({"year": stamps.year, "month": stamps.strftime("%B"), "day": stamps.day,
                         "hour": stamps.hour, "load": 50 + 10 * np.sin(2 * np.pi * t / 24)})


def test_a_date_assembled_from_year_month_day_hour_columns_dates_the_forecast(tmp_path):
    parts = ["year", "month", "day", "hour"]
    fc = Forecaster.fit(hourly_parts(), experiment=tiny(2), date_parts=parts, date_column="time",
                        target_columns="load", lookback=24, horizon=6, test=24, evaluate=False)
    assert fc.data.report.freq == "h" and fc.experiment.evaluate.season == 12  # tiny() gives the season
    out = fc.predict()
    assert list(out.index) == list(pd.date_range("2021-03-03 00:00", periods=6, freq="h"))
    assert out.index.name == "time"
    # hourly origins are named with their hour (a date alone is midnight)
    header = fc.backtest(3, baselines=False).table().splitlines()[0]
    assert header.endswith("22 origins 2021-03-02 .. 2021-03-02 21:00:00"), header
    # a checkpoint keeps the parts: a new history file in the same layout forecasts on the command line
    checkpoint = fc.save(tmp_path / "fc")
    hourly_parts().to_csv(tmp_path / "history.csv", index=False)
    files = forecast_to_files(checkpoint, tmp_path / "history.csv", horizon=3, out_prefix=tmp_path / "f")
    assert list(files["forecast"].index) == list(out.index[:3])
    np.testing.assert_allclose(files["forecast"]["load"].to_numpy(), out["load"].to_numpy()[:3], rtol=1e-5)


def test_date_parts_errors_name_the_column_the_row_and_the_fix():
    fit = dict(experiment=tiny(1), target_columns="load", lookback=24, horizon=6, test=24, evaluate=False)
    bad = hourly_parts()
    bad.loc[5, "month"] = "Febuary"
    with pytest.raises(ValueError, match=r"data: date part 'month' \(month\): expected whole numbers or month "
                                         r"names, got 'Febuary' at row 5"):
        Forecaster.fit(bad, date_parts=["year", "month", "day", "hour"], **fit)
    bad = hourly_parts()
    bad["day"] = bad["day"].astype(object)
    bad.loc[7, "day"] = 30          # 30 February
    with pytest.raises(ValueError, match=r"data: the date parts \['year', 'month', 'day', 'hour'\] make no date at "
                                         r"row 7 \(year 2021, month 2, day 30, hour 7\)"):
        Forecaster.fit(bad, date_parts=["year", "month", "day", "hour"], **fit)
    with pytest.raises(ValueError, match=r"data: expected the columns of the date's parts \['year', 'month', "
                                         r"'minute'\] \(data.date_parts\); missing \['minute'\]"):
        Forecaster.fit(hourly_parts(), date_parts=["year", "month", "minute"], **fit)
    with pytest.raises(ValueError, match=r"data: has a column 'load' \(data.date_column\) and the date parts"):
        Forecaster.fit(hourly_parts(), date_parts=["year", "month"], date_column="load",
                       **{**fit, "target_columns": "hour"})
    with pytest.raises(ValueError, match=r"date_parts: \['hour'\] also named in future_covariates"):
        tiny(data={"date_parts": ["year", "hour"], "future_covariates": ["hour"]})
    with pytest.raises(ValueError, match=r"date_parts.*expected up to 6 different columns"):
        tiny(data={"date_parts": ["year", "year"]})


def test_date_parts_out_of_range_or_missing_are_errors_not_carried_into_the_next_day(tmp_path):
    fit = dict(experiment=tiny(1), date_parts=["year", "month", "day", "hour"], target_columns="load", lookback=24,
               horizon=6, test=24, evaluate=False)
    for value, got in ((25, "25"), (-1, "-1"), (3.5, "3.5"), (np.nan, "a missing value")):
        bad = hourly_parts()
        bad["hour"] = bad["hour"].astype(object)
        bad.loc[9, "hour"] = value
        with pytest.raises(ValueError, match=rf"data: date part 'hour' \(hour\): expected whole numbers from 0 to "
                                             rf"23, got {got} at row 9"):
            Forecaster.fit(bad, **fit)
    sept = hourly_parts()
    sept["month"] = "Sept"
    assert (Forecaster.fit(sept, **fit).data.index.month == 9).all()
