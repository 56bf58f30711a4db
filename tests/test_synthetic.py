"""The adding and copying problems: shapes, seeding, layout and the baselines."""

import math
from itertools import islice

import pytest
import torch
from torch.nn import functional as F

from rnnkit.data.synthetic import (ADDING_BASELINE_MSE, COPY_BLANK, COPY_CLASSES, COPY_DELIMITER, SyntheticTask,
                                   adding_problem, adding_task, copy_baseline_cross_entropy, copy_problem,
                                   copy_task)


def test_adding_shapes_and_dtypes():
    x, y = adding_problem(5, 30, seed=0)
    assert x.shape == (5, 30, 2) and x.dtype == torch.float32
    assert y.shape == (5, 1) and y.dtype == torch.float32
    assert 0 <= x[..., 0].min() and x[..., 0].max() < 1


@pytest.mark.parametrize("length", [2, 7, 50])
def test_adding_markers_exactly_two_one_per_half(length):
    x, y = adding_problem(500, length, seed=3)
    marker = x[..., 1]
    assert set(marker.unique().tolist()) <= {0.0, 1.0} and (marker.sum(1) == 2).all()
    half = length // 2
    assert (marker[:, :half].sum(1) == 1).all() and (marker[:, half:].sum(1) == 1).all()
    torch.testing.assert_close(y[:, 0], (x[..., 0] * marker).sum(1))


def test_adding_reproducible_by_seed():
    a, b, c = (adding_problem(8, 20, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_adding_constant_mean_baseline():
    _, y = adding_problem(20_000, 20, seed=0)
    mse = float(F.mse_loss(torch.ones_like(y), y))
    assert ADDING_BASELINE_MSE == pytest.approx(1 / 6)
    assert abs(mse - ADDING_BASELINE_MSE) < 0.01


def test_copy_layout():
    delay = 15
    x, y = copy_problem(6, delay, seed=0)
    assert x.shape == y.shape == (6, delay + 20) and x.dtype == y.dtype == torch.int64
    symbols = x[:, :10]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert (x[:, 10:delay + 9] == COPY_BLANK).all()
    assert (x[:, delay + 9] == COPY_DELIMITER).all()
    assert (x[:, delay + 10:] == COPY_BLANK).all()
    assert (y[:, :delay + 10] == COPY_BLANK).all()
    assert torch.equal(y[:, -10:], symbols)
    assert int(x.max()) < COPY_CLASSES


def test_copy_reproducible_by_seed():
    a, b, c = (copy_problem(8, 5, seed=s) for s in (4, 4, 5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("delay", [1, 10, 100])
def test_copy_memoryless_baseline(delay):
    _, y = copy_problem(64, delay, seed=0)
    length = delay + 20
    # Memoryless predictor: certain blank until the answer window, then uniform over symbols 1..8.
    logits = torch.full((length, COPY_CLASSES), -math.inf)
    logits[:-10, COPY_BLANK] = 0.0
    logits[-10:, 1:9] = 0.0
    ce = F.cross_entropy(logits.expand(64, -1, -1).reshape(-1, COPY_CLASSES), y.reshape(-1))
    assert float(ce) == pytest.approx(copy_baseline_cross_entropy(delay), rel=1e-6)
    assert copy_baseline_cross_entropy(delay) == pytest.approx(10 * math.log(8) / (delay + 20))


def test_task_fixed_test_set_and_fresh_reproducible_batches():
    task = adding_task(12, batch_size=4, test_size=10, train_seed=5, test_seed=6)
    assert task.test[0].shape == (10, 12, 2) and task.baseline == ADDING_BASELINE_MSE
    assert torch.equal(task.test[0], adding_problem(10, 12, seed=6)[0])
    first, second = islice(task, 2)
    assert first[0].shape == (4, 12, 2) and first[1].shape == (4, 1)
    assert not torch.equal(first[0], second[0])  # fresh batches
    again = next(iter(task))
    assert torch.equal(again[0], first[0])  # a new iteration restarts the seeded stream
    assert not torch.equal(first[0], task.test[0][:4])


def test_copy_task():
    task = copy_task(30, batch_size=3, test_size=7)
    x, y = next(iter(task))
    assert x.shape == y.shape == (3, 50)
    assert task.test[0].shape == (7, 50)
    assert task.baseline == pytest.approx(copy_baseline_cross_entropy(30))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="length"):
        adding_problem(3, 1)
    with pytest.raises(ValueError, match="delay"):
        copy_problem(3, 0)
    with pytest.raises(TypeError, match="seed"):
        adding_problem(3, 10, seed=1.5)
    with pytest.raises(ValueError, match="train_seed"):
        SyntheticTask("x", lambda n, seed: adding_problem(n, 4, seed=seed), 0.0,
                      batch_size=2, test_size=2, train_seed=0, test_seed=0)
