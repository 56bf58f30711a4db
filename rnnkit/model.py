"""SequenceModel: input → [embedding] → recurrent stack → output head, batch_first throughout.

    x <int64>[B, T] ids ─► Embedding ─► embedding dropout ─► dropout ─┐
    x <float>[B, T, I] ───────────────────────────────────────────────┴► recurrent stack (dropout
        between layers) ─► dropout ─► OutputLayer ─► logits <float>[B, T, O] per step, or <float>[B, O]

The dropout is plain (``dropout``: a new mask per element, on every non-recurrent connection as
in Zaremba et al. 2014) or variational (``variational_dropout``: one mask per sequence, Gal &
Ghahramani 2016, AWD-LSTM). Continuous inputs are raw data and are not dropped. With variational
dropout the stack is a list of single-layer rnnkit layers with locked dropout between them;
otherwise one multi-layer rnnkit layer (faster), which applies the plain dropout between its
layers itself. Either way the recurrent state is in torch.nn's hx layout, ``<float>[L*D, B, H]``
(and the cell state c for LSTM), so truncated BPTT carries it across chunks with ``detach_state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from .config import Config
from .layers.dropout import EmbeddingDropout, LockedDropout
from .layers.embedding import Embedding
from .layers.output import AdaptiveOutput, OutputLayer, sequence_mask
from .layers.minimal import MinGRU, MinLSTM
from .layers.recurrent import GRU, LSTM, RNN, Hidden, LayerNormLSTM

CellName = Literal["lstm", "lstm_ln", "gru", "rnn", "rnn_relu", "mingru", "minlstm"]
"""The cell names a config's ``cell`` field takes (SequenceModel, QAModel)."""

CELLS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "lstm": (LSTM, {}), "lstm_ln": (LayerNormLSTM, {}), "gru": (GRU, {}),
    "rnn": (RNN, {"nonlinearity": "tanh"}), "rnn_relu": (RNN, {"nonlinearity": "relu"}),
    "mingru": (MinGRU, {}), "minlstm": (MinLSTM, {}),
}
"""The one registry of cell names: name → (rnnkit layer class, the options that name implies)."""
assert set(CELLS) == set(get_args(CellName)), "CELLS and CellName must name the same cells"


def recurrent_layer(cell: str, input_size: int, hidden_size: int, **options: Any) -> nn.Module:
    """A recurrent layer of the named cell, e.g. ``recurrent_layer("rnn_relu", 16, 32, batch_first=True)``.

    cell: a key of ``CELLS``; options: the layer's own keyword arguments (``num_layers``,
    ``bidirectional``, ``batch_first``, ...), added to those the name implies.
    """
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {cell!r}")
    layer_cls, implied = CELLS[cell]
    return layer_cls(input_size, hidden_size, **implied, **options)


