"""Dropout for sequences: one mask per sequence (variational) and whole-word embedding dropout.

Both are identity in eval mode or with ``p == 0``; in training, kept values are scaled by
``1 / (1 - p)`` so that expectations match eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1), got {p!r}")
    return float(p)


class LockedDropout(nn.Module):
    """Variational dropout (Gal & Ghahramani 2016; "locked" in Merity et al. 2017's AWD-LSTM).

    Each sequence draws one mask over features and uses it at every time step, unlike
    ``nn.Dropout``, which draws a new mask per step.

    Args:
        p: probability of zeroing a feature, in [0, 1). Default: 0.5.

    Inputs:
        - **x**: ``<float>[batch, time, features]``.

    Outputs:
        - ``<float>[batch, time, features]``: x with one mask per sequence, scaled by 1 / (1 - p);
          x itself in eval mode.

    Raises:
        ValueError: p outside [0, 1); an x without 3 dims (in training).

    Examples:
        >>> import torch
        >>> from rnnkit.layers import LockedDropout
        >>> y = LockedDropout(0.5)(torch.ones(2, 4, 3))
        >>> bool((y == y[:, :1]).all())      # the same mask at every step
        True
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _check_p(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.dim() != 3:
            raise ValueError(f"x: expected 3 dims (batch, time, features), got shape {tuple(x.shape)}")
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - self.p)
        return x * mask / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EmbeddingDropout(nn.Module):
    """Drop whole words (Gal & Ghahramani 2016; Merity et al. 2017's ``embedded_dropout``).

    Each distinct token id in the batch is dropped with probability ``p``: every occurrence of a
    dropped id gets a zero vector. Same distribution as masking rows of the embedding matrix, but
    costs a mask over the batch's distinct ids rather than the whole vocabulary.

    Args:
        p: probability of dropping a word (every occurrence of a token id), in [0, 1). Default: 0.1.

    Inputs:
        - **ids**: ``<int>[batch, time]`` token ids.
        - **vectors**: ``<float>[batch, time, embedding_dim]``, their embeddings.

    Outputs:
        - ``<float>[batch, time, embedding_dim]``: the vectors, those of dropped words zero and the
          others scaled by 1 / (1 - p); the vectors themselves in eval mode.

    Raises:
        ValueError: p outside [0, 1); vectors whose shape does not match the ids'.
    """

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = _check_p(p)

    def forward(self, ids: Tensor, vectors: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return vectors
        if tuple(vectors.shape[:-1]) != tuple(ids.shape):
            raise ValueError(f"vectors: expected shape {tuple(ids.shape)} + (embedding_dim,) to match "
                             f"ids, got {tuple(vectors.shape)}")
        distinct, inverse = torch.unique(ids, return_inverse=True)
        keep = vectors.new_empty(distinct.shape).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return vectors * keep[inverse].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"p={self.p}"
