"""The minimal cells' CPU fast path: one compiled pass forward and one backward (numba).

Given the input projection gi <float>[B, T, G*H] of a whole sequence (one GEMM, outside), the
forward pass computes every step's coefficients a_t, b_t from gi and runs h_t = a_t ⊙ h_{t-1} + b_t
in the same loop; the backward pass runs the reverse scan and the coefficients' derivatives in one
loop and returns ∂loss/∂gi, from which autograd's GEMMs give the weight and input gradients. Each
pass reads and writes every element once, where torch's elementwise ops make ~25 passes with a
fresh allocation each. Lanes (one sequence, 64 hidden units) run in parallel; time is sequential.

Padding (``valid`` False) keeps the state and gives no gradient, as ``rnnkit.layers.minimal``'s
other scans. Float32 and float64, contiguous tensors.

This is a driver in all but name: it belongs in the fused backend's per-cell driver table
(``rnnkit.kernels.fused``) once that takes cells without recurrent weights.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ..kernels.base import check_out

from ..kernels.fused_loops import one_, sigmoid_  # float32: a branch-free sigmoid, so the loops vectorise

_JIT = dict(cache=True, nogil=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"},
            error_model="numpy", boundscheck=False)
_LANE = 256  # hidden units per parallel job: 1 KB runs of each row (64-unit runs cost a TLB miss a row a step)
CELLS = {"MINGRU": 0, "MINLSTM": 1}  # the kernels' ``cell`` argument; G = 2 + cell gate blocks


@njit(inline="always", **_JIT)
def _g(u, s, one):
    """min_g(u) given s = σ(u) (computed on both sides so the choice is a select); ``one`` is 1 in
    the arrays' dtype (a float64 literal would turn float32 arithmetic into float64)."""
    return u + one / (one + one) if u >= 0.0 else s


@njit(inline="always", **_JIT)
def _dg(u, s, one):
    return one if u >= 0.0 else s * (one - s)


@njit(inline="always", **_JIT)
def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(inline="always", **_JIT)
def _coefficients(cell, row, j, hidden):
    """(a, b) at one step and unit. minGRU: a = 1 - σ(k), b = σ(k) g(u). minLSTM: a = f/(f+i) = σ(-d),
    b = i/(f+i) g(u) with d = log i - log f from softplus (stable where both gates underflow)."""
    one = one_(row)
    if cell == 0:
        k, u = row[j], row[hidden + j]
        z = sigmoid_(k)
        return one - z, z * _g(u, sigmoid_(u), one)
    u = row[2 * hidden + j]
    d = _softplus(-row[j]) - _softplus(-row[hidden + j])
    return one * _sigmoid64(-d), one * _sigmoid64(d) * _g(u, sigmoid_(u), one)


@njit(inline="always", **_JIT)
def _sigmoid64(x):
    return 1.0 / (1.0 + math.exp(-x))


@njit(inline="always", **_JIT)
def _mingru_backward_step(row, drow, dh, prev, g, gbuf, j0, j1, hidden):
    """One step of minGRU's reverse scan over units j0..j1: ∂loss/∂(k, u) into drow, and g (∂loss/∂h
    through later steps) carried back one step. Four loops, each writing one array, so that LLVM's
    alias checks stay few and every loop vectorises (one loop writing three did not)."""
    one = one_(row)
    for j in range(j1 - j0):
        gbuf[j] = g[j] + dh[j0 + j]  # ∂loss/∂h_t
    for j in range(j1 - j0):  # ∂/∂k: da/dk = -z(1-z), db/dk = z(1-z) g(u)
        k, u = row[j0 + j], row[hidden + j0 + j]
        z = sigmoid_(k)
        drow[j0 + j] = gbuf[j] * (_g(u, sigmoid_(u), one) - prev[j0 + j]) * z * (one - z)
    for j in range(j1 - j0):  # ∂/∂u: db/du = z g'(u)
        u = row[hidden + j0 + j]
        drow[hidden + j0 + j] = gbuf[j] * sigmoid_(row[j0 + j]) * _dg(u, sigmoid_(u), one)
    for j in range(j1 - j0):  # ∂loss/∂h_{t-1} = a_t ∂loss/∂h_t
        g[j] = (one - sigmoid_(row[j0 + j])) * gbuf[j]


