"""The ``rnnkit`` command line: a thin layer over the Python API, one call per command.

User errors (bad config, missing file, corrupt checkpoint, ...) print one line and exit with 2,
without a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="rnnkit: recurrent neural networks from their equations, on PyTorch.")

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, KeyError,
               ConnectionError)


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


@contextlib.contextmanager
def _as_options(**names: str):
    """Errors of the Python API that name an argument (``df: ...``) name the command's option instead
    (``--input: ...``): ``with _as_options(df="--input"):``."""
    try:
        yield
    except ValueError as error:
        head, sep, rest = str(error).partition(": ")
        if sep and head in names:
            raise ValueError(f"{names[head]}: {rest}") from None
        raise


def _show_warnings() -> None:
    warnings.simplefilter("default")
    warnings.showwarning = lambda message, *a, **k: typer.echo(f"warning: {message}", err=True)


COMMANDS = {"language_model": ("evaluate", "generate", "diagnose"), "classifier": ("evaluate", "predict", "diagnose"),
            "qa": ("evaluate", "answer"), "forecaster": ("forecast", "backtest", "diagnose")}
"""The commands that read each task's checkpoint (the task names are the configs' ``task`` values)."""


def load_for(checkpoint: Path, command: str):
    """The task saved in ``checkpoint``, when ``rnnkit <command>`` reads that kind of checkpoint;
    else a one-line ValueError naming the checkpoint's task and the commands that fit it."""
    from . import tasks
    task = tasks.load(checkpoint)
    if command not in COMMANDS.get(task.name, ()):
        wanted = " or ".join(name for name, commands in COMMANDS.items() if command in commands)
        fits = ", ".join(f"rnnkit {c}" for c in COMMANDS.get(task.name, ()))
        raise ValueError(f"{checkpoint}: a {task.name} checkpoint; rnnkit {command} needs a {wanted} checkpoint "
                         f"(a {task.name} is read by {fits})")
    return task


def data_path(task, value: Path, data_dir: Optional[Path]):
    """``value`` itself when it exists; else, when it names a file of the registered data set the
    task was trained on (e.g. ``ptb.test.txt``), that file, found under ``data_dir`` (default: the
    training config's), ``$RNNKIT_DATA`` or the cache; or, when it names the competition collection a
    forecaster was trained on (``data.competition``, e.g. ``tourism/monthly``), that collection's frame."""
    from .data.datasets import resolve_data_path
    data = getattr(task.experiment, "data", None)
    root = str(data_dir or "") or getattr(data, "data_dir", "") or None
    if not value.exists() and getattr(data, "competition", "") and str(value) == data.competition:
        from .data.competitions import competition_frame
        return competition_frame(data.competition, root)
    if value.exists() or not getattr(data, "dataset", ""):
        return value
    return resolve_data_path(data.dataset, str(value), root)


def trained_checkpoint(out: Path) -> dict:
    """The checkpoint a finished run names: ``<out>/best`` once it has validated; else ``<out>/last``,
    with a note that says why there is no best (the last stop record of ``metrics.jsonl``)."""
    if (out / "best").is_dir():
        return {"checkpoint": str(out / "best")}
    reason = None
    if (out / "metrics.jsonl").is_file():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line a killed run left half-written
                continue
            if record.get("type") == "stop":
                reason = record.get("reason")
    stopped = f"stopped ({reason}) before its first validation" if reason else "ended before its first validation"
    if not (out / "last").is_dir():
        return {"checkpoint": None, "note": f"the run {stopped} and saved no checkpoint in {out}"}
    return {"checkpoint": str(out / "last"),
            "note": f"the run {stopped}, so it never validated and there is no best/; last/ holds the weights "
                    "it reached (rnnkit train --resume continues it)"}


DATA_DIR_HELP = "root of the registered data sets (<root>/<dataset>/<file>), searched before $RNNKIT_DATA and the cache"
FREQ_HELP = ("frequency of the dates ('D', 'MS', 'h') where the training dates were too irregular to infer one: "
             "the input is put on that grid and the forecast dated by it")

# How the commands that read text files decode them (the data configs' encoding keys, as flags)
Encoding = Annotated[str, typer.Option(help="encoding of the input text: a codec name (utf-8, cp1252, utf-16, "
                                            "...) or auto (detected, and the choice reported)")]
EncodingErrors = Annotated[str, typer.Option(help="undecodable bytes: strict (fail with the file, line and byte "
                                                  "offset) or replace (with U+FFFD; the count is reported)")]
