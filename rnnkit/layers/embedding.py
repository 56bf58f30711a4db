"""Token embedding: ``torch.nn.Embedding`` with checked ids and pretrained word2vec / GloVe vectors."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..kernels import eager

log = logging.getLogger(__name__)


class Embedding(nn.Embedding):
    """Lookup table of token vectors: ids ``<int>[*]`` → vectors ``<float>[*, embedding_dim]``.

    Same constructor, parameters and state dict as ``torch.nn.Embedding``; forward() also checks
    that ids are integers in ``[0, num_embeddings)`` and says which id is out of range (in eager
    mode: while torch records the model for export or compilation there are no values).
    ``from_text_vectors`` builds one from word2vec/GloVe vectors.

    Args:
        num_embeddings: size of the vocabulary (ids 0 .. num_embeddings - 1).
        embedding_dim: size of each vector.
        padding_idx: the id of padding: its row is zero and receives no gradient, as in torch.nn.
            Default: None.
        **kwargs: torch.nn.Embedding's other arguments (``max_norm``, ``sparse``, ``_weight``,
            ``device``, ``dtype``, ...).

    Attributes:
        coverage: the fraction of the vocabulary found in the file by ``from_text_vectors``, else None.

    Raises:
        TypeError: ids that are not an integer tensor.
        ValueError: an id below 0 or not below ``num_embeddings``, naming the id.

    Examples:
        >>> import torch
        >>> from rnnkit.layers import Embedding
        >>> emb = Embedding(10, 4, padding_idx=0)
        >>> emb(torch.tensor([[1, 2, 0]])).shape
        torch.Size([1, 3, 4])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 **kwargs) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, **kwargs)
        self.coverage: float | None = None

    def forward(self, ids: Tensor) -> Tensor:
        """Vectors ``<float>[*, embedding_dim]`` of token ids ``<int>[*]``, the ids checked (class docstring)."""
        if not isinstance(ids, Tensor):
            raise TypeError(f"ids: expected a torch.Tensor of token ids, got {type(ids).__name__}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"ids: expected integer token ids, got {ids.dtype}")
        if ids.numel() and eager():  # recording (export, compile) has no values to check
            low, high = (int(v) for v in torch.aminmax(ids))
            if high >= self.num_embeddings:
                raise ValueError(f"ids: expected ids below the vocabulary size {self.num_embeddings}, "
                                 f"got max id {high}")
            if low < 0:
                raise ValueError(f"ids: expected non-negative ids, got min id {low}")
        return super().forward(ids)

    @classmethod
    def from_text_vectors(cls, path: str | Path, vocab_tokens: Sequence[str], freeze: bool = False,
                          padding_idx: int | None = None) -> Embedding:
        """An embedding for ``vocab_tokens`` (row i ↔ token i) from a word2vec/GloVe text file.

        File format: an optional ``count dim`` header line, then one ``word v1 v2 ... v_dim`` line
        per word, fields separated by single spaces; ``.gz`` files are read compressed. The
        embedding size is the file's ``dim``. Tokens not in the file get random vectors
        ~ N(0, std of the found vectors) from torch's global RNG (seed with ``torch.manual_seed``;
        N(0, 1) when none is found); the ``padding_idx`` row is zero. Matching is exact (case
        sensitive); a word repeated in the file keeps its first vector.

        Sets ``.coverage`` (found / len(vocab_tokens)) and logs it. ``freeze=True`` turns off the
        weight's gradient. Raises ValueError with file and line number for a malformed line.
        """
        index = _token_index(vocab_tokens)
        path = Path(path)
        vectors, dim = _read_text_vectors(path, index)
        weight = torch.empty(len(index), dim)
        if vectors:
            found = torch.from_numpy(np.stack(list(vectors.values())))
            weight.normal_(0.0, float(found.std()) if found.numel() > 1 else 1.0)
            weight[torch.tensor(list(vectors))] = found
        else:
            log.warning("%s: none of the %d vocabulary tokens has a vector; all rows are random",
                        path, len(index))
            weight.normal_(0.0, 1.0)
        embedding = cls(len(index), dim, padding_idx=padding_idx, _weight=weight)
        if embedding.padding_idx is not None:
            with torch.no_grad():
                embedding.weight[embedding.padding_idx].zero_()
        embedding.weight.requires_grad_(not freeze)
        embedding.coverage = len(vectors) / len(index)
        log.info("%s: vectors for %d of %d vocabulary tokens (coverage %.1f%%), dim %d",
                 path, len(vectors), len(index), 100 * embedding.coverage, dim)
        return embedding


def _token_index(vocab_tokens: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, token in enumerate(vocab_tokens):
        if not isinstance(token, str):
            raise TypeError(f"vocab_tokens: expected strings, got {type(token).__name__} at position {i}")
        if token in index:
            raise ValueError(f"vocab_tokens: token {token!r} appears twice, at positions {index[token]} and {i}")
        index[token] = i
    if not index:
        raise ValueError("vocab_tokens: expected at least one token, got an empty vocabulary")
    return index


def _read_text_vectors(path: Path, wanted: dict[str, int]) -> tuple[dict[int, np.ndarray], int]:
    """Vectors of the wanted words as {vocabulary row: <float32>[dim]}, and dim.

    Every line's field count is checked; numbers are parsed only for wanted words (big files).
    """
    vectors: dict[int, np.ndarray] = {}
    dim = None
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as lines:
            for lineno, raw in enumerate(lines, 1):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8").rstrip()
                except UnicodeDecodeError:
                    raise ValueError(f"{where}: expected UTF-8 text, got undecodable bytes") from None
                if not line:
                    continue
                fields = line.split(" ")
                if lineno == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                    dim = int(fields[1])  # word2vec header: "count dim"
                    continue
                if dim is None:
                    dim = len(fields) - 1
                if dim < 1 or len(fields) != dim + 1:
                    raise ValueError(f"{where}: expected a word and {dim} numbers separated by single "
                                     f"spaces, got {len(fields) - 1} values after {fields[0]!r}")
                row = wanted.get(fields[0])
                if row is not None and row not in vectors:
                    try:
                        vectors[row] = np.array(fields[1:], dtype=np.float32)
                    except ValueError:
                        bad = next(f for f in fields[1:] if not _is_number(f))
                        raise ValueError(f"{where}: expected numbers after the word {fields[0]!r}, "
                                         f"got {bad!r}") from None
    except FileNotFoundError:
        raise ValueError(f"path: vectors file not found: {path}") from None
    except (OSError, EOFError) as error:  # unreadable, or a corrupt .gz
        raise ValueError(f"{path}: cannot read vectors file: {error}") from None
    if dim is None:
        raise ValueError(f"{path}: expected word vectors, got an empty file")
    return vectors, dim


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
