"""What every task shares: a trained SequenceModel, the experiment config that made it, and the
checkpoint round trip (weights in safetensors, config and vocabularies in JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..config import Config
from ..io.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from ..model import SequenceModel


class Task:
    """Base of LanguageModel, Classifier, ... : ``load``/``save`` and the experiment they came from.

    Subclasses set ``name`` (the config's ``task`` value) and ``experiment_cls``, and implement
    ``fit``, ``extras`` (JSON files saved beside the weights) and ``from_parts``.
    """

    name: ClassVar[str] = ""
    experiment_cls: ClassVar[type[Config]]

    def __init__(self, model: SequenceModel, experiment: Config) -> None:
        self.model, self.experiment = model, experiment
        self.results: dict[str, float] = {}

    def extras(self) -> dict[str, Any]:
        """JSON-able files saved beside the weights, e.g. ``{"vocab": {...}}``."""
        return {}

    @classmethod
    def from_parts(cls, model: SequenceModel, experiment: Config, extras: dict[str, Any]) -> Task:
        """Rebuild the task from a loaded model, its experiment config and the extra files."""
        return cls(model, experiment)

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
        model = SequenceModel(experiment.model)
        check_state_dict(model, state, Path(path) / "model.safetensors")
        model.load_state_dict(state)
        model.eval()
        return cls.from_parts(model, experiment, extras)
