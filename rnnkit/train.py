"""Training: one generic, callback-driven ``Trainer`` for every task.

A task hands the Trainer three things (minGPT style, the Trainer knows nothing of the task)::

    loss_fn(model, batch, state) -> (loss, new_state, n_items)
        mean loss over the batch (a scalar tensor); ``state`` is the recurrent state carried from the
        previous batch for truncated BPTT (None at each epoch start; the Trainer detaches it between
        batches); tasks without carried state return None. n_items weighs the batch in the epoch
        loss and throughput (tokens, sequences, windows).
    evaluate_fn(model) -> {"val_loss": ..., ...}     optional; after each epoch, in eval mode, no grad
    train_batches(epoch) -> iterable of batches      epochs count from 1

``train_batches`` must give the same batches for the same epoch every time (seed its shuffling
from the epoch, never from the global RNGs): exact resumption replays the interrupted epoch.

Wiring a task::

    config = TrainConfig(epochs=13, optimizer="sgd", lr=1.0, schedule="step", gamma=0.5,
                         decay_start=4, out_dir="runs/ptb")
    trainer = Trainer(model, config, loss_fn=lm_loss, evaluate_fn=lm_evaluate,
                      checkpoint_extras={"vocab": vocab.to_dict()}, model_config=model_cfg)
    history = trainer.fit(lambda epoch: stream.batches(epoch), resume=True)

Each epoch writes ``<out_dir>/last`` (and ``<out_dir>/best`` when the monitored metric improves)
with ``rnnkit.io.save_checkpoint``; ``fit(resume=True)`` or ``Trainer.resume(path)`` continues so
that weights and metrics are identical to an uninterrupted run. Metrics go to
``<out_dir>/metrics.jsonl`` (one JSON object per line, ``"type"``: ``"step"``, ``"epoch"`` or
``"stop"``), to a progress bar on a terminal or plain lines otherwise, and optionally TensorBoard.

With several processes (``rnnkit.distributed.launch`` or torchrun) the model is wrapped in
DistributedDataParallel, each rank trains on its own shard of every global batch, logged losses
are averaged over ranks (weighted by n_items), ``evaluate_fn`` runs on rank 0 only (it must not
use collectives) and only rank 0 writes files; on resuming, rank 0 reads the checkpoint and sends it to
the others. A worker group that ``torchrun --max-restarts`` restarted after a failure resumes from
``<out_dir>/last`` by itself. Resuming cuts ``metrics.jsonl`` back to the resumed step, so that replayed
steps are not recorded twice.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .config import Config
from .io.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from .kernels.buffers import pool
from .summary import build_summary, format_summary

__all__ = ["TrainConfig", "Trainer", "NonFiniteError", "LRSchedule", "build_optimizer",
           "seed_everything", "repackage_hidden"]


class TrainConfig(Config):
    """How to train: optimizer, schedule, clipping, stopping, checkpoints and logging."""

    epochs: int = Field(10, ge=1, description="number of passes over the training data")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, gt=0, description="initial learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (sgd only)")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (sgd, adam) or decoupled decay (adamw)")
    clip_norm: float = Field(5.0, ge=0, description="clip the global gradient norm to this; 0 disables")
    schedule: Literal["none", "step", "plateau"] = Field(
        "none", description="lr schedule: none; step (gamma every step_size epochs after decay_start); "
                            "plateau (times plateau_factor when the monitored metric stalls)")
    step_size: int = Field(1, ge=1, description="step schedule: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="step schedule: lr factor per decay")
    decay_start: int = Field(0, ge=0, description="step schedule: epochs (1-based) after this one decay; "
                                                   "epoch e runs at "
                                                   "lr*gamma**ceil(max(0, e-decay_start)/step_size)")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau schedule: lr factor per reduction")
    plateau_patience: int = Field(0, ge=0, description="plateau schedule: reduce after more than this many "
                                                       "epochs without improvement")
    early_stop_patience: int = Field(0, ge=0, description="stop after this many epochs without "
                                                          "improvement; 0 = off")
    monitor: str = Field("auto", description="epoch metric for the best checkpoint, plateau and early stop; "
                                             "auto = val_loss with an evaluate_fn, else train_loss")
    monitor_mode: Literal["min", "max"] = Field("min", description="whether a lower or higher monitor "
                                                                    "is better")
    seed: int = Field(0, description="seed for torch, numpy and random at the start of a fresh fit")
    log_every: int = Field(50, ge=1, description="log a step line (and grad norms) every this many steps")
    out_dir: str | None = Field(None, description="directory for checkpoints (last, best) and metrics.jsonl; "
                                                  "None writes nothing")
    tensorboard: bool = Field(False, description="also log to TensorBoard in <out_dir>/tensorboard "
                                                 "(needs the tensorboard package)")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="non-finite loss or gradient: stop with NonFiniteError, or skip the batch")
    record_grad_norms: bool = Field(False, description="record global and per-parameter gradient norms "
                                                       "(before clipping) every log_every steps")
    max_minutes: float = Field(0.0, ge=0, description="time budget per fit(); stop after the step that "
                                                      "exceeds it, saving last; 0 = no limit")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    threads: int = Field(0, ge=0, description="CPU threads for the run (torch.set_num_threads, restored "
                                              "after fit); 0 keeps torch's setting")

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"momentum: only optimizer='sgd' uses momentum, got momentum={self.momentum} "
                             f"with optimizer={self.optimizer!r}")
        if self.tensorboard and self.out_dir is None:
            raise ValueError("tensorboard: TensorBoard logs go to <out_dir>/tensorboard; set out_dir")
        return self


class NonFiniteError(RuntimeError):
    """The loss, a gradient or the model's weights became NaN or infinite."""


