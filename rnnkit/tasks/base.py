"""What every task shares: one fit scaffold, keyword overrides of the experiment config, and the
checkpoint round trip (weights in safetensors, config and vocabularies in JSON).

Every task's ``fit`` turns its arguments (in-memory data, paths, an experiment config, keyword
overrides) into an experiment and the in-memory data, then runs the same steps
(``Task._fit_experiment``); a task supplies only the parts marked *task*:

1. join the process group the environment describes (torchrun, SLURM, ``distributed.launch``)
   before any data is read, so that ``distributed.rank()`` and ``world_size()`` are right when
   the data is sharded;
2. *task* ``_read_data``: read the data, build vocabularies and fill in the sizes the model takes
   from the data (warnings about the data on rank 0 only);
3. seed torch from ``train.seed`` (before step 2 as well) and *task* ``_build`` the untrained task;
4. *task* ``_training``: the loss, this rank's share of each batch and the validation function;
   then the Trainer, which writes ``last/``, ``best/`` and ``metrics.jsonl`` to ``out_dir`` (rank
   0 only, and nothing at all without an ``out_dir``);
5. the best epoch's weights, kept in memory while training (read back from ``out_dir/best`` when a
   resumed run found no better epoch), on the CPU, in eval mode;
6. on rank 0 only, *task* ``_finish``: the final figures (``task.results``) and the task's own
   files in ``out_dir``.
"""

from __future__ import annotations

import difflib
import typing
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .. import distributed
from ..config import Config, _section_type
from ..io.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from ..model import SequenceModel
from ..train import Trainer, load_checkpoint_on_main

_FIRST_SECTIONS = ("data", "model", "train")  # where a bare keyword is looked up first, in this order


class Training(NamedTuple):
    """What the Trainer needs from a task (see ``rnnkit.train``): ``loss_fn(model, batch, state)``,
    ``batches(epoch)`` (this rank's share of every global batch), ``evaluate_fn(model)`` or None,
    and the data's facts for the run's summary (``rnnkit.summary``: unit, splits, vocab_size, ...;
    the scaffold adds the task's name)."""

    loss_fn: Callable[[nn.Module, Any, Any], tuple[Tensor, Any, int]]
    batches: Callable[[int], Iterable[Any]]
    evaluate_fn: Callable[[nn.Module], dict[str, float]] | None = None
    summary: dict[str, Any] | None = None


