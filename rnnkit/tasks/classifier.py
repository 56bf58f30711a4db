"""Text classification (sentiment and the like): one label per text.

Texts are tokenized and mapped through a vocabulary as for the language model; each ends with
``"<eos>"``. Length-bucketed batches keep padding small and ``lengths=`` keeps it out of the
recurrent state. The network is a SequenceModel read per sequence::

    ids <int64>[B, T] ─► Embedding (optionally pretrained) ─► (bi)LSTM/GRU/RNN ─► pooling over the
    valid steps (last / mean / max) ─► Linear ─► sigmoid (2 classes) or softmax (more)

    clf = Classifier.fit(texts, labels, valid=(valid_texts, valid_labels), cell="gru", epochs=5)
    clf = Classifier.fit("train.tsv", valid="dev.tsv", out_dir="runs/mine")   # or a folder per class
    clf = Classifier.fit(load_experiment("configs/sst2.toml"), "runs/sst2")
    clf.predict(["a gorgeous , witty film"])        # ["1"]
    clf.predict_proba(["a gorgeous , witty film"])  # <float64>[1, 2]: P(class) in LabelSet order
    clf.evaluate("dev.tsv")                         # accuracy, macro and per-class P/R/F1, confusion

Early stopping and the best checkpoint follow the validation accuracy (``train.monitor``). The
validation set is ``data.valid``, or, when that is "", ``data.valid_fraction`` of the training
file held out; ``data.test`` is scored once with the best model. With an ``out_dir``, training
writes ``best/``, ``last/``, ``metrics.jsonl``, ``results.json``, ``confusion_matrix.png`` and
``training_curve.png`` there.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as F

from .. import distributed
from ..config import Config
from ..data.classification import (BucketBatches, LabelSet, TextDataset, class_weights, encode_texts,
                                   read_labelled)
from ..data.datasets import dataset_info, resolve_data_path
from ..data.text import TextFileConfig, Tokenizer, Vocab, WordTokenizer, read_text, tokenizer_from_dict
from ..layers.embedding import Embedding
from ..metrics import accuracy, confusion_matrix, precision_recall_f1
from ..model import ModelConfig, SequenceModel
from ..train import TrainConfig, Trainer
from .base import Task, Training


class ClassifierDataConfig(TextFileConfig):
    """Where the labelled texts come from and how they become batches."""

    dataset: str = Field("", description="a registered data set (e.g. 'sst-2') whose files train/valid/test "
                                          "may name; '' when they are paths")
    data_dir: str = Field("", description="root holding <dataset>/<file> (default: $RNNKIT_DATA, then the cache)")
    train: str = Field("", description="training data: a .tsv/.csv file with a header row, or a folder with "
                                       "one sub-folder per class")
    valid: str = Field("", description="validation data (early stopping, best checkpoint); '' holds out "
                                       "valid_fraction of the training data")
    test: str = Field("", description="data scored once with the best model after training; '' for none")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="part of the training data held out for "
                                                               "validation when valid = ''")
    text_column: str = Field("sentence", description="column holding the text (tables)")
    label_column: str = Field("label", description="column holding the label (tables)")
    delimiter: str = Field("", description="field separator; '' infers it from the suffix (.tsv tab, .csv comma)")
    lowercase: bool = Field(True, description="lowercase words before building the vocabulary")
    pattern: str = Field("", description="regex for word tokens (re.findall); '' splits on whitespace")
    min_freq: int = Field(1, ge=1, description="words seen fewer times in training become <unk>")
    max_vocab: int = Field(0, ge=0, description="keep only the most frequent words (0: no limit)")
    max_length: int = Field(0, ge=0, description="keep the first this many tokens of a text (0: all)")
    batch_size: int = Field(64, ge=1, description="texts per training batch (global, across processes)")
    eval_batch_size: int = Field(256, ge=1, description="texts per batch when evaluating and predicting")
    bucket_pool: int = Field(50, ge=1, description="length bucketing: batches per pool sorted by length "
                                                   "(1 = plain shuffled batches)")
    class_weights: Literal["none", "balanced"] = Field("none", description="weigh the loss per class: none, "
                                                       "or balanced (N / (K * count_k)) for imbalanced labels")
    pretrained_vectors: str = Field("", description="word2vec/GloVe text file for the embedding (sets "
                                                    "model.embedding_dim); '' trains it from scratch")
    freeze_embeddings: bool = Field(False, description="keep pretrained vectors fixed")


def _default_model() -> ModelConfig:
    return ModelConfig(cell="lstm", embedding_dim=128, hidden_size=128, bidirectional=True, pooling="max",
                       output_per="sequence", padding_idx=0, dropout=0.3)


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=10, optimizer="adam", lr=1e-3, monitor="val_accuracy", monitor_mode="max",
                       early_stop_patience=3, log_every=200)


class ClassifierExperiment(Config):
    """A text-classification run: `rnnkit train CONFIG` with task = "classifier"."""

    task: Literal["classifier"] = Field("classifier", description="the task this config trains")
    data: ClassifierDataConfig = Field(default_factory=ClassifierDataConfig, description="texts, labels, batches")
    model: ModelConfig = Field(default_factory=_default_model, description=(
        "the network; vocab_size, output_size/activation and output_per are set from the data"))
    train: TrainConfig = Field(default_factory=_default_train, description="optimiser, early stopping, checkpoints")


# ----------------------------------------------------------------------------------- data
def _resolve(cfg: ClassifierDataConfig, value: str) -> Path:
    """A data path: a file of ``cfg.dataset`` when it names one, else a path."""
    return resolve_data_path(cfg.dataset, value, cfg.data_dir)


def _read(cfg: ClassifierDataConfig, path: Path, require_label: bool = True) -> TextDataset:
    return read_labelled(path, cfg.text_column, cfg.label_column, cfg.delimiter or None,
                         require_label=require_label, **cfg.reading())


def load_splits(cfg: ClassifierDataConfig, seed: int = 0,
                given: dict[str, TextDataset] | None = None) -> dict[str, TextDataset]:
    """train, valid and (when configured) test data sets: ``given`` ones by split, else read from
    the configured files."""
    given = given or {}
    if cfg.dataset:
        dataset_info(cfg.dataset)  # a clear error for an unknown name
    if not cfg.train and "train" not in given:
        raise ValueError("data.train: expected a training file or folder, got none")

    def read(split: str) -> TextDataset:
        return given[split] if split in given else _read(cfg, _resolve(cfg, getattr(cfg, split)))

    splits = {"train": read("train")}
    if cfg.valid or "valid" in given:
        splits["valid"] = read("valid")
    else:
        splits["train"], splits["valid"] = splits["train"].split(cfg.valid_fraction, seed)
    if cfg.test or "test" in given:
        splits["test"] = read("test")
    return splits


def texts_dataset(texts: Any, labels: Any, arg: str) -> TextDataset:
    """In-memory texts and their labels (any values, kept as strings) as a TextDataset whose
    origins read ``<arg>[i]``."""
    for name, value in ((arg, texts), (f"{arg} labels", labels)):
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
            raise TypeError(f"{name}: expected a list, got {type(value).__name__}")
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"{arg}: expected one label per text, got {len(texts)} texts and {len(labels)} labels")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{arg}: expected a list of strings, got {type(texts[bad]).__name__} at index {bad}")
    return TextDataset(texts, [str(label) for label in labels], [f"{arg}[{i}]" for i in range(len(texts))])


# ----------------------------------------------------------------------------------- metrics
def classification_report(y_true: np.ndarray, probs: np.ndarray, names: list[str]) -> dict:
    """accuracy, macro precision/recall/F1, per-class figures and the confusion matrix."""
    k = len(names)
    pred = probs.argmax(axis=1)
    precision, recall, f1 = precision_recall_f1(y_true, pred, num_classes=k)
    macro = precision_recall_f1(y_true, pred, num_classes=k, average="macro")
    support = np.bincount(y_true, minlength=k)
    return {"n": int(len(y_true)), "accuracy": accuracy(y_true, pred), "precision_macro": macro[0],
            "recall_macro": macro[1], "f1_macro": macro[2],
            "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                 "f1": float(f1[i]), "support": int(support[i])} for i, name in enumerate(names)},
            "confusion_matrix": confusion_matrix(y_true, pred, num_classes=k).tolist()}


# ----------------------------------------------------------------------------------- task
class Classifier(Task):
    """A trained text classifier with its tokenizer, vocabulary and class names."""

    name = "classifier"
    experiment_cls = ClassifierExperiment

    def __init__(self, model: SequenceModel, tokenizer: Tokenizer, vocab: Vocab, labels: LabelSet,
                 experiment: ClassifierExperiment, integer_labels: bool = False) -> None:
        super().__init__(model, experiment)
        self.tokenizer, self.vocab, self.labels = tokenizer, vocab, labels
        self.integer_labels = integer_labels  # trained on int labels given in Python: predict gives ints back

    @property
    def binary(self) -> bool:
        """Two classes, one sigmoid output giving P(second class)."""
        return self.model.config.output_activation == "sigmoid"

    # ---------------------------------------------------------------------------------- fit
    @classmethod
    def fit(cls, data: ClassifierExperiment | str | Path | Iterable[str] | None = None, labels: Any = None, *,
            valid: Any = None, test: Any = None, out_dir: str | Path | None = None, resume: bool = False,
            experiment: ClassifierExperiment | None = None, **overrides: Any) -> Classifier:
        """Train a text classifier; returns it with the best epoch's weights (in memory, on the CPU).

        Args:
            data: the training texts (a list of strings, with ``labels``); or a .tsv/.csv file with a
                header row (columns ``text_column="sentence"``, ``label_column="label"``) or a folder
                with one sub-folder per class, one file per text; or a ``ClassifierExperiment`` (the
                form ``rnnkit train`` uses: ``Classifier.fit(experiment, out_dir)``).
            labels: one label per text: strings, or integers (``predict`` then returns integers);
                other values are kept and predicted as strings. Two classes train one sigmoid
                output, more a softmax.
            valid: validation data for early stopping and the best epoch: ``(texts, labels)`` or a
                file/folder; None holds out ``valid_fraction`` (0.1) of the training data.
            test: data scored once with the best model (``results["test_accuracy"]``, ...), as valid.
            out_dir: where ``best/``, ``last/``, ``metrics.jsonl``, ``results.json`` and the plots
                go; None (default) writes nothing.
            resume: continue from ``out_dir/last``.
            experiment: the config the keywords start from (default ``ClassifierExperiment()``: a
                bidirectional LSTM of 128 units with max pooling, batch 64, up to 10 epochs of Adam
                with early stopping on validation accuracy).
            **overrides: config fields by name: ``cell="gru"``, ``hidden_size=64``, ``epochs=5``,
                ``lr=3e-3``, ``batch_size=32``, ``lowercase=False``, ...; dotted
                (``**{"train.lr": 1e-3}``) or a section as a dict (``model={"bidirectional": False}``).

        Returns:
            The trained Classifier; on rank 0 ``results`` holds ``val_accuracy``, ``val_f1_macro``,
            ``val_loss`` (and ``test_*``) of the best model.

        Raises:
            TypeError: an unknown keyword (with the close valid ones); texts without labels.
            ValueError: a wrong config value, naming its key; texts and labels of different lengths.

        Example::

            clf = Classifier.fit(["a great film", "dull and slow", ...], ["pos", "neg", ...],
                                 valid=(dev_texts, dev_labels), cell="gru", epochs=5)
            clf.predict(["great film"])        # ["pos"]
            clf.predict_proba(["great film"])  # <float64>[1, 2], columns in clf.labels.names order
        """
        config_form = isinstance(data, ClassifierExperiment)
        experiment, data = cls._split_experiment(data, experiment)
        if config_form and labels is not None:  # Classifier.fit(experiment, out_dir): the config form
            if out_dir is not None or not isinstance(labels, (str, Path)):
                raise TypeError("labels: with an experiment as data, the second argument is out_dir; "
                                f"got {type(labels).__name__}")
            out_dir, labels = labels, None
        if isinstance(data, (str, Path)) and labels is not None:
            raise TypeError("labels: a file or folder holds its own labels; got labels= as well")

        def in_memory(split: str, value: Any, arg: str) -> TextDataset:
            if split == "train":
                if labels is None:
                    raise TypeError("labels: expected one label per text of data, got none")
                return texts_dataset(value, labels, "texts")
            if isinstance(value, tuple) and len(value) == 2:
                return texts_dataset(*value, arg)
            raise TypeError(f"{arg}: expected (texts, labels) or a file or folder path, got {type(value).__name__}")

        given = cls._split_inputs({"train": data, "valid": valid, "test": test}, overrides, in_memory)
        if data is None and labels is not None:
            raise TypeError("labels: given without texts (data)")
        experiment = cls._experiment(experiment, overrides)
        integer = labels is not None and all(isinstance(y, (int, np.integer)) and not isinstance(y, bool)
                                             for y in labels)
        return cls._fit_experiment(experiment, {"splits": given, "integer_labels": integer}, out_dir, resume)

    @classmethod
    def _read_data(cls, experiment: ClassifierExperiment, given: dict | None) -> tuple[ClassifierExperiment, dict]:
        data, given = experiment.data, given or {}
        splits = load_splits(data, experiment.train.seed, given.get("splits"))
        tokenizer = WordTokenizer(lowercase=data.lowercase, pattern=data.pattern or None)
        train = splits["train"]
        vocab = Vocab.build((tokenizer.tokenize(t) for t in train.texts), min_freq=data.min_freq,
                            max_size=data.max_vocab or None)
        labels = LabelSet.build(train.labels)
        binary = len(labels) == 2
        model_cfg = experiment.model.model_copy(update={
            "vocab_size": len(vocab), "output_size": 1 if binary else len(labels),
            "output_activation": "sigmoid" if binary else "softmax", "output_per": "sequence"})
        pretrained = None
        if data.pretrained_vectors:
            pretrained = Embedding.from_text_vectors(data.pretrained_vectors, vocab.tokens,
                                                     freeze=data.freeze_embeddings, padding_idx=model_cfg.padding_idx)
            model_cfg = model_cfg.model_copy(update={"embedding_dim": pretrained.embedding_dim})
        experiment = experiment.model_copy(update={"model": ModelConfig.from_dict(model_cfg.to_dict(), "model")})
        encoded = {}
        for split, ds in splits.items():
            seqs = encode_texts(ds.texts, tokenizer, vocab, max_length=data.max_length, origins=ds.origins)
            encoded[split] = (seqs, labels.encode(ds.labels, ds.origins))
        return experiment, {"tokenizer": tokenizer, "vocab": vocab, "labels": labels, "encoded": encoded,
                            "pretrained": pretrained, "integer_labels": given.get("integer_labels", False)}

    @classmethod
    def _build(cls, experiment: ClassifierExperiment, prepared: dict) -> Classifier:
        model = SequenceModel(experiment.model)
        if prepared["pretrained"] is not None:
            with torch.no_grad():
                model.embedding.weight.copy_(prepared["pretrained"].weight)
            model.embedding.weight.requires_grad_(not experiment.data.freeze_embeddings)
        return cls(model, prepared["tokenizer"], prepared["vocab"], prepared["labels"], experiment,
                   prepared["integer_labels"])

    def _training(self, prepared: dict, rank: int, world_size: int) -> Training:
        data, encoded, k = self.experiment.data, prepared["encoded"], len(self.labels)
        distributed.per_rank(data.batch_size, "data.batch_size", world_size)
        train_batches = BucketBatches(*encoded["train"], data.batch_size, pool=data.bucket_pool,
                                      seed=self.experiment.train.seed, rank=rank, world_size=world_size)
        prepared["padding"] = train_batches.padding_fraction()
        weights = class_weights(encoded["train"][1], k) if data.class_weights == "balanced" else None

        def loss_fn(net, batch, state):
            ids, lengths, targets = batch
            logits, _ = net(ids, lengths=lengths)
            return self._loss(logits, targets, weights), None, targets.numel()

        valid_seqs, valid_y = encoded["valid"]

        def evaluate_fn(net):
            probs, loss = self._probabilities(valid_seqs, valid_y, net)
            pred = probs.argmax(axis=1)
            y = valid_y.numpy()
            return {"val_loss": loss, "val_accuracy": accuracy(y, pred),
                    "val_f1_macro": precision_recall_f1(y, pred, num_classes=k, average="macro")[2]}

        summary = {"unit": "texts", "splits": {split: len(seqs) for split, (seqs, _) in encoded.items()},
                   "vocab_size": len(self.vocab), "classes": list(self.labels.names), "batch_size": data.batch_size,
                   "batches_per_epoch": len(train_batches)}
        return Training(loss_fn, train_batches.batches, evaluate_fn, summary)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Mean (class-weighted) cross entropy: BCE on the single logit for binary, else softmax CE."""
        if self.binary:
            per = F.binary_cross_entropy_with_logits(logits[:, 0], targets.float(), reduction="none")
        else:
            per = F.cross_entropy(logits, targets, reduction="none")
        if weights is None:
            return per.mean()
        w = weights.to(logits.device)[targets]
        return (per * w).sum() / w.sum()

    def _finish(self, prepared: dict, trainer: Trainer, out_dir: Path | None) -> None:
        """The best model's figures on valid (and test); with an out_dir, plots and results.json there."""
        from ..plots import plot_confusion_matrix, plot_training_curve
        encoded = prepared["encoded"]
        results = {"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch,
                   "stop_reason": trainer.stop_reason, "train_padding_fraction": prepared["padding"]}
        for split in ("valid", "test"):
            if split in encoded:
                seqs, y = encoded[split]
                probs, loss = self._probabilities(seqs, y)
                report = classification_report(y.numpy(), probs, self.labels.names)
                results[split] = {"loss": loss, **report}
                prefix = "val" if split == "valid" else "test"
                self.results.update({f"{prefix}_accuracy": report["accuracy"], f"{prefix}_f1_macro": report["f1_macro"],
                                     f"{prefix}_loss": loss})
        if out_dir is None:
            return
        shown = "test" if "test" in results else "valid"
        plot_confusion_matrix(results[shown]["confusion_matrix"], out_dir / "confusion_matrix.png",
                              labels=self.labels.names,
                              title=f"{shown}: accuracy {results[shown]['accuracy']:.4f}")
        if trainer.history:  # at least one finished epoch in metrics.jsonl
            plot_training_curve(out_dir / "metrics.jsonl", out_dir / "training_curve.png", x="epoch",
                                keys=["train_loss", "val_loss", "val_accuracy"], title="classifier training")
        (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")

    # --------------------------------------------------------------------------- checkpoint
    def extras(self) -> dict:
        extras = {"vocab": self.vocab.to_dict(), "tokenizer": self.tokenizer.to_dict(), "labels": self.labels.to_dict()}
        if self.integer_labels:
            extras["label_values"] = {"type": "int"}
        return extras

    @classmethod
    def from_parts(cls, model: SequenceModel, experiment: ClassifierExperiment, extras: dict) -> Classifier:
        for name in ("vocab", "tokenizer", "labels"):
            if name not in extras:
                raise ValueError(f"checkpoint: expected {name}.json beside the model, found none")
        vocab, labels = Vocab.from_dict(extras["vocab"]), LabelSet.from_dict(extras["labels"])
        if len(vocab) != experiment.model.vocab_size:
            raise ValueError(f"checkpoint: vocab.json has {len(vocab)} tokens but the model expects "
                             f"{experiment.model.vocab_size}")
        outputs = 1 if len(labels) == 2 else len(labels)
        if outputs != experiment.model.output_size:
            raise ValueError(f"checkpoint: labels.json has {len(labels)} classes but the model has "
                             f"{experiment.model.output_size} outputs")
        integer = extras.get("label_values") == {"type": "int"}
        return cls(model, tokenizer_from_dict(extras["tokenizer"]), vocab, labels, experiment, integer)

    # ---------------------------------------------------------------------------------- use
    @torch.no_grad()
    def _probabilities(self, seqs: list[list[int]], targets: torch.Tensor | None = None,
                       net: torch.nn.Module | None = None) -> tuple[np.ndarray, float]:
        """P(class) <float64>[N, K] in input order, and the mean loss when ``targets`` are given."""
        net = self.model if net is None else net
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        batches = BucketBatches(seqs, targets, self.experiment.data.eval_batch_size, shuffle=False)
        probs = torch.empty(len(seqs), len(self.labels), dtype=torch.float64)
        loss_sum = 0.0
        try:
            for idx, (ids, lengths, y) in zip(batches.index_batches(), batches.batches()):
                logits, _ = net(ids.to(device), lengths=lengths)
                if self.binary:
                    p = torch.sigmoid(logits[:, 0]).double().cpu()
                    probs[idx] = torch.stack([1 - p, p], dim=1)
                else:
                    probs[idx] = torch.softmax(logits, dim=-1).double().cpu()
                if y is not None:
                    loss_sum += self._loss(logits, y.to(device), None).item() * len(idx)
        finally:
            net.train(was_training)
        return probs.numpy(), (loss_sum / len(seqs) if targets is not None else math.nan)

    def _encode(self, texts: list[str], origins: list[str] | None = None) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got a single str (wrap it in a list)")
        texts = list(texts)
        if not texts:
            raise ValueError("texts: expected at least one text, got none")
        data = self.experiment.data
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return encode_texts(texts, self.tokenizer, self.vocab, max_length=data.max_length, origins=origins)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities of each text.

        Args:
            texts: a list of N strings (tokenized as in training; unknown words read as <unk>; an
                empty text predicts from the empty sequence, with a warning).

        Returns:
            P(class | text) <float64>[N, K], each row summing to 1, columns in ``self.labels.names``
            order (two classes included for a binary classifier).

        Example::

            clf.predict_proba(["great film", "dull film"])   # array([[0.03, 0.97], [0.95, 0.05]])
        """
        probs, _ = self._probabilities(self._encode(texts))
        return probs

    def predict(self, texts: list[str]) -> list[str] | list[int]:
        """The most likely class of each text: a list of N label names (as in ``self.labels.names``),
        e.g. ``clf.predict(["great film"])`` → ``["pos"]``; integers when the classifier was fit in
        Python on integer labels (``Classifier.fit(texts, [0, 1, ...])`` → ``[1]``)."""
        names = [self.labels.names[i] for i in self.predict_proba(texts).argmax(axis=1)]
        return [int(name) for name in names] if self.integer_labels else names

    def _read(self, path: str | Path, require_label: bool, reading: dict, text_column: str | None,
              label_column: str | None) -> TextDataset:
        d = self.experiment.data
        path = Path(path)
        if path.suffix == ".txt" and not require_label and not d.delimiter:  # one text per line
            lines = read_text(path, **reading).split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            return TextDataset(lines, None, [f"{path}:{i}" for i in range(1, len(lines) + 1)])
        suffix = (Path(path.stem).suffix if path.suffix == ".gz" else path.suffix).lower()
        if not d.delimiter and path.is_file() and suffix not in (".tsv", ".tab", ".csv"):
            if require_label:
                raise ValueError(f"{path}: expected labelled data: a .tsv or .csv table with a header row naming the "
                                 f"columns {text_column or d.text_column!r} and {label_column or d.label_column!r}, "
                                 "or a folder with one sub-folder per class (one file per example); rename a table "
                                 "to its format's suffix (texts without labels, one per line, go to rnnkit predict "
                                 "--input)")
            raise ValueError(f"{path}: expected a .tsv or .csv table with a header row (texts in column "
                             f"{text_column or d.text_column!r}), a .txt file with one text per line, or a folder "
                             "with one sub-folder per class; rename the file to its format's suffix")
        return read_labelled(path, text_column or d.text_column, label_column or d.label_column,
                             d.delimiter or None, require_label=require_label, **reading)

    def evaluate(self, path: str | Path, errors: str = "strict", text_column: str | None = None,
                 label_column: str | None = None, encoding: str = "utf-8", allow_control_chars: bool = False
                 ) -> dict:
        """Accuracy, macro and per-class precision/recall/F1, confusion matrix and loss on a labelled
        file or folder. A label the model does not know raises ValueError naming file and line.
        ``encoding``, ``errors`` and ``allow_control_chars``: how the files are decoded (``read_text``)."""
        reading = {"encoding": encoding, "errors": errors, "allow_control_chars": allow_control_chars}
        ds = self._read(path, True, reading, text_column, label_column)
        if not len(ds):
            raise ValueError(f"{path}: expected at least one example, got none")
        y = self.labels.encode(ds.labels, ds.origins)
        probs, loss = self._probabilities(self._encode(ds.texts, ds.origins), y)
        return {"loss": loss, **classification_report(y.numpy(), probs, self.labels.names)}

    def predict_file(self, path: str | Path, output: str | Path | TextIO, errors: str = "strict",
                     text_column: str | None = None, encoding: str = "utf-8", allow_control_chars: bool = False,
                     top_k: int = 1) -> int:
        """Predict every text of a table, a class folder or a ``.txt`` file (one text per line) and write a TSV with the columns
        ``text, label, probability`` (the predicted class's), ``label_2, probability_2, ...`` up to
        the ``top_k``-th most likely class, one ``p_<class>`` column per class, and ``true_label``
        when the input has labels. Fields are quoted as the csv module and pandas write and read
        them (``pd.read_csv(output, sep="\t")`` gives the texts back). ``output``: a file path, or an
        open text stream (e.g. ``sys.stdout``). Returns the number of rows."""
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k: expected an integer >= 1, got {top_k!r}")
        reading = {"encoding": encoding, "errors": errors, "allow_control_chars": allow_control_chars}
        ds = self._read(path, False, reading, text_column, None)
        if not len(ds):
            raise ValueError(f"{path}: expected at least one text, got none")
        probs = self._probabilities(self._encode(ds.texts, ds.origins))[0]
        if isinstance(output, (str, Path)):
            Path(output).parent.mkdir(parents=True, exist_ok=True)
        with (open(output, "w", encoding="utf-8", newline="") if isinstance(output, (str, Path))
              else contextlib.nullcontext(output)) as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            ranks = range(2, min(top_k, len(self.labels)) + 1)
            extra = ["true_label"] if ds.labels is not None else []
            ranked = [f"{column}_{r}" for r in ranks for column in ("label", "probability")]
            writer.writerow(["text", "label", "probability", *ranked, *(f"p_{n}" for n in self.labels.names), *extra])
            for i, (text, p) in enumerate(zip(ds.texts, probs)):
                order = p.argsort(kind="stable")[::-1]
                best = [v for k in order[:len(ranks) + 1] for v in (self.labels.names[k], f"{p[k]:.6f}")]
                row = [text, *best, *(f"{v:.6f}" for v in p)]
                writer.writerow(row + ([ds.labels[i]] if ds.labels is not None else []))
        return len(ds)