# ------------------------------------------------------------------------------------ helpers
def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def repackage_hidden(state: Any) -> Any:
    """Detach every tensor in a (nested tuple/list/dict) state from its graph, for truncated BPTT."""
    return _map_tensors(state, Tensor.detach)


def _map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def build_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` with its lr, momentum and weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


class LRSchedule:
    """Per-epoch learning rate: ``none`` (constant), ``step`` or ``plateau`` (see TrainConfig).

    Zaremba et al.'s "lr 1, halved every epoch after the 4th" is ``schedule="step", lr=1,
    gamma=0.5, decay_start=4``: epochs 1-4 at 1, epoch 5 at 0.5, epoch 6 at 0.25, …
    torch's ``StepLR(step_size=s)`` is ``decay_start=s, step_size=s``.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.best: float | None = None
        self.bad_epochs = 0

    def factor(self, epoch: int) -> float:
        """The step schedule's lr multiplier for 1-based ``epoch``."""
        c = self.config
        return c.gamma ** math.ceil(max(0, epoch - c.decay_start) / c.step_size)

    def begin_epoch(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Set the lr for ``epoch`` (step schedule; the others keep the optimizer's lr)."""
        if self.config.schedule == "step":
            for group in optimizer.param_groups:
                group["lr"] = self.config.lr * self.factor(epoch)

    def end_epoch(self, optimizer: torch.optim.Optimizer, value: float) -> None:
        """Feed the epoch's monitored metric (plateau schedule reduces the lr when it stalls)."""
        if self.config.schedule != "plateau":
            return
        if _better(value, self.best, self.config.monitor_mode):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.config.plateau_patience:
            for group in optimizer.param_groups:
                group["lr"] *= self.config.plateau_factor
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch.cuda.is_available() is False; "
                         "use 'cpu' or 'auto'")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())  # the process's own GPU, set by distributed.init


def _open_tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError("tensorboard=True: TensorBoard logging needs the 'tensorboard' package, which is "
                          f"not installed ({e}); install it or set tensorboard=false") from None
    return SummaryWriter(log_dir=str(log_dir))


def _open_metrics(path: Path, step: int):
    """``metrics.jsonl`` for appending after ``step``: a fresh file at step 0; otherwise the records of
    later steps (written before an interruption, to be written again now) are cut off first, and so is
    a line that a killed process left unfinished."""
    if step == 0 or not path.exists():
        return open(path, "w", encoding="utf-8")
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or record.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)
    return open(path, "a", encoding="utf-8")


def load_checkpoint_on_main(path: str | Path):
    """``load_checkpoint(path)`` read by rank 0 and sent to every rank; rank 0's error is raised on all."""
    loaded: Any = None
    if distributed.is_main():
        try:
            loaded = load_checkpoint(path)
        except Exception as error:  # every rank raises it, rather than waiting for a checkpoint forever
            loaded = error
    loaded = distributed.broadcast_object(loaded)
    if isinstance(loaded, Exception):
        raise loaded
    return loaded


_STOP_REASONS = {  # what the console says when training ends before train.epochs
    "time_budget": "the time budget train.max_minutes = {config.max_minutes} ran out",
    "early_stop": "no improvement of the monitored metric for train.early_stop_patience = {config.early_stop_patience} epochs",
    "requested": "a stop was requested",
}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """Trains ``model`` with ``loss_fn`` over ``train_batches(epoch)``; see the module docstring.

    callbacks: objects with any of ``on_step_end(trainer, info)`` and ``on_epoch_end(trainer,
    metrics)``; info has epoch, step, batch, loss, lr, grad_norm, items, skipped. A callback may
    call ``trainer.request_stop()``: training stops after that step, saving ``last``.
    checkpoint_extras: ``{name: JSON data}`` saved beside the weights (e.g. ``{"vocab": ...}``).
    model_config: dict or Config saved as the checkpoint's ``config.json`` (to rebuild the model).
    summary: the task's facts about its data for the run's summary (``rnnkit.summary``: task, unit,
    splits, vocab_size, classes, batch_size, batches_per_epoch, ...); ``fit`` adds the model's and
    the machine's, prints it before the first step and writes it first to metrics.jsonl.

    After ``fit``: ``history`` (per-epoch metric dicts), ``grad_norm_history`` (with
    record_grad_norms), ``skipped_batches``, ``best`` / ``best_epoch``, ``stop_reason`` (None,
    "early_stop", "time_budget" or "requested").
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, *,
                 loss_fn: Callable[[nn.Module, Any, Any], tuple[Tensor, Any, int]],
                 evaluate_fn: Callable[[nn.Module], dict[str, float]] | None = None,
                 callbacks: Sequence[object] = (), checkpoint_extras: dict[str, Any] | None = None,
                 model_config: dict | Config | None = None, summary: dict[str, Any] | None = None) -> None:
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable (model, batch, state) -> (loss, state, n_items), "
                            f"got {type(loss_fn).__name__}")
        self.config = config
        distributed.init()
        self.is_main = distributed.is_main()
        self.device = _resolve_device(config.device)
        self.module = model.to(self.device)
        self.model: nn.Module = self.module
        if distributed.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        self.optimizer = build_optimizer(self.module.parameters(), config)
        self.schedule = LRSchedule(config)
        self.loss_fn, self.evaluate_fn = loss_fn, evaluate_fn
        self.callbacks = list(callbacks)
        self.summary = dict(summary or {})  # the task's data facts; fit() completes it (rnnkit.summary)
        self.checkpoint_extras = dict(checkpoint_extras or {})
        self.model_config = (model_config.to_dict() if isinstance(model_config, Config)
                             else dict(model_config or {}))
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        self.monitor = config.monitor if config.monitor != "auto" else (
            "val_loss" if evaluate_fn is not None else "train_loss")

        self.epoch = 0  # completed epochs
        self.step = 0  # batches trained on (skipped ones included)
        self.history: list[dict] = []
        self.grad_norm_history: list[dict] = []
        self.skipped_batches = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stop_reason: str | None = None
        self._partial: dict | None = None  # position inside an interrupted epoch, set by resume()
        self._resumed = False
        self._stop_requested = False
        self._metrics_file = None
        self._tensorboard = (_open_tensorboard(self.out_dir / "tensorboard")
                             if config.tensorboard and self.is_main else None)

    # ------------------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Stop after the current step (from a callback); ``last`` is saved for resumption."""
        self._stop_requested = True

    @property
    def lr(self) -> float:
        """The optimizer's current learning rate (first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def fit(self, train_batches: Callable[[int], Iterable[Any]], *, resume: bool = False) -> list[dict]:
        """Train up to ``config.epochs``; returns ``history``, one metrics dict per epoch.

        resume: continue from ``<out_dir>/last`` when it exists (a fresh start otherwise). A worker
            group that torchrun restarted (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes so without being asked.
        """
        if not callable(train_batches):
            raise TypeError("train_batches: expected a callable epoch -> iterable of batches "
                            f"(e.g. lambda epoch: loader), got {type(train_batches).__name__}")
        if resume and self.out_dir is None:
            raise ValueError("resume: needs config.out_dir, where the 'last' checkpoint lives")
        restarts = self._restarts()
        restarted = restarts > 0 and self.out_dir is not None and self.step == 0 and not self._resumed
        if resume or restarted:
            last = self.out_dir / "last"
            # rank 0 decides (its file system holds the checkpoints); resume() sends every rank its contents
            found = distributed.broadcast_object(self.is_main and (last.exists() or
                                                                   last.with_name("last.old").exists()))
            if restarted:
                self._print(f"restart {restarts} by torchrun: " +
                            (f"resuming from {last}" if found else f"no checkpoint in {self.out_dir} yet, "
                             "starting over"))
            if found:
                self.resume(last)
        if self.step == 0 and not self._resumed:
            seed_everything(self.config.seed)
        self.stop_reason, self._stop_requested = None, False
        threads = torch.get_num_threads()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self._fit_start = time.monotonic()
        if self.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._metrics_file = _open_metrics(self.out_dir / "metrics.jsonl", self.step)
        try:
            self._announce(train_batches)
            while self.epoch < self.config.epochs and self.stop_reason is None:
                self._train_epoch(self.epoch + 1, train_batches)
            if self.stop_reason is not None:
                self._write_metrics({"type": "stop", "reason": self.stop_reason, "epoch": self.epoch,
                                     "step": self.step})
                self._print(f"stopped after epoch {self.epoch} of {self.config.epochs} (step {self.step}): "
                            + _STOP_REASONS.get(self.stop_reason, self.stop_reason).format(config=self.config))
            distributed.barrier()  # no rank goes on (e.g. to read best) before rank 0 has written it
        finally:
            if self._metrics_file is not None:
                self._metrics_file.close()
                self._metrics_file = None
            if self._tensorboard is not None:
                self._tensorboard.flush()
            pool.clear()  # the fused kernels' buffers kept from step to step: not needed after training
            torch.set_num_threads(threads)
        return self.history

    def _announce(self, train_batches: Callable[[int], Iterable[Any]]) -> None:
        """Print what will run (``rnnkit.summary``) and, on a fresh start, write it as metrics.jsonl's
        first record; ``self.summary`` becomes the full record."""
        if not self.is_main:
            return
        facts = dict(self.summary)
        if facts.get("batches_per_epoch") is None:
            batches = train_batches(self.epoch + 1)
            facts["batches_per_epoch"] = len(batches) if hasattr(batches, "__len__") else None
        self.summary = build_summary(self.module, facts, device=self.device)
        self._print(format_summary(self.summary))
        if self.step == 0:
            self._write_metrics({"type": "summary", **self.summary})

    def _restarts(self) -> int:
        """How often torchrun restarted the workers after a failure: the most any machine counted (each
        machine's agent counts its own failures, so a healthy machine's workers may read 0)."""
        count = distributed.restart_count()
        if distributed.world_size() > 1:
            total = torch.tensor([count], dtype=torch.float64, device=self.device)
            count = int(distributed.all_reduce_max(total).item())
        return count

    def resume(self, path: str | Path) -> Trainer:
        """Restore weights, optimizer, schedule, counters, RNG states and the position inside an
        interrupted epoch from a checkpoint written by this Trainer; the next ``fit`` continues.

        With several processes rank 0 reads the checkpoint and sends it to the others, so that their
        machines need not see rank 0's files."""
        checkpoint = load_checkpoint_on_main(path)
        state = checkpoint.trainer_state
        if state is None:
            raise ValueError(f"{path}: checkpoint has no trainer state (saved for inference); cannot resume")
        check_state_dict(self.module, checkpoint.state_dict, source=Path(path) / "model.safetensors")
        self.module.load_state_dict(checkpoint.state_dict)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        for key in ("epoch", "step", "history", "skipped_batches", "best", "best_epoch", "bad_epochs"):
            setattr(self, key, state[key])
        self._partial = state["partial"]
        _set_rng_state(state["rng"])
        self._resumed = True
        return self

    def state_dict(self, partial: dict | None = None) -> dict:
        """Everything besides the weights that exact resumption needs (``partial``: position
        inside an unfinished epoch)."""
        return {"epoch": self.epoch, "step": self.step, "history": self.history,
                "skipped_batches": self.skipped_batches, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "partial": partial, "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "rng": _rng_state(),
                "train_config": self.config.to_dict()}

    # ------------------------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int, train_batches: Callable[[int], Iterable[Any]]) -> None:
        position = self._partial or {"batch": 0, "loss_sum": 0.0, "items": 0, "skipped": 0,
                                     "state": None, "time_s": 0.0}
        self._partial = None
        self.schedule.begin_epoch(self.optimizer, epoch)
        self.model.train()
        state = _map_tensors(self._own_state(position), lambda t: t.to(self.device))
        loss_sum, items, skipped = position["loss_sum"], position["items"], position["skipped"]
        start, window_start, window_items = time.monotonic() - position["time_s"], time.monotonic(), 0
        batches = train_batches(epoch)
        bar = self._progress_bar(epoch, batches, position["batch"])
        index = -1
        for index, batch in enumerate(batches):
            if index < position["batch"]:
                continue
            loss, n, state, grad_norm = self._train_step(epoch, batch, state)
            self.step += 1
            if loss is None:
                skipped += 1
            else:
                loss_sum, items, window_items = loss_sum + loss * n, items + n, window_items + n
            info = {"epoch": epoch, "step": self.step, "batch": index + 1, "loss": loss, "lr": self.lr,
                    "grad_norm": grad_norm, "items": n, "skipped": skipped}
            if bar is not None:
                self._update_bar(bar, info, items / max(time.monotonic() - start, 1e-9))
            if self.step % self.config.log_every == 0:
                now = time.monotonic()
                info["items_per_s"] = window_items / max(now - window_start, 1e-9)
                window_start, window_items = now, 0
                self._log_step(info)
            for callback in self.callbacks:
                if hasattr(callback, "on_step_end"):
                    callback.on_step_end(self, info)
            reason = self._stop_now()
            if reason is not None:
                partial = {"batch": index + 1, "loss_sum": loss_sum, "items": items, "skipped": skipped,
                           "time_s": time.monotonic() - start, **self._carried_states(state)}
                self._save("last", partial)
                self.stop_reason = reason
                if bar is not None:
                    bar.close()
                return
        if bar is not None:
            bar.close()
        if index < 0:
            raise ValueError(f"train_batches({epoch}): expected at least one batch, got none")
        elapsed = time.monotonic() - start
        metrics = {"epoch": epoch, "step": self.step, "lr": self.lr,
                   "train_loss": loss_sum / items if items else float("nan"),
                   "items_per_s": items / max(elapsed, 1e-9), "time_s": elapsed, "skipped_batches": skipped}
        metrics.update(self._evaluate())
        self._end_epoch(epoch, metrics)

    @staticmethod
    def _carried_states(state: Any) -> dict:
        """The recurrent state carried into the next batch, for a mid-epoch checkpoint: ``{"state": ...}``
        in one process; with several, each rank carries its own shard's, so ``{"rank_states": [...]}``
        (gathered from every rank; None when no rank carries any)."""
        state = _map_tensors(state, lambda t: t.detach().cpu())
        if distributed.world_size() == 1:
            return {"state": state}
        states = distributed.all_gather_object(state)
        return {"state": None, "rank_states": None if all(s is None for s in states) else states}

    @staticmethod
    def _own_state(position: dict) -> Any:
        """This rank's carried state from a mid-epoch position (see ``_carried_states``)."""
        states = position.get("rank_states")
        if states is None:
            if position["state"] is None or distributed.world_size() == 1:
                return position["state"]
            states = [position["state"]]  # one process's state cannot seed several
        if len(states) != distributed.world_size():
            raise ValueError(f"resume: the checkpoint was saved mid-epoch by {len(states)} processes, each "
                             f"carrying its own recurrent state, but this run has {distributed.world_size()}; "
                             f"resume with {len(states)} processes (nproc), or from a checkpoint saved at an "
                             "epoch's end")
        return states[distributed.rank()]

    def _end_epoch(self, epoch: int, metrics: dict) -> None:
        if self.monitor not in metrics:
            raise ValueError(f"monitor: {self.monitor!r} is not among the epoch metrics {sorted(metrics)}; "
                             "set TrainConfig.monitor to one of them")
        value = metrics[self.monitor]
        self.schedule.end_epoch(self.optimizer, value)
        improved = _better(value, self.best, self.config.monitor_mode)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        self.history.append(metrics)
        self._write_metrics({"type": "epoch", **metrics})
        self._print(f"epoch {epoch} done | " + " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()
                                                            if k not in ("epoch", "step")))
        if self._tensorboard is not None:
            for key, v in metrics.items():
                self._tensorboard.add_scalar(f"epoch/{key}", v, epoch)
        if improved:
            self._save("best")
        self._save("last")
        for callback in self.callbacks:
            if hasattr(callback, "on_epoch_end"):
                callback.on_epoch_end(self, metrics)
        if self.config.early_stop_patience and self.bad_epochs >= self.config.early_stop_patience:
            self.stop_reason = "early_stop"
        elif self.epoch < self.config.epochs:
            self.stop_reason = self._stop_now()

    def _evaluate(self) -> dict[str, float]:
        """evaluate_fn on rank 0 (eval mode, no grad), its metrics shared with every rank."""
        if self.evaluate_fn is None:
            return {}
        metrics = None
        if self.is_main:
            self.module.eval()
            with torch.no_grad():
                metrics = self.evaluate_fn(self.module)
            self.module.train()
            if not isinstance(metrics, dict):
                raise TypeError("evaluate_fn: expected a dict of metric name -> number, "
                                f"got {type(metrics).__name__}")
            metrics = {k: float(v) for k, v in metrics.items()}
        return distributed.broadcast_object(metrics)

    # -------------------------------------------------------------------------------- steps
    def _train_step(self, epoch: int, batch: Any, state: Any) -> tuple[float | None, int, Any, float]:
        """One optimizer step. Returns (mean loss over ranks or None if skipped, items over ranks,
        carried state, gradient norm before clipping)."""
        batch = _map_tensors(batch, lambda t: t.to(self.device, non_blocking=True))
        out = self.loss_fn(self.model, batch, repackage_hidden(state))
        if not (isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], Tensor)
                and out[0].dim() == 0):
            got = tuple(type(o).__name__ for o in out) if isinstance(out, tuple) else out
            raise TypeError(f"loss_fn: expected (loss: scalar tensor, new_state, n_items), got "
                            f"{type(out).__name__} {got}")
        loss, state, n = out
        n = float(n)
        totals = torch.stack([loss.detach().double() * n,
                              torch.tensor(n, dtype=torch.float64, device=loss.device)])
        totals = distributed.all_reduce_sum(totals)
        mean_loss, items = (totals[0] / totals[1]).item(), int(totals[1].item())
        self.optimizer.zero_grad(set_to_none=True)
        world = distributed.world_size()
        if world > 1 and n * world != items:
            # DDP averages the ranks' gradients with equal weights; a rank with more of the batch's items
            # weighs more in the batch's mean loss, so its loss is scaled to make the average that gradient
            loss = loss * (n * world / items)
        loss.backward()
        named = [(name, p.grad) for name, p in self.module.named_parameters() if p.grad is not None]
        grads = [g for _, g in named]
        total_norm = nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        grad_norm = total_norm.item()
        if self.config.record_grad_norms and (self.step + 1) % self.config.log_every == 0:
            self.grad_norm_history.append({"epoch": epoch, "step": self.step + 1, "grad_norm": grad_norm,
                                           "grad_norms": {name: g.norm().item() for name, g in named}})
        problem = None
        if not math.isfinite(mean_loss):
            problem = f"the loss is {mean_loss}"
        elif not math.isfinite(grad_norm):
            bad = [name for name, g in named if not torch.isfinite(g).all()]
            if bad:
                problem = (f"the gradient of parameter {bad[0]!r} went non-finite first ({len(bad)} of "
                           f"{len(named)} parameters: {', '.join(bad[:5])}; loss {mean_loss:.6g})")
            else:  # every entry finite, but the norm overflows: exploding gradients
                largest = max(named, key=lambda item: item[1].abs().max().item())[0]
                problem = (f"the gradient norm overflowed to {grad_norm} (largest entries in {largest!r}; "
                           f"loss {mean_loss:.6g})")
        if problem is not None:
            if self.config.on_nonfinite == "stop":
                raise NonFiniteError(
                    f"non-finite training at epoch {epoch}, step {self.step + 1}: {problem}. Try gradient "
                    f"clipping (clip_norm, now {self.config.clip_norm}), a lower lr (now {self.lr:.3g}), or "
                    "on_nonfinite='skip'; the last checkpoint is the last good state")
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_batches += 1
            return None, items, None, grad_norm  # the carried state may be poisoned: restart it
        if self.config.clip_norm > 0:
            nn.utils.clip_grads_with_norm_(self.module.parameters(), self.config.clip_norm, total_norm)
        self.optimizer.step()
        return mean_loss, items, state, grad_norm

    def _stop_now(self) -> str | None:
        """Why to stop now (request, time budget), agreed over all ranks; None to go on."""
        reason = None
        if self._stop_requested:
            reason = "requested"
        elif self.config.max_minutes and time.monotonic() - self._fit_start > 60 * self.config.max_minutes:
            reason = "time_budget"
        if distributed.world_size() > 1:
            codes = torch.tensor([reason == "requested", reason == "time_budget"], dtype=torch.float64)
            codes = distributed.all_reduce_sum(codes.to(self.device))
            reason = "requested" if codes[0] > 0 else "time_budget" if codes[1] > 0 else None
        return reason

    # --------------------------------------------------------------------------- checkpoints
    def _save(self, name: str, partial: dict | None = None) -> None:
        """Write ``<out_dir>/<name>`` (rank 0), refusing weights that are not finite (every rank
        checks, so that all stop together)."""
        if self.out_dir is None:
            return
        path = self.out_dir / name
        weights = self.module.state_dict()
        for key, value in weights.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise NonFiniteError(f"{path}: refusing to save a checkpoint at epoch {self.epoch}, step "
                                     f"{self.step}: {key!r} has non-finite values; the previous "
                                     "checkpoint is kept")
        if self.is_main:
            save_checkpoint(path, weights, self.model_config, self.checkpoint_extras,
                            self.state_dict(partial))

    # ------------------------------------------------------------------------------- logging
    def _progress_bar(self, epoch: int, batches: Iterable[Any], done: int):
        if not (self.is_main and sys.stderr.isatty()):
            return None
        total = len(batches) if hasattr(batches, "__len__") else None
        return tqdm(total=total, initial=done, desc=f"epoch {epoch}/{self.config.epochs}",
                    file=sys.stderr, dynamic_ncols=True, leave=False)

    def _update_bar(self, bar, info: dict, items_per_s: float) -> None:
        postfix = {"loss": _fmt(info["loss"])}
        if self.history:  # the monitored metric of the last finished epoch
            postfix[self.monitor] = _fmt(self.history[-1][self.monitor])
        postfix["items/s"] = f"{items_per_s:.0f}"
        bar.update(1)
        bar.set_postfix(postfix, refresh=False)

    def _print(self, line: str) -> None:
        if self.is_main:
            tqdm.write(line, file=sys.stderr)

    def _write_metrics(self, record: dict) -> None:
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(record) + "\n")
            self._metrics_file.flush()

    def _log_step(self, info: dict) -> None:
        record = {"type": "step", **info}
        if self.grad_norm_history and self.grad_norm_history[-1]["step"] == info["step"]:
            record["grad_norms"] = self.grad_norm_history[-1]["grad_norms"]
        self._write_metrics(record)
        if not sys.stderr.isatty():
            self._print(f"epoch {info['epoch']} step {info['step']} | loss {_fmt(info['loss'])} | "
                        f"lr {_fmt(info['lr'])} | grad_norm {_fmt(info['grad_norm'])} | "
                        f"{info['items_per_s']:.0f} items/s")
        if self._tensorboard is not None:
            for key in ("loss", "lr", "grad_norm", "items_per_s"):
                if info[key] is not None:
                    self._tensorboard.add_scalar(f"step/{key}", info[key], info["step"])
