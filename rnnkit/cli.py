"""The ``rnnkit`` command line: a thin layer over the Python API, one call per command.

User errors (bad config, missing file, corrupt checkpoint, ...) print one line and exit with 2,
without a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="rnnkit: recurrent neural networks from their equations, on PyTorch.")

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, KeyError)


def user_errors(fn):
    """Turn the API's clear exceptions into a one-line message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
    return wrapper


def _show_warnings() -> None:
    warnings.simplefilter("default")
    warnings.showwarning = lambda message, *a, **k: typer.echo(f"warning: {message}", err=True)


def _train_one(config: Path, overrides: list[str], out: Path, resume: bool) -> dict:
    from . import tasks
    task = tasks.fit(tasks.load_experiment(config, overrides), out, resume=resume)
    return task.results


@app.command()
@user_errors
def train(config: Annotated[Path, typer.Argument(help="experiment TOML, e.g. configs/ptb_small.toml")],
          set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, key=value (repeatable)")] = None,
          out: Annotated[Path, typer.Option(help="directory for checkpoints and metrics")] = Path("runs/latest"),
          nproc: Annotated[int, typer.Option(help="processes (torch.distributed DDP; gloo on CPU, NCCL on GPU)")] = 1,
          resume: Annotated[bool, typer.Option(help="continue from <out>/last")] = False) -> None:
    """Train the experiment a config describes; prints the final test figures."""
    from . import distributed, tasks
    _show_warnings()
    overrides = list(set_ or [])
    experiment = tasks.load_experiment(config, overrides)  # fail fast, in this process, on a bad config
    if nproc > 1:
        distributed.per_rank(getattr(getattr(experiment, "data", None), "batch_size", nproc), "data.batch_size", nproc)
        results = distributed.launch(_train_one, nproc, config, overrides, out, resume)[0]
    else:
        results = _train_one(config, overrides, out, resume)
    typer.echo(json.dumps({"checkpoint": str(out / "best"), **results}, indent=2))


@app.command()
@user_errors
def evaluate(checkpoint: Annotated[Path, typer.Argument(help="checkpoint directory, e.g. runs/ptb/best")],
             data: Annotated[Path, typer.Option(help="text file to score (plain or .gz)")],
             batch_size: Annotated[int, typer.Option(help="parallel streams")] = 1) -> None:
    """Perplexity (word models) or bits per character (character models) on a text file."""
    from . import tasks
    lm = tasks.load(checkpoint)
    result = lm.evaluate(data, batch_size=batch_size)
    unit = "bpc" if lm.char_level else "ppl"
    typer.echo(f"{unit} {result[unit]:.4f}  (loss {result['loss']:.4f} nats/token over {result['tokens']} tokens)")


@app.command()
@user_errors
def generate(checkpoint: Annotated[Path, typer.Argument(help="language-model checkpoint directory")],
             prompt: Annotated[str, typer.Option(help="text to continue")] = "",
             top_k: Annotated[int, typer.Option(help="without --length: list the k most likely next tokens; "
                                                "with it: sample among the top k (0 = all)")] = 0,
             length: Annotated[int, typer.Option(help="sample this many tokens (0: list the next-token top-k)")] = 0,
             temperature: Annotated[float, typer.Option(help="sampling temperature")] = 1.0,
             seed: Annotated[Optional[int], typer.Option(help="sampling seed")] = None) -> None:
    """Next-token predictions with probabilities, or a sampled continuation."""
    from . import tasks
    _show_warnings()
    lm = tasks.load(checkpoint)
    if length:
        continuation = lm.generate(prompt, length, temperature, top_k, seed)
        typer.echo(prompt + ("" if lm.char_level else " ") + continuation)
        return
    for token, prob in lm.predict_next(prompt, top_k or 5):
        typer.echo(f"{prob:8.4f}  {token}")


@app.command()
@user_errors
def experiment(name: Annotated[str, typer.Argument(help="adding | copy | vanishing | exploding")],
               length: Annotated[int, typer.Option(help="sequence length T (copy: the delay)")] = 200,
               cells: Annotated[str, typer.Option(help="comma-separated: rnn,lstm,gru")] = "rnn,lstm,gru",
               minutes: Annotated[float, typer.Option(help="training budget per cell")] = 10.0,
               out: Annotated[Path, typer.Option(help="where the JSON and PNG go")] = Path("runs/long_range")) -> None:
    """Long-range dependencies: train or probe each cell, print the figures, write JSON and plots."""
    from .long_range import run_experiment
    _show_warnings()
    typer.echo(run_experiment(name, length=length, cells=cells.split(","), minutes=minutes, out=out))


@app.command()
@user_errors
def diagnose(checkpoint: Annotated[Path, typer.Argument(help="checkpoint directory of a trained task")],
             length: Annotated[int, typer.Option(help="time steps of the probe sequence")] = 100,
             out: Annotated[Optional[Path], typer.Option(help="write a PNG of ‖∂L/∂h_t‖ here")] = None) -> None:
    """Gradient health of a trained model: ‖∂L/∂h_t‖ per step and layer, spectral radius of each W_hh."""
    from .long_range import diagnose_checkpoint
    typer.echo(diagnose_checkpoint(checkpoint, length=length, plot=out))


@app.command()
def datasets() -> None:
    """The data sets rnnkit knows, where they come from, and where it looks for them."""
    from .data.datasets import data_roots, list_datasets
    for info in list_datasets():
        typer.echo(f"{info.name:16s} {info.description}  ({len(info.files)} files; {info.licence})")
    typer.echo("searched, in order: " + ", ".join(str(p) for p in data_roots()))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
