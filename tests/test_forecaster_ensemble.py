"""forecast.ensemble: several networks trained side by side (rnnkit.model.Ensemble), their forecasts
combined (mean point, Gaussian mixture interval, mean quantiles); and the seasonal-trend reference.
Generated series, tiny models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.model import Ensemble, ModelConfig, SequenceModel
from rnnkit.summary import build_summary, format_summary
from rnnkit.tasks.forecasting import Forecaster, ForecastExperiment
from rnnkit.tasks.forecasting.heads import _seasonal_reference, gaussian_interval

torch.set_num_threads(1)


def monthly(n: int = 96, seed: int = 0) -> pd.DataFrame:
    """A growing series with a yearly season that grows with it, monthly from 2000-01."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 100 * (1 + 0.01 * t) * (1 + 0.2 * np.sin(2 * np.pi * t / 12)) * np.exp(rng.normal(0, 0.02, n))
    return pd.DataFrame({"month": pd.date_range("2000-01-01", periods=n, freq="MS"), "y": y})


def experiment(size: int, epochs: int = 3, **forecast) -> ForecastExperiment:
    return ForecastExperiment.from_dict({
        "data": {"date_column": "month", "target_columns": ["y"], "lookback": 24, "horizon": 6, "test": 24,
                 "batch_size": 16},
        "forecast": {"ensemble": size, **forecast},
        "model": {"cell": "gru", "hidden_size": 8},
        "train": {"epochs": epochs, "lr": 1e-2, "log_every": 10_000},
        "evaluate": {"season": 12, "statistical": "none", "horizons": [6]}})


def member(fc: Forecaster, k: int) -> Forecaster:
    """The ensemble's k-th network alone, as a forecaster of its own (same scalers and columns)."""
    exp = fc.experiment.model_copy(update={"forecast": fc.experiment.forecast.model_copy(update={"ensemble": 1})})
    return Forecaster(fc.model.members[k], exp, fc.scalers, fc.columns)


# ------------------------------------------------------------------------------- the module
def test_ensemble_runs_members_of_their_own_weights_on_one_input():
    torch.manual_seed(0)
    config = ModelConfig(input_size=3, output_size=2, vocab_size=0, hidden_size=8)
    net = Ensemble(config, size=3)
    first = [p.detach().clone() for p in net.members[0].parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, net.members[1].parameters()))
    torch.manual_seed(0)  # member 0 draws first, so it is the single network of the same seed
    alone = SequenceModel(config)
    assert all(torch.equal(a, b) for a, b in zip(first, alone.parameters()))
    x = torch.randn(4, 5, 3)
    logits, states = net(x)
    assert logits.shape == (3, 4, 5, 2) and len(states) == 3
    for k in range(3):
        own, state = net.members[k](x)
        torch.testing.assert_close(logits[k], own)
        torch.testing.assert_close(states[k], state)
    # each member continues from its own state
    more, _ = net(x, state=states)
    torch.testing.assert_close(more[1], net.members[1](x, state=states[1])[0])
    with pytest.raises(ValueError, match="size: an ensemble needs at least 2 members, got 1"):
        Ensemble(config, size=1)
    # the training summary counts every member's parameters and names one member's layers
    summary = format_summary(build_summary(net, {"task": "forecaster", "batch_size": 4}))
    assert f"{sum(p.numel() for p in net.parameters()):,} parameters; 3 networks of LSTM 8" in summary


def test_mixture_interval_matches_sampling_and_is_exact_for_one_member():
    mu, sigma = torch.tensor([[0.0, 1.0], [2.0, 1.0], [5.0, 1.0]]), torch.tensor([[1.0, 0.5], [0.5, 0.5], [2.0, 0.5]])
    lo, hi = gaussian_interval(mu, sigma, 0.8)
    gen = torch.Generator().manual_seed(0)
    draws = mu[:, None] + sigma[:, None] * torch.randn(3, 200_000, 2, generator=gen)   # equal weights
    expected = torch.quantile(draws.reshape(-1, 2)[::3], torch.tensor([0.1, 0.9]), dim=0)
    torch.testing.assert_close(torch.stack([lo, hi]), expected, atol=0.03, rtol=0)
    # members that agree give the members' own interval; one member gives mu ± z sigma
    torch.testing.assert_close(torch.stack(gaussian_interval(mu[1:2].expand(3, 2), sigma[1:2].expand(3, 2), 0.8)),
                               torch.stack(gaussian_interval(mu[1:2], sigma[1:2], 0.8)), atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_interval(mu[:1], sigma[:1], 0.8)[1], mu[0] + 1.2815516 * sigma[0])


