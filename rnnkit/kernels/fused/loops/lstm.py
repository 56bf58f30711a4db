"""The LSTM's loops (gate order i, f, g, o; optional projection W_hr): the sequence forward and backward,
their one-step forms, the small-training calls and the streaming stack step; ``gate_grads`` and
``activate_gates`` are shared with the layer-normalised LSTM (``ln``)."""

from __future__ import annotations

import numpy as np
from numba import carray
from numba.extending import register_jitable

from .common import (add_dout, chunk, consts, dot, get_rows, merge_set, one_, one_plain_row, past_end, prev_step,
                     put_rows, set_, sigmoid_, tanh_, transposed, vec_mat, zero_)
from .jit import jit, parallel
from .noise import carry, dot_dropped, noise_rows, off2, off3, state_out, zone, zone_split
from .small import no_mask, project, small_grads
from .stream import at_address, kernels, layer_weights, put_top, step_rows, units


@register_jitable
def _fwd_ew(t, b0, gates, gh, hdst, c, mask, has_mask, train, write_out, out, off, cs):
    """Gates, c_t and o·tanh(c_t) into hdst (h, or the pre-projection buffer); the output too when
    write_out (no projection)."""
    B, H = c.shape
    for b in range(B):
        if has_mask and not mask[t, b0 + b]:
            if write_out:
                zero_(out[t, b0 + b, off:off + H])
            if train:
                set_(cs[t, b0 + b], c[b])
            continue
        g = gates[t, b0 + b]
        ghb = gh[b]
        cb = c[b]
        hb = hdst[b]
        for j in range(2 * H):
            g[j] = sigmoid_(g[j] + ghb[j])
        for j in range(H):
            g[2 * H + j] = tanh_(g[2 * H + j] + ghb[2 * H + j])
        for j in range(H):
            g[3 * H + j] = sigmoid_(g[3 * H + j] + ghb[3 * H + j])
        for j in range(H):
            cv = g[H + j] * cb[j] + g[j] * g[2 * H + j]
            cb[j] = cv
            hb[j] = g[3 * H + j] * tanh_(cv)
        if write_out:
            set_(out[t, b0 + b, off:off + H], hb)
        if train:
            set_(cs[t, b0 + b], cb)


