"""Conformal prediction intervals of the forecaster: calibration on the validation span, the
split-conformal quantile per horizon step, coverage by step, the checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.tasks.forecasting import Forecaster, ForecastExperiment
from rnnkit.tasks.forecasting.conformal import (calibrate, coverage_by_step, fewest_scores, halfwidth,
                                                recalibrated)

torch.set_num_threads(1)


def test_split_conformal_quantile_by_hand():
    errors = np.arange(1.0, 10.0)[:, None, None] * np.array([1.0, 2.0])[None, :, None]  # [9, 2 steps, 1]
    cal = calibrate(-errors)                                    # signs do not matter: absolute errors
    # n = 9 at level 0.8: the ceil(10 * 0.8) = 8th smallest
    np.testing.assert_array_equal(halfwidth(cal, 0.8, 2)[:, 0], [8.0, 16.0])
    # past the calibrated horizon the last step's width; too few scores for 0.95 (rank 10 of 9): unbounded
    np.testing.assert_array_equal(halfwidth(cal, 0.8, 4)[:, 0], [8.0, 16.0, 16.0, 16.0])
    assert np.isinf(halfwidth(cal, 0.95, 1)).all()
    for level in (0.75, 0.8, 0.9, 0.95):  # fewest_scores: the first count whose width is bounded
        n = fewest_scores(level)
        assert np.isfinite(halfwidth(calibrate(np.ones((n, 1, 1))), level, 1)).all()
        assert np.isinf(halfwidth(calibrate(np.ones((n - 1, 1, 1))), level, 1)).all()
    # a NaN (unobserved actual) is left out of its step's count
    with_gap = errors.copy()
    with_gap[0, 0, 0] = np.nan
    assert calibrate(with_gap)["count"] == [[8], [9]]
    # many scores are summarised by quantiles; the width stays the order statistic's
    many = np.random.default_rng(0).uniform(0, 1, (20_000, 1, 1))
    assert abs(halfwidth(calibrate(many), 0.8, 1)[0, 0] - 0.8) < 0.01
    actuals = np.array([[[1.0], [5.0]], [[2.0], [np.nan]]])  # [2 origins, 2 steps, 1]
    cover = coverage_by_step(actuals, np.zeros((2, 2, 1)), np.full((2, 2, 1), 3.0))
    np.testing.assert_array_equal(cover, [1.0, 0.0])


def test_recalibration_adds_the_errors_observed_before_each_origin():
    cal = calibrate(np.ones((4, 2, 1)))                             # four validation scores of 1 at both steps
    errors = np.array([[5.0, 5.0], [-7.0, np.nan], [9.0, 9.0]])[..., None]  # origins at steps 10, 11, 12
    widths = recalibrated(cal, errors, np.array([10, 11, 12]), 0.8)[..., 0]
    # origin 11, step 0: {1, 1, 1, 1, 5}, rank ceil(6 * 0.8) = 5; step 1's actual from 10 (at 11) not yet seen.
    # origin 12, step 0: {1 x 4, 5, 7}, rank 6; step 1: {1 x 4, 5} (origin 11's step-1 actual unobserved)
    np.testing.assert_array_equal(widths, [[1, 1], [5, 1], [7, 5]])
    # decay 0.5: at origin 12, step 0 weighs 7 (actual at step 11, age 1) 0.5, 5 (age 2) 0.25, the validation
    # 1s 0.25 each (two steps after the first origin): total 1.75; level 0.8 needs 0.8 * 2.75 = 2.2: unbounded;
    # level 0.6 needs 1.65: the 1s (1.0), 5 (1.25), 7 (1.75): 7
    decayed = recalibrated(cal, errors, np.array([10, 11, 12]), 0.6, decay=0.5)[..., 0]
    assert decayed[2, 0] == 7 and np.isinf(recalibrated(cal, errors, np.array([10, 11, 12]), 0.8, decay=0.5)[2, 0, 0])
    # with nothing observed yet every origin keeps the validation span's widths
    np.testing.assert_array_equal(recalibrated(cal, errors, np.array([10, 10, 10]), 0.8)[..., 0],
                                  np.broadcast_to(halfwidth(cal, 0.8, 2)[:, 0], (3, 2)))


def test_adaptive_conformal_widens_after_misses():
    cal = calibrate(np.ones((4, 1, 1)))                      # four validation scores of 1, one step
    errors = np.full((4, 1, 1), 3.0)                         # every origin's actual 3 away from its forecast
    times = np.array([0, 1, 2, 3])
    # without adapting, level 0.5 takes the ceil((n + 1) / 2)-th smallest: a 1 at every origin
    np.testing.assert_array_equal(recalibrated(cal, errors, times, 0.5)[:, 0, 0], [1, 1, 1, 1])
    # ACI, gamma 0.25: origin 0 misses (3 > 1), so origin 1 has alpha 0.375 (level 0.625, the 4th of
    # {1, 1, 1, 1, 3}: 1) and misses; origin 2 has alpha 0.25 (level 0.75, the 6th of {1 x 4, 3, 3}: 3) and
    # covers its actual (3 is not above 3); origin 3 has alpha 0.375 again (the 5th of {1 x 4, 3 x 3}: 3)
    np.testing.assert_array_equal(recalibrated(cal, errors, times, 0.5, adapt=0.25)[:, 0, 0], [1, 1, 3, 3])
    # gamma 0.9: after origin 0's miss alpha is 0.05, a level of 0.95 beyond the five scores: the largest, 3
    # (not an unbounded width), which covers; back at alpha 0.5 origin 2 takes the 4th of six, 1, and so on
    np.testing.assert_array_equal(recalibrated(cal, errors, times, 0.5, adapt=0.9)[:, 0, 0], [1, 3, 1, 3])
    with pytest.raises(ValueError, match="conformal_adapt"):
        ForecastExperiment.from_dict({"data": {"target_columns": ["y"]}, "forecast": {"conformal_adapt": -0.1}})
    with pytest.raises(ValueError, match=r"forecast.conformal_adapt: adapts recalibrated conformal intervals .*\(got "
                                         r"intervals 'model', recalibrate True\)"):
        ForecastExperiment.from_dict({"data": {"target_columns": ["y"], "val": 12},
                                      "forecast": {"conformal_adapt": 0.05}})


def random_walk(n: int = 400, seed: int = 0) -> pd.DataFrame:
    y = 50 + np.cumsum(np.random.default_rng(seed).normal(0, 1, n))
    return pd.DataFrame({"date": pd.date_range("2000-01-01", periods=n, freq="D"), "y": y})


def experiment(**data) -> ForecastExperiment:
    return ForecastExperiment.from_dict({
        "data": {"date_column": "date", "target_columns": ["y"], "lookback": 10, "horizon": 6, "val": 120,
                 "test": 120, "scaler": "none", **data},
        "forecast": {"intervals": "conformal", "level": 0.8},
        "model": {"cell": "gru", "hidden_size": 8},
        "train": {"epochs": 5, "lr": 1e-2, "log_every": 10_000},
        "evaluate": {"statistical": "none", "horizons": [6]}})


def test_conformal_intervals_widen_with_the_step_and_cover_the_test(tmp_path):
    fc = Forecaster.fit(random_walk(), tmp_path / "run", experiment=experiment())
    width = halfwidth(fc.conformal, 0.8, 6)[:, 0]
    # a random walk's h-step error grows like sqrt(h): the calibrated widths grow with the step
    assert width[-1] > 1.5 * width[0]
    bt = fc.backtests[6]
    steps = bt.coverage_by_step()
    assert steps.shape == (6,) and 0.6 <= bt.metrics.loc["model", "coverage"] <= 0.97
    assert "interval coverage by step:" in bt.table() and len(bt.to_dict()["coverage_by_step"]) == 6
    # recalibrated at each origin by default; the validation span's widths alone with recalibrate = false
    fc.experiment.forecast.recalibrate = False
    fixed = fc.backtest(6, baselines=False)
    np.testing.assert_allclose(fixed.upper - fixed.lower, (fixed.upper - fixed.lower)[:1].repeat(len(fixed.upper), 0),
                               rtol=1e-5)
    assert not np.allclose(bt.upper - bt.lower, fixed.upper - fixed.lower)
    np.testing.assert_allclose(bt.upper[:1], fixed.upper[:1])
    fc.experiment.forecast.recalibrate = True
    out = fc.predict()
    assert (out["y_lower"] < out["y"]).all() and (out["y"] < out["y_upper"]).all()
    wide, narrow = fc.predict(level=0.95), fc.predict(level=0.5)
    assert ((wide.y_upper - wide.y_lower) > (narrow.y_upper - narrow.y_lower)).all()
    # 0.999 needs 999 errors a step for a bounded interval: said, not left to a plot without a band
    with pytest.warns(UserWarning, match=r"level: 0.999 needs at least 999 calibration errors a step .* gave \d+"):
        assert np.isinf(fc.predict(level=0.999)["y_upper"]).all()
    # the calibration travels with the checkpoint written before it was made
    loaded = Forecaster.load(tmp_path / "run" / "best")
    pd.testing.assert_frame_equal(loaded.predict(df=random_walk()), out)


def test_conformal_needs_a_validation_span():
    with pytest.raises(ValueError, match=r"forecast.intervals: conformal intervals are calibrated on the validation "
                                         r"span; set data.val"):
        experiment(val=0)
    with pytest.raises(ValueError, match=r"data.val: the validation span is shorter than the horizon 6"):
        Forecaster.fit(random_walk(), experiment=experiment(val=4))
