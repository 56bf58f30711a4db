"""The Elman RNN's loops (tanh or ReLU): the sequence forward and backward, their one-step forms for the
step loop, the small-training calls and the streaming stack step (conventions: the package's docstring)."""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from .common import (chunk, consts, dot, get_rows, merge_set, one_, one_plain_row, past_end, put_rows, tanh_,
                     transposed, vec_mat, zero_)
from .jit import jit, parallel
from .noise import carry, dot_dropped, noise_rows, off2, off3
from .small import no_mask, project, small_grads
from .stream import kernels, layer_weights, put_top, step_rows, units


@register_jitable
def _fwd_ew(t, b0, gates, gh, h, relu, mask, has_mask, keep_h, out, off, hs, zh):
    """h = act(gates[t] + gh) on the valid rows, into h and out[t]; with zoneout (zh of size 0: off) in
    the same pass, h̃_t = act(...) into gates[t] (the backward's activation derivative) and
    h_t = h̃_t + z ⊙ (h_{t-1} - h̃_t)."""
    B, H = h.shape
    zero = one_(h) - one_(h)
    has_zh = zh.shape[0] > 0
    for b in range(B):
        ob = out[t, b0 + b, off:off + H]
        if past_end(t, b0 + b, ob, mask, has_mask):
            continue
        g = gates[t, b0 + b]
        ghb = gh[b]
        hb = h[b]
        if has_zh:
            zb = zh[t, b0 + b]
            for j in range(H):
                v = g[j] + ghb[j]
                v = (v if v > 0 else zero) if relu else tanh_(v)
                g[j] = v
                v = v + zb[j] * (hb[j] - v)
                hb[j] = v
                ob[j] = v
        elif relu:
            for j in range(H):
                v = g[j] + ghb[j]
                v = v if v > 0 else zero
                hb[j] = v
                ob[j] = v
        else:
            for j in range(H):
                v = tanh_(g[j] + ghb[j])
                hb[j] = v
                ob[j] = v
    if keep_h:
        put_rows(hs[t], b0, h)


@register_jitable
def _forward_rows(k, n, gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs, rd, zh):
    b0, b1 = chunk(k, n, h.shape[0])
    T = gates.shape[0]
    ab = consts(gates)
    hc = get_rows(h, b0, b1)
    gh = np.empty(hc.shape, h.dtype)
    hin, _ = noise_rows(hc, rd, off3(gates))  # zoneout needs no copy of the old state
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot_dropped(hc, rd, b0, hin, w_hh, gh, ab, not wt)
        _fwd_ew(t, b0, gates, gh, hc, relu, mask, has_mask, keep_h, out, off, hs, zh)
    put_rows(h, b0, hc)


@register_jitable
def _forward_one(gates, w_t, h, relu, reverse, out, off):
    """``forward`` at batch 1 (``common.one_plain_row``), w_t = W_hh^T; in training too (backward reads
    only the outputs)."""
    T, _, H = gates.shape
    hv = h[0]
    gh = np.empty(H, h.dtype)
    zero = one_(h) - one_(h)
    for s in range(T):
        t = T - 1 - s if reverse else s
        vec_mat(hv, w_t, gh, False)
        g, ob = gates[t, 0], out[t, 0, off:off + H]
        for j in range(H):
            v = g[j] + gh[j]
            v = (v if v > 0 else zero) if relu else tanh_(v)
            hv[j] = v
            ob[j] = v


@register_jitable
def _forward(gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs, rd, zh):
    if wt and one_plain_row(h, has_mask, rd, zh):  # (keep_h needs a mask)
        _forward_one(gates, w_hh, h, relu, reverse, out, off)
    else:
        _forward_rows(0, 1, gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs, rd, zh)


@jit
def forward(gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs, rd, zh):
    """Elman RNN over the sequence. w_hh <f>[H, H] is W_hh, or W_hh^T when wt (see ``dot``). rd, zh:
    recurrent dropout and zoneout (``noise``; size 0 when off); with zoneout, gates keep h̃_t."""
    _forward(gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs, rd, zh)


