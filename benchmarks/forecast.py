"""Forecasting quality against baselines and a published figure: prints the tables, writes JSON and PNGs.

    OMP_NUM_THREADS=1 python benchmarks/forecast.py --out runs/bench_forecast --data-dir ../shared/data

Three studies, each a rolling-origin backtest over a held-out test span (origins every step):

- airline: configs/airline.toml (last 48 months as test). Horizons 1 and 12. Reported: seed 0 (what
  ``rnnkit train`` on the config gives: itself an ensemble of ``forecast.ensemble`` networks), the
  mean ± sd over ``--seeds`` seeds, and the ensemble of those seeds (point: the mean of the members'
  forecasts; interval: the quantiles of the members' equal-weight Gaussian mixture in log space,
  a "deep ensemble"). Reference: the Keras LSTM tutorial's test RMSE of 47.5 (one step ahead, same
  48-month test span). Naive, seasonal naive (m = 12), statsforecast's AutoETS, AutoARIMA and
  AutoTheta (m = 12) and Holt-Winters (additive trend, multiplicative season) are fitted on the 96
  months before the test. ``--airline-validate``: the same on the validation span instead (months 73-96
  held out, trained on 1-72; no PNGs), to choose a setting without the test.
- sunspots: configs/sunspots.toml (last 20% as test), horizons 1 and 12, ``--sunspots-seeds`` seeds
  (one by default; with more, the table of seed 0, the mean ± sd and the ensemble as for airline); the
  statsforecast baselines with m = 12, fitted once.
- covariates: a generated daily series, 3 channels sharing an AR(1) factor, a weekend effect and a
  random known-future "promo" covariate; the same model with (promo + day-of-week calendar) and
  without covariates, 3 training seeds each; horizon 7; season 7.

- macro (``--only macro``): US unemployment (statsmodels' macrodata, quarterly 1959-2009), 1 and 4
  quarters ahead, with GDP growth, inflation and the T-bill rate as past covariates and without them,
  3 seeds each, the last 40 quarters held out; the statsforecast baselines (m = 4).

- electricity (``--only electricity``): Victoria's daily electricity demand (the registry's ``vic_elec``,
  2012-2014), 1 and 7 days ahead, with the day's highest temperature and the public-holiday flag
  (categorical) as known-future covariates and without them (the weekday a calendar feature of both),
  3 seeds each, 2014 held out; the statsforecast baselines (m = 7); electricity_2014.png (the first ten
  weeks of 2014, one day ahead, seed 0 with and without the covariates).

Writes into ``--out``: forecast.json (every table), airline_forecast.png (forecast of 1961 with its
80% interval, by ``forecast_to_files`` from a saved checkpoint, as `rnnkit forecast` does),
airline_test.png (the 1960 forecast from the end of 1959 against the actuals) and the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from statistics import NormalDist

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnkit.data.synthetic import covariate_series  # noqa: E402
from rnnkit.config import apply_overrides, load_toml  # noqa: E402
from rnnkit.plots import plot_forecast  # noqa: E402
from rnnkit.tasks.forecasting import (Forecaster, ForecastExperiment, forecast_to_files,  # noqa: E402
                                     format_metrics, score_forecast)
from rnnkit.tasks.forecasting.heads import gaussian_interval  # noqa: E402

KERAS_TUTORIAL_RMSE = 47.5


def experiment(name: str, data_dir: str, overrides: list[str]) -> ForecastExperiment:
    exp = load_toml(REPO / "configs" / name, ForecastExperiment)
    return apply_overrides(exp, [f"data.data_dir={json.dumps(data_dir)}", "train.log_every=100000", *overrides])


def quiet_fit(data, **kwargs) -> tuple[Forecaster, float]:
    """``Forecaster.fit(data, **kwargs)`` without the Trainer's per-epoch lines (stderr); (forecaster, seconds)."""
    t0 = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        saved, sys.stderr = sys.stderr, devnull
        try:
            fc = Forecaster.fit(data, **kwargs)
        finally:
            sys.stderr = saved
    return fc, time.perf_counter() - t0