# ------------------------------------------------------------------------------- the forecaster
@pytest.fixture(scope="module")
def gaussian() -> Forecaster:
    return Forecaster.fit(monthly(), experiment=experiment(3, output="gaussian"))


def test_an_ensemble_forecasts_the_mean_of_its_members_and_their_mixture(gaussian, tmp_path):
    assert isinstance(gaussian.model, Ensemble) and len(gaussian.model.members) == 3
    out = gaussian.predict(level=0.8)
    each = [member(gaussian, k).predict(df=monthly(), level=0.8) for k in range(3)]
    points = np.stack([e["y"].to_numpy() for e in each])
    np.testing.assert_allclose(out["y"].to_numpy(), points.mean(0), rtol=1e-5)   # no transform: a mean
    assert points.std(0).min() > 0                                                # members that differ
    # the mixture's interval holds every member's point; it is at least as wide as the narrowest member's
    assert (out["y_lower"].to_numpy() <= points.min(0)).all() and (out["y_upper"].to_numpy() >= points.max(0)).all()
    widths = np.stack([(e["y_upper"] - e["y_lower"]).to_numpy() for e in each])
    assert ((out["y_upper"] - out["y_lower"]).to_numpy() >= widths.min(0) - 1e-4).all()
    # a checkpoint holds every member
    path = gaussian.save(tmp_path / "ck")
    loaded = Forecaster.load(path)
    assert isinstance(loaded.model, Ensemble) and loaded.experiment.forecast.ensemble == 3
    pd.testing.assert_frame_equal(loaded.predict(df=monthly(), level=0.8), out)
    assert np.isfinite(gaussian.backtests[6].metrics.loc["model", "MASE"])


def test_the_training_loss_is_the_members_mean(gaussian):
    x = torch.randn(4, 30, gaussian.experiment.model.input_size)
    target = torch.randn(4, 6, 1)
    logits, _ = gaussian.model(x)
    out = gaussian.net.split_outputs(logits, 6)
    assert out.shape == (3, 4, 6, 1, 2)
    each = [gaussian.net.loss(out[k], target) for k in range(3)]
    torch.testing.assert_close(gaussian.net.loss(out, target), torch.stack(each).mean())


@pytest.mark.parametrize("forecast", [{"output": "point"}, {"output": "quantile"},
                                      {"output": "gaussian", "strategy": "recursive", "samples": 50}])
def test_point_quantile_and_recursive_ensembles_average_their_members(forecast):
    fc = Forecaster.fit(monthly(), experiment=experiment(2, epochs=2, **forecast), evaluate=False)
    level = None if forecast["output"] == "point" else 0.8
    out = fc.predict(level=level)
    each = [member(fc, k).predict(df=monthly(), level=level) for k in range(2)]
    columns = ["y", "y_q0.1", "y_q0.9"] if forecast["output"] == "quantile" else ["y"]
    np.testing.assert_allclose(out[columns].to_numpy(), np.mean([e[columns].to_numpy() for e in each], axis=0),
                               rtol=1e-5)
    if level is not None:
        assert (out["y_lower"] < out["y"]).all() and (out["y"] < out["y_upper"]).all()


def test_ensemble_size_is_checked():
    with pytest.raises(ValueError, match="forecast.ensemble"):
        experiment(0)


# ------------------------------------------------------------------------------- the seasonal-trend reference
def test_seasonal_trend_reference_moves_the_seasonal_naive_forecast_by_the_last_seasons_change():
    y_in = np.arange(12.0, dtype=np.float32).reshape(2, 6, 1)       # 2 windows, lookback 6
    y_in[1, 3, 0] = np.nan
    last = y_in[:, -1:, :]
    ref = _seasonal_reference(y_in, horizon=6, season=4, last=last, trend=True)
    np.testing.assert_array_equal(ref[0, :, 0], [6, 7, 8, 9, 10, 11])     # a line continues exactly
    # the change 11 - 7 = 4 once per season ahead; the missing value of the season: the last one
    np.testing.assert_array_equal(ref[1, :, 0], [12, 11, 14, 15, 16, 11])