forward_par = parallel(_forward_rows)
"""``forward`` with the batch in n chunks, one per thread."""


@jit
def forward_step(t, gates, gh, h, relu, mask, has_mask, keep_h, out, off, hs):
    """One step of ``forward`` given gh = h W_hh^T."""
    _fwd_ew(t, 0, gates, gh, h, relu, mask, has_mask, keep_h, out, off, hs, off3(gates))


@register_jitable
def _bwd_ew(t, b0, hseq, hoff, dh, relu, mask, has_mask, dout, doff, dg, ht, zh, keep):
    """dg[t] from dh + dout[t]; with zoneout (zh), in the same pass, zoneout's share z ⊙ (dh + dout[t])
    into keep (for h_{t-1}) and the activation derivative at h̃_t from ht (the kept gates)."""
    B, H = dh.shape
    has_zh = zh.shape[0] > 0
    one = one_(dg)
    zero = one - one
    for b in range(B):
        dgb = dg[t, b0 + b]
        if past_end(t, b0 + b, dgb, mask, has_mask):
            continue
        do = dout[t, b0 + b, doff:doff + H]
        dhb = dh[b]
        if has_zh:
            hv = ht[t, b0 + b]
            zb = zh[t, b0 + b]
            kb = keep[b]
            for j in range(H):
                d = dhb[j] + do[j]
                kj = zb[j] * d
                kb[j] = kj
                d = d - kj
                if relu:
                    dgb[j] = d if hv[j] > 0 else zero
                else:
                    dgb[j] = d * (one - hv[j] * hv[j])
            continue
        hv = hseq[t, b0 + b, hoff:hoff + H]
        if relu:
            for j in range(H):
                dgb[j] = (dhb[j] + do[j]) if hv[j] > 0 else zero
        else:
            for j in range(H):
                dgb[j] = (dhb[j] + do[j]) * (one - hv[j] * hv[j])


@register_jitable
def _backward_rows(k, n, hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg, ht, rd, zh):
    b0, b1 = chunk(k, n, dh.shape[0])
    T, ab = dg.shape[0], consts(dg)
    dhc = get_rows(dh, b0, b1)
    tmp = np.empty(dhc.shape, dh.dtype)
    keep = np.empty(dhc.shape if zh.shape[0] > 0 else (0, 0), dh.dtype)  # zoneout's share of the old state
    for s in range(T):
        t = s if reverse else T - 1 - s
        _bwd_ew(t, b0, hseq, hoff, dhc, relu, mask, has_mask, dout, doff, dg, ht, zh, keep)
        dot(dg[t, b0:b1], w_hh, tmp, ab, False, False)
        carry(t, b0, dhc, tmp, rd, keep, dhc, keep[:0], mask, has_mask)
    put_rows(dh, b0, dhc)


@register_jitable
def _backward_one(hseq, hoff, w_hh, dh, relu, reverse, dout, doff, dg):
    """``backward`` at batch 1 (``common.one_plain_row``)."""
    T, _, H = dg.shape
    one = one_(dg)
    zero = one - one
    dhb = dh[0]
    for s in range(T):
        t = s if reverse else T - 1 - s
        hv = hseq[t, 0, hoff:hoff + H]
        do = dout[t, 0, doff:doff + H]
        dgb = dg[t, 0]
        for j in range(H):
            d = dhb[j] + do[j]
            dgb[j] = (d if hv[j] > 0 else zero) if relu else d * (one - hv[j] * hv[j])
        vec_mat(dgb, w_hh, dhb, False)


@register_jitable
def _backward(hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg, ht, rd, zh):
    if one_plain_row(dh, has_mask, rd, zh):
        _backward_one(hseq, hoff, w_hh, dh, relu, reverse, dout, doff, dg)
    else:
        _backward_rows(0, 1, hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg, ht, rd, zh)


