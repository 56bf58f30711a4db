"""torch.nn-compatible recurrent layers: ``RNN``, ``LSTM`` and ``GRU``.

Same constructor, call signature, return values, parameter names and shapes as torch.nn, so
``load_state_dict`` works both ways. Beyond torch.nn:

- ``lengths=`` for padded batches: outputs past each sequence's end are zero, ``h_n`` is the state
  at each sequence's own last valid step, and the reverse direction starts there. A
  ``PackedSequence`` input is accepted as in torch.nn.
- ``step(x_t, state) -> (y_t, state)`` for streaming one time step at a time.
- ``init="keras"``: glorot-uniform input weights, orthogonal recurrent weights, zero biases and an
  LSTM forget-gate bias of 1 (Keras defaults, ``unit_forget_bias=True``), beside torch.nn's
  uniform(±1/√H).
- ``GRU(reset_after=False)``: the reset gate applied before the recurrent matmul (Cho et al. 2014).
- ``backend=``: which sequence kernel runs the layer (``"auto"`` picks; see ``rnnkit.kernels``).

Shapes (``batch_first=False``; swap the first two for ``batch_first=True``):
input ``<float>[T, B, I]`` or unbatched ``<float>[T, I]``;  output ``<float>[T, B, D*P]``;
h_0/h_n ``<float>[L*D, B, P]``;  c_0/c_n (LSTM) ``<float>[L*D, B, H]``.
L layers, D = 2 if bidirectional else 1, H hidden size, P = proj_size or H.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import kernels
from ..cells import CellSpec, Noise, State, zoneout
from ..kernels import DirectionWeights
from ..kernels.base import check_out

Hidden = Tensor | tuple[Tensor, Tensor]


def _shape(t: Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, Tensor) else tuple(t)


def _rate(name: str, value) -> float:
    """A regulariser's rate, checked: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1) (the probability of dropping, or of keeping the "
                         f"old state for zoneout), got {value!r}")
    return float(value)


def _zone_rates(zoneout, lstm: bool) -> tuple[float, float]:
    """zoneout=p (h and, for the LSTMs, c) or (p_h, p_c) (the LSTMs only) → (p_h, p_c), checked."""
    if isinstance(zoneout, (tuple, list)):
        if not lstm or len(zoneout) != 2:
            expected = "a pair (h rate, c rate)" if lstm else "one number (the cell has no c state)"
            raise ValueError(f"zoneout: expected a number in [0, 1) or {expected}, got {zoneout!r}")
        return _rate("zoneout", zoneout[0]), _rate("zoneout", zoneout[1])
    p = _rate("zoneout", zoneout)
    return p, (p if lstm else 0.0)


