"""Labelled text for classification: reading, labels, class weights and length-bucketed batches.

    data = read_labelled("train.tsv", text_column="sentence", label_column="label")   # or a folder
    labels = LabelSet.build(data.labels)                     # class names, sorted ("0" < "1" < "10")
    tok = WordTokenizer(lowercase=True)
    vocab = Vocab.build(tok.tokenize(t) for t in data.texts)
    seqs = encode_texts(data.texts, tok, vocab, origins=data.origins)   # id lists, never empty
    y = labels.encode(data.labels, data.origins)             # <int64>[N]
    batches = BucketBatches(seqs, y, batch_size=64)
    for ids, lengths, targets in batches.batches(epoch):     # <int64>[B, T], [B], [B]
        ...

Sources:

- a table (``.tsv``: tab separated, no quoting, as GLUE writes it; ``.csv``: comma separated with
  ``"`` quoting) whose header row names the columns; the text and label columns are configurable;
- a folder with one sub-folder per class, one example per file (the IMDB ``aclImdb`` layout).

Every example remembers where it came from (``"train.tsv:17"``), so that a bad label or an empty
text is reported with its file and line. Every file is decoded by ``rnnkit.data.text.decode_text``:
``encoding`` (a codec name or ``"auto"``), ``errors`` (undecodable bytes raise with the file, line and
byte offset, or are replaced and counted under ``"replace"``) and ``allow_control_chars``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .text import (Tokenizer, Vocab, check_encoding, decode_text, guess_code_page, normalise_newlines, pad_sequences,
                   read_bytes, read_text, report_decoding, unicode_encoding)

__all__ = ["TextDataset", "read_table", "read_folder", "read_labelled", "LabelSet", "class_weights",
           "encode_texts", "BucketBatches"]

_DELIMITERS = {".tsv": "\t", ".tab": "\t", ".csv": ","}


@dataclass
class TextDataset:
    """Texts, their labels (None for unlabelled data) and where each came from (``file:line``)."""

    texts: list[str]
    labels: list[str] | None
    origins: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def split(self, fraction: float, seed: int = 0) -> tuple[TextDataset, TextDataset]:
        """A random ``(1 - fraction, fraction)`` split, e.g. to hold out a validation set."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
        n = len(self)
        held = max(1, round(n * fraction))
        if held >= n:
            raise ValueError(f"fraction: holding out {fraction} of {n} examples leaves none to train on")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        return self._subset(sorted(order[held:])), self._subset(sorted(order[:held]))

    def _subset(self, index: list[int]) -> TextDataset:
        labels = None if self.labels is None else [self.labels[i] for i in index]
        return TextDataset([self.texts[i] for i in index], labels, [self.origins[i] for i in index])


