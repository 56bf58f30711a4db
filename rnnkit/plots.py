"""Plots written straight to PNG files, with matplotlib's Agg canvas (no pyplot, no window).

Every function takes the output ``path`` (parent folders are created), writes one PNG there and
returns the path as a ``pathlib.Path``:

- ``plot_loss_curves``: loss vs step for several runs, log y, optional baseline line;
- ``plot_gradient_norms``: ‖∂L/∂h_t‖ vs time step for several cells, log y;
- ``plot_training_curve``: metrics from a ``metrics.jsonl`` file vs step;
- ``plot_confusion_matrix``: a heatmap with counts (or row fractions) in the cells;
- ``plot_forecast``: history, forecast, optional prediction-interval band and actual values;
- ``plot_backtest``: a series with the forecasts made from several origins, their intervals and the actuals.

Time axes with dates get matplotlib's concise date labels, which choose the unit (years, months,
days, hours) from the span shown and do not overlap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import dates as mdates
from matplotlib.figure import Figure

ArrayLike = Sequence[float] | np.ndarray
"""Anything ``numpy.asarray`` turns into numbers: a list, an array, a CPU torch tensor."""


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


def _array(name: str, values: object, dims: tuple[int, ...] = (1,)) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim not in dims or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty array with {' or '.join(map(str, dims))} dim(s), "
                         f"got shape {array.shape}")
    return array


def _positive(array: np.ndarray) -> np.ndarray:
    """The values with those <= 0 hidden (NaN), which a log axis cannot show."""
    return np.where(array > 0, array, np.nan)


def plot_loss_curves(runs: Mapping[str, ArrayLike], path: str | os.PathLike, *, baseline: float | None = None,
                     title: str = "", xlabel: str = "step", ylabel: str = "loss") -> Path:
    """Loss curves of several runs on a log y axis.

    runs: name → losses <float>[n] (at steps 1..n) or <float>[2, n] (a row of steps, a row of losses).
    baseline: a horizontal dashed line, e.g. ``ADDING_BASELINE_MSE``.
    """
    if not runs:
        raise ValueError("runs: expected at least one run, got none")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, values in runs.items():
        array = _array(f"runs[{name!r}]", values, dims=(1, 2))
        if array.ndim == 2 and array.shape[0] != 2:
            raise ValueError(f"runs[{name!r}]: expected losses [n] or (steps, losses) [2, n], got shape {array.shape}")
        steps, losses = array if array.ndim == 2 else (np.arange(1, array.size + 1), array)
        ax.plot(steps, _positive(losses), label=name, linewidth=1.2)
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label=f"baseline {baseline:.3g}")
    ax.set(yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_gradient_norms(norms: Mapping[str, ArrayLike], path: str | os.PathLike, *,
                        title: str = "‖∂L/∂h_t‖ per time step") -> Path:
    """Gradient norm vs time step (log y) for several cells, e.g. from ``hidden_gradient_norms``.

    norms: name → <float>[T], or <float>[L, T] (one curve per row, labelled "name [row]").
    Zeros (underflow in float32) are left out of the log plot.
    """
    if not norms:
        raise ValueError("norms: expected at least one curve, got none")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, values in norms.items():
        array = _array(f"norms[{name!r}]", values, dims=(1, 2))
        rows = [(name, array)] if array.ndim == 1 else [(f"{name} [{i}]", row) for i, row in enumerate(array)]
        for label, row in rows:
            ax.plot(np.arange(1, row.size + 1), _positive(row), label=label, linewidth=1.2)
    ax.set(yscale="log", xlabel="time step t", ylabel="‖∂L/∂h_t‖", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def read_metrics(metrics_path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file: one JSON object per non-empty line."""
    records = []
    with open(metrics_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"metrics_path: expected a JSON object on line {number} of "
                                     f"{metrics_path}, got {type(record).__name__}")
                records.append(record)
    return records


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_training_curve(metrics_path: str | os.PathLike, path: str | os.PathLike, *,
                        keys: Sequence[str] | None = None, x: str = "step", log_y: bool = False,
                        title: str = "") -> Path:
    """Metrics from a ``metrics.jsonl`` file (``rnnkit.train``'s: step records with ``"loss"``,
    epoch records with ``"train_loss"``, ``"val_loss"``, …) against ``x``; a record without ``x``
    or a key is skipped for that curve.

    keys: the metrics to draw; None draws every numeric key with "loss" in its name.
    """
    records = [r for r in read_metrics(metrics_path) if _is_number(r.get(x))]
    if not records:
        raise ValueError(f"metrics_path: expected records with a numeric {x!r} in {metrics_path}, got none")
    if keys is None:
        keys = sorted({k for r in records for k, v in r.items() if "loss" in k and k != x and _is_number(v)})
    if not keys:
        raise ValueError(f"keys: expected metric names; {metrics_path} has no numeric key with 'loss' in "
                         "its name, pass keys= explicitly")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for key in keys:
        points = [(r[x], r[key]) for r in records if _is_number(r.get(key))]
        if not points:
            raise ValueError(f"keys: {key!r} appears in no record of {metrics_path} with a numeric value")
        xs, ys = np.asarray(points).T
        ax.plot(xs, _positive(ys) if log_y else ys, label=key, linewidth=1.2, marker="." if len(xs) < 50 else None)
    ax.set(yscale="log" if log_y else "linear", xlabel=x, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_confusion_matrix(matrix: ArrayLike, path: str | os.PathLike, *, labels: Sequence[str] | None = None,
                          normalize: bool = False, title: str = "") -> Path:
    """A confusion-matrix heatmap: rows true class, columns predicted class.

    matrix: <float>[C, C] counts. normalize: show each row as fractions of its total.
    Cells are annotated with their value when C <= 20.
    """
    counts = _array("matrix", matrix, dims=(2,))
    if counts.shape[0] != counts.shape[1]:
        raise ValueError(f"matrix: expected a square [C, C] array, got shape {counts.shape}")
    size = counts.shape[0]
    labels = [str(i) for i in range(size)] if labels is None else [str(label) for label in labels]
    if len(labels) != size:
        raise ValueError(f"labels: expected {size} labels (one per class), got {len(labels)}")
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12) if normalize else counts
    fig = Figure(figsize=(1.5 + 0.5 * max(size, 6), 1 + 0.5 * max(size, 6)))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(size), yticks=range(size), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    if size <= 20:
        middle = values.max() / 2
        for i in range(size):
            for j in range(size):
                text = f"{values[i, j]:.2f}" if normalize else f"{values[i, j]:g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > middle else "black")
    return _save(fig, path)


