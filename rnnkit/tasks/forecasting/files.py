"""The command line's forecasting entry points: `rnnkit forecast` and `rnnkit backtest` write CSV,
JSON and PNG files from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ...data.series import chronological_split
from .backtest import ForecastBacktest
from .task import Forecaster


# ------------------------------------------------------------------------- CLI entry points
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
    forecast = fc.predict(horizon, df=input, future=future, level=level, extra_columns=extra_columns, freq=freq)
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv = prefix.with_name(prefix.name + ".csv")
    if fc.columns.get("id_column"):  # many series: the long frame, no plot
        forecast.to_csv(csv, index=False)
        return {"forecast": forecast, "csv": csv, "png": []}
    series, _ = fc._read_history(input, extra_columns, fc._freq(freq))
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
                                  title=f"{name}: {len(forecast)}-step forecast from {series.index[-1].date()}",
                                  **bounds))
    return {"forecast": forecast, "csv": csv, "png": pngs}


def backtest_to_files(checkpoint: str | Path, input: str | Path | pd.DataFrame, horizon: int | None = None,
                      start: int | None = None, test: int | float | None = None, stride: int | None = None,
                      level: float | None = None, out_prefix: str | Path | None = None,
                      extra_columns: str = "error", freq: str | None = None) -> ForecastBacktest:
    """`rnnkit backtest CHECKPOINT --input series.csv --horizon 12 [--test 48] [--out bt]`: rolling-origin
    backtest beside the baselines; with ``out_prefix`` writes ``<out_prefix>.json`` (metrics) and
    ``<out_prefix>.csv`` (the model's forecasts per origin and step). Print ``result.table()``.

    test: the test part (count or fraction) whose start is the first origin, when ``start`` is not given."""
    fc = _load(checkpoint)
    if test is not None and fc.columns.get("id_column"):
        raise ValueError(f"test: a model of many series backtests each over its last data.test = "
                         f"{fc.experiment.data.test} steps; got test={test}")
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
    return result
