"""Tasks: what rnnkit is used for, each composing data, a SequenceModel and the Trainer.

Each task fits from in-memory data or files with keyword overrides of its config, e.g.
``Classifier.fit(texts, labels, cell="gru", epochs=5)`` or ``LanguageModel.fit("corpus.txt")``;
``fit(experiment, out_dir)`` trains any task from its experiment config, as ``rnnkit train`` does.
``load(path)`` reads any task's checkpoint; ``load_experiment(path)`` reads any task's TOML config.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..config import Config, apply_overrides, load_toml
from ..io.checkpoint import load_checkpoint
from .base import Task
from .classifier import Classifier, ClassifierExperiment
from .forecasting import ForecastExperiment, Forecaster
from .language_model import LanguageModel, LMExperiment
from .qa import QAExperiment, QuestionAnswering

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (LanguageModel, Classifier, QuestionAnswering, Forecaster)}


def _task_class(name: object, source: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"{source}: task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML experiment config (its ``task`` key picks the schema) and apply ``key=value`` overrides.

    Args:
        path: the TOML file, e.g. ``configs/sst2.toml``.
        overrides: ``"section.key=value"`` strings, as ``rnnkit train --set`` takes them.

    Returns:
        The task's experiment config (``LMExperiment``, ``ClassifierExperiment``, ``QAExperiment`` or
        ``ForecastExperiment``), validated.

    Raises:
        ValueError: an unknown task, key or value, naming the file and the key.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    try:
        task = tomllib.loads(path.read_text(encoding="utf-8")).get("task", "language_model")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        task = "language_model"  # load_toml below reports the real problem with the file's name
    experiment = load_toml(path, _task_class(task, str(path)).experiment_cls)
    return apply_overrides(experiment, overrides)


def fit(experiment: Config, out_dir: str | Path | None = None, resume: bool = False) -> Task:
    """Train the experiment's task (its ``task`` key picks it), as ``rnnkit train`` does.

    Each task's own ``fit`` also takes in-memory data and keyword overrides.

    Args:
        experiment: an experiment config, e.g. from ``load_experiment``.
        out_dir: where checkpoints (``best/``, ``last/``), ``metrics.jsonl`` and the task's files go;
            None writes nothing.
        resume: continue from ``out_dir/last``.

    Returns:
        The trained task with the best epoch's weights.
    """
    return _task_class(experiment.task, "experiment").fit(experiment, out_dir=out_dir, resume=resume)


def load(path: str | Path) -> Task:
    """Load a trained task from its checkpoint directory (e.g. ``runs/ptb/best``).

    Returns:
        The task the checkpoint's ``config.json`` names (``LanguageModel``, ``Classifier``,
        ``QuestionAnswering`` or ``Forecaster``), in eval mode on the CPU.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: a checkpoint that is incomplete, of an unknown task, or whose weights do not fit
            its config.
    """
    config = load_checkpoint(path).config
    return _task_class(config.get("task"), f"{path}/config.json").load(path)


__all__ = ["Task", "TASKS", "LanguageModel", "LMExperiment", "Classifier", "ClassifierExperiment", "QuestionAnswering",
           "QAExperiment", "Forecaster", "ForecastExperiment", "load", "load_experiment", "fit"]
