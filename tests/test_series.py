"""rnnkit.data.series: reading and cleaning, calendar features, scalers, windows and splits."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.data.series import (MinMaxScaler, RobustScaler, Scaler, StandardScaler, calendar_features,
                                chronological_split, make_windows, read_panel, read_series)

CSV = """date,sales,price,promo
2024-01-03,13.0,2.0,0
2024-01-01,10.0,1.0,1
2024-01-02,11.0,1.5,0
2024-01-04,,2.5,1
2024-01-05,17.0,3.0,0
2024-01-05,19.0,3.0,0
2024-01-06,20.0,3.5,1
"""


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "sales.csv"
    path.write_text(CSV)
    return path


def seasonal_series(n=120, m=12, seed=0):
    t = np.arange(n)
    return 10 + 0.05 * t + 2 * np.sin(2 * np.pi * t / m) + np.random.default_rng(seed).normal(0, 0.1, n)


# -------------------------------------------------------------------------------- read_series
def test_read_series_sorts_merges_duplicates_and_interpolates(csv_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rnnkit.data.series"):
        data = read_series(csv_path, "date", ["sales"], past_covariates=["price"], future_covariates=["promo"])
    r = data.report
    assert (r.rows_read, r.length, r.freq, r.was_sorted) == (7, 6, "D", False)
    assert r.duplicate_timestamps == (pd.Timestamp("2024-01-05"),) and r.duplicate_rows == 1
    assert r.missing == {"sales": 1, "price": 0, "promo": 0}
    assert list(data.index) == list(pd.date_range("2024-01-01", periods=6, freq="D"))
    # duplicates averaged (17, 19 -> 18), then the gap on 01-04 interpolated between 13 and 18
    np.testing.assert_allclose(data.target[:, 0], [10, 11, 13, 15.5, 18, 20])
    assert data.target.shape == (6, 1) and data.past.shape == (6, 1) and data.future.shape == (6, 1)
    assert data.target_mask[:, 0].tolist() == [True, True, True, False, True, True]
    logged = caplog.text
    assert "not in order" in logged and "duplicate" in logged and "missing values" in logged


def test_missing_policies_ffill_and_mask(csv_path):
    ffill = read_series(csv_path, "date", "sales", missing="ffill", duplicates="last")
    np.testing.assert_allclose(ffill.target[:, 0], [10, 11, 13, 13, 19, 20])
    masked = read_series(csv_path, "date", "sales", missing="mask", duplicates="first")
    assert np.isnan(masked.target[3, 0]) and masked.target[4, 0] == 17
    assert masked.target_mask.sum() == 5


def test_duplicates_error_names_the_timestamp(csv_path):
    with pytest.raises(ValueError, match=r"duplicates: 1 timestamps .*2024-01-05"):
        read_series(csv_path, "date", "sales", duplicates="error")


def test_irregular_spacing_is_reported_and_freq_fills_the_grid():
    dates = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-06", "2024-01-07"]
    df = pd.DataFrame({"d": dates, "y": [1.0, 2.0, 3.0, 6.0, 7.0]})
    off_grid = df.assign(d=["2024-01-01 00:00", "2024-01-02 00:00", "2024-01-03 00:00", "2024-01-04 16:00",
                            "2024-01-05 00:00"])
    loose = read_series(off_grid, "d", "y")
    assert loose.report.freq is None and loose.report.irregular_steps == (pd.Timestamp("2024-01-04 16:00"),
                                                                         pd.Timestamp("2024-01-05"))
    # missing days of a daily series: the grid is inferred from the usual step and the days added
    inferred = read_series(df, "d", "y")
    assert inferred.report.freq == "D" and inferred.report.gaps_filled == 2 and len(inferred) == 7
    assert inferred.target_mask[:, 0].tolist() == [True, True, True, False, False, True, True]
    gridded = read_series(df, "d", "y", freq="D")
    assert gridded.report.gaps_filled == 2 and gridded.report.missing == {"y": 2}
    np.testing.assert_allclose(gridded.target[:, 0], [1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(ValueError, match=r"freq: 4 timestamps are not on the 'W-MON' grid from 2024-01-01 "
                                         r"\(first 2024-01-02\)"):
        read_series(df, "d", "y", freq="W-MON")


@pytest.mark.parametrize("kwargs, message", [
    ({"date_column": "when"}, r"date_column: 'when' is not a column; available: \['date', 'sales', 'price', 'promo'\]"),
    ({"target_columns": ["revenue"]}, r"target_columns: 'revenue' is not a column; available: \['date'"),
    ({"past_covariates": ["cost"]}, r"past_covariates: 'cost' is not a column"),
    ({"future_covariates": ["sales"]}, r"future_covariates: 'sales' is already used by target_columns"),
    ({"target_columns": []}, r"target_columns: expected at least one column"),
    ({"missing": "drop"}, r"missing: expected one of \('interpolate', 'ffill', 'mask'\), got 'drop'"),
    ({"min_length": 10}, r"min_length=10 time steps, got 6"),
])
def test_read_series_errors_name_the_argument(csv_path, kwargs, message):
    args = {"date_column": "date", "target_columns": ["sales"], **kwargs}
    with pytest.raises(ValueError, match=message):
        read_series(csv_path, **args)


def test_non_numeric_values_and_bad_dates_name_column_row_and_value():
    df = pd.DataFrame({"d": ["2024-01-01", "2024-01-02", "2024-01-03"], "y": ["1", "two", "3"], "x": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"target_columns 'y': expected numbers, got 'two' at row 1 \(date 2024-01-02"):
        read_series(df, "d", "y")
    df = df.assign(y=[1, 2, 3], d=["2024-01-01", "soon", "2024-01-03"])
    with pytest.raises(ValueError, match=r"date_column 'd': expected dates, got 'soon' at row 1"):
        read_series(df, "d", "y")
    with pytest.raises(TypeError, match=r"path_or_df: expected a CSV path or a pandas DataFrame, got int"):
        read_series(3, "d", "y")


def test_interpolate_needs_some_values():
    df = pd.DataFrame({"d": ["2024-01-01", "2024-01-02"], "y": [np.nan, np.nan]})
    with pytest.raises(ValueError, match=r"missing: column 'y' has no values to interpolate"):
        read_series(df, "d", "y")


# ----------------------------------------------------------------------------------- calendar
def test_calendar_features_sincos_and_onehot():
    index = pd.date_range("2024-01-01", periods=12, freq="MS")
    sc = calendar_features(index, ["month"])
    np.testing.assert_allclose(sc["month_sin"], np.sin(2 * np.pi * np.arange(12) / 12), atol=1e-12)
    np.testing.assert_allclose(sc["month_cos"].iloc[0], 1.0)
    days = pd.date_range("2024-01-01", periods=3, freq="D")  # Monday, Tuesday, Wednesday
    oh = calendar_features(days, ["day_of_week"], encoding="onehot")
    assert list(oh.columns) == [f"day_of_week_{k}" for k in range(7)]
    assert oh.to_numpy().sum(axis=1).tolist() == [1, 1, 1] and oh["day_of_week_1"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match=r"features: unknown calendar feature 'week'"):
        calendar_features(index, ["week"])
    with pytest.raises(TypeError, match=r"index: expected a pandas DatetimeIndex"):
        calendar_features(list(index))


def test_read_series_appends_calendar_features_to_future_covariates(csv_path):
    data = read_series(csv_path, "date", "sales", future_covariates=["promo"], calendar=["day_of_week"])
    assert data.future_columns == ("promo", "day_of_week_sin", "day_of_week_cos")
    assert data.future.shape == (6, 3)


# ------------------------------------------------------------------------------------ scalers
SCALERS = [StandardScaler(), MinMaxScaler(feature_range=(-1, 1)), RobustScaler(quantile_range=(10, 90))]


@pytest.mark.parametrize("scaler", SCALERS, ids=lambda s: type(s).__name__)
def test_scaler_round_trips_numpy_torch_and_json(scaler):
    x = np.stack([seasonal_series(), 100 * seasonal_series(seed=1), np.full(120, 5.0)], axis=1)
    y = scaler.fit_transform(x)
    assert scaler.transform(x.astype(np.float32)).dtype == np.float32
    np.testing.assert_allclose(scaler.inverse_transform(y), x, rtol=1e-12)
    t = torch.tensor(x, dtype=torch.float32)
    yt = scaler.transform(t)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(scaler.inverse_transform(yt).numpy(), x, rtol=1e-5)
    restored = Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert type(restored) is type(scaler)
    np.testing.assert_allclose(restored.transform(x), y)
    assert np.all(np.isfinite(y[:, 2]))  # a constant column is shifted, not divided by zero


def test_scaler_statistics_by_hand_and_fit_on_train_only():
    series = np.arange(10.0)[:, None] ** 2
    split = chronological_split(10, test=4)
    standard = StandardScaler().fit(series[split.train])
    train = series[:6, 0]
    np.testing.assert_allclose([standard.center[0], standard.scale[0]], [train.mean(), train.std()])
    assert standard.transform(series)[6:].min() > 1.5  # the test part lies beyond what training saw
    minmax = MinMaxScaler().fit(series[split.train])
    np.testing.assert_allclose(minmax.transform(series[split.train])[[0, -1], 0], [0, 1])
    robust = RobustScaler().fit(series[split.train])
    np.testing.assert_allclose(robust.transform(np.array([[np.median(train)]])), 0.0, atol=1e-12)


def test_scaler_ignores_nan_and_checks_columns():
    scaler = StandardScaler().fit(np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, 6.0]]))
    np.testing.assert_allclose(scaler.center, [2.0, 4.0])
    assert np.isnan(scaler.transform(np.array([[np.nan, 1.0]]))[0, 0])
    with pytest.raises(ValueError, match=r"x: expected 2 columns \(as fitted\) in the last dim, got shape \(3, 5\)"):
        scaler.transform(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"x: column 1 has no values"):
        StandardScaler().fit(np.array([[1.0, np.nan], [2.0, np.nan]]))
    with pytest.raises(RuntimeError, match="MinMaxScaler: call fit"):
        MinMaxScaler().transform(np.zeros(3))
    with pytest.raises(ValueError, match=r"feature_range: expected \(low, high\) with low < high"):
        MinMaxScaler(feature_range=(1, 0))
    with pytest.raises(ValueError, match=r"state: expected a dict with 'type'"):
        Scaler.from_dict({"type": "LogScaler"})


# ------------------------------------------------------------------------------------ windows
def test_window_shapes_and_alignment():
    n, lookback, horizon = 50, 8, 3
    target = np.stack([np.arange(n), 100 + np.arange(n)], axis=1).astype(float)
    past = 1000 + np.arange(n, dtype=float)[:, None]
    future = np.stack([2000 + np.arange(n), 3000 + np.arange(n)], axis=1).astype(float)
    w = make_windows(target, lookback, horizon, past, future)
    count = n - lookback - horizon + 1
    assert w.inputs.shape == (count, lookback, 2 + 1 + 2) and w.inputs.dtype == np.float32
    assert w.future.shape == (count, horizon, 2) and w.targets.shape == (count, horizon, 2)
    assert w.starts.tolist() == list(range(count)) and w.dropped == 0
    rows = np.concatenate([target, past, future], axis=1)
    for i in (0, 17, count - 1):
        s = w.starts[i]
        np.testing.assert_array_equal(w.inputs[i], rows[s:s + lookback])
        for h in range(horizon):
            np.testing.assert_array_equal(w.targets[i, h], target[s + lookback + h])
            np.testing.assert_array_equal(w.future[i, h], future[s + lookback + h])


def test_windows_in_a_span_take_context_from_before_it():
    series = np.arange(100.0)
    split = chronological_split(100, val=0.1, test=20)
    assert (split.train, split.val, split.test) == (slice(0, 70), slice(70, 80), slice(80, 100))
    lookback, horizon = 12, 4
    test = make_windows(series, lookback, horizon, span=split.test, stride=2)
    assert test.starts[0] == 80 - lookback and test.targets[0, 0, 0] == 80
    assert test.targets.min() >= 80 and test.inputs[0, 0, 0] == 68
    assert test.starts.tolist() == list(range(68, 100 - lookback - horizon + 1, 2))
    train = make_windows(series, lookback, horizon, span=split.train)
    assert train.targets.max() == 69  # no training target leaks into validation
    with pytest.raises(ValueError, match=r"span: steps 70..79 \(10 steps\) hold no window of lookback 12 "
                                         r"and horizon 11"):
        make_windows(series, lookback, 11, span=split.val)


def test_all_nan_windows_are_dropped_with_a_count_or_raise():
    series = np.arange(30.0)
    series[10:20] = np.nan
    w = make_windows(series, 5, 2)
    bad = [s for s in range(24) if np.isnan(series[s:s + 5]).all() or np.isnan(series[s + 5:s + 7]).all()]
    assert w.dropped == len(bad) > 0 and not set(bad) & set(w.starts.tolist())
    assert np.isnan(w.inputs).any()  # windows with only some NaN are kept
    with pytest.raises(ValueError, match=r"target: 11 windows have an all-NaN input or horizon "
                                         r"\(first starts at step 5\)"):
        make_windows(series, 5, 2, all_nan="error")


@pytest.mark.parametrize("call, message", [
    (lambda: make_windows(np.zeros(10), 8, 3),
     r"target: series of length 10 is shorter than lookback \+ horizon = 8 \+ 3 = 11"),
    (lambda: make_windows(np.zeros(10), 0, 3), r"lookback: expected an integer >= 1, got 0"),
    (lambda: make_windows(np.zeros(10), 2, 3, past_covariates=np.zeros((9, 1))),
     r"past_covariates: expected 10 time steps \(as target\), got 9"),
    (lambda: make_windows(np.zeros((10, 2, 2)), 2, 3), r"target: expected shape \[N\] or \[N, features\]"),
    (lambda: make_windows(np.zeros(10), 2, 3, all_nan="keep"), r"all_nan: expected 'drop' or 'error'"),
])
def test_window_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_split_by_fraction_and_count_and_its_errors():
    assert chronological_split(144, test=48).test == slice(96, 144)
    split = chronological_split(10, val=0.2, test=0.3)
    assert (split.train, split.val, split.test) == (slice(0, 5), slice(5, 7), slice(7, 10))
    with pytest.raises(ValueError, match=r"val, test: 6 \+ 5 steps leave no training data of a series of length 10"):
        chronological_split(10, val=6, test=5)
    with pytest.raises(ValueError, match=r"test: expected a fraction in \[0, 1\), got 1.5"):
        chronological_split(10, test=1.5)
    with pytest.raises(TypeError, match=r"val: expected a fraction in \[0, 1\) or a count of steps, got '2'"):
        chronological_split(10, val="2")


# ------------------------------------------------------------------------------ many series
def test_read_panel_integer_steps_gaps_duplicates_and_statics():
    df = pd.DataFrame({"id": ["a", "a", "a", "a", "b", "b", "b"], "t": [0, 1, 3, 3, 5, 6, 7],
                       "y": [1.0, 2.0, 4.0, 6.0, 10.0, 20.0, 30.0], "kind": ["x"] * 4 + ["y"] * 3})
    p = read_panel(df, "id", "t", "y", static_covariates=["kind"])
    assert p.integer_time and p.freq is None and [s.id for s in p.series] == ["a", "b"]
    a, b = p.series
    # step 2 was missing: interpolated for the inputs, marked unobserved; step 3's two rows averaged
    assert a.index.tolist() == [0, 1, 2, 3] and a.target[:, 0].tolist() == [1.0, 2.0, 3.5, 5.0]
    assert a.target_mask[:, 0].tolist() == [True, True, False, True]
    assert b.index.tolist() == [5, 6, 7] and a.static == ("x",) and b.static == ("y",)
    masked = read_panel(df, "id", "t", "y", missing="mask")
    assert np.isnan(masked.series[0].target[2, 0])


def test_read_panel_dates_and_errors():
    dates = pd.date_range("2021-01-01", periods=4, freq="D")
    df = pd.DataFrame({"id": ["a"] * 4 + ["b"] * 4, "date": list(dates) * 2, "y": np.arange(8.0)})
    p = read_panel(df, "id", "date", "y", calendar=["day_of_week"])
    assert p.freq == "D" and not p.integer_time and p.series[1].index.equals(dates)
    assert p.future_columns == ("day_of_week_sin", "day_of_week_cos") and p.series[0].future.shape == (4, 2)
    with pytest.raises(ValueError, match=r"static_covariates 'kind': expected one value per series, got \['u', 'v'\] "
                                         r"in series 'a'"):
        read_panel(df.assign(kind=["u", "v"] * 4), "id", "date", "y", static_covariates=["kind"])
    with pytest.raises(ValueError, match=r"id_column: 'series' is not a column"):
        read_panel(df, "series", "date", "y")
    with pytest.raises(ValueError, match=r"'y': expected numbers, got 'n/a' in series 'a' at step 1"):
        read_panel(pd.DataFrame({"id": ["a", "a"], "t": [0, 1], "y": [1.0, "n/a"]}), "id", "t", "y")


def test_calendar_frequencies_with_missing_timestamps_are_inferred():
    months = pd.date_range("2020-01-01", periods=24, freq="MS").delete([5, 6, 17])
    data = read_series(pd.DataFrame({"m": months, "y": np.arange(21.0)}), "m", "y")
    assert data.report.freq == "MS" and data.report.gaps_filled == 3 and data.index[5] == pd.Timestamp("2020-06-01")
    month_ends = pd.date_range("2020-01-31", periods=24, freq="ME").delete([3])
    assert read_series(pd.DataFrame({"m": month_ends, "y": np.arange(23.0)}), "m", "y").report.freq == "ME"
    hours = pd.date_range("2024-03-01", periods=48, freq="h").delete([10, 11, 30])
    assert read_series(pd.DataFrame({"t": hours, "y": np.arange(45.0)}), "t", "y").report.freq == "h"
    # more than half of a grid missing: left irregular and reported
    sparse = pd.DatetimeIndex(["2024-01-01", "2024-01-02", "2024-01-09", "2024-01-20", "2024-01-30"])
    assert read_series(pd.DataFrame({"t": sparse, "y": np.arange(5.0)}), "t", "y").report.freq is None
