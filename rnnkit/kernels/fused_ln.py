"""The fused CPU path of the layer-normalised LSTM (``rnnkit.cells.ln_lstm_step``).

Per direction, x W_ih^T is one GEMM for every step at once, and its normalisation, gain and the
biases one compiled pass over every row at once (``fused_loops.ln_input_forward``, split across
threads by rows): the input term does not depend on the recurrence. The rest runs in one compiled
loop (``ln_lstm_forward``, split across threads by rows of the batch as the plain cells' loops are):
per step the recurrent mat-mul, then one pass per row that normalises the recurrent term, adds it,
applies the gates, updates the cell and normalises it. The backward through time is hand-written
(``ln_lstm_backward``) and keeps in the loop only what the recurrence needs: the gradient of the
gates' pre-activation and, through the recurrent term's normalisation, of h W_hh^T (W_hh's gradient
is then one GEMM over the sequence). A pass over every row after it (``ln_input_backward``) sums
the gains' and biases' gradients and carries the gradient through the input term's normalisation
(W_ih's gradient, one GEMM). Out of the serial loop, that work splits across threads even at batch
1, and the serial loop's per-step pass is shorter.
For large float32 shapes the time loop runs in Python with oneDNN's prepacked GEMM per step and
one compiled elementwise call (``*_step``), under the plain cells' rule (``fused._step_loop``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import CellSpec, State
from . import fused, reference
from .base import DirectionWeights
from .buffers import pool
from .fused import _np


ROW_PASS_MIN_ROWS = 64
"""The passes over every row at once (``ln_input_*``) use all the loops' threads from this many rows
per thread; below, one."""


def _rows_pass(name: str, rows: int, *args) -> None:
    """Run ``fused_loops.<name>`` over ``rows`` rows in chunks, one per thread."""
    K = fused._kernels()
    n = fused._threads()
    n = n if rows >= ROW_PASS_MIN_ROWS * n else 1
    K.set_threads(n)
    getattr(K, name)(n, *args)


def _forward(x, w_ih, b_ih, w_hh, ln, b_hh, h0, c0, mask, reverse, stepwise, n, train):
    """One direction: (x <f>[T, B, I], its weights, h0, c0, mask <bool>[T, B] | None, ...) → out
    <f>[T, B, H], h_n, c_n and, with train, what backward needs (a tuple, ``_Recurrence``'s order);
    without it, None (inference passes placeholders for the buffers the loop would keep).
    x W_ih^T is one GEMM, its normalisation and the biases one pass over all rows; the recurrent
    term's normalisation and the cell run in the compiled loop. stepwise: drive the loop from Python
    with oneDNN's GEMM; else the compiled loop split into n chunks of the batch (``fused._loop``)."""
    K = fused._kernels()
    T, B, I = x.shape
    G = w_ih.shape[0]
    H = G // 4
    x, w_ih, w_hh, ln = fused._c(x), fused._c(w_ih), fused._c(w_hh), fused._c(ln)
    gates = fused._linear(x.view(T * B, I), w_ih, None, pooled=True).view(T, B, G)  # becomes the activated gates
    bias = fused._add(b_ih, b_hh)
    bias_np = _np(bias.detach().contiguous() if bias is not None else gates.new_zeros(G))
    h, c = h0.detach().clone(memory_format=torch.contiguous_format), c0.detach().clone(
        memory_format=torch.contiguous_format)
    out = gates.new_empty(T, B, H)
    has_mask = mask is not None
    if train:
        ri, rh, rstd = (pool.empty((T, B, width), x.dtype) for width in (G, G, 3))
        cs, chat = pool.empty((T, B, H), x.dtype), pool.empty((T, B, H), x.dtype)
        hs = pool.empty((T, B, H), x.dtype) if has_mask else None  # without a mask, out is the state sequence
        kept = [_np(t) for t in (rh, rstd, cs, chat)] + [_np(hs) if has_mask else fused._dummy(x.dtype, 3)]
        ri_rows, rstd_rows = _np(ri.view(T * B, G)), _np(rstd.view(T * B, 3))
    else:  # nothing is kept: placeholders
        kept = [fused._dummy(x.dtype, 3)] * 5
        ri_rows = rstd_rows = fused._dummy(x.dtype, 2)
    mask_np = _np(mask) if has_mask else fused._NO_MASK
    gates_np, ln_np, h_np, c_np = _np(gates), _np(ln), _np(h), _np(c)
    bufs = [_np(out), *kept]
    with fused._OneBlasThread():
        _rows_pass("ln_input_forward", T * B, gates_np.reshape(T * B, G), ln_np, bias_np, train, ri_rows, rstd_rows)
        if stepwise:
            pw = fused._reorder(w_hh, B)
            for s in range(T):
                gh = fused._lp(h, pw, None, "none", [], "")
                K.ln_lstm_forward_step(T - 1 - s if reverse else s, gates_np, _np(gh), ln_np, h_np, c_np, mask_np,
                                       has_mask, train, *bufs)
        else:
            fused._loop("ln_lstm_forward", n, gates_np, _np(w_hh), ln_np, h_np, c_np, mask_np, has_mask, reverse,
                        train, *bufs)
    fused.calls["step_loop" if stepwise else "compiled_loop"] += 1
    fused.calls["forward"] += 1
    saved = (x, w_ih, gates, ri, rh, rstd, cs, chat, hs if has_mask else out, h0, c0, w_hh, ln, mask) if train else None
    return out, h, c, saved


class _Recurrence(torch.autograd.Function):
    """(x <f>[T, B, I], w_ih, b_ih, w_hh, ln, b_hh, h0, c0, mask <bool>[T, B] | None, reverse, stepwise, n)
    → (out <f>[T, B, H], h_n, c_n), through ``_forward``, keeping what backward needs."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, w_hh, ln, b_hh, h0, c0, mask, reverse, stepwise, n):
        out, h, c, saved = _forward(x, w_ih, b_ih, w_hh, ln, b_hh, h0, c0, mask, reverse, stepwise, n, True)
        ctx.save_for_backward(*saved, x, w_ih, b_ih, w_hh, ln, b_hh)  # the inputs themselves, for double backward
        ctx.reverse, ctx.stepwise, ctx.n = reverse, stepwise, n
        return out, h, c

    @staticmethod
    def backward(ctx, dout, dhn, dcn):
        x, w_ih, gates, ri, rh, rstd, cs, chat, hs, h0, c0, w_hh, ln, mask = ctx.saved_tensors[:-6]
        if torch.is_grad_enabled():  # create_graph=True: gradients that autograd can differentiate again
            x_in, w_ih_in, b_ih, w_hh_in, ln_in, b_hh = ctx.saved_tensors[-6:]
            inputs = [x_in, w_ih_in, b_ih, w_hh_in, ln_in, b_hh, h0, c0]
            spec = CellSpec("LSTM", w_hh.shape[1], layer_norm=True)
            weights = DirectionWeights(w_ih_in, w_hh_in, b_ih, b_hh, None, ln_in)
            grads = reference.differentiable_grads(
                spec, x_in, mask[..., None] if mask is not None else None, [weights], [(h0, c0)], ctx.reverse,
                [dout, dhn, dcn], [t if need else None for t, need in zip(inputs, ctx.needs_input_grad)])
            return (*grads, None, None, None, None)
        K = fused._kernels()
        T, B, G = gates.shape
        dh = dhn.clone(memory_format=torch.contiguous_format) if dhn is not None else torch.zeros_like(h0)
        dc = dcn.clone(memory_format=torch.contiguous_format) if dcn is not None else torch.zeros_like(c0)
        dout = dout.contiguous() if dout is not None else torch.zeros_like(hs)
        dg, drh = pool.empty(gates.shape, gates.dtype), pool.empty(gates.shape, gates.dtype)
        dpar = ln.new_zeros(ln.shape[0] + G)  # [dln | d(b_ih + b_hh)]
        has_mask = mask is not None
        saved = (_np(gates), _np(rh), _np(rstd), _np(cs), _np(chat), _np(c0.contiguous()))
        mask_np = _np(mask) if has_mask else fused._NO_MASK
        with fused._OneBlasThread():
            if ctx.stepwise:
                pw_t = fused._reorder(w_hh.t().contiguous(), B)  # drh_t W_hh = linear(drh_t, W_hh^T)
                tprev, tmp_np = -1, _np(dh)
                for s in range(T + 1):
                    t = -1 if s == T else (s if ctx.reverse else T - 1 - s)
                    K.ln_lstm_backward_step(t, tprev, tmp_np, ctx.reverse, *saved, _np(ln), _np(dh), _np(dc), mask_np,
                                            has_mask, _np(dout), _np(dg), _np(drh), _np(dpar))
                    if t >= 0:
                        tmp_np, tprev = _np(fused._lp(drh[t], pw_t, None, "none", [], "")), t
            else:
                fused._loop("ln_lstm_backward", ctx.n, *saved, _np(w_hh), _np(ln), _np(dh), _np(dc), mask_np, has_mask,
                            ctx.reverse, _np(dout), _np(dg), _np(drh), _np(dpar))
            # dg: from ∂L/∂(the gates' pre-activation) to ∂L/∂(x W_ih^T); the gains' and biases' sums
            _rows_pass("ln_input_backward", T * B, _np(dg), _np(ri), _np(rh), _np(rstd), _np(ln), mask_np, has_mask,
                       _np(dpar))
        need = ctx.needs_input_grad
        dg2 = dg.view(T * B, G)
        dx = dg2.mm(w_ih).view(x.shape) if need[0] else None
        dw_ih = fused._grad_input_weight(dg2, x.view(T * B, -1)) if need[1] else None
        dw_hh = fused._grad_recurrent(drh, hs, h0.detach(), ctx.reverse) if need[3] else None
        dbias = dpar[ln.shape[0]:]  # b_ih and b_hh sit side by side in every pre-activation
        fused.calls["backward"] += 1
        return (dx, dw_ih, dbias if need[2] else None, dw_hh, dpar[:ln.shape[0]] if need[4] else None,
                dbias.clone() if need[5] else None, dh if need[6] else None, dc if need[7] else None,
                None, None, None, None)


def run_layer(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None) -> tuple[Tensor, list[State]]:
    """Both directions of a layer-normalised LSTM layer: output <f>[T, B, D*H], final (h, c) per direction."""
    m = mask[:, :, 0].contiguous() if mask is not None else None
    n = fused._chunks(spec, x)
    stepwise = n == 1 and fused._step_loop(spec, x, None)
    outs, finals = [], []
    for d, (w, (h0, c0)) in enumerate(zip(weights, states)):
        args = (x, w.w_ih, w.b_ih, w.w_hh, w.ln, w.b_hh, h0, c0, m, d == 1, stepwise, n)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:8]):
            out, h, c = _Recurrence.apply(*args)
        else:
            with torch.no_grad():
                out, h, c, _ = _forward(*args, False)
        outs.append(out)
        finals.append((h, c))
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), finals
