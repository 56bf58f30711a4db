"""The forecaster's data path: target transforms, per-series scalers, reading frames and the rows
after the last target, future dates, and windows gathered from arrays in model space."""

from __future__ import annotations

import calendar
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...data.series import (MinMaxScaler, PanelSeries, RobustScaler, Scaler, SeriesData, StandardScaler, date_text,
                            read_csv)


# ----------------------------------------------------------------------------- transforms
def _transform(y: np.ndarray, kind: str, columns: Sequence[str], index: pd.DatetimeIndex | None = None) -> np.ndarray:
    """The targets through ``data.transform`` (NaN passes), checking its domain."""
    if kind == "none":
        return y
    low, op = (0.0, np.log) if kind == "log" else (-1.0, np.log1p)
    bad = np.argwhere(y <= low)
    if bad.size:
        row, col = (int(v) for v in bad[0])
        when = (f" (date {date_text(index[row])})" if isinstance(index, pd.DatetimeIndex)
                else f" (step {index[row]})" if index is not None else "")
        raise ValueError(f"data.transform={kind!r}: expected target values > {low:g}, got {y[row, col]:g} in column "
                         f"{columns[col]!r} at row {row}{when}; use transform='log1p' or 'none'")
    return op(y)


def _untransform(y: np.ndarray, kind: str) -> np.ndarray:
    return np.exp(y) if kind == "log" else np.expm1(y) if kind == "log1p" else y


def _make_scaler(kind: str) -> Scaler | None:
    if kind == "none":
        return None
    return {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}[kind]()


def _scale(scaler: Scaler | None, x: np.ndarray) -> np.ndarray:
    return x if scaler is None or x.shape[1] == 0 else scaler.transform(x)


def _fit_scalers(kind: str, s: PanelSeries, transform: str, targets: Sequence[str], train: slice
                 ) -> dict[str, Scaler | None]:
    """Scalers of one series' targets (transformed) and covariates, fitted on its ``train`` steps."""
    scalers: dict[str, Scaler | None] = {}
    for role, values in (("target", _transform(s.target, transform, targets, s.index)), ("past", s.past),
                         ("future", s.future)):
        scalers[role] = _make_scaler(kind) if values.shape[1] else None
        if scalers[role] is not None:
            scalers[role].fit(values[train])
    return scalers


# ------------------------------------------------------------------------------- reading
def _load_frame(source: Any, date_column: str, reading: dict | None = None, parts: Sequence[str] = (),
                arg: str = "df") -> pd.DataFrame:
    """A CSV path or DataFrame as a DataFrame with the dates in ``date_column`` (a DatetimeIndex is
    taken as the date column when the frame has no such column; with ``parts``, the date is assembled
    from those columns, see ``_assemble_date``). ``reading``: ``read_csv``'s decoding keywords
    (``TextFileConfig.reading()``); ``arg`` names the frame in errors."""
    if isinstance(source, (str, Path)):
        return _assemble_date(read_csv(source, **(reading or {})), date_column, parts, arg)
    if not isinstance(source, pd.DataFrame):
        raise TypeError(f"{arg}: expected a pandas DataFrame or a CSV path, got {type(source).__name__}")
    df = source.copy()
    if date_column not in df.columns and isinstance(df.index, pd.DatetimeIndex):
        df.index.name = date_column
        df = df.reset_index()
    return _assemble_date(df, date_column, parts, arg)


DATE_PARTS = ("year", "month", "day", "hour", "minute", "second")
_MONTHS = {name.lower(): k for k in range(1, 13)
           for name in (calendar.month_name[k], calendar.month_abbr[k])} | {"sept": 9}
_TIME_RANGE = {"hour": 24, "minute": 60, "second": 60}  # pandas would carry 25 h into the next day


