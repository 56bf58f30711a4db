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
import functools
import gzip
import json
import os
import re
import tempfile
import threading
import warnings
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import torch
from pydantic import AfterValidator, Field
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from torch import Tensor

from ..config import Config

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)


# ------------------------------------------------------------------------------------- reading
# What a user changes to read a file that failed: the config key and the command-line flag alike,
# since the same readers serve `rnnkit train CONFIG` and the commands that take a file.
_FIX_ENCODING = ('name the file\'s encoding (data.encoding in the config, --encoding on the command line; '
                 '"auto" detects it)')
_FIX_ERRORS = 'or replace undecodable bytes (data.encoding_errors = "replace", --encoding-errors replace)'
_FIX_CONTROL = "or keep them (data.allow_control_chars = true, --allow-control-chars)"
# C0 controls but tab, line feed, carriage return and form feed; DEL; the C1 controls
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {0: "NUL", 0x1b: "ESC", 0x7f: "DEL"}
_CHAOS_MARGIN = 0.1  # charset-normalizer "chaos" (0 clean .. 1 mess) within which code pages count as equals
# UTF-32-LE's mark begins with UTF-16-LE's, so it is tried first
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def check_encoding(name: str, argument: str = "encoding") -> str:
    """``name`` if it is ``"auto"`` or a codec Python knows; else a ValueError naming ``argument``
    and the value."""
    if name != "auto":
        try:
            codecs.lookup(name)
        except (LookupError, TypeError):
            raise ValueError(f"{argument + ': ' if argument else ''}expected a codec name such as 'utf-8', "
                             f"'cp1252' or 'utf-16', or 'auto', got {name!r}") from None
    return name


TextEncoding = Annotated[str, AfterValidator(functools.partial(check_encoding, argument=""))]


class TextFileConfig(Config):
    """How a task's data config reads its text files (a base of each task's ``data`` section)."""

    encoding: TextEncoding = Field("utf-8", description="encoding of the data files: a codec name ('utf-8', "
                                   "'cp1252', 'utf-16', ...) or 'auto' (a byte-order mark, UTF-16/32 without "
                                   "one, else charset-normalizer's guess; the choice is reported)")
    encoding_errors: Literal["strict", "replace"] = Field("strict", description="undecodable bytes: fail with "
                                                          "the file, line and byte offset, or replace them "
                                                          "(the count is reported)")
    allow_control_chars: bool = Field(False, description="accept NUL and other control characters in the "
                                                         "text (else they are an error naming file and line)")

    def reading(self) -> dict[str, Any]:
        """The keyword arguments of the readers (``read_text``, ``read_table``, ...) these fields give."""
        return {"encoding": self.encoding, "errors": self.encoding_errors,
                "allow_control_chars": self.allow_control_chars}


class Decoded(NamedTuple):
    """What ``decode_text`` returns: the text and how it was read."""

    text: str
    encoding: str  # the codec used: the one asked for, or the one "auto" chose
    detected: str  # under "auto": what decided it ("byte-order mark", ...); else ""
    replaced: int  # bytes replaced with U+FFFD under errors="replace"


class _Counter(threading.local):
    """Bytes replaced by the "rnnkit.replace" error handler in this thread's current decode (codec
    error handlers are registered process-wide, by name)."""

    replaced = 0


_counter = _Counter()


def _count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    _counter.replaced += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("rnnkit.replace", _count_and_replace)


def _wide_unicode(data: bytes) -> str | None:
    """UTF-32 or UTF-16 (little or big endian) recognised by where text without a byte-order mark
    has its zero bytes (the high bytes of Latin characters), if the whole decodes cleanly."""
    sample = data[:1 << 16]
    if len(sample) < 4 or 0 not in sample:
        return None

    def zeros(step: int, phase: int) -> float:
        part = sample[phase::step]
        return part.count(0) / max(1, len(part))

    # UTF-32 text of the Basic Multilingual Plane has zeros in both high bytes of every character;
    # UTF-16 text has zeros in the high byte of every ASCII character (letters of Latin text, the
    # spaces and digits of Cyrillic or Greek) and almost never in the low byte. Text with hardly any
    # ASCII (Chinese) is left to charset-normalizer.
    guesses = []
    if len(data) % 4 == 0:
        z = [zeros(4, i) for i in range(4)]
        guesses += [("utf-32-le", z[2] > 0.95 and z[3] > 0.95 and z[0] < 0.05),
                    ("utf-32-be", z[0] > 0.95 and z[1] > 0.95 and z[3] < 0.05)]
    if len(data) % 2 == 0:
        even, odd = zeros(2, 0), zeros(2, 1)
        guesses += [("utf-16-le", odd > 0.1 and even < 0.01), ("utf-16-be", even > 0.1 and odd < 0.01)]
    for name, fits in guesses:
        if fits:
            try:
                data.decode(name)
            except UnicodeDecodeError:
                continue
            return name
    return None


