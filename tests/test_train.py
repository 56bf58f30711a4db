"""Trainer: clipping, optimizers, schedules, early stopping, checkpoints, exact resumption,
non-finite handling, metrics, truncated BPTT and determinism, on tiny synthetic problems."""

from __future__ import annotations

import copy
import importlib.util
import json
import math

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.io import load_checkpoint
from rnnkit.train import NonFiniteError, TrainConfig, Trainer, repackage_hidden


class Regressor(nn.Module):
    """LSTM → dropout → Linear, returning its final state for truncated BPTT."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn = rnnkit.LSTM(2, 6, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(6, 1)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(self.drop(out)), state


def stream(batch: int = 3, chunks: int = 4, chunk_len: int = 5, seed: int = 0):
    """A long sequence per row, cut into consecutive time chunks: train_batches for truncated BPTT."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, chunks * chunk_len, 2, generator=g)
    y = 0.3 * x.cumsum(1)[..., :1]
    pieces = [(x[:, i:i + chunk_len], y[:, i:i + chunk_len]) for i in range(0, chunks * chunk_len, chunk_len)]
    return lambda epoch: pieces


def carried_loss(model, batch, state):
    x, y = batch
    pred, state = model(x, state)
    return nn.functional.mse_loss(pred, y), state, y.numel()


def stateless_loss(model, batch, state):
    x, y = batch
    pred, _ = model(x)
    return nn.functional.mse_loss(pred, y), None, y.numel()


def quiet(**overrides) -> TrainConfig:
    return TrainConfig(**{"log_every": 1000, "device": "cpu", **overrides})


def metrics_sequence(values):
    """An evaluate_fn returning the given val_loss values, one per epoch."""
    it = iter(values)
    return lambda model: {"val_loss": next(it)}


def make_model(seed: int = 0, dropout: float = 0.0) -> Regressor:
    torch.manual_seed(seed)
    return Regressor(dropout)


# ----------------------------------------------------------------------------------- config
def test_config_defaults_and_validation():
    config = TrainConfig()
    assert config.clip_norm == 5.0 and config.schedule == "none" and config.on_nonfinite == "stop"
    with pytest.raises(ValueError, match="momentum: only optimizer='sgd'"):
        TrainConfig(optimizer="adam", momentum=0.9)
    with pytest.raises(ValueError, match="tensorboard"):
        TrainConfig(tensorboard=True)
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(TypeError, match="config: expected a TrainConfig"):
        Trainer(make_model(), {"epochs": 1}, loss_fn=carried_loss)


# --------------------------------------------------------------------------------- clipping
class GradProbe:
    """Records the pre-clipping norm the Trainer reports and the norm of the gradients it applied."""

    def __init__(self):
        self.reported, self.applied = [], []

    def on_step_end(self, trainer, info):
        self.reported.append(info["grad_norm"])
        grads = [p.grad for p in trainer.module.parameters() if p.grad is not None]
        self.applied.append(nn.utils.get_total_norm(grads).item())


@pytest.mark.parametrize("clip_norm", [0.01, 0.0])
def test_clipping_bounds_the_gradient_norm(clip_norm):
    probe = GradProbe()
    trainer = Trainer(make_model(), quiet(epochs=1, optimizer="sgd", lr=1e-3, clip_norm=clip_norm),
                      loss_fn=carried_loss, callbacks=[probe])
    trainer.fit(stream())
    assert min(probe.reported) > 0.01  # the unclipped norms exceed the bound
    if clip_norm:
        assert max(probe.applied) <= clip_norm * (1 + 1e-4)
    else:
        assert probe.applied == pytest.approx(probe.reported, rel=1e-5)