def mixture_interval(lower: np.ndarray, upper: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles (1 ∓ level)/2 of the equal-weight mixture of the members' Gaussians in log space.

    lower, upper: <float>[members, ...] the members' central ``level`` intervals in the data's units,
    which are exp(mu ∓ z·sigma) for a log-transformed Gaussian forecaster."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    lo, hi = torch.from_numpy(np.log(lower)).double(), torch.from_numpy(np.log(upper)).double()
    low, high = gaussian_interval((lo + hi) / 2, (hi - lo) / (2 * z), level)
    return np.exp(low.numpy()), np.exp(high.numpy())


def table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index")


def json_table(frame: pd.DataFrame) -> dict:
    return {k: {m: (None if isinstance(v, float) and math.isnan(v) else v) for m, v in row.items()}
            for k, row in frame.to_dict(orient="index").items()}


def ensemble_table(members: list[Forecaster], h: int, label: str) -> pd.DataFrame:
    """Seed 0, the mean ± sd over the members, their ensemble (mean forecast; with Gaussian members the
    mixture's interval) and the first member's baseline rows, at horizon ``h``; printed."""
    bts = [m.backtests[h] for m in members]
    base, season = bts[0], members[0].experiment.evaluate.season
    rows = {"model (seed 0)": base.metrics.loc["model"].to_dict()}
    per_seed = pd.DataFrame([bt.metrics.loc["model"] for bt in bts])
    rows[f"model mean of {len(bts)} seeds"] = per_seed.mean().to_dict()
    rows[f"model sd over {len(bts)} seeds"] = per_seed.std(ddof=1).to_dict() if len(bts) > 1 else {}
    point = np.stack([bt.backtests["model"].forecasts for bt in bts]).mean(axis=0)
    lower, upper = (mixture_interval(np.stack([bt.lower for bt in bts]), np.stack([bt.upper for bt in bts]),
                                     base.level) if base.lower is not None else (None, None))
    train = members[0].data.target[:members[0].test_start]
    rows[f"ensemble of {len(bts)} seeds"] = score_forecast(base.backtests["model"].actuals, point, train, season,
                                                           lower, upper)
    for name in base.metrics.index[1:]:
        rows[name] = base.metrics.loc[name].to_dict()
    frame = table(rows)
    print(f"\n{label}, horizon {h}: {len(base.origin_dates)} origins {base.origin_dates[0].date()} .. "
          f"{base.origin_dates[-1].date()}; interval level {base.level}")
    print(format_metrics(frame))
    steps = base.coverage_by_step()
    if steps is not None:
        print("seed 0 interval coverage by step: " + " ".join(f"{v:.2f}" for v in steps))
        frame.attrs["coverage_by_step"] = [float(v) for v in steps]
    return frame


# ----------------------------------------------------------------------------------- airline
def airline(args, out: Path) -> dict:
    exp = experiment("airline.toml", args.data_dir, args.airline_set)
    data = None  # the config's file, whole
    if args.airline_validate:  # the 24 months before the test span as the test, trained on what precedes
        data = pd.read_csv(Path(args.data_dir) / exp.data.dataset / exp.data.file).iloc[:-exp.data.test]
        exp = apply_overrides(exp, ["data.test=24"])
    members, fit_seconds = [], []
    for seed in range(args.seeds):
        fc, seconds = quiet_fit(data, experiment=apply_overrides(exp, [f"train.seed={seed}"]))
        members.append(fc)
        fit_seconds.append(seconds)
        one, twelve = fc.backtests[1].metrics.loc["model"], fc.backtests[12].metrics.loc["model"]
        covered = (f"; {fc.backtests[1].level:.0%} coverage {one['coverage']:.3f} / {twelve['coverage']:.3f}"
                   if "coverage" in twelve else "")
        print(f"  airline seed {seed}: fit + backtests {seconds:.1f} s; 1-step RMSE {one['RMSE']:.2f}, 12-step "
              f"MASE {twelve['MASE']:.3f}{covered}", flush=True)
    results = {"config": exp.to_dict(), "fit_seconds": fit_seconds, "tables": {}}
    first = members[0]
    for h in (1, 12):
        frame = ensemble_table(members, h, "airline")
        results["tables"][f"h{h}"] = json_table(frame)
        results["tables"][f"h{h}"]["coverage_by_step (seed 0)"] = frame.attrs.get("coverage_by_step")
        if h == 1:
            print(f"reference: Keras LSTM tutorial test RMSE {KERAS_TUTORIAL_RMSE} (one step ahead)")
            results["keras_tutorial_rmse"] = KERAS_TUTORIAL_RMSE
    if args.airline_validate:
        return results

    # forecast PNGs: past the data (via the checkpoint, as `rnnkit forecast` does) and the 1960 test year
    checkpoint = first.save(out / "airline_checkpoint")
    csv = first.experiment.data
    source = Path(args.data_dir) / csv.dataset / csv.file
    files = forecast_to_files(checkpoint, source, horizon=12, out_prefix=out / "airline_forecast")
    print(f"\nairline forecast of 1961 (seed 0, from {checkpoint}):\n{files['forecast'].round(1).to_string()}")
    bt = first.backtests[12]
    k = int(np.flatnonzero(bt.origin_dates == pd.Timestamp("1960-01-01"))[0])
    origin = int(bt.backtests["model"].origins[k])
    history = first.data.frame.iloc[:origin]
    dates = first.data.index[origin:origin + 12]
    band = ({"lower": bt.lower[k, :, 0], "upper": bt.upper[k, :, 0], "interval_label": f"{bt.level:.0%} interval"}
            if bt.lower is not None else {})
    plot_forecast(history.iloc[:, 0].to_numpy(), bt.backtests["model"].forecasts[k, :, 0], out / "airline_test.png",
                  actual=bt.backtests["model"].actuals[k, :, 0], history_index=history.index, forecast_index=dates,
                  title="Airline passengers: 1960 forecast from Dec 1959 (seed 0) against the actuals", **band)
    results["pngs"] = [str(p) for p in files["png"]] + [str(out / "airline_test.png")]
    return results


# ---------------------------------------------------------------------------------- sunspots
def sunspots(args, out: Path) -> dict:
    exp = experiment("sunspots.toml", args.data_dir, args.sunspots_set)
    fc, seconds = quiet_fit(exp)
    baselines = {name: sum(bt.seconds.get(name, 0) for bt in fc.backtests.values()) for name in exp.evaluate.statistical}
    print(f"  sunspots: fit + backtests {seconds:.1f} s (model {fc.backtests[1].seconds['model']:.2f} s; fit and "
          "backtest of " + ", ".join(f"{k} {v:.1f} s" for k, v in baselines.items()) + ")")
    members, fit_seconds = [fc], [seconds]
    for seed in range(1, args.sunspots_seeds):  # the baselines once, with seed 0
        member, spent = quiet_fit(apply_overrides(exp, [f"train.seed={seed}", 'evaluate.statistical="none"']))
        members.append(member)
        fit_seconds.append(spent)
        print(f"  sunspots seed {seed}: fit + backtests {spent:.1f} s", flush=True)
    results = {"config": exp.to_dict(), "seconds": seconds, "fit_seconds": fit_seconds, "tables": {}}
    for h, bt in fc.backtests.items():
        if len(members) == 1:
            print(f"\n{bt.table()}")
            results["tables"][f"h{h}"] = bt.to_dict()
        else:
            results["tables"][f"h{h}"] = json_table(ensemble_table(members, h, "sunspots"))
    return results


# -------------------------------------------------------------------------------- covariates
def covariates(args, out: Path) -> dict:
    df = covariate_series(600)
    targets = ["y0", "y1", "y2"]
    base = ForecastExperiment.from_dict({
        "data": {"date_column": "date", "target_columns": targets, "lookback": 28, "horizon": 7, "test": 0.2,
                 "batch_size": 32},
        "model": {"cell": "gru", "hidden_size": 32},
        "train": {"epochs": 30, "lr": 3e-3, "log_every": 100000},
        "evaluate": {"season": 7, "horizons": [7], "statistical": ["auto_ets", "auto_arima", "auto_theta"]}})
    with_cov = apply_overrides(base, ['data.future_covariates=["promo"]', 'data.calendar=["day_of_week"]'])
    rows, seconds, bts = {}, {}, {}
    for label, exp, frame in (("with covariates", with_cov, df), ("without covariates", base, df.drop(columns="promo"))):
        scores = []
        t0 = time.perf_counter()
        for seed in range(3):
            fc, _ = quiet_fit(frame, experiment=apply_overrides(exp, [f"train.seed={seed}"]))
            bts[(label, seed)] = fc.backtests[7]
            scores.append(fc.backtests[7].metrics.loc["model"])
        seconds[label] = time.perf_counter() - t0
        rows[f"model {label} (mean of 3 seeds)"] = pd.DataFrame(scores).mean().to_dict()
    first = bts[("with covariates", 0)]
    for name in first.metrics.index[1:]:
        rows[name] = first.metrics.loc[name].to_dict()
    frame = table(rows)
    print(f"\ncovariates (generated, 3 channels, daily, {len(df)} steps), horizon 7: {len(first.origin_dates)} "
          f"origins {first.origin_dates[0].date()} .. {first.origin_dates[-1].date()}; fits+backtests "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    print(format_metrics(frame))
    return {"seconds": seconds, "table": {k: {m: (None if isinstance(v, float) and math.isnan(v) else v)
                                              for m, v in row.items()} for k, row in frame.to_dict(orient="index").items()}}


def covariate_tables(fits: dict[str, list[Forecaster]], horizons, label: str, note: str = "") -> dict:
    """Per horizon, the mean over seeds of each variant's model row (``fits``: variant label → members, the
    first variant's first member holding the baselines) beside those baselines; printed, JSON-ready."""
    tables = {}
    for h in horizons:
        rows = {f"model {variant} (mean of {len(fcs)} seeds)": pd.DataFrame(
            [fc.backtests[h].metrics.loc["model"] for fc in fcs]).mean().to_dict() for variant, fcs in fits.items()}
        first = next(iter(fits.values()))[0].backtests[h]
        rows.update({name: first.metrics.loc[name].to_dict() for name in first.metrics.index[1:]})
        frame = table(rows)
        print(f"\n{label}, horizon {h}: {len(first.origin_dates)} origins {first.origin_dates[0].date()} .. "
              f"{first.origin_dates[-1].date()}{note}")
        print(format_metrics(frame))
        tables[f"h{h}"] = json_table(frame)
    return tables


# ------------------------------------------------------------------------------------ macro
def macro_frame() -> pd.DataFrame:
    """US quarterly macro data (statsmodels.datasets.macrodata: 1959Q1-2009Q3, from the St. Louis Fed's
    FRED): unemployment rate and, as past covariates, annualised real GDP growth, inflation, T-bill rate."""
    import statsmodels.api as sm
    d = sm.datasets.macrodata.load_pandas().data
    quarter = pd.PeriodIndex.from_fields(year=d["year"].astype(int), quarter=d["quarter"].astype(int), freq="Q")
    return pd.DataFrame({"quarter": quarter.to_timestamp(), "unemp": d["unemp"],
                         "gdp_growth": 400 * np.log(d["realgdp"]).diff(), "infl": d["infl"],
                         "tbilrate": d["tbilrate"]}).iloc[1:].reset_index(drop=True)


def macro(args, out: Path) -> dict:
    """Unemployment 1 and 4 quarters ahead with and without past covariates, 3 seeds each: the last 40
    quarters held out (``--macro-validate``: the 40 before them instead, trained on what precedes)."""
    df = macro_frame()
    if args.macro_validate:
        df = df.iloc[:-40]
    covariates = ["gdp_growth", "infl", "tbilrate"]
    base = ForecastExperiment.from_dict({
        "data": {"date_column": "quarter", "target_columns": ["unemp"], "lookback": 12, "horizon": 4, "test": 40,
                 "batch_size": 16},
        "model": {"cell": "gru", "hidden_size": 16, "dropout": 0.2},
        "train": {"epochs": 60, "lr": 3e-3, "log_every": 100000},
        "evaluate": {"season": 4, "horizons": [1, 4], "statistical": ["auto_ets", "auto_arima", "auto_theta"]}})
    fits = {}
    for label, names in (("with covariates", covariates), ("without covariates", [])):
        exp = apply_overrides(base, [f"data.past_covariates={json.dumps(names)}"])
        fits[label] = [quiet_fit(df[["quarter", "unemp", *names]], experiment=apply_overrides(
            exp, [f"train.seed={seed}"] + ([] if names else ['evaluate.statistical="none"'])))[0] for seed in range(3)]
    return {"tables": covariate_tables(fits, (1, 4), "macro (unemployment)")}


# ------------------------------------------------------------------------------ electricity
def electricity_frame(data_dir: str) -> pd.DataFrame:
    """Victoria's daily electricity demand (GWh, the sum of the half-hours), the day's highest temperature in
    Melbourne (°C) and whether it is a public holiday ('True' / 'False'), 2012-2014, from the registry's
    ``vic_elec`` (downloaded into the cache when missing)."""
    from rnnkit.data import dataset_file
    half_hours = pd.read_csv(dataset_file("vic_elec", "vic_elec.csv", data_dir=data_dir, download=True))
    daily = half_hours.groupby("Date").agg(demand=("Demand", "sum"), temp_max=("Temperature", "max"),
                                           holiday=("Holiday", "first")).reset_index()
    return daily.assign(demand=daily["demand"] / 1000, holiday=daily["holiday"].astype(str))


def electricity(args, out: Path) -> dict:
    """Daily demand 1 and 7 days ahead, with the day's highest temperature (known ahead from a weather
    forecast; here the observed one) and the public-holiday flag (categorical) as known-future covariates
    and without them, the weekday a calendar feature of both, 3 seeds each: 2014 held out
    (``--electricity-validate``: 2013 instead, trained on 2012)."""
    df = electricity_frame(args.data_dir)
    if args.electricity_validate:
        df = df[df["Date"] < "2014-01-01"]
    base = ForecastExperiment.from_dict({
        "data": {"date_column": "Date", "target_columns": ["demand"], "units": "GWh", "lookback": 28, "horizon": 7,
                 "test": 365, "batch_size": 32, "calendar": ["day_of_week"]},
        "model": {"cell": "gru", "hidden_size": 32},
        "train": {"epochs": 30, "lr": 3e-3, "log_every": 100000},
        "evaluate": {"season": 7, "horizons": [1, 7], "statistical": ["auto_ets", "auto_arima", "auto_theta"]}})
    covariates = {"with covariates": ['data.future_covariates=["temp_max", "holiday"]', 'data.categorical=["holiday"]'],
                  "without covariates": ['evaluate.statistical="none"']}
    fits, seconds = {}, {}
    for label, overrides in covariates.items():
        t0 = time.perf_counter()
        fits[label] = [quiet_fit(df, experiment=apply_overrides(base, [*overrides, f"train.seed={seed}"]))[0]
                       for seed in range(3)]
        seconds[label] = time.perf_counter() - t0
    timing = "; fits+backtests of 3 seeds " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    results = {"tables": covariate_tables(fits, (1, 7), "electricity (Victoria, daily demand)", timing),
               "seconds": seconds}
    if not args.electricity_validate:
        results["pngs"] = [str(electricity_plot(df, fits, out / "electricity_2014.png"))]
    return results


def electricity_plot(df: pd.DataFrame, fits: dict[str, list[Forecaster]], path: Path) -> Path:
    """The first 10 weeks of the test year: demand, the one-day-ahead forecasts of seed 0 with and without
    the covariates, and the day's highest temperature below (matplotlib's Agg canvas, as rnnkit.plots)."""
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    runs = {label: fcs[0].backtests[1] for label, fcs in fits.items()}
    first = next(iter(runs.values()))
    days = first.origin_dates[:70]
    top.plot(days, first.backtests["model"].actuals[:70, 0, 0], color="black", lw=1.6, label="demand")
    for (label, bt), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        top.plot(days, bt.backtests["model"].forecasts[:70, 0, 0], color=color, lw=1.2, label=f"forecast {label}")
    top.set_ylabel("daily demand (GWh)")
    top.legend(loc="upper right", fontsize=8)
    top.set_title("Victoria's electricity demand, one day ahead (GRU, seed 0): with and without the covariates")
    temperature = df.set_index(pd.to_datetime(df["Date"]))["temp_max"].reindex(days)
    bottom.plot(days, temperature.to_numpy(), color="tab:red", lw=1.2)
    bottom.set_ylabel("max temp. (°C)")
    bottom.set_xlabel("date (2014)")
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_forecast")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--seeds", type=int, default=5, help="airline seeds (ensemble members)")
    parser.add_argument("--sunspots-seeds", type=int, default=1, help="sunspots seeds (ensemble members)")
    parser.add_argument("--only", default="airline,sunspots,covariates",
                        help="comma-separated studies (and macro, electricity)")
    parser.add_argument("--electricity-validate", action="store_true",
                        help="electricity: backtest 2013 instead of 2014, trained on 2012")
    parser.add_argument("--macro-validate", action="store_true",
                        help="macro: backtest the 40 quarters before the held-out last 40 instead")
    parser.add_argument("--airline-set", action="append", default=[], help="override for airline.toml, key=value")
    parser.add_argument("--airline-validate", action="store_true",
                        help="airline's validation span: months 73-96 as the test, trained on 1-72 (the 48 test "
                             "months unseen), for choosing a setting before it meets the test")
    parser.add_argument("--sunspots-set", action="append", default=[], help="override for sunspots.toml, key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    studies = {"airline": airline, "sunspots": sunspots, "covariates": covariates, "macro": macro,
              "electricity": electricity}
    report = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in args.only.split(","):
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        report[name] = studies[name](args, args.out)
        report[name]["wall_seconds"] = time.perf_counter() - t0
        print(f"== {name}: {report[name]['wall_seconds']:.1f} s wall\n", flush=True)
    path = args.out / "forecast.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
