"""Long-range-dependency tasks: the adding problem and the copying problem.

Both are seeded with ``torch.Generator`` and fully reproducible. Each task comes two ways:

- a function returning tensors: ``adding_problem(n, length, seed=...)``, ``copy_problem(n, delay, seed=...)``;
- a ``SyntheticTask`` for training (``adding_task``, ``copy_task``): a fixed test set drawn from one
  seed and an endless stream of fresh training batches drawn from another.

Layouts are batch-first: build the recurrent layer with ``batch_first=True``.

The adding problem (Hochreiter & Schmidhuber 1997, in the setup of Le et al. 2015): a sequence of
uniform[0, 1) values with a marker channel holding exactly two 1s, one in the first half and one
in the second; the target is the sum of the two marked values. Predicting the mean 1.0 gives
MSE = Var(a + b) = 2/12 = 1/6 (``ADDING_BASELINE_MSE``).

The copying problem (Arjovsky et al. 2016): 10 symbols from an alphabet of 8, then ``delay - 1``
blanks, a delimiter, and 10 more blanks; the model must output blanks until the delimiter's
10 following steps, where it reproduces the 10 symbols. A memoryless model outputs blanks and
then guesses uniformly: cross-entropy ``10 ln 8 / (delay + 20)`` per step
(``copy_baseline_cross_entropy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

ADDING_BASELINE_MSE = 1.0 / 6.0
"""MSE of the constant predictor 1.0 (the mean of the target) on the adding problem."""

COPY_BLANK = 0
"""Class of the blank symbol in the copying problem."""
COPY_DELIMITER = 9
"""Class of the delimiter that tells the model to start reproducing the symbols."""
COPY_ALPHABET = 8
"""Number of symbols to copy from: classes 1..8."""
COPY_CLASSES = 10
"""Input and output classes: blank, 8 symbols, delimiter."""
COPY_SYMBOLS = 10
"""How many symbols the model has to remember."""

Seed = int | torch.Generator
"""An int seeds a fresh generator (same int, same tensors); a Generator is drawn from and advanced."""


def _generator(seed: Seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


def adding_problem(n: int, length: int, *, seed: Seed = 0) -> tuple[Tensor, Tensor]:
    """``n`` adding-problem sequences of ``length`` steps.

    returns inputs <float32>[n, length, 2] (channel 0 values in [0, 1), channel 1 the marker:
    exactly two 1s, one at a step in [0, length // 2) and one in [length // 2, length)) and
    targets <float32>[n, 1], the sum of the two marked values.
    """
    _check_int("n", n, 0)
    _check_int("length", length, 2)
    g = _generator(seed)
    half = length // 2
    values = torch.rand(n, length, generator=g)
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, length, (n,), generator=g)
    rows = torch.arange(n)
    marker = torch.zeros(n, length)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    targets = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return torch.stack([values, marker], dim=2), targets


def copy_problem(n: int, delay: int, *, seed: Seed = 0) -> tuple[Tensor, Tensor]:
    """``n`` copying-problem sequences with ``delay`` (Arjovsky et al.'s T) steps between the
    symbols and the delimiter's answer window.

    returns inputs <int64>[n, delay + 20] (10 symbols in 1..8, ``delay - 1`` blanks, the delimiter
    9, 10 blanks) and targets <int64>[n, delay + 20] (blanks 0, except the last 10 steps: the symbols).
    """
    _check_int("n", n, 0)
    _check_int("delay", delay, 1)
    g = _generator(seed)
    k = COPY_SYMBOLS
    symbols = torch.randint(1, COPY_ALPHABET + 1, (n, k), generator=g)
    inputs = torch.full((n, delay + 2 * k), COPY_BLANK, dtype=torch.int64)
    inputs[:, :k] = symbols
    inputs[:, k + delay - 1] = COPY_DELIMITER
    targets = torch.full_like(inputs, COPY_BLANK)
    targets[:, -k:] = symbols
    return inputs, targets


def copy_baseline_cross_entropy(delay: int) -> float:
    """Mean per-step cross-entropy (nats) of the memoryless predictor on ``copy_problem(·, delay)``:
    certain blanks, then a uniform guess over the 8 symbols on the last 10 steps."""
    _check_int("delay", delay, 1)
    return COPY_SYMBOLS * math.log(COPY_ALPHABET) / (delay + 2 * COPY_SYMBOLS)


class SyntheticTask:
    """A fixed test set and an endless stream of fresh training batches from one generator function.

    ``make(n, seed=...)`` returns (inputs, targets) with the batch first. ``test`` is drawn once
    from ``test_seed``; iterating yields training batches of ``batch_size`` forever, drawn from
    ``train_seed`` (each new iteration restarts that stream, so a run is reproducible)::

        task = adding_task(200)
        for step, (x, y) in zip(range(1000), task):
            ...
    """

    def __init__(self, name: str, make: Callable[..., tuple[Tensor, Tensor]], baseline: float, *,
                 batch_size: int, test_size: int, train_seed: int, test_seed: int) -> None:
        _check_int("batch_size", batch_size, 1)
        _check_int("test_size", test_size, 1)
        if train_seed == test_seed:
            raise ValueError(f"train_seed: expected a seed other than test_seed={test_seed} "
                             f"(the training stream would repeat the test set), got {train_seed}")
        self.name, self.baseline = name, baseline
        self.batch_size, self.train_seed = batch_size, train_seed
        self._make = make
        self.test: tuple[Tensor, Tensor] = make(test_size, seed=test_seed)
        """The fixed test set: (inputs, targets), batch first."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = _generator(self.train_seed)
        while True:
            yield self._make(self.batch_size, seed=g)

    def __repr__(self) -> str:
        return (f"SyntheticTask({self.name!r}, batch_size={self.batch_size}, "
                f"test_size={self.test[0].shape[0]}, baseline={self.baseline:.4g})")


def adding_task(length: int, *, batch_size: int = 64, test_size: int = 1000,
                train_seed: int = 1, test_seed: int = 0) -> SyntheticTask:
    """The adding problem as a ``SyntheticTask``; ``baseline`` is ``ADDING_BASELINE_MSE``."""
    _check_int("length", length, 2)
    return SyntheticTask(f"adding-{length}", lambda n, seed: adding_problem(n, length, seed=seed),
                         ADDING_BASELINE_MSE, batch_size=batch_size, test_size=test_size,
                         train_seed=train_seed, test_seed=test_seed)


def copy_task(delay: int, *, batch_size: int = 64, test_size: int = 1000,
              train_seed: int = 1, test_seed: int = 0) -> SyntheticTask:
    """The copying problem as a ``SyntheticTask``; ``baseline`` is ``copy_baseline_cross_entropy(delay)``."""
    _check_int("delay", delay, 1)
    return SyntheticTask(f"copy-{delay}", lambda n, seed: copy_problem(n, delay, seed=seed),
                         copy_baseline_cross_entropy(delay), batch_size=batch_size, test_size=test_size,
                         train_seed=train_seed, test_seed=test_seed)


def covariate_series(n: int = 360, channels: int = 3, seed: int = 0):
    """A multivariate daily series whose future depends on known covariates: pandas DataFrame with
    ``date``, ``y0..y{channels-1}`` and ``promo``.

    The channels share an AR(1) factor, a weekend effect (a calendar covariate) and the effect of a
    random "promo" day (a known-future covariate, unpredictable from the past), each with its own
    loading, plus noise. A forecaster that uses the covariates should beat one that does not.
    """
    import numpy as np
    import pandas as pd
    _check_int("n", n, 2)
    _check_int("channels", channels, 1)
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2021-01-01", periods=n, freq="D")
    promo = (rng.random(n) < 0.2).astype(float)
    weekend = (dates.day_of_week >= 5).astype(float)
    z = np.zeros(n)
    for t in range(1, n):
        z[t] = 0.8 * z[t - 1] + rng.normal(0, 0.5)
    load = rng.uniform(0.5, 1.5, size=(3, channels))
    y = (10 + load[0] * z[:, None] + 3 * load[1] * promo[:, None] + 1.5 * load[2] * weekend[:, None]
         + rng.normal(0, 0.3, size=(n, channels)))
    df = pd.DataFrame(y, columns=[f"y{i}" for i in range(channels)])
    df.insert(0, "date", dates)
    df["promo"] = promo
    return df