# ---------------------------------------------------------------------- optimizers, schedules
@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_each_optimizer_trains(name, cls):
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    momentum = 0.9 if name == "sgd" else 0.0
    trainer = Trainer(model, quiet(epochs=2, optimizer=name, lr=0.05, momentum=momentum, weight_decay=1e-4),
                      loss_fn=carried_loss)
    assert type(trainer.optimizer) is cls
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.9
    history = trainer.fit(stream())
    assert not torch.equal(before["head.weight"], model.head.weight)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_step_schedule_zaremba():
    """lr 1 for epochs 1-4, then halved every epoch (Zaremba et al. 2014, small model)."""
    config = quiet(epochs=7, optimizer="sgd", lr=1.0, schedule="step", gamma=0.5, decay_start=4)
    history = Trainer(make_model(), config, loss_fn=carried_loss).fit(stream(chunks=1))
    assert [h["lr"] for h in history] == [1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_step_schedule_matches_torch_steplr():
    config = quiet(epochs=7, optimizer="sgd", lr=1.0, schedule="step", gamma=0.1, step_size=3, decay_start=3)
    history = Trainer(make_model(), config, loss_fn=carried_loss).fit(stream(chunks=1))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    steplr = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    expected = []
    for _ in range(7):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        steplr.step()
    assert [h["lr"] for h in history] == pytest.approx(expected)


def test_plateau_schedule_reduces_after_patience():
    config = quiet(epochs=6, optimizer="sgd", lr=1.0, schedule="plateau", plateau_factor=0.5,
                   plateau_patience=1)
    history = Trainer(make_model(), config, loss_fn=carried_loss, evaluate_fn=lambda m: {"val_loss": 1.0}
                      ).fit(stream(chunks=1))
    assert [h["lr"] for h in history] == [1, 1, 1, 0.5, 0.5, 0.25]


def test_constant_lr_without_schedule():
    history = Trainer(make_model(), quiet(epochs=3, lr=0.01), loss_fn=carried_loss).fit(stream(chunks=1))
    assert [h["lr"] for h in history] == [0.01] * 3


# ------------------------------------------------------------------ early stop, checkpoints
def test_early_stopping_stops(tmp_path):
    config = quiet(epochs=10, early_stop_patience=2, out_dir=str(tmp_path))
    trainer = Trainer(make_model(), config, loss_fn=carried_loss,
                      evaluate_fn=metrics_sequence([3, 2, 2.5, 2.1, 1]))
    history = trainer.fit(stream(chunks=1))
    assert len(history) == 4 and trainer.stop_reason == "early_stop"
    assert trainer.best == 2 and trainer.best_epoch == 2
    last_line = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(last_line) == {"type": "stop", "reason": "early_stop", "epoch": 4, "step": 4}


def test_monitor_max_and_missing_monitor():
    trainer = Trainer(make_model(), quiet(epochs=3, monitor="val_acc", monitor_mode="max"),
                      loss_fn=carried_loss, evaluate_fn=lambda m: {"val_acc": 0.5})
    trainer.fit(stream(chunks=1))
    assert trainer.best == 0.5 and trainer.best_epoch == 1
    trainer = Trainer(make_model(), quiet(epochs=1, monitor="val_ppl"), loss_fn=carried_loss)
    with pytest.raises(ValueError, match="monitor: 'val_ppl' is not among the epoch metrics"):
        trainer.fit(stream(chunks=1))


class Snapshots:
    def __init__(self):
        self.weights = {}

    def on_epoch_end(self, trainer, metrics):
        self.weights[metrics["epoch"]] = copy.deepcopy(trainer.module.state_dict())


def test_best_and_last_checkpoints(tmp_path):
    snapshots = Snapshots()
    trainer = Trainer(make_model(), quiet(epochs=3, out_dir=str(tmp_path)), loss_fn=carried_loss,
                      evaluate_fn=metrics_sequence([3.0, 1.0, 2.0]), callbacks=[snapshots],
                      checkpoint_extras={"vocab": {"tokens": ["x"]}}, model_config={"hidden": 6})
    trainer.fit(stream())
    best, last = load_checkpoint(tmp_path / "best"), load_checkpoint(tmp_path / "last")
    assert best.trainer_state["epoch"] == 2 and best.trainer_state["best"] == 1.0
    assert last.trainer_state["epoch"] == 3 and last.config == {"hidden": 6}
    assert last.extras == {"vocab": {"tokens": ["x"]}}
    for epoch, checkpoint in ((2, best), (3, last)):
        for key, value in snapshots.weights[epoch].items():
            assert torch.equal(checkpoint.state_dict[key], value), (epoch, key)
    load_checkpoint(tmp_path / "best", model=make_model(seed=5))  # loads into a fresh model


# -------------------------------------------------------------------------------- resumption
class StopAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, info):
        if info["step"] == self.step:
            trainer.request_stop()


def resumable_trainer(out_dir, seed=0, **overrides):
    config = quiet(epochs=3, optimizer="adam", lr=0.02, schedule="step", gamma=0.5, decay_start=1,
                   out_dir=str(out_dir), **overrides)
    return Trainer(make_model(seed, dropout=0.3), config, loss_fn=carried_loss,
                   evaluate_fn=lambda m: {"val_loss": m(torch.ones(1, 3, 2))[0].square().mean().item()},
                   callbacks=[StopAt(6)] if seed == 0 else [])