class ModelConfig(Config):
    """Architecture of a SequenceModel."""

    vocab_size: int = Field(0, ge=0, description="number of token ids; 0 = continuous inputs, no embedding")
    input_size: int = Field(1, ge=1, description="features per step of continuous inputs (vocab_size = 0)")
    embedding_dim: int = Field(128, ge=1, description="size of the token vectors (vocab_size > 0)")
    cell: CellName = Field(
        "lstm", description=("recurrent cell: LSTM, layer-normalised LSTM, GRU, simple RNN with tanh / relu, "
                             "or the minimal cells of Feng et al. 2024 (mingru, minlstm: no recurrent weights, "
                             "trained by a parallel scan)"))
    hidden_size: int = Field(128, ge=1, description="hidden units per layer and direction")
    num_layers: int = Field(1, ge=1, description="stacked recurrent layers")
    bidirectional: bool = Field(False, description="run each layer in both directions and concatenate")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "plain dropout on the embedding output, between layers and on the stack output "
        "(Zaremba et al. 2014)"))
    variational_dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "locked dropout (one mask per sequence) on the embedding output, between layers and on "
        "the stack output; replaces `dropout`"))
    embedding_dropout: float = Field(0.0, ge=0.0, lt=1.0,
                                     description="probability of dropping a whole word's vector (AWD-LSTM)")
    output_size: int = Field(1, ge=1, description="outputs per step or sequence (classes for softmax)")
    output_activation: Literal["linear", "sigmoid", "softmax"] = Field(
        "linear", description="linear (MSE loss), sigmoid (binary cross entropy) or softmax (cross entropy)")
    output_per: Literal["step", "sequence"] = Field(
        "step", description="one output per time step, or one per sequence after pooling")
    output: Literal["full", "adaptive"] = Field("full", description=(
        "full: one linear layer onto every output; adaptive: adaptive softmax over a vocabulary sorted "
        "most frequent first (Grave et al. 2017; softmax per step only), exact probabilities at a "
        "fraction of the cost for large vocabularies"))
    adaptive_cutoffs: list[int] = Field(default_factory=list, description=(
        "output = 'adaptive': ids where the tail clusters start (the head scores the ids below the first); "
        "[] lets the language-model task choose them from the training text (80% / 95% of its tokens)"))
    adaptive_div_value: float = Field(4.0, gt=0.0, description=(
        "output = 'adaptive': each tail cluster's projection is this much narrower than the one before"))
    pooling: Literal["last", "mean", "max"] = Field(
        "last", description=("per-sequence pooling over valid steps; 'last' takes each direction's "
                             "final state"))
    tie_weights: bool = Field(False, description=(
        "share the embedding matrix with the output layer (with output = 'adaptive', the head's rows "
        "of the ids below the first cutoff); needs output_size = vocab_size and "
        "embedding_dim = hidden_size * directions"))
    init: Literal["torch", "keras", "uniform", "chrono"] = Field("torch", description=(
        "weight init: torch.nn defaults; Keras defaults (glorot/orthogonal, forget bias 1); "
        "every parameter uniform(-init_range, init_range) (Zaremba et al. 2014); or Keras with chrono "
        "gate biases for dependencies up to chrono_max_steps (Tallec & Ollivier 2018; LSTM and GRU)"))
    chrono_max_steps: int = Field(0, ge=0, description="init = 'chrono': the longest dependency to expect, in steps")
    init_range: float = Field(0.1, gt=0.0, description="half-width of the uniform init (init = 'uniform')")
    reset_after: bool = Field(True, description="GRU variant: reset gate after the recurrent matmul (torch, Keras default)")
    padding_idx: int | None = Field(None, ge=0, description="token id of padding: zero vector, no gradient")
    weight_drop: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "DropConnect on every layer's recurrent weights W_hh, one mask per forward call, in training "
        "(AWD-LSTM's weight drop; not the minimal cells, which have no W_hh)"))
    recurrent_dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "variational dropout of h_{t-1} where it enters the recurrent product, one mask per sequence "
        "(Gal & Ghahramani 2016; Keras's recurrent_dropout), in training; not the minimal cells"))
    zoneout: float | tuple[float, float] = Field(0.0, description=(
        "probability that a unit keeps its previous state at a step (Krueger et al. 2017), in [0, 1); "
        "for the LSTMs one rate for h and c or a pair [h, c]; evaluation uses the expectation; "
        "not the minimal cells"))

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @model_validator(mode="after")
    def _check_combinations(self) -> ModelConfig:
        if self.dropout and self.variational_dropout:
            raise ValueError(f"dropout, variational_dropout: set one of them, got {self.dropout} and "
                             f"{self.variational_dropout} (variational dropout replaces plain dropout)")
        if self.init == "chrono" and (self.cell not in ("lstm", "lstm_ln", "gru") or self.chrono_max_steps < 3):
            raise ValueError(f"init: 'chrono' needs a gated cell (lstm, lstm_ln, gru) and chrono_max_steps >= 3, "
                             f"got cell={self.cell!r}, chrono_max_steps={self.chrono_max_steps}")
        rates = self.zoneout if isinstance(self.zoneout, tuple) else (self.zoneout,)
        if not all(0.0 <= r < 1.0 for r in rates):
            raise ValueError(f"zoneout: expected a number in [0, 1) or a pair of them, got {self.zoneout!r}")
        if isinstance(self.zoneout, tuple) and self.cell not in ("lstm", "lstm_ln"):
            raise ValueError(f"zoneout: a pair [h, c] needs an LSTM cell (lstm, lstm_ln), got cell={self.cell!r}")
        used = [n for n in ("weight_drop", "recurrent_dropout", "zoneout") if self.regularisers().get(n)]
        if used and self.cell in ("mingru", "minlstm"):
            raise ValueError(f"{used[0]}: the minimal cells have no recurrent weights or product; got "
                             f"{used[0]}={getattr(self, used[0])!r} with cell={self.cell!r}")
        width = self.hidden_size * self.directions
        if self.tie_weights and self.embedding_dim != width:
            raise ValueError(f"tie_weights: needs embedding_dim == hidden_size * directions = {width}, "
                             f"got embedding_dim={self.embedding_dim}")
        return self

    def regularisers(self) -> dict[str, Any]:
        """The recurrent layers' regulariser arguments that are on (``weight_drop``, ``recurrent_dropout``,
        ``zoneout``), as keyword arguments of ``rnnkit.LSTM`` and the others."""
        rates = {"weight_drop": self.weight_drop, "recurrent_dropout": self.recurrent_dropout,
                 "zoneout": self.zoneout}
        return {k: v for k, v in rates.items() if v != 0.0 and v != (0.0, 0.0)}

    def check_vocabulary(self) -> None:
        """The checks that involve vocab_size, which a task may fill in (from its corpus) after
        the config is read; SequenceModel runs them when it is built."""
        if not self.vocab_size:
            used = {"embedding_dropout": self.embedding_dropout > 0, "tie_weights": self.tie_weights,
                    "padding_idx": self.padding_idx is not None}
            for name in (name for name, on in used.items() if on):
                raise ValueError(f"{name}: needs token inputs (vocab_size > 0), "
                                 f"got {name}={getattr(self, name)!r} with vocab_size=0")
        if self.padding_idx is not None and self.padding_idx >= self.vocab_size:
            raise ValueError(f"padding_idx: expected a token id below vocab_size={self.vocab_size}, "
                             f"got {self.padding_idx}")
        if self.tie_weights and self.output_size != self.vocab_size:
            raise ValueError(f"tie_weights: needs output_size == vocab_size = {self.vocab_size}, "
                             f"got output_size={self.output_size}")
        if self.output == "adaptive":
            if self.output_activation != "softmax" or self.output_per != "step":
                raise ValueError(f"output: 'adaptive' needs output_activation='softmax' and output_per='step', "
                                 f"got {self.output_activation!r} and {self.output_per!r}")
            if not self.adaptive_cutoffs:
                raise ValueError("adaptive_cutoffs: output = 'adaptive' needs cutoffs, e.g. [2000, 10000] "
                                 "(the language-model task fills them in from token frequencies), got []")
            cuts = self.adaptive_cutoffs
            if cuts != sorted(set(cuts)) or cuts[0] < 1 or cuts[-1] > self.output_size - 1:
                raise ValueError(f"adaptive_cutoffs: expected strictly increasing ids in [1, {self.output_size - 1}] "
                                 f"(output_size - 1), got {cuts}")


