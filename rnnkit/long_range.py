"""Long-range dependencies: the experiments that show why LSTM and GRU were invented.

- ``adding``: train each cell on the adding problem at length T with the same time budget, and
  compare the test MSE with the 0.167 of predicting the mean;
- ``copy``: the same on the copying problem, against its memoryless baseline;
- ``vanishing``: ‖∂L/∂h_t‖ for every t in untrained cells (float64: it underflows float32);
- ``exploding``: a relu RNN whose recurrent matrix has spectral radius > 1 diverges without
  clipping (the Trainer's non-finite detector stops it) and trains with clipping.

Every experiment returns a JSON-able dict; ``rnnkit experiment NAME`` (``run_experiment``) runs one,
prints its table and writes the JSON and the plot.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from .data.synthetic import adding_problem, adding_task, copy_task
from .diagnostics import hidden_gradient_norms, scale_spectral_radius_, vanishing_ratio
from .model import ModelConfig, SequenceModel
from .train import NonFiniteError, TrainConfig, Trainer

CELLS = ("rnn", "lstm", "gru")
TRAINABLE = CELLS + ("mingru", "minlstm")  # the adding and copying problems also train the minimal cells


def cell_init(cell: str, init: str) -> str:
    """The init a cell gets: "chrono" applies to the gated cells; a simple RNN gets "keras" instead."""
    return "keras" if init == "chrono" and cell not in ("lstm", "lstm_ln", "gru") else init


def _model(cell: str, task: str, hidden: int, init: str, length: int) -> SequenceModel:
    """A one-layer network for the adding (regression) or copying (10-way per step) problem; with
    init "chrono" the gate biases expect dependencies of up to the task's whole span."""
    common = {"cell": cell, "hidden_size": hidden, "init": init, "chrono_max_steps": length}
    if task == "adding":
        config = ModelConfig(input_size=2, output_size=1, output_per="sequence", pooling="last", **common)
    else:
        config = ModelConfig(vocab_size=10, embedding_dim=10, output_size=10, output_activation="softmax",
                             output_per="step", **common)
    return SequenceModel(config)