class KeepBest:
    """Trainer callback: a CPU copy of the weights of the best epoch so far (on every rank)."""

    def __init__(self) -> None:
        self.state: dict[str, Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        if trainer.best_epoch == metrics["epoch"]:
            self.state = {k: v.detach().cpu().clone() for k, v in trainer.module.state_dict().items()}


class Task:
    """Base of LanguageModel, Classifier, QuestionAnswering and Forecaster: the fit scaffold,
    ``load``/``save`` and the experiment a task came from.

    Subclasses set ``name`` (the config's ``task`` value) and ``experiment_cls``, implement
    ``_read_data``, ``_build``, ``_training`` and ``_finish`` (the module docstring's steps),
    ``extras`` (JSON files saved beside the weights) and ``from_parts``; ``keywords`` maps short
    keyword names of their ``fit`` onto config keys (e.g. ``{"target": "data.target_columns"}``).
    """

    name: ClassVar[str] = ""
    experiment_cls: ClassVar[type[Config]]
    keywords: ClassVar[dict[str, str]] = {}

    def __init__(self, model: nn.Module, experiment: Config) -> None:
        self.model, self.experiment = model, experiment
        self.results: dict[str, float] = {}

    # ------------------------------------------------------------------------------ fit scaffold
    @classmethod
    def _fit_experiment(cls, experiment: Config, data: Any = None, out_dir: str | Path | None = None,
                        resume: bool = False) -> Task:
        """Train as the module docstring says; ``data`` is the task's in-memory data (or None).
        out_dir: where checkpoints and files go; None writes nothing (whatever ``train.out_dir`` says:
        an experiment read from a checkpoint carries the out_dir of its own run)."""
        distributed.init()  # first: the data is sharded by rank, so the group must be known before it is read
        experiment = experiment.model_copy(update={"train": experiment.train.model_copy(
            update={"out_dir": None if out_dir is None else str(out_dir)})})
        with warnings.catch_warnings():
            if not distributed.is_main():  # every rank reads the same data: rank 0 alone says what it found
                warnings.simplefilter("ignore")
            torch.manual_seed(experiment.train.seed)  # e.g. random vectors for words a pretrained file lacks
            experiment, prepared = cls._read_data(experiment, data)
            torch.manual_seed(experiment.train.seed)  # the model's initial weights, whatever reading drew
            task = cls._build(experiment, prepared)
        training = task._training(prepared, distributed.rank(), distributed.world_size())
        keep = KeepBest()
        trainer = Trainer(task.model, experiment.train, loss_fn=training.loss_fn, evaluate_fn=training.evaluate_fn,
                          callbacks=[keep], checkpoint_extras=task.extras(), model_config=experiment.to_dict(),
                          summary={"task": cls.name, **(training.summary or {})})
        trainer.fit(training.batches, resume=resume)
        out = None if out_dir is None else Path(out_dir)
        if keep.state is not None:  # a best epoch in this run is the best overall
            task.model.load_state_dict(keep.state)
        elif out is not None and distributed.broadcast_object(distributed.is_main() and (out / "best").exists()):
            # resumed after the best epoch: rank 0 wrote best/ and sends it (other machines may not see it)
            task.model.load_state_dict(load_checkpoint_on_main(out / "best").state_dict)
        task.model.cpu().eval()
        if distributed.is_main():
            task._finish(prepared, trainer, out)
        return task

    @classmethod
    def _read_data(cls, experiment: Config, data: Any) -> tuple[Config, Any]:
        """Read the data (``data``: the in-memory data given to fit, else the experiment's files);
        returns the experiment with the sizes taken from the data, and what the other steps need."""
        raise NotImplementedError

    @classmethod
    def _build(cls, experiment: Config, prepared: Any) -> Task:
        """The untrained task (torch is seeded just before)."""
        raise NotImplementedError

    def _training(self, prepared: Any, rank: int, world_size: int) -> Training:
        """Loss, this rank's batches and the validation function."""
        raise NotImplementedError

    def _finish(self, prepared: Any, trainer: Trainer, out_dir: Path | None) -> None:
        """Rank 0, after training, with the best weights: fill ``results``, write files to ``out_dir``."""

    # ----------------------------------------------------------------------- keyword overrides
    @classmethod
    def _split_experiment(cls, data: Any, experiment: Config | None) -> tuple[Config | None, Any]:
        """fit's ``(experiment, data)``, where fit's first argument may be the experiment itself."""
        if isinstance(data, cls.experiment_cls):
            if experiment is not None:
                raise TypeError("experiment: give the experiment once, as data or as experiment=, not both")
            return data, None
        return experiment, data

    @staticmethod
    def _split_inputs(splits: dict[str, Any], overrides: dict[str, Any],
                      in_memory: Callable[[str, Any, str], Any]) -> dict[str, Any]:
        """fit's train/valid/test inputs: a path (str or Path) becomes the override ``data.<split>``;
        anything else is converted by ``in_memory(split, value, arg)`` (arg: the fit argument's name,
        ``data`` for train, for messages). Returns the in-memory splits; None inputs are skipped."""
        given = {}
        for split, value in splits.items():
            if value is None:
                continue
            if isinstance(value, (str, Path)):
                overrides[f"data.{split}"] = str(value)
            else:
                given[split] = in_memory(split, value, "data" if split == "train" else split)
        return given

    @classmethod
    def _experiment(cls, experiment: Config | None, overrides: dict[str, Any]) -> Config:
        """``experiment`` (default: the experiment class's defaults) with fit's keyword overrides.

        A keyword is a config field by its bare name (looked up in data, model, train, then the
        other sections: ``cell`` → model.cell, ``epochs`` → train.epochs, ``batch_size`` →
        data.batch_size), a dotted name (``**{"train.lr": 1e-3}``), a section with a dict
        (``model={"cell": "gru"}``) or one of ``cls.keywords``. A string given for a list field is
        a one-element list. An unknown keyword is a TypeError listing close valid ones; a wrong
        value is a ValueError naming the config key.
        """
        if experiment is None:
            experiment = cls.experiment_cls()
        elif not isinstance(experiment, cls.experiment_cls):
            raise TypeError(f"experiment: expected a {cls.experiment_cls.__name__}, got {type(experiment).__name__}")
        if not overrides:
            return experiment
        tree = experiment.model_dump()
        for key, value in overrides.items():
            for path, item in cls._keyword_paths(key, value):
                if path == ["train", "out_dir"]:
                    raise TypeError(f"{cls.__name__}.fit: {key!r}: give the directory as out_dir=, which fit "
                                    "takes itself")
                node, section = tree, cls.experiment_cls
                for part in path[:-1]:
                    section = _section_type(section, part)
                    if not isinstance(node.get(part), dict):
                        node[part] = {}
                    node = node[part]
                field = section.model_fields[path[-1]]
                if isinstance(item, str) and typing.get_origin(field.annotation) is list:
                    item = [item]
                node[path[-1]] = str(item) if isinstance(item, Path) else item
        return cls.experiment_cls.from_dict(tree, f"{cls.__name__}.fit")

    @classmethod
    def _keyword_paths(cls, key: str, value: Any) -> list[tuple[list[str], Any]]:
        """The config paths (and values) one fit keyword sets."""
        if key in cls.keywords:
            return [(cls.keywords[key].split("."), value)]
        root = cls.experiment_cls
        sections = {name for name in root.model_fields if _section_type(root, name) is not None}
        if "." in key:
            parts = key.split(".")
            section: type[Config] | None = root
            for depth, part in enumerate(parts):
                if section is None or part not in section.model_fields:
                    raise cls._unknown(key)
                if depth < len(parts) - 1:
                    section = _section_type(section, part)
            if isinstance(value, dict) and section is not None and _section_type(section, parts[-1]) is not None:
                return [p for k, v in value.items() for p in cls._keyword_paths(f"{key}.{k}", v)]
            return [(parts, value)]
        if key in sections and isinstance(value, dict):
            return [p for k, v in value.items() for p in cls._keyword_paths(f"{key}.{k}", v)]
        data_fields = _section_type(root, "data").model_fields if "data" in sections else {}
        if key in sections and key not in data_fields:  # data.train is a file, the train section a dict
            raise TypeError(f"{cls.__name__}.fit: {key}: a config section; expected a dict of its fields "
                            f"(e.g. {key}={{...}}), got {type(value).__name__}")
        order = [s for s in _FIRST_SECTIONS if s in sections] + [s for s in root.model_fields
                                                                 if s in sections and s not in _FIRST_SECTIONS]
        for name in order:
            if key in _section_type(root, name).model_fields:
                return [([name, key], value)]
        raise cls._unknown(key)

    @classmethod
    def _keyword_names(cls) -> list[str]:
        """Every keyword ``_experiment`` takes: aliases, bare field names, dotted names."""
        root = cls.experiment_cls
        names = list(cls.keywords)
        for section in root.model_fields:
            sub = _section_type(root, section)
            if sub is not None:
                names += [n for n in sub.model_fields if n not in names]
                names += [f"{section}.{n}" for n in sub.model_fields]
        return names

    @classmethod
    def _unknown(cls, key: str) -> TypeError:
        valid = cls._keyword_names()
        close = difflib.get_close_matches(key, valid, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        bare = [n for n in valid if "." not in n]
        return TypeError(f"{cls.__name__}.fit: unknown keyword {key!r}{hint} Keywords are the fields of "
                         f"{cls.experiment_cls.__name__}, bare ({', '.join(bare)}) or dotted ('train.lr'), "
                         "or a section as a dict (model={...})")

    # ------------------------------------------------------------------------------ checkpoint
    def extras(self) -> dict[str, Any]:
        """JSON-able files saved beside the weights, e.g. ``{"vocab": {...}}``."""
        return {}

    @classmethod
    def from_parts(cls, model: nn.Module, experiment: Config, extras: dict[str, Any]) -> Task:
        """Rebuild the task from a loaded model, its experiment config and the extra files."""
        return cls(model, experiment)

    @classmethod
    def _model(cls, experiment: Config) -> nn.Module:
        """An untrained network of the experiment's architecture (what ``load`` fills)."""
        return SequenceModel(experiment.model)

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint directory (atomically) that ``load`` reads back."""
        return save_checkpoint(path, self.model.state_dict(), self.experiment.to_dict(), self.extras())

    @classmethod
    def load(cls, path: str | Path) -> Task:
        """Read a checkpoint written by ``save`` or by training."""
        config, state, extras, _ = load_checkpoint(path)
        if config.get("task") != cls.name:
            raise ValueError(f"{path}: expected a {cls.name} checkpoint, got task {config.get('task')!r}")
        experiment = cls.experiment_cls.from_dict(config, f"{path}/config.json")
        model = cls._model(experiment)
        check_state_dict(model, state, Path(path) / "model.safetensors")
        model.load_state_dict(state)
        model.eval()
        return cls.from_parts(model, experiment, extras)