def test_an_early_end_says_why_on_the_console(tmp_path, capsys):
    resumable_trainer(tmp_path / "budget", max_minutes=1e-9).fit(stream())
    assert ("stopped after epoch 0 of 3 (step 1): the time budget train.max_minutes = 1e-09 ran out"
            in capsys.readouterr().err)
    trainer = resumable_trainer(tmp_path / "done")
    trainer.callbacks = []
    trainer.fit(stream())
    assert "stopped" not in capsys.readouterr().err


def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path):
    reference = resumable_trainer(tmp_path / "ref", seed=0)
    reference.callbacks = []
    expected = reference.fit(stream())

    first = resumable_trainer(tmp_path / "run", max_minutes=1e-9)  # time budget: stops after step 1
    first.fit(stream())
    assert first.stop_reason == "time_budget" and first.step == 1 and first.history == []
    second = resumable_trainer(tmp_path / "run", seed=1)  # other init: the weights must come from `last`
    second.callbacks = [StopAt(6)]
    second.fit(stream(), resume=True)  # stops mid-epoch 2 (4 batches per epoch)
    assert second.stop_reason == "requested" and (second.epoch, second.step) == (1, 6)
    third = resumable_trainer(tmp_path / "run", seed=2)
    history = third.fit(stream(), resume=True)

    assert third.stop_reason is None and third.step == 12
    for key, value in reference.module.state_dict().items():
        assert torch.equal(third.module.state_dict()[key], value), key
    for got, want in zip(history, expected, strict=True):
        for key in ("epoch", "step", "lr", "train_loss", "val_loss", "skipped_batches"):
            assert got[key] == want[key], key
    assert torch.equal(third.optimizer.state_dict()["state"][0]["step"],
                       reference.optimizer.state_dict()["state"][0]["step"])


def test_resume_via_trainer_resume_and_errors(tmp_path):
    trainer = resumable_trainer(tmp_path)
    trainer.callbacks = []
    trainer.fit(stream())
    again = resumable_trainer(tmp_path, seed=3).resume(tmp_path / "last")
    assert again.epoch == 3 and again.fit(stream()) == trainer.history  # nothing left to do
    with pytest.raises(ValueError, match="resume: needs config.out_dir"):
        Trainer(make_model(), quiet(), loss_fn=carried_loss).fit(stream(), resume=True)
    wrong = Trainer(nn.Linear(2, 1), quiet(), loss_fn=carried_loss)
    with pytest.raises(ValueError, match="missing keys"):
        wrong.resume(tmp_path / "last")


# -------------------------------------------------------------------------------- non-finite
def nan_at(step_numbers, loss_fn=carried_loss):
    calls = {"n": 0}

    def loss(model, batch, state):
        calls["n"] += 1
        value, state, n = loss_fn(model, batch, state)
        return (value * math.nan if calls["n"] in step_numbers else value), state, n
    return loss


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer(make_model(), quiet(epochs=3, out_dir=str(tmp_path)), loss_fn=nan_at({6}))
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 6: the loss is nan.*clip_norm.*lower lr"):
        trainer.fit(stream())
    last = load_checkpoint(tmp_path / "last")
    assert last.trainer_state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last.state_dict.values())


def test_nonfinite_gradient_names_the_parameter():
    model = make_model()
    model.head.bias.register_hook(lambda grad: grad * math.inf)
    trainer = Trainer(model, quiet(epochs=1), loss_fn=carried_loss)
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 1: the gradient of parameter 'head.bias' went "
                                             r"non-finite first \(1 of 6 parameters"):
        trainer.fit(stream())


def test_nonfinite_skip_counts_batches(tmp_path):
    model = make_model()
    trainer = Trainer(model, quiet(epochs=2, on_nonfinite="skip", out_dir=str(tmp_path)),
                      loss_fn=nan_at({2, 7}))
    history = trainer.fit(stream())
    assert trainer.skipped_batches == 2 and [h["skipped_batches"] for h in history] == [1, 1]
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["skipped_batches"] for e in epochs if e["type"] == "epoch"] == [1, 1]


def test_nonfinite_weights_never_overwrite_a_good_checkpoint(tmp_path):
    class Poison:
        def on_step_end(self, trainer, info):
            if info["step"] == 8:  # the last batch of epoch 2: the weights go bad after the step
                with torch.no_grad():
                    trainer.module.head.weight.fill_(math.nan)

    trainer = Trainer(make_model(), quiet(epochs=3, out_dir=str(tmp_path)), loss_fn=carried_loss,
                      callbacks=[Poison()])
    with pytest.raises(NonFiniteError, match=r"refusing to save.*'head.weight' has non-finite values"):
        trainer.fit(stream())
    last = load_checkpoint(tmp_path / "last")
    assert last.trainer_state["epoch"] == 1 and torch.isfinite(last.state_dict["head.weight"]).all()


