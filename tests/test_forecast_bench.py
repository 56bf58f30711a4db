"""benchmarks/forecast.py's real covariate series: Victoria's half-hourly demand read from the registry's
``vic_elec`` file and summed into days, on a small file made here (the real one is downloaded on first use)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "forecast.py"


def test_electricity_frame_sums_half_hours_into_days(tmp_path):
    days = pd.date_range("2013-12-30", periods=3, freq="D")
    times = pd.date_range(days[0], periods=3 * 48, freq="30min")
    rng = np.random.default_rng(0)
    demand, temperature = rng.uniform(3000, 6000, len(times)), rng.uniform(10, 40, len(times))
    holiday = np.repeat([False, True, False], 48)
    (tmp_path / "vic_elec").mkdir()
    pd.DataFrame({"Time": times, "Demand": demand, "Temperature": temperature, "Date": times.date,
                  "Holiday": np.where(holiday, "TRUE", "FALSE")}).to_csv(tmp_path / "vic_elec" / "vic_elec.csv",
                                                                         index=False)
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('fb', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.electricity_frame(sys.argv[2]).to_json(orient='records'))")
    out = subprocess.run([sys.executable, "-c", code, str(SCRIPT), str(tmp_path)], capture_output=True, text=True,
                         check=True)
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["Date"] for r in rows] == [str(d.date()) for d in days]
    np.testing.assert_allclose([r["demand"] for r in rows], demand.reshape(3, 48).sum(axis=1) / 1000)
    np.testing.assert_allclose([r["temp_max"] for r in rows], temperature.reshape(3, 48).max(axis=1))
    assert [r["holiday"] for r in rows] == ["False", "True", "False"]