AllowControlChars = Annotated[bool, typer.Option(help="accept NUL and other control characters in the text "
                                                      "(else an error naming the file and line)")]


def reading(encoding: str, encoding_errors: str, allow_control_chars: bool) -> dict:
    """The readers' decoding keywords from --encoding, --encoding-errors and --allow-control-chars."""
    from .data.text import check_encoding
    check_encoding(encoding, "--encoding")
    if encoding_errors not in ("strict", "replace"):
        raise ValueError(f"--encoding-errors: expected 'strict' or 'replace', got {encoding_errors!r}")
    return {"encoding": encoding, "errors": encoding_errors, "allow_control_chars": allow_control_chars}


def _train_one(config: Path, overrides: list[str], out: Path, resume: bool) -> dict:
    from . import tasks
    task = tasks.fit(tasks.load_experiment(config, overrides), out, resume=resume)
    return task.results


@app.command()
@user_errors
def train(config: Annotated[Path, typer.Argument(help="experiment TOML, e.g. configs/ptb_small.toml")],
          set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, key=value (repeatable)")] = None,
          out: Annotated[Path, typer.Option(help="directory for checkpoints and metrics")] = Path("runs/latest"),
          data_dir: Annotated[Optional[Path], typer.Option(help=DATA_DIR_HELP + " (sets data.data_dir)")] = None,
          encoding: Annotated[Optional[str], typer.Option(help=(
              "encoding of the training text files: a codec name (utf-8, cp1252, utf-16, ...) or auto "
              "(sets data.encoding)"))] = None,
          encoding_errors: Annotated[Optional[str], typer.Option(help=(
              "undecodable bytes: strict or replace (sets data.encoding_errors)"))] = None,
          nproc: Annotated[Optional[int], typer.Option(help=(
              "start this many processes on this machine (DDP; gloo on CPU, NCCL on GPU); leave it out under "
              "torchrun or srun, whose processes join their own group"))] = None,
          resume: Annotated[bool, typer.Option(help="continue from <out>/last")] = False) -> None:
    """Train the experiment a config describes; prints the final test figures (rank 0 only)."""
    from . import distributed, tasks
    _show_warnings()
    group = distributed.environment()  # a batch job of one SLURM task may start its own processes
    if nproc is not None and group is not None and (group.world_size > 1 or group.launcher == "torchrun"):
        raise ValueError(f"--nproc {nproc}: this process was started by a launcher that already set up "
                         f"{group.world_size} process(es) ({group.describe()}); drop --nproc to train in the "
                         "launcher's group, or run rnnkit train --nproc outside the launcher")
    flags = {"data.data_dir": data_dir, "data.encoding": encoding, "data.encoding_errors": encoding_errors}
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None] + list(set_ or [])
    experiment = tasks.load_experiment(config, overrides)  # fail fast, in this process, on a bad config
    if nproc is not None and nproc > 1:
        distributed.per_rank(getattr(getattr(experiment, "data", None), "batch_size", nproc), "data.batch_size", nproc)
        results = distributed.launch(_train_one, nproc, config, overrides, out, resume)[0]
    else:
        if nproc is not None and nproc < 1:
            raise ValueError(f"--nproc: expected an integer >= 1, got {nproc}")
        results = _train_one(config, overrides, out, resume)
    if distributed.is_main():
        report = {**trained_checkpoint(out), **results}
        tables = (out / "backtest.txt").read_text() if (out / "backtest.txt").exists() else None
        if tables is not None:  # forecasters: the tables of rnnkit beside the baselines, each metric in backtest.json
            report = {k: v for k, v in report.items() if not re.match(r"h\d+_", k)}
            report["backtest"] = str(out / "backtest.json")
        typer.echo(json.dumps(report, indent=2))
        if tables is not None:
            typer.echo(tables)
    distributed.shutdown()