@jit
def backward(hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg, ht, rd, zh):
    """Backward of ``forward``: dg <f>[T, B, H] the pre-activation gradients. hseq[t, :,
    hoff:hoff+H] is the state after step t; with zoneout (zh), ht <f>[T, B, H] holds h̃_t."""
    _backward(hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg, ht, rd, zh)


backward_par = parallel(_backward_rows)
"""``backward`` with the batch in n chunks, one per thread."""


@jit
def backward_step(t, tprev, tmp, hseq, hoff, dh, relu, mask, has_mask, dout, doff, dg):
    """Finish step tprev (tmp = dg[tprev] W_hh) if tprev >= 0, then step t's elementwise if t >= 0."""
    if tprev >= 0:
        merge_set(tprev, 0, dh, tmp, mask, has_mask)
    if t >= 0:
        _bwd_ew(t, 0, hseq, hoff, dh, relu, mask, has_mask, dout, doff, dg, dg, off3(dg), off2(dg))


@jit
def small_forward(x, w_ih, b_ih, b_hh, w_hh, h, relu, reverse, out, off):
    """One direction of an Elman RNN layer over x <f>[T, B, I] from h <f>[B, H] (updated in place)."""
    T, B, _ = x.shape
    gates = np.empty((T, B, h.shape[1]), x.dtype)
    project(x, w_ih, b_ih, b_hh, gates.shape[2], gates)
    wt = B == 1  # the one-row loop, on W_hh^T
    _forward(gates, transposed(w_hh) if wt else w_hh, wt, h, relu, no_mask(), False, reverse, False, out, off,
             np.empty((1, 1, 1), x.dtype), off2(x), off3(x))


@jit
def small_backward(x, out, off, h0, w_ih, w_hh, dh, relu, reverse, dout, dx, dw_ih, dw_hh, db_ih, db_hh):
    """Backward of ``small_forward``: adds to dx and the weight gradients; dh <f>[B, H], the final
    state's gradient, becomes h0's."""
    dg = np.empty((x.shape[0], x.shape[1], h0.shape[1]), x.dtype)
    _backward(out, off, w_hh, dh, relu, no_mask(), False, reverse, dout, off, dg, dg, off2(x), off3(x))
    small_grads(x, dg, dg, out, off, h0, reverse, w_ih, dx, dw_ih, dw_hh, db_ih, db_hh)


@register_jitable
def _stream_rows(ptrs, x_addr, y_addr, steps, batch, b0, h, unused, relu):
    """Steps of an Elman RNN stack (flag: relu) (see ``loops.stream``)."""
    L, B, H = h.shape
    ab = consts(h)
    zero = one_(h) - one_(h)
    gates = np.empty((B, H), h.dtype)
    for t in range(steps):
        xin, yout = step_rows(ptrs, x_addr, y_addr, t, batch, b0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = layer_weights(ptrs[layer], h, H, H)
            dot(xin, w_ih, gates, ab, False, True)
            dot(h[layer], w_hh, gates, ab, True, True)
            for b in range(B):
                g = gates[b]
                ob = h[layer, b]
                for j in range(H):
                    g[j] = g[j] + bi[j] + bh[j]
                if relu:
                    for j in range(H):
                        ob[j] = g[j] if g[j] > 0 else zero
                else:
                    for j in range(H):
                        ob[j] = tanh_(g[j])
            xin = h[layer]
        put_top(yout, h)


stream, stream_par = kernels(_stream_rows, False)


@register_jitable
def _unit_update(gx, gh, hold, h, c, layer, u0, u1, relu):
    """``stream_units``' step: h = tanh or ReLU of gx + gh on units u0:u1."""
    zero = one_(h) - one_(h)
    a, b, hu = gx[u0:u1], gh[u0:u1], h[u0:u1]
    for j in range(u1 - u0):
        v = a[j] + b[j]
        hu[j] = (v if v > 0 else zero) if relu else tanh_(v)


stream_units = units(_unit_update, 1)
"""``stream`` at batch 1 with each layer's units in n chunks, one per thread (flag: relu)."""
