"""The minimal cells' CPU fast path: one compiled pass forward and one backward (numba).

Given the input projection gi <float>[B, T, G*H] of a whole sequence (one GEMM, outside), the
forward pass computes every step's coefficients a_t, b_t from gi and runs h_t = a_t ⊙ h_{t-1} + b_t
in the same loop; the backward pass runs the reverse scan and the coefficients' derivatives in one
loop and returns ∂loss/∂gi, from which autograd's GEMMs give the weight and input gradients. Each
pass reads and writes every element once, where torch's elementwise ops make ~25 passes with a
fresh allocation each. Lanes (one sequence, 64 hidden units) run in parallel; time is sequential.

Padding (``valid`` False) keeps the state and gives no gradient, as ``rnnkit.layers.minimal``'s
other scans. Float32 and float64; in float32 the sigmoid is the fused loops' branch-free rational
form (absolute error ~1e-7), so that the loops vectorise; float64 is exact. minLSTM's two softplus
terms come from torch (vectorised there; numba has no vector exp or log without SVML).

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
from torch.nn import functional as F

from ..kernels.base import check_out
from ..kernels.fused import runtime
from ..kernels.fused.policies import current

# the fused backend's compiled helpers (float32: a branch-free sigmoid, so loops vectorise) and its
# compile options; loaded through runtime.loops(), which keeps torch's thread count as numba starts
_LOOPS = runtime.loops()
one_, sigmoid_, _JIT = _LOOPS.one_, _LOOPS.sigmoid_, _LOOPS._JIT
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
def _coefficients(cell, row, aux, j, hidden):
    """(a, b) at one step and unit. minGRU: a = 1 - σ(k), b = σ(k) g(u). minLSTM: a = f/(f+i) = σ(-d),
    b = i/(f+i) g(u), d = log i - log f = aux[j] - aux[hidden + j] with aux = softplus(-[kf | ki])
    (from torch, whose softplus is vectorised; numba's exp and log are not without SVML)."""
    one = one_(row)
    if cell == 0:
        k, u = row[j], row[hidden + j]
        z = sigmoid_(k)
        return one - z, z * _g(u, sigmoid_(u), one)
    u, d = row[2 * hidden + j], aux[j] - aux[hidden + j]
    return sigmoid_(-d), sigmoid_(d) * _g(u, sigmoid_(u), one)


@njit(inline="always", **_JIT)
def _mingru_backward_step(row, aux, drow, dh, prev, g, gbuf, j0, j1, hidden):
    """One step of minGRU's reverse scan over units j0..j1: ∂loss/∂(k, u) into drow, and g (∂loss/∂h
    through later steps) carried back one step. Loops that each write one array, so that LLVM's
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
def _minlstm_backward_step(row, aux, drow, dh, prev, g, gbuf, j0, j1, hidden):
    """The same for minLSTM: with a = σ(-d), i' = σ(d), da/dd = -a i' and db/dd = a i' g(u), and
    ∂d/∂kf = -(1 - f) = -σ(-kf), ∂d/∂ki = σ(-ki)."""
    one = one_(row)
    for j in range(j1 - j0):
        gbuf[j] = g[j] + dh[j0 + j]
    for gate in range(2):  # ∂/∂kf (sign -), ∂/∂ki (sign +)
        sign = (one + one) * gate - one
        for j in range(j1 - j0):
            d, u = aux[j0 + j] - aux[hidden + j0 + j], row[2 * hidden + j0 + j]
            a = sigmoid_(-d)
            common = gbuf[j] * (_g(u, sigmoid_(u), one) - prev[j0 + j]) * a * (one - a)
            drow[gate * hidden + j0 + j] = sign * common * sigmoid_(-row[gate * hidden + j0 + j])
    for j in range(j1 - j0):  # ∂/∂u: db/du = i' g'(u)
        d, u = aux[j0 + j] - aux[hidden + j0 + j], row[2 * hidden + j0 + j]
        drow[2 * hidden + j0 + j] = gbuf[j] * sigmoid_(d) * _dg(u, sigmoid_(u), one)
    for j in range(j1 - j0):
        g[j] = sigmoid_(aux[hidden + j0 + j] - aux[j0 + j]) * gbuf[j]


@njit(parallel=True, **_JIT)
def forward_loop(cell, gi, aux, h0, valid, reverse, hs):
    """hs[:, t] = a_t ⊙ hs[:, t-1] + b_t (hs[:, -1] = h0), batch first, the steps in reverse with
    ``reverse``; where valid[b, t] is False the state is kept. aux: minLSTM's softplus(-[kf | ki])
    <f>[B, T, 2H] (unread for minGRU)."""
    batch, time, hidden = hs.shape
    blocks = (hidden + _LANE - 1) // _LANE
    for job in prange(batch * blocks):
        b, j0 = job // blocks, (job % blocks) * _LANE
        j1 = min(j0 + _LANE, hidden)
        h = h0[b, j0:j1].copy()
        for s in range(time):
            t = time - 1 - s if reverse else s
            if valid[b, t]:
                row, arow = gi[b, t], aux[b, t]
                for j in range(j0, j1):
                    a, bb = _coefficients(cell, row, arow, j, hidden)
                    h[j - j0] = a * h[j - j0] + bb
            for j in range(j0, j1):
                hs[b, t, j] = h[j - j0]


@njit(parallel=True, **_JIT)
def backward_loop(cell, gi, aux, h0, valid, reverse, hs, dout, dfinal, dgi, dh0):
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
                    _mingru_backward_step(gi[b, t], aux[b, t], dgi[b, t], dout[b, t], prev, g, gbuf, j0, j1, hidden)
                else:
                    _minlstm_backward_step(gi[b, t], aux[b, t], dgi[b, t], dout[b, t], prev, g, gbuf, j0, j1, hidden)
            else:
                for gate in range(gates):
                    for j in range(j0, j1):
                        dgi[b, t, gate * hidden + j] = zero
        for j in range(j0, j1):
            dh0[b, j] = g[j - j0]


@njit(**_JIT)
def stream_layer(cell, x, w, bias, h, gi, aux):
    """One step of one layer in place, for streaming: h <f>[B, H] ← a ⊙ h + b from x <f>[B, I],
    w <f>[G*H, I], bias <f>[G*H]; gi <f>[G*H] and aux <f>[2H] scratch. Not parallel: a step is
    microseconds."""
    batch, hidden = h.shape
    for b in range(batch):
        for r in range(gi.shape[0]):
            acc = bias[r]
            for i in range(x.shape[1]):
                acc += w[r, i] * x[b, i]
            gi[r] = acc
        if cell == 1:
            for r in range(2 * hidden):
                aux[r] = _softplus(-gi[r])
        for j in range(hidden):
            a, bb = _coefficients(cell, gi, aux, j, hidden)
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
        self._aux = like.new_empty(2 * layer.hidden_size).numpy()

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
            stream_layer(self.cell, x, w, bias, h, self._gi, self._aux)
            x = h
        y = self._h[-1]
        return y.clone() if out is None else out.copy_(y)

    @property
    def state(self) -> Tensor:
        """The current state <f>[L, B, H] (forward's hx layout), as a new tensor."""
        return self._h.clone()


def _threads() -> None:
    """The fused backend's thread count for the parallel loops (the policy's, within numba's pool;
    one thread in a forked child, where GNU OpenMP is not safe)."""
    numba.set_num_threads(runtime.threads(current()))


class FusedMinScan(torch.autograd.Function):
    """(gi <f>[B, T, G*H], h0 <f>[B, H], valid <bool>[B, T] or None, mode, reverse) →
    (h <f>[B, T, H], zero past each end; h_n <f>[B, H]). Batch first: each sequence's steps are
    consecutive rows, read in order. First-order differentiable in gi and h0."""

    @staticmethod
    def forward(ctx, gi: Tensor, h0: Tensor, valid: Tensor | None, mode: str, reverse: bool):
        gi, h0 = gi.detach().contiguous(), h0.detach().contiguous()
        batch, time = gi.shape[:2]
        ok = (torch.ones(batch, time, dtype=torch.bool) if valid is None else valid.contiguous())
        aux = _aux(gi, mode)
        hs = gi.new_empty(batch, time, h0.shape[1])
        _threads()
        forward_loop(CELLS[mode], gi.numpy(), aux.numpy(), h0.numpy(), ok.numpy(), reverse, hs.numpy())
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
        backward_loop(CELLS[ctx.mode], gi.numpy(), _aux(gi, ctx.mode).numpy(), h0.numpy(), ok.numpy(), ctx.reverse,
                      hs.numpy(), dout.numpy(), dfinal.numpy(), dgi.numpy(), dh0.numpy())
        return dgi, dh0, None, None, None


def _aux(gi: Tensor, mode: str) -> Tensor:
    """minLSTM's softplus(-[kf | ki]) <f>[B, T, 2H] (torch's vectorised softplus; recomputed for the
    backward rather than kept); for minGRU gi itself, which the loops do not read as aux."""
    if mode != "MINLSTM":
        return gi
    return F.softplus(-gi[..., : 2 * (gi.shape[-1] // 3)]).contiguous()


def fused_scan(gi: Tensor, h0: Tensor, valid: Tensor | None, mode: str, reverse: bool) -> tuple[Tensor, Tensor]:
    """One direction of a minimal cell from its input projection (see ``FusedMinScan``)."""
    return FusedMinScan.apply(gi, h0, valid, mode, reverse)


__all__ = ["fused_scan", "forward_loop", "backward_loop", "stream_layer", "FusedStreamer"]