@app.command()
@user_errors
def evaluate(checkpoint: Annotated[Path, typer.Argument(help="checkpoint directory, e.g. runs/ptb/best")],
             data: Annotated[Path, typer.Option(help=(
                 "text file (language models) or labelled file (classifier, bAbI); or a file of the data set "
                 "the checkpoint was trained on, e.g. ptb.test.txt"))],
             batch_size: Annotated[int, typer.Option(help="parallel streams (language models)")] = 1,
             data_dir: Annotated[Optional[Path], typer.Option(help=DATA_DIR_HELP)] = None,
             encoding: Encoding = "utf-8", encoding_errors: EncodingErrors = "strict",
             allow_control_chars: AllowControlChars = False) -> None:
    """Score a checkpoint on a file: perplexity or bits per character for language models; accuracy,
    per-class precision/recall/F1 and the confusion matrix for classifiers; accuracy for bAbI."""
    from . import tasks
    _show_warnings()
    options = reading(encoding, encoding_errors, allow_control_chars)
    task = load_for(checkpoint, "evaluate")
    data = data_path(task, data, data_dir)
    if isinstance(task, tasks.LanguageModel):
        result = task.evaluate(data, batch_size=batch_size, **options)
        unit = "bpc" if task.char_level else "ppl"
        typer.echo(f"{unit} {result[unit]:.4f}  (loss {result['loss']:.4f} nats/token over {result['tokens']} tokens)")
    else:
        typer.echo(json.dumps(task.evaluate(data, **options), indent=2, default=str))


@app.command()
@user_errors
def generate(checkpoint: Annotated[Path, typer.Argument(help="language-model checkpoint directory")],
             prompt: Annotated[str, typer.Option(help="text to continue")] = "",
             prompt_file: Annotated[Optional[Path], typer.Option(help=(
                 "read the text to continue from this file (one trailing newline dropped), instead of "
                 "--prompt"))] = None,
             top_k: Annotated[int, typer.Option(help="without --length: list the k most likely next tokens; "
                                                "with it: sample among the top k (0 = all)")] = 0,
             length: Annotated[int, typer.Option(help="sample this many tokens (0: list the next-token top-k)")] = 0,
             temperature: Annotated[float, typer.Option(help="sampling temperature")] = 1.0,
             seed: Annotated[Optional[int], typer.Option(help="sampling seed")] = None,
             encoding: Encoding = "utf-8", encoding_errors: EncodingErrors = "strict",
             allow_control_chars: AllowControlChars = False) -> None:
    """Next-token predictions with probabilities, or a sampled continuation."""
    from .data.text import read_text
    _show_warnings()
    options = reading(encoding, encoding_errors, allow_control_chars)
    if prompt_file is not None:
        if prompt:
            raise ValueError("--prompt-file: expected either --prompt or --prompt-file, got both")
        prompt = read_text(prompt_file, **options).removesuffix("\n")
    lm = load_for(checkpoint, "generate")
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
               cells: Annotated[str, typer.Option(
                   help="comma-separated: rnn,lstm,gru (adding and copy also: mingru,minlstm)")] = "rnn,lstm,gru",
               minutes: Annotated[float, typer.Option(help="training budget per cell")] = 10.0,
               out: Annotated[Path, typer.Option(help="where the JSON and PNG go")] = Path("runs/long_range"),
               init: Annotated[str, typer.Option(help="adding/copy: keras | torch | chrono (gated cells; "
                                                      "a simple RNN gets keras)")] = "keras",
               hidden: Annotated[int, typer.Option(help="adding/copy: hidden units")] = 128,
               batch_size: Annotated[int, typer.Option(help="adding/copy: sequences per step")] = 50,
               lr: Annotated[float, typer.Option(help="adding/copy: Adam's learning rate")] = 1e-3) -> None:
    """Long-range dependencies: train or probe each cell, print the figures, write JSON and plots."""
    from .long_range import run_experiment
    _show_warnings()
    typer.echo(run_experiment(name, length=length, cells=cells.split(","), minutes=minutes, out=out, init=init,
                              hidden=hidden, batch_size=batch_size, lr=lr))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def bench(ctx: typer.Context) -> None:
    """Speed against torch.nn, side by side: medians, ratios, % of peak (options: rnnkit bench --help)."""
    from .bench import main as bench_main
    raise typer.Exit(bench_main(ctx.args, prog="rnnkit bench"))


@app.command()
@user_errors
def tune(rounds: Annotated[int, typer.Option(help="timed rounds per shape and candidate (medians)")] = 7,
         save: Annotated[bool, typer.Option(help="store the decisions for this CPU model")] = True) -> None:
    """Time the kernel paths that can tie on this CPU (seconds) and store the faster ones in the user's cache."""
    from .kernels.fused import tune as tuning
    tuning.run(rounds=rounds, path=None if save else False, echo=typer.echo)


@app.command()
@user_errors
def diagnose(checkpoint: Annotated[Path, typer.Argument(help="checkpoint directory of a trained task")],
             length: Annotated[int, typer.Option(help="time steps of the probe sequence")] = 100,
             out: Annotated[Optional[Path], typer.Option(help="write a PNG of ‖∂L/∂h_t‖ here")] = None) -> None:
    """Gradient health of a trained model: ‖∂L/∂h_t‖ per step and layer, spectral radius of each W_hh."""
    from .long_range import diagnose_checkpoint
    load_for(checkpoint, "diagnose")
    typer.echo(diagnose_checkpoint(checkpoint, length=length, plot=out))


