"""Minimal recurrent layers that train in parallel over time: ``MinGRU`` and ``MinLSTM``.

Feng et al. 2024 ("Were RNNs All We Needed?") take the previous state out of the gates, so every
step is the first-order linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` with a_t, b_t functions of
x_t alone (equations in ``rnnkit.cells.mingru_coefficients`` / ``minlstm_coefficients``). A whole
sequence is then one GEMM for the input projection and a linear scan over time, which this module
runs in one of four ways:

    "fused"  on CPU (float32/64): the input projection's GEMM, then one compiled pass that adds the
             bias, computes the coefficients and scans, and one for the backward that also sums the
             bias gradient (``rnnkit.kernels.fused.minimal``); the default on CPU
    "log"    the parallel scan in log space (Heinsen 2023; the paper's appendix B), chunked:
             h_t = exp(A_t) ⊙ h_0 + exp(A_t + logcumsumexp_{k<=t}(log b_k - A_k)),  A_t = Σ_{k<=t} log a_k,
             every product a sum of logs, so nothing underflows; parallel over the steps of a
             chunk (64), the state carried from chunk to chunk (for GPUs)
    "loop"   the same recurrence as one fused multiply-add per step over the whole batch, without
             autograd bookkeeping per step; its backward is the reverse scan
             ∂h_t = g_t + a_{t+1} ⊙ ∂h_{t+1},  ∂b_t = ∂h_t,  ∂a_t = ∂h_t ⊙ h_{t-1}
             (on a CPU faster than logcumsumexp, which torch runs serially)
    reference  ``rnnkit.kernels.reference``: the cell step by step with autograd; the oracle, the
             streaming step and what torch.export / jit.trace record (as torch's scan operator)

Padding: past a sequence's end a_t = 1 and b_t = 0, so the state is kept and h_n is the state at
each sequence's own last step; the reverse direction scans the time-reversed steps, which start
with the padding, so it starts from h_0 at each sequence's last valid step. Outputs there are 0.

Shapes as ``rnnkit.GRU``: input ``<float>[T, B, I]`` (``[B, T, I]`` with ``batch_first``), output
``<float>[T, B, D·H]``, h_0/h_n ``<float>[L·D, B, H]``.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from .. import kernels
from ..cells import MIN_COEFFICIENTS, CellSpec
from ..kernels import DirectionWeights, reference
from .recurrent import RecurrentBase, _StepStreamer

SCANS = ("auto", "fused", "log", "loop", "reference")


class _LoopScan(torch.autograd.Function):
    """h_t = a_t ⊙ h_{t-1} + b_t over dim 0, forward and backward one fused op per step."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = torch.empty_like(b)
        prev = h0
        for t in range(b.shape[0]):
            prev = torch.addcmul(b[t], a[t], prev, out=h[t])
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, h, h0 = ctx.saved_tensors
        gb = torch.empty_like(grad)  # ∂loss/∂h_t through every later step: also ∂loss/∂b_t
        gb[-1] = grad[-1]
        for t in range(grad.shape[0] - 2, -1, -1):
            torch.addcmul(grad[t], a[t + 1], gb[t + 1], out=gb[t])
        ga = torch.empty_like(a)
        torch.mul(gb[1:], h[:-1], out=ga[1:])
        torch.mul(gb[0], h0, out=ga[0])
        return ga, gb, a[0] * gb[0]