# ------------------------------------------------------------------------------------- reading
def read_table(path: str | os.PathLike, text_column: str = "sentence", label_column: str | None = "label",
               delimiter: str | None = None, encoding: str = "utf-8", errors: str = "strict",
               require_label: bool = True, allow_control_chars: bool = False) -> TextDataset:
    """Read a TSV/CSV file whose first row names the columns.

    delimiter: None infers it from the suffix (``.tsv``/``.tab`` tab, ``.csv`` comma; a ``.gz``
    suffix is looked through). Tab-separated files are read without quoting (a ``"`` is an ordinary
    character, as in GLUE's files); other delimiters use CSV quoting.
    label_column: None, or a column absent while ``require_label`` is False, gives labels None.
    Raises ValueError naming the file (and line) for a missing column, a row with the wrong number
    of fields, an empty label, undecodable bytes or control characters (``read_text``).
    """
    path = Path(path)
    if delimiter is None:
        suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
        if suffix.lower() not in _DELIMITERS:
            raise ValueError(f"delimiter: cannot infer it from the name {path.name!r} (expected a .tsv, .tab "
                             "or .csv file); pass the delimiter, e.g. delimiter='\\t'")
        delimiter = _DELIMITERS[suffix.lower()]
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter: expected one character, got {delimiter!r}")
    text = read_text(path, encoding, errors, allow_control_chars)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    described = "tab" if delimiter == "\t" else repr(delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: expected a header row naming the columns, got an empty file")
        header = [name.strip() for name in header]
        if text_column not in header:
            raise ValueError(f"{path}:1: text_column: expected a column named {text_column!r}, found columns "
                             f"{header} (separated by {described})")
        text_at = header.index(text_column)
        label_at = None
        if label_column is not None and label_column in header:
            label_at = header.index(label_column)
        elif label_column is not None and require_label:
            raise ValueError(f"{path}:1: label_column: expected a column named {label_column!r}, found columns "
                             f"{header} (separated by {described})")
        texts, labels, origins = [], [], []
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                raise ValueError(f"{path}:{start}: expected {len(header)} fields separated by {described} "
                                 f"(columns {header}), got {len(row)}")
            texts.append(row[text_at])
            origins.append(f"{path}:{start}")
            if label_at is not None:
                label = row[label_at].strip()
                if not label:
                    raise ValueError(f"{path}:{start}: label_column {label_column!r}: expected a label, "
                                     "got an empty field")
                labels.append(label)
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: malformed {described}-separated row ({error})") from None
    return TextDataset(texts, labels if label_at is not None else None, origins)


def read_folder(root: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict",
                allow_control_chars: bool = False) -> TextDataset:
    """One sub-folder per class (its name is the label), one example per file inside it.

    Hidden files and folders (name starting with ".") are skipped; files are taken in sorted order.
    Each file is decoded as ``read_text`` does; what ``encoding="auto"`` chose and the bytes replaced
    are warned once for the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: no such folder: {root}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: expected one sub-folder per class, found none")
    check_encoding(encoding)
    files, labels = [], []
    for folder in classes:
        inside = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not inside:
            raise ValueError(f"{folder}: expected at least one example file in class folder {folder.name!r}, "
                             "found none")
        files += [read_bytes(file) for file in inside]
        labels += [folder.name] * len(inside)
    code_page = None
    if encoding == "auto":  # files that are not Unicode share one guess: a short review says little alone
        legacy = b"\n".join(data for data, _ in files if unicode_encoding(data) is None)
        code_page = guess_code_page(legacy[:1 << 20], str(root)) if legacy else None
    decoded = [decode_text(data, source, encoding, errors, allow_control_chars, code_page) for data, source in files]
    report_decoding(root, decoded)
    texts, origins = [normalise_newlines(d.text) for d in decoded], [source for _, source in files]
    _check_one_file_per_example(root, len(classes), texts, labels, origins)
    return TextDataset(texts, labels, origins)


def _check_one_file_per_example(root: Path, n_classes: int, texts: list[str], labels: list[str],
                                origins: list[str]) -> None:
    """A class folder holding one file of several lines is most likely a file of examples, one per
    line: an error when every class folder is like that, a warning when some are."""
    counts = Counter(labels)
    suspects = [(origin, sum(1 for line in text.split("\n") if line.strip()))
                for text, label, origin in zip(texts, labels, origins) if counts[label] == 1]
    suspects = [(origin, n) for origin, n in suspects if n > 1]
    if not suspects:
        return
    found = ", ".join(f"{origin} ({n} lines)" for origin, n in suspects[:3]) + (", ..." if len(suspects) > 3 else "")
    message = (f"{root}: class folders holding a single file of several lines: {found}; the folder layout reads "
               "one example per file (<root>/<class>/<example>.txt, as aclImdb), so each such file is one example. "
               "For one example per line, use a .tsv table with a header row (columns sentence and label)")
    if len(suspects) == n_classes:
        raise ValueError(message)
    warnings.warn(message, stacklevel=3)


def read_labelled(path: str | os.PathLike, text_column: str = "sentence", label_column: str | None = "label",
                  delimiter: str | None = None, encoding: str = "utf-8", errors: str = "strict",
                  require_label: bool = True, allow_control_chars: bool = False) -> TextDataset:
    """``read_folder`` for a folder, else ``read_table``."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path, encoding, errors, allow_control_chars)
    return read_table(path, text_column, label_column, delimiter, encoding, errors, require_label,
                      allow_control_chars)


# -------------------------------------------------------------------------------------- labels
def _natural_key(name: str) -> tuple:
    """Sort key that puts "2" before "10" and "-1" before "0"; non-numbers after numbers, by text."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


class LabelSet:
    """Class names ↔ class ids 0..K-1. Built from training labels in natural order (numbers by value)."""

    def __init__(self, names: Sequence[str]) -> None:
        names = list(names)
        if len(names) < 2:
            raise ValueError(f"labels: expected at least 2 classes, got {names}")
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"labels: expected non-empty strings, got {name!r}")
        if len(set(names)) != len(names):
            dup = next(n for n, c in Counter(names).items() if c > 1)
            raise ValueError(f"labels: class {dup!r} appears twice")
        self.names = names
        self._index = {n: i for i, n in enumerate(names)}

    @classmethod
    def build(cls, labels: Iterable[str]) -> LabelSet:
        """The distinct labels, in natural order."""
        seen = set(labels)
        if len(seen) < 2:
            raise ValueError(f"labels: expected at least 2 distinct classes in the training data, got "
                             f"{sorted(seen)}")
        return cls(sorted(seen, key=_natural_key))

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self.names == other.names

    def __repr__(self) -> str:
        return f"LabelSet({self.names})"

    def encode(self, labels: Sequence[str], origins: Sequence[str] | None = None) -> Tensor:
        """Class ids <int64>[N]; an unknown label raises ValueError naming its origin (file:line)."""
        ids = []
        for i, label in enumerate(labels):
            index = self._index.get(label)
            if index is None:
                where = origins[i] if origins is not None else f"label {i}"
                raise ValueError(f"{where}: unknown label {label!r}; the model knows the classes {self.names}")
            ids.append(index)
        return torch.tensor(ids, dtype=torch.int64)

    def to_dict(self) -> dict:
        return {"names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSet:
        if not isinstance(d, dict) or set(d) != {"names"} or not isinstance(d["names"], list):
            raise ValueError(f"labels: expected a dict {{'names': [...]}}, got {d!r:.80}")
        return cls(d["names"])


def class_weights(targets: Tensor | Sequence[int], num_classes: int) -> Tensor:
    """"Balanced" class weights <float32>[K]: N / (K · count_k), so that every class contributes the
    same total weight to the loss (a class absent from ``targets`` gets 0)."""
    targets = torch.as_tensor(targets)
    if targets.dim() != 1 or targets.is_floating_point() or targets.numel() == 0:
        raise ValueError(f"targets: expected a non-empty 1-D tensor of class ids, got {targets.dtype} of "
                         f"shape {tuple(targets.shape)}")
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise ValueError(f"targets: expected class ids in [0, {num_classes}), got min {int(targets.min())}, "
                         f"max {int(targets.max())}")
    counts = torch.bincount(targets, minlength=num_classes).float()
    weights = torch.where(counts > 0, targets.numel() / (num_classes * counts.clamp(min=1)), 0.0)
    return weights


# ------------------------------------------------------------------------------------ encoding
def encode_texts(texts: Sequence[str], tokenizer: Tokenizer, vocab: Vocab, *, append_eos: bool = True,
                 max_length: int = 0, origins: Sequence[str] | None = None, warn_empty: bool = True
                 ) -> list[list[int]]:
    """Token ids of each text, never empty: ``append_eos`` ends every text with ``"<eos>"``, and an
    empty text (no tokens) is ``["<eos>"]`` alone, the empty sequence — with a warning that names
    where it came from. ``max_length`` > 0 keeps the first ``max_length`` tokens (<eos> included)."""
    if isinstance(texts, str):
        raise TypeError("texts: expected a list of strings, got a single str")
    seqs, empty = [], []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts: expected strings, got {type(text).__name__} at position {i}")
        ids = vocab.encode(tokenizer.tokenize(text))
        if not ids:
            empty.append(i)
        if append_eos or not ids:
            ids.append(vocab.eos_id)
        if max_length and len(ids) > max_length:
            ids = ids[:max_length - 1] + [vocab.eos_id] if append_eos else ids[:max_length]
        seqs.append(ids)
    if empty and warn_empty:
        where = [origins[i] if origins is not None else f"text {i}" for i in empty[:3]]
        more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
        warnings.warn(f"{len(empty)} empty text(s) ({', '.join(where)}{more}): read as the empty sequence "
                      "(<eos> alone)", stacklevel=2)
    return seqs


# ------------------------------------------------------------------------------------- batches
class BucketBatches:
    """Batches of similar length, so that padding stays small.

    Each epoch the examples are shuffled (seeded by ``seed`` and the epoch: the same epoch gives the
    same batches, as the Trainer's exact resumption needs), cut into pools of ``batch_size * pool``
    examples, each pool sorted by length and cut into batches, and the batch order shuffled.
    ``shuffle=False`` sorts all examples by length once (evaluation); ``order`` tells which example
    each row is. A batch is ``(ids <int64>[B, T], lengths <int64>[B], targets)`` with ``targets``
    ``<int64>[B]`` (None when built without targets).

    With ``world_size`` > 1, rank ``rank`` takes rows ``rank::world_size`` of every global batch;
    global batches with fewer than ``world_size`` rows are dropped so that every rank gets the same
    number of batches.
    """

    def __init__(self, seqs: Sequence[Sequence[int]], targets: Tensor | None, batch_size: int, *,
                 shuffle: bool = True, pool: int = 50, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        for name, value in (("batch_size", batch_size), ("pool", pool), ("world_size", world_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected an integer in [0, {world_size}), got {rank!r}")
        if not len(seqs):
            raise ValueError("seqs: expected at least one sequence, got none")
        if any(len(s) == 0 for s in seqs):
            raise ValueError("seqs: expected non-empty sequences (encode_texts gives an empty text <eos>)")
        if targets is not None and len(targets) != len(seqs):
            raise ValueError(f"targets: expected {len(seqs)} targets (one per sequence), got {len(targets)}")
        self.seqs, self.targets = list(seqs), targets
        self.batch_size, self.shuffle, self.pool, self.seed = batch_size, shuffle, pool, seed
        self.rank, self.world_size = rank, world_size
        self.lengths = torch.tensor([len(s) for s in self.seqs])

    def _index_batches(self, epoch: int) -> list[list[int]]:
        n, b = len(self.seqs), self.batch_size
        if not self.shuffle:
            order = torch.sort(self.lengths, stable=True).indices.tolist()
            return [order[i:i + b] for i in range(0, n, b)]
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=rng)
        batches: list[list[int]] = []
        for start in range(0, n, b * self.pool):
            chunk = perm[start:start + b * self.pool]
            chunk = chunk[torch.sort(self.lengths[chunk], stable=True).indices].tolist()
            batches += [chunk[i:i + b] for i in range(0, len(chunk), b)]
        return [batches[i] for i in torch.randperm(len(batches), generator=rng).tolist()]

    def index_batches(self, epoch: int = 1) -> list[list[int]]:
        """Example indices of this rank's batches in ``epoch``."""
        batches = self._index_batches(epoch)
        if self.world_size > 1:
            batches = [idx[self.rank::self.world_size] for idx in batches if len(idx) >= self.world_size]
        return batches

    def __len__(self) -> int:
        return len(self.index_batches(1))

    def batches(self, epoch: int = 1) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        """This rank's batches for ``epoch`` (1-based, as the Trainer counts)."""
        out = []
        for idx in self.index_batches(epoch):
            ids, lengths = pad_sequences([self.seqs[i] for i in idx])
            out.append((ids, lengths, None if self.targets is None else self.targets[idx]))
        return out

    def __iter__(self):
        return iter(self.batches(1))

    def padding_fraction(self, epoch: int = 1) -> float:
        """Padded positions / all positions over the epoch's batches (0 = no padding)."""
        total = valid = 0
        for idx in self.index_batches(epoch):
            lengths = self.lengths[idx]
            total += int(lengths.max()) * len(idx)
            valid += int(lengths.sum())
        return 1 - valid / total


_SPACE = re.compile(r"\s+")


def preview(text: str, width: int = 60) -> str:
    """A one-line preview of a text for messages."""
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= width else text[: width - 1] + "…"