@app.command()
@user_errors
def forecast(checkpoint: Annotated[Path, typer.Argument(help="forecaster checkpoint directory")],
             input: Annotated[Path, typer.Option(help="CSV with the history (and known-future covariates); or a "
                                                 "file of the data set the checkpoint was trained on, or its "
                                                 "competition collection (e.g. tourism/monthly)")],
             horizon: Annotated[Optional[int], typer.Option(help="steps ahead (default: the trained horizon)")] = None,
             out: Annotated[Path, typer.Option(help=(
                 "output prefix: <out>.csv and <out>.png (<out>_<target>.png for several targets; the CSV alone "
                 "for a model of many series)"))] = Path("forecast"),
             future: Annotated[Optional[Path], typer.Option(help="CSV of known-future covariates")] = None,
             level: Annotated[Optional[float], typer.Option(help="prediction-interval level, e.g. 0.8")] = None,
             ignore_extra_columns: Annotated[bool, typer.Option(
                 help="ignore columns the model was not trained with")] = False,
             freq: Annotated[Optional[str], typer.Option(help=FREQ_HELP)] = None,
             data_dir: Annotated[Optional[Path], typer.Option(help=DATA_DIR_HELP)] = None) -> None:
    """Forecast after the input's end: print it, write a CSV and a PNG (history, forecast, intervals)."""
    from .tasks.forecasting import forecast_to_files
    _show_warnings()
    input = data_path(load_for(checkpoint, "forecast"), input, data_dir)
    with _as_options(df="--input", future="--future", freq="--freq", level="--level", horizon="--horizon"):
        result = forecast_to_files(checkpoint, input, horizon, out, future=future, level=level,
                                   extra_columns="ignore" if ignore_extra_columns else "error", freq=freq)
    typer.echo(result["forecast"].to_string())
    typer.echo("wrote " + ", ".join(map(str, [result["csv"], *result["png"]])))


@app.command()
@user_errors
def backtest(checkpoint: Annotated[Path, typer.Argument(help="forecaster checkpoint directory")],
             input: Annotated[Path, typer.Option(help="CSV with the whole series; or a file of the data set the "
                                                 "checkpoint was trained on, or its competition collection "
                                                 "(e.g. tourism/monthly)")],
             horizon: Annotated[Optional[int], typer.Option(help="steps ahead (default: the trained horizon)")] = None,
             test: Annotated[Optional[str], typer.Option(help="test span: a count (48) or a fraction (0.2)")] = None,
             start: Annotated[Optional[int], typer.Option(help="first origin (row index), instead of --test")] = None,
             stride: Annotated[Optional[int], typer.Option(help="steps between origins")] = None,
             level: Annotated[Optional[float], typer.Option(help="prediction-interval level")] = None,
             out: Annotated[Optional[Path], typer.Option(help=(
                 "output prefix for <out>.json (metrics), <out>.csv (forecasts) and <out>.png (<out>_<id>.png "
                 "for the first series of a model of many)"))] = None,
             ignore_extra_columns: Annotated[bool, typer.Option(
                 help="ignore columns the model was not trained with")] = False,
             freq: Annotated[Optional[str], typer.Option(help=FREQ_HELP)] = None,
             data_dir: Annotated[Optional[Path], typer.Option(help=DATA_DIR_HELP)] = None) -> None:
    """Rolling-origin backtest of a forecaster beside naive, seasonal naive and a statistical model."""
    from .tasks.forecasting import backtest_to_files
    input = data_path(load_for(checkpoint, "backtest"), input, data_dir)
    span = None if test is None else (float(test) if "." in test else int(test))
    with _as_options(df="--input", test="--test", start="--start", stride="--stride", level="--level",
                     freq="--freq", horizon="--horizon"):
        result = backtest_to_files(checkpoint, input, horizon, start=start, test=span, stride=stride, level=level,
                                   out_prefix=out, extra_columns="ignore" if ignore_extra_columns else "error",
                                   freq=freq)
    typer.echo(result.table())