class RecurrentBase(nn.Module):
    """Shared machinery of RNN, LSTM and GRU: parameters, validation, the layer loop, step mode."""

    mode: str = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, nonlinearity: str = "tanh", reset_after: bool = True,
                 device=None, dtype=None, *, init: str = "torch", backend: str = "auto",
                 layer_norm: bool = False, weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout: float | tuple[float, float] = 0.0) -> None:
        super().__init__()
        for name, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                                 ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout <= 1.0):
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:  # as torch.nn: it only acts between layers
            warnings.warn(f"dropout={dropout} with num_layers=1 has no effect: dropout applies between stacked "
                          "layers (after every layer but the last)", stacklevel=3)
        if proj_size and self.mode != "LSTM":
            raise ValueError(f"proj_size: only LSTM supports a projection, got proj_size={proj_size} for {self.mode}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size: expected less than hidden_size={hidden_size}, got {proj_size}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        if init not in ("torch", "keras"):
            raise ValueError(f"init: expected 'torch' or 'keras', got {init!r}")
        kernels.check_backend(backend)
        self.weight_drop = _rate("weight_drop", weight_drop)
        self.recurrent_dropout = _rate("recurrent_dropout", recurrent_dropout)
        self.zoneout = zoneout
        self._zone = _zone_rates(zoneout, self.mode == "LSTM")
        self._unstreamed: tuple | None = None  # the last whole-sequence call no backend streamed (``_stream``)
        mode = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}[nonlinearity] if self.mode == "RNN" else self.mode
        if layer_norm and (self.mode != "LSTM" or proj_size):
            raise ValueError("layer_norm: only an LSTM without projection has a layer-normalised cell")
        self.spec = CellSpec(mode, hidden_size, proj_size, reset_after, layer_norm)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size, self.nonlinearity = bidirectional, proj_size, nonlinearity
        self.reset_after, self.init, self.backend = reset_after, init, backend
        self._layer_hooks: OrderedDict[int, object] = OrderedDict()  # weak-referenceable, as torch hooks need

        factory = {"device": device, "dtype": dtype}
        gh, out = self.spec.gates * hidden_size, self.spec.output_size
        self._weight_names: list[list[DirectionWeights]] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else out * self.num_directions
            names_per_direction = []
            for suffix in ("", "_reverse")[: self.num_directions]:
                names = DirectionWeights(f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}",
                                         f"bias_ih_l{layer}{suffix}" if bias else None,
                                         f"bias_hh_l{layer}{suffix}" if bias else None,
                                         f"weight_hr_l{layer}{suffix}" if proj_size else None,
                                         f"layer_norm_l{layer}{suffix}" if layer_norm else None)
                shapes = ((gh, layer_in), (gh, out), (gh,), (gh,), (proj_size, hidden_size), (10 * hidden_size,))
                for name, shape in zip(names, shapes):
                    if name is not None:
                        self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                names_per_direction.append(names)
            self._weight_names.append(names_per_direction)
        self.reset_parameters()

    # ----------------------------------------------------------------------------------- weights
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def direction_weights(self, layer: int, direction: int) -> DirectionWeights:
        """The parameters of one direction (0 forward, 1 reverse) of one layer."""
        names, params = self._weight_names[layer][direction], self._parameters
        # the registered parameter itself where there is one (cheaper than Module.__getattr__); else
        # the attribute, e.g. a weight computed by torch.nn.utils.parametrize
        return DirectionWeights(*(None if n is None else params[n] if n in params else getattr(self, n) for n in names))

    def _param_dtype(self) -> torch.dtype:
        """The parameters' dtype (the registered first weight's, else the attribute's: parametrize)."""
        w = self._parameters.get("weight_ih_l0")
        return (w if w is not None else self.weight_ih_l0).dtype

    def _all_direction_weights(self) -> list[DirectionWeights]:
        """Every layer's and direction's weights, layer by layer, forward before reverse."""
        return [self.direction_weights(layer, d) for layer in range(self.num_layers)
                for d in range(self.num_directions)]

    def reset_parameters(self) -> None:
        """torch.nn's uniform(±1/√H) for every weight, or Keras's defaults with ``init="keras"``."""
        h = self.hidden_size
        directions = self._all_direction_weights()
        with torch.no_grad():
            for w in directions:
                if w.ln is not None:  # gains 1, shift 0
                    w.ln.fill_(1.0)
                    w.ln[9 * h:] = 0.0
        if self.init == "torch":
            bound = 1.0 / math.sqrt(self.hidden_size)
            for w in directions:
                for p in w[:5]:
                    if p is not None:
                        nn.init.uniform_(p, -bound, bound)
            return
        with torch.no_grad():
            for w in directions:
                nn.init.xavier_uniform_(w.w_ih)  # glorot_uniform; symmetric in fan_in/fan_out
                nn.init.orthogonal_(w.w_hh)
                if w.w_hr is not None:
                    nn.init.xavier_uniform_(w.w_hr)
                for b in (w.b_ih, w.b_hh):
                    if b is not None:
                        b.zero_()
                if self.spec.mode == "LSTM" and w.b_ih is not None:
                    w.b_ih[h: 2 * h] = 1.0  # unit_forget_bias

    def chrono_init_(self, max_steps: int, generator: torch.Generator | None = None) -> RecurrentBase:
        """Chrono initialisation of the gate biases (Tallec & Ollivier 2018), for dependencies of up
        to ``max_steps`` steps: per unit u ~ U[1, max_steps - 1]; an LSTM's forget-gate bias is
        log(u) and its input-gate bias -log(u); a GRU's update-gate bias is log(u) (z weighs the
        old state). A unit then keeps its memory for ~u steps at the start of training, instead of
        the ~1-3 steps of a zero or unit bias. The gate's bias_hh part is zeroed. Returns self."""
        if self.spec.mode not in ("LSTM", "GRU"):
            raise ValueError(f"chrono_init_: needs a gated cell (LSTM or GRU), got {self.spec.mode}")
        if not self.bias:
            raise ValueError("chrono_init_: the layer has no biases (bias=False)")
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 3:
            raise ValueError(f"max_steps: expected an integer >= 3 (the longest dependency, in steps), "
                             f"got {max_steps!r}")
        h = self.hidden_size
        with torch.no_grad():
            for w in self._all_direction_weights():
                u = torch.empty(h, dtype=torch.float64).uniform_(1.0, max_steps - 1.0, generator=generator)
                w.b_ih[h:2 * h] = u.log()
                w.b_hh[h:2 * h] = 0.0
                if self.spec.mode == "LSTM":
                    w.b_ih[:h] = -u.log()
                    w.b_hh[:h] = 0.0
        return self

    def register_layer_hook(self, hook) -> torch.utils.hooks.RemovableHandle:
        """Call ``hook(layer_index, output)`` after each layer of forward(), output <float>[T, B, D*P]
        (time-major), e.g. to record activations. Its gradient is only the direct part of ∂loss/∂h_t
        (the recurrence does not flow through it); ``rnnkit.diagnostics.hidden_gradient_norms``
        measures the full gradient through time."""
        handle = torch.utils.hooks.RemovableHandle(self._layer_hooks)
        self._layer_hooks[handle.id] = hook
        return handle

    def flatten_parameters(self) -> None:
        """No-op, for drop-in compatibility with torch.nn (which compacts cuDNN weights here)."""

    # -------------------------------------------------------------------------------- validation
    def _check_input(self, x: Tensor, name: str = "input") -> None:
        """Validate forward()'s input, or step()'s x_t (name "x_t": 2 dims (batch, features) only)."""
        if not isinstance(x, Tensor):
            also = " or PackedSequence" if name == "input" else ""
            raise TypeError(f"{name}: expected a torch.Tensor{also}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype} "
                            "(token ids go through an embedding layer first)")
        dtype = self._param_dtype()
        if x.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the layer's parameters), got {x.dtype}")
        layout = "(batch, time, features)" if self.batch_first else "(time, batch, features)"
        if name != "input" and x.dim() != 2:
            raise ValueError(f"{name}: expected 2 dims (batch, features), got shape {_shape(x)}")
        if x.dim() not in (2, 3):
            raise ValueError(f"{name}: expected 3 dims {layout} or 2 dims (time, features) for one "
                             f"unbatched sequence, got shape {_shape(x)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected {self.input_size} features (input_size) in the last dim, "
                             f"got shape {_shape(x)}")

    def _check_lengths(self, lengths, batch: int, time: int, device: torch.device) -> Tensor:
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"lengths: expected a 1-D integer tensor or sequence of {batch} lengths, got "
                            f"{type(lengths).__name__} ({err})") from None
        if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.dim() != 1:
            raise TypeError(f"lengths: expected a 1-D integer tensor of {batch} lengths, "
                            f"got {lengths.dtype} of shape {_shape(lengths)}")
        if lengths.numel() != batch:
            raise ValueError(f"lengths: expected {batch} entries (one per sequence in the batch), "
                             f"got {lengths.numel()}")
        if not batch or not kernels.eager():  # recorded (export): no values to check
            return lengths.to(device=device, dtype=torch.long)
        if int(lengths.min()) < 1:
            raise ValueError(f"lengths: expected every length >= 1, got {int(lengths.min())}")
        if int(lengths.max()) > time:
            raise ValueError(f"lengths: expected every length <= {time} (the input's time steps), "
                             f"got {int(lengths.max())}")
        return lengths.to(device=device, dtype=torch.long)

    def _initial_states(self, hx: Hidden | None, batch: int, x: Tensor) -> list[list[State]]:
        """hx in torch.nn's layout → ``states[layer][direction]``, a tuple of <float>[B, *]."""
        rows = self.num_layers * self.num_directions
        if hx is None and rows == 1:  # the usual case: zeros, not a view of a block of them
            return [[tuple(x.new_zeros(batch, n) for n in self.spec.state_sizes)]]
        if hx is None:
            parts = [x.new_zeros(rows, batch, n) for n in self.spec.state_sizes]
        else:
            parts = self._check_hx(hx, batch, x)
        parts = [p.unbind(0) for p in parts]  # views of every row in one op, not a select per row
        return [[tuple(p[layer * self.num_directions + d] for p in parts)
                 for d in range(self.num_directions)] for layer in range(self.num_layers)]

    def _check_hx(self, hx: Hidden, batch: int, x: Tensor) -> list[Tensor]:
        """Validate hx (h_0, or (h_0, c_0) for LSTM) against the input x; returns its tensors."""
        rows = self.num_layers * self.num_directions
        if self.spec.mode == "LSTM":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                got = f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
                raise TypeError(f"hx: expected a tuple (h_0, c_0) for LSTM, got {got}")
            parts = list(hx)
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"hx: expected a tensor h_0, got {type(hx).__name__}")
            parts = [hx]
        for name, part, n in zip(("h_0", "c_0"), parts, self.spec.state_sizes):
            if not isinstance(part, Tensor):
                raise TypeError(f"{name}: expected a tensor, got {type(part).__name__}")
            if part.dtype != x.dtype:
                raise TypeError(f"{name}: expected dtype {x.dtype} (as the input), got {part.dtype}")
            if tuple(part.shape) != (rows, batch, n):
                raise ValueError(f"{name}: expected shape {(rows, batch, n)} "
                                 f"(num_layers*num_directions, batch, {n}), got {_shape(part)}")
        return parts

    def _unbatched_hx(self, hx: Hidden) -> Hidden:
        """hx for one unbatched sequence (h_0 <float>[L*D, P], and c_0 <float>[L*D, H] for LSTM), with
        the batch dim added; each part's shape checked here, so that an error shows the shape given
        (the rest, with the batched input's)."""
        parts = list(hx) if isinstance(hx, (tuple, list)) else [hx]
        rows = self.num_layers * self.num_directions
        for name, part, n in zip(("h_0", "c_0"), parts, self.spec.state_sizes):
            if isinstance(part, Tensor) and tuple(part.shape) != (rows, n):
                raise ValueError(f"{name}: expected shape {(rows, n)} (num_layers*num_directions, {n}) for an "
                                 f"unbatched (2-D) input, got {_shape(part)}")
        batched = [p.unsqueeze(1) if isinstance(p, Tensor) else p for p in parts]
        return tuple(batched) if isinstance(hx, (tuple, list)) else batched[0]

    def _final_hidden(self, finals: list[State]) -> Hidden:
        if len(finals) == 1:  # one layer and direction: its states, each a new dim 0 (no stack's copy)
            stacked = tuple(s.unsqueeze(0) for s in finals[0])
        else:
            stacked = tuple(torch.stack([s[i] for s in finals]) for i in range(len(finals[0])))
        return stacked if self.spec.mode == "LSTM" else stacked[0]

    # ----------------------------------------------------------------------------------- forward
    def forward(self, input: Tensor | PackedSequence, hx: Hidden | None = None,
                lengths: Tensor | Sequence[int] | None = None) -> tuple[Tensor | PackedSequence, Hidden]:
        """Run the layer over whole sequences.

        Args:
            input: ``<float>[T, B, I]`` (``[B, T, I]`` with ``batch_first=True``), ``<float>[T, I]`` for
                one unbatched sequence, or a ``PackedSequence``.
            hx: the initial state, as torch.nn: h_0 ``<float>[L·D, B, P]`` for RNN and GRU,
                ``(h_0, c_0)`` for the LSTMs (c_0 ``<float>[L·D, B, H]``); None for zeros.
            lengths: ``<int>[B]`` valid steps of each sequence of a padded input (a ``PackedSequence``
                carries its own). Outputs past a sequence's end are zero and its final state is the
                one at its own last step; the reverse direction starts there.

        Returns:
            ``(output, h_n)`` for RNN and GRU, ``(output, (h_n, c_n))`` for the LSTMs: output
            ``<float>[T, B, D·P]`` (batch first, unbatched or packed as the input), h_n and c_n in
            hx's layout.

        Raises:
            ValueError: an input, state or ``lengths`` of the wrong shape, or lengths out of range.
            TypeError: an input that is not a floating-point tensor of the parameters' dtype.
        """
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; pass lengths=None")
            x, lengths = pad_packed_sequence(packed)  # time-major, original batch order
            self._check_input(x)
            unbatched = False
        else:
            self._check_input(input)
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            if unbatched and hx is not None:
                hx = self._unbatched_hx(hx)
        time, batch = x.shape[0], x.shape[1]
        if time == 0:
            raise ValueError(f"input: expected at least one time step, got shape {_shape(input)}")
        mask = None
        if lengths is not None:
            lengths = self._check_lengths(lengths, batch, time, x.device)
            if not kernels.eager() or (batch and int(lengths.min()) < time):  # recorded: always masked
                mask = (torch.arange(time, device=x.device)[:, None] < lengths[None, :]).unsqueeze(-1)
        fast = self._stream(x, hx) if mask is None else None  # small no-grad calls: the stack in one call
        x, hidden = fast if fast is not None else self._layer_by_layer(x, hx, mask)

        if packed is not None:
            order = packed.sorted_indices
            x_sorted, len_sorted = (x, lengths) if order is None else (x[:, order], lengths[order])
            repacked = pack_padded_sequence(x_sorted, len_sorted.cpu(), enforce_sorted=True)
            return PackedSequence(repacked.data, repacked.batch_sizes, packed.sorted_indices,
                                  packed.unsorted_indices), hidden
        if unbatched:
            hidden = tuple(h.squeeze(1) for h in hidden) if isinstance(hidden, tuple) else hidden.squeeze(1)
            return x.squeeze(1), hidden
        return (x.transpose(0, 1) if self.batch_first else x), hidden

    def _layer_by_layer(self, x: Tensor, hx: Hidden | None, mask: Tensor | None) -> tuple[Tensor, Hidden]:
        """forward() on time-major x <f>[T, B, I] (mask <bool>[T, B, 1] or None), each layer through
        the backend: the output and the final hidden state."""
        states = self._initial_states(hx, x.shape[1], x)
        finals: list[State] = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            weights = [self.direction_weights(layer, d) for d in range(self.num_directions)]
            noise = None
            if self._regularised():
                weights, noise = self._draw(weights, x)
            x, layer_finals = kernels.run_layer(self.spec, x, weights, states[layer], mask,
                                                torch.is_grad_enabled(), self.backend, noise)
            finals.extend(layer_finals)
            for hook in self._layer_hooks.values():
                hook(layer, x)
        return x, self._final_hidden(finals)

    def _regularised(self) -> bool:
        """Whether a regulariser acts in this call: weight_drop or recurrent_dropout in training mode,
        zoneout always (its evaluation rule is the expectation, not the identity)."""
        return bool(self._zone[0] or self._zone[1] or
                    (self.training and (self.weight_drop or self.recurrent_dropout)))

    def _draw(self, weights: list[DirectionWeights], x: Tensor) -> tuple[list[DirectionWeights], list[Noise] | None]:
        """One layer's regularised weights and masks, per direction, drawn from torch's generator in a
        fixed order (weight_drop, recurrent_dropout, zoneout of h, of c), so that ``torch.manual_seed``
        reproduces a call. x: the layer's time-major input <f>[T, B, I]. Returns the weights (W_hh
        times weight_drop's mask, through autograd) and the masks (``rnnkit.cells.Noise``), or None
        when only weight_drop acts."""
        T, B = x.shape[0], x.shape[1]
        zh, zc = self._zone
        out_weights, noise = [], []
        for w in weights:
            if self.training and self.weight_drop:  # a mask as F.dropout's, drawn here so its draw is ours
                keep = 1.0 - self.weight_drop
                w = w._replace(w_hh=w.w_hh * torch.empty_like(w.w_hh).bernoulli_(keep).div_(keep))
            out_weights.append(w)
            rec = z_h = z_c = None
            if self.training and self.recurrent_dropout:
                keep = 1.0 - self.recurrent_dropout
                rec = x.new_empty(B, self.spec.output_size).bernoulli_(keep).div_(keep)
            for rate, size, name in ((zh, self.spec.output_size, "h"), (zc, self.hidden_size, "c")):
                if not rate:
                    continue
                # training: 1 where the unit keeps its old value (probability rate); evaluation: the rate
                z = kernels.zoneout_mask((T, B, size), rate, x) if self.training else x.new_full((T, 1, 1), rate)
                z_h, z_c = (z, z_c) if name == "h" else (z_h, z)
            noise.append(Noise(rec, z_h, z_c))
        if all(t is None for n in noise for t in n):
            return out_weights, None
        return out_weights, noise

    def _stream(self, x: Tensor, state: Hidden | None) -> tuple[Tensor, Hidden] | None:
        """A backend's compiled step for the whole stack, one step x <f>[B, I] or steps <f>[T, B, I]:
        the output and the new state (forward's hx layout); None where none runs it (a gradient is
        needed, dropout between layers, a layer hook, a bidirectional layer, or no backend takes it)."""
        if self.bidirectional or not self._streams(x, state):
            return None
        batch = x.shape[-2]
        if x.dim() == 2:
            cached = self._step_streamer(x)
            if cached is not None:
                y, cached.last = cached.streamer.step(x, *self._state_parts(state, batch, x, cached.last))
                return y, cached.last
        # a whole-sequence call no backend streamed is not asked again while nothing it chose by changes
        # (a cheap key against ~8 µs of backend and plan lookups in front of every small layer call)
        key = (x.shape, x.dtype, x.device, state is None, self.backend, kernels.choice_key()) \
            if x.dim() == 3 and kernels.eager() else None
        if key is not None and key == self._unstreamed:
            return None
        weights = [self.direction_weights(layer, 0) for layer in range(self.num_layers)]
        fast = kernels.stream_step(self.spec, x, weights, *self._state_parts(state, batch, x), self.backend)
        if fast is None:
            if key is not None:
                self._unstreamed = key
            return None
        return fast[0], (fast[1] if fast[2] is None else (fast[1], fast[2]))

    def _state_parts(self, state: Hidden | None, batch: int, x: Tensor,
                     last: Hidden | None = None) -> tuple[Tensor | None, Tensor | None]:
        """(h, c) of a state in forward's hx layout, checked (c None but for LSTM; both None for no
        state). ``last``: the state the cached streamer's previous step returned; passed back (the
        usual streaming loop), it is the streamer's own and needs no check."""
        if state is None:
            return None, None
        if state is last:
            return tuple(state) if isinstance(state, tuple) else (state, None)
        return tuple(self._check_hx(state, batch, x) + [None])[:2]

    def step(self, x_t: Tensor, state: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """One time step for streaming; a sequence fed step by step gives forward()'s outputs and state.

        Without autograd (e.g. under ``torch.no_grad()``) one compiled call runs the whole stack.

        Args:
            x_t: ``<float>[B, I]``, the input at one step.
            state: the state in forward's hx layout (h ``<float>[L, B, P]``, and c ``<float>[L, B, H]``
                for the LSTMs); None starts from zeros.

        Returns:
            ``(y_t, state)``: the last layer's output ``<float>[B, P]`` and the new state.

        Raises:
            ValueError: a bidirectional layer (it needs the whole sequence), or an x_t or state of
                the wrong shape.

        Examples:
            >>> import torch, rnnkit
            >>> gru = rnnkit.GRU(4, 8)
            >>> state = None
            >>> for x_t in torch.randn(6, 2, 4):
            ...     y_t, state = gru.step(x_t, state)
            >>> y_t.shape, state.shape
            (torch.Size([2, 8]), torch.Size([1, 2, 8]))
        """
        if self.bidirectional:
            raise ValueError("step: a bidirectional layer needs the whole sequence; use forward()")
        self._check_input(x_t, "x_t")
        fast = self._stream(x_t, state)  # a backend's compiled step for the whole stack, when one can run it
        if fast is not None:
            return fast
        states = self._initial_states(state, x_t.shape[0], x_t)
        finals: list[State] = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x_t = nn.functional.dropout(x_t, self.dropout, training=True)
            old = states[layer][0]
            new = self.spec.cell(x_t, old, self.direction_weights(layer, 0))
            if self._zone[0] or self._zone[1]:  # zoneout's evaluation rule: one step has no sequence mask
                new = tuple(n if not p else zoneout(n.new_tensor(p), o, n) for n, o, p in zip(new, old, self._zone))
            x_t = new[0]
            finals.append(new)
        return x_t, self._final_hidden(finals)

    def _step_streamer(self, x_t: Tensor):
        """A backend's streamer for ``step()`` at x_t's batch size and dtype, kept per layer and thread
        by ``kernels.cached_streamer`` (cheaper per step than ``stream_step``, which gathers and checks
        the weights each time), or None: no backend streams this layer, or a weight is not a
        registered parameter (``torch.nn.utils.parametrize``)."""
        def make():
            names = [n for layer in range(self.num_layers) for n in self._weight_names[layer][0] if n is not None]
            if not all(n in self._parameters for n in names):
                return None
            weights = [self.direction_weights(layer, 0) for layer in range(self.num_layers)]
            return names, kernels.streamer(self.spec, weights, x_t.shape[0], None, None, x_t, self.backend)
        return kernels.cached_streamer(self, (x_t.shape[0], x_t.dtype, self.backend), self._parameters, make)

    def streamer(self, batch_size: int = 1, state: Hidden | None = None):
        """A state object for streaming inference: ``s = layer.streamer(); y_t = s(x_t)`` advances the
        state kept inside, and ``s.state`` is it in forward's hx layout. No autograd, no dropout.

        The fastest way to run one step at a time (on CPU float32/64 one compiled call per step for
        the whole stack); it falls back to ``step()`` where no backend offers one. It reads the
        parameters in place, so in-place updates are seen; after replacing a parameter (``.to()``,
        ``double()``, a new ``Parameter``) or updating a parametrized weight's original, make a new
        streamer. ``s(x_t, out=y)`` writes y_t into y (contiguous, the parameters' dtype and device)
        and returns it: no tensor allocated per call.

        Args:
            batch_size: sequences streamed at once. Default: 1.
            state: the initial state in forward's hx layout, or None for zeros.

        Returns:
            A callable ``s(x_t, out=None)``: x_t ``<float>[batch_size, I]`` → y_t
            ``<float>[batch_size, P]``; ``s.state`` the current state.

        Raises:
            ValueError: a bidirectional layer, a batch_size below 1, or a state of the wrong shape.

        Examples:
            >>> import torch, rnnkit
            >>> lstm = rnnkit.LSTM(4, 8, num_layers=2)
            >>> s = lstm.streamer(batch_size=1)
            >>> y = torch.empty(1, 8)
            >>> for x_t in torch.randn(5, 1, 4):
            ...     _ = s(x_t, out=y)
            >>> [t.shape for t in s.state]
            [torch.Size([2, 1, 8]), torch.Size([2, 1, 8])]
        """
        if self.bidirectional:
            raise ValueError("streamer: a bidirectional layer needs the whole sequence; use forward()")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if self._zone[0] or self._zone[1]:  # the compiled streamers have no zoneout
            return _StepStreamer(self, batch_size, state)
        like = self.weight_ih_l0.detach()
        parts = self._check_hx(state, batch_size, like) if state is not None else [None, None]
        weights = [self.direction_weights(layer, 0) for layer in range(self.num_layers)]
        fast = kernels.streamer(self.spec, weights, batch_size, parts[0], (parts + [None])[1], like, self.backend)
        return fast if fast is not None else _StepStreamer(self, batch_size, state)

    def _streams(self, x_t: Tensor, state: Hidden | None) -> bool:
        """Whether step() may take a backend's compiled streaming step: nothing needs a gradient
        (input, state or parameters), no dropout applies between layers and no layer hook is registered."""
        if self._layer_hooks or (self.training and self.dropout > 0 and self.num_layers > 1) or self._regularised():
            return False  # the streaming kernels run no regulariser
        if not torch.is_grad_enabled():
            return True
        parts = () if state is None else state if isinstance(state, (tuple, list)) else (state,)
        # the layer's own parameters, unless submodules hold some (parametrizations): Module.parameters()
        # would cost a small call a large part of its Python time
        params = self.parameters() if self._modules else self._parameters.values()
        tensors = (x_t, *parts, *params)
        return not any(isinstance(t, Tensor) and t.requires_grad for t in tensors)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "proj_size": 0, "init": "torch", "backend": "auto",
                    "weight_drop": 0.0, "recurrent_dropout": 0.0, "zoneout": 0.0}
        for key, default in defaults.items():
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        if self.spec.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        if self.spec.mode == "GRU" and not self.reset_after:
            s += ", reset_after=False"
        return s


