"""Competition loaders: long format, hold-out numbering, frequency filter, errors; counts on the real files."""

import json
from pathlib import Path

import pytest

from rnnkit.data.competitions import SEASON, load_competition

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _series(period: str, x: list, xx: list, kind: str = "MICRO") -> dict:
    return {"sn": ["?"], "st": ["1"], "n": [len(x)], "h": [len(xx)], "period": [period], "type": [kind],
            "description": [""], "x": x, "xx": xx}


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "m3").mkdir()
    (tmp_path / "m3" / "m3_data.json").write_text(json.dumps({
        "N1": _series("YEARLY", [1, 2, 3], [4, 5]),
        "N2": _series("MONTHLY", [10.5, 11, 12, 13], [14, 15, 16], "FINANCE"),
        "N3": _series("MONTHLY", [7, 8], [9, 9, 9], "MACRO")}))
    return tmp_path


def test_long_format_with_holdout_numbering(root):
    train, test = load_competition("m3", "monthly", data_dir=root)
    assert list(train.columns) == ["unique_id", "ds", "y", "category"]
    assert train.groupby("unique_id").size().to_dict() == {"N2": 4, "N3": 2}
    assert test.groupby("unique_id").size().to_dict() == {"N2": 3, "N3": 3}
    n2 = test[test.unique_id == "N2"]
    assert n2.ds.tolist() == [4, 5, 6] and n2.y.tolist() == [14.0, 15.0, 16.0]
    assert set(test[test.unique_id == "N3"].category) == {"MACRO"}
    assert train.y.dtype == "float64" and SEASON["monthly"] == 12


def test_errors_name_the_argument(root):
    with pytest.raises(ValueError, match=r"frequency: expected one of yearly, quarterly, monthly for tourism"):
        load_competition("tourism", "other", data_dir=root)
    with pytest.raises(ValueError, match=r"name: expected one of \['m3', 'tourism'\], got 'm4'"):
        load_competition("m4", "monthly")
    with pytest.raises(ValueError, match="no quarterly series"):
        load_competition("m3", "quarterly", data_dir=root)
    (root / "m3" / "m3_data.json").write_text(json.dumps({"N9": {"period": ["MONTHLY"]}}))
    with pytest.raises(ValueError, match=r"series 'N9': expected fields period, type, x, xx"):
        load_competition("m3", "monthly", data_dir=root)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data not found")
@pytest.mark.parametrize("name, frequency, series, h", [("tourism", "monthly", 366, 24),
                                                       ("tourism", "quarterly", 427, 8),
                                                       ("m3", "monthly", 1428, 18)])
def test_competition_counts(name, frequency, series, h):
    train, test = load_competition(name, frequency, data_dir=SHARED)
    assert train.unique_id.nunique() == series
    assert (test.groupby("unique_id").size() == h).all()


def test_benchmark_ensemble_of_seeds(tmp_path, monkeypatch):
    """benchmarks/competitions.py --seeds 2 scores each network and their ensemble: the mean forecast's
    absolute errors are at most the members' mean (per series, so the mean MASE is too)."""
    import math
    import subprocess
    import sys
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "m3").mkdir()
    waves = {f"N{k}": [100 + 10 * k + 5 * math.sin(2 * math.pi * t / 12) + t * (k % 3) + (t * 7919 + k) % 13 / 4
                     for t in range(90)] for k in range(6)}
    (tmp_path / "m3" / "m3_data.json").write_text(json.dumps(
        {name: _series("MONTHLY", y[:72], y[72:]) for name, y in waves.items()}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "competitions.py"
    subprocess.run([sys.executable, str(script), "--data-dir", str(tmp_path), "--competition", "m3", "--frequency",
                    "monthly", "--seeds", "2", "--epochs", "2", "--baselines", "none", "--out", str(tmp_path / "out")],
                   check=True, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "out" / "competitions.json").read_text())
    rows = {r["method"]: r for r in report["m3/monthly"]["rows"]}
    members = [rows["model"]["MASE"], rows["model seed 1"]["MASE"]]
    assert rows["model"]["MASE"] != rows["model seed 1"]["MASE"]  # two different networks
    assert rows["ensemble of 2 seeds"]["MASE"] <= sum(members) / 2 + 1e-9


def test_a_forecasting_config_reads_a_collection_and_backtests_its_holdout(root):
    import numpy as np

    from rnnkit.data.competitions import competition_frame
    from rnnkit.tasks.forecasting import Forecaster, ForecastExperiment
    frame = competition_frame("m3/monthly", data_dir=root)
    assert frame[frame.unique_id == "N2"].y.tolist() == [10.5, 11, 12, 13, 14, 15, 16]   # training part, hold-out
    rng = np.random.default_rng(0)
    series = {f"S{i}": rng.normal(100 + 10 * i, 5, 46).round(1).tolist() for i in range(4)}
    (root / "m3" / "m3_data.json").write_text(json.dumps(
        {key: _series("MONTHLY", y[:40], y[40:], "MICRO" if i % 2 else "MACRO") for i, (key, y) in
         enumerate(series.items())}))
    exp = ForecastExperiment.from_dict({
        "data": {"competition": "m3/monthly", "data_dir": str(root), "id_column": "unique_id", "date_column": "ds",
                 "target_columns": ["y"], "static_covariates": ["category"], "test": 6, "lookback": 12,
                 "horizon": 6},
        "model": {"hidden_size": 4}, "train": {"epochs": 1, "log_every": 10_000},
        "evaluate": {"season": 12, "statistical": "none", "horizons": [6]}})
    fc = Forecaster.fit(exp, out_dir=root / "run")
    bt = fc.backtests[6]
    rows = bt.forecasts   # one origin per series: its hold-out, forecast from its training part
    assert rows.groupby("series").origin.nunique().eq(1).all() and len(rows) == 4 * 6
    np.testing.assert_allclose(rows[rows.series == "S3"].actual, series["S3"][40:])
    # on the command line the collection's name stands for its frame
    from typer.testing import CliRunner

    from rnnkit.cli import app
    result = CliRunner().invoke(app, ["backtest", str(root / "run" / "best"), "--input", "m3/monthly",
                                      "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "4 series, 4 origins" in result.output
    with pytest.raises(ValueError, match=r"data.competition.*expected one of \[.*'m3/monthly'.*got 'm4/monthly'"):
        ForecastExperiment.from_dict({"data": {"competition": "m4/monthly"}})