def unicode_encoding(data: bytes) -> tuple[str, str] | None:
    """``(codec, what decided it)`` when the bytes are Unicode: a byte-order mark, UTF-32/UTF-16
    without one, or valid UTF-8; else None."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name, "byte-order mark"
    wide = _wide_unicode(data)
    if wide:
        return wide, "zero-byte pattern, no byte-order mark"
    try:
        data.decode("utf-8")
        return "utf-8", "valid UTF-8"
    except UnicodeDecodeError:
        return None


def guess_code_page(data: bytes, source: str) -> tuple[str, str]:
    """``(codec, what decided it)`` for bytes in a legacy 8-bit encoding: charset-normalizer's guess.

    Western text often reads equally cleanly in several code pages (cp1250, cp1252, cp1257 share most
    letters) and charset-normalizer's pick among them is arbitrary; Windows-1252, the most common
    legacy encoding, wins when it reads about as cleanly as the best, or reads the bytes as the same
    text as one that does. Short texts say little: a
    folder of files is guessed from all of its files at once (``read_folder``).
    """
    from charset_normalizer import from_bytes
    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise ValueError(f"{source}: encoding 'auto' could not tell the encoding; name it "
                         "(data.encoding in the config, --encoding on the command line)")
    near = {codecs.lookup(m.encoding).name for m in matches if m.chaos <= best.chaos + _CHAOS_MARGIN}
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:  # bytes cp1252 leaves undefined (0x81, 0x8d, 0x8f, 0x90, 0x9d)
        western = None
    # charset-normalizer lists one of several code pages that read the bytes identically
    if western is not None and ("cp1252" in near or any(data.decode(name) == western for name in near)):
        return "cp1252", "charset-normalizer, Windows-1252 among its equals"
    return codecs.lookup(best.encoding).name, "charset-normalizer"


def _line(text_before: str) -> int:
    """The 1-based line number of the position after ``text_before`` (any line ending)."""
    return text_before.count("\n") + text_before.count("\r") - text_before.count("\r\n") + 1


def _byte_offset(data: bytes, encoding: str, errors: str, position: int) -> int:
    """Where the character at ``position`` of ``data.decode(encoding, errors)`` starts in ``data``."""
    lo, hi = 0, len(data)
    while lo < hi:  # the shortest prefix that decodes to at least `position` characters
        mid = (lo + hi) // 2
        if len(codecs.getincrementaldecoder(encoding)(errors).decode(data[:mid])) >= position:
            hi = mid
        else:
            lo = mid + 1
    return lo


def decode_text(data: bytes, source: str, encoding: str = "utf-8", errors: str = "strict",
                allow_control_chars: bool = False, code_page: tuple[str, str] | None = None) -> Decoded:
    """Decode the bytes of a text file (the one decoding step of every rnnkit reader).

    encoding: a codec name, or ``"auto"``: a byte-order mark; else UTF-32/UTF-16 recognised by their
    zero bytes; else UTF-8 if the bytes are valid UTF-8; else ``code_page`` when given (a
    ``guess_code_page`` result for a larger sample), else ``guess_code_page(data)``.
    ``"utf-8"`` drops a leading byte-order mark (as ``"utf-8-sig"``).
    errors: ``"strict"`` raises ValueError naming ``source``, the line, the byte offset and value,
    and the config key or flag that fixes it; ``"replace"`` puts U+FFFD for undecodable bytes and
    counts them (``Decoded.replaced``); other codec error handlers are passed to the codec.
    allow_control_chars: False makes NUL and other control characters (all but tab, line feed,
    carriage return and form feed) a ValueError naming the file, line and byte offset.
    Line endings are kept as they are (``read_text`` normalises them).
    """
    check_encoding(encoding)
    try:
        codecs.lookup_error(errors)
    except LookupError:
        raise ValueError(f"errors: expected a codec error handler such as 'strict' or 'replace', "
                         f"got {errors!r}") from None
    detected, codec = "", encoding
    if encoding == "auto":
        codec, detected = unicode_encoding(data) or code_page or guess_code_page(data, source)
        encoding = codec
    elif codecs.lookup(encoding).name == "utf-8":
        codec = "utf-8-sig"  # the same, but a leading byte-order mark is dropped
    handler = "rnnkit.replace" if errors == "replace" else errors
    _counter.replaced = 0
    try:
        text = data.decode(codec, handler)
    except UnicodeDecodeError as exc:
        line = _line(data[:exc.start].decode(codec, "replace"))
        raise ValueError(f"{source} is not valid {encoding}: byte {data[exc.start]:#04x} at byte offset "
                         f"{exc.start}, line {line} ({exc.reason}); {_FIX_ENCODING}, {_FIX_ERRORS}") from None
    replaced = _counter.replaced if errors == "replace" else 0
    if not allow_control_chars:
        found = _CONTROL.search(text)
        if found:
            char = ord(found.group())
            name = _CONTROL_NAMES.get(char, "a control character")
            offset = _byte_offset(data, codec, handler, found.start())
            wide = _wide_unicode(data) if char == 0 and not detected else None
            hint = f"the file looks like {wide} (data.encoding = 'auto' reads it); " if wide else ""
            raise ValueError(f"{source}: line {_line(text[:found.start()])}, byte offset {offset}: "
                             f"U+{char:04X} ({name}) in the text, which text files do not hold; {hint}"
                             f"{_FIX_ENCODING}, {_FIX_CONTROL}")
    return Decoded(text, encoding, detected, replaced)


def read_bytes(path: str | os.PathLike) -> tuple[bytes, str]:
    """A file's bytes (``.gz`` files decompressed) and its name for messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file: {path}")
    compressed = path.suffix == ".gz"
    try:
        data = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"path: {path} is not a valid gzip file ({exc})") from None
    return data, f"{path} (decompressed)" if compressed else str(path)