@register_jitable
def _forward_rows(k, n, gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs, rd, zh, zc,
                  cz):
    b0, b1 = chunk(k, n, h.shape[0])
    T, _, G = gates.shape
    H = G // 4
    B = b1 - b0
    P = h.shape[1]
    proj = w_hr.shape[0] > 0
    ab = consts(gates)
    hc = get_rows(h, b0, b1)
    cc = get_rows(c, b0, b1)
    gh = np.empty((B, G), gates.dtype)
    hu = np.empty((B, H if proj else 0), gates.dtype)  # o·tanh(c) before the projection
    hp = np.empty((B, P if proj else 0), gates.dtype)
    # recurrent dropout and zoneout (``noise``): h as it enters W_hh, the old states
    has_zh, has_zc = zh.shape[0] > 0, zc.shape[0] > 0
    hin, hold = noise_rows(hc, rd, zh)
    cold = np.empty((B, H) if has_zc else (0, 0), gates.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot_dropped(hc, rd, b0, hin, w_hh, gh, ab, not wt)
        if has_zh:
            hold[:] = hc
        if has_zc:
            cold[:] = cc
        _fwd_ew(t, b0, gates, gh, hu if proj else hc, cc, mask, has_mask, train, not proj, out, off, cs)
        if has_zc:  # cs keeps c̃_t (for tanh in backward), cz the zoned c_t (the next step's c_{t-1})
            zone(t, b0, zc, cold, cc, mask, has_mask)
            if train:
                put_rows(cz[t], b0, cc)
        if proj:
            dot(hu, w_hr, hp, ab, False, True)
            for b in range(B):
                ob = out[t, b0 + b, off:off + P]
                if past_end(t, b0 + b, ob, mask, has_mask):
                    continue
                set_(hc[b], hp[b])
                set_(ob, hp[b])
        # zoneout of h after the projection: h_t = z ⊙ h_{t-1} + (1 - z) ⊙ h̃_t, the output too
        state_out(t, b0, zh, hold, hc, out, off, mask, has_mask, hs, train and has_mask)
    put_rows(h, b0, hc)
    put_rows(c, b0, cc)


@register_jitable
def _forward_one(gates, w_t, h, c, reverse, train, out, off, cs):
    """``forward`` at batch 1 without projection (``common.one_plain_row``), w_t = W_hh^T; in training
    gates[t] keep the activated gates and cs[t] keeps c_t."""
    T, _, G = gates.shape
    H = G // 4
    hv, cv = h[0], c[0]
    gh = np.empty(G, h.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        vec_mat(hv, w_t, gh, False)
        g, ob = gates[t, 0], out[t, 0, off:off + H]
        for j in range(H):
            i = sigmoid_(g[j] + gh[j])
            f = sigmoid_(g[H + j] + gh[H + j])
            u = tanh_(g[2 * H + j] + gh[2 * H + j])
            o = sigmoid_(g[3 * H + j] + gh[3 * H + j])
            cj = f * cv[j] + i * u
            cv[j] = cj
            if train:
                g[j], g[H + j], g[2 * H + j], g[3 * H + j] = i, f, u, o
                cs[t, 0, j] = cj
            v = o * tanh_(cj)
            hv[j] = v
            ob[j] = v


@register_jitable
def _forward(gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs, rd, zh, zc, cz):
    if wt and one_plain_row(h, has_mask, rd, zh) and zc.shape[0] == 0 and w_hr.shape[0] == 0:
        _forward_one(gates, w_hh, h, c, reverse, train, out, off, cs)
    else:
        _forward_rows(0, 1, gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs, rd, zh,
                      zc, cz)


@jit
def forward(gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs, rd, zh, zc, cz):
    """LSTM, gate order i, f, g, o. w_hh <f>[4H, P] is W_hh, or W_hh^T when wt; w_hr <f>[P, H] = W_hr
    or shape (0, 0) without projection. train: keep activated gates in ``gates``, c_t in
    cs <f>[T, B, H] and, with a mask, h_t in hs. rd, zh, zc: recurrent dropout and zoneout of h and c
    (``noise``; size 0 when off); with zc, cs keeps c̃_t and cz <f>[T, B, H] the zoned c_t."""
    _forward(gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs, rd, zh, zc, cz)


forward_par = parallel(_forward_rows)
"""``forward`` with the batch in n chunks, one per thread."""


@jit
def forward_step(t, gates, gh, h, c, mask, has_mask, train, out, off, hs, cs):
    """One step of ``forward`` (no projection) given gh = h W_hh^T."""
    _fwd_ew(t, 0, gates, gh, h, c, mask, has_mask, train, True, out, off, cs)
    if train and has_mask:
        put_rows(hs[t], 0, h)


@register_jitable
def gate_grads(g, dcv, dho, tc, cp, dcb, dgb):
    """One row of an LSTM's backward from the activated gates g <f>[4H] (i, f, g, o): given dcv = ∂L/∂c_t,
    dho = ∂L/∂(o·tanh(·)) and tc = that tanh, writes the carry dcb = ∂L/∂c_{t-1} and the
    pre-activation gradients dgb <f>[4H]; cp is c_{t-1}."""
    H = dcv.shape[0]
    one = one_(dgb)
    for j in range(H):
        dcb[j] = dcv[j] * g[H + j]
    for j in range(H):
        ig = g[j]
        gg = g[2 * H + j]
        dgb[j] = dcv[j] * gg * ig * (one - ig)
        dgb[2 * H + j] = dcv[j] * ig * (one - gg * gg)
    for j in range(H):
        fg = g[H + j]
        dgb[H + j] = dcv[j] * cp[j] * fg * (one - fg)
    for j in range(H):
        og = g[3 * H + j]
        dgb[3 * H + j] = dho[j] * tc[j] * og * (one - og)


@register_jitable
def _bwd_ew(t, b0, first, tp, gates, cs, c0, dsrc, dc, mask, has_mask, dg, proj, hcs, cz):
    """dg[t] from ∂L/∂(o·tanh c_t) = dsrc (dh, or dh W_hr with a projection) and the c carry; with
    zoneout of c, c_{t-1} is read from cz (the zoned states; cs holds c̃)."""
    B, H = dc.shape
    one = one_(dg)
    tc = np.empty(H, dg.dtype)
    dcv = np.empty(H, dg.dtype)
    for b in range(B):
        r = b0 + b
        dgb = dg[t, r]
        if has_mask and not mask[t, r]:
            zero_(dgb)
            if proj:
                zero_(hcs[t, r])
            continue
        g = gates[t, r]
        cv = cs[t, r]
        cp = c0[r] if first else (cz[tp, r] if cz.shape[0] > 0 else cs[tp, r])
        src = dsrc[b]
        dcb = dc[b]
        for j in range(H):
            tc[j] = tanh_(cv[j])
        for j in range(H):
            dcv[j] = dcb[j] + src[j] * g[3 * H + j] * (one - tc[j] * tc[j])
        gate_grads(g, dcv, src, tc, cp, dcb, dgb)
        if proj:
            hb = hcs[t, r]
            for j in range(H):
                hb[j] = g[3 * H + j] * tc[j]


@register_jitable
def _backward_rows(k, n, gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg, dhs,
                   hcs, rd, zh, zc, cz):
    b0, b1 = chunk(k, n, dh.shape[0])
    T, _, G = dg.shape
    H = G // 4
    B = b1 - b0
    proj = w_hr.shape[0] > 0
    ab = consts(dg)
    dhc = get_rows(dh, b0, b1)
    dcc = get_rows(dc, b0, b1)
    tmp = np.empty(dhc.shape, dg.dtype)
    dhu = np.empty((B, H if proj else 0), dg.dtype)  # ∂L/∂(o·tanh c) = dh W_hr
    has_zh, has_zc = zh.shape[0] > 0, zc.shape[0] > 0
    hkeep = np.empty(dhc.shape if has_zh else (0, 0), dg.dtype)  # zoneout's share of the old state
    ckeep = np.empty(dcc.shape if has_zc else (0, 0), dg.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = prev_step(t, T, reverse)
        add_dout(t, b0, dhc, dout, doff, mask, has_mask)
        if has_zh:
            zone_split(t, b0, zh, dhc, hkeep, mask, has_mask)
        if has_zc:
            zone_split(t, b0, zc, dcc, ckeep, mask, has_mask)
        if proj:
            for b in range(B):
                if has_mask and not mask[t, b0 + b]:
                    zero_(dhs[t, b0 + b])
                else:
                    set_(dhs[t, b0 + b], dhc[b])
            dot(dhc, w_hr, dhu, ab, False, False)
        _bwd_ew(t, b0, first, tp, gates, cs, c0, dhu if proj else dhc, dcc, mask, has_mask, dg, proj, hcs, cz)
        dot(dg[t, b0:b1], w_hh, tmp, ab, False, False)
        carry(t, b0, dhc, tmp, rd, hkeep, dcc, ckeep, mask, has_mask)
    put_rows(dh, b0, dhc)
    put_rows(dc, b0, dcc)


@register_jitable
def _backward_one(gates, cs, c0, w_hh, dh, dc, reverse, dout, doff, dg):
    """``backward`` at batch 1 without projection (``common.one_plain_row``): ``_bwd_ew`` and
    ``gate_grads`` in one pass a step."""
    T, _, G = dg.shape
    H = G // 4
    one = one_(dg)
    dhb, dcb = dh[0], dc[0]
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = prev_step(t, T, reverse)
        g, cv, dgb = gates[t, 0], cs[t, 0], dg[t, 0]
        cp = c0[0] if first else cs[tp, 0]
        do = dout[t, 0, doff:doff + H]
        for j in range(H):
            d = dhb[j] + do[j]
            tc = tanh_(cv[j])
            ig, fg, gg, og = g[j], g[H + j], g[2 * H + j], g[3 * H + j]
            dcv = dcb[j] + d * og * (one - tc * tc)
            dcb[j] = dcv * fg
            dgb[j] = dcv * gg * ig * (one - ig)
            dgb[H + j] = dcv * cp[j] * fg * (one - fg)
            dgb[2 * H + j] = dcv * ig * (one - gg * gg)
            dgb[3 * H + j] = d * tc * og * (one - og)
        vec_mat(dgb, w_hh, dhb, False)


@register_jitable
def _backward(gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg, dhs, hcs, rd, zh, zc, cz):
    if one_plain_row(dh, has_mask, rd, zh) and zc.shape[0] == 0 and w_hr.shape[0] == 0:
        _backward_one(gates, cs, c0, w_hh, dh, dc, reverse, dout, doff, dg)
    else:
        _backward_rows(0, 1, gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg,
                       dhs, hcs, rd, zh, zc, cz)


@jit
def backward(gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg, dhs, hcs, rd, zh, zc, cz):
    """Backward of ``forward``: dg <f>[T, B, 4H] the pre-activation gate gradients; with a
    projection (w_hr <f>[P, H], else shape (0, 0)) also dhs <f>[T, B, P] (∂L/∂h_t, 0 past a length)
    and hcs <f>[T, B, H] = o_t·tanh(c_t) (0 past a length), for dW_hr. rd, zh, zc, cz: as ``forward``'s."""
    _backward(gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg, dhs, hcs, rd, zh, zc, cz)


backward_par = parallel(_backward_rows)
"""``backward`` with the batch in n chunks, one per thread."""


@jit
def backward_step(t, tprev, tmp, reverse, gates, cs, c0, dh, dc, mask, has_mask, dout, doff, dg):
    """Finish step tprev (tmp = dg[tprev] W_hh) if tprev >= 0, then step t's elementwise if t >= 0
    (no projection)."""
    if tprev >= 0:
        merge_set(tprev, 0, dh, tmp, mask, has_mask)
    if t >= 0:
        tp, first = prev_step(t, gates.shape[0], reverse)
        add_dout(t, 0, dh, dout, doff, mask, has_mask)
        _bwd_ew(t, 0, first, tp, gates, cs, c0, dh, dc, mask, has_mask, dg, False, dg, off3(dg))


@jit
def small_forward(x, w_ih, b_ih, b_hh, w_hh, h, c, reverse, out, off, gates, cs):
    """One direction of an LSTM layer (no projection): gates <f>[T, B, 4H] and cs <f>[T, B, H] are
    kept for backward (the activated gates, c_t)."""
    project(x, w_ih, b_ih, b_hh, gates.shape[2], gates)
    wt = h.shape[0] == 1  # the one-row loop, on W_hh^T
    _forward(gates, transposed(w_hh) if wt else w_hh, wt, np.empty((0, 0), x.dtype), h, c, no_mask(), False,
             reverse, True, out, off, np.empty((1, 1, 1), x.dtype), cs, off2(x), off3(x), off3(x), off3(x))


@jit
def small_backward(x, gates, cs, c0, out, off, h0, w_ih, w_hh, dh, dc, reverse, dout, dx, dw_ih, dw_hh,
                   db_ih, db_hh):
    """Backward of ``small_forward`` (dh, dc become h0's and c0's gradients)."""
    dg = np.empty(gates.shape, x.dtype)
    dummy = np.empty((1, 1, 1), x.dtype)
    _backward(gates, cs, c0, w_hh, np.empty((0, 0), x.dtype), dh, dc, no_mask(), False, reverse, dout, off, dg,
              dummy, dummy, off2(x), off3(x), off3(x), off3(x))
    small_grads(x, dg, dg, out, off, h0, reverse, w_ih, dx, dw_ih, dw_hh, db_ih, db_hh)


@register_jitable
def activate_gates(g, H):
    """An LSTM row's gate pre-activations g <f>[4H] = [i | f | g | o], activated in place: σ, σ, tanh, σ."""
    for j in range(2 * H):
        g[j] = sigmoid_(g[j])
    for j in range(H):
        g[2 * H + j] = tanh_(g[2 * H + j])
    for j in range(H):
        g[3 * H + j] = sigmoid_(g[3 * H + j])


@register_jitable
def _stream_rows(ptrs, x_addr, y_addr, steps, batch, b0, h, c, unused):
    """Steps of an LSTM stack (with or without projection) (see ``loops.stream``)."""
    L, B, P = h.shape
    H = c.shape[2]
    G = 4 * H
    ab = consts(h)
    gates = np.empty((B, G), h.dtype)
    hc = np.empty((B, H), h.dtype)
    for t in range(steps):
        xin, yout = step_rows(ptrs, x_addr, y_addr, t, batch, b0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = layer_weights(ptrs[layer], h, G, P)
            proj = ptrs[layer, 4] != 0
            dot(xin, w_ih, gates, ab, False, True)
            dot(h[layer], w_hh, gates, ab, True, True)
            co = c[layer]
            hdst = hc if proj else h[layer]
            for b in range(B):
                g = gates[b]
                for j in range(G):
                    g[j] = g[j] + bi[j] + bh[j]
                activate_gates(g, H)
                cb = co[b]
                hb = hdst[b]
                for j in range(H):
                    cv = g[H + j] * cb[j] + g[j] * g[2 * H + j]
                    cb[j] = cv
                    hb[j] = g[3 * H + j] * tanh_(cv)
            if proj:
                dot(hc, carray(at_address(ptrs[layer, 4], h), (P, H)), h[layer], ab, False, True)
            xin = h[layer]
        put_top(yout, h)


stream, stream_par = kernels(_stream_rows, True)


@register_jitable
def _unit_update(gx, gh, hold, h, c, layer, u0, u1, unused):
    """``stream_units``' step on units u0:u1 (no projection): c and h of gates gx + gh."""
    H = h.shape[0]
    xi, xf, xg, xo = gx[u0:u1], gx[H + u0:H + u1], gx[2 * H + u0:2 * H + u1], gx[3 * H + u0:3 * H + u1]
    hi, hf, hg, ho = gh[u0:u1], gh[H + u0:H + u1], gh[2 * H + u0:2 * H + u1], gh[3 * H + u0:3 * H + u1]
    cu, hu = c[layer, 0, u0:u1], h[u0:u1]
    for j in range(u1 - u0):
        cv = sigmoid_(xf[j] + hf[j]) * cu[j] + sigmoid_(xi[j] + hi[j]) * tanh_(xg[j] + hg[j])
        cu[j] = cv
        hu[j] = sigmoid_(xo[j] + ho[j]) * tanh_(cv)


stream_units = units(_unit_update, 4)
"""``stream`` at batch 1 (no projection) with each layer's units in n chunks, one per thread."""
