"""The command line's forecasting entry points: `rnnkit forecast` and `rnnkit backtest` write CSV,
JSON and PNG files from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...data.series import chronological_split, date_text
from .backtest import ForecastBacktest, PanelBacktest
from .task import Forecaster


# ------------------------------------------------------------------------- CLI entry points
SHOWN = 6  # origins whose forecasts a backtest plot draws
SERIES_SHOWN = 4  # series of a many-series backtest that get a plot each (the first ones)
def _load(checkpoint: str | Path) -> Forecaster:
    return Forecaster.load(checkpoint)


def forecast_to_files(checkpoint: str | Path, input: str | Path | pd.DataFrame, horizon: int | None = None,
                      out_prefix: str | Path = "forecast", future: str | Path | None = None, level: float | None = None,
                      extra_columns: str = "error", history_steps: int = 240, freq: str | None = None
                      ) -> dict[str, Any]:
    """`rnnkit forecast CHECKPOINT --input series.csv --horizon 12 --out forecast`: forecast after the
    input's end, write ``<out_prefix>.csv`` (date, forecast and intervals) and ``<out_prefix>.png``
    (``<out_prefix>_<target>.png`` for several targets: history, forecast, interval band).

    freq: the dates' frequency where the training dates had none (``Forecaster.predict``).
    Returns {"forecast": DataFrame, "csv": Path, "png": [Path, ...]}."""
    from ...plots import plot_forecast
    fc = _load(checkpoint)
    forecast, series = fc._predict_with_history(horizon, input, future, level, extra_columns, freq)
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv = prefix.with_name(prefix.name + ".csv")
    if series is None:  # many series: the long frame, no plot
        forecast.to_csv(csv, index=False)
        return {"forecast": forecast, "csv": csv, "png": []}
    forecast.to_csv(csv)
    pngs = []
    targets = fc.columns["target"]
    level_used = fc._level(level)
    tail = series.frame.iloc[-history_steps:]
    for name in targets:
        path = prefix.with_name(prefix.name + (f"_{name}" if len(targets) > 1 else "") + ".png")
        bounds = ({"lower": forecast[f"{name}_lower"], "upper": forecast[f"{name}_upper"],
                   "interval_label": f"{level_used:.0%} interval"} if f"{name}_lower" in forecast else {})
        pngs.append(plot_forecast(tail[name].to_numpy(), forecast[name].to_numpy(), path,
                                  history_index=tail.index, forecast_index=forecast.index,
                                  title=f"{name}: {len(forecast)}-step forecast after {date_text(series.index[-1])}",
                                  ylabel=_label(fc, name), **bounds))
    return {"forecast": forecast, "csv": csv, "png": pngs}


def _label(fc: Forecaster, name: str) -> str:
    """A target's axis label: its name and the units of ``data.units``."""
    units = fc.experiment.data.units
    return f"{name} ({units})" if units else name


def _plot_backtest(fc: Forecaster, series: Any, result: ForecastBacktest, prefix: Path) -> list[Path]:
    """``<prefix>.png`` (``<prefix>_<target>.png`` for several targets): the series, the forecasts from
    ``SHOWN`` origins spread over the backtest, their intervals."""
    from ...plots import plot_backtest
    targets, bt = result.target_columns, result.backtests["model"]
    observed = np.where(series.target_mask, series.target, np.nan)
    label = f"{result.level:.0%} interval" if result.level is not None else "interval"
    pngs = []
    for c, name in enumerate(targets):
        bands = {"lower": result.lower[:, :, c], "upper": result.upper[:, :, c]} if result.lower is not None else {}
        path = prefix.with_name(prefix.name + (f"_{name}" if len(targets) > 1 else "") + ".png")
        shown = f" ({SHOWN} shown)" if len(bt.origins) > SHOWN else ""
        pngs.append(plot_backtest(observed[:, c], bt.origins, bt.forecasts[:, :, c], path, index=series.index,
                                  show=SHOWN, interval_label=label, ylabel=_label(fc, name),
                                  title=f"{name}: {result.horizon}-step forecasts from {len(bt.origins)} "
                                        f"origins{shown}", **bands))
    return pngs