@app.command()
@user_errors
def datasets(data_dir: Annotated[Optional[Path], typer.Option(help=DATA_DIR_HELP)] = None,
             download: Annotated[Optional[list[str]], typer.Option(help=(
                 "fetch the missing files of this data set (repeatable) into the first root (--data-dir, else "
                 "$RNNKIT_DATA, else the cache), each checked against its sha256"))] = None) -> None:
    """The data sets rnnkit knows, how many of their files are on disk, and where it looks for them;
    with --download NAME, fetch a data set's missing files first."""
    from .data.datasets import data_roots, download_dataset, list_datasets
    for name in download or []:
        for path, how in download_dataset(name, data_dir=data_dir):
            typer.echo(f"{how:10s} {path}")
    roots = data_roots(data_dir)
    for info in list_datasets():
        found = sum(any((root / info.name / f).is_file() for root in roots) for f in info.files)
        typer.echo(f"{info.name:16s} {info.description}  ({found} of {len(info.files)} files found; {info.licence})")
    typer.echo("searched, in order: " + ", ".join(str(p) for p in roots))


@app.command()
@user_errors
def predict(checkpoint: Annotated[Path, typer.Argument(help="classifier checkpoint directory, e.g. runs/sst2/best")],
            text: Annotated[Optional[str], typer.Argument(help="a text to classify")] = None,
            input: Annotated[Optional[Path], typer.Option("--input", help=(
                "classify every text of a .tsv/.csv table (with a header row), a folder with one sub-folder "
                "per class, or a .txt file with one text per line"))] = None,
            output: Annotated[Optional[Path], typer.Option("--output", help=(
                "TSV file for the predictions of --input (tab-separated, with a header row; fields quoted as "
                "the csv module and pandas read them); without it the TSV goes to standard output"))] = None,
            top_k: Annotated[int, typer.Option(help="the k most likely classes: one line each for TEXT; columns "
                                                    "label_2, probability_2, ... for --input")] = 1,
            text_column: Annotated[Optional[str], typer.Option(help="the text column of --input (default: as in training)")] = None,
            data_dir: Annotated[Optional[Path], typer.Option(help=DATA_DIR_HELP)] = None,
            encoding: Encoding = "utf-8", encoding_errors: EncodingErrors = "strict",
            allow_control_chars: AllowControlChars = False) -> None:
    """Classify a text (prints the label and its probability), or every text of a file (--input; a TSV to
    --output or standard output)."""
    _show_warnings()
    if (text is None) == (input is None):
        raise ValueError("predict: expected either a TEXT argument or --input FILE, got "
                         + ("both" if text is not None else "neither"))
    options = reading(encoding, encoding_errors, allow_control_chars)
    if top_k < 1:
        raise ValueError(f"--top-k: expected an integer >= 1, got {top_k}")
    clf = load_for(checkpoint, "predict")
    if text is not None:
        probs = clf.predict_proba([text])[0]
        for k in probs.argsort(kind="stable")[::-1][:top_k]:
            typer.echo(f"{clf.labels.names[k]}\t{probs[k]:.4f}")
        return
    n = clf.predict_file(data_path(clf, input, data_dir), sys.stdout if output is None else output,
                         text_column=text_column, top_k=top_k, **options)
    if output is not None:
        typer.echo(f"wrote {n} predictions to {output}")


@app.command()
@user_errors
def answer(checkpoint: Annotated[Path, typer.Argument(help="question-answering checkpoint directory")],
           story: Annotated[Path, typer.Option(help="story file: sentences, one or more per line, numbered as in "
                                               "bAbI or not")],
           question: Annotated[str, typer.Option(help="the question, e.g. 'Where is Mary?'")],
           allow_guess: Annotated[bool, typer.Option(help=(
               "answer even when the story is empty or the story or question has no word the model knows; "
               "the answer line then ends with 'guess'"))] = False,
           encoding: Encoding = "utf-8", encoding_errors: EncodingErrors = "strict",
           allow_control_chars: AllowControlChars = False) -> None:
    """Answer a question about a story: prints the answer and its probability, then the sentences the
    model attended to most."""
    from .data.babi import parse_story
    from .data.text import read_text
    _show_warnings()
    options = reading(encoding, encoding_errors, allow_control_chars)
    qa = load_for(checkpoint, "answer")
    text = read_text(story, **options)
    result = qa.answer(text, question, allow_guess=allow_guess)
    typer.echo(f"{result.answer}\t{result.probability:.4f}" + ("\tguess" if result.guess else ""))
    sentences = parse_story(text)[-qa.model.config.memory_size:]
    top = sorted(range(min(len(result.attention), len(sentences))), key=lambda i: -result.attention[i])[:3]
    for i in top:
        typer.echo(f"  attention {result.attention[i]:.3f}  {' '.join(sentences[i])}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