def test_seasonal_trend_normalisation_forecasts_a_growing_seasonal_series():
    fc = Forecaster.fit(monthly(), experiment=experiment(1, epochs=6, normalize="seasonal_trend"), evaluate=False)
    assert fc.backtest(6, baselines=False).metrics.loc["model", "MASE"] < 1.0
    with pytest.raises(ValueError, match=r"forecast.normalize: 'seasonal_trend' needs data.lookback >= 13 \(a "
                                         r"season of 12, and one step\), got 12"):
        ForecastExperiment.from_dict({"data": {"lookback": 12}, "forecast": {"normalize": "seasonal_trend"},
                                      "evaluate": {"season": 12}})


# ------------------------------------------------------------------------------- each member's own best epoch
def test_member_best_keeps_each_members_lowest_loss_epoch_and_waits_for_the_last():
    from rnnkit.tasks.forecasting.heads import MemberBest
    torch.manual_seed(0)
    net = Ensemble(ModelConfig(input_size=2, output_size=1, vocab_size=0, hidden_size=4), size=2)
    best, weights = MemberBest(2), []
    for losses in ([3.0, 5.0], [1.0, 6.0], [2.0, 4.0], [2.5, float("nan")]):   # member 0 best at epoch 2, 1 at 3
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        weights.append([{k: v.clone() for k, v in m.state_dict().items()} for m in net.members])
        metrics = best.update(net, losses)
        assert metrics["val_loss_members"] == pytest.approx(np.mean(losses)) or np.isnan(losses[1])
    assert best.best == [1.0, 4.0]
    # the monitored loss fell while either member improved: 4.0, 3.5 (member 0), 2.5 (member 1), then stays
    assert metrics["val_loss"] == pytest.approx(2.5)
    best.restore(net)
    for k, epoch in ((0, 1), (1, 2)):
        for name, value in net.members[k].state_dict().items():
            torch.testing.assert_close(value, weights[epoch][k][name])


def test_an_ensemble_with_validation_saves_each_members_best_weights(tmp_path):
    fc = Forecaster.fit(monthly(), experiment=experiment(2, epochs=4), val=12, out_dir=tmp_path / "run",
                        evaluate=False)
    assert fc.member_best is not None and len(fc.member_best.best) == 2
    for member, state in zip(fc.model.members, fc.member_best.states):
        for name, value in member.state_dict().items():
            torch.testing.assert_close(value, state[name])
    saved = Forecaster.load(tmp_path / "run" / "best")
    for name, value in fc.model.state_dict().items():
        torch.testing.assert_close(saved.model.state_dict()[name], value)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if "val_loss_members" in line]
    assert len(epochs) == 4 and all(e["val_loss"] <= e["val_loss_members"] + 1e-9 for e in epochs)


def test_members_train_on_their_own_orders_of_the_windows_member_0_on_the_single_networks():
    def first_batches(size: int):
        exp, prepared = Forecaster._read_data(experiment(size), {"frame": monthly(), "evaluate": False})
        return Forecaster._build(exp, prepared)._training(prepared, 0, 1).batches(1)
    single, ensemble = first_batches(1), first_batches(3)
    assert len(single) == len(ensemble)
    x, target = ensemble[0]
    assert x.shape[0] == 3 and x.shape[1:] == single[0][0].shape and target.shape[1:] == single[0][1].shape
    torch.testing.assert_close(x[0], single[0][0])
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])
    # every member still sees every window once an epoch
    every = torch.cat([xb for xb, _ in single]).sum(0)
    for k in range(3):
        torch.testing.assert_close(torch.cat([xb[k] for xb, _ in ensemble]).sum(0), every, rtol=1e-4, atol=1e-3)
    # the module runs each member on its own input
    net = Ensemble(ModelConfig(input_size=3, output_size=2, vocab_size=0, hidden_size=4), size=2)
    xs = torch.randn(2, 5, 7, 3)
    logits, _ = net(xs, per_member=True)
    torch.testing.assert_close(logits[1], net.members[1](xs[1])[0])
    with pytest.raises(ValueError, match=r"x: expected the 2 members' inputs stacked on the first dimension, got "
                                         r"shape \(3, 5, 7, 3\)"):
        net(torch.randn(3, 5, 7, 3), per_member=True)
