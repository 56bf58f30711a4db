"""Time-series forecasting: a recurrent encoder and a linear output layer, with covariates, scaling,
probabilistic outputs, rolling-origin backtests and statistical baselines (Darts / neuralforecast style).

    fc = Forecaster.fit(df, date_column="Month", target="Passengers", test=48, horizon=12, epochs=50)
    fc.predict()                  # DataFrame of the next 12 months (+ _lower/_upper when probabilistic)
    fc.backtest(horizon=12)       # rolling origins over the test span, beside naive, seasonal naive, HW
    fc.save("runs/airline/best"); Forecaster.load("runs/airline/best").predict(df=new_history)

Many series, one global model: a long-format frame (one row per series and step) with
``id_column`` (e.g. ``unique_id``), the time column (dates or integer steps) and the targets::

    fc = Forecaster.fit(df, id_column="unique_id", date_column="ds", target="y",
                        static_covariates=["category"], test=24, horizon=24, season=12)
    fc.backtests[24].metrics   # means over series; .series_metrics per series and method

Each series is split on its own (its last ``data.test`` steps), transformed and scaled by
scalers fitted on its own training part (kept per series id in the checkpoint); the windows of
all series train one network. Static categorical covariates are one-hot at every input step (the
input projection is then a learnt embedding of each category); the categories are kept with the
checkpoint. Backtests score each series (MASE by its own in-sample seasonal-naive error) and
average over series; ``predict`` returns a long frame (id, time, targets).

The data path: ``read_series`` (clean, sorted, numeric; calendar features) → transform ("log",
"log1p") → scalers fitted on the training part only → windows of ``lookback`` inputs and
``horizon`` targets → each window shifted by its reference level (``forecast.normalize``: the last
observed value, so that a trend beyond the training range stays in range; or per horizon step the
seasonal-naive forecast, plain or moved by the last season's change) → the network. Outputs
take the way back: + reference → inverse scaling → inverse transform. The split is chronological:
train | val | test, the test being the tail (``data.test``: a count of steps or a fraction).

Shapes: W windows, L lookback, H horizon, C targets, Pc past covariates (known up to the forecast
origin), Fc future covariates (known ahead: the data's ``future_covariates`` and calendar features),
K outputs per value (1 point, 2 Gaussian mean/spread, Q quantiles). The network input, per step:

    layout "last"   (direct, Fc = 0)  x <float>[W, L, C+Pc]            → last state → Linear → [W, H·C·K]
    layout "steps"  (direct, Fc > 0)  x <float>[W, L+H, C+Pc+Fc+1]     → per-step Linear, last H steps
    layout "recursive"                x <float>[W, L+H−1, C+Pc+Fc+1]   → per-step Linear, next value

"last" is the classic direct multi-output model: all H steps read off the final state at once.
With future covariates the sequence runs on over the H horizon steps, which carry the covariates,
a 0 target and a 0 flag (the last column: 1 where the target was observed); the outputs of those
steps are the forecast, still all at once, and step h depends only on covariates up to h.
"recursive" learns the next value at every step (teacher forcing; input step t holds y_t, the past
covariates while observed and the future covariates of step t+1) and feeds its own forecast back.

Probabilistic outputs: "gaussian" (mean and spread, trained by negative log-likelihood; interval
mean ± z·spread at ``forecast.level``; a recursive model samples ``forecast.samples`` paths) or
"quantile" (pinball loss on ``forecast.quantiles``; the interval spans the outer two). Intervals
are quantiles of the transformed series, and every step back (shift, scaling, exp) is monotone,
so they stay quantiles in the data's units; the point forecast of a log model is a median.

Hybrids (``statistical.py``): a statsforecast model fitted per series beside the network, either
averaged with its forecast (``forecast.combine``) or corrected by it (``forecast.normalize =
"auto_*"``); its forecasts alone are the backtests' ``component_<name>`` row.

Ensembles (``forecast.ensemble``): networks trained side by side from their own initial weights, each
on its own order of the windows and keeping its own best epoch
(``rnnkit.model.Ensemble``, whose output stacks the members' on a first dimension); the forecast is the
members' mean point, the mixture of their Gaussians (pooled sample paths when recursive), their mean
quantiles.
"""

from __future__ import annotations

from .backtest import METRICS, ForecastBacktest, PanelBacktest, format_metrics, format_tables, score_forecast
from .config import EvaluationConfig, ForecastConfig, ForecastDataConfig, ForecastExperiment
from .files import backtest_to_files, forecast_to_files
from .task import Forecaster

__all__ = ["ForecastDataConfig", "ForecastConfig", "EvaluationConfig", "ForecastExperiment", "Forecaster",
           "ForecastBacktest", "PanelBacktest", "forecast_to_files", "backtest_to_files", "format_tables",
           "format_metrics", "score_forecast", "METRICS"]