def loop_scan(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """``h_t = a_t ⊙ h_{t-1} + b_t`` for t = 0..T-1: a, b <float>[T, B, H], h0 <float>[B, H] →
    h <float>[T, B, H] (first order differentiable)."""
    return _LoopScan.apply(a, b, h0)


def log_scan(log_a: Tensor, log_b: Tensor, h0: Tensor, mask: Tensor | None = None, chunk: int = 64) -> Tensor:
    """The same scan from log a and log b (b > 0), parallel over time: log_a, log_b <float>[T, B, H],
    h0 <float>[B, H] of any sign (its term is added apart), mask <bool>[T, B, 1] or None: steps
    where it is False have a = 1, b = 0 (their log_a and log_b are ignored).

    Chunked: within each ``chunk`` steps (all chunks at once) the log-space scan from a zero state;
    then the state carried from chunk to chunk (a loop over T / chunk steps); then each chunk's
    start state decayed into it. Sums of logs over one chunk, not the whole sequence, keep float32
    exact to ~1e-5 however long the sequence (over 3000 steps of strong decay one sum reaches 2e4
    and its rounding moves h by ~1e-3)."""
    time, batch, hidden = log_b.shape
    n = -(-time // chunk)
    valid = mask
    if n * chunk != time:  # pad to whole chunks with steps that change nothing
        valid = torch.ones(time, batch, 1, dtype=torch.bool, device=log_b.device) if mask is None else mask
        pad = (0, 0, 0, 0, 0, n * chunk - time)
        log_a, log_b, valid = F.pad(log_a, pad), F.pad(log_b, pad), F.pad(valid, pad, value=False)
    if valid is not None:
        log_a = log_a.masked_fill(~valid, 0.0)
    big_a = log_a.reshape(n, chunk, batch, hidden).cumsum(1)  # log ∏ a within the chunk: a sum, no underflow
    v = log_b.reshape(n, chunk, batch, hidden) - big_a
    if valid is not None:  # log b = -inf there; filled after the subtraction so no NaN reaches A's gradient
        v = v.masked_fill(~valid.reshape(n, chunk, batch, 1), -math.inf)
    decay, local = torch.exp(big_a), torch.exp(big_a + v.logcumsumexp(1))
    ends = loop_scan(decay[:, -1], local[:, -1], h0)  # the state at each chunk's end
    starts = torch.cat([h0.unsqueeze(0), ends[:-1]])
    return (decay * starts.unsqueeze(1) + local).reshape(n * chunk, batch, hidden)[:time]


class MinimalRecurrent(nn.Module):
    """Shared machinery of ``MinGRU`` and ``MinLSTM``: parameters, the scans, step and streamer.
    Input, state and ``lengths`` checks are RecurrentBase's, so the errors read the same."""

    mode: str = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, init: str = "torch", scan: str = "auto") -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout <= 1.0):
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout={dropout} with num_layers=1 has no effect: dropout applies between stacked "
                          "layers (after every layer but the last)", stacklevel=3)
        if init not in ("torch", "keras"):
            raise ValueError(f"init: expected 'torch' or 'keras', got {init!r}")
        if scan not in SCANS:
            raise ValueError(f"scan: expected one of {', '.join(map(repr, SCANS))}, got {scan!r}")
        self.spec = CellSpec(self.mode, hidden_size)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.init, self.scan = bidirectional, init, scan
        self._layer_hooks: OrderedDict[int, object] = OrderedDict()  # weak-referenceable, as torch hooks need
        gh = self.spec.gates * hidden_size
        self._weight_names: list[list[DirectionWeights]] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * self.num_directions
            per_direction = []
            for suffix in ("", "_reverse")[: self.num_directions]:
                w, b = f"weight_ih_l{layer}{suffix}", f"bias_ih_l{layer}{suffix}" if bias else None
                self.register_parameter(w, nn.Parameter(torch.empty(gh, layer_in, device=device, dtype=dtype)))
                if b is not None:
                    self.register_parameter(b, nn.Parameter(torch.empty(gh, device=device, dtype=dtype)))
                per_direction.append(DirectionWeights(w, None, b, None, None))
            self._weight_names.append(per_direction)
        self.reset_parameters()

    # the same validation as rnnkit.RNN / LSTM / GRU
    _check_input = RecurrentBase._check_input
    _check_lengths = RecurrentBase._check_lengths
    _check_hx = RecurrentBase._check_hx
    _unbatched_hx = RecurrentBase._unbatched_hx
    _initial_states = RecurrentBase._initial_states
    _param_dtype = RecurrentBase._param_dtype
    num_directions = RecurrentBase.num_directions
    flatten_parameters = RecurrentBase.flatten_parameters
    register_layer_hook = RecurrentBase.register_layer_hook
    direction_weights = RecurrentBase.direction_weights  # w_hh is None: the minimal cells have no W_hh

    def reset_parameters(self) -> None:
        """torch.nn's uniform(±1/√H) for every weight and bias, or with ``init="keras"`` glorot-uniform
        weights and zero biases."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters(recurse=False):
            if self.init == "torch":
                nn.init.uniform_(p, -bound, bound)
            elif name.startswith("weight"):
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)

    # ------------------------------------------------------------------------------- forward
    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None,
                lengths: Tensor | Sequence[int] | None = None) -> tuple[Tensor | PackedSequence, Tensor]:
        """Run the layer over whole sequences: ``(output, h_n)`` as ``rnnkit.GRU.forward`` (same
        arguments, shapes and errors; a ``PackedSequence`` is read and returned packed)."""
        return RecurrentBase.forward(self, input, hx, lengths)

    def _stream(self, x: Tensor, state) -> None:
        return None  # forward() and step() always take this layer's own paths

    def scan_method(self, x: Tensor) -> str:
        """The scan a call runs: the reference while torch records the model (export, tracing)."""
        if not kernels.eager():
            return "reference"
        if self.scan != "auto":
            return self.scan
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
            return "fused"
        return "log" if x.is_cuda else "loop"

    def _layer_by_layer(self, x: Tensor, hx: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """forward() on time-major x <f>[T, B, I] (mask <bool>[T, B, 1] or None)."""
        states = self._initial_states(hx, x.shape[1], x)
        method = self.scan_method(x)
        finals: list[Tensor] = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)
            outs = []
            for d in range(self.num_directions):
                w, h0 = self.direction_weights(layer, d), states[layer][d][0]
                if method == "reference":
                    out, (final,) = reference.run_direction(self.spec, x, w, (h0,), mask, reverse=d == 1)
                else:
                    out, final = self._scan_direction(x, w, h0, mask, d == 1, method)
                outs.append(out)
                finals.append(final)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
            for hook in self._layer_hooks.values():
                hook(layer, x)
        return x, (finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals))

    def _scan_direction(self, x: Tensor, w: DirectionWeights, h0: Tensor, mask: Tensor | None,
                        reverse: bool, method: str) -> tuple[Tensor, Tensor]:
        """One direction by a parallel scan: output <f>[T, B, H] and the final state <f>[B, H]."""
        if method == "fused":  # numba: imported on first use, as the fused backend's loops
            from ..kernels.fused.minimal import fused_layer
            # batch first (free for a batch_first input): each sequence's steps are consecutive rows
            h, final = fused_layer(x.transpose(0, 1), w.w_ih, w.b_ih, h0, None if mask is None else mask[..., 0].t(),
                                   self.spec, reverse)
            return h.transpose(0, 1), final
        gi = F.linear(x, w.w_ih, w.b_ih)  # every step's gates and candidate: one GEMM
        if reverse:
            gi = gi.flip(0)
        step_mask = None if mask is None else (mask.flip(0) if reverse else mask)
        coefficients, log_coefficients = MIN_COEFFICIENTS[self.mode]
        if method == "log":
            h = log_scan(*log_coefficients(gi), h0, step_mask)
        else:
            a, b = coefficients(gi)
            if step_mask is not None:  # padding keeps the state: a = 1, b = 0
                a, b = a.masked_fill(~step_mask, 1.0), b.masked_fill(~step_mask, 0.0)
            h = loop_scan(a, b, h0)
        final = h[-1]
        if step_mask is not None:
            h = h.masked_fill(~step_mask, 0.0)
        return (h.flip(0) if reverse else h), final

    # ----------------------------------------------------------------------------- streaming
    def step(self, x_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step for streaming: the sequential form ``h_t = a_t ⊙ h_{t-1} + b_t``; a sequence
        fed step by step gives forward()'s outputs and state.

        Args:
            x_t: ``<float>[B, I]``, the input at one step.
            state: h ``<float>[L, B, H]`` (forward's hx layout), or None for zeros.

        Returns:
            ``(y_t, state)``: the last layer's output ``<float>[B, H]`` and the new state.

        Raises:
            ValueError: a bidirectional layer (it needs the whole sequence), or an x_t or state of
                the wrong shape.
        """
        if self.bidirectional:
            raise ValueError("step: a bidirectional layer needs the whole sequence; use forward()")
        self._check_input(x_t, "x_t")
        states = self._initial_states(state, x_t.shape[0], x_t)
        finals = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x_t = F.dropout(x_t, self.dropout, training=True)
            (x_t,) = self.spec.cell(x_t, states[layer][0], self.direction_weights(layer, 0))
            finals.append(x_t)
        return x_t, torch.stack(finals)

    def streamer(self, batch_size: int = 1, state: Tensor | None = None):
        """A state object for streaming inference: ``s = layer.streamer(); y_t = s(x_t)`` advances the
        state kept inside (``s.state``, forward's hx layout); no autograd, no dropout;
        ``s(x_t, out=y)`` writes y_t into y. On CPU (float32/64) one compiled call per layer and step,
        reading the parameters in place (make a new streamer after replacing a parameter).

        Raises:
            ValueError: a bidirectional layer, a batch_size below 1, or a state of the wrong shape.
        """
        if self.bidirectional:
            raise ValueError("streamer: a bidirectional layer needs the whole sequence; use forward()")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        like = self.weight_ih_l0.detach()
        if state is not None:
            self._check_hx(state, batch_size, like)
        if like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64):
            from ..kernels.fused.minimal import FusedStreamer  # one compiled call per layer and step
            return FusedStreamer(self, batch_size, state)
        return _StepStreamer(self, batch_size, state)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "init": "torch", "scan": "auto"}
        for key, default in defaults.items():
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s