def _assemble_date(df: pd.DataFrame, date_column: str, parts: Sequence[str], arg: str) -> pd.DataFrame:
    """``df`` with the column ``date_column`` built from the columns ``parts`` (year, month, day, hour,
    minute, second, in that order; month and day 1 and the time 0 where left out; months as numbers
    or English names), the part columns dropped. A frame that has ``date_column`` and none of the
    parts (e.g. future covariates given with dates) is taken as it is.

    >>> _assemble_date(pd.DataFrame({"yr": [2020, 2020], "mo": ["Jan", "feb"], "y": [1, 2]}), "date",
    ...                ["yr", "mo"], "df")
            date  y
    0 2020-01-01  1
    1 2020-02-01  2
    """
    present = [p for p in parts if p in df.columns]
    if not parts or (date_column in df.columns and not present):
        return df
    if date_column in df.columns:
        raise ValueError(f"{arg}: has a column {date_column!r} (data.date_column) and the date parts {list(parts)} "
                         "(data.date_parts); name the assembled date otherwise (date_column=) or drop that column")
    if len(present) < len(parts):
        raise ValueError(f"{arg}: expected the columns of the date's parts {list(parts)} (data.date_parts); "
                         f"missing {[p for p in parts if p not in present]}; the columns: {list(df.columns)}")
    units = {}
    for unit, name in zip(DATE_PARTS, parts):
        raw = df[name]
        values = pd.to_numeric(raw, errors="coerce")
        if unit == "month" and not pd.api.types.is_numeric_dtype(raw):
            values = values.fillna(raw.astype(str).str.strip().str.lower().map(_MONTHS))
        bad = (values.isna() | (values != values.round())
               | ((values < 0) | (values >= _TIME_RANGE[unit]) if unit in _TIME_RANGE else False)).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            value = raw.iloc[row]
            plain = value.item() if isinstance(value, np.generic) else value
            got = "a missing value" if pd.isna(value) else repr(plain)
            expected = (f"whole numbers from 0 to {_TIME_RANGE[unit] - 1}" if unit in _TIME_RANGE
                        else "whole numbers or month names" if unit == "month" else "whole numbers")
            raise ValueError(f"{arg}: date part {name!r} ({unit}): expected {expected}, got {got} at row {row}")
        units[unit] = values.astype(np.int64).to_numpy()
    units = {"month": 1, "day": 1, **units}
    stamps = pd.to_datetime(pd.DataFrame(units, index=df.index)[[u for u in DATE_PARTS if u in units]],
                            errors="coerce")
    if stamps.isna().any():
        row = int(np.argmax(stamps.isna().to_numpy()))
        got = ", ".join(f"{unit} {units[unit] if np.ndim(units[unit]) == 0 else units[unit][row]}"
                        for unit in DATE_PARTS if unit in units)
        raise ValueError(f"{arg}: the date parts {list(parts)} make no date at row {row} ({got})")
    at = min(df.columns.get_loc(p) for p in parts)
    out = df.drop(columns=list(parts))
    out.insert(at, date_column, stamps)   # where the first part's column was
    return out


def _trailing_future_rows(df: pd.DataFrame, date_column: str, targets: Sequence[str]
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off the rows after the last target value (in date order): (history, future rows)."""
    if date_column not in df.columns or any(t not in df.columns for t in targets):
        return df, df.iloc[:0]  # read_series names what is missing
    order = np.argsort(pd.to_datetime(df[date_column], errors="coerce").to_numpy(), kind="stable")
    df = df.iloc[order]  # the original row labels stay: an error names the file's row
    has_target = df[list(targets)].notna().any(axis=1).to_numpy()
    last = int(np.flatnonzero(has_target)[-1]) + 1 if has_target.any() else 0
    return df.iloc[:last], df.iloc[last:]


def _future_index(end: pd.Timestamp, steps: int, freq: str | None) -> pd.DatetimeIndex:
    if not freq:
        raise ValueError("freq: the dates are irregular, so the dates of the forecast cannot be built; pass freq= "
                         "(rnnkit forecast/backtest --freq; e.g. 'MS', 'D', 'h') to put the series on a regular grid")
    return pd.date_range(end, periods=steps + 1, freq=freq)[1:]



# ------------------------------------------------------------------------------- windows
@dataclass
class _Batch:
    """Windows in model space: targets (transformed, scaled) and covariates (scaled).

    y_in <float32>[W, L, C] (NaN where missing); past <float32>[W, L, Pc]; fut_in <float32>[W, L, Fc];
    fut_out <float32>[W, h, Fc]; y_out <float32>[W, h, C] or None (forecasting past the data);
    statistical <float32>[W, h, C]: a statistical model's forecast from each origin (a hybrid's
    reference, NaN where it failed), or None."""

    y_in: np.ndarray
    past: np.ndarray
    fut_in: np.ndarray
    fut_out: np.ndarray
    y_out: np.ndarray | None = None
    statistical: np.ndarray | None = None


def _gather(p: _Prepared, origins: np.ndarray, lookback: int, horizon: int, with_targets: bool) -> _Batch:
    """Windows ending at each origin (the first forecast step) from a series' arrays over time."""
    steps_in = origins[:, None] - lookback + np.arange(lookback)
    steps_out = origins[:, None] + np.arange(horizon)
    f32 = np.float32
    return _Batch(p.y[steps_in].astype(f32), p.past[steps_in].astype(f32), p.fut[steps_in].astype(f32),
                  p.fut[steps_out].astype(f32), p.y[steps_out].astype(f32) if with_targets else None,
                  p.statistical(origins, horizon) if p.statistical is not None else None)


