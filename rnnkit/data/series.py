"""Time series for forecasting: reading and cleaning, calendar features, scaling, windows, splits.

The path from a CSV file to model inputs::

    data = read_series("sales.csv", "date", ["sales"], future_covariates=["promo"], calendar=["month"])
    split = chronological_split(len(data), val=0.1, test=48)        # the last 48 points are the test
    scaler = StandardScaler().fit(data.target[split.train])          # statistics of the training part only
    train = make_windows(scaler.transform(data.target), lookback=36, horizon=12,
                         future_covariates=data.future, span=split.train)

Shapes: N time steps, C target columns, Pc past covariates (known up to the forecast origin), Fc
future covariates (known ahead, e.g. calendar features), L lookback, H horizon, W windows.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .text import read_text

logger = logging.getLogger(__name__)

MISSING_POLICIES = ("interpolate", "ffill", "mask")
DUPLICATE_POLICIES = ("mean", "first", "last", "error")


# ------------------------------------------------------------------------------------ reading
def date_text(stamp: pd.Timestamp) -> str:
    """A time for messages, tables and titles: the date alone at midnight, else the date and time."""
    return str(stamp.date()) if stamp == stamp.normalize() else str(stamp)


@dataclass(frozen=True)
class SeriesReport:
    """What ``read_series`` found in the source and what it did about it."""

    rows_read: int
    length: int                                     # time steps after cleaning
    start: pd.Timestamp
    end: pd.Timestamp
    freq: str | None                                # given, or inferred; None if the spacing is irregular
    was_sorted: bool
    duplicate_timestamps: tuple[pd.Timestamp, ...]  # each repeated timestamp once
    duplicate_rows: int                             # rows merged away by the ``duplicates`` policy
    irregular_steps: tuple[pd.Timestamp, ...]       # without a freq: timestamps ending an off-spacing step
    gaps_filled: int                                # with a freq: timestamps added to complete the grid
    missing: dict[str, int]                         # missing values per column, before the policy
    missing_policy: str

    @property
    def issues(self) -> list[str]:
        """One line per irregularity found; empty for a clean, regular, complete series."""
        out = []
        if not self.was_sorted:
            out.append("timestamps were not in order; sorted")
        if self.duplicate_timestamps:
            out.append(f"{len(self.duplicate_timestamps)} duplicate timestamps "
                       f"(first {date_text(self.duplicate_timestamps[0])}); {self.duplicate_rows} rows merged")
        if self.irregular_steps:
            out.append(f"{len(self.irregular_steps)} irregular steps (first ending at "
                       f"{date_text(self.irregular_steps[0])}); pass freq= to put the series on a regular grid")
        if self.gaps_filled:
            out.append(f"{self.gaps_filled} missing timestamps added on the {self.freq!r} grid")
        missing = {c: n for c, n in self.missing.items() if n}
        if missing:
            out.append(f"missing values {missing}, policy {self.missing_policy!r}")
        return out

    def summary(self) -> str:
        head = f"{self.length} steps {date_text(self.start)} .. {date_text(self.end)}, freq {self.freq}"
        return "; ".join([head, *self.issues])


@dataclass(frozen=True)
class SeriesData:
    """A cleaned series: ``frame`` indexed by time, with target and covariate columns."""

    frame: pd.DataFrame               # DatetimeIndex; columns targets, past covariates, future covariates
    observed: pd.DataFrame            # <bool> like ``frame``: True where the value came from the source
    target_columns: tuple[str, ...]
    past_columns: tuple[str, ...]
    future_columns: tuple[str, ...]
    report: SeriesReport

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def index(self) -> pd.DatetimeIndex:
        return self.frame.index

    @property
    def target(self) -> np.ndarray:
        """<float64>[N, C] (NaN where missing under ``missing="mask"``)."""
        return self.frame[list(self.target_columns)].to_numpy(np.float64)

    @property
    def past(self) -> np.ndarray:
        """<float64>[N, Pc]."""
        return self.frame[list(self.past_columns)].to_numpy(np.float64)

    @property
    def future(self) -> np.ndarray:
        """<float64>[N, Fc]."""
        return self.frame[list(self.future_columns)].to_numpy(np.float64)

    @property
    def target_mask(self) -> np.ndarray:
        """<bool>[N, C]: True where the target was observed (False where it was filled or is NaN)."""
        return self.observed[list(self.target_columns)].to_numpy(bool)


def _names(value: str | Sequence[str], arg: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{arg}: expected column names (str), got {bad[0]!r}")
    return names


def read_csv(path: str | Path, encoding: str = "utf-8", errors: str = "strict",
             allow_control_chars: bool = False) -> pd.DataFrame:
    """A CSV file (plain or ``.gz``) as a DataFrame; a missing or malformed file gets an error naming
    it. The bytes are decoded by ``rnnkit.data.text.read_text`` (``encoding`` may be ``"auto"``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input: {path}: no such file")
    text = read_text(path, encoding, errors, allow_control_chars)
    try:
        return pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"input: {path} is not a readable CSV file: {error}") from None