@njit(inline="always", **_JIT)
def _minlstm_backward_step(row, drow, dh, prev, g, gbuf, j0, j1, hidden):
    """The same for minLSTM (scalar float64 logs and exps: numba has no vector exp without SVML)."""
    one = one_(row)
    for j in range(j0, j1):
        grad = g[j - j0] + dh[j]
        kf, ki, u = row[j], row[hidden + j], row[2 * hidden + j]
        d = _softplus(-kf) - _softplus(-ki)
        a, i_n, s = _sigmoid64(-d), _sigmoid64(d), sigmoid_(u)  # the normalised gates f', i'
        common = grad * (_g(u, s, one) - prev[j]) * a * i_n  # da/dd = -a i', db/dd = a i' g
        drow[j] = -common * _sigmoid64(-kf)  # ∂d/∂kf = -(1 - f)
        drow[hidden + j] = common * _sigmoid64(-ki)  # ∂d/∂ki = 1 - i
        drow[2 * hidden + j] = grad * i_n * _dg(u, s, one)
        g[j - j0] = a * grad


@njit(parallel=True, **_JIT)
def forward_loop(cell, gi, h0, valid, reverse, hs):
    """hs[:, t] = a_t ⊙ hs[:, t-1] + b_t (hs[:, -1] = h0), batch first, the steps in reverse with
    ``reverse``; where valid[b, t] is False the state is kept."""
    batch, time, hidden = hs.shape
    blocks = (hidden + _LANE - 1) // _LANE
    for job in prange(batch * blocks):
        b, j0 = job // blocks, (job % blocks) * _LANE
        j1 = min(j0 + _LANE, hidden)
        h = h0[b, j0:j1].copy()
        for s in range(time):
            t = time - 1 - s if reverse else s
            if valid[b, t]:
                row = gi[b, t]
                for j in range(j0, j1):
                    a, bb = _coefficients(cell, row, j, hidden)
                    h[j - j0] = a * h[j - j0] + bb
            for j in range(j0, j1):
                hs[b, t, j] = h[j - j0]


@njit(parallel=True, **_JIT)
def backward_loop(cell, gi, h0, valid, reverse, hs, dout, dfinal, dgi, dh0):
    """The reverse scan of ``forward_loop``: dgi from dout (∂loss/∂hs) and dfinal (∂loss/∂h_n), and dh0."""
    batch, time, hidden = hs.shape
    gates = 2 + cell
    zero = one_(gi) - one_(gi)
    blocks = (hidden + _LANE - 1) // _LANE
    for job in prange(batch * blocks):
        b, j0 = job // blocks, (job % blocks) * _LANE
        j1 = min(j0 + _LANE, hidden)
        g = dfinal[b, j0:j1].copy()  # ∂loss/∂h_t through every later step
        gbuf = np.empty_like(g)
        for s in range(time):
            t = s if reverse else time - 1 - s
            p = t + 1 if reverse else t - 1  # the step before t in the scan's order
            if valid[b, t]:
                prev = hs[b, p] if 0 <= p < time else h0[b]
                if cell == 0:
                    _mingru_backward_step(gi[b, t], dgi[b, t], dout[b, t], prev, g, gbuf, j0, j1, hidden)
                else:
                    _minlstm_backward_step(gi[b, t], dgi[b, t], dout[b, t], prev, g, gbuf, j0, j1, hidden)
            else:
                for gate in range(gates):
                    for j in range(j0, j1):
                        dgi[b, t, gate * hidden + j] = zero
        for j in range(j0, j1):
            dh0[b, j] = g[j - j0]


@njit(**_JIT)
def stream_layer(cell, x, w, bias, h, gi):
    """One step of one layer in place, for streaming: h <f>[B, H] ← a ⊙ h + b from x <f>[B, I],
    w <f>[G*H, I], bias <f>[G*H]; gi <f>[G*H] scratch. Not parallel: a step is microseconds."""
    batch, hidden = h.shape
    for b in range(batch):
        for r in range(gi.shape[0]):
            acc = bias[r]
            for i in range(x.shape[1]):
                acc += w[r, i] * x[b, i]
            gi[r] = acc
        for j in range(hidden):
            a, bb = _coefficients(cell, gi, j, hidden)
            h[b, j] = a * h[b, j] + bb