class _StepStreamer:
    """The generic streamer (``RecurrentBase.streamer``): ``step()`` without autograd, state inside
    (zeros in forward's hx layout when none is given)."""

    def __init__(self, layer: RecurrentBase, batch_size: int, state: Hidden | None) -> None:
        if state is None:
            like = layer.weight_ih_l0
            zeros = [like.new_zeros(layer.num_layers, batch_size, n) for n in layer.spec.state_sizes]
            state = tuple(zeros) if len(zeros) == 2 else zeros[0]
        self.layer, self.batch_size, self._state = layer, batch_size, state

    def __call__(self, x_t: Tensor, out: Tensor | None = None) -> Tensor:
        if isinstance(x_t, Tensor) and x_t.dim() == 2 and x_t.shape[0] != self.batch_size:
            raise ValueError(f"x_t: expected a batch of {self.batch_size} (the streamer's batch_size), "
                             f"got shape {_shape(x_t)}")
        if out is not None:
            like = self.layer.weight_ih_l0
            check_out(out, (self.batch_size, self.layer.spec.output_size), like.dtype, like.device)
        with torch.no_grad():
            training = self.layer.training
            self.layer.train(False)
            try:
                y_t, self._state = self.layer.step(x_t, self._state)
            finally:
                self.layer.train(training)
            return y_t if out is None else out.copy_(y_t)

    @property
    def state(self) -> Hidden:
        """The current state in forward's hx layout, as new tensors (as the compiled streamer's)."""
        return tuple(s.clone() for s in self._state) if isinstance(self._state, tuple) else self._state.clone()