def _load(path_or_df: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(path_or_df, pd.DataFrame):
        return path_or_df.copy()
    if isinstance(path_or_df, (str, Path)):
        return read_csv(path_or_df)
    raise TypeError(f"path_or_df: expected a CSV path or a pandas DataFrame, got {type(path_or_df).__name__}")


def _check_columns(df: pd.DataFrame, date_column: str, roles: dict[str, list[str]]) -> None:
    available = [str(c) for c in df.columns]
    if date_column not in df.columns:
        raise ValueError(f"date_column: {date_column!r} is not a column; available: {available}")
    if not roles["target_columns"]:
        raise ValueError("target_columns: expected at least one column name, got none")
    seen: dict[str, str] = {date_column: "date_column"}
    for arg, names in roles.items():
        for name in names:
            if name not in df.columns:
                raise ValueError(f"{arg}: {name!r} is not a column; available: {available}")
            if name in seen:
                raise ValueError(f"{arg}: {name!r} is already used by {seen[name]}")
            seen[name] = arg


def _row(raw: pd.Series, position: int) -> int:
    """The row of ``position`` as an error names it: the frame's integer label where it has one (a file's
    row, kept when the forecaster sorts a frame by date), else the position; from 0, the first data row."""
    label = raw.index[position]
    return int(label) if pd.api.types.is_integer_dtype(raw.index) else position


def _parse_dates(raw: pd.Series, date_column: str, date_format: str | None) -> pd.Series:
    dates = pd.to_datetime(raw, format=date_format, errors="coerce")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise ValueError(f"date_column {date_column!r}: expected dates, got {raw.iloc[row]!r} at row "
                         f"{_row(raw, row)} ({bad.size} unparsable in all; date_format={date_format!r})")
    return dates


def _to_numeric(df: pd.DataFrame, roles: dict[str, list[str]], dates: pd.Series) -> pd.DataFrame:
    out = {}
    for arg, names in roles.items():
        for name in names:
            raw = df[name]
            values = pd.to_numeric(raw, errors="coerce")
            bad = np.flatnonzero((values.isna() & raw.notna()).to_numpy())
            if bad.size:
                row = int(bad[0])
                hint = ("; a covariate of categories (text) is one-hot when named in the forecaster's "
                        "data.categorical" if arg != "target_columns" else "")
                raise ValueError(f"{arg} {name!r}: expected numbers, got {raw.iloc[row]!r} at row {_row(raw, row)} "
                                 f"(date {date_text(dates.iloc[row])}; {bad.size} non-numeric in all){hint}")
            out[name] = values.to_numpy(np.float64)
    return pd.DataFrame(out, index=pd.DatetimeIndex(dates))


def _merge_duplicates(df: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, tuple[pd.Timestamp, ...], int]:
    repeated = df.index.duplicated(keep="first")
    stamps = tuple(df.index[repeated].unique())
    if not stamps:
        return df, stamps, 0
    if policy == "error":
        raise ValueError(f"duplicates: {len(stamps)} timestamps occur more than once (first {date_text(stamps[0])}); "
                         f"choose one of {DUPLICATE_POLICIES[:-1]} to merge them")
    if policy == "mean":
        merged = df.groupby(level=0, sort=False).mean()
    else:
        merged = df[~df.index.duplicated(keep=policy)]
    return merged, stamps, int(repeated.sum())


def _infer_freq(index: pd.DatetimeIndex) -> str | None:
    """``pd.infer_freq`` as a frequency string such as 'MS' (pandas 3.1 returns an offset when asked
    to and warns otherwise; earlier versions return a string and lack the option)."""
    try:
        with pd.option_context("future.infer_freq_returns_offset", True):
            inferred = pd.infer_freq(index)
    except pd.errors.OptionError:
        inferred = pd.infer_freq(index)
    return None if inferred is None else pd.tseries.frequencies.to_offset(inferred).freqstr


# spans of the usual step that calendar frequencies have, and those frequencies (start- and end-anchored)
_CALENDAR_STEPS = (((28, 31), ("MS", "ME")), ((89, 92), ("QS", "QE")), ((365, 366), ("YS", "YE")))
MAX_GAP_SHARE = 0.5  # a grid is taken when at most this share of its timestamps is missing


def _grid_with_gaps(index: pd.DatetimeIndex) -> tuple[str, pd.DatetimeIndex] | None:
    """The frequency of a series with missing timestamps: the most common step (or the calendar
    frequency of its length: months, quarters, years) whose grid holds every timestamp, with at
    most ``MAX_GAP_SHARE`` of the grid missing. Returns (freq, grid) or None (irregular)."""
    steps, counts = np.unique(np.diff(index.asi8), return_counts=True)
    usual = pd.Timedelta(int(steps[np.argmax(counts)]))
    candidates = [freqs for (low, high), freqs in _CALENDAR_STEPS if low <= usual.days <= high and
                  usual == pd.Timedelta(days=usual.days)]
    for freq in (candidates[0] if candidates else (pd.tseries.frequencies.to_offset(usual).freqstr,)):
        grid = pd.date_range(index[0], index[-1], freq=freq)
        if len(grid) and index.isin(grid).all() and len(grid) - len(index) <= MAX_GAP_SHARE * len(grid):
            return freq, grid
    return None


def _regularize(df: pd.DataFrame, freq: str | None) -> tuple[pd.DataFrame, str | None, tuple, int]:
    """Put ``df`` on the ``freq`` grid (adding missing timestamps), or infer the spacing (a regular
    grid with some timestamps missing included, which are then added) and report the steps that are
    off it. Returns (frame, freq, irregular step ends, timestamps added)."""
    index = df.index
    if freq is not None:
        grid = pd.date_range(index[0], index[-1], freq=freq)
        off = index.difference(grid)
        if len(off):
            raise ValueError(f"freq: {len(off)} timestamps are not on the {freq!r} grid from {date_text(index[0])} "
                             f"(first {date_text(off[0])})")
        return df.reindex(grid), freq, (), len(grid) - len(index)
    if len(index) < 3:
        return df, None, (), 0
    inferred = _infer_freq(index)
    if inferred is not None:
        return df, inferred, (), 0
    gridded = _grid_with_gaps(index)
    if gridded is not None:  # a regular series with missing timestamps: put on its grid
        freq, grid = gridded
        return df.reindex(grid), freq, (), len(grid) - len(index)
    steps = np.diff(index.asi8)
    usual = np.median(steps)
    off = (steps < 0.5 * usual) | (steps > 1.5 * usual)
    return df, None, tuple(index[1:][off]), 0


def _apply_missing_policy(df: pd.DataFrame, policy: str) -> pd.DataFrame:
    if policy == "mask":
        return df
    empty = [c for c in df.columns if df[c].isna().all()]
    if empty:
        raise ValueError(f"missing: column {empty[0]!r} has no values to {policy} from")
    if policy == "interpolate":  # linear in time; the ends hold the nearest value
        return df.interpolate(method="time", limit_direction="both")
    return df.ffill().bfill()    # leading gaps take the first value


def read_series(path_or_df: str | Path | pd.DataFrame, date_column: str,
                target_columns: str | Sequence[str], past_covariates: Sequence[str] = (),
                future_covariates: Sequence[str] = (), *, missing: str = "interpolate",
                duplicates: str = "mean", freq: str | None = None, date_format: str | None = None,
                calendar: Sequence[str] = (), calendar_encoding: str = "sincos",
                min_length: int = 2) -> SeriesData:
    """Read a CSV file (or take a DataFrame) as a clean, sorted, numeric time series.

    path_or_df: a CSV path or a DataFrame with a date column and numeric value columns.
    missing: "interpolate" (linear in time), "ffill" (carry the last value forward), or "mask"
        (keep NaN; ``SeriesData.target_mask`` says which values were observed).
    duplicates: how rows sharing a timestamp merge: "mean", "first", "last", or "error".
    freq: a pandas frequency ("D", "MS", "h"): the series is put on that grid and missing timestamps
        become missing values. Without it the spacing is inferred and irregular steps are reported.
    calendar: calendar features (see ``calendar_features``) appended to the future covariates.
    min_length: the fewest time steps accepted after cleaning.

    Irregularities go to ``SeriesData.report`` and are logged as warnings. Rows in error messages
    count from 0, the first data row.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing: expected one of {MISSING_POLICIES}, got {missing!r}")
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates: expected one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    roles = {"target_columns": _names(target_columns, "target_columns"),
             "past_covariates": _names(past_covariates, "past_covariates"),
             "future_covariates": _names(future_covariates, "future_covariates")}
    df = _load(path_or_df)
    _check_columns(df, date_column, roles)
    df = _to_numeric(df, roles, _parse_dates(df[date_column], date_column, date_format))
    df.index.name = date_column
    rows_read = len(df)

    was_sorted = bool(df.index.is_monotonic_increasing)
    df = df.sort_index(kind="stable")
    df, dup_stamps, dup_rows = _merge_duplicates(df, duplicates)
    if len(df) < min_length:
        raise ValueError(f"path_or_df: expected at least min_length={min_length} time steps, got {len(df)}")
    df, freq, irregular, added = _regularize(df, freq)
    df.index.name = date_column

    observed = df.notna()
    missing_counts = {c: int(n) for c, n in df.isna().sum().items()}
    df = _apply_missing_policy(df, missing)
    future = roles["future_covariates"]
    if calendar:
        cal = calendar_features(df.index, calendar, calendar_encoding)
        clash = [c for c in cal.columns if c in df.columns]
        if clash:
            raise ValueError(f"calendar: feature column {clash[0]!r} clashes with a column of the data")
        df = pd.concat([df, cal], axis=1)
        observed = pd.concat([observed, cal.notna()], axis=1)
        future = future + list(cal.columns)

    report = SeriesReport(rows_read, len(df), df.index[0], df.index[-1], freq, was_sorted, dup_stamps,
                          dup_rows, irregular, added, missing_counts, missing)
    for issue in report.issues:
        logger.warning("read_series: %s", issue)
    logger.info("read_series: %s", report.summary())
    return SeriesData(df, observed, tuple(roles["target_columns"]), tuple(roles["past_covariates"]),
                      tuple(future), report)


# ------------------------------------------------------------------------------ many series
@dataclass(frozen=True)
class PanelSeries:
    """One series of a ``Panel``: its steps and values, with the static covariates' values."""

    id: str
    index: pd.Index          # DatetimeIndex, or integer steps (contiguous) when the time column holds integers
    target: np.ndarray       # <float64>[N, C] (NaN where missing under missing="mask")
    past: np.ndarray         # <float64>[N, Pc]
    future: np.ndarray       # <float64>[N, Fc] (calendar features included)
    target_mask: np.ndarray  # <bool>[N, C]: True where the target was observed
    static: tuple[str, ...]  # the value of each static covariate, as text

    def __len__(self) -> int:
        return len(self.index)


@dataclass(frozen=True)
class Panel:
    """Many series read from one long-format frame (one row per series and time step)."""

    series: list[PanelSeries]
    target_columns: tuple[str, ...]
    past_columns: tuple[str, ...]
    future_columns: tuple[str, ...]  # calendar features included
    static_columns: tuple[str, ...]
    freq: str | None                 # the dates' frequency; None for integer steps or irregular dates
    integer_time: bool               # the time column holds step numbers, not dates

    def __len__(self) -> int:
        return len(self.series)


def _integer_series(group: pd.DataFrame, time_column: str, roles: dict[str, list[str]], missing: str,
                    key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A series indexed by integer steps: duplicates averaged, the steps made contiguous (gaps become
    missing values), then the missing-value policy. Returns (values, observed)."""
    columns = [c for names in roles.values() for c in names]
    values = group[columns].apply(pd.to_numeric, errors="coerce")
    bad = (values.isna() & group[columns].notna()).to_numpy()
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{columns[col]!r}: expected numbers, got {group[columns[col]].iloc[row]!r} in series "
                         f"{key!r} at step {group[time_column].iloc[row]}")
    values.index = group[time_column].to_numpy()
    values = values.groupby(level=0).mean().sort_index()
    values = values.reindex(pd.RangeIndex(int(values.index[0]), int(values.index[-1]) + 1))
    observed = values.notna()
    if missing == "interpolate":
        values = values.interpolate(limit_direction="both")
    elif missing == "ffill":
        values = values.ffill().bfill()
    return values, observed


def read_panel(path_or_df: str | Path | pd.DataFrame, id_column: str, time_column: str,
               target_columns: str | Sequence[str], past_covariates: Sequence[str] = (),
               future_covariates: Sequence[str] = (), static_covariates: Sequence[str] = (), *,
               missing: str = "interpolate", freq: str | None = None, date_format: str | None = None,
               calendar: Sequence[str] = (), calendar_encoding: str = "sincos", min_length: int = 2) -> Panel:
    """Read a long-format frame (columns: series id, time, targets, covariates) as many series.

    time_column: dates (each series read as ``read_series`` reads one: sorted, duplicates averaged,
        put on ``freq`` or its inferred grid, calendar features) or integer step numbers (each
        series made contiguous from its first to its last step).
    static_covariates: columns with one value per series (e.g. a category); read as text.
    The other arguments are ``read_series``'s. Series come in the order of their first row.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing: expected one of {MISSING_POLICIES}, got {missing!r}")
    df = _load(path_or_df)
    roles = {"target_columns": _names(target_columns, "target_columns"),
             "past_covariates": _names(past_covariates, "past_covariates"),
             "future_covariates": _names(future_covariates, "future_covariates")}
    static = _names(static_covariates, "static_covariates")
    if id_column not in df.columns:
        raise ValueError(f"id_column: {id_column!r} is not a column; available: {[str(c) for c in df.columns]}")
    _check_columns(df, time_column, {**roles, "static_covariates": static})
    if id_column in (time_column, *static, *(c for names in roles.values() for c in names)):
        raise ValueError(f"id_column: {id_column!r} is also given another role")
    if df[id_column].isna().any():
        row = int(np.flatnonzero(df[id_column].isna().to_numpy())[0])
        raise ValueError(f"id_column {id_column!r}: expected a series id on every row, got none at row {row}")
    integer_time = pd.api.types.is_integer_dtype(df[time_column])
    if integer_time and (calendar or freq):
        raise ValueError(f"calendar, freq: the time column {time_column!r} holds step numbers, not dates; "
                         "calendar features and a frequency need dates")
    ids = df[id_column].astype(str)
    out: list[PanelSeries] = []
    freqs: set[str | None] = set()
    future_columns = tuple(roles["future_covariates"])
    for key, group in df.groupby(ids, sort=False):
        values = {}
        for name in static:
            seen = group[name].dropna().astype(str).unique()
            if len(seen) != 1:
                raise ValueError(f"static_covariates {name!r}: expected one value per series, got "
                                 f"{sorted(seen)[:5]} in series {key!r}")
            values[name] = seen[0]
        if integer_time:
            frame, observed = _integer_series(group, time_column, roles, missing, key)
            if len(frame) < min_length:
                raise ValueError(f"series {key!r}: expected at least min_length={min_length} steps, got {len(frame)}")
            index = frame.index
            target_names = roles["target_columns"]
            future = frame[roles["future_covariates"]].to_numpy(np.float64)
        else:
            try:
                data = read_series(group.drop(columns=[id_column, *static]), time_column, roles["target_columns"],
                                   roles["past_covariates"], roles["future_covariates"], missing=missing, freq=freq,
                                   date_format=date_format, calendar=calendar, calendar_encoding=calendar_encoding,
                                   min_length=min_length)
            except ValueError as error:
                raise ValueError(f"series {key!r}: {error}") from None
            frame, observed, index = data.frame, data.observed, data.index
            target_names, future = roles["target_columns"], data.future
            future_columns = data.future_columns
            freqs.add(data.report.freq)
        out.append(PanelSeries(str(key), index, frame[target_names].to_numpy(np.float64),
                               frame[roles["past_covariates"]].to_numpy(np.float64), future,
                               observed[target_names].to_numpy(bool), tuple(values[n] for n in static)))
    if len(freqs) > 1:
        raise ValueError(f"freq: the series' dates have different frequencies {sorted(map(str, freqs))}; "
                         "pass freq= to put them all on one grid")
    return Panel(out, tuple(roles["target_columns"]), tuple(roles["past_covariates"]), future_columns,
                 tuple(static), next(iter(freqs)) if freqs else None, integer_time)


# ------------------------------------------------------------------------- calendar features
# name -> (DatetimeIndex attribute, first value, period)
CALENDAR_FEATURES = {"month": ("month", 1, 12), "day_of_week": ("day_of_week", 0, 7), "day": ("day", 1, 31),
                     "day_of_year": ("day_of_year", 1, 366), "hour": ("hour", 0, 24)}


def calendar_features(index: pd.DatetimeIndex, features: Sequence[str] = ("month", "day_of_week"),
                      encoding: str = "sincos") -> pd.DataFrame:
    """Calendar features of ``index``, known ahead of time, so usable as future covariates.

    encoding "sincos": two columns per feature, ``{f}_sin`` and ``{f}_cos`` of 2π·(value − first)/period;
    "onehot": one 0/1 column per value, ``{f}_{value}`` (all values of the period, whatever ``index`` holds).
    Feature names are the keys of ``CALENDAR_FEATURES``. For forecasting past the data, build the index
    of the future steps, e.g. ``pd.date_range(end, periods=H + 1, freq=freq)[1:]``.
    """
    if not isinstance(index, pd.DatetimeIndex):
        raise TypeError(f"index: expected a pandas DatetimeIndex, got {type(index).__name__}")
    if encoding not in ("sincos", "onehot"):
        raise ValueError(f"encoding: expected 'sincos' or 'onehot', got {encoding!r}")
    columns: dict[str, np.ndarray] = {}
    for name in _names(features, "features"):
        if name not in CALENDAR_FEATURES:
            raise ValueError(f"features: unknown calendar feature {name!r}; known: {list(CALENDAR_FEATURES)}")
        attr, first, period = CALENDAR_FEATURES[name]
        value = np.asarray(getattr(index, attr), dtype=np.int64) - first
        if encoding == "sincos":
            angle = 2 * np.pi * value / period
            columns[f"{name}_sin"], columns[f"{name}_cos"] = np.sin(angle), np.cos(angle)
        else:
            for k in range(period):
                columns[f"{name}_{k + first}"] = (value == k).astype(np.float64)
    return pd.DataFrame(columns, index=index)


# ---------------------------------------------------------------------------------- scalers
def _fit_matrix(x: Any) -> np.ndarray:
    """x <float>[N] or [..., C] → <float64>[rows, C] (a 1-D array is one column)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 0 or a.size == 0:
        raise ValueError(f"x: expected a non-empty array of shape [N] or [N, C], got shape {a.shape}")
    a = a.astype(np.float64).reshape(-1, 1 if a.ndim == 1 else a.shape[-1])
    empty = np.flatnonzero(np.isnan(a).all(axis=0))
    if empty.size:
        raise ValueError(f"x: column {int(empty[0])} has no values (all NaN)")
    return a


class Scaler:
    """Per-column affine scaling ``y = (x − center) / scale``, the statistics fitted on training data.

    Columns are the last dimension of ``x``; a 1-D array is one column. NaN is ignored when fitting
    and passed through by ``transform``. A constant column gets scale 1. ``transform`` takes numpy
    arrays or torch tensors and returns the same kind.
    """

    def __init__(self) -> None:
        self.center: np.ndarray | None = None  # <float64>[C]
        self.scale: np.ndarray | None = None   # <float64>[C]

    def _statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def fit(self, x: Any) -> Scaler:
        """Fit the per-column statistics on ``x`` (``<float>[..., C]`` or 1-D); returns self."""
        center, scale = self._statistics(_fit_matrix(x))
        self.center, self.scale = center, np.where(scale > 0, scale, 1.0)
        return self

    def _affine(self, x: Any) -> tuple[Any, Any, Any]:
        if self.center is None:
            raise RuntimeError(f"{type(self).__name__}: call fit() first")
        columns, shape = len(self.center), tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        if columns != 1 and (not shape or shape[-1] != columns):
            raise ValueError(f"x: expected {columns} columns (as fitted) in the last dim, got shape {shape}")
        if isinstance(x, torch.Tensor):
            x = x if x.is_floating_point() else x.float()
            return x, torch.as_tensor(self.center, dtype=x.dtype, device=x.device), \
                torch.as_tensor(self.scale, dtype=x.dtype, device=x.device)
        x = np.asarray(x)
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)
        return x, self.center.astype(x.dtype), self.scale.astype(x.dtype)

    def transform(self, x: Any) -> Any:
        """``(x - center) / scale`` per column, the same kind (numpy or torch) and shape as ``x``.

        Raises:
            RuntimeError: the scaler is not fitted.
            ValueError: x's last dim is not the fitted number of columns.
        """
        x, center, scale = self._affine(x)
        return (x - center) / scale

    def inverse_transform(self, x: Any) -> Any:
        """``x * scale + center`` per column: ``transform`` undone."""
        x, center, scale = self._affine(x)
        return x * scale + center

    def fit_transform(self, x: Any) -> Any:
        """``fit(x)``, then ``transform(x)``."""
        return self.fit(x).transform(x)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"type", "params", "center", "scale"}``."""
        fitted = self.center is not None
        return {"type": type(self).__name__, "params": self._params(),
                "center": self.center.tolist() if fitted else None,
                "scale": self.scale.tolist() if fitted else None}

    @staticmethod
    def from_dict(state: dict[str, Any]) -> Scaler:
        """The scaler that ``to_dict`` described, of the right class, fitted or not."""
        kind = state.get("type") if isinstance(state, dict) else None
        if kind not in SCALERS:
            raise ValueError(f"state: expected a dict with 'type' one of {list(SCALERS)}, got {kind!r}")
        scaler = SCALERS[kind](**state.get("params", {}))
        if state.get("center") is not None:
            scaler.center = np.asarray(state["center"], dtype=np.float64)
            scaler.scale = np.asarray(state["scale"], dtype=np.float64)
        return scaler


class StandardScaler(Scaler):
    """Zero mean, unit (population) standard deviation per column."""

    def _statistics(self, x):
        return np.nanmean(x, axis=0), np.nanstd(x, axis=0)


class MinMaxScaler(Scaler):
    """Each column's training range mapped onto ``feature_range``."""

    def __init__(self, feature_range: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        low, high = (float(v) for v in feature_range)
        if not low < high:
            raise ValueError(f"feature_range: expected (low, high) with low < high, got {tuple(feature_range)}")
        self.feature_range = (low, high)

    def _params(self):
        return {"feature_range": list(self.feature_range)}

    def _statistics(self, x):
        low, high = self.feature_range
        lo, hi = np.nanmin(x, axis=0), np.nanmax(x, axis=0)
        scale = np.where(hi > lo, hi - lo, 1.0) / (high - low)
        return lo - low * scale, scale


class RobustScaler(Scaler):
    """Median removed, scaled by the interquartile range (``quantile_range`` percentiles)."""

    def __init__(self, quantile_range: Sequence[float] = (25.0, 75.0)) -> None:
        super().__init__()
        q_low, q_high = (float(v) for v in quantile_range)
        if not 0 <= q_low < q_high <= 100:
            raise ValueError(f"quantile_range: expected 0 <= low < high <= 100, got {tuple(quantile_range)}")
        self.quantile_range = (q_low, q_high)

    def _params(self):
        return {"quantile_range": list(self.quantile_range)}

    def _statistics(self, x):
        q_low, median, q_high = np.nanpercentile(x, [self.quantile_range[0], 50, self.quantile_range[1]], axis=0)
        return median, q_high - q_low


SCALERS = {cls.__name__: cls for cls in (StandardScaler, MinMaxScaler, RobustScaler)}


# ---------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Windows:
    """Supervised windows cut from a series. Window i reads steps ``starts[i] .. starts[i]+L-1`` and
    forecasts steps ``starts[i]+L .. starts[i]+L+H-1``, so ``targets[i, h] == target[starts[i] + L + h]``."""

    inputs: np.ndarray    # <float>[W, L, C + Pc + Fc]: target, past and future covariates at each input step
    future: np.ndarray    # <float>[W, H, Fc]: future covariates over the horizon
    targets: np.ndarray   # <float>[W, H, C]
    starts: np.ndarray    # <int64>[W]: index of each window's first input step
    dropped: int          # windows dropped because their input or horizon target was all NaN

    def __len__(self) -> int:
        return len(self.starts)


def _as_columns(x: Any, arg: str, length: int | None) -> np.ndarray:
    """x <float>[N] or [N, K] → <float64>[N, K]; None → [length, 0]."""
    if x is None:
        return np.zeros((length, 0))
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{arg}: expected shape [N] or [N, features], got {a.shape}")
    if length is not None and len(a) != length:
        raise ValueError(f"{arg}: expected {length} time steps (as target), got {len(a)}")
    return a


def _count(value: Any, arg: str, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{arg}: expected an integer >= {low}, got {value!r}")
    return int(value)


def make_windows(target: Any, lookback: int, horizon: int, past_covariates: Any = None,
                 future_covariates: Any = None, *, span: slice | None = None, stride: int = 1,
                 all_nan: str = "drop", dtype: Any = np.float32) -> Windows:
    """Cut sliding windows of ``lookback`` inputs and ``horizon`` targets.

    target <float>[N, C] (or [N]); past_covariates <float>[N, Pc]; future_covariates <float>[N, Fc].
    span: only windows whose whole horizon lies in ``span`` (a slice of step indices, e.g.
        ``split.test``); their lookback may reach before it, as in a backtest. Default: everything.
    stride: steps between consecutive window starts.
    all_nan: a window whose input target or horizon target is all NaN is "drop"ped (counted in
        ``Windows.dropped``) or an "error". Windows with some NaN are kept.
    """
    y = _as_columns(target, "target", None)
    n = len(y)
    past = _as_columns(past_covariates, "past_covariates", n)
    future = _as_columns(future_covariates, "future_covariates", n)
    lookback, horizon = _count(lookback, "lookback", 1), _count(horizon, "horizon", 1)
    stride = _count(stride, "stride", 1)
    if all_nan not in ("drop", "error"):
        raise ValueError(f"all_nan: expected 'drop' or 'error', got {all_nan!r}")
    if n < lookback + horizon:
        raise ValueError(f"target: series of length {n} is shorter than lookback + horizon = "
                         f"{lookback} + {horizon} = {lookback + horizon}")
    span = span if span is not None else slice(0, n)
    if not isinstance(span, slice) or span.step not in (None, 1):
        raise TypeError(f"span: expected a slice of step indices with step 1, got {span!r}")
    first, stop, _ = span.indices(n)
    starts = np.arange(max(first - lookback, 0), stop - lookback - horizon + 1, stride, dtype=np.int64)
    if starts.size == 0:
        raise ValueError(f"span: steps {first}..{stop - 1} ({stop - first} steps) hold no window of lookback "
                         f"{lookback} and horizon {horizon}; need a horizon inside the span with "
                         f"{lookback} steps of context before it")

    steps_in, steps_out = starts[:, None] + np.arange(lookback), starts[:, None] + lookback + np.arange(horizon)
    empty = np.isnan(y[steps_in]).all(axis=(1, 2)) | np.isnan(y[steps_out]).all(axis=(1, 2))
    if empty.any():
        if all_nan == "error":
            raise ValueError(f"target: {int(empty.sum())} windows have an all-NaN input or horizon "
                             f"(first starts at step {int(starts[empty][0])}); pass all_nan='drop'")
        logger.warning("make_windows: dropped %d windows with an all-NaN input or horizon", int(empty.sum()))
        starts, steps_in, steps_out = starts[~empty], steps_in[~empty], steps_out[~empty]
    series = np.concatenate([y, past, future], axis=1)
    return Windows(series[steps_in].astype(dtype), future[steps_out].astype(dtype),
                   y[steps_out].astype(dtype), starts, int(empty.sum()))


# ------------------------------------------------------------------------------------ split
@dataclass(frozen=True)
class Split:
    """Chronological parts of a series as slices of step indices: train, then val, then test."""

    train: slice
    val: slice
    test: slice


def _part_size(value: int | float, arg: str, length: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{arg}: expected a fraction in [0, 1) or a count of steps, got {value!r}")
    if isinstance(value, (float, np.floating)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{arg}: expected a fraction in [0, 1), got {value}")
        return int(round(value * length))
    if value < 0:
        raise ValueError(f"{arg}: expected a count >= 0, got {value}")
    return int(value)


def chronological_split(length: int, *, val: int | float = 0.0, test: int | float = 0.2) -> Split:
    """Split ``length`` steps into train | val | test in time order.

    val, test: a float is a fraction of ``length`` (rounded), an int a count of steps (``test=48``:
    the last 48 points). Train gets the rest and must keep at least one step. Use the slices with
    ``make_windows(..., span=split.val)`` so that val/test windows take lookback context from
    before their start, and fit scalers on ``x[split.train]`` only.
    """
    length = _count(length, "length", 1)
    n_val, n_test = _part_size(val, "val", length), _part_size(test, "test", length)
    n_train = length - n_val - n_test
    if n_train < 1:
        raise ValueError(f"val, test: {n_val} + {n_test} steps leave no training data of a series of "
                         f"length {length}")
    return Split(slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, length))