_ARGS = """
    Args:
        input_size: features of the input x.
        hidden_size: features of the hidden state h.
        num_layers: stacked layers, each reading the output of the one before. Default: 1.
        bias: whether the layers have the bias b_ih. Default: True.
        batch_first: if True, the input and output are ``(batch, time, features)`` instead of
            ``(time, batch, features)``; the state keeps its layout. Default: False.
        dropout: probability of dropout on the output of every layer but the last. Default: 0.
        bidirectional: run every layer forward and backward and concatenate the two outputs.
            Default: False.
        device: device of the parameters. Default: None (torch's default device).
        dtype: dtype of the parameters. Default: None (torch's default dtype).
        init: ``"torch"``: every weight and bias uniform(±1/√hidden_size); ``"keras"``:
            glorot-uniform weights and zero biases. Default: ``"torch"``.
        scan: how forward() runs the recurrence over a whole sequence (module docstring):
            ``"auto"`` (``"fused"`` on CPU float32/64, ``"log"`` on CUDA, else ``"loop"``),
            ``"fused"``, ``"log"``, ``"loop"`` or ``"reference"`` (step by step with autograd).
            ``"fused"`` and ``"loop"`` give first-order gradients only (``"log"`` and ``"reference"``
            any order, e.g. for a gradient penalty). While torch records the model
            (``torch.export``, ``jit.trace``, ONNX) the reference runs. Default: ``"auto"``.

    Inputs:
        - **input**: ``<float>[T, B, I]``, ``<float>[B, T, I]`` with ``batch_first=True``,
          ``<float>[T, I]`` for one unbatched sequence, or a ``PackedSequence``.
        - **hx**: the initial state h_0 ``<float>[L·D, B, H]`` (``[L·D, H]`` unbatched), or None for
          zeros. Any sign; started from zeros the state stays positive.
        - **lengths**: ``<int>[B]`` valid steps of each sequence of a padded batch, or None. Outputs
          past a sequence's end are zero, the final state is the one at its own last step, and the
          reverse direction starts there.

    Outputs:
        - **output**: ``<float>[T, B, D·H]`` (batch first with ``batch_first=True``).
        - **h_n**: ``<float>[L·D, B, H]``, the final state of every layer and direction.

    Weights:
        For layer k (``_reverse`` for the backward direction): ``weight_ih_l{k}`` ``<float>[G·H, I]``
        (the first layer) or ``[G·H, D·H]`` and ``bias_ih_l{k}`` ``[G·H]``; no recurrent weights.

    Beyond the whole-sequence call: ``step()`` and ``streamer()`` run the sequential form one step at
    a time. T steps, B batch, I ``input_size``, H ``hidden_size``, L ``num_layers``, D = 2 if
    ``bidirectional`` else 1.
"""


