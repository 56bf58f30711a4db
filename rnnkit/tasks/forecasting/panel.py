"""Many series, one global model: the Forecaster's methods for a long-format frame (see the package
docstring): a split and scalers per series, one-hot static categories, the long forecast and the
per-series backtests averaged over series."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ...baselines import Backtest
from ...data.series import Panel, PanelSeries, calendar_features, chronological_split, read_panel
from ...model import ModelConfig
from .config import ForecastExperiment
from .data import encode_categories, expand, _fit_scalers, _load_frame, _future_index, _Prepared
from .heads import _sizes, _Network
from .backtest import METRICS, score_forecast, _forecast_rows, PanelBacktest, _now


class ManySeries:
    """The Forecaster's methods for many series in one long-format frame (``data.id_column``): reading
    and splitting them, per-series arrays, the long-frame forecast and the per-series backtest."""

    @classmethod
    def _read_panel_data(cls, experiment: ForecastExperiment, given: dict) -> tuple[ForecastExperiment, dict]:
        """Many series from a long-format frame: a split and scalers per series, the static categories."""
        cfg = experiment.data
        panel, categorical = cls._read_training(cfg, given["frame"])
        need = cfg.lookback + cfg.horizon
        splits, series_scalers, unvalidated = {}, {}, []
        for s in panel.series:
            try:
                split = chronological_split(len(s), val=cfg.val, test=cfg.test)
                if cfg.val and split.train.stop < need:  # too short to spare a validation part: train on it all
                    split = chronological_split(len(s), val=0, test=cfg.test)
                    unvalidated.append(s.id)
            except ValueError as error:
                raise ValueError(f"data: series {s.id!r} of {len(s)} steps: {error}") from None
            if split.train.stop < need:
                raise ValueError(f"data: the training part of series {s.id!r} ({split.train.stop} of {len(s)} steps, "
                                 f"after val={cfg.val} and test={cfg.test}) is shorter than lookback + horizon = "
                                 f"{cfg.lookback} + {cfg.horizon}; shorten data.lookback or leave the series out")
            splits[s.id] = split
            try:
                series_scalers[s.id] = _fit_scalers(cfg.scaler, s, cfg.transform, panel.target_columns, split.train)
            except ValueError as error:  # e.g. a value out of the transform's domain
                raise ValueError(f"series {s.id!r}: {error}") from None
        if unvalidated:
            warnings.warn(f"data.val: {len(unvalidated)} of {len(panel)} series (first {unvalidated[0]!r}) are too short "
                          f"to keep a validation part of {cfg.val} besides lookback + horizon = {need} training "
                          "steps; they train on all their steps before the test and are left out of validation",
                          stacklevel=4)
        categories = {name: sorted({s.static[i] for s in panel.series}) for i, name in enumerate(panel.static_columns)}
        columns = {"date_column": cfg.date_column, "date_parts": list(cfg.date_parts), "id_column": cfg.id_column,
                   "target": list(panel.target_columns),
                   "past": list(cfg.past_covariates), "future": list(cfg.future_covariates),
                   "categorical": categorical,
                   "future_all": list(panel.future_columns), "calendar": list(cfg.calendar),
                   "calendar_encoding": cfg.calendar_encoding, "freq": panel.freq, "integer_time": panel.integer_time,
                   "transform": cfg.transform, "static": list(panel.static_columns), "categories": categories}
        experiment = experiment.with_season(None if panel.integer_time else panel.freq)
        model_fields = _Network(experiment, _sizes(columns)).model_fields()
        experiment = experiment.model_copy(update={"model": ModelConfig.from_dict(
            {**experiment.model.to_dict(), **model_fields}, "model")})
        return experiment, {"panel": panel, "splits": splits, "series_scalers": series_scalers, "scalers": {},
                            "columns": columns, "evaluate": given["evaluate"]}

    def _panel_arrays(self, s: PanelSeries, future_cov: np.ndarray | None = None, fit_end: int | None = None
                      ) -> _Prepared:
        """One of many series in model space, with its own scalers (for a series not among those trained
        on, fitted on its history before ``fit_end``: all of it to forecast, the steps before the first
        origin in a backtest) and its one-hot static categories; ``fit_end`` as ``_arrays``'."""
        scalers = self.series_scalers.get(s.id)
        if scalers is None:
            cfg = self.experiment.data
            seen = len(s) if fit_end is None else fit_end
            scalers = _fit_scalers(cfg.scaler, s, cfg.transform, self.columns["target"], slice(0, seen))
        return self._arrays(s, future_cov, scalers, self._one_hot(s), fit_end)

    def _one_hot(self, s: PanelSeries) -> np.ndarray:
        """<float64>[sum of category counts]: the series' static categories, one-hot per column."""
        parts = []
        for name, value in zip(self.columns.get("static", []), s.static):
            known = self.columns["categories"][name]
            if value not in known:
                raise ValueError(f"df: series {s.id!r} has {name} = {value!r}, a category the model was not trained "
                                 f"with; known: {known}")
            parts.append(np.eye(len(known))[known.index(value)])
        return np.concatenate(parts) if parts else np.zeros(0)

    # ------------------------------------------------------------------------- many series
    def _history_panel(self, df: Any) -> Panel:
        """Many series to forecast from: those given to fit, or ``df`` read with the trained columns."""
        if df is None:
            if self.panel is None:
                raise ValueError("df: this Forecaster was loaded from a checkpoint and holds no series; pass the "
                                 "long-format frame to forecast from")
            return self.panel
        cols, cfg = self.columns, self.experiment.data
        categorical = cols.get("categorical", {})
        frame = encode_categories(_load_frame(df, cols["date_column"], parts=cols.get("date_parts", ())), categorical,
                                  "df")
        panel = read_panel(frame, cols["id_column"], cols["date_column"], cols["target"],
                           expand(cols["past"], categorical), expand(cols["future"], categorical), cols["static"],
                           missing=cfg.missing, freq=cols["freq"] or None,
                           date_format=cfg.date_format or None, calendar=cols["calendar"],
                           calendar_encoding=cols["calendar_encoding"])
        new = [s.id for s in panel.series if s.id not in self.series_scalers]
        if new:
            warnings.warn(f"df: {len(new)} series the model was not trained on ({', '.join(map(repr, new[:5]))}"
                          f"{', ...' if len(new) > 5 else ''}): each is scaled on its own history (in a backtest, "
                          "the steps before its first origin)", stacklevel=4)
        return panel

    def _future_steps(self, s: PanelSeries, steps: int) -> pd.Index:
        if self.columns["integer_time"]:
            return pd.RangeIndex(int(s.index[-1]) + 1, int(s.index[-1]) + 1 + steps)
        return _future_index(s.index[-1], steps, self.columns["freq"])

    def _predict_panel(self, horizon: int, df: Any, future: Any, level: float | None) -> pd.DataFrame:
        """The next ``horizon`` steps of every series, as a long frame: id, time, targets (+ intervals)."""
        cols = self.columns
        if future is not None and not cols["future"]:
            raise ValueError("future: this model was trained without future covariates and will not forecast with "
                             "covariates it was not trained with")
        if cols["future"] and future is None:
            raise ValueError(f"future: expected the future covariates {cols['future']} of the {horizon} steps after "
                             f"each series' end, as a long frame with the columns {cols['id_column']!r}, "
                             f"{cols['date_column']!r} and {cols['future']}; got none")
        given = self._future_frame(future) if cols["future"] else None
        rows = []
        for s in self._history_panel(df).series:
            steps = self._future_steps(s, horizon)
            parts = [self._series_future(given, s, steps)] if given is not None else []
            if cols["calendar"]:
                parts.append(calendar_features(steps, cols["calendar"], cols["calendar_encoding"]).to_numpy())
            ahead = np.concatenate(parts, axis=1) if parts else np.zeros((horizon, 0))  # static categories go on
            out = self._run(self._panel_arrays(s, ahead), np.array([len(s)]), horizon, level)
            frame = {cols["id_column"]: s.id, cols["date_column"]: steps}
            for c, name in enumerate(cols["target"]):
                frame[name] = out["point"][0, :, c]
                if "lower" in out:
                    frame[f"{name}_lower"], frame[f"{name}_upper"] = out["lower"][0, :, c], out["upper"][0, :, c]
            rows.append(pd.DataFrame(frame))
        return pd.concat(rows, ignore_index=True)

    def _future_frame(self, future: Any) -> pd.DataFrame:
        """The known-future covariates of many series (a long frame or CSV path), one-hot where categorical,
        indexed by (id as text, time)."""
        cols = self.columns
        frame = _load_frame(future, cols["date_column"], parts=cols.get("date_parts", ()), arg="future")
        missing = [c for c in (cols["id_column"], cols["date_column"], *cols["future"]) if c not in frame.columns]
        if missing:
            raise ValueError(f"future: expected the columns {cols['id_column']!r}, {cols['date_column']!r} and "
                             f"{cols['future']}; missing {missing}")
        categorical = cols.get("categorical", {})
        frame = encode_categories(frame, categorical, "future")
        names = expand(cols["future"], categorical)
        time = frame[cols["date_column"]]
        time = time.astype(np.int64) if cols["integer_time"] else pd.to_datetime(time, errors="coerce")
        values = frame[names].apply(pd.to_numeric, errors="coerce")
        values.index = pd.MultiIndex.from_arrays([frame[cols["id_column"]].astype(str), time])
        return values[~values.index.duplicated(keep="last")]

    def _series_future(self, given: pd.DataFrame, s: PanelSeries, steps: pd.Index) -> np.ndarray:
        """<float64>[len(steps), F]: series ``s``'s future covariates at ``steps``, all of them required."""
        got = given.reindex(pd.MultiIndex.from_arrays([[str(s.id)] * len(steps), steps])).to_numpy(np.float64)
        lacking = np.isnan(got).any(axis=1)
        if lacking.any():
            raise ValueError(f"future: series {s.id!r} lacks its future covariates {self.columns['future']} (or "
                             f"has values that are not numbers) at {int(lacking.sum())} of the {len(steps)} steps "
                             f"after its end, first at {steps[int(np.argmax(lacking))]}")
        return got

    def _backtest_panel(self, horizon: int, df: Any, stride: int, level: float | None,
                        baselines: bool) -> PanelBacktest:
        """Per series: rolling origins over its test part, the model and the baselines (fitted on that
        series before its first origin) scored; the table averages the scores over series."""
        ev, cfg = self.experiment.evaluate, self.experiment.data
        panel = self._history_panel(df)
        seconds: dict[str, float] = {}
        per_series: dict[tuple[str, str], dict[str, float]] = {}
        frames = []
        for s in panel.series:
            start = self.test_starts[s.id] if df is None else chronological_split(len(s), test=cfg.test).test.start
            if not cfg.lookback <= start <= len(s) - horizon:
                raise ValueError(f"df: series {s.id!r} of {len(s)} steps has its first origin at {start}, outside "
                                 f"[lookback, len - horizon] = [{cfg.lookback}, {len(s) - horizon}]")
            origins = np.arange(start, len(s) - horizon + 1, stride, dtype=np.int64)
            # baselines run on the filled series; only observed values are scored
            truth, observed = s.target, np.where(s.target_mask, s.target, np.nan)
            actuals = np.stack([observed[o:o + horizon] for o in origins])
            t0 = _now()
            out = self._run(self._panel_arrays(s, fit_end=int(start)), origins, horizon, level, backtest=True)
            seconds["model"] = seconds.get("model", 0.0) + _now() - t0
            runs = {"model": Backtest(origins, out["point"], actuals)}
            if "statistical" in out:  # a hybrid's statistical component alone
                name = f"component_{self.experiment.forecast.statistical()}"
                runs[name] = Backtest(origins, out["statistical"], actuals)
            if baselines:
                baseline_runs, baseline_seconds = self._baseline_runs(truth, int(start), horizon, stride, actuals,
                                                                      df is None, series_id=s.id)
                runs.update(baseline_runs)
                for name, spent in baseline_seconds.items():
                    seconds[name] = seconds.get(name, 0.0) + spent
            for name, bt in runs.items():
                model_run = name == "model"
                per_series[(s.id, name)] = score_forecast(bt.actuals, bt.forecasts, observed[:start], ev.season,
                                                          out.get("lower") if model_run else None,
                                                          out.get("upper") if model_run else None)
            frames.append(_forecast_rows(s.id, s.index[origins], horizon, self.columns["target"], runs["model"],
                                         out.get("lower"), out.get("upper")))
        table = pd.DataFrame.from_dict(per_series, orient="index", columns=list(METRICS))
        table.index = pd.MultiIndex.from_tuples(table.index, names=["series", "method"])
        methods = list(dict.fromkeys(name for _, name in per_series))
        counts = table.groupby(level="method").size().reindex(methods)
        missing = {name: len(panel) - int(n) for name, n in counts.items() if n < len(panel)}
        if missing:
            warnings.warn(f"backtest: baselines skipped on some series {missing}; their means cover the rest",
                          stacklevel=3)
        metrics = table.groupby(level="method", sort=False).mean().reindex(methods)
        return PanelBacktest(horizon, len(panel), level, metrics, table, pd.concat(frames, ignore_index=True),
                             seconds, tuple(self.columns["target"]))
