"""Data-parallel training: 2 CPU processes (gloo), each on half of every global batch, match one
process on the whole batch; resuming (mid-epoch with carried state, after a kill, metrics.jsonl);
the group read from torchrun's and SLURM's variables; `rnnkit train --nproc` under a launcher; and the
single-process behaviour of the helpers. Real launchers are in test_torchrun.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import rnnkit
from rnnkit import distributed
from rnnkit.cli import app
from rnnkit.train import TrainConfig, Trainer

GLOBAL_BATCH, BATCHES, TIME = 8, 3, 5


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = rnnkit.LSTM(2, 4, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def global_batches(epoch: int):
    g = torch.Generator().manual_seed(100 + epoch)
    x = torch.randn(BATCHES, GLOBAL_BATCH, TIME, 2, generator=g)
    return [(xb, 0.5 * xb.cumsum(1)[..., :1]) for xb in x]


def mse_loss(model, batch, state):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), None, y.numel()


class LossLog:
    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, info):
        self.losses.append(info["loss"])


def train(out_dir: str, uneven: bool = False) -> dict:
    """Runs in every process: each rank trains on its shard of the same global batches (uneven: batches
    of 7, rank 0 taking 4 rows and rank 1 taking 3)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    log = LossLog()
    config = TrainConfig(epochs=2, optimizer="sgd", lr=0.1, momentum=0.9, clip_norm=1.0, device="cpu",
                         log_every=2, out_dir=out_dir)
    trainer = Trainer(Regressor(), config, loss_fn=mse_loss, callbacks=[log],
                      evaluate_fn=lambda model: {"val_loss": mse_loss(model, global_batches(0)[0], None)[0]})
    if uneven:
        rank, world = distributed.rank(), distributed.world_size()
        history = trainer.fit(lambda epoch: [(x[:7][rank::world], y[:7][rank::world])
                                             for x, y in global_batches(epoch)])
    else:
        history = trainer.fit(lambda epoch: [(distributed.shard(x), distributed.shard(y))
                                             for x, y in global_batches(epoch)])
    return {"world_size": distributed.world_size(), "rank": distributed.rank(), "losses": log.losses,
            "history": [(h["train_loss"], h["val_loss"]) for h in history],
            "weights": {k: v.numpy().copy() for k, v in trainer.module.state_dict().items()}}


