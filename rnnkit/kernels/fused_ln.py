"""The fused CPU path of the layer-normalised LSTM (``rnnkit.cells.ln_lstm_step``).

Per direction, the input term ``LN(x W_ih^T)·γ_ih + b_ih`` is computed for every step at once
with torch ops (one GEMM and one batched layer norm with b_ih as its shift; autograd differentiates
it); b_hh is added in the loop. The recurrence runs in one compiled loop
(``fused_loops.ln_lstm_forward``, split across threads by rows of the batch as the plain cells'
loops are): per step the recurrent mat-mul, then one
pass per row for its normalisation, the gates, the cell and the cell's normalisation. The backward
through time is hand-written (``ln_lstm_backward``); W_hh's gradient is one GEMM over the sequence.
For large float32 shapes the time loop runs in Python with oneDNN's prepacked GEMM per step and
one compiled elementwise call (``*_step``), under the plain cells' rule (``fused._step_loop``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cells import CellSpec, State, ln_lstm_project
from . import fused
from .base import DirectionWeights
from .fused import _np


class _Recurrence(torch.autograd.Function):
    """(gates <f>[T, B, 4H], w_hh, ln, b_hh, h0, c0, mask <bool>[T, B] | None, reverse, stepwise, n, train)
    → (out <f>[T, B, H], h_n, c_n); stepwise: drive the loop from Python with oneDNN's GEMM; else the
    compiled loop split into n chunks of the batch (``fused._loop``). b_hh is added inside the loop.
    train: keep what backward needs (decided by the caller: inside ``forward`` autograd is always off,
    and ``ctx.needs_input_grad`` is set under ``torch.no_grad`` too)."""

    @staticmethod
    def forward(ctx, gates, w_hh, ln, b_hh, h0, c0, mask, reverse, stepwise, n, train):
        K = fused._kernels()
        T, B, G = gates.shape
        H = G // 4
        # becomes the activated gates: in inference the input term's own (fresh) buffer, else a copy
        gates = gates.detach().clone(memory_format=torch.contiguous_format) if train else gates.detach().contiguous()
        h, c = h0.detach().clone(memory_format=torch.contiguous_format), c0.detach().clone(
            memory_format=torch.contiguous_format)
        out = gates.new_empty(T, B, H)
        kept = (T, B) if train else (1, 1)
        rh, rstd = gates.new_empty(*kept, G), gates.new_empty(*kept, 2)
        cs, chat, hs = (gates.new_empty(*kept, H) for _ in range(3))
        has_mask = mask is not None
        mask_np = _np(mask) if has_mask else fused._NO_MASK
        w_hh, ln = w_hh.detach().contiguous(), ln.detach().contiguous()
        b_hh_np = _np(b_hh.detach().contiguous() if b_hh is not None else gates.new_zeros(G))
        gates_np, ln_np, h_np, c_np = _np(gates), _np(ln), _np(h), _np(c)
        bufs = [_np(t) for t in (out, rh, rstd, cs, chat, hs)]
        with fused._OneBlasThread():
            if stepwise:
                pw = fused._reorder(w_hh, B)
                for s in range(T):
                    gh = fused._lp(h, pw, None, "none", [], "")
                    K.ln_lstm_forward_step(T - 1 - s if reverse else s, gates_np, _np(gh), ln_np, b_hh_np, h_np, c_np,
                                           mask_np, has_mask, train, *bufs)
            else:
                fused._loop("ln_lstm_forward", n, gates_np, _np(w_hh), ln_np, b_hh_np, h_np, c_np, mask_np, has_mask,
                            reverse, train, *bufs)
        fused.calls["step_loop" if stepwise else "compiled_loop"] += 1
        if train:
            ctx.save_for_backward(gates, rh, rstd, cs, chat, hs, h0, c0, w_hh, ln, mask)
            ctx.reverse, ctx.stepwise, ctx.n = reverse, stepwise, n
        fused.calls["forward"] += 1
        return out, h, c

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dhn, dcn):
        K = fused._kernels()
        gates, rh, rstd, cs, chat, hs, h0, c0, w_hh, ln, mask = ctx.saved_tensors
        dh = dhn.clone(memory_format=torch.contiguous_format) if dhn is not None else torch.zeros_like(h0)
        dc = dcn.clone(memory_format=torch.contiguous_format) if dcn is not None else torch.zeros_like(c0)
        dout = dout.contiguous() if dout is not None else torch.zeros_like(hs)
        dg, drh = torch.empty_like(gates), torch.empty_like(rh)
        dln = torch.zeros_like(ln)
        has_mask = mask is not None
        saved = (_np(gates), _np(rh), _np(rstd), _np(cs), _np(chat), _np(c0.contiguous()))
        mask_np = _np(mask) if has_mask else fused._NO_MASK
        with fused._OneBlasThread():
            if ctx.stepwise:
                T, B = gates.shape[:2]
                pw_t = fused._reorder(w_hh.t().contiguous(), B)  # drh_t W_hh = linear(drh_t, W_hh^T)
                tprev, tmp_np = -1, _np(dh)
                for s in range(T + 1):
                    t = -1 if s == T else (s if ctx.reverse else T - 1 - s)
                    K.ln_lstm_backward_step(t, tprev, tmp_np, ctx.reverse, *saved, _np(ln), _np(dh), _np(dc), mask_np,
                                            has_mask, _np(dout), _np(dg), _np(drh), _np(dln))
                    if t >= 0:
                        tmp_np, tprev = _np(fused._lp(drh[t], pw_t, None, "none", [], "")), t
            else:
                fused._loop("ln_lstm_backward", ctx.n, *saved, _np(w_hh), _np(ln), _np(dh), _np(dc), mask_np, has_mask,
                            ctx.reverse, _np(dout), _np(dg), _np(drh), _np(dln))
        need = ctx.needs_input_grad
        dw_hh = fused._grad_recurrent(drh, hs, h0.detach(), ctx.reverse) if need[1] else None
        fused.calls["backward"] += 1
        db_hh = dg.sum((0, 1)) if need[3] else None  # b_hh sits beside the input term in every pre-activation
        return (dg if need[0] else None, dw_hh, dln if need[2] else None, db_hh, dh if need[4] else None,
                dc if need[5] else None, None, None, None, None, None)


def run_layer(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None) -> tuple[Tensor, list[State]]:
    """Both directions of a layer-normalised LSTM layer: output <f>[T, B, D*H], final (h, c) per direction."""
    m = mask[:, :, 0].contiguous() if mask is not None else None
    n = fused._chunks(spec, x)
    stepwise = n == 1 and fused._step_loop(spec, x, None)
    outs, finals = [], []
    for d, (w, (h0, c0)) in enumerate(zip(weights, states)):
        gates = ln_lstm_project(x, w.w_ih, w.b_ih, w.ln)
        train = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                for t in (gates, w.w_hh, w.ln, w.b_hh, h0, c0))
        out, h, c = _Recurrence.apply(gates, w.w_hh, w.ln, w.b_hh, h0, c0, m, d == 1, stepwise, n, train)
        outs.append(out)
        finals.append((h, c))
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), finals