@dataclass
class _Prepared:
    """A series in model space, ready for windows: the cleaned data, the arrays and, past its end,
    the future covariates of up to ``ahead`` steps."""

    data: SeriesData | PanelSeries
    y: np.ndarray       # <float64>[N, C] transformed and scaled (NaN where missing)
    past: np.ndarray    # <float64>[N, Pc] scaled
    fut: np.ndarray     # <float64>[N + ahead, Fc] scaled (+ the one-hot static categories)
    ahead: int
    scalers: dict[str, Scaler | None] = field(default_factory=dict)  # those that scaled it
    # a hybrid's statistical model: (origins, horizon) -> its forecasts <float32>[W, horizon, C] in model space
    statistical: Callable[[np.ndarray, int], np.ndarray] | None = None


# ------------------------------------------------------------------------- categorical covariates
def categories_of(frame: pd.DataFrame, names: Sequence[str]) -> dict[str, list[str]]:
    """The categories (sorted text values) of each categorical covariate column of ``frame``."""
    out = {}
    for name in names:
        if name not in frame.columns:
            raise ValueError(f"data.categorical: {name!r} is not a column; available: "
                             f"{[str(c) for c in frame.columns]}")
        values = sorted(frame[name].dropna().astype(str).unique())
        if not values:
            raise ValueError(f"data.categorical: column {name!r} has no values")
        out[name] = values
    return out


def expand(names: Sequence[str], categories: dict[str, list[str]]) -> list[str]:
    """Covariate names with each categorical column replaced by its one-hot columns ('wind=NW', ...)."""
    return [f"{n}={v}" if n in categories else n for n in names for v in categories.get(n, [None])]


def encode_categories(frame: pd.DataFrame, categories: dict[str, list[str]], arg: str) -> pd.DataFrame:
    """``frame`` with each categorical column replaced by one 0/1 column per category of training; a
    missing value stays missing (NaN in every column); a value not seen in training is all zeros
    (a warning names it)."""
    if not categories:
        return frame
    frame = frame.copy()
    for name, known in categories.items():
        if name not in frame.columns:
            continue  # the reader names a missing column
        text = frame[name].astype(str).where(frame[name].notna())
        unseen = sorted(set(text.dropna()) - set(known))
        if unseen:
            warnings.warn(f"{arg}: column {name!r} has values {unseen[:5]} not seen in training; they are encoded as "
                          f"no category (known: {known})", stacklevel=4)
        position = frame.columns.get_loc(name)
        onehot = pd.DataFrame({f"{name}={v}": (text == v).astype(np.float64) for v in known}, index=frame.index)
        onehot[text.isna().to_numpy()] = np.nan
        frame = pd.concat([frame.iloc[:, :position], onehot, frame.iloc[:, position + 1:]], axis=1)
    return frame