def _time_axis(ax: object, xs: np.ndarray, xlabel: str | None) -> None:
    """Concise date labels for a datetime axis; the x label ("date" / "step" unless given)."""
    dated = np.issubdtype(np.asarray(xs).dtype, np.datetime64)
    if dated:
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel(xlabel if xlabel is not None else ("date" if dated else "step"))


def plot_forecast(history: ArrayLike, forecast: ArrayLike, path: str | os.PathLike, *,
                  lower: ArrayLike | None = None, upper: ArrayLike | None = None,
                  actual: ArrayLike | None = None, history_index: Sequence | None = None,
                  forecast_index: Sequence | None = None, interval_label: str = "interval",
                  title: str = "", xlabel: str | None = None, ylabel: str = "value") -> Path:
    """A forecast after its history, with an optional interval band and the actual values.

    history: <float>[n];  forecast, lower, upper, actual: <float>[h] over the forecast horizon.
    history_index / forecast_index: x positions (numbers or datetimes); default 0..n-1 and n..n+h-1.
    xlabel: default "date" for datetimes, else "step"; ylabel: the series' name and units.
    """
    past = _array("history", history)
    future = _array("forecast", forecast)
    horizon = future.size
    if (lower is None) != (upper is None):
        raise ValueError("lower, upper: expected both bounds of the interval or neither, got one")
    extras = {name: _array(name, values) for name, values in
              (("lower", lower), ("upper", upper), ("actual", actual)) if values is not None}
    for name, values in extras.items():
        if values.size != horizon:
            raise ValueError(f"{name}: expected {horizon} values (the forecast's length), got {values.size}")
    x_past = np.arange(past.size) if history_index is None else np.asarray(history_index)
    x_future = np.arange(past.size, past.size + horizon) if forecast_index is None else np.asarray(forecast_index)
    for name, xs, n in (("history_index", x_past, past.size), ("forecast_index", x_future, horizon)):
        if len(xs) != n:
            raise ValueError(f"{name}: expected {n} positions, got {len(xs)}")
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    ax.plot(x_past, past, color="black", linewidth=1.2, label="history")
    if "lower" in extras:
        ax.fill_between(x_future, extras["lower"], extras["upper"], color="tab:blue", alpha=0.25,
                        label=interval_label)
    if "actual" in extras:
        ax.plot(x_future, extras["actual"], color="black", linestyle=":", linewidth=1.2, label="actual")
    ax.plot(x_future, future, color="tab:blue", linewidth=1.5, label="forecast")
    ax.axvline(x_future[0], color="grey", linewidth=0.8, linestyle="--")
    ax.set(title=title, ylabel=ylabel)
    _time_axis(ax, x_future, xlabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_backtest(series: ArrayLike, origins: Sequence[int], forecasts: ArrayLike, path: str | os.PathLike, *,
                  lower: ArrayLike | None = None, upper: ArrayLike | None = None, index: Sequence | None = None,
                  show: int = 6, context: int | None = None, interval_label: str = "interval", title: str = "",
                  xlabel: str | None = None, ylabel: str = "value") -> Path:
    """Rolling-origin forecasts over their series: the actual series, and the forecasts (with their
    interval bands) from up to ``show`` origins spread evenly over the backtest.

    series: <float>[n] (NaN where not observed); origins: the K forecast origins (steps of ``series``:
    forecast k starts at ``series[origins[k]]``); forecasts, lower, upper: <float>[K, h].
    index: x positions of the series (numbers or datetimes); context: steps drawn before the first
    origin (default: as many as the backtest spans).
    """
    y = _array("series", series)
    f = _array("forecasts", forecasts, dims=(2,))
    starts = np.asarray(origins, dtype=np.int64)
    if starts.ndim != 1 or len(starts) != len(f):
        raise ValueError(f"origins: expected {len(f)} origins (one per forecast row), got shape {starts.shape}")
    horizon = f.shape[1]
    if starts.min() < 0 or starts.max() + horizon > y.size:
        raise ValueError(f"origins: expected steps in [0, {y.size - horizon}] (each forecast of {horizon} steps "
                         f"inside the series of {y.size}), got {starts.min()} .. {starts.max()}")
    if (lower is None) != (upper is None):
        raise ValueError("lower, upper: expected both bounds of the interval or neither, got one")
    bands = {name: _array(name, values, dims=(2,)) for name, values in (("lower", lower), ("upper", upper))
             if values is not None}
    for name, values in bands.items():
        if values.shape != f.shape:
            raise ValueError(f"{name}: expected shape {f.shape} (as forecasts), got {values.shape}")
    xs = np.arange(y.size) if index is None else np.asarray(index)
    if len(xs) != y.size:
        raise ValueError(f"index: expected {y.size} positions, got {len(xs)}")
    span = starts.max() + horizon - starts.min()
    first = max(0, starts.min() - (span if context is None else context))
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot()
    ax.plot(xs[first:], y[first:], color="black", linewidth=1.1, label="actual")
    picks = np.unique(np.linspace(0, len(starts) - 1, min(show, len(starts))).round().astype(int))
    colors = [f"C{i % 10}" for i in range(len(picks))]
    for color, k in zip(colors, picks):
        steps = xs[starts[k]:starts[k] + horizon]
        if bands:
            ax.fill_between(steps, bands["lower"][k], bands["upper"][k], color=color, alpha=0.15,
                            label=interval_label if k == picks[0] else None)
        ax.plot(steps, f[k], color=color, linewidth=1.5, label="forecasts" if k == picks[0] else None)
        ax.plot(steps[:1], f[k][:1], color=color, marker="o", markersize=3)
    ax.axvline(xs[starts.min()], color="grey", linewidth=0.8, linestyle="--")
    ax.set(title=title, ylabel=ylabel)
    _time_axis(ax, xs, xlabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)