def read_decoded(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict",
                 allow_control_chars: bool = False) -> Decoded:
    """``decode_text`` of a file's bytes (``read_bytes``), without reporting what it did."""
    check_encoding(encoding)
    return decode_text(*read_bytes(path), encoding, errors, allow_control_chars)


def report_decoding(path: str | os.PathLike, decoded: Decoded | Sequence[Decoded]) -> None:
    """Warn what ``encoding="auto"`` chose and how many bytes were replaced, for one file or for the
    files of a folder (one warning each, the first few files named)."""
    many = [decoded] if isinstance(decoded, Decoded) else list(decoded)
    chosen = Counter((d.encoding, d.detected) for d in many if d.detected)
    if chosen:
        parts = ", ".join(f"{enc} ({how})" + (f" for {n} files" if len(many) > 1 else "")
                          for (enc, how), n in chosen.most_common())
        warnings.warn(f"{path}: encoding 'auto' read {parts}", stacklevel=3)
    replaced = sum(d.replaced for d in many)
    if replaced:
        warnings.warn(f"{path}: replaced {replaced} undecodable byte(s) with U+FFFD (encoding_errors = "
                      "'replace')", stacklevel=3)


def normalise_newlines(text: str) -> str:
    """``"\\r\\n"`` and ``"\\r"`` to ``"\\n"``, as Python's text mode reads them."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict",
              allow_control_chars: bool = False) -> str:
    """The text of a file; ``.gz`` files are decompressed. Line endings are normalised to ``"\\n"``
    (as Python's text mode does). ``encoding``, ``errors`` and ``allow_control_chars`` as in
    ``decode_text``; what ``"auto"`` chose and how many bytes ``"replace"`` replaced are warned."""
    decoded = read_decoded(path, encoding, errors, allow_control_chars)
    report_decoding(path, decoded)
    return normalise_newlines(decoded.text)


def read_corpus(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict",
                allow_control_chars: bool = False) -> str:
    """``read_text``, refusing a corpus that is empty or only whitespace."""
    text = read_text(path, encoding, errors, allow_control_chars)
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