def test_two_processes_match_one(tmp_path):
    single = distributed.launch(train, 1, str(tmp_path / "single"))[0]
    ranks = distributed.launch(train, 2, str(tmp_path / "ddp"), backend="gloo")

    assert single["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        np.testing.assert_allclose(r["losses"], single["losses"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["history"], single["history"], rtol=1e-5, atol=1e-6)
        for key, value in single["weights"].items():
            np.testing.assert_allclose(r["weights"][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["type"] == "epoch"] == [1, 2]  # written once, by rank 0
    assert (tmp_path / "ddp" / "last" / "model.safetensors").is_file()


def test_uneven_shards_weigh_each_rank_by_its_items(tmp_path):
    """A batch of 7 split 4 + 3: the ranks' losses are weighted so that the step is one process's."""
    single = distributed.launch(train, 1, str(tmp_path / "single"), True)[0]
    ranks = distributed.launch(train, 2, str(tmp_path / "ddp"), True, backend="gloo")
    for r in ranks:
        np.testing.assert_allclose(r["losses"], single["losses"], rtol=1e-5, atol=1e-6)
        for key, value in single["weights"].items():
            np.testing.assert_allclose(r["weights"][key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_helpers_without_a_process_group():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    x = torch.arange(6.0)
    assert distributed.all_reduce_mean(x) is x and distributed.all_reduce_mean(2.5) == 2.5
    assert distributed.shard(x) is not None and torch.equal(distributed.shard(x), x)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    model = nn.Linear(1, 1)
    assert distributed.unwrap(model) is model


def test_sharding_errors_name_the_quantity():
    assert distributed.per_rank(8, "batch_size", size=4) == 2
    with pytest.raises(ValueError, match=r"batch_size=6: cannot split evenly over 4 processes \(nproc\); "
                                         "expected a multiple of 4"):
        distributed.per_rank(6, "batch_size", size=4)
    with pytest.raises(ValueError, match=r"validation windows=2: cannot split evenly over 3 processes"):
        distributed.per_rank(2, "validation windows", size=3)
    with pytest.raises(ValueError, match="nproc: expected an integer >= 1, got 0"):
        distributed.launch(print, 0)


# ------------------------------------------------------------------------------ resuming
class Stateful(nn.Module):
    """A model whose recurrent state is carried from batch to batch (truncated BPTT)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = rnnkit.GRU(2, 4, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def carried_loss(model, batch, state):
    x, y = batch
    prediction, state = model(x, state)
    return nn.functional.mse_loss(prediction, y), state, y.numel()


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, info):
        if info["step"] == self.step:
            trainer.request_stop()


def stop_and_resume(root: str, stop_at: int) -> dict:
    """Runs in every process: train uninterrupted in root/whole; in root/split stop at step ``stop_at``
    (mid-epoch), keep that checkpoint as root/stopped, and resume in a new Trainer."""
    torch.set_num_threads(1)

    def trainer(out_dir: str, *callbacks) -> Trainer:
        torch.manual_seed(0)
        config = TrainConfig(epochs=2, optimizer="sgd", lr=0.1, device="cpu", log_every=1, out_dir=out_dir)
        return Trainer(Stateful(), config, loss_fn=carried_loss, callbacks=callbacks)

    def batches(epoch):
        return [(distributed.shard(x), distributed.shard(y)) for x, y in global_batches(epoch)]

    whole = trainer(f"{root}/whole")
    whole.fit(batches)
    first = trainer(f"{root}/split", StopAt(stop_at))
    first.fit(batches)
    assert first.stop_reason == "requested" and first.step == stop_at
    if distributed.is_main():
        shutil.copytree(f"{root}/split/last", f"{root}/stopped")
    resumed = trainer(f"{root}/split")
    resumed.fit(batches, resume=True)
    return {name: {k: v.numpy().copy() for k, v in t.module.state_dict().items()}
            for name, t in (("whole", whole), ("resumed", resumed))}


def test_mid_epoch_resume_with_two_processes_carries_each_ranks_state(tmp_path):
    ranks = distributed.launch(stop_and_resume, 2, str(tmp_path), 2, backend="gloo")
    for r in ranks:
        for key, value in r["whole"].items():
            np.testing.assert_array_equal(r["resumed"][key], value, err_msg=key)
    steps = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in steps if x["type"] == "step"] == list(range(1, 2 * BATCHES + 1))
    # each process carried its own shard's state; one process cannot take over both
    trainer = Trainer(Stateful(), TrainConfig(epochs=2, device="cpu", out_dir=str(tmp_path / "stopped_1")),
                      loss_fn=carried_loss)
    trainer.resume(tmp_path / "stopped")
    with pytest.raises(ValueError, match=r"resume: the checkpoint was saved mid-epoch by 2 processes, each "
                                         r"carrying its own recurrent state, but this run has 1; resume with 2"):
        trainer.fit(lambda epoch: global_batches(epoch))


class Killed(Exception):
    """Stands in for a process killed mid-epoch."""


class KillAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, info):
        if info["step"] == self.step:
            raise Killed


def test_metrics_cut_back_to_the_resumed_step(tmp_path):
    def trainer(out_dir, *callbacks) -> Trainer:
        torch.manual_seed(0)
        config = TrainConfig(epochs=3, optimizer="sgd", lr=0.1, device="cpu", log_every=1, out_dir=str(out_dir))
        return Trainer(Regressor(), config, loss_fn=mse_loss, callbacks=callbacks)

    def records(out_dir):
        return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]

    trainer(tmp_path / "whole").fit(global_batches)
    killed_at = BATCHES + 2  # in epoch 2: 'last' holds epoch 1, steps 4 and 5 were logged already
    with pytest.raises(Killed):
        trainer(tmp_path / "run", KillAt(killed_at)).fit(global_batches)
    logged = [x["step"] for x in records(tmp_path / "run") if x["type"] == "step"]
    assert logged == list(range(1, killed_at + 1))
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"type": "step", "epoch": 2, "st')  # a line the killed process left unfinished
    resumed = trainer(tmp_path / "run")
    resumed.fit(global_batches, resume=True)
    assert resumed.history[0]["epoch"] == 1 and len(resumed.history) == 3

    def comparable(record):  # timing figures differ from run to run
        return {k: v for k, v in record.items() if k not in ("items_per_s", "time_s")}

    whole, run = records(tmp_path / "whole"), records(tmp_path / "run")
    assert [x["step"] for x in run if x["type"] == "step"] == list(range(1, 3 * BATCHES + 1))  # each once
    assert [x["epoch"] for x in run if x["type"] == "epoch"] == [1, 2, 3]
    assert [comparable(x) for x in run if x["type"] != "summary"] == [comparable(x) for x in whole
                                                                     if x["type"] != "summary"]


# ------------------------------------------------------------------------------ launchers
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                      "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID", "TORCHELASTIC_RESTART_COUNT")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_group_from_torchrun_or_slurm_variables(no_launcher):
    env = no_launcher
    assert distributed.environment() is None and distributed.restart_count() == 0
    env.setenv("SLURM_PROCID", "3")
    env.setenv("SLURM_NTASKS", "4")
    env.setenv("SLURM_LOCALID", "1")
    group = distributed.environment()
    assert (group.rank, group.local_rank, group.world_size) == (3, 1, 4)
    assert group.describe() == "SLURM_PROCID=3, SLURM_NTASKS=4, SLURM_LOCALID=1"
    with pytest.raises(ValueError, match=r"MASTER_ADDR and MASTER_PORT: unset, but the environment describes a "
                                         r"group of 4 processes \(SLURM_PROCID=3.*export them in the batch "
                                         r"script \(MASTER_ADDR=\$\(scontrol show hostnames"):
        distributed.init()
    env.setenv("RANK", "1")  # torchrun started by srun: torchrun's variables win
    env.setenv("WORLD_SIZE", "2")
    env.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    group = distributed.environment()
    assert (group.rank, group.local_rank, group.world_size) == (1, 1, 2) and distributed.restart_count() == 2
    env.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK=2, WORLD_SIZE=2: expected 0 <= rank < world size"):
        distributed.environment()
    env.setenv("RANK", "one")
    with pytest.raises(ValueError, match=r"RANK: expected an integer \(set by torchrun or SLURM\), got 'one'"):
        distributed.environment()
    env.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match=r"WORLD_SIZE: unset while RANK=one is set"):
        distributed.environment()


@pytest.mark.parametrize("variables, named", [
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29500"},
     "2 process(es) (RANK=0, WORLD_SIZE=2, LOCAL_RANK=0, MASTER_ADDR=10.1.2.3, MASTER_PORT=29500)"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"},
     "8 process(es) (SLURM_PROCID=0, SLURM_NTASKS=8, SLURM_LOCALID=0)"),
])
def test_train_nproc_refused_inside_a_launchers_environment(no_launcher, tmp_path, variables, named):
    config = tmp_path / "c.toml"
    config.write_text('task = "language_model"\n')
    result = CliRunner().invoke(app, ["train", str(config), "--nproc", "2", "--out", str(tmp_path / "o")],
                                env=variables)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"error: --nproc 2: this process was started by a launcher that already set up {named}; "
                     "drop --nproc to train in the launcher's group, or run rnnkit train --nproc outside the "
                     "launcher"]
    assert not (tmp_path / "o").exists()


def test_train_nproc_allowed_in_a_slurm_job_of_one_task(no_launcher, tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path / "missing.toml"), "--nproc", "2"],
                                env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"})
    assert result.exit_code == 2 and "missing.toml: config file not found" in result.output  # not --nproc
