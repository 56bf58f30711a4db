"""The Forecaster task: fit (one series, or many through ``ManySeries``), checkpoints, predict and
backtest (see the package docstring)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ...baselines import (ARIMA, AutoARIMA, AutoETS, AutoTheta, Backtest, HoltWinters, Naive, SeasonalNaive,
                          backtest as baseline_backtest)
from ...data.competitions import competition_frame
from ...data.datasets import dataset_file
from ...data.series import (Panel, PanelSeries, Scaler, SeriesData, calendar_features, chronological_split, date_text,
                            make_windows, read_panel, read_series)
from ...io.checkpoint import load_checkpoint, save_checkpoint
from ...model import Ensemble, ModelConfig, SequenceModel
from ...train import Trainer
from ..base import Task, Training
from .config import ForecastExperiment, ForecastDataConfig
from .data import (_future_index, _gather, _load_frame, _make_scaler, _Prepared, _scale, _trailing_future_rows,
                   _transform, _untransform, categories_of, encode_categories, expand)
from .heads import MemberBest, _sizes, _Network, fit_weights
from .backtest import METRICS, score_forecast, ForecastBacktest, format_tables, _now
from .conformal import calibrate, fewest_scores, halfwidth, recalibrated
from .panel import ManySeries
from .statistical import MODELS as STATISTICAL_MODELS, fitted as statistical_fit, transformed

logger = logging.getLogger(__name__)


class Forecaster(ManySeries, Task):
    """A trained forecaster with its scalers and column roles (the package docstring); many series
    through ``ManySeries``."""

    name = "forecaster"
    experiment_cls = ForecastExperiment

    def __init__(self, model: SequenceModel | Ensemble, experiment: ForecastExperiment,
                 scalers: dict[str, Scaler | None], columns: dict[str, Any],
                 series_scalers: dict[str, dict[str, Scaler | None]] | None = None) -> None:
        super().__init__(model, experiment)
        self.scalers, self.columns = scalers, columns
        # many series: {id: {role: scaler}}, each fitted on that series' training part
        self.series_scalers = series_scalers or {}
        self.net = _Network(experiment, _sizes(columns))
        self.data: SeriesData | None = None       # the series given to fit
        self.test_start: int | None = None        # its first test step
        self.panel: Panel | None = None           # many series: those given to fit
        self.test_starts: dict[str, int] = {}     # and the first test step of each
        self.backtests: dict[int, ForecastBacktest] = {}
        self.conformal: dict[str, Any] | None = None  # calibration scores of conformal intervals
        self._fitted_baselines: dict[tuple[str, int], Any] = {}  # (name, first origin) → fitted on self.data
        self.member_best: MemberBest | None = None  # an ensemble's members' own best epochs, while training

    # ------------------------------------------------------------------------------ fit
    keywords = {"target": "data.target_columns", "output": "forecast.output"}  # not the LM's model.output

    @classmethod
    def fit(cls, data: ForecastExperiment | pd.DataFrame | str | Path | None = None, out_dir: str | Path | None = None,
            resume: bool = False, *, experiment: ForecastExperiment | None = None, evaluate: bool = True,
            **overrides: Any) -> Forecaster:
        """Train on a series; returns the forecaster with the best epoch's weights (in memory, on the CPU).

        Args:
            data: the series: a DataFrame (a date column, or a DatetimeIndex, and value columns) or a
                CSV path; or a ``ForecastExperiment`` whose data section names the file (the form
                ``rnnkit train`` uses). None: the file of ``experiment`` / the keywords.
            out_dir: where ``best/``, ``last/``, ``metrics.jsonl`` and ``backtest.json``/``.txt`` go;
                None (default) writes nothing.
            resume: continue from ``out_dir/last``.
            experiment: the config the keywords start from (default ``ForecastExperiment()``: an
                LSTM of 32 units, lookback 24, horizon 12, the last 20% as test, 100 epochs).
            evaluate: backtest the best model on the test part beside the baselines (per series with
                ``id_column``), into
                ``results`` and ``backtests`` (rank 0).
            **overrides: config fields by name: ``target="y"`` (or ``target_columns=[...]``),
                ``date_column="Month"``, ``id_column="unique_id"`` (a long-format frame of many
                series, one global model), ``static_covariates=["category"]``, ``horizon=12``,
                ``lookback=24``, ``test=48``, ``cell="gru"``,
                ``epochs=50``, ``output="gaussian"``, ``season=12``, ...; dotted
                (``**{"forecast.strategy": "recursive"}``) or a section as a dict
                (``model={"hidden_size": 64}``). A string for a list field is one column.

        Returns:
            The trained Forecaster; ``predict()`` forecasts after the series' end.

        Raises:
            TypeError: an unknown keyword (with the close valid ones), a wrong type of data.
            ValueError: a wrong config value naming its key; a series too short for lookback + horizon.

        Example::

            fc = Forecaster.fit(df, target="y", horizon=12, lookback=24, epochs=50)
            fc.predict()   # DataFrame of the next 12 steps
        """
        experiment, data = cls._split_experiment(data, experiment)
        frame = None
        if isinstance(data, (str, Path)):
            overrides["data.path"] = str(data)
        elif isinstance(data, pd.DataFrame):
            frame = data
        elif data is not None:
            raise TypeError(f"data: expected a ForecastExperiment, a DataFrame or a CSV path, "
                            f"got {type(data).__name__}")
        experiment = cls._experiment(experiment, overrides)
        return cls._fit_experiment(experiment, {"frame": frame, "evaluate": evaluate}, out_dir, resume)

    @classmethod
    def _read_data(cls, experiment: ForecastExperiment, given: dict | None) -> tuple[ForecastExperiment, dict]:
        given = given or {"frame": None, "evaluate": True}
        cfg = experiment.data
        if not cfg.target_columns:
            raise ValueError("data.target_columns: expected at least one column to forecast (target=), got none")
        if cfg.id_column:
            return cls._read_panel_data(experiment, given)
        series, categorical = cls._read_training(cfg, given["frame"])
        lookback, horizon = cfg.lookback, cfg.horizon
        if len(series) < lookback + horizon:
            raise ValueError(f"data: series of {len(series)} steps is shorter than lookback + horizon = "
                             f"{lookback} + {horizon} = {lookback + horizon}; shorten data.lookback or "
                             "data.horizon, or give a longer series")
        split = chronological_split(len(series), val=cfg.val, test=cfg.test)
        n_train = split.train.stop
        if n_train < lookback + horizon:
            raise ValueError(f"data: the training part ({n_train} of {len(series)} steps, after val={cfg.val} and "
                             f"test={cfg.test}) is shorter than lookback + horizon = {lookback + horizon}; shorten "
                             "data.lookback, data.horizon, data.val or data.test")

        y = _transform(series.target, cfg.transform, series.target_columns, series.index)
        scalers = {"target": _make_scaler(cfg.scaler),
                   "past": _make_scaler(cfg.scaler) if series.past_columns else None,
                   "future": _make_scaler(cfg.scaler) if series.future_columns else None}
        for role, values in (("target", y), ("past", series.past), ("future", series.future)):
            if scalers[role] is not None:
                scalers[role].fit(values[split.train])
        columns = {"date_column": cfg.date_column, "date_parts": list(cfg.date_parts),
                   "target": list(series.target_columns),
                   "past": list(cfg.past_covariates), "future": list(cfg.future_covariates),
                   "categorical": categorical, "future_all": list(series.future_columns),
                   "calendar": list(cfg.calendar),
                   "calendar_encoding": cfg.calendar_encoding, "freq": series.report.freq,
                   "transform": cfg.transform, "train_end": str(series.index[n_train - 1])}
        experiment = experiment.with_season(series.report.freq)
        model_fields = _Network(experiment, _sizes(columns)).model_fields()
        experiment = experiment.model_copy(update={"model": ModelConfig.from_dict(
            {**experiment.model.to_dict(), **model_fields}, "model")})
        return experiment, {"series": series, "split": split, "scalers": scalers, "columns": columns,
                            "evaluate": given["evaluate"]}

    @classmethod
    def _build(cls, experiment: ForecastExperiment, prepared: dict) -> Forecaster:
        fc = cls(cls._model(experiment), experiment, prepared["scalers"], prepared["columns"],
                 prepared.get("series_scalers"))
        if "panel" in prepared:
            fc.panel = prepared["panel"]
            fc.test_starts = {key: split.test.start for key, split in prepared["splits"].items()}
        else:
            fc.data, fc.test_start = prepared["series"], prepared["split"].test.start
        return fc

    @classmethod
    def _model(cls, experiment: ForecastExperiment) -> SequenceModel | Ensemble:
        """The network, or ``forecast.ensemble`` of them side by side."""
        size = experiment.forecast.ensemble
        return SequenceModel(experiment.model) if size == 1 else Ensemble(experiment.model, size)

    def _training(self, prepared: dict, rank: int, world_size: int) -> Training:
        cfg, horizon = self.experiment.data, self.experiment.data.horizon
        if "panel" in prepared:  # one global model: the windows of every series, each in its own scale
            parts = {"train": [], "val": []}
            for s in prepared["panel"].series:
                split = prepared["splits"][s.id]
                arrays = self._panel_arrays(s, fit_end=split.train.stop)
                for part, span in (("train", split.train), ("val", split.val)):
                    if span.stop - span.start >= horizon:
                        windows = self._windows(arrays, span, part, required=False)
                        if windows is not None:
                            parts[part].append(windows)
            if not parts["train"]:
                raise ValueError("data: no series has a training window with observed inputs and targets")
            train_set = tuple(torch.cat(t) for t in zip(*parts["train"]))
            val_set = tuple(torch.cat(t) for t in zip(*parts["val"])) if parts["val"] else None
        else:
            split = prepared["split"]
            arrays = self._arrays(prepared["series"], None, fit_end=split.train.stop)
            train_set = self._windows(arrays, split.train, "train")
            val_set = self._windows(arrays, split.val, "val") if split.val.stop > split.val.start else None
            if val_set is None and split.val.stop > split.val.start:
                logger.warning("data.val: the validation part holds no window; selecting the epoch by training loss")

        size = self.experiment.forecast.ensemble
        self.member_best = MemberBest(size) if size > 1 and val_set else None

        def loss_fn(net, batch, state):
            x, target = batch  # an ensemble's: each member's own batch, stacked on a first dimension
            logits, _ = net(x, per_member=True) if size > 1 else net(x)
            return self.net.loss(self.net.split_outputs(logits, horizon), target), None, target.shape[-3]

        def evaluate_fn(net):
            x, target = val_set
            logits, _ = net(x.to(next(net.parameters()).device))
            out, target = self.net.split_outputs(logits, horizon), target.to(logits.device)
            if self.member_best is None:
                return {"val_loss": self.net.loss(out, target).item()}
            return self.member_best.update(net, [self.net.loss(member, target).item() for member in out])

        seed, batch_size, (x_all, t_all) = self.experiment.train.seed, cfg.batch_size, train_set

        def batches(epoch: int) -> list[tuple[Tensor, Tensor]]:
            """Shuffled from the epoch's own seed; with several processes each takes its share of a batch. An
            ensemble's members each draw their own order (member 0 the single network's), so that they differ
            by the order of their data as well as by their initial weights, as if trained apart."""
            orders = [torch.randperm(len(x_all), generator=torch.Generator().manual_seed(
                seed * 100_003 + epoch + 1_000_003 * k)).split(batch_size) for k in range(size)]
            steps = [[i[rank::world_size] for i in step] for step in zip(*orders) if len(step[0]) >= world_size]
            if size == 1:
                return [(x_all[i], t_all[i]) for i, in steps]
            return [(torch.stack([x_all[i] for i in step]), torch.stack([t_all[i] for i in step])) for step in steps]

        splits = {"train": len(x_all), **({"valid": len(val_set[0])} if val_set else {})}
        count = len(prepared["panel"]) if "panel" in prepared else 1
        summary = {"unit": "windows", "splits": splits, "series": count * len(self.columns["target"]),
                   "batch_size": batch_size, "batches_per_epoch": len(batches(1))}
        return Training(loss_fn, batches, evaluate_fn if val_set else None, summary)

    def _finish(self, prepared: dict, trainer: Trainer, out_dir: Path | None) -> None:
        """Backtests of the best model on the test part; with an out_dir, backtest.json/.txt there."""
        horizon = self.experiment.data.horizon
        self.results = {"best_epoch": float(trainer.best_epoch or 0), "epochs": float(trainer.epoch)}
        fc = self.experiment.forecast
        if self.member_best is not None:  # each member's own best epoch, not the one they last shared
            self.member_best.restore(self.model)
        if fc.intervals == "conformal" or fc.combine_weight == "validation":
            out, actual = self._validation_forecasts(prepared)
            if fc.combine_weight == "validation":  # out["point"] is the network's alone until they are fitted
                self.net.weights = fit_weights(out["point"], out["statistical"], actual)
                out = self.net.combined(out, horizon)
                logger.info("forecast.combine_weight: the network's weight per step, fitted on the validation "
                            "span: %s", " ".join(f"{w:.2f}" for w in self.net.weights))
            if fc.intervals == "conformal":
                self.conformal = calibrate(out["point"] - actual)
        best = None if out_dir is None else out_dir / "best"
        if best is not None and best.exists() and (self.member_best is not None or fc.intervals == "conformal"
                                                   or fc.combine_weight == "validation"):
            # the checkpoint was written before the members' best epochs and the validation pass were known
            ck = load_checkpoint(best)
            save_checkpoint(best, self.model.state_dict(), ck.config, {**ck.extras, **self.extras()},
                            ck.trainer_state)
        splits = list(prepared["splits"].values()) if "panel" in prepared else [prepared["split"]]
        test_steps = min(split.test.stop - split.test.start for split in splits)
        if not prepared["evaluate"] or test_steps <= 0:
            return
        for h in self.experiment.evaluate.horizons or sorted({1, horizon}):
            if h > test_steps:
                warnings.warn(f"evaluate.horizons: no backtest at horizon {h}: the test part has only "
                              f"{test_steps} steps", stacklevel=2)
                continue
            bt = self.backtest(horizon=h)
            self.backtests[h] = bt
            for method, row in bt.metrics.iterrows():
                self.results.update({f"h{h}_{method}_{k}": float(v) for k, v in row.items() if not math.isnan(v)})
        if self.backtests:
            logger.info("test backtests:\n%s", format_tables(list(self.backtests.values())))
            if out_dir is not None:
                (out_dir / "backtest.json").write_text(
                    json.dumps({str(h): bt.to_dict() for h, bt in self.backtests.items()}, indent=2))
                (out_dir / "backtest.txt").write_text(format_tables(list(self.backtests.values())) + "\n")

    def _validation_forecasts(self, prepared: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The forecasts from every origin of the validation span (every series) in model space, and their
        observed actuals: ({"point", ...} and <float>[W, H, C], NaN where no actual was observed)."""
        horizon = self.experiment.data.horizon
        if "panel" in prepared:
            splits = prepared["splits"]
            series = [(self._panel_arrays(s, fit_end=splits[s.id].train.stop), splits[s.id].val)
                      for s in prepared["panel"].series]
        else:
            split = prepared["split"]
            series = [(self._arrays(prepared["series"], None, fit_end=split.train.stop), split.val)]
        outs, actuals = [], []
        for p, val in series:
            origins = np.arange(val.start, val.stop - horizon + 1, dtype=np.int64)
            if len(origins):
                outs.append(self._run(p, origins, horizon, None, model_space=True))
                actuals.append(_observed_targets(p, origins, horizon))
        if not outs:
            raise ValueError(f"data.val: the validation span is shorter than the horizon {horizon}; conformal "
                             "intervals and fitted combination weights need forecasts whose every step lies in it")
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, np.concatenate(actuals)

    @staticmethod
    def _read_training(cfg: ForecastDataConfig, frame: pd.DataFrame | None
                       ) -> tuple[SeriesData | Panel, dict[str, list[str]]]:
        """The training data, with the categories of its categorical covariates (one-hot in the data)."""
        if frame is None and cfg.competition:
            frame = competition_frame(cfg.competition, cfg.data_dir or None)
        if frame is None:
            if cfg.path:
                source: Any = cfg.path
            elif cfg.dataset and cfg.file:
                source = dataset_file(cfg.dataset, cfg.file, data_dir=cfg.data_dir or None)
            else:
                raise ValueError("data.path: expected a CSV file (or data.dataset and data.file, data.competition, "
                                 "or a DataFrame given to Forecaster.fit), got none")
            frame = _load_frame(source, cfg.date_column, cfg.reading(), cfg.date_parts, "data")
        else:
            frame = _load_frame(frame, cfg.date_column, parts=cfg.date_parts, arg="data")
        categorical = categories_of(frame, cfg.categorical)
        frame = encode_categories(frame, categorical, "data")
        past, future = expand(cfg.past_covariates, categorical), expand(cfg.future_covariates, categorical)
        if cfg.id_column:
            return read_panel(frame, cfg.id_column, cfg.date_column, cfg.target_columns, past, future,
                              cfg.static_covariates, missing=cfg.missing, freq=cfg.freq or None,
                              date_format=cfg.date_format or None, calendar=cfg.calendar,
                              calendar_encoding=cfg.calendar_encoding), categorical
        frame, future_rows = _trailing_future_rows(frame, cfg.date_column, cfg.target_columns)
        if len(future_rows):
            warnings.warn(f"data: ignored the last {len(future_rows)} rows, which have no target value", stacklevel=3)
        series = read_series(frame, cfg.date_column, cfg.target_columns, past, future,
                             missing=cfg.missing, freq=cfg.freq or None, date_format=cfg.date_format or None,
                             calendar=cfg.calendar, calendar_encoding=cfg.calendar_encoding)
        if series.report.duplicate_rows:
            used = {cfg.date_column, *cfg.target_columns, *cfg.past_covariates, *cfg.future_covariates}
            others = [c for c in frame.columns if c not in used and not pd.api.types.is_numeric_dtype(frame[c])]
            warnings.warn(f"data: {len(series.report.duplicate_timestamps)} timestamps occur more than once and "
                          f"their {series.report.duplicate_rows} extra rows were averaged into one series; a frame "
                          "of several series in long format needs data.id_column (id_column=), the column naming "
                          f"each series" + (f", e.g. one of {others}" if others else ""), stacklevel=3)
        return series, categorical

    def _windows(self, p: _Prepared, span: slice, part: str, required: bool = True) -> tuple[Tensor, Tensor] | None:
        """Training or validation tensors (x, target) of the windows whose horizon lies in ``span``;
        None where no window has observed values, unless ``required`` (then an error)."""
        cfg = self.experiment.data
        n_span = span.stop - span.start
        if part == "val" and n_span < cfg.horizon:
            logger.warning("data.val: the validation part (%d steps) is shorter than the horizon %d; no validation",
                           n_span, cfg.horizon)
            return None
        stride = cfg.stride if part == "train" else 1
        if not self.net.stat:  # a combining hybrid trains the network alone: no statistical forecasts needed
            p = dataclasses.replace(p, statistical=None)
        windows = make_windows(p.y, cfg.lookback, cfg.horizon, span=span, stride=stride, all_nan="drop")
        if len(windows) == 0:
            if not required:
                return None
            raise ValueError(f"data: every {part} window has an all-NaN input or target "
                             f"({windows.dropped} dropped); check the missing values of {list(self.columns['target'])}")
        b = _gather(p, windows.starts + cfg.lookback, cfg.lookback, cfg.horizon, True)
        x, ref = self.net.inputs(b, cfg.horizon)
        return x.contiguous(), self.net.targets(b, ref).contiguous()

    # ------------------------------------------------------------------------ checkpoint
    def extras(self) -> dict[str, Any]:
        out = {"scaler": {role: (s.to_dict() if s is not None else None) for role, s in self.scalers.items()},
               "columns": self.columns}
        if self.conformal is not None:
            out["conformal"] = self.conformal
        if self.net.weights is not None:
            out["combine_weights"] = [float(w) for w in self.net.weights]
        if self.series_scalers:
            out["series_scalers"] = {key: {role: (s.to_dict() if s is not None else None) for role, s in roles.items()}
                                     for key, roles in self.series_scalers.items()}
        return out

    @classmethod
    def from_parts(cls, model: SequenceModel | Ensemble, experiment: ForecastExperiment, extras: dict) -> Forecaster:
        for name in ("scaler", "columns"):
            if name not in extras:
                raise ValueError(f"checkpoint: expected {name}.json beside the model, found none")
        def read(states: dict) -> dict[str, Scaler | None]:
            return {role: (Scaler.from_dict(state) if state is not None else None) for role, state in states.items()}

        series_scalers = {key: read(states) for key, states in extras.get("series_scalers", {}).items()}
        fc = cls(model, experiment, read(extras["scaler"]), extras["columns"], series_scalers)
        fc.conformal = extras.get("conformal")
        if extras.get("combine_weights") is not None:
            fc.net.weights = np.asarray(extras["combine_weights"], dtype=np.float64)
        return fc

    # ----------------------------------------------------------------------- preparation
    def _arrays(self, series: SeriesData | PanelSeries, future_cov: np.ndarray | None,
                scalers: dict[str, Scaler | None] | None = None, static: np.ndarray | None = None,
                fit_end: int | None = None) -> _Prepared:
        """A cleaned series (and the raw future covariates past its end, <float>[ahead, Fc]) in model space;
        ``scalers`` default to the forecaster's; ``static``: the one-hot categories, appended at every step;
        ``fit_end``: a hybrid's statistical model is fitted on the steps before it (default: all)."""
        scalers = self.scalers if scalers is None else scalers
        y = _transform(series.target, self.columns["transform"], self.columns["target"], series.index)
        statistical = self._statistical(series, y, len(series) if fit_end is None else fit_end, scalers["target"])
        y = _scale(scalers["target"], y)
        past = _scale(scalers["past"], series.past)
        fut = series.future
        ahead = 0
        if future_cov is not None:
            fut, ahead = np.concatenate([fut, future_cov], axis=0), len(future_cov)
        fut = _scale(scalers["future"], fut)
        if static is not None and static.size:
            fut = np.concatenate([fut, np.tile(static, (len(fut), 1))], axis=1)
        return _Prepared(series, y, past, fut, ahead, scalers, statistical)

    def _statistical(self, series: SeriesData | PanelSeries, y: np.ndarray, fit_end: int,
                     scaler: Scaler | None) -> Callable[[np.ndarray, int], np.ndarray] | None:
        """A hybrid's reference: its statistical model fitted on the first ``fit_end`` steps of the
        transformed targets ``y`` (or of the data's, ``forecast.statistical_space``) run over the
        series; None for other forecasters."""
        fc, kind = self.experiment.forecast, self.columns["transform"]
        name = fc.statistical()
        if not name:
            return None
        if fc.statistical_space == "data":
            values = series.target
            def to_model(v: np.ndarray) -> np.ndarray:
                return _scale(scaler, transformed(v, kind, self.columns["target"]))
        else:
            values = y
            def to_model(v: np.ndarray) -> np.ndarray:
                return _scale(scaler, v)
        return statistical_fit(name, self.experiment.evaluate.season, values[:fit_end]).reference(values, to_model)

    def _freq(self, freq: str | None) -> str | None:
        """The frequency of new data: the trained one, or ``freq`` where training had none (irregular dates)."""
        trained = self.columns.get("freq")
        if freq is None:
            return trained
        try:
            offset = pd.tseries.frequencies.to_offset(freq)
        except ValueError:
            raise ValueError(f"freq: expected a pandas frequency such as 'D', 'MS' or 'h', got {freq!r}") from None
        if trained and pd.tseries.frequencies.to_offset(trained) != offset:
            raise ValueError(f"freq: this model was trained on {trained!r} steps, got {freq!r}")
        return offset.freqstr

    def _read_history(self, df: Any, extra_columns: str, freq: str | None = None) -> tuple[SeriesData, pd.DataFrame]:
        """A new history (DataFrame or CSV path) checked against the trained columns: (series, future rows);
        ``freq``: the grid to put it on (default: the trained frequency)."""
        if extra_columns not in ("error", "ignore"):
            raise ValueError(f"extra_columns: expected 'error' or 'ignore', got {extra_columns!r}")
        cols = self.columns
        frame = _load_frame(df, cols["date_column"], parts=cols.get("date_parts", ()))
        self._check_columns(frame, "df", extra_columns, with_targets=True)
        frame, future_rows = _trailing_future_rows(frame, cols["date_column"], cols["target"])
        if len(future_rows) and not cols["future"]:
            warnings.warn(f"df: ignored the last {len(future_rows)} rows, which have no target value (the model "
                          "has no future covariates to read from them)", stacklevel=4)
            future_rows = future_rows.iloc[:0]
        categorical = cols.get("categorical", {})
        frame = encode_categories(frame, categorical, "df")
        series = read_series(frame, cols["date_column"], cols["target"], expand(cols["past"], categorical),
                             expand(cols["future"], categorical), missing=self.experiment.data.missing,
                             freq=freq or cols["freq"] or None,
                             date_format=self.experiment.data.date_format or None, calendar=cols["calendar"],
                             calendar_encoding=cols["calendar_encoding"])
        if freq and not cols["freq"] and series.report.gaps_filled:
            warnings.warn(f"freq: the model was trained on irregular dates, one row a step; on the {freq!r} grid "
                          f"{series.report.gaps_filled} of {len(series)} steps were filled "
                          f"(data.missing = {self.experiment.data.missing!r}) and the lookback of "
                          f"{self.experiment.data.lookback} steps spans {self.experiment.data.lookback} x {freq!r}",
                          stacklevel=4)
        return series, future_rows

    def _check_columns(self, frame: pd.DataFrame, arg: str, extra_columns: str, with_targets: bool) -> None:
        cols = self.columns
        date = cols["date_column"]
        if date not in frame.columns:
            raise ValueError(f"{arg}: date column {date!r} is missing; got columns {[str(c) for c in frame.columns]}")
        roles = {"target": cols["target"] if with_targets else [],
                 "past covariate": cols["past"] if with_targets else [], "future covariate": cols["future"]}
        for role, names in roles.items():
            missing = [n for n in names if n not in frame.columns]
            if missing:
                raise ValueError(f"{arg}: the model was trained with {role} columns {names}; missing {missing}")
        known = {date, *cols["target"], *cols["past"], *cols["future"]}
        extra = [str(c) for c in frame.columns if c not in known]
        if extra and extra_columns == "error":
            raise ValueError(
                f"{arg}: columns {extra} were not used in training; this model was trained with targets "
                f"{cols['target']}, past covariates {cols['past']} and future covariates {cols['future']}"
                f"{' (+ calendar ' + str(cols['calendar']) + ')' if cols['calendar'] else ''}, and will not forecast "
                "with covariates it was not trained with. Drop those columns (or pass extra_columns='ignore' "
                "if they are not covariates)")

    def _future_covariates(self, series: SeriesData, future_rows: pd.DataFrame, future: Any, steps: int,
                           extra_columns: str, freq: str | None = None) -> np.ndarray:
        """<float64>[steps, Fc] of the steps after the history: the data's future covariates from
        ``future`` (or the history's trailing rows) and the calendar features of the future dates."""
        cols = self.columns
        if not cols["future_all"]:
            if future is not None:
                frame = _load_frame(future, cols["date_column"], parts=cols.get("date_parts", ()), arg="future")
                extra = [str(c) for c in frame.columns if c != cols["date_column"]]
                raise ValueError(f"future: this model was trained without future covariates and will not forecast "
                                 f"with covariates it was not trained with; got {extra}")
            return np.zeros((steps, 0))
        index = _future_index(series.index[-1], steps, freq or cols["freq"])
        parts = []
        if cols["future"]:
            if future is not None:
                if len(future_rows):
                    raise ValueError("future: the history already ends with rows of future covariates; give them "
                                     "one way, not both")
                rows = _load_frame(future, cols["date_column"], parts=cols.get("date_parts", ()), arg="future")
                self._check_columns(rows, "future", extra_columns, with_targets=False)
            else:
                rows = future_rows
            names = expand(cols["future"], cols.get("categorical", {}))
            rows = encode_categories(rows, cols.get("categorical", {}), "future")
            if not len(rows):
                rows = pd.DataFrame({cols["date_column"]: pd.to_datetime([]), **{c: [] for c in names}})
            have = pd.DataFrame(rows[names].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64),
                                index=pd.to_datetime(rows[cols["date_column"]], errors="coerce"), columns=names)
            got = have.reindex(index)
            lacking = got.isna().any(axis=1).to_numpy()
            if lacking.any():
                first = index[int(np.argmax(lacking))]
                raise ValueError(
                    f"future: expected the future covariates {cols['future']} for the {steps} steps after "
                    f"{date_text(series.index[-1])} ({date_text(index[0])} .. {date_text(index[-1])}), as rows "
                    f"after the last target value or as future= (rnnkit forecast --future FILE); missing or not "
                    f"numeric from {date_text(first)} ({int(lacking.sum())} of {steps} steps)")
            parts.append(got.to_numpy())
        if cols["calendar"]:
            parts.append(calendar_features(index, cols["calendar"], cols["calendar_encoding"]).to_numpy())
        return np.concatenate(parts, axis=1)

    def _prepare(self, df: Any, future: Any, horizon: int, extra_columns: str, freq: str | None = None) -> _Prepared:
        if df is None:
            if self.data is None:
                raise ValueError("df: this Forecaster was loaded from a checkpoint and holds no series; pass the "
                                 "history to forecast from (a DataFrame or a CSV path)")
            series, future_rows = self.data, pd.DataFrame()
        else:
            series, future_rows = self._read_history(df, extra_columns, freq)
        return self._arrays(series, self._future_covariates(series, future_rows, future, horizon, extra_columns, freq))

    def _horizon(self, horizon: int | None) -> int:
        trained = self.experiment.data.horizon
        if horizon is None:
            return trained
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon: expected an integer >= 1, got {horizon!r}")
        if horizon > trained and self.net.layout != "recursive":
            raise ValueError(f"horizon: a direct model forecasts at most the {trained} steps it was trained for "
                             f"(data.horizon), got {horizon}; retrain with a longer horizon or strategy='recursive'")
        return int(horizon)

    def _level(self, level: float | None) -> float | None:
        fc = self.experiment.forecast
        if fc.intervals == "conformal":  # any level: the scores give every quantile
            level = fc.level if level is None else level
            if not 0 < level < 1:
                raise ValueError(f"level: expected a probability in (0, 1), got {level}")
            return float(level)
        if fc.output == "point":
            if level is not None:
                raise ValueError(f"level: a point forecaster has no intervals (forecast.output='point'), got {level}")
            return None
        if fc.output == "quantile":
            fixed = fc.quantiles[-1] - fc.quantiles[0]
            if level is not None and not math.isclose(level, fixed):
                raise ValueError(f"level: a quantile model's interval is fixed by forecast.quantiles {fc.quantiles} "
                                 f"(level {fixed:g}), got {level}")
            return fixed
        level = fc.level if level is None else level
        if not 0 < level < 1:
            raise ValueError(f"level: expected a probability in (0, 1), got {level}")
        return float(level)

    # -------------------------------------------------------------------------- forecast
    def _run(self, p: _Prepared, origins: np.ndarray, horizon: int, level: float | None,
             batch: int = 1024, model_space: bool = False, backtest: bool = False) -> dict[str, np.ndarray]:
        """Forecasts from each origin in the data's units (``model_space``: transformed and scaled, as the
        network sees them): {"point", "lower", "upper", "quantiles"}; conformal intervals when calibrated,
        recalibrated at each origin where ``backtest`` (``forecast.recalibrate``)."""
        lookback = self.experiment.data.lookback
        if origins.size and origins.min() < lookback:
            raise ValueError(f"df: series of {origins.min()} steps before the first forecast origin is shorter "
                             f"than the lookback {lookback}")
        parts: list[dict[str, np.ndarray]] = []
        for i in range(0, len(origins), batch):
            b = _gather(p, origins[i:i + batch], lookback, horizon, False)
            empty = np.isnan(b.y_in).all(axis=(1, 2))
            if empty.any():
                at = date_text(p.data.index[int(origins[i + int(np.argmax(empty))]) - 1])
                raise ValueError(f"df: the {lookback} lookback steps up to {at} have no target value (all NaN); "
                                 "cannot forecast from them")
            parts.append(self.net.forecast(self.model, b, horizon, level if level is not None else 0.8))
        out = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        if model_space:
            return out
        if self.conformal is not None and level is not None:
            if backtest and self.experiment.forecast.recalibrate:
                width = recalibrated(self.conformal, out["point"] - _observed_targets(p, origins, horizon), origins,
                                     level, self.experiment.forecast.conformal_decay,
                                     self.experiment.forecast.conformal_adapt)
            else:
                width = halfwidth(self.conformal, level, horizon)[None]
            if np.isinf(width).any():
                scores = int(np.min(self.conformal["count"]))
                warnings.warn(f"level: {level:g} needs at least {fewest_scores(level)} calibration "
                              f"errors a step for a bounded conformal interval, the validation span gave {scores}: "
                              "the interval is unbounded (inf) where they fall short; lower the level or lengthen "
                              "data.val", stacklevel=3)
            width = width.astype(np.float32)
            out["lower"], out["upper"] = out["point"] - width, out["point"] + width
        scaler, kind = p.scalers["target"], self.columns["transform"]

        def back(v: np.ndarray) -> np.ndarray:
            v = v.astype(np.float64)
            if scaler is not None:
                v = scaler.inverse_transform(v)
            return _untransform(v, kind)

        result = {k: back(v) for k, v in out.items() if k != "quantiles"}
        if "quantiles" in out:
            result["quantiles"] = back(np.moveaxis(out["quantiles"], -1, -2)).swapaxes(-1, -2)
        return result

    def predict(self, horizon: int | None = None, df: Any = None, future: Any = None, level: float | None = None,
                extra_columns: str = "error", freq: str | None = None) -> pd.DataFrame:
        """Forecast ``horizon`` steps (default: the trained horizon) after the end of the series.

        df: the history to forecast from (a DataFrame or CSV path with the trained columns); default:
            the series given to ``fit``. Rows after the last target value may carry the future
            covariates of the horizon.
        future: the future covariates of the horizon (DataFrame with the date column), instead; with
            many series a long frame (or CSV path) with the id and time columns, the only way to give them.
        level: interval probability (gaussian output; default ``forecast.level``).
        extra_columns: "error" (default) refuses columns the model was not trained with; "ignore".
        freq: the dates' frequency ('D', 'MS', 'h') where the training dates were too irregular to
            infer one: ``df`` is put on that grid and the forecast dated by it.

        Returns a DataFrame indexed by the forecast dates: one column per target, and
        ``<target>_lower`` / ``<target>_upper`` (and ``<target>_q<level>`` for quantile output) when
        the forecaster is probabilistic. With many series (``data.id_column``): a long frame with
        the id and time columns, one block of rows per series (``df``: a long frame like fit's).
        """
        return self._predict_with_history(horizon, df, future, level, extra_columns, freq)[0]

    def _predict_with_history(self, horizon: int | None, df: Any, future: Any, level: float | None,
                              extra_columns: str, freq: str | None) -> tuple[pd.DataFrame, SeriesData | None]:
        """``predict``'s frame and the history it read (None for many series): what a plot of the
        forecast needs, without reading the input again."""
        horizon, level, freq = self._horizon(horizon), self._level(level), self._freq(freq)
        if self.columns.get("id_column"):
            return self._predict_panel(horizon, df, future, level), None
        p = self._prepare(df, future, horizon, extra_columns, freq)
        series = p.data
        out = self._run(p, np.array([len(series)]), horizon, level)
        index = _future_index(series.index[-1], horizon, freq) if freq else \
            pd.RangeIndex(len(series), len(series) + horizon)
        index.name = self.columns["date_column"]
        frame = {}
        for c, name in enumerate(self.columns["target"]):
            frame[name] = out["point"][0, :, c]
            if "lower" in out:
                frame[f"{name}_lower"], frame[f"{name}_upper"] = out["lower"][0, :, c], out["upper"][0, :, c]
            if "quantiles" in out:
                for j, q in enumerate(self.experiment.forecast.quantiles):
                    frame[f"{name}_q{q:g}"] = out["quantiles"][0, :, c, j]
        return pd.DataFrame(frame, index=index), series

    # -------------------------------------------------------------------------- backtest
    def backtest(self, horizon: int | None = None, df: Any = None, start: int | None = None, stride: int | None = None,
                 level: float | None = None, baselines: bool = True, extra_columns: str = "error",
                 freq: str | None = None) -> ForecastBacktest:
        """Rolling-origin backtest: forecasts of ``horizon`` steps from origins ``start, start + stride, …``
        while the horizon lies in the series, scored beside naive, seasonal naive and the statistical
        baseline of ``experiment.evaluate``, which are fitted on the series before ``start``.

        df: the series (default: the one given to fit). start: the first origin (default: the start
        of the test part, ``data.test`` of the experiment). MASE is scaled by the season-m naive
        error on the series before ``start`` (m = ``evaluate.season``). Only observed values are
        scored: a gap filled for the inputs (``data.missing``) is no actual. freq: as ``predict``'s.
        """
        ev, cfg = self.experiment.evaluate, self.experiment.data
        horizon, level = self._horizon(horizon), self._level(level)
        stride = ev.stride if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
        if self.columns.get("id_column"):
            if start is not None:
                raise ValueError("start: with many series each backtest starts at its own series' test part "
                                 "(data.test); pass df with the series instead")
            return self._backtest_panel(horizon, df, stride, level, baselines)
        if df is None and self.data is None:
            raise ValueError("df: this Forecaster was loaded from a checkpoint and holds no series; pass the "
                             "series to backtest on")
        series = self.data if df is None else self._read_history(df, extra_columns, self._freq(freq))[0]
        n = len(series)
        if start is None:
            start = self.test_start if df is None and self.test_start is not None else \
                chronological_split(n, test=cfg.test).test.start
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
            raise TypeError(f"start: expected a step index (int), got {start!r}")
        if not cfg.lookback <= start <= n - horizon:
            raise ValueError(f"start: expected a first origin in [lookback, len - horizon] = [{cfg.lookback}, "
                             f"{n - horizon}] for a series of {n} steps, got {start}")
        # past the data end the direct "steps" layout needs no covariates (step h reads up to h),
        # so the arrays cover exactly the series
        p = self._arrays(series, None, fit_end=int(start))
        origins = np.arange(start, n - horizon + 1, stride, dtype=np.int64)
        # the baselines run on the filled series; only observed values are scored (a gap's filled value is no actual)
        truth, observed = series.target, np.where(series.target_mask, series.target, np.nan)
        actuals = np.stack([observed[o:o + horizon] for o in origins])
        seconds = {}
        t0 = _now()
        out = self._run(p, origins, horizon, level, backtest=True)
        seconds["model"] = _now() - t0
        runs = {"model": Backtest(origins, out["point"], actuals)}
        if "statistical" in out:  # a hybrid's statistical component alone
            runs[f"component_{self.experiment.forecast.statistical()}"] = Backtest(origins, out["statistical"], actuals)
        if baselines:
            baseline_runs, baseline_seconds = self._baseline_runs(truth, int(start), horizon, stride, actuals, df is None)
            runs.update(baseline_runs)
            seconds.update(baseline_seconds)
        train = observed[:start]
        rows = {name: score_forecast(bt.actuals, bt.forecasts, train, ev.season,
                              out.get("lower") if name == "model" else None,
                              out.get("upper") if name == "model" else None) for name, bt in runs.items()}
        metrics = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRICS))
        return ForecastBacktest(horizon, int(start), series.index[origins], tuple(self.columns["target"]), runs,
                                out.get("lower"), out.get("upper"), level, metrics, seconds)

    def _baseline_runs(self, truth: np.ndarray, start: int, horizon: int, stride: int, actuals: np.ndarray,
                       reuse: bool, series_id: Any = None) -> tuple[dict[str, Backtest], dict[str, float]]:
        """Each baseline fitted on ``truth[:start]`` (the filled series) and run from every origin,
        scored on ``actuals``; with ``reuse`` a fit is kept for the next backtest from the same start
        (of the same series) at another horizon. A baseline that cannot fit the series (e.g.
        Holt-Winters on too short or non-positive data) is skipped with a warning. Returns the runs
        and each baseline's seconds."""
        runs, seconds = {}, {}
        where = "" if series_id is None else f" on series {series_id}"
        for name, model in self._baselines().items():
            t0 = _now()
            key = (name, start) if series_id is None else (name, series_id, start)
            try:
                fitted = self._fitted_baselines.get(key) if reuse else None
                if fitted is None and name in STATISTICAL_MODELS:  # shared with a hybrid's component, seeds
                    shared = statistical_fit(name, self.experiment.evaluate.season, truth[:start])
                    if shared.fallback:
                        raise ValueError(shared.fallback)
                    fitted = shared.model
                if fitted is None:
                    fitted = model.fit(truth[:start])
                if reuse:
                    self._fitted_baselines[key] = fitted
                run = baseline_backtest(fitted.predict, truth, start, horizon, stride)
                runs[name] = Backtest(run.origins, run.forecasts, actuals)
            except ValueError as error:
                logger.warning("backtest: baseline %s skipped%s: %s", name, where, error)
                if series_id is None:
                    warnings.warn(f"backtest: baseline {name} skipped: {error}", stacklevel=3)
            seconds[name] = _now() - t0
        return runs, seconds

    def _baselines(self) -> dict[str, Any]:
        ev = self.experiment.evaluate
        models: dict[str, Any] = {"naive": Naive()}
        if ev.season > 1:
            models[f"seasonal_naive_{ev.season}"] = SeasonalNaive(ev.season)
        season = ev.season
        for name in ev.statistical:
            if name == "auto_ets":
                models[name] = AutoETS(season)
            elif name == "auto_arima":
                models[name] = AutoARIMA(season)
            elif name == "auto_theta":
                models[name] = AutoTheta(season)
            elif name == "holt_winters":
                seasonal = None if ev.hw_seasonal == "none" or season == 1 else ev.hw_seasonal
                trend = None if ev.hw_trend == "none" else ev.hw_trend
                models[name] = HoltWinters(trend=trend, seasonal=seasonal,
                                           damped_trend=ev.hw_damped and trend is not None,
                                           seasonal_periods=season if seasonal else None)
            else:
                models[name] = ARIMA(order=tuple(ev.arima_order), seasonal_order=tuple(ev.arima_seasonal_order))
        return models


def _observed_targets(p: _Prepared, origins: np.ndarray, horizon: int) -> np.ndarray:
    """<float64>[origins, horizon, C]: the model-space targets after each origin, NaN where not
    observed (a gap filled for the inputs is no actual to score or calibrate on)."""
    observed = np.where(p.data.target_mask, p.y, np.nan)
    return np.stack([observed[o:o + horizon] for o in origins])