class MinGRU(MinimalRecurrent):
    __doc__ = """minGRU layer (Feng et al. 2024): a GRU whose gate sees only the input, so that a whole
    sequence trains as one GEMM and a parallel scan, and still streams one step at a time.

    Every layer computes, for each step t (``rnnkit.cells.mingru_coefficients``)::

        z_t = σ(W_iz x_t + b_iz)                     update gate
        h̃_t = g(W_ih̃ x_t + b_ih̃)                    candidate; g(v) = v + 0.5 (v >= 0), σ(v) (v < 0)
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

    g keeps the candidate positive (the paper's log-space form), so the scan can run in log space.
    G = 2 blocks ``[z, h̃]`` in ``weight_ih_l{k}``. In a model config: ``cell = "mingru"``.
""" + _ARGS + """
    Examples:
        >>> import torch, rnnkit
        >>> gru = rnnkit.MinGRU(10, 20, num_layers=2, batch_first=True)
        >>> output, h_n = gru(torch.randn(3, 5, 10), lengths=[5, 4, 2])
        >>> output.shape, h_n.shape
        (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]))
    """

    mode = "MINGRU"


class MinLSTM(MinimalRecurrent):
    __doc__ = """minLSTM layer (Feng et al. 2024): an LSTM without output gate, cell state or recurrent
    weights, its forget and input gates normalised to sum to 1; trains as one GEMM and a parallel
    scan, and streams one step at a time.

    Every layer computes, for each step t (``rnnkit.cells.minlstm_coefficients``)::

        f_t = σ(W_if x_t + b_if),   i_t = σ(W_ii x_t + b_ii)
        h̃_t = g(W_ih̃ x_t + b_ih̃)                    g(v) = v + 0.5 (v >= 0), σ(v) (v < 0)
        h_t = f_t / (f_t + i_t) ⊙ h_{t-1} + i_t / (f_t + i_t) ⊙ h̃_t

    G = 3 blocks ``[f, i, h̃]`` in ``weight_ih_l{k}``; the state is h alone (as a GRU's, not an
    LSTM's (h, c)). In a model config: ``cell = "minlstm"``.
""" + _ARGS + """
    Examples:
        >>> import torch, rnnkit
        >>> lstm = rnnkit.MinLSTM(10, 20, bidirectional=True)
        >>> output, h_n = lstm(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 40]), torch.Size([2, 3, 20]))
    """

    mode = "MINLSTM"


# A whole layer saved with torch.save loads with torch.load(..., weights_only=True), as the other
# rnnkit layers do (rnnkit.layers lists theirs).
torch.serialization.add_safe_globals([MinGRU, MinLSTM])
