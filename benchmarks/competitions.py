"""Forecasting competitions: one global rnnkit model per collection and frequency against statsforecast
models fitted per series, on the competitions' own hold-outs; prints mean MASE, mean sMAPE and fit times.

    OMP_NUM_THREADS=1 python benchmarks/competitions.py --data-dir ../shared/data --competition tourism \\
        --frequency monthly --series 60 --minutes 3

For each collection (tourism monthly, h = 24; tourism quarterly, h = 8; M3 monthly, h = 18; any other
``load_competition`` pair by ``--competition`` / ``--frequency``), the training parts and hold-outs are
joined and each series' last h steps held out (``data.test = h``), so the single forecast origin of each
series is the competition's. One global model trains on the windows of every series for ``--epochs``
or ``--minutes``, whichever ends first, or until the validation loss (the last h training steps of
each series long enough to spare them) stops improving: a GRU over log targets (log1p where a series has zeros), each
series standardised on its own training part, inputs taken relative to each window's last value and
targets to its seasonal-naive forecast (``--normalize``), the category one-hot when a collection has
more than one (``--no-category``: without it). Per series: seasonal naive, AutoETS, AutoARIMA and AutoTheta (statsforecast, season m
of the frequency) fitted on the training part. MASE is scaled by each series' in-sample seasonal-naive
error (m), sMAPE in percent; both averaged over series. ``--series N`` takes the first N series of the
file (a subset: its means are not the competition's). ``--seeds N`` trains N networks (seeds --seed,
--seed + 1, ...) and scores each and their ensemble, the mean of their forecasts (N-BEATS's recipe of
ensembling over seeds). Writes ``competitions.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnkit.data.competitions import FREQUENCIES, SEASON, load_competition  # noqa: E402
from rnnkit.tasks.forecasting import Forecaster, ForecastExperiment  # noqa: E402
from rnnkit.tasks.forecasting.backtest import score_forecast  # noqa: E402

DEFAULT = ("tourism/monthly", "tourism/quarterly", "m3/monthly")


def collections(competition: str, frequency: str) -> list[tuple[str, str]]:
    """The (competition, frequency) pairs to run: the defaults, filtered by the options."""
    if competition == "all" and frequency == "all":
        return [tuple(pair.split("/")) for pair in DEFAULT]
    names = [competition] if competition != "all" else ["tourism", "m3"]
    return [(name, freq) for name in names for freq in FREQUENCIES[name]
            if (frequency == "all" and f"{name}/{freq}" in DEFAULT) or freq == frequency]


def experiment(df: pd.DataFrame, train: pd.DataFrame, horizon: int, season: int,
               args: argparse.Namespace) -> ForecastExperiment:
    transform = "log" if (df["y"] > 0).all() else "log1p"  # tourism has zeros
    shortest = int(train.groupby("unique_id").size().min())
    lookback = max(season, min(3 * season, shortest - horizon, args.max_lookback))
    statics = ["category"] if args.category and train["category"].nunique() > 1 else []
    return ForecastExperiment.from_dict({
        "data": {"id_column": "unique_id", "date_column": "ds", "target_columns": ["y"], "static_covariates": statics,
                 "test": horizon, "val": horizon if args.validate else 0, "lookback": lookback, "horizon": horizon,
                 "transform": transform, "scaler": "standard", "batch_size": args.batch_size},
        "forecast": {"strategy": "direct", "output": "point",
                     "normalize": args.normalize if season > 1 or args.normalize != "seasonal" else "last",
                     "combine": args.combine, "combine_weight": args.combine_weight,
                     "statistical_space": args.statistical_space},
        "model": {"cell": "gru", "hidden_size": args.hidden, "num_layers": 1, "dropout": args.dropout},
        "train": {"epochs": args.epochs, "lr": args.lr, "max_minutes": args.minutes, "log_every": 10**9,
                  "seed": args.seed, "device": "cpu", "early_stop_patience": args.patience if args.validate else 0},
        "evaluate": {"season": season, "horizons": [horizon], "statistical": args.baselines.split(",")}})


def run(name: str, frequency: str, args: argparse.Namespace) -> dict:
    train, test = load_competition(name, frequency, data_dir=args.data_dir)
    if args.series:
        keep = train["unique_id"].drop_duplicates().iloc[:args.series]
        train, test = (part[part["unique_id"].isin(keep)] for part in (train, test))
    horizon = int(test.groupby("unique_id").size().iloc[0])
    season = SEASON[frequency]
    df = pd.concat([train, test]).sort_values(["unique_id", "ds"], kind="stable")
    exp = experiment(df, train, horizon, season, args)
    n = df["unique_id"].nunique()
    print(f"== {name} {frequency}: {n} series, h = {horizon}, m = {season}, lookback {exp.data.lookback}, "
          f"static {exp.data.static_covariates or 'none'}", flush=True)
    rows, members, epochs = [], [], []
    print(f"{'method':<20} {'MASE':>7} {'sMAPE':>7} {'seconds':>9}")
    for k in range(args.seeds):
        seed = args.seed + k
        member = exp.model_copy(update={"train": exp.train.model_copy(update={"seed": seed})})
        t0 = time.perf_counter()
        with open(os.devnull, "w") as devnull:  # the Trainer's epoch lines
            stderr, sys.stderr = sys.stderr, devnull
            try:
                fc = Forecaster.fit(df, experiment=member, evaluate=False)
            finally:
                sys.stderr = stderr
        fit_seconds = time.perf_counter() - t0
        bt = fc.backtest(horizon, baselines=k == 0)  # the baselines once: they do not depend on the seed
        members.append(bt.forecasts)
        epochs.append(fc.results.get("epochs", 0))
        seconds = {"model": fit_seconds + bt.seconds["model"], **{m: v for m, v in bt.seconds.items() if m != "model"}}
        for method, row in bt.metrics.iterrows():
            if method == "model":  # the first network is "model", the others "model seed S"
                key = f"model seed {seed}" if k else "model"
                label = f"rnnkit global ({epochs[-1]:.0f} ep)" + (f" seed {seed}" if args.seeds > 1 else "")
            elif k:
                continue  # the baselines and the component were printed with the first network
            else:
                key = label = method
            spent = seconds.get(method, float("nan"))  # a hybrid's component is timed with the model
            rows.append({"method": key, "MASE": row["MASE"], "sMAPE": row["sMAPE"], "seconds": spent})
            print(f"{label:<20} {row['MASE']:7.3f} {row['sMAPE']:7.2f} {spent:9.1f}", flush=True)
    if args.seeds > 1:
        mase, smape = ensemble_scores(members, train, season)
        rows.append({"method": f"ensemble of {args.seeds} seeds", "MASE": mase, "sMAPE": smape,
                     "seconds": sum(r["seconds"] for r in rows if r["method"].startswith("model"))})
        print(f"{'ensemble of ' + str(args.seeds) + ' seeds':<20} {mase:7.3f} {smape:7.2f}", flush=True)
    return {"series": n, "horizon": horizon, "season": season, "subset": bool(args.series),
            "epochs": epochs, "config": exp.to_dict(), "rows": rows}


def ensemble_scores(members: list[pd.DataFrame], train: pd.DataFrame, season: int) -> tuple[float, float]:
    """Mean MASE and sMAPE over series of the members' mean forecast (each member: a backtest's forecast
    rows), MASE scaled by each series' own training part, as the backtest scores a single model."""
    keys = ["series", "origin", "step", "column"]
    mean = pd.concat(members).groupby(keys, sort=False).agg(actual=("actual", "first"), forecast=("forecast", "mean"))
    history = {str(sid): y.to_numpy(np.float64) for sid, y in train.groupby("unique_id")["y"]}
    scores = [score_forecast(part["actual"].to_numpy()[None, :, None], part["forecast"].to_numpy()[None, :, None],
                             history[str(sid)][:, None], season)
              for sid, part in mean.groupby(level="series", sort=False)]
    return float(np.mean([x["MASE"] for x in scores])), float(np.mean([x["sMAPE"] for x in scores]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                        help="root holding m3/ and tourism/")
    parser.add_argument("--competition", default="all", choices=["all", "tourism", "m3"])
    parser.add_argument("--frequency", default="all", choices=["all", "monthly", "quarterly", "yearly", "other"])
    parser.add_argument("--series", type=int, default=0, help="the first N series of each collection (0: all)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget per collection")
    parser.add_argument("--epochs", type=int, default=100, help="most epochs per collection")
    parser.add_argument("--hidden", type=int, default=16, help="GRU units")
    parser.add_argument("--dropout", type=float, default=0.3, help="dropout before the output layer")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                        help="hold out the last h training steps of each series long enough as validation: the best "
                             "epoch by validation loss, early stop after --patience epochs without improvement")
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--category", action=argparse.BooleanOptionalAction, default=True,
                        help="the series' category as a static covariate, one-hot (where a collection has several); "
                             "--no-category for the same model without it")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-lookback", type=int, default=36)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="networks trained with seeds --seed, --seed + 1, ...; "
                                                             "with more than one, their ensemble (mean forecast) too")
    parser.add_argument("--baselines", default="auto_ets,auto_arima,auto_theta",
                        help="statistical baselines per series, comma-separated, or 'none' (naive and seasonal naive "
                             "always run)")
    parser.add_argument("--normalize", default="seasonal",
                        choices=["last", "mean", "seasonal", "auto_ets", "auto_arima", "auto_theta"],
                        help="window reference: the last value, or (seasonal) targets relative to the seasonal-naive "
                             "forecast (the last value where m = 1), or (auto_*) the hybrid: targets relative to that "
                             "statsforecast model's forecast, fitted per series on its log training part")
    parser.add_argument("--combine", default="none", type=lambda v: v.split(",") if "," in v else v,
                        help="the hybrid that averages the network's forecast with this statsforecast model's, fitted "
                             "per series: none, auto_ets, auto_arima, auto_theta, or several comma-separated (their "
                             "mean; forecast.combine)")
    parser.add_argument("--combine-weight", type=lambda v: v if v == "validation" else float(v), default=0.5,
                        help="the network's weight in --combine, or 'validation': per step from the validation "
                             "errors (forecast.combine_weight)")
    parser.add_argument("--statistical-space", default="data", choices=["data", "transformed"],
                        help="fit the hybrid's statistical model on the series' own units or on its log")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_competitions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pairs = collections(args.competition, args.frequency)
    if not pairs:
        parser.error(f"--competition {args.competition} has no --frequency {args.frequency}")
    report = {"torch": torch.__version__, "threads": 1, "series_option": args.series}
    for name, frequency in pairs:
        report[f"{name}/{frequency}"] = run(name, frequency, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "competitions.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out / 'competitions.json'}")


if __name__ == "__main__":
    main()
