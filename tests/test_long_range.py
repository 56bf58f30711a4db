"""The long-range experiments at small scale: gated cells learn the adding problem, a relu RNN
with spectral radius > 1 diverges without clipping and trains with it, and the CLI wiring."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rnnkit import long_range
from rnnkit.cli import app


def test_lstm_learns_short_adding_problem():
    result = long_range.train_synthetic("adding", "lstm", 10, minutes=1, eval_every=50, max_steps=400,
                                        hidden=32, lr=1e-2, target=0.01)
    assert result["baseline"] == pytest.approx(1 / 6)
    assert result["best_test_loss"] < 0.01 < result["curve"][0][1]
    assert result["steps"] <= 400


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_minimal_cells_learn_short_adding_problem(cell, tmp_path):
    result = long_range.train_synthetic("adding", cell, 10, minutes=1, eval_every=50, max_steps=1000,
                                        hidden=32, lr=1e-2, target=0.01)
    assert result["best_test_loss"] < 0.01 < result["curve"][0][1]
    with pytest.raises(ValueError, match=r"cells: expected names from .*'minlstm'.*got \['lru'\]"):
        long_range.run_experiment("adding", length=10, cells=[cell, "lru"], minutes=0.01, out=tmp_path)


def test_exploding_without_clipping_is_caught_and_clipping_trains():
    result = long_range.exploding(50, hidden=64, steps=50, log_every=25)
    stopped, clipped = result["no_clipping"], result["clipping"]
    assert not stopped["finished"]
    assert "non-finite training at epoch 1" in stopped["message"] and "clip_norm, now 0.0" in stopped["message"]
    assert clipped["finished"] and clipped["steps"] == 50
    losses = [loss for _, loss in clipped["curve"]]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0]


def test_cli_experiment_writes_json_and_plot(tmp_path):
    result = CliRunner().invoke(app, ["experiment", "vanishing", "--length", "20", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "vanishing-20.json").read_text())
    assert set(data["cells"]) == {"rnn", "lstm", "gru"}
    assert all(0 < c["geometric_mean"] < 1 for c in data["cells"].values())
    assert (tmp_path / "vanishing-20.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["experiment", "nonsense", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "name: expected one of adding, copy, vanishing, exploding" in bad.output