class RNN(RecurrentBase):
    """Elman RNN with tanh or ReLU, a drop-in for ``torch.nn.RNN``.

    Every layer computes, for each step t (equations in ``rnnkit.cells.rnn_step``)::

        h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)        act = tanh or relu

    where x_t is the input (the previous layer's output for layers after the first).

    Args:
        input_size: features of the input x.
        hidden_size: features of the hidden state h.
        num_layers: stacked layers, each reading the output of the one before. Default: 1.
        nonlinearity: ``"tanh"`` or ``"relu"``. Default: ``"tanh"``.
        bias: whether the layers have the biases b_ih and b_hh. Default: True.
        batch_first: if True, the input and output are ``(batch, time, features)`` instead of
            ``(time, batch, features)``; the states keep their layout. Default: False.
        dropout: probability of dropout on the output of every layer but the last (as torch.nn: it
            has no effect, and warns, with one layer). Default: 0.
        bidirectional: run every layer forward and backward and concatenate the two outputs.
            Default: False.
        device: device of the parameters. Default: None (torch's default device).
        dtype: dtype of the parameters. Default: None (torch's default dtype).
        init: ``"torch"``: every weight and bias uniform(±1/√hidden_size), as torch.nn;
            ``"keras"``: glorot-uniform input weights, orthogonal recurrent weights, zero biases.
            Default: ``"torch"``.
        backend: the sequence kernel that runs the layer: ``"auto"`` (``"fused"`` on CPU
            float32/float64, ``"torch"`` on CUDA where torch.nn has the cell, else ``"reference"``),
            ``"fused"``, ``"torch"`` or ``"reference"`` (see ``rnnkit.kernels``). Default: ``"auto"``.
        weight_drop: DropConnect on the recurrent weights W_hh (Wan et al. 2013; AWD-LSTM's WeightDrop):
            the probability of zeroing each element, one mask per forward call, in training only.
            Default: 0.
        recurrent_dropout: variational dropout of h_{t-1} where it enters the recurrent product (Gal
            & Ghahramani 2016; Keras's ``recurrent_dropout``): one mask per sequence, the same at every
            step, in training only. Default: 0.
        zoneout: the probability that a unit keeps its previous value at a step (Krueger et al. 2017):
            ``h_t = m ⊙ h_{t-1} + (1 - m) ⊙ h̃_t``; in evaluation the expectation
            ``h_t = p h_{t-1} + (1 - p) h̃_t``. Default: 0.

    Inputs:
        - **input**: ``<float>[T, B, I]``, ``<float>[B, T, I]`` with ``batch_first=True``,
          ``<float>[T, I]`` for one unbatched sequence, or a ``PackedSequence``.
        - **hx**: the initial state h_0 ``<float>[L·D, B, H]`` (``[L·D, H]`` unbatched), or None for zeros.
        - **lengths**: ``<int>[B]`` valid steps of each sequence of a padded batch, or None. Outputs
          past a sequence's end are zero, the final state is the one at its own last step, and the
          reverse direction starts there.

    Outputs:
        - **output**: ``<float>[T, B, D·H]`` (batch first with ``batch_first=True``): the last
          layer's output at every step, both directions concatenated.
        - **h_n**: ``<float>[L·D, B, H]``, the final hidden state of every layer and direction.

    Weights:
        Named as in torch.nn, so that ``load_state_dict`` works both ways. For layer k (``_reverse``
        for the backward direction): ``weight_ih_l{k}`` ``<float>[G·H, I]`` (the first layer) or
        ``[G·H, D·H]``, ``weight_hh_l{k}`` ``[G·H, H]``, ``bias_ih_l{k}`` and ``bias_hh_l{k}`` ``[G·H]``,
        with G = 1.

    Raises:
        ValueError: a size, ``dropout``, ``nonlinearity``, ``init`` or ``backend`` out of range when
            constructed; at call time an input, state or ``lengths`` of the wrong shape, naming the
            argument, the shape expected and the shape given.
        TypeError: an input that is not a floating-point tensor of the parameters' dtype, or a
            state of the wrong type.

    T is the number of steps, B the batch, I ``input_size``, H ``hidden_size``, L ``num_layers`` and
    D = 2 if ``bidirectional`` else 1. Beyond torch.nn: ``lengths=``, ``step()``, ``streamer()``,
    ``init="keras"``, ``backend=`` (module docstring).

    Examples:
        >>> import torch, rnnkit
        >>> rnn = rnnkit.RNN(10, 20, num_layers=2)
        >>> output, h_n = rnn(torch.randn(5, 3, 10), torch.zeros(2, 3, 20))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    mode = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *, init: str = "torch",
                 backend: str = "auto", weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         nonlinearity=nonlinearity, device=device, dtype=dtype, init=init, backend=backend,
                         weight_drop=weight_drop, recurrent_dropout=recurrent_dropout, zoneout=zoneout)


class LSTM(RecurrentBase):
    """Long short-term memory layer, a drop-in for ``torch.nn.LSTM``.

    Every layer computes, for each step t (equations in ``rnnkit.cells.lstm_step``)::

        i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)          input gate
        f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)          forget gate
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)       candidate cell
        o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)          output gate
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)                                    (W_hr o_t ⊙ tanh(c_t) with proj_size)

    Args:
        input_size: features of the input x.
        hidden_size: features of the cell state c (and of h without projection).
        num_layers: stacked layers, each reading the output of the one before. Default: 1.
        bias: whether the layers have the biases b_ih and b_hh. Default: True.
        batch_first: if True, the input and output are ``(batch, time, features)`` instead of
            ``(time, batch, features)``; the states keep their layout. Default: False.
        dropout: probability of dropout on the output of every layer but the last (as torch.nn: it
            has no effect, and warns, with one layer). Default: 0.
        bidirectional: run every layer forward and backward and concatenate the two outputs.
            Default: False.
        proj_size: if > 0, h_t is projected to this size by ``weight_hr_l{k}`` (Sak et al. 2014);
            must be below ``hidden_size``. Default: 0.
        device: device of the parameters. Default: None (torch's default device).
        dtype: dtype of the parameters. Default: None (torch's default dtype).
        init: ``"torch"``: every weight and bias uniform(±1/√hidden_size), as torch.nn;
            ``"keras"``: glorot-uniform input weights, orthogonal recurrent weights, zero biases and a
            forget-gate bias of 1 (Keras's ``unit_forget_bias``).
            Default: ``"torch"``.
        backend: the sequence kernel that runs the layer: ``"auto"`` (``"fused"`` on CPU
            float32/float64, ``"torch"`` on CUDA where torch.nn has the cell, else ``"reference"``),
            ``"fused"``, ``"torch"`` or ``"reference"`` (see ``rnnkit.kernels``). Default: ``"auto"``.
        weight_drop: DropConnect on the recurrent weights W_hh (Wan et al. 2013; AWD-LSTM's WeightDrop):
            the probability of zeroing each element, one mask per forward call, in training only.
            Default: 0.
        recurrent_dropout: variational dropout of h_{t-1} where it enters the recurrent product (Gal
            & Ghahramani 2016; Keras's ``recurrent_dropout``): one mask per sequence, the same at every
            step, in training only. Default: 0.
        zoneout: the probability that a unit keeps its previous value at a step (Krueger et al. 2017):
            ``h_t = m ⊙ h_{t-1} + (1 - m) ⊙ h̃_t`` and the same for c, with one rate or a pair
            ``(p_h, p_c)``; in evaluation the expectation ``h_t = p h_{t-1} + (1 - p) h̃_t``.
            Default: 0.

    Inputs:
        - **input**: ``<float>[T, B, I]``, ``<float>[B, T, I]`` with ``batch_first=True``,
          ``<float>[T, I]`` for one unbatched sequence, or a ``PackedSequence``.
        - **hx**: the initial state ``(h_0, c_0)``: h_0 ``<float>[L·D, B, P]``, c_0
          ``<float>[L·D, B, H]`` (without the batch dim for an unbatched input), or None for zeros.
        - **lengths**: ``<int>[B]`` valid steps of each sequence of a padded batch, or None. Outputs
          past a sequence's end are zero, the final state is the one at its own last step, and the
          reverse direction starts there.

    Outputs:
        - **output**: ``<float>[T, B, D·P]`` (batch first with ``batch_first=True``): the last
          layer's output at every step, both directions concatenated.
        - **h_n**: ``<float>[L·D, B, P]``, the final hidden state of every layer and direction.
        - **c_n**: ``<float>[L·D, B, H]``, the final cell state.

    Weights:
        Named as in torch.nn, so that ``load_state_dict`` works both ways. For layer k (``_reverse``
        for the backward direction): ``weight_ih_l{k}`` ``<float>[G·H, I]`` (the first layer) or
        ``[G·H, D·H]``, ``weight_hh_l{k}`` ``[G·H, H]``, ``bias_ih_l{k}`` and ``bias_hh_l{k}`` ``[G·H]``,
        with G = 4 gates in torch.nn's order (i, f, g, o); with ``proj_size``,
        ``weight_hr_l{k}`` ``[P, H]`` and ``weight_hh_l{k}`` ``[4H, P]``.

    Raises:
        ValueError: a size, ``dropout``, ``init`` or ``backend`` out of range when
            constructed; at call time an input, state or ``lengths`` of the wrong shape, naming the
            argument, the shape expected and the shape given.
        TypeError: an input that is not a floating-point tensor of the parameters' dtype, or a
            state of the wrong type.

    P is ``proj_size`` or H; the other letters as in ``rnnkit.RNN``. The equations are run by a
    backend: on CPU the fused kernels, which also stream one step at a time (``step()``,
    ``streamer()``).

    Examples:
        >>> import torch, rnnkit
        >>> lstm = rnnkit.LSTM(10, 20, num_layers=2, batch_first=True)
        >>> x = torch.randn(3, 5, 10)
        >>> output, (h_n, c_n) = lstm(x, lengths=[5, 4, 2])
        >>> output.shape, h_n.shape, c_n.shape
        (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 20]))
        >>> bool((output[2, 2:] == 0).all())     # past the third sequence's end
        True
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, init: str = "torch",
                 backend: str = "auto", weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout: float | tuple[float, float] = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size=proj_size, device=device, dtype=dtype, init=init, backend=backend,
                         weight_drop=weight_drop, recurrent_dropout=recurrent_dropout, zoneout=zoneout)


class LayerNormLSTM(RecurrentBase):
    """LSTM with layer normalisation (Ba et al. 2016) on the input and recurrent terms and on the cell.

    Every layer computes, for each step t (equations in ``rnnkit.cells.ln_lstm_step``)::

        i, f, g, o = split(LN(W_ih x_t)·γ_ih + b_ih + LN(W_hh h_{t-1})·γ_hh + b_hh)
        c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)
        h_t = σ(o) ⊙ tanh(LN(c_t)·γ_c + β_c)

    where LN normalises a vector to zero mean and unit variance. Same arguments, inputs, outputs and
    weights as ``rnnkit.LSTM`` (no ``proj_size``), plus one parameter per layer and direction,
    ``layer_norm_l{k}`` ``<float>[10H]``: ``[γ_ih (4H) | γ_hh (4H) | γ_c (H) | β_c (H)]``, initialised
    to gains 1 and shift 0. The fused CPU backend runs it forward and backward like the plain cells,
    and streams it (``step()`` without autograd, ``streamer()``) with the same compiled one-step call.
    In a model config it is ``cell = "lstm_ln"``.

    Args:
        input_size: features of the input x.
        hidden_size: features of the hidden and cell states.
        num_layers: stacked layers. Default: 1.
        bias: whether the layers have the biases b_ih and b_hh. Default: True.
        batch_first: if True, the input and output are ``(batch, time, features)`` instead of
            ``(time, batch, features)``; the states keep their layout. Default: False.
        dropout: probability of dropout on the output of every layer but the last (as torch.nn: it
            has no effect, and warns, with one layer). Default: 0.
        bidirectional: run every layer forward and backward and concatenate the two outputs.
            Default: False.
        device: device of the parameters. Default: None (torch's default device).
        dtype: dtype of the parameters. Default: None (torch's default dtype).
        init: ``"torch"``: every weight and bias uniform(±1/√hidden_size), as torch.nn;
            ``"keras"``: glorot-uniform input weights, orthogonal recurrent weights, zero biases and a
            forget-gate bias of 1.
            Default: ``"torch"``.
        backend: the sequence kernel that runs the layer: ``"auto"`` (``"fused"`` on CPU
            float32/float64, ``"torch"`` on CUDA where torch.nn has the cell, else ``"reference"``),
            ``"fused"``, ``"torch"`` or ``"reference"`` (see ``rnnkit.kernels``). Default: ``"auto"``.
        weight_drop: DropConnect on the recurrent weights W_hh (Wan et al. 2013; AWD-LSTM's WeightDrop):
            the probability of zeroing each element, one mask per forward call, in training only.
            Default: 0.
        recurrent_dropout: variational dropout of h_{t-1} where it enters the recurrent product (Gal
            & Ghahramani 2016; Keras's ``recurrent_dropout``): one mask per sequence, the same at every
            step, in training only. Default: 0.
        zoneout: the probability that a unit keeps its previous value at a step (Krueger et al. 2017):
            ``h_t = m ⊙ h_{t-1} + (1 - m) ⊙ h̃_t`` and the same for c, with one rate or a pair
            ``(p_h, p_c)``; in evaluation the expectation ``h_t = p h_{t-1} + (1 - p) h̃_t``.
            Default: 0.

    Examples:
        >>> import torch, rnnkit
        >>> lstm = rnnkit.LayerNormLSTM(10, 20)
        >>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
        >>> output.shape
        torch.Size([5, 3, 20])
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, init: str = "torch", backend: str = "auto",
                 weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout: float | tuple[float, float] = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, init=init, backend=backend, layer_norm=True,
                         weight_drop=weight_drop, recurrent_dropout=recurrent_dropout, zoneout=zoneout)


class GRU(RecurrentBase):
    """Gated recurrent unit layer, a drop-in for ``torch.nn.GRU``, in both of its variants.

    Every layer computes, for each step t (equations in ``rnnkit.cells.gru_step``)::

        r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)              reset gate
        z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)              update gate
        n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))    reset_after=True
        n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t-1}) + b_hn)    reset_after=False
        h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    ``reset_after=True`` is torch.nn's and cuDNN's GRU (Keras's default); ``reset_after=False`` is
    Cho et al. 2014's (Keras ``reset_after=False``), which torch.nn does not have.

    Args:
        input_size: features of the input x.
        hidden_size: features of the hidden state h.
        num_layers: stacked layers, each reading the output of the one before. Default: 1.
        bias: whether the layers have the biases b_ih and b_hh. Default: True.
        batch_first: if True, the input and output are ``(batch, time, features)`` instead of
            ``(time, batch, features)``; the states keep their layout. Default: False.
        dropout: probability of dropout on the output of every layer but the last (as torch.nn: it
            has no effect, and warns, with one layer). Default: 0.
        bidirectional: run every layer forward and backward and concatenate the two outputs.
            Default: False.
        device: device of the parameters. Default: None (torch's default device).
        dtype: dtype of the parameters. Default: None (torch's default dtype).
        reset_after: where the reset gate applies (above). Default: True.
        init: ``"torch"``: every weight and bias uniform(±1/√hidden_size), as torch.nn;
            ``"keras"``: glorot-uniform input weights, orthogonal recurrent weights, zero biases.
            Default: ``"torch"``.
        backend: the sequence kernel that runs the layer: ``"auto"`` (``"fused"`` on CPU
            float32/float64, ``"torch"`` on CUDA where torch.nn has the cell, else ``"reference"``),
            ``"fused"``, ``"torch"`` or ``"reference"`` (see ``rnnkit.kernels``). Default: ``"auto"``.
        weight_drop: DropConnect on the recurrent weights W_hh (Wan et al. 2013; AWD-LSTM's WeightDrop):
            the probability of zeroing each element, one mask per forward call, in training only.
            Default: 0.
        recurrent_dropout: variational dropout of h_{t-1} where it enters the recurrent product (Gal
            & Ghahramani 2016; Keras's ``recurrent_dropout``): one mask per sequence, the same at every
            step, in training only. Default: 0.
        zoneout: the probability that a unit keeps its previous value at a step (Krueger et al. 2017):
            ``h_t = m ⊙ h_{t-1} + (1 - m) ⊙ h̃_t``; in evaluation the expectation
            ``h_t = p h_{t-1} + (1 - p) h̃_t``. Default: 0.

    Inputs:
        - **input**: ``<float>[T, B, I]``, ``<float>[B, T, I]`` with ``batch_first=True``,
          ``<float>[T, I]`` for one unbatched sequence, or a ``PackedSequence``.
        - **hx**: the initial state h_0 ``<float>[L·D, B, H]`` (``[L·D, H]`` unbatched), or None for zeros.
        - **lengths**: ``<int>[B]`` valid steps of each sequence of a padded batch, or None. Outputs
          past a sequence's end are zero, the final state is the one at its own last step, and the
          reverse direction starts there.

    Outputs:
        - **output**: ``<float>[T, B, D·H]`` (batch first with ``batch_first=True``): the last
          layer's output at every step, both directions concatenated.
        - **h_n**: ``<float>[L·D, B, H]``, the final hidden state of every layer and direction.

    Weights:
        Named as in torch.nn, so that ``load_state_dict`` works both ways. For layer k (``_reverse``
        for the backward direction): ``weight_ih_l{k}`` ``<float>[G·H, I]`` (the first layer) or
        ``[G·H, D·H]``, ``weight_hh_l{k}`` ``[G·H, H]``, ``bias_ih_l{k}`` and ``bias_hh_l{k}`` ``[G·H]``,
        with G = 3 gates in torch.nn's order (r, z, n).

    Raises:
        ValueError: a size, ``dropout``, ``init`` or ``backend`` out of range when
            constructed; at call time an input, state or ``lengths`` of the wrong shape, naming the
            argument, the shape expected and the shape given.
        TypeError: an input that is not a floating-point tensor of the parameters' dtype, or a
            state of the wrong type.

    The letters as in ``rnnkit.RNN``.

    Examples:
        >>> import torch, rnnkit
        >>> gru = rnnkit.GRU(10, 20, bidirectional=True)
        >>> output, h_n = gru(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 40]), torch.Size([2, 3, 20]))
    """

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, reset_after: bool = True, init: str = "torch",
                 backend: str = "auto", weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         reset_after=reset_after, device=device, dtype=dtype, init=init, backend=backend,
                         weight_drop=weight_drop, recurrent_dropout=recurrent_dropout, zoneout=zoneout)
