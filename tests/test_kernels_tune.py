"""``rnnkit tune``: it times both candidates of each decision through the layers, keeps ours only where
it is never slower, and stores decisions the policy can read (``rnnkit.kernels.fused.tune``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rnnkit.kernels.fused import Policy, tune
from rnnkit.kernels.fused.policies import load_decisions

TINY = (tune.Decision("lstm_loops_inference", "LSTM inference", "lstm", ((2, 5, 3, 4),), False),
        tune.Decision("par_row_bytes", "split", "gru", ((8, 5, 3, 4),), True, alternative="quarter"))


def test_tune_times_both_candidates_and_stores_policy_fields(tmp_path):
    lines = []
    path = tmp_path / "cpu.json"
    result = tune.run(rounds=2, path=path, decisions=TINY, echo=lines.append)
    stored = json.loads(path.read_text())
    assert stored["version"] == 1 and stored["cpu"] == result["cpu"] and stored["seconds"] < 60
    assert set(stored["decisions"]) == {"lstm_loops_inference", "par_row_bytes"}
    Policy().with_decisions(stored["decisions"])  # every decision is a Policy field of its type
    assert load_decisions(path) == stored["decisions"]
    lstm, gru = stored["measurements"]
    assert [c["value"] for c in lstm["candidates"]] == [True, False]
    assert lstm["candidates"][1]["path"] == "onednn_lstm"  # the alternative to our loops: oneDNN's layer
    default = Policy.for_host(tune.Host.detect()).par_row_bytes
    assert [c["value"] for c in gru["candidates"]] == [default, default // 4]
    ratio = lstm["candidates"][0]["median_ms"] / lstm["candidates"][1]["median_ms"]
    assert stored["decisions"]["lstm_loops_inference"] == (ratio <= 1.0)
    assert any("lstm_loops_inference = " in line for line in lines) and "decisions saved to" in lines[-1]
    assert tune.run(rounds=1, path=False, decisions=TINY[:1], echo=lines.append)["decisions"]
    assert "not saved" in lines[-1]


def test_tune_command():
    env = dict(os.environ, RNNKIT_TUNE="0")
    out = subprocess.run([sys.executable, "-m", "rnnkit.cli", "tune", "--help"], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--rounds" in out.stdout and "--no-save" in out.stdout
    out = subprocess.run([sys.executable, "-m", "rnnkit.cli", "tune", "--rounds", "0", "--no-save"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "rounds: expected an integer >= 1, got 0" in out.stderr


def test_rounds_are_checked():
    with pytest.raises(ValueError, match="rounds: expected an integer >= 1, got 0"):
        tune.run(rounds=0, path=False)
