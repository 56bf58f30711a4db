"""The layer-normalised LSTM (``rnnkit.cells.ln_lstm_step``) on the plan's loop, one autograd Function
per direction.

Per direction, x W_ih^T is one GEMM for every step at once, and its normalisation, gain and the
biases one compiled pass over every row at once (``ln_input_forward``, split across threads by rows):
the input term does not depend on the recurrence. The rest runs in one compiled loop
(``ln_lstm_forward``, split across threads by rows of the batch as the plain cells' loops are): per
step the recurrent mat-mul, then one pass per row that normalises the recurrent term, adds it, applies
the gates, updates the cell and normalises it. The backward through time is hand-written
(``ln_lstm_backward``) and keeps in the loop only what the recurrence needs: the gradient of the gates'
pre-activation and, through the recurrent term's normalisation, of h W_hh^T (W_hh's gradient is then
one GEMM over the sequence). A pass over every row after it (``ln_input_backward``) sums the gains' and
biases' gradients and carries the gradient through the input term's normalisation (W_ih's gradient, one
GEMM). On the plan's ``step_loop`` the time loop runs in Python with oneDNN's prepacked GEMM per step
and one compiled elementwise call (``*_step``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells import CellSpec, State
from .. import reference
from ..base import DirectionWeights
from ..buffers import pool
from . import runtime
from .drivers import Split, noise_arrays
from .gemm import (NO_MASK, OneBlasThread, add, as_np, contiguous, dummy, grad_input_weight, grad_recurrent, linear,
                   step_backward, step_forward)
from .plan import Plan
from .policies import Policy


def _rows_pass(kernel, rows: int, threads: int, policy: Policy, *args) -> None:
    """Run a pass over ``rows`` rows in chunks, one per thread, from ``policy.row_pass_min_rows`` a thread."""
    n = threads if rows >= policy.row_pass_min_rows * threads else 1
    runtime.loops().set_threads(n)
    kernel(n, *args)


def _forward(p: Plan, policy: Policy, x, w_ih, b_ih, w_hh, ln, b_hh, h0, c0, mask, reverse, train, noise=None):
    """One direction: (x <f>[T, B, I], its weights, h0, c0, mask <bool>[T, B] | None, ...) → out
    <f>[T, B, H], h_n, c_n and, with train, what backward needs (a tuple, ``_Recurrence``'s order, and
    zoneout's zoned c sequence or None); without it, None (inference passes placeholders for the
    buffers the loop would keep). noise: the regularisers' masks (``rnnkit.cells.Noise``) or None."""
    K = runtime.loops()
    T, B, I = x.shape
    G = w_ih.shape[0]
    H = G // 4
    x, w_ih, w_hh, ln = contiguous(x), contiguous(w_ih), contiguous(w_hh), contiguous(ln)
    gates = linear(x.view(T * B, I), w_ih, None, policy, pooled=True).view(T, B, G)  # becomes the activated gates
    bias = add(b_ih, b_hh)
    bias_np = as_np(bias.detach().contiguous() if bias is not None else gates.new_zeros(G))
    h, c = (s.detach().clone(memory_format=torch.contiguous_format) for s in (h0, c0))
    out = gates.new_empty(T, B, H)
    has_mask = mask is not None
    if train:
        ri, rh, rstd = (pool.empty((T, B, width), x.dtype) for width in (G, G, 3))
        cs, chat = pool.empty((T, B, H), x.dtype), pool.empty((T, B, H), x.dtype)
        hs = pool.empty((T, B, H), x.dtype) if has_mask else None  # without a mask, out is the state sequence
        kept = [as_np(t) for t in (rh, rstd, cs, chat)] + [as_np(hs) if has_mask else dummy(x.dtype, 3)]
        ri_rows, rstd_rows = as_np(ri.view(T * B, G)), as_np(rstd.view(T * B, 3))
    else:  # nothing is kept: placeholders
        kept = [dummy(x.dtype, 3)] * 5
        ri_rows = rstd_rows = dummy(x.dtype, 2)
    mask_np = as_np(mask) if has_mask else NO_MASK
    gates_np, ln_np, h_np, c_np = as_np(gates), as_np(ln), as_np(h), as_np(c)
    bufs = [as_np(out), *kept]
    rd, zh, zc = noise_arrays(noise, T, B, H, H, x.dtype)
    cz = pool.empty((T, B, H), x.dtype) if (train and zc.shape[0]) else None
    with OneBlasThread():
        _rows_pass(K.ln.input_forward, T * B, p.call.threads, policy, gates_np.reshape(T * B, G), ln_np, bias_np,
                   train, ri_rows, rstd_rows)
        if p.stepwise:
            step_forward(T, reverse, h, w_hh, lambda t, gh: K.ln.forward_step(
                t, gates_np, gh, ln_np, h_np, c_np, mask_np, has_mask, train, *bufs))
        else:
            w = as_np(contiguous(w_hh.t())) if p.transposed else as_np(w_hh)
            Split(K.ln.forward, K.ln.forward_par)(p.chunks, gates_np, w, p.transposed, ln_np, h_np, c_np, mask_np,
                                                  has_mask, reverse, train, *bufs, rd, zh, zc,
                                                  as_np(cz) if cz is not None else zc)
    saved = (x, w_ih, gates, ri, rh, rstd, cs, chat, hs if has_mask else out, h0, c0, w_hh, ln, mask) if train else None
    return out, h, c, (saved, cz) if train else None


