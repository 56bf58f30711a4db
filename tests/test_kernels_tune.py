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
        tune.Decision("lstm_loops_training", "LSTM training", "lstm", ((2, 5, 3, 4),), True))


def test_tune_times_both_candidates_and_stores_policy_fields(tmp_path):
    lines = []
    path = tmp_path / "cpu.json"
    result = tune.run(rounds=2, path=path, decisions=TINY, echo=lines.append)
    stored = json.loads(path.read_text())
    assert stored["version"] == 1 and stored["cpu"] == result["cpu"] and stored["seconds"] < 60
    assert set(stored["decisions"]) == {"lstm_loops_inference", "lstm_loops_training"}
    Policy().with_decisions(stored["decisions"])  # every decision is a Policy field of its type
    assert load_decisions(path) == stored["decisions"]
    lstm, training = stored["measurements"]
    assert [c["value"] for c in lstm["candidates"]] == [True, False]
    assert lstm["candidates"][1]["path"] == "onednn_lstm"  # the alternative to our loops: oneDNN's layer
    assert [c["path"] for c in training["candidates"]][1] == "onednn_lstm"
    ratio = lstm["candidates"][0]["median_ms"] / lstm["candidates"][1]["median_ms"]
    assert stored["decisions"]["lstm_loops_inference"] == (ratio <= 1.0)
    assert any("lstm_loops_inference = " in line for line in lines) and "decisions saved to" in lines[-1]
    assert tune.run(rounds=1, path=False, decisions=TINY[:1], echo=lines.append)["decisions"]
    assert "not saved" in lines[-1]


def test_given_fields_and_shapes_where_the_candidates_run_the_same_plan():
    """``given`` fields are set in both candidates; a shape where both run the same plan is not timed, and a
    decision with no timed shape is left to the host's default (not stored)."""
    base = Policy.for_host(tune.Host.detect())
    d = tune.Decision("loop_lstm_inference_max_weight", "split", "lstm", ((2, 5, 3, 4),), False, alternative=0,
                      given=(("lstm_loops_inference", True), ("onednn_lstm_min_macs", 0)))
    first, second = tune._candidates(d, base)
    assert first.lstm_loops_inference and second.lstm_loops_inference and first.onednn_lstm_min_macs == 0
    assert (first.loop_lstm_inference_max_weight, second.loop_lstm_inference_max_weight) == \
        (base.loop_lstm_inference_max_weight, 0)
    lines = []
    same = tune.Decision("par_row_bytes", "split", "gru", ((1, 5, 3, 4),), True, alternative="quarter")  # B=1
    assert [c.par_row_bytes for c in tune._candidates(same, base)] == [base.par_row_bytes, base.par_row_bytes // 4]
    result = tune.run(rounds=1, path=False, decisions=(same,), echo=lines.append)
    assert result["decisions"] == {} and result["measurements"] == []
    assert any("not timed" in line for line in lines) and any("not decided" in line for line in lines)


def test_every_decision_names_policy_fields_and_two_different_values():
    base = Policy.for_host(tune.Host.detect())
    for d in tune.DECISIONS:
        first, second = tune._candidates(d, base)  # given fields: replace() raises on an unknown name
        assert getattr(first, d.field) != getattr(second, d.field), d.field
        assert all(getattr(first, f) == getattr(second, f) == v for f, v in d.given), d.field


def test_keeps_the_first_candidate_only_if_faster_overall_and_never_slower_than_the_tie():
    assert tune.keeps_first([0.7, 1.02]) and tune.keeps_first([1.0])
    assert not tune.keeps_first([0.7, 1.05])  # slower than the bench's bar at one shape
    assert not tune.keeps_first([1.01, 1.02])  # within the tie everywhere, but slower overall


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