class FusedStreamer:
    """A minimal layer's stack streamed one compiled call per layer and step (``MinGRU.streamer``):
    ``y_t = s(x_t)`` or ``s(x_t, out=y)``, ``s.state`` <f>[L, B, H]. Reads the parameters in place."""

    def __init__(self, layer, batch_size: int, state: Tensor | None) -> None:
        like = layer.weight_ih_l0.detach()
        self.layer, self.batch_size, self.cell = layer, batch_size, CELLS[layer.mode]
        h = like.new_zeros(layer.num_layers, batch_size, layer.hidden_size) if state is None else state.detach()
        self._h = h.clone().contiguous()
        self._weights = []
        for index in range(layer.num_layers):
            w = layer.direction_weights(index, 0)
            bias = w.b_ih.detach() if w.b_ih is not None else like.new_zeros(w.w_ih.shape[0])
            self._weights.append((w.w_ih.detach().numpy(), bias.numpy()))
        self._gi = like.new_empty(layer.spec.gates * layer.hidden_size).numpy()

    def __call__(self, x_t: Tensor, out: Tensor | None = None) -> Tensor:
        layer = self.layer
        layer._check_input(x_t, "x_t")
        if x_t.shape[0] != self.batch_size:
            raise ValueError(f"x_t: expected a batch of {self.batch_size} (the streamer's batch_size), "
                             f"got shape {tuple(x_t.shape)}")
        if out is not None:
            check_out(out, (self.batch_size, layer.hidden_size), self._h.dtype, self._h.device)
        x = x_t.detach().contiguous().numpy()
        for (w, bias), h in zip(self._weights, self._h.numpy()):
            stream_layer(self.cell, x, w, bias, h, self._gi)
            x = h
        y = self._h[-1]
        return y.clone() if out is None else out.copy_(y)

    @property
    def state(self) -> Tensor:
        """The current state <f>[L, B, H] (forward's hx layout), as a new tensor."""
        return self._h.clone()


def _threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class FusedMinScan(torch.autograd.Function):
    """(gi <f>[B, T, G*H], h0 <f>[B, H], valid <bool>[B, T] or None, mode, reverse) →
    (h <f>[B, T, H], zero past each end; h_n <f>[B, H]). Batch first: each sequence's steps are
    consecutive rows, read in order. First-order differentiable in gi and h0."""

    @staticmethod
    def forward(ctx, gi: Tensor, h0: Tensor, valid: Tensor | None, mode: str, reverse: bool):
        gi, h0 = gi.detach().contiguous(), h0.detach().contiguous()
        batch, time = gi.shape[:2]
        ok = (torch.ones(batch, time, dtype=torch.bool) if valid is None else valid.contiguous())
        hs = gi.new_empty(batch, time, h0.shape[1])
        _threads()
        forward_loop(CELLS[mode], gi.numpy(), h0.numpy(), ok.numpy(), reverse, hs.numpy())
        ctx.save_for_backward(gi, h0, ok, hs)
        ctx.mode, ctx.reverse = mode, reverse
        final = hs[:, 0 if reverse else -1].clone()
        return (hs if valid is None else hs * ok.unsqueeze(-1)), final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor | None, dfinal: Tensor | None):
        gi, h0, ok, hs = ctx.saved_tensors
        dout = torch.zeros_like(hs) if dout is None else dout.contiguous()
        dfinal = torch.zeros_like(h0) if dfinal is None else dfinal.contiguous()
        dgi, dh0 = torch.empty_like(gi), torch.empty_like(h0)
        _threads()
        backward_loop(CELLS[ctx.mode], gi.numpy(), h0.numpy(), ok.numpy(), ctx.reverse, hs.numpy(), dout.numpy(),
                      dfinal.numpy(), dgi.numpy(), dh0.numpy())
        return dgi, dh0, None, None, None


def fused_scan(gi: Tensor, h0: Tensor, valid: Tensor | None, mode: str, reverse: bool) -> tuple[Tensor, Tensor]:
    """One direction of a minimal cell from its input projection (see ``FusedMinScan``)."""
    return FusedMinScan.apply(gi, h0, valid, mode, reverse)


__all__ = ["fused_scan", "forward_loop", "backward_loop", "stream_layer", "FusedStreamer"]