# --------------------------------------------------------------------------- logs and metrics
def test_metrics_jsonl_grad_norms_and_plain_log_lines(tmp_path, capsys):
    config = quiet(epochs=2, log_every=3, record_grad_norms=True, out_dir=str(tmp_path))
    trainer = Trainer(make_model(), config, loss_fn=carried_loss, evaluate_fn=lambda m: {"val_loss": 1.0})
    trainer.fit(stream())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == [3, 6] and [r["epoch"] for r in epochs] == [1, 2]
    assert {"train_loss", "val_loss", "lr", "items_per_s", "time_s"} <= set(epochs[0])
    names = [name for name, _ in trainer.module.named_parameters()]
    assert list(steps[0]["grad_norms"]) == names
    assert [g["step"] for g in trainer.grad_norm_history] == [3, 6]
    g = trainer.grad_norm_history[0]
    assert g["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in g["grad_norms"].values())), rel=1e-5)
    err = capsys.readouterr().err  # not a terminal: plain lines
    assert "epoch 1 step 3 | loss" in err and "items/s" in err and "epoch 2 done | lr" in err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_requested_but_missing(tmp_path):
    with pytest.raises(ImportError, match="tensorboard=True: TensorBoard logging needs the 'tensorboard'"):
        Trainer(make_model(), quiet(tensorboard=True, out_dir=str(tmp_path)), loss_fn=carried_loss)


def test_bad_loss_fn_and_train_batches():
    trainer = Trainer(make_model(), quiet(epochs=1), loss_fn=lambda model, batch, state: 1.0)
    with pytest.raises(TypeError, match=r"loss_fn: expected \(loss: scalar tensor, new_state, n_items\)"):
        trainer.fit(stream())
    with pytest.raises(TypeError, match="train_batches: expected a callable"):
        trainer.fit([1, 2])
    with pytest.raises(ValueError, match=r"train_batches\(1\): expected at least one batch"):
        Trainer(make_model(), quiet(epochs=1), loss_fn=carried_loss).fit(lambda epoch: [])


# ----------------------------------------------------------------------- TBPTT, determinism
def test_truncated_bptt_carries_detached_state():
    seen, returned = [], []

    def loss(model, batch, state):
        seen.append(state)
        value, new_state, n = carried_loss(model, batch, state)
        returned.append(repackage_hidden(new_state))
        assert new_state[0].requires_grad
        return value, new_state, n

    Trainer(make_model(), quiet(epochs=2), loss_fn=loss).fit(stream(chunks=3))
    assert seen[0] is None and seen[3] is None  # reset at each epoch start
    for i in (1, 2, 4, 5):
        h, c = seen[i]
        assert not h.requires_grad and not c.requires_grad
        assert torch.equal(h, returned[i - 1][0]) and torch.equal(c, returned[i - 1][1])


def test_same_seed_same_weights_other_seed_differs():
    def run(seed):
        model = make_model(0, dropout=0.5)  # same initial weights; dropout masks follow config.seed
        Trainer(model, quiet(epochs=2, seed=seed), loss_fn=carried_loss).fit(stream())
        return model.state_dict()

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_stateless_tasks_get_none_state():
    states = []

    def loss(model, batch, state):
        states.append(state)
        return stateless_loss(model, batch, state)

    Trainer(make_model(), quiet(epochs=1), loss_fn=loss).fit(stream())
    assert states == [None] * 4


def test_fit_hands_the_kernels_buffers_back():
    """The fused kernels keep their large buffers from step to step (rnnkit.kernels.buffers); after
    fit() nothing needs them, so the pool is emptied."""
    from rnnkit.kernels.buffers import pool

    class Wide(nn.Module):  # large enough that the kernels' buffers are pooled (>= 1 MiB); a GRU, which
        def __init__(self) -> None:  # always runs our loops (an LSTM may run oneDNN's layer)
            super().__init__()
            self.rnn = rnnkit.GRU(2, 128, batch_first=True, backend="fused")
            self.head = nn.Linear(128, 1)

        def forward(self, x, state=None):
            out, state = self.rnn(x, state)
            return self.head(out), state

    held = []

    def loss(model, batch, state):
        out = carried_loss(model, batch, state)
        held.append(pool.held_bytes)  # after the forward: what it keeps for backward is pooled
        return out

    Trainer(Wide(), quiet(epochs=1), loss_fn=loss).fit(stream(batch=64, chunks=2, chunk_len=40))
    assert max(held) > 0
    assert pool.held_bytes == 0