def train_synthetic(task: str, cell: str, length: int, *, minutes: float = 10.0, max_steps: int = 100_000,
                    hidden: int = 128, batch_size: int = 50, lr: float = 1e-3, clip_norm: float = 1.0,
                    init: str = "keras", eval_every: int = 100, target: float | None = None, seed: int = 0,
                    out_dir: str | Path | None = None) -> dict:
    """Train one cell on ``task`` ("adding" or "copy") at length/delay ``length``.

    Stops at ``minutes`` of training, ``max_steps``, or once the test loss reaches ``target``
    (e.g. 0.001 MSE). Returns the test-loss curve, final test loss, baseline, steps and seconds.
    """
    data = (adding_task if task == "adding" else copy_task)(length, batch_size=batch_size)
    torch.manual_seed(seed)
    init = cell_init(cell, init)
    model = _model(cell, task, hidden, init, length if task == "adding" else length + 20)
    x_test, y_test = data.test

    def loss_of(net, x, y):
        logits, _ = net(x)
        if task == "adding":
            return F.mse_loss(logits, y)
        return F.cross_entropy(logits.reshape(-1, 10), y.reshape(-1))

    def loss_fn(net, batch, state):
        return loss_of(net, *batch), None, batch[0].shape[0]

    def evaluate_fn(net):
        total = 0.0
        for x, y in zip(x_test.split(250), y_test.split(250)):
            total += float(loss_of(net, x, y)) * len(x)
        return {"test_loss": total / len(x_test)}

    class Stop:  # ends training once the target is met
        def on_epoch_end(self, trainer, metrics):
            if target is not None and metrics["test_loss"] <= target:
                trainer.request_stop()

    config = TrainConfig(epochs=max(1, max_steps // eval_every), optimizer="adam", lr=lr, clip_norm=clip_norm,
                         max_minutes=minutes, monitor="test_loss", seed=seed, log_every=eval_every,
                         out_dir=None if out_dir is None else str(out_dir))
    trainer = Trainer(model, config, loss_fn=loss_fn, evaluate_fn=evaluate_fn, callbacks=[Stop()])
    batches = iter(data)
    start = time.monotonic()
    trainer.fit(lambda epoch: (next(batches) for _ in range(eval_every)))
    seconds = time.monotonic() - start
    curve = [(int(h["step"]), float(h["test_loss"])) for h in trainer.history if "test_loss" in h]
    return {"task": task, "cell": cell, "length": length, "hidden": hidden, "init": init,
            "baseline": data.baseline, "test_loss": curve[-1][1] if curve else math.nan,
            "best_test_loss": min(v for _, v in curve) if curve else math.nan,
            "steps": trainer.step, "seconds": seconds, "curve": curve}


def vanishing(length: int = 200, *, hidden: int = 128, seeds: int = 5, batch: int = 8,
              init: str = "torch") -> dict:
    """‖∂L/∂h_t‖ over t for untrained cells on the adding problem (loss on the last step), float64.

    Returns per cell the norms curve of seed 0, the ratio ‖∂L/∂h_1‖/‖∂L/∂h_T‖ per seed and its
    geometric mean over seeds.
    """
    x, y = adding_problem(batch, length, seed=0)
    x, y = x.double(), y.double()
    result = {}
    for cell in CELLS:
        ratios, curve = [], None
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = _model(cell, "adding", hidden, init, length).double()
            norms = hidden_gradient_norms(model, x, lambda out: F.mse_loss(out[0], y))
            row = next(iter(norms.values()))[0]  # layer 0: <float64>[T]
            ratios.append(float(vanishing_ratio(row)))
            curve = row.tolist() if curve is None else curve
        positive = [r for r in ratios if r > 0]
        geo = math.exp(sum(math.log(r) for r in positive) / len(positive)) if positive else 0.0
        result[cell] = {"ratios": ratios, "geometric_mean": geo, "norms_seed0": curve}
    return {"length": length, "hidden": hidden, "init": init, "cells": result}


def exploding(length: int = 100, *, radius: float = 1.4, hidden: int = 64, steps: int = 300,
              clip_norm: float = 1.0, lr: float = 1e-2, log_every: int = 25, seed: int = 0) -> dict:
    """A relu RNN with W_hh scaled to spectral radius ``radius`` on the adding problem, trained by
    SGD without and with gradient-norm clipping. Reports how each run ended and its loss curve
    (mean training loss per ``log_every`` steps)."""
    outcomes = {}
    for label, clip in (("no_clipping", 0.0), ("clipping", clip_norm)):
        data = adding_task(length, batch_size=50)
        torch.manual_seed(seed)
        model = _model("rnn_relu", "adding", hidden, "torch", length)
        scale_spectral_radius_(model.stack[0], radius)

        def loss_fn(net, batch, state):
            logits, _ = net(batch[0])
            return F.mse_loss(logits, batch[1]), None, batch[0].shape[0]

        config = TrainConfig(epochs=steps // log_every, optimizer="sgd", lr=lr, clip_norm=clip, seed=seed,
                             log_every=log_every, monitor="train_loss")
        trainer = Trainer(model, config, loss_fn=loss_fn)
        batches = iter(data)
        try:
            trainer.fit(lambda epoch: (next(batches) for _ in range(log_every)))
            message = ""
        except NonFiniteError as error:
            message = str(error)
        outcomes[label] = {"finished": not message, "message": message, "steps": trainer.step,
                           "curve": [(int(h["step"]), float(h["train_loss"])) for h in trainer.history]}
    return {"length": length, "radius": radius, "hidden": hidden, "lr": lr, "clip_norm": clip_norm, **outcomes}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def run_experiment(name: str, *, length: int, cells: list[str] | tuple[str, ...] = CELLS, minutes: float = 10.0,
                   out: str | Path = "runs/long_range", init: str = "keras", hidden: int = 128,
                   batch_size: int = 50, lr: float = 1e-3) -> str:
    """Run one experiment (module docstring), write ``<out>/<name>-<length>.json`` and its PNG, and
    return a markdown table of the figures."""
    from .plots import plot_gradient_norms, plot_loss_curves
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {"init": init, "hidden": hidden, "batch": batch_size, "lr": lr}
    defaults = {"init": "keras", "hidden": 128, "batch": 50, "lr": 1e-3}
    stem = out / "-".join([name, str(length)] + [f"{k}{v}" if k != "init" else str(v)
                                                 for k, v in options.items() if v != defaults[k]])
    if name in ("adding", "copy"):
        unknown = [c for c in cells if c not in TRAINABLE]
        if unknown:
            raise ValueError(f"cells: expected names from {list(TRAINABLE)}, got {unknown}")
        if init not in ("keras", "torch", "chrono"):
            raise ValueError(f"init: expected 'keras', 'torch' or 'chrono', got {init!r}")
        runs = [train_synthetic(name, cell, length, minutes=minutes, target=1e-3, init=init, hidden=hidden,
                                batch_size=batch_size, lr=lr) for cell in cells]
        result: dict = {"runs": runs}
        plot_loss_curves({r["cell"]: [[s for s, _ in r["curve"]], [v for _, v in r["curve"]]] for r in runs},
                         stem.with_suffix(".png"), baseline=runs[0]["baseline"], ylabel="test loss",
                         title=f"{name} problem, T = {length}" + "".join(
                             f", {k} {v}" for k, v in options.items() if v != defaults[k]))
        rows = [["cell", "init", "test loss", "best test loss", "baseline", "steps", "seconds"]]
        rows += [[r["cell"], r["init"], f"{r['test_loss']:.4g}", f"{r['best_test_loss']:.4g}", f"{r['baseline']:.4g}",
                  str(r["steps"]), f"{r['seconds']:.0f}"] for r in runs]
    elif name == "vanishing":
        result = vanishing(length)
        plot_gradient_norms({c: v["norms_seed0"] for c, v in result["cells"].items()}, stem.with_suffix(".png"),
                            title=f"‖∂L/∂h_t‖, untrained cells, T = {length} (float64)")
        rows = [["cell", "‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ (geometric mean)", "per seed"]]
        rows += [[c, f"{v['geometric_mean']:.3g}", ", ".join(f"{r:.2g}" for r in v["ratios"])]
                 for c, v in result["cells"].items()]
    elif name == "exploding":
        result = exploding(length)
        plot_loss_curves({k: [[s for s, _ in result[k]["curve"]] or [0], [v for _, v in result[k]["curve"]] or [1]]
                          for k in ("no_clipping", "clipping")}, stem.with_suffix(".png"),
                         title=f"relu RNN, spectral radius {result['radius']}, T = {length}", ylabel="train loss")
        rows = [["run", "finished", "steps", "last train loss", "message"]]
        rows += [[k, str(result[k]["finished"]), str(result[k]["steps"]),
                  f"{result[k]['curve'][-1][1]:.4g}" if result[k]["curve"] else "-", result[k]["message"][:160]]
                 for k in ("no_clipping", "clipping")]
    else:
        raise ValueError(f"name: expected one of adding, copy, vanishing, exploding, got {name!r}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return _table(rows) + f"\n\nwritten: {stem.with_suffix('.json')}, {stem.with_suffix('.png')}"


def diagnose_checkpoint(path: str | Path, *, length: int = 100, batch: int = 4, plot: str | Path | None = None) -> str:
    """Gradient health of a trained model: for a random probe batch, ‖∂L/∂h_t‖ of every layer with
    L the sum of the last step's outputs (how much each earlier state still moves the newest
    output), the ratio first/last step, and the spectral radius of every W_hh."""
    from . import load
    from .diagnostics import spectral_radius
    from .layers.recurrent import RecurrentBase
    from .plots import plot_gradient_norms
    model = load(path).model.double()
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    x = (torch.randint(1, cfg.vocab_size, (batch, length), generator=gen) if cfg.vocab_size
         else torch.randn(batch, length, cfg.input_size, generator=gen, dtype=torch.float64))
    last = (lambda out: out[0][:, -1].sum()) if cfg.output_per == "step" else (lambda out: out[0].sum())
    norms = hidden_gradient_norms(model, x, last)
    rows = [["module", "row", "‖∂L/∂h_1‖ / ‖∂L/∂h_T‖"]]
    for name, n in norms.items():
        rows += [[name, str(i), f"{float(vanishing_ratio(r)):.3g}"] for i, r in enumerate(n)]
    radius_rows = [["module", "matrix", "spectral radius per gate"]]
    for name, module in model.named_modules():
        if isinstance(module, RecurrentBase):
            for matrix, gates in spectral_radius(module).items():
                radius_rows.append([name, matrix, ", ".join(f"{g} {v:.3g}" for g, v in gates.items())])
    if plot is not None:
        plot_gradient_norms({f"{name}": n for name, n in norms.items()}, plot)
    return _table(rows) + "\n\n" + _table(radius_rows)