def detach_state(state: Hidden | None) -> Hidden | None:
    """The state cut from its autograd history (``repackage_hidden``): carry it to the next
    truncated-BPTT chunk without backpropagating into the previous one."""
    if state is None or isinstance(state, Tensor):
        return None if state is None else state.detach()
    return tuple(s.detach() for s in state)


class SequenceModel(nn.Module):
    """Input → [embedding] → recurrent stack → output layer, configured by a ``ModelConfig``;
    batch first throughout. The network every task trains (module docstring for the dropout).

    Args:
        config: the architecture; ``SequenceModel.from_config`` also takes a plain dict of its fields.

    Inputs:
        - **x**: ``<int64>[B, T]`` token ids (``vocab_size > 0``) or ``<float>[B, T, input_size]``.
        - **lengths** (keyword): ``<int>[B]`` valid steps of each padded sequence, or None.
        - **state** (keyword): ``<float>[L·D, B, H]`` for RNN and GRU, ``(h, c)`` for the LSTMs, or None
          for zeros.

    Outputs:
        - **logits**: ``<float>[B, T, output_size]`` (``output_per="step"``) or ``<float>[B, output_size]``
          (``"sequence"``), before the output activation (``predict`` applies it).
        - **state**: the final state in the same layout, each sequence's at its own last valid step.

    Raises:
        TypeError: a config that is not a ModelConfig (use ``from_config`` for a dict).
        ValueError: inconsistent settings (e.g. ``tie_weights`` with mismatched sizes), naming them;
            an input of the wrong shape or dtype.

    Examples:
        >>> import torch, rnnkit
        >>> lm = rnnkit.SequenceModel.from_config({"cell": "lstm", "vocab_size": 100, "embedding_dim": 16,
        ...                                        "hidden_size": 32, "num_layers": 2, "output_size": 100,
        ...                                        "output_activation": "softmax"})
        >>> ids = torch.randint(0, 100, (4, 12))
        >>> logits, state = lm(ids)
        >>> logits.shape, state[0].shape
        (torch.Size([4, 12, 100]), torch.Size([2, 4, 32]))
        >>> loss = lm.loss(logits[:, :-1], ids[:, 1:])       # next-token cross entropy
        >>> logits, state = lm(ids, state=lm.detach_state(state))   # truncated BPTT: carry, detach
    """

    detach_state = staticmethod(detach_state)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a ModelConfig (or use SequenceModel.from_config for a "
                            f"dict), got {type(config).__name__}")
        config.check_vocabulary()
        self.config = config
        cfg, directions = config, config.directions
        self.embedding = Embedding(cfg.vocab_size, cfg.embedding_dim, cfg.padding_idx) if cfg.vocab_size else None
        self.embedding_dropout = EmbeddingDropout(cfg.embedding_dropout)
        options = {"bidirectional": cfg.bidirectional, "batch_first": True,
                   "init": "keras" if cfg.init in ("keras", "chrono") else "torch"}
        if cfg.cell == "gru":
            options["reset_after"] = cfg.reset_after
        options.update(cfg.regularisers())
        features = cfg.embedding_dim if cfg.vocab_size else cfg.input_size
        if cfg.variational_dropout:
            width = cfg.hidden_size * directions
            self.stack = nn.ModuleList(recurrent_layer(cfg.cell, features if i == 0 else width, cfg.hidden_size,
                                                       num_layers=1, **options) for i in range(cfg.num_layers))
            self.drop: nn.Module = LockedDropout(cfg.variational_dropout)
        else:
            between = cfg.dropout if cfg.num_layers > 1 else 0.0  # the model's own dropout does the rest
            self.stack = nn.ModuleList([recurrent_layer(cfg.cell, features, cfg.hidden_size, num_layers=cfg.num_layers,
                                                        dropout=between, **options)])
            self.drop = nn.Dropout(cfg.dropout)
        if cfg.output == "adaptive":
            self.output: OutputLayer | AdaptiveOutput = AdaptiveOutput(
                cfg.hidden_size * directions, cfg.output_size, cfg.adaptive_cutoffs, cfg.adaptive_div_value)
        else:
            self.output = OutputLayer(cfg.hidden_size * directions, cfg.output_size, cfg.output_activation,
                                      cfg.output_per, cfg.pooling, directions)
        if cfg.tie_weights:
            self.output.tie_to(self.embedding)
        self._init_weights()

    @classmethod
    def from_config(cls, config: ModelConfig | dict[str, Any]) -> SequenceModel:
        """Build from a ModelConfig or a plain dict of its fields (e.g. a checkpoint's config.json)."""
        return cls(config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config, "config"))

    def _init_weights(self) -> None:
        """Embedding and output per ``config.init`` (the recurrent layers init themselves)."""
        cfg = self.config
        with torch.no_grad():
            if cfg.init == "uniform":  # every weight, but not the layer-norm gains and shifts
                for name, p in self.named_parameters():
                    if ".layer_norm_l" not in name:
                        p.uniform_(-cfg.init_range, cfg.init_range)
            elif cfg.init in ("keras", "chrono"):  # Dense: glorot_uniform, zero bias; Embedding: uniform(±0.05)
                if cfg.init == "chrono":
                    for layer in self.stack:
                        layer.chrono_init_(cfg.chrono_max_steps)
                if isinstance(self.output, OutputLayer):  # an adaptive head keeps torch's init
                    nn.init.xavier_uniform_(self.output.weight)
                    if self.output.linear.bias is not None:
                        self.output.linear.bias.zero_()
                if self.embedding is not None:
                    self.embedding.weight.uniform_(-0.05, 0.05)
            if self.embedding is not None and self.embedding.padding_idx is not None:
                self.embedding.weight[self.embedding.padding_idx].zero_()

    # ------------------------------------------------------------------------------------ state
    def init_state(self, batch_size: int) -> Hidden:
        """Zero state for ``batch_size`` sequences, on the model's device and dtype."""
        rows = self.config.num_layers * self.config.directions
        p = next(self.output.parameters())
        sizes = self.stack[0].spec.state_sizes
        zeros = tuple(p.new_zeros(rows, batch_size, n) for n in sizes)
        return zeros if len(zeros) == 2 else zeros[0]

    def _split_state(self, state: Hidden | None, batch: int) -> list[Hidden | None]:
        """hx for the whole stack → one hx per module of ``self.stack``."""
        if state is None:
            return [None] * len(self.stack)
        lstm = len(self.stack[0].spec.state_sizes) == 2
        if lstm and not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise TypeError(f"state: expected a tuple (h, c) for an LSTM, got {type(state).__name__}")
        if not lstm and not isinstance(state, Tensor):
            raise TypeError(f"state: expected a tensor h for {self.config.cell}, got {type(state).__name__}")
        parts = tuple(state) if lstm else (state,)
        rows = self.config.num_layers * self.config.directions
        for part in parts:
            if not isinstance(part, Tensor) or part.dim() != 3 or tuple(part.shape[:2]) != (rows, batch):
                got = tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__
                raise ValueError(f"state: expected tensors of shape ({rows}, {batch}, size) "
                                 f"(num_layers*directions, batch, size), got {got}")
        n = rows // len(self.stack)
        chunks = [tuple(part[i * n:(i + 1) * n] for part in parts) for i in range(len(self.stack))]
        return [chunk if lstm else chunk[0] for chunk in chunks]

    @staticmethod
    def _merge_states(states: list[Hidden]) -> Hidden:
        if isinstance(states[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*states))
        return torch.cat(states)

    # ---------------------------------------------------------------------------------- forward
    def _inputs(self, x: Tensor) -> Tensor:
        """x → <float>[B, T, features] for the stack: ids are embedded, then dropped out;
        continuous inputs are raw data and pass unchanged."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if self.embedding is None:
            if not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != self.config.input_size:
                raise ValueError(f"x: expected <float>[batch, time, {self.config.input_size}] "
                                 f"(input_size), got {x.dtype} of shape {tuple(x.shape)}")
            return x
        if x.dim() != 2:
            raise ValueError(f"x: expected token ids <int64>[batch, time], got shape {tuple(x.shape)}")
        return self.drop(self.embedding_dropout(x, self.embedding(x)))

    def forward(self, x: Tensor, *, lengths: Tensor | Sequence[int] | None = None,
                state: Hidden | None = None, target: Tensor | None = None) -> tuple[Tensor, Hidden]:
        """Logits and the final state (shapes in the class docstring). With ``lengths``, the state
        is each sequence's state at its own last valid step. With ``target`` (<int64>[B, T] class
        ids; a softmax per step), log p(target) <float>[B, T] instead of the logits: what training
        and scoring need, and for ``output = "adaptive"`` far cheaper than every class's."""
        h = self._inputs(x)
        finals = []
        for i, (layer, layer_state) in enumerate(zip(self.stack, self._split_state(state, h.shape[0]))):
            if i:
                h = self.drop(h)
            h, final = layer(h, layer_state, lengths=lengths)
            finals.append(final)
        if target is not None:
            return self.output.target_log_prob(self.drop(h), target), self._merge_states(finals)
        return self.output(self.drop(h), lengths), self._merge_states(finals)

    def loss(self, logits: Tensor, target: Tensor, lengths: Tensor | Sequence[int] | None = None) -> Tensor:
        """The output layer's loss; per step, ``lengths`` leaves padded steps out.

        target: <float> like logits (linear/sigmoid) or <int> class ids (softmax), see OutputLayer.
        """
        mask = None
        if lengths is not None and self.config.output_per == "step":
            mask = sequence_mask(lengths, logits.shape[0], logits.shape[1], logits.device)
        return self.output.loss(logits, target, mask)

    def predict(self, x: Tensor, lengths: Tensor | Sequence[int] | None = None) -> Tensor:
        """Activated outputs (probabilities for sigmoid/softmax) in eval mode, without gradients."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                logits, _ = self(x, lengths=lengths)
        finally:
            self.train(was_training)
        return self.output.activate(logits)


class Ensemble(nn.Module):
    """``size`` SequenceModels of one configuration, each from its own initial weights, run on the same
    input: a deep ensemble (Lakshminarayanan et al. 2017). The task that owns it combines the members'
    outputs (e.g. the forecaster averages their forecasts).

    Args:
        config: the members' ModelConfig.
        size: how many members (at least 2).

    Shape:
        x as for SequenceModel; returns the members' logits stacked on a new first dimension,
        <float>[size, B, T, O] (or [size, B, O]), and the list of their final states.

    Example::

        >>> net = Ensemble(ModelConfig(input_size=3, output_size=2, vocab_size=0, hidden_size=8), size=4)
        >>> logits, states = net(torch.randn(5, 7, 3))
        >>> logits.shape, len(states)
        (torch.Size([4, 5, 7, 2]), 4)
    """

    def __init__(self, config: ModelConfig, size: int) -> None:
        super().__init__()
        if size < 2:
            raise ValueError(f"size: an ensemble needs at least 2 members, got {size}; use a SequenceModel")
        self.config = config
        self.members = nn.ModuleList(SequenceModel(config) for _ in range(size))

    def forward(self, x: Tensor, *, state: Sequence[Hidden | None] | None = None, per_member: bool = False,
                **kwargs: Any) -> tuple[Tensor, list[Hidden]]:
        """Each member on ``x`` (with its own entry of ``state``), or with ``per_member`` on its own input
        ``x[k]`` (x: the members' inputs stacked, <float>[size, B, T, I]); keywords go to every member."""
        states = [None] * len(self.members) if state is None else state
        inputs = x if per_member else [x] * len(self.members)
        if per_member and len(x) != len(self.members):
            raise ValueError(f"x: expected the {len(self.members)} members' inputs stacked on the first dimension, "
                             f"got shape {tuple(x.shape)}")
        outputs = [member(xk, state=s, **kwargs) for member, xk, s in zip(self.members, inputs, states, strict=True)]
        return torch.stack([logits for logits, _ in outputs]), [final for _, final in outputs]


# torch.load(..., weights_only=True) of a whole saved SequenceModel: its class and the config it holds
# (the layers register theirs in rnnkit.layers).
torch.serialization.add_safe_globals([SequenceModel, ModelConfig])
