"""Output heads: recurrent features → logits per step or per sequence, with the matching
activation and loss (``OutputLayer``), or an adaptive softmax over a large vocabulary
(``AdaptiveOutput``, with ``frequency_cutoffs`` to place its clusters).

    activation   activate()   loss()                 target
    "linear"     identity     MSE                    <float>, same shape as the logits
    "sigmoid"    sigmoid      BCE with logits        <float> in [0, 1], same shape as the logits
    "softmax"    softmax      cross entropy          <int> class ids, the logits' shape without the last dim

forward() returns logits (pre-activation), so that the loss can use the numerically stable fused
forms; ``activate`` turns them into predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..kernels import eager

ACTIVATIONS = ("linear", "sigmoid", "softmax")
PER = ("step", "sequence")
POOLINGS = ("last", "mean", "max")


def _choice(name: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def sequence_mask(lengths: Tensor | Sequence[int], batch: int, time: int,
                  device: torch.device | None = None) -> Tensor:
    """<bool>[batch, time], True at each sequence's valid steps (t < lengths[b]).

    lengths: <int>[batch], each in [1, time].
    """
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.dim() != 1:
        raise TypeError(f"lengths: expected a 1-D integer tensor of {batch} lengths, "
                        f"got {lengths.dtype} of shape {tuple(lengths.shape)}")
    if lengths.numel() != batch:
        raise ValueError(f"lengths: expected {batch} entries (one per sequence), got {lengths.numel()}")
    if batch and eager() and not (1 <= int(lengths.min()) and int(lengths.max()) <= time):  # values, if any
        raise ValueError(f"lengths: expected every length in [1, {time}] (the time steps), "
                         f"got min {int(lengths.min())}, max {int(lengths.max())}")
    return torch.arange(time, device=lengths.device)[None, :] < lengths[:, None]


def pool(h: Tensor, lengths: Tensor | Sequence[int] | None = None, how: str = "last",
         directions: int = 1) -> Tensor:
    """Reduce each sequence's valid steps to one vector: h <float>[B, T, F] → <float>[B, F].

    how="last": the output at each sequence's own last valid step. With ``directions=2`` (h is
    a bidirectional stack's output, forward features first) the forward half comes from the last
    valid step and the backward half from t = 0, i.e. each direction's final state (h_n).
    how="mean" / "max": mean / max over the valid steps only.
    """
    _choice("how", how, POOLINGS)
    if h.dim() != 3:
        raise ValueError(f"h: expected 3 dims (batch, time, features), got shape {tuple(h.shape)}")
    batch, time, features = h.shape
    if lengths is None:
        if how == "mean":
            return h.mean(dim=1)
        if how == "max":
            return h.amax(dim=1)
        last = h[:, -1]
    else:
        mask = sequence_mask(lengths, batch, time, h.device)
        if how == "mean":
            return (h * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        if how == "max":
            return h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        last = h[torch.arange(batch, device=h.device), mask.sum(dim=1) - 1]
    if directions == 1:
        return last
    half = features // 2
    return torch.cat([last[:, :half], h[:, 0, half:]], dim=1)


class OutputLayer(nn.Module):
    """Linear head over a recurrent stack's output, with the activation and loss that match it.

    Args:
        in_features: features of the recurrent output h (hidden size × directions).
        out_features: outputs per step or per sequence (classes for softmax).
        activation: ``"linear"`` (MSE loss), ``"sigmoid"`` (binary cross entropy) or ``"softmax"``
            (cross entropy); forward() returns logits, ``activate`` applies it. Default: ``"linear"``.
        per: ``"step"``: one output per time step; ``"sequence"``: one per sequence after pooling.
            Default: ``"step"``.
        pooling: per sequence, ``"last"`` (each direction's final state), ``"mean"`` or ``"max"``
            over the valid steps (see ``pool``). Default: ``"last"``.
        directions: 2 when h comes from a bidirectional stack, so that ``"last"`` takes the forward
            direction's last valid step and the backward direction's first. Default: 1.
        bias: whether the linear layer has a bias. Default: True.

    Inputs:
        - **h**: ``<float>[B, T, in_features]``.
        - **lengths**: ``<int>[B]`` valid steps per sequence, for per-sequence pooling; or None.

    Outputs:
        - **logits**: ``<float>[B, T, out_features]`` (``per="step"``) or ``<float>[B, out_features]``.

    Raises:
        ValueError: an unknown activation, per or pooling; directions not 1 or 2 (or 2 with an odd
            in_features); an h of the wrong shape.

    ``weight`` can be tied to an embedding's (``tie_to``).

    Examples:
        >>> import torch
        >>> from rnnkit.layers import OutputLayer
        >>> head = OutputLayer(16, 3, activation="softmax", per="sequence", pooling="max")
        >>> logits = head(torch.randn(2, 5, 16), lengths=[5, 3])
        >>> logits.shape, head.loss(logits, torch.tensor([0, 2])).shape
        (torch.Size([2, 3]), torch.Size([]))
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 per: str = "step", pooling: str = "last", directions: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.activation = _choice("activation", activation, ACTIVATIONS)
        self.per = _choice("per", per, PER)
        self.pooling = _choice("pooling", pooling, POOLINGS)
        if directions not in (1, 2) or in_features % directions:
            raise ValueError(f"directions: expected 1, or 2 with an even in_features, got "
                             f"directions={directions!r}, in_features={in_features}")
        self.directions = directions
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    @property
    def weight(self) -> nn.Parameter:
        """<float>[out_features, in_features]"""
        return self.linear.weight

    def forward(self, h: Tensor, lengths: Tensor | Sequence[int] | None = None) -> Tensor:
        """lengths <int>[B] selects the valid steps for per="sequence" pooling. Per step, the
        logits at padded steps are meaningless: leave them out of the loss with a mask."""
        if h.dim() != 3 or h.shape[-1] != self.linear.in_features:
            raise ValueError(f"h: expected <float>[batch, time, {self.linear.in_features}], "
                             f"got shape {tuple(h.shape)}")
        if self.per == "sequence":
            h = pool(h, lengths, self.pooling, self.directions)
        return self.linear(h)

    def activate(self, logits: Tensor) -> Tensor:
        """Predictions from logits: identity, sigmoid, or softmax over the last dim."""
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        if self.activation == "softmax":
            return torch.softmax(logits, dim=-1)
        return logits

    def loss(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean loss matching the activation (table in the module docstring).

        logits: <float>[B, T, O] or <float>[B, O]
        mask: <bool>[B, T] or <bool>[B] (the logits' shape without the last dim), False entries
        are left out (e.g. ``sequence_mask(lengths, B, T)``); None uses every entry.
        """
        classes = self.activation == "softmax"
        expected = tuple(logits.shape[:-1]) if classes else tuple(logits.shape)
        if tuple(target.shape) != expected:
            raise ValueError(f"target: expected shape {expected} for logits of shape "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}")
        if classes and (target.is_floating_point() or target.dtype == torch.bool):
            raise TypeError(f"target: expected integer class ids for a softmax output, got {target.dtype}")
        if not classes and not target.is_floating_point():
            raise TypeError(f"target: expected a floating-point tensor for a {self.activation} output, "
                            f"got {target.dtype}")
        if mask is not None:
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(logits.shape[:-1]):
                raise ValueError(f"mask: expected <bool>{list(logits.shape[:-1])}, got "
                                 f"{mask.dtype} of shape {tuple(mask.shape)}")
            logits, target = logits[mask], target[mask]
        if classes:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        if self.activation == "sigmoid":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)

    def target_log_prob(self, h: Tensor, target: Tensor) -> Tensor:
        """log p(target) per step of a softmax output, <float>[B, T]: h <float>[B, T, in_features],
        target <int64>[B, T] class ids (as ``AdaptiveOutput.target_log_prob``)."""
        if self.activation != "softmax" or self.per != "step":
            raise ValueError(f"target: a log-probability per step needs activation='softmax' and per='step', "
                             f"got activation={self.activation!r}, per={self.per!r}")
        log_probs = torch.log_softmax(self(h), dim=-1)
        if tuple(target.shape) != tuple(log_probs.shape[:-1]):
            raise ValueError(f"target: expected shape {tuple(log_probs.shape[:-1])} (batch, time), "
                             f"got {tuple(target.shape)}")
        return log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def tie_to(self, embedding: nn.Embedding) -> None:
        """Share the embedding's weight as this layer's weight (Press & Wolf 2017; Inan et al. 2017).

        Needs embedding.weight of shape (out_features, in_features): vocabulary size ==
        out_features and embedding_dim == in_features.
        """
        expected = tuple(self.linear.weight.shape)
        if tuple(embedding.weight.shape) != expected:
            raise ValueError(f"embedding: expected a weight of shape {expected} (out_features, "
                             f"in_features) to tie to, got {tuple(embedding.weight.shape)}")
        self.linear.weight = embedding.weight

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, per={self.per!r}, pooling={self.pooling!r}"


def frequency_cutoffs(counts: Tensor, shares: Sequence[float] = (0.8, 0.95)) -> list[int]:
    """Adaptive-softmax cutoffs from class frequencies: the smallest id prefixes that hold each share
    of the occurrences (by default the head covers 80% of the tokens, the first tail cluster the
    next 15%, the last one the rest). counts <int>[V], in id order (a vocabulary sorted most frequent
    first). Returns strictly increasing cutoffs in [1, V - 1]; fewer than ``len(shares)`` where a
    small vocabulary makes two equal."""
    counts = torch.as_tensor(counts).double()
    if counts.dim() != 1 or counts.numel() < 2 or float(counts.sum()) <= 0:
        raise ValueError(f"counts: expected occurrences of at least 2 classes, some nonzero, got "
                         f"shape {tuple(counts.shape)} summing to {float(counts.sum()) if counts.numel() else 0}")
    share = counts.cumsum(0) / counts.sum()
    cutoffs: list[int] = []
    for s in shares:
        cut = min(max(int((share < s).sum()) + 1, 1), counts.numel() - 1)
        if not cutoffs or cut > cutoffs[-1]:
            cutoffs.append(cut)
    return cutoffs


class _TiedHead(nn.Module):
    """The adaptive softmax's head with its shortlist rows read from an embedding's first rows (the
    embedding is not a submodule: it belongs to the model, which saves and moves it) and its
    cluster rows its own: ``x [E[:shortlist] ; W_clusters]^T + b``."""

    def __init__(self, embedding: nn.Module, shortlist: int, clusters: int, bias: bool) -> None:
        super().__init__()
        d = embedding.weight.shape[1]
        self._embedding = [embedding]
        self.shortlist = shortlist
        like = {"device": embedding.weight.device, "dtype": embedding.weight.dtype}
        self.cluster_weight = nn.Parameter(torch.empty(clusters, d, **like))
        nn.init.uniform_(self.cluster_weight, -1 / d ** 0.5, 1 / d ** 0.5)
        self.bias = nn.Parameter(torch.zeros(shortlist + clusters, **like)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        weight = torch.cat([self._embedding[0].weight[: self.shortlist], self.cluster_weight])
        return F.linear(x, weight, self.bias)


class AdaptiveOutput(nn.Module):
    """Adaptive softmax over a large vocabulary (Grave et al. 2017), in place of a softmax
    ``OutputLayer`` per step: ``torch.nn.AdaptiveLogSoftmaxWithLoss`` underneath.

    The classes (a vocabulary sorted most frequent first) are cut at ``cutoffs``: the head scores the
    ids below ``cutoffs[0]`` and one entry per tail cluster; the tail clusters score their ids
    through a projection to ``in_features / div_value^k`` features. Training evaluates the head and
    only the clusters the targets fall in (``target_log_prob``); the probabilities are exact
    (head probability × cluster probability), and ``forward`` gives every class's.

    Args:
        in_features: features of the recurrent output h.
        out_features: number of classes (the vocabulary).
        cutoffs: strictly increasing ids in [1, out_features - 1] where the clusters start
            (``frequency_cutoffs`` picks them from counts).
        div_value: how much narrower each tail cluster's projection is than the one before. Default: 4.
        head_bias: whether the head has a bias. Default: True.

    Inputs:
        - **h**: ``<float>[B, T, in_features]``; **lengths** is accepted and ignored (per step).

    Outputs:
        - **log_probs**: ``<float>[B, T, out_features]``, the log-probability of every class; they
          serve as logits (their softmax is the distribution, their cross entropy the exact loss).

    ``tie_to(embedding)`` shares the embedding's first ``cutoffs[0]`` rows as the head's shortlist
    rows; the tail clusters keep their own projections.

    Examples:
        >>> import torch
        >>> from rnnkit.layers.output import AdaptiveOutput
        >>> head = AdaptiveOutput(16, 100, cutoffs=[10, 40])
        >>> h, target = torch.randn(2, 5, 16), torch.randint(0, 100, (2, 5))
        >>> head(h).exp().sum(-1).allclose(torch.ones(2, 5))
        True
        >>> head.target_log_prob(h, target).shape
        torch.Size([2, 5])
    """

    activation, per = "softmax", "step"

    def __init__(self, in_features: int, out_features: int, cutoffs: Sequence[int], div_value: float = 4.0,
                 head_bias: bool = True) -> None:
        super().__init__()
        cutoffs = list(cutoffs)
        if not cutoffs or any(not isinstance(c, int) or isinstance(c, bool) for c in cutoffs) or \
                cutoffs != sorted(set(cutoffs)) or cutoffs[0] < 1 or cutoffs[-1] > out_features - 1:
            raise ValueError(f"cutoffs: expected strictly increasing integers in [1, {out_features - 1}] "
                             f"(out_features - 1), got {cutoffs!r}")
        if not div_value > 0:
            raise ValueError(f"div_value: expected a number > 0, got {div_value!r}")
        if in_features // div_value ** len(cutoffs) < 1:  # torch would build a 0-feature cluster, all its ids tied
            raise ValueError(f"div_value: the last tail cluster's projection would have no features "
                             f"({in_features} in_features // {div_value}^{len(cutoffs)} clusters = 0); use a smaller "
                             f"div_value, fewer cutoffs or more in_features")
        self.cutoffs, self.div_value = cutoffs, float(div_value)
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(in_features, out_features, cutoffs, div_value, head_bias)

    @property
    def in_features(self) -> int:
        return self.adaptive.in_features

    def _check(self, h: Tensor) -> None:
        if h.dim() != 3 or h.shape[-1] != self.in_features:
            raise ValueError(f"h: expected <float>[batch, time, {self.in_features}], got shape {tuple(h.shape)}")

    def forward(self, h: Tensor, lengths: Tensor | Sequence[int] | None = None) -> Tensor:
        """Every class's log-probability, <float>[B, T, out_features] (lengths: unused, per step)."""
        self._check(h)
        return self.adaptive.log_prob(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:2], -1)

    def target_log_prob(self, h: Tensor, target: Tensor) -> Tensor:
        """log p(target) per step, <float>[B, T], computing only the clusters the targets fall in.
        target: <int64>[B, T] class ids."""
        self._check(h)
        if tuple(target.shape) != tuple(h.shape[:2]):
            raise ValueError(f"target: expected shape {tuple(h.shape[:2])} (batch, time), got {tuple(target.shape)}")
        out = self.adaptive(h.reshape(-1, h.shape[-1]), target.reshape(-1)).output
        if torch.is_grad_enabled():  # a cluster no target fell in still gets its (zero) gradient, as
            # DistributedDataParallel expects of every parameter at every step
            out = out + sum(p.reshape(-1)[0] for p in self.adaptive.tail.parameters()) * 0.0  # one element read
        return out.reshape(target.shape)

    def activate(self, logits: Tensor) -> Tensor:
        """Probabilities from forward()'s log-probabilities."""
        return torch.softmax(logits, dim=-1)

    loss = OutputLayer.loss  # cross entropy of the log-probabilities: exactly -log p(target)

    def tie_to(self, embedding: nn.Module) -> None:
        """Read the head's shortlist rows (ids below ``cutoffs[0]``) from the embedding's first rows.
        Needs an embedding of ``out_features`` rows of ``in_features``."""
        expected = (self.adaptive.n_classes, self.in_features)
        if tuple(embedding.weight.shape) != expected:
            raise ValueError(f"embedding: expected a weight of shape {expected} (out_features, in_features) "
                             f"to tie to, got {tuple(embedding.weight.shape)}")
        head = self.adaptive.head
        self.adaptive.head = _TiedHead(embedding, self.cutoffs[0], self.adaptive.n_clusters, head.bias is not None)

    def extra_repr(self) -> str:
        return f"cutoffs={self.cutoffs}, div_value={self.div_value}"


# a SequenceModel with an adaptive head saved whole loads with torch.load(..., weights_only=True)
torch.serialization.add_safe_globals([AdaptiveOutput, _TiedHead])