def _plot_panel_backtest(fc: Forecaster, panel: Any, result: PanelBacktest, prefix: Path) -> list[Path]:
    """``<prefix>_<id>.png`` (``<prefix>_<id>_<target>.png`` for several targets) for the first
    ``SERIES_SHOWN`` series: each series with the forecasts from up to ``SHOWN`` of its origins."""
    from ...plots import plot_backtest
    rows, targets = result.forecasts, result.target_columns
    label = f"{result.level:.0%} interval" if result.level is not None else "interval"
    pngs = []
    for s in panel.series[:SERIES_SHOWN]:
        observed = np.where(s.target_mask, s.target, np.nan)
        for c, name in enumerate(targets):
            mine = rows[(rows["series"] == s.id) & (rows["column"] == name)]
            grid = {k: mine.pivot(index="origin", columns="step", values=k) for k in ("forecast", "lower", "upper")
                    if k in mine}
            origins = s.index.get_indexer(grid["forecast"].index)
            bands = {k: grid[k].to_numpy() for k in ("lower", "upper") if k in grid}
            path = prefix.with_name(f"{prefix.name}_{s.id}" + (f"_{name}" if len(targets) > 1 else "") + ".png")
            shown = f" ({SHOWN} shown)" if len(origins) > SHOWN else ""
            pngs.append(plot_backtest(observed[:, c], origins, grid["forecast"].to_numpy(), path, index=s.index,
                                      show=SHOWN, interval_label=label, ylabel=_label(fc, name),
                                      title=f"series {s.id}, {name}: {result.horizon}-step forecasts from "
                                            f"{len(origins)} origins{shown}", **bands))
    return pngs


def backtest_to_files(checkpoint: str | Path, input: str | Path | pd.DataFrame, horizon: int | None = None,
                      start: int | None = None, test: int | float | None = None, stride: int | None = None,
                      level: float | None = None, out_prefix: str | Path | None = None,
                      extra_columns: str = "error", freq: str | None = None) -> ForecastBacktest:
    """`rnnkit backtest CHECKPOINT --input series.csv --horizon 12 [--test 48] [--out bt]`: rolling-origin
    backtest beside the baselines; with ``out_prefix`` writes ``<out_prefix>.json`` (metrics),
    ``<out_prefix>.csv`` (the model's forecasts per origin and step) and ``<out_prefix>.png`` (the
    forecasts from several origins over the series; with many series ``<out_prefix>_<id>.png`` for
    the first ``SERIES_SHOWN``). Print ``result.table()``.

    test: the test part (count or fraction) whose start is the first origin, when ``start`` is not given."""
    fc = _load(checkpoint)
    if test is not None and fc.columns.get("id_column"):
        if test != fc.experiment.data.test:
            raise ValueError(f"test: a model of many series backtests each series over its own last data.test = "
                             f"{fc.experiment.data.test} steps; another test part is not supported (got {test}): "
                             "leave it out")
        test = None
    if start is None and test is not None:
        series, _ = fc._read_history(input, extra_columns, fc._freq(freq))
        start = chronological_split(len(series), test=test).test.start
    result = fc.backtest(horizon, df=input, start=start, stride=stride, level=level, extra_columns=extra_columns,
                         freq=freq)
    if out_prefix is not None:
        prefix = Path(out_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_name(prefix.name + ".json").write_text(json.dumps(result.to_dict(), indent=2))
        result.frame().to_csv(prefix.with_name(prefix.name + ".csv"), index=False)
        if fc.columns.get("id_column"):
            _plot_panel_backtest(fc, fc._history_panel(input), result, prefix)
        else:
            _plot_backtest(fc, fc._read_history(input, extra_columns, fc._freq(freq))[0], result, prefix)
    return result
