"""Text data: reading, tokenizers, vocabulary, and token streams for language models.

The pipeline for a language model, as in pytorch/examples ``word_language_model``::

    text = read_corpus("ptb.train.txt.gz")                 # str, line endings normalised to "\\n"
    tok = WordTokenizer()
    vocab = Vocab.build(corpus_tokens(text, tok))          # "<pad>"=0, "<unk>"=1, "<eos>"=2, then by count
    ids = encode_corpus(text, tok, vocab)                  # <int64>[n], "<eos>" at each line end
    for inputs, targets in LMStream(ids, batch_size=20, bptt=35):   # <int64>[batch, bptt] each
        ...

For classification, ``vocab.encode(tok.tokenize(sentence))`` per example and ``pad_sequences`` to batch.

Tokenizers share one interface: ``tokenize(text) -> list[str]``, ``detokenize(tokens) -> str``,
``to_dict()`` (JSON-able, for checkpoints) and ``tokenizer_from_dict(d)`` to rebuild one.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import tempfile
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from torch import Tensor

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)


# ------------------------------------------------------------------------------------- reading
def read_text(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict") -> str:
    """The text of a file; ``.gz`` files are decompressed. Line endings are normalised to ``"\\n"``
    (as Python's text mode does). ``errors="replace"`` replaces undecodable bytes with U+FFFD."""
    path = Path(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"encoding: expected a codec name such as 'utf-8', got {encoding!r}") from None
    try:
        codecs.lookup_error(errors)
    except LookupError:
        raise ValueError(f"errors: expected a codec error handler such as 'strict' or 'replace', "
                         f"got {errors!r}") from None
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file: {path}")
    compressed = path.suffix == ".gz"
    try:
        data = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"path: {path} is not a valid gzip file ({exc})") from None
    try:
        text = data.decode(encoding, errors)
    except UnicodeDecodeError as exc:
        where = "of the decompressed data " if compressed else ""
        raise ValueError(f"path: {path} is not valid {encoding}: byte {data[exc.start]:#04x} at byte offset "
                         f"{exc.start} {where}({exc.reason}); pass errors=\"replace\" to replace "
                         "undecodable bytes") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_corpus(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict") -> str:
    """``read_text``, refusing a corpus that is empty or only whitespace."""
    text = read_text(path, encoding, errors)
    if not text.strip():
        raise ValueError(f"corpus: {path} is empty")
    return text


# ---------------------------------------------------------------------------------- tokenizers
class Tokenizer(ABC):
    """Splits text into string tokens and joins them back.

    ``keeps_newlines``: whether ``"\\n"`` survives as (part of) a token. Tokenizers that drop it
    (word level) get an ``"<eos>"`` token at each line end in language-model corpora.
    """

    kind: str
    keeps_newlines: bool

    @abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text``."""

    @abstractmethod
    def detokenize(self, tokens: Sequence[str]) -> str:
        """Text from tokens; the inverse of ``tokenize`` up to what the tokenizer discards."""

    @abstractmethod
    def to_dict(self) -> dict:
        """A JSON-able description; ``tokenizer_from_dict`` rebuilds the tokenizer from it."""


class WordTokenizer(Tokenizer):
    """Words split on whitespace, or the matches of ``pattern`` (``re.findall``) when given.

    ``detokenize`` joins with single spaces, so the original spacing and line breaks are not kept.
    """

    kind, keeps_newlines = "word", False

    def __init__(self, lowercase: bool = False, pattern: str | None = None) -> None:
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase: expected a bool, got {type(lowercase).__name__}")
        if pattern is not None:
            try:
                regex = re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise ValueError(f"pattern: expected a regular expression, got {pattern!r} ({exc})") from None
            if regex.groups:
                raise ValueError(f"pattern: expected no capturing groups (write (?:...)), got {pattern!r}")
        self.lowercase, self.pattern = lowercase, pattern
        self._regex = None if pattern is None else regex

    def tokenize(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        return text.split() if self._regex is None else self._regex.findall(text)

    def detokenize(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens)

    def to_dict(self) -> dict:
        return {"type": self.kind, "lowercase": self.lowercase, "pattern": self.pattern}


class CharTokenizer(Tokenizer):
    """One token per character (Unicode code point); newline is an ordinary character."""

    kind, keeps_newlines = "char", True

    def tokenize(self, text: str) -> list[str]:
        return list(text)

    def detokenize(self, tokens: Sequence[str]) -> str:
        return "".join(tokens)

    def to_dict(self) -> dict:
        return {"type": self.kind}


class SubwordTokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style) from the ``tokenizers`` library; round-trips any text exactly.

    Make one with ``SubwordTokenizer.train(texts, vocab_size)``. Its tokens are the BPE model's
    strings (a leading space shows as ``"Ġ"``); map them to ids with a ``Vocab`` as for the others.
    """

    kind, keeps_newlines = "subword", True

    def __init__(self, model: HFTokenizer) -> None:
        if not isinstance(model, HFTokenizer):
            raise TypeError(f"model: expected a tokenizers.Tokenizer, got {type(model).__name__}")
        self.model = model

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> SubwordTokenizer:
        """Learn BPE merges from ``texts`` until the model has ``vocab_size`` tokens (the 256 bytes
        included), merging only pairs seen at least ``min_frequency`` times."""
        if isinstance(texts, str):
            raise TypeError("texts: expected an iterable of strings, got a single str")
        for name, value, low in (("vocab_size", vocab_size, 256), ("min_frequency", min_frequency, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        model = HFTokenizer(models.BPE())
        model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        model.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        model.train_from_iterator(texts, trainer)
        return cls(model)

    def tokenize(self, text: str) -> list[str]:
        return self.model.encode(text).tokens

    def detokenize(self, tokens: Sequence[str]) -> str:
        return self.model.decoder.decode(list(tokens))

    def to_dict(self) -> dict:
        return {"type": self.kind, "model": json.loads(self.model.to_str())}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from its ``to_dict()``."""
    keys = {"char": {"type"}, "subword": {"type", "model"}, "word": {"type", "lowercase", "pattern"}}
    kind = d.get("type") if isinstance(d, dict) else None
    if not isinstance(kind, str) or kind not in keys:
        got = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"tokenizer: expected a dict with 'type' one of {sorted(keys)}, got {got!r}")
    if set(d) != keys[kind]:
        raise ValueError(f"tokenizer: expected keys {sorted(keys[kind])} for a {kind} tokenizer, got {sorted(d)}")
    if kind == "char":
        return CharTokenizer()
    if kind == "word":
        return WordTokenizer(d["lowercase"], d["pattern"])
    try:
        model = HFTokenizer.from_str(json.dumps(d["model"]))
    except Exception as exc:  # the tokenizers library raises a bare Exception
        raise ValueError(f"tokenizer: malformed subword model ({exc})") from None
    return SubwordTokenizer(model)


# -------------------------------------------------------------------------------------- vocab
def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Vocab:
    """Token ↔ id map. Ids 0, 1, 2 are always ``"<pad>"``, ``"<unk>"``, ``"<eos>"``; the given
    ``tokens`` follow in order. A literal special in the text (PTB writes ``<unk>``) maps to it."""

    pad_id, unk_id, eos_id = 0, 1, 2

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._itos: list[str] = list(SPECIALS)
        self._stoi: dict[str, int] = {t: i for i, t in enumerate(SPECIALS)}
        for token in tokens:
            if not isinstance(token, str):
                raise TypeError(f"tokens: expected strings, got {type(token).__name__} {token!r}")
            if token in self._stoi:
                raise ValueError(f"tokens: duplicate token {token!r} (the specials {list(SPECIALS)} "
                                 "are always present)")
            self._stoi[token] = len(self._itos)
            self._itos.append(token)

    @classmethod
    def build(cls, token_lists: Iterable[Iterable[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """The tokens seen at least ``min_freq`` times, most frequent first; ties keep the order of
        first occurrence, so the result is deterministic. ``max_size`` caps ``len(vocab)``, the three
        specials included; the specials themselves are never counted."""
        if not isinstance(min_freq, int) or isinstance(min_freq, bool) or min_freq < 1:
            raise ValueError(f"min_freq: expected an integer >= 1, got {min_freq!r}")
        if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool)
                                     or max_size < len(SPECIALS)):
            raise ValueError(f"max_size: expected None or an integer >= {len(SPECIALS)} (the specials), "
                             f"got {max_size!r}")
        if isinstance(token_lists, str):
            raise TypeError("token_lists: expected an iterable of token lists, got a single str")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            if isinstance(tokens, str):
                raise TypeError(f"token_lists: expected lists of tokens, got a str {tokens[:40]!r}")
            counts.update(tokens)
        ranked = [t for t, c in counts.most_common() if c >= min_freq and t not in SPECIALS]  # stable on ties
        if max_size is not None:
            ranked = ranked[: max_size - len(SPECIALS)]
        return cls(ranked)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._itos == other._itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order, specials first."""
        return list(self._itos)

    def index(self, token: str) -> int:
        """The id of ``token``; a ValueError when absent (``encode`` maps absent tokens to ``"<unk>"``)."""
        try:
            return self._stoi[token]
        except KeyError:
            raise ValueError(f"token: {token!r} is not in the vocabulary") from None

    def token(self, i: int) -> str:
        """The token with id ``i``."""
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"i: expected an int, got {type(i).__name__}")
        if not 0 <= i < len(self._itos):
            raise ValueError(f"i: expected an id in [0, {len(self._itos)}), got {i}")
        return self._itos[i]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens``; tokens not in the vocabulary become ``unk_id``."""
        get, unk = self._stoi.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def count_unknown(self, tokens: Iterable[str]) -> int:
        """How many of ``tokens`` ``encode`` would map to ``"<unk>"`` for being absent (a literal
        ``"<unk>"`` in the text is not counted)."""
        return sum(t not in self._stoi for t in tokens)

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """Tokens of ``ids`` (a list or an <int64>[n] tensor)."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1 or ids.is_floating_point():
                raise ValueError(f"ids: expected a 1-D integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        itos, n = self._itos, len(self._itos)
        out = []
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"ids: expected ids in [0, {n}), got {i}")
            out.append(itos[i])
        return out

    def to_dict(self) -> dict:
        """``{"specials": [...], "tokens": [...]}``, the tokens after the specials in id order."""
        return {"specials": list(SPECIALS), "tokens": self._itos[len(SPECIALS):]}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        """The inverse of ``to_dict``."""
        if not isinstance(d, dict) or set(d) != {"specials", "tokens"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"vocab: expected a dict with keys ['specials', 'tokens'], got {got}")
        if d["specials"] != list(SPECIALS):
            raise ValueError(f"vocab: expected specials {list(SPECIALS)}, got {d['specials']!r}")
        if not isinstance(d["tokens"], list):
            raise ValueError(f"vocab: expected 'tokens' to be a list, got {type(d['tokens']).__name__}")
        try:
            return cls(d["tokens"])
        except TypeError as exc:
            raise ValueError(f"vocab: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON, atomically (a temporary file renamed into place)."""
        _atomic_write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        """Read a vocabulary written by ``save``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no such vocab file: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"path: malformed vocab file {path}: {exc}") from None


# ---------------------------------------------------------------------------- encoding, batching
def corpus_tokens(text: str, tokenizer: Tokenizer) -> list[list[str]]:
    """The tokens of a language-model corpus: one list per line with ``"<eos>"`` appended (as
    pytorch/examples does; blank lines give a lone ``"<eos>"``), or a single list of the whole text
    for tokenizers that keep newlines (char, subword), where ``"\\n"`` is an ordinary token."""
    if tokenizer.keeps_newlines:
        return [tokenizer.tokenize(text)]
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [tokenizer.tokenize(line) + [EOS] for line in lines]


def encode_corpus(text: str, tokenizer: Tokenizer, vocab: Vocab) -> Tensor:
    """The whole corpus as one id stream <int64>[n] (see ``corpus_tokens``), ready for ``LMStream``."""
    ids: list[int] = []
    for tokens in corpus_tokens(text, tokenizer):
        ids.extend(vocab.encode(tokens))
    return torch.tensor(ids, dtype=torch.int64)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = Vocab.pad_id) -> tuple[Tensor, Tensor]:
    """Pad id lists to a batch: ids <int64>[batch, max_len] and lengths <int64>[batch]."""
    if not seqs:
        raise ValueError("seqs: expected at least one sequence, got none")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.int64)
    for row, s in zip(ids, seqs):
        row[: len(s)] = torch.as_tensor(s, dtype=torch.int64)
    return ids, lengths


class LMStream:
    """Contiguous-stream batches for truncated BPTT (pytorch/examples ``batchify`` + ``get_batch``).

    ``ids`` <int64>[n] is cut into ``batch_size`` rows of ``n // batch_size`` tokens (the remainder is
    dropped); row r holds tokens ``[r*m, (r+1)*m)``. Chunk k is ``(inputs, targets)``, both
    <int64>[batch, bptt], the targets shifted one step ahead; row r of chunk k+1 continues row r of
    chunk k, so the hidden state can be carried across chunks. The last chunk may be shorter.

    Sharding: ``batch_size`` is the global batch; rank ``rank`` of ``world_size`` takes its own
    contiguous block of ``batch_size // world_size`` rows. Every rank gets the same number of chunks.
    """

    def __init__(self, ids: Tensor, batch_size: int, bptt: int, rank: int = 0, world_size: int = 1) -> None:
        if not isinstance(ids, Tensor):
            raise TypeError(f"ids: expected a torch.Tensor <int64>[n], got {type(ids).__name__}")
        if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"ids: expected a 1-D integer tensor <int64>[n], got {ids.dtype} "
                             f"of shape {tuple(ids.shape)}")
        for name, value in (("batch_size", batch_size), ("bptt", bptt), ("world_size", world_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
            raise ValueError(f"rank: expected an integer in [0, {world_size}) (world_size={world_size}), got {rank!r}")
        if batch_size % world_size:
            raise ValueError(f"batch_size: expected a multiple of world_size={world_size} (the global batch "
                             f"is split evenly across ranks), got {batch_size}")
        per_row = ids.numel() // batch_size
        if per_row < 2:
            raise ValueError(f"ids: too short for one chunk: {ids.numel()} tokens give {per_row} per row at "
                             f"batch_size={batch_size}; need at least {2 * batch_size} (2 per row)")
        local = batch_size // world_size
        rows = ids[: per_row * batch_size].long().reshape(batch_size, per_row)
        self.data = rows[rank * local: (rank + 1) * local]  # <int64>[local_batch, per_row]
        self.batch_size, self.bptt = local, bptt

    def __len__(self) -> int:
        return -(-(self.data.shape[1] - 1) // self.bptt)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        """Chunk k: inputs, targets <int64>[batch, ≤bptt] (views of ``data``)."""
        if not 0 <= k < len(self):
            raise IndexError(f"k: expected a chunk index in [0, {len(self)}), got {k}")
        start = k * self.bptt
        stop = min(start + self.bptt, self.data.shape[1] - 1)
        return self.data[:, start:stop], self.data[:, start + 1: stop + 1]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return (self[k] for k in range(len(self)))
