"""Helpers of the small-training calls (``<cell>.small_forward`` / ``small_backward``): a whole direction
of a layer, forward or backward, in one compiled call: the input projection, the time loop and
(backward) every gradient, with no torch operator in between. For training calls so small that the
torch operators around the loops (~25 a direction) would cost more than the arithmetic (the policy's
``small_train_max_macs``). Unmasked sequences; RNN, LSTM without projection, GRU with reset_after. The
time loops are the layer's own (each cell's ``_forward_rows`` and ``_backward_rows``); out
<f>[T, B, D*P] holds the state sequence at columns off:off+P."""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from .common import consts, dot


@register_jitable
def project(x, w_ih, b_ih, b_hh, folded, gates):
    """gates[t] = x[t] W_ih^T + b_ih + b_hh, b_hh added to the first ``folded`` columns only (GRU keeps
    b_hn apart); x <f>[T, B, I], w_ih <f>[G, I], gates <f>[T, B, G]."""
    ab = consts(gates)
    for t in range(x.shape[0]):
        g = gates[t]
        dot(x[t], w_ih, g, ab, False, True)
        for b in range(g.shape[0]):
            gb = g[b]
            for j in range(folded):
                gb[j] += b_ih[j] + b_hh[j]
            for j in range(folded, gb.shape[0]):
                gb[j] += b_ih[j]


@register_jitable
def small_grads(x, dgi, dgh, out, off, h0, reverse, w_ih, dx, dw_ih, dw_hh, db_ih, db_hh):
    """Add one direction's share to the gradients: dx[t] += dgi[t] W_ih, dW_ih += Σ_t dgi[t]^T x[t],
    db_ih += Σ dgi; dW_hh += Σ_t dgh[t]^T h_prev(t) and db_hh += Σ dgh, where dgi <f>[T, B, G] is the
    gradient of the input pre-activations and dgh that of the recurrent ones (the same array but for
    GRU); h_prev(t) is the state before step t: h0, or out[t -/+ 1, :, off:off+P] (reverse: +)."""
    T, B, G = dgi.shape
    P = h0.shape[1]
    for t in range(T):
        tp = t + 1 if reverse else t - 1
        for b in range(B):
            hp = h0[b] if tp < 0 or tp >= T else out[tp, b, off:off + P]
            gi, gh, xb, dxb = dgi[t, b], dgh[t, b], x[t, b], dx[t, b]
            for j in range(G):
                a, c = gi[j], gh[j]
                db_ih[j] += a
                db_hh[j] += c
                wj, rj, hj = w_ih[j], dw_ih[j], dw_hh[j]
                for k in range(xb.shape[0]):
                    rj[k] += a * xb[k]
                    dxb[k] += a * wj[k]
                for k in range(P):
                    hj[k] += c * hp[k]


@register_jitable
def no_mask():
    return np.zeros((1, 1), np.bool_)
