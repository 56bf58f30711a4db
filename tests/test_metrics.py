"""rnnkit.metrics: forecast metrics against hand-computed values, MASE anchors, classification metrics."""

import numpy as np
import pytest

from rnnkit.metrics import (accuracy, confusion_matrix, coverage, mae, mape, mase, precision_recall_f1, rmse,
                            seasonal_naive_scale, smape)

Y_TRUE = np.array([2.0, 4.0, 5.0, 10.0])
Y_PRED = np.array([1.0, 5.0, 5.0, 6.0])  # errors 1, -1, 0, 4


def test_forecast_metrics_by_hand():
    assert mae(Y_TRUE, Y_PRED) == pytest.approx(6 / 4)
    assert rmse(Y_TRUE, Y_PRED) == pytest.approx(np.sqrt(18 / 4))
    assert mape(Y_TRUE, Y_PRED) == pytest.approx(100 * (1 / 2 + 1 / 4 + 0 + 4 / 10) / 4)
    assert smape(Y_TRUE, Y_PRED) == pytest.approx(100 * (2 / 3 + 2 / 9 + 0 + 8 / 16) / 4)
    assert smape([0.0, 1.0], [0.0, 1.0]) == 0.0  # 0/0 term counts as no error
    assert smape([1.0], [-1.0]) == pytest.approx(200.0)


def test_forecast_metrics_leave_out_nan_pairs():
    assert mae(np.append(Y_TRUE, np.nan), np.append(Y_PRED, 3.0)) == pytest.approx(6 / 4)
    assert rmse(np.append(Y_TRUE, 1.0), np.append(Y_PRED, np.nan)) == pytest.approx(np.sqrt(18 / 4))
    with pytest.raises(ValueError, match=r"y_true, y_pred: no pair of values without NaN"):
        mae([np.nan], [1.0])


def test_forecast_metric_errors():
    with pytest.raises(ValueError, match=r"y_pred: expected shape \(4,\) \(as y_true\), got \(3,\)"):
        mae(Y_TRUE, Y_PRED[:3])
    with pytest.raises(ValueError, match=r"y_true: MAPE is undefined where the actual is 0, found 1 zeros"):
        mape([0.0, 1.0], [1.0, 1.0])


def test_mase_by_hand_and_per_column():
    train = np.array([1.0, 3.0, 2.0, 6.0])  # naive in-sample errors 2, 1, 4 -> scale 7/3
    assert mase(Y_TRUE, Y_PRED, train) == pytest.approx((6 / 4) / (7 / 3))
    assert seasonal_naive_scale(train, m=2) == pytest.approx((1 + 3) / 2)
    train2 = np.stack([train, 10 * train], axis=1)
    y, p = np.stack([Y_TRUE, Y_TRUE], axis=1), np.stack([Y_PRED, Y_TRUE + 10 * (Y_PRED - Y_TRUE)], axis=1)
    assert mase(y, p, train2) == pytest.approx((6 / 4) / (7 / 3))  # the 10x column has 10x errors and scale
    with pytest.raises(ValueError, match=r"y_true: expected 2 columns in the last dim \(as train\)"):
        mase(Y_TRUE, Y_PRED, train2)


def test_mase_anchors_seasonal_naive_zero_and_naive_on_random_walk_one():
    m = 12
    season = np.sin(2 * np.pi * np.arange(10 * m) / m)
    train, test = season[:8 * m], season[8 * m:]
    seasonal_naive = train[len(train) - m + np.arange(len(test)) % m]
    assert mase(test, seasonal_naive, train) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"train: the in-sample seasonal-naive MAE \(m=12\) is 0"):
        mase(test, seasonal_naive, train, m=m)

    walk = np.cumsum(np.random.default_rng(0).normal(size=4000))
    train, test = walk[:2000], walk[2000:]
    one_step_naive = walk[1999:-1]  # forecast of step t made at t-1
    assert mase(test, one_step_naive, train) == pytest.approx(1.0, abs=0.07)


def test_seasonal_naive_scale_errors():
    with pytest.raises(ValueError, match=r"m: expected a seasonality \(integer\) >= 1, got 0"):
        seasonal_naive_scale(np.arange(5.0), m=0)
    with pytest.raises(ValueError, match=r"train: expected shape \[N\] or \[N, C\] with N > m = 12, got \(12,\)"):
        seasonal_naive_scale(np.arange(12.0), m=12)


def test_coverage():
    lower, upper = Y_PRED - 1, Y_PRED + 1  # [0, 2], [4, 6], [4, 6], [5, 7]: 2, 4, 5 inside, 10 not
    assert coverage(Y_TRUE, lower, upper) == pytest.approx(0.75)
    assert coverage(np.append(Y_TRUE, np.nan), np.append(lower, 0), np.append(upper, 1)) == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"lower, upper: expected lower <= upper, got 4 intervals reversed"):
        coverage(Y_TRUE, upper, lower)
    with pytest.raises(ValueError, match=r"upper: expected shape \(4,\) \(as y_true\)"):
        coverage(Y_TRUE, lower, upper[:2])


# ------------------------------------------------------------------------------ classification
T = np.array([0, 0, 1, 1, 1, 2])
P = np.array([0, 1, 1, 1, 0, 1])


def test_confusion_matrix_and_accuracy():
    np.testing.assert_array_equal(confusion_matrix(T, P), [[1, 1, 0], [1, 2, 0], [0, 1, 0]])
    assert confusion_matrix(T, P, num_classes=4).shape == (4, 4)
    assert accuracy(T, P) == pytest.approx(3 / 6)
    scores = np.eye(3)[P] + 0.1  # argmax of scores gives P
    assert accuracy(T, scores) == pytest.approx(3 / 6)


def test_precision_recall_f1_per_class_and_macro():
    precision, recall, f1 = precision_recall_f1(T, P)
    np.testing.assert_allclose(precision, [1 / 2, 2 / 4, 0])  # class 2 never predicted: 0, not NaN
    np.testing.assert_allclose(recall, [1 / 2, 2 / 3, 0])
    np.testing.assert_allclose(f1, [1 / 2, 2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3), 0])
    macro = precision_recall_f1(T, P, num_classes=5, average="macro")  # classes 3, 4 occur nowhere: left out
    np.testing.assert_allclose(macro, [precision.mean(), recall.mean(), f1.mean()])


@pytest.mark.parametrize("call, error, message", [
    (lambda: accuracy(T, P[:5]), ValueError, r"y_pred: expected 6 predictions \(as y_true\), got 5"),
    (lambda: accuracy(T.astype(float), P), TypeError, r"y_true: expected integer labels <int>\[N\], got float64"),
    (lambda: accuracy(T, np.zeros((6, 3), dtype=int)), TypeError, r"y_pred: expected integer labels .* or scores"),
    (lambda: accuracy(T - 1, P), ValueError, r"y_true: expected labels >= 0, got -1"),
    (lambda: confusion_matrix(T, P, num_classes=2), ValueError,
     r"num_classes: expected an integer > every label \(>= 3\), got 2"),
    (lambda: precision_recall_f1(T, P, average="micro"), ValueError, r"average: expected None or 'macro', got 'micro'"),
    (lambda: accuracy([], []), ValueError, r"y_true: expected at least one label"),
])
def test_classification_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
