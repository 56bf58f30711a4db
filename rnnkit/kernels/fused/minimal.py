"""The minimal cells' layer on the compiled loops (``loops.minimal``): one direction as an autograd
Function, and a stack streamed one compiled call per layer and step.

The input projection gi = x W^T of a whole sequence is one GEMM (into a pooled buffer kept for the
backward); the forward loop adds the bias, computes every step's coefficients a_t, b_t and runs
h_t = a_t ⊙ h_{t-1} + b_t; the backward loop runs the reverse scan and the coefficients' derivatives,
writing ∂loss/∂gi and summing the bias gradient as it goes, and two GEMMs give the input and weight
gradients. Each pass reads and writes every element once, where torch's elementwise ops make ~25
passes with a fresh allocation each. Padding (``valid`` False) keeps the state and gives no gradient,
as ``rnnkit.layers.minimal``'s other scans. The layer (``rnnkit.layers.minimal``) validates its input
and calls ``fused_layer`` / ``FusedStreamer``; each cell's code for the loops is its entry in the driver
table (``drivers.cell(spec).code``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells import CellSpec
from ..base import check_out
from ..buffers import pool
from . import drivers, gemm, runtime
from .policies import current


class FusedStreamer:
    """A minimal layer's stack streamed one compiled call per layer and step (``MinGRU.streamer``):
    ``y_t = s(x_t)`` or ``s(x_t, out=y)``, ``s.state`` <f>[L, B, H]. Reads the parameters in place."""

    def __init__(self, layer, batch_size: int, state: Tensor | None) -> None:
        like = layer.weight_ih_l0.detach()
        self.layer, self.batch_size, self.code = layer, batch_size, drivers.cell(layer.spec).code
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
        stream_layer = runtime.loops().minimal.stream_layer
        for (w, bias), h in zip(self._weights, self._h.numpy()):
            stream_layer(self.code, x, w, bias, h, self._gi)
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
    runtime.loops().set_threads(runtime.threads(current()))


class FusedMinLayer(torch.autograd.Function):
    """(x <f>[B, T, I], w <f>[G*H, I], b <f>[G*H] or None, h0 <f>[B, H], valid <bool>[B, T] or None,
    spec, reverse) → (h <f>[B, T, H], zero past each end; h_n <f>[B, H]): one direction of a layer,
    batch first (each sequence's steps are consecutive rows, read in order). The input projection
    gi = x w^T + b is one GEMM into a pooled buffer, kept for the backward; the backward scan writes
    ∂loss/∂gi into another and sums the bias gradient as it goes, and two GEMMs give ∂loss/∂x and
    ∂loss/∂w. First-order differentiable in x, w, b and h0."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, h0: Tensor, valid: Tensor | None, spec: CellSpec,
                reverse: bool):
        batch, time = x.shape[:2]
        x, w, h0 = x.detach().contiguous(), w.detach(), h0.detach().contiguous()
        gi = gemm.linear(x.view(batch * time, x.shape[2]), w, None, current(), pooled=True)
        gi = gi.view(batch, time, w.shape[0])
        bias = gi.new_zeros(gi.shape[2]) if b is None else b.detach().contiguous()
        ok = (torch.ones(batch, time, dtype=torch.bool) if valid is None else valid.contiguous())
        hs = gi.new_empty(batch, time, h0.shape[1])
        _threads()
        ctx.code = drivers.cell(spec).code
        runtime.loops().minimal.forward_loop(ctx.code, gi.numpy(), bias.numpy(), h0.numpy(), ok.numpy(), reverse,
                                             hs.numpy())
        ctx.save_for_backward(x, w, gi, bias, h0, ok, hs)
        ctx.reverse, ctx.has_bias = reverse, b is not None
        final = hs[:, 0 if reverse else -1].clone()
        return (hs if valid is None else hs * ok.unsqueeze(-1)), final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor | None, dfinal: Tensor | None):
        x, w, gi, bias, h0, ok, hs = ctx.saved_tensors
        dout = torch.zeros_like(hs) if dout is None else dout.contiguous()
        dfinal = torch.zeros_like(h0) if dfinal is None else dfinal.contiguous()
        dgi, dh0 = pool.empty(tuple(gi.shape), gi.dtype), torch.empty_like(h0)
        db = gi.new_empty(gi.shape[0], gi.shape[2])  # each sequence's bias gradient
        _threads()
        runtime.loops().minimal.backward_loop(ctx.code, gi.numpy(), bias.numpy(), h0.numpy(), ok.numpy(),
                                              ctx.reverse, hs.numpy(), dout.numpy(), dfinal.numpy(), dgi.numpy(),
                                              dh0.numpy(), db.numpy())
        rows = dgi.view(x.shape[0] * x.shape[1], dgi.shape[2])
        dx = dw = None
        if ctx.needs_input_grad[0]:  # dx = dgi w, as oneDNN's x w^T with w^T (a small copy)
            dx = gemm.linear(rows, w.t().contiguous(), None, current()).view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = gemm.grad_input_weight(rows, x.view(rows.shape[0], x.shape[2]), current())
        return dx, dw, db.sum(0) if ctx.has_bias else None, dh0, None, None, None


def fused_layer(x: Tensor, w: Tensor, b: Tensor | None, h0: Tensor, valid: Tensor | None, spec: CellSpec,
                reverse: bool) -> tuple[Tensor, Tensor]:
    """One direction of a minimal layer from its batch-first input (see ``FusedMinLayer``)."""
    return FusedMinLayer.apply(x, w, b, h0, valid, spec, reverse)


__all__ = ["FusedMinLayer", "FusedStreamer", "fused_layer"]
