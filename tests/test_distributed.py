"""Data-parallel training: 2 CPU processes (gloo), each on half of every global batch, match one
process on the whole batch; and the single-process behaviour of the helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import distributed
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


def train(out_dir: str) -> dict:
    """Runs in every process: each rank trains on its shard of the same global batches."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    log = LossLog()
    config = TrainConfig(epochs=2, optimizer="sgd", lr=0.1, momentum=0.9, clip_norm=1.0, device="cpu",
                         log_every=2, out_dir=out_dir)
    trainer = Trainer(Regressor(), config, loss_fn=mse_loss, callbacks=[log],
                      evaluate_fn=lambda model: {"val_loss": mse_loss(model, global_batches(0)[0], None)[0]})
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