class _Recurrence(torch.autograd.Function):
    """(plan, policy, x <f>[T, B, I], w_ih, b_ih, w_hh, ln, b_hh, h0, c0, mask <bool>[T, B] | None, reverse)
    → (out <f>[T, B, H], h_n, c_n), through ``_forward``, keeping what backward needs; a last argument
    noise: the regularisers' masks or None."""

    @staticmethod
    def forward(ctx, p, policy, x, w_ih, b_ih, w_hh, ln, b_hh, h0, c0, mask, reverse, noise):
        out, h, c, (saved, cz) = _forward(p, policy, x, w_ih, b_ih, w_hh, ln, b_hh, h0, c0, mask, reverse, True,
                                          noise)
        ctx.save_for_backward(*saved, x, w_ih, b_ih, w_hh, ln, b_hh)  # the inputs themselves, for double backward
        ctx.plan, ctx.policy, ctx.reverse, ctx.noise, ctx.cz = p, policy, reverse, noise, cz
        return out, h, c

    @staticmethod
    def backward(ctx, dout, dhn, dcn):
        x, w_ih, gates, ri, rh, rstd, cs, chat, hs, h0, c0, w_hh, ln, mask = ctx.saved_tensors[:-6]
        need = ctx.needs_input_grad[2:]
        if torch.is_grad_enabled():  # create_graph=True: gradients that autograd can differentiate again
            x_in, w_ih_in, b_ih, w_hh_in, ln_in, b_hh = ctx.saved_tensors[-6:]
            inputs = [x_in, w_ih_in, b_ih, w_hh_in, ln_in, b_hh, h0, c0]
            spec = CellSpec("LSTM", w_hh.shape[1], layer_norm=True)
            weights = DirectionWeights(w_ih_in, w_hh_in, b_ih, b_hh, None, ln_in)
            grads = reference.differentiable_grads(
                spec, x_in, mask[..., None] if mask is not None else None, [weights], [(h0, c0)], ctx.reverse,
                [dout, dhn, dcn], [t if n else None for t, n in zip(inputs, need)],
                [ctx.noise] if ctx.noise is not None else None)
            return (None, None, *grads, None, None, None)
        K = runtime.loops()
        p = ctx.plan
        T, B, G = gates.shape
        dh = dhn.clone(memory_format=torch.contiguous_format) if dhn is not None else torch.zeros_like(h0)
        dc = dcn.clone(memory_format=torch.contiguous_format) if dcn is not None else torch.zeros_like(c0)
        dout = dout.contiguous() if dout is not None else torch.zeros_like(hs)
        dg, drh = pool.empty(gates.shape, gates.dtype), pool.empty(gates.shape, gates.dtype)
        dpar = ln.new_zeros(ln.shape[0] + G)  # [dln | d(b_ih + b_hh)]
        has_mask = mask is not None
        saved = (as_np(gates), as_np(rh), as_np(rstd), as_np(cs), as_np(chat), as_np(c0.contiguous()))
        mask_np = as_np(mask) if has_mask else NO_MASK
        tail = (as_np(dout), as_np(dg), as_np(drh), as_np(dpar))
        ln_np, dh_np, dc_np = as_np(ln), as_np(dh), as_np(dc)
        rd, zh, zc = noise_arrays(ctx.noise, T, B, G // 4, G // 4, dg.dtype)
        cz = as_np(ctx.cz) if ctx.cz is not None else zc
        with OneBlasThread():
            if p.stepwise:
                step_backward(T, ctx.reverse, dh_np, w_hh, B, lambda t: drh[t], lambda t, tprev, tmp:
                              K.ln.backward_step(t, tprev, tmp, ctx.reverse, *saved, ln_np, dh_np, dc_np, mask_np,
                                                 has_mask, *tail))
            else:
                Split(K.ln.backward, K.ln.backward_par)(p.chunks, *saved, as_np(w_hh), ln_np, dh_np, dc_np,
                                                        mask_np, has_mask, ctx.reverse, *tail, rd, zh, zc, cz)
            # dg: from ∂L/∂(the gates' pre-activation) to ∂L/∂(x W_ih^T); the gains' and biases' sums
            _rows_pass(K.ln.input_backward, T * B, p.call.threads, ctx.policy, as_np(dg), as_np(ri), as_np(rh),
                       as_np(rstd), ln_np, mask_np, has_mask, as_np(dpar))
        dg2 = dg.view(T * B, G)
        dx = dg2.mm(w_ih).view(x.shape) if need[0] else None
        dw_ih = grad_input_weight(dg2, x.view(T * B, -1), ctx.policy) if need[1] else None
        rec = ctx.noise.recurrent if ctx.noise is not None else None  # W_hh saw h times its mask
        hs_in, h0_in = (hs, h0.detach()) if rec is None else (hs * rec, h0.detach() * rec)
        dw_hh = grad_recurrent(drh, hs_in, h0_in, ctx.reverse) if need[3] else None
        dbias = dpar[ln.shape[0]:]  # b_ih and b_hh sit side by side in every pre-activation
        return (None, None, dx, dw_ih, dbias if need[2] else None, dw_hh, dpar[:ln.shape[0]] if need[4] else None,
                dbias.clone() if need[5] else None, dh if need[6] else None, dc if need[7] else None, None, None,
                None)


def run_layer(p: Plan, policy: Policy, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None, noise: list | None = None) -> tuple[Tensor, list[State]]:
    """Both directions of a layer-normalised LSTM layer: output <f>[T, B, D*H], final (h, c) per direction;
    noise: the regularisers' masks per direction, or None."""
    m = mask[:, :, 0].contiguous() if mask is not None else None
    outs, finals = [], []
    for d, (w, (h0, c0)) in enumerate(zip(weights, states)):
        args = (x, w.w_ih, w.b_ih, w.w_hh, w.ln, w.b_hh, h0, c0, m, d == 1)
        nd = noise[d] if noise else None
        if p.call.training:
            out, h, c = _Recurrence.apply(p, policy, *args, nd)
        else:
            with torch.no_grad():
                out, h, c, _ = _forward(p, policy, *args, False, nd)
        outs.append(out)
        finals.append((h, c))
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), finals
