"""The GRU's loops: reset_after=True (torch.nn's: ``forward``, ``backward``, their one-step forms, the
small-training calls) and reset_after=False (Cho et al., the driver table's "grux": ``grux_forward``,
``grux_backward``); ``stream`` takes both (its flag: reset_after)."""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from .common import (acc_, chunk, consts, dot, get_rows, merge_acc, one_, one_plain_row, past_end, prev_step, put_rows,
                     set_, sigmoid_, tanh_, transposed, vec_mat, zero_)
from .jit import jit, parallel
from .noise import carry_add, dot_dropped, noise_rows, off2, off3, split_row, state_out
from .small import no_mask, project, small_grads
from .stream import kernels, layer_weights, put_top, step_rows, units


@register_jitable
def _new_state(g, nb, hb, ob):
    """A row's new state h = n + z·(h - n) into hb and the output row ob, given n <f>[H] in nb; the gate
    row g <f>[3H] (r, z, n) keeps n in its n block (for backward)."""
    H = hb.shape[0]
    for j in range(H):
        hb[j] = nb[j] + g[H + j] * (hb[j] - nb[j])
    for j in range(H):
        g[2 * H + j] = nb[j]
    set_(ob, hb)


@register_jitable
def _fwd_ew(t, b0, gates, gh, b_hn, h, mask, has_mask, train, out, off, ghn):
    B, H = h.shape
    nb = np.empty(H, h.dtype)
    for b in range(B):
        ob = out[t, b0 + b, off:off + H]
        if past_end(t, b0 + b, ob, mask, has_mask):
            continue
        g, ghb, hb = gates[t, b0 + b], gh[b], h[b]
        for j in range(2 * H):
            g[j] = sigmoid_(g[j] + ghb[j])
        for j in range(H):
            ghb[2 * H + j] = ghb[2 * H + j] + b_hn[j]
        for j in range(H):
            nb[j] = tanh_(g[2 * H + j] + g[j] * ghb[2 * H + j])
        _new_state(g, nb, hb, ob)
        if train:
            set_(ghn[t, b0 + b], ghb[2 * H:])


@register_jitable
def _forward_rows(k, n, gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn, rd, zh):
    b0, b1 = chunk(k, n, h.shape[0])
    T, _, G = gates.shape
    ab = consts(gates)
    hc = get_rows(h, b0, b1)
    gh = np.empty((b1 - b0, G), gates.dtype)
    has_zh = zh.shape[0] > 0  # zoneout (``noise``)
    hin, hold = noise_rows(hc, rd, zh)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot_dropped(hc, rd, b0, hin, w_hh, gh, ab, not wt)  # z ⊙ h_{t-1} keeps the whole state
        if has_zh:
            hold[:] = hc
        _fwd_ew(t, b0, gates, gh, b_hn, hc, mask, has_mask, train, out, off, ghn)
        state_out(t, b0, zh, hold, hc, out, off, mask, has_mask, hs, train and has_mask)
    put_rows(h, b0, hc)


@register_jitable
def _forward_one(gates, w_t, b_hn, h, reverse, train, out, off, ghn):
    """``forward`` at batch 1 (``common.one_plain_row``), w_t = W_hh^T; in training gates[t] keep r, z and
    n and ghn[t] keeps W_hn h + b_hn."""
    T, _, G = gates.shape
    H = G // 3
    hv = h[0]
    gh = np.empty(G, h.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        vec_mat(hv, w_t, gh, False)
        g, ob = gates[t, 0], out[t, 0, off:off + H]
        for j in range(H):
            r = sigmoid_(g[j] + gh[j])
            z = sigmoid_(g[H + j] + gh[H + j])
            hn = gh[2 * H + j] + b_hn[j]
            n = tanh_(g[2 * H + j] + r * hn)
            if train:
                g[j], g[H + j], g[2 * H + j] = r, z, n
                ghn[t, 0, j] = hn
            v = n + z * (hv[j] - n)
            hv[j] = v
            ob[j] = v


@register_jitable
def _forward(gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn, rd, zh):
    if wt and one_plain_row(h, has_mask, rd, zh):
        _forward_one(gates, w_hh, b_hn, h, reverse, train, out, off, ghn)
    else:
        _forward_rows(0, 1, gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn, rd, zh)


@jit
def forward(gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn, rd, zh):
    """GRU, reset_after=True (torch.nn's), gate order r, z, n. gates hold x W_ih^T + b_ih with
    b_hh folded into r and z; b_hn <f>[H] stays inside r·(W_hn h + b_hn). w_hh <f>[3H, H] is W_hh,
    or W_hh^T when wt.
    train: keep r, z, n in ``gates``, W_hn h + b_hn in ghn <f>[T, B, H], h_t in hs with a mask.
    rd, zh: recurrent dropout and zoneout (``noise``; size 0 when off)."""
    _forward(gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn, rd, zh)


forward_par = parallel(_forward_rows)
"""``forward`` with the batch in n chunks, one per thread."""


@jit
def forward_step(t, gates, gh, b_hn, h, mask, has_mask, train, out, off, hs, ghn):
    """One step of ``forward`` given gh = h W_hh^T."""
    _fwd_ew(t, 0, gates, gh, b_hn, h, mask, has_mask, train, out, off, ghn)
    if train and has_mask:
        put_rows(hs[t], 0, h)


@register_jitable
def _bwd_ew(t, b0, first, tp, gates, ghn, h0, hseq, hoff, dh, mask, has_mask, dout, doff, dgi, dghn, dgh, zh,
            keep):
    """dgi[t], dghn[t] and the recurrent-side gradient dgh = [dgi_r, dgi_z, dghn] (0 past a length);
    leaves the direct part dh·z in dh (the mat-mul adds dgh W_hh). With zoneout (zh), zoneout's share
    of ∂L/∂h_t, for h_{t-1}, goes to keep."""
    B, H = dh.shape
    one = one_(dgi)
    dhv = np.empty(H, dh.dtype)
    for b in range(B):
        r = b0 + b
        dgb = dgi[t, r]
        dgh_b = dgh[b]
        if has_mask and not mask[t, r]:
            zero_(dgb)
            zero_(dghn[t, r])
            zero_(dgh_b)
            continue
        g = gates[t, r]
        a = ghn[t, r]
        hp = h0[r] if first else hseq[tp, r, hoff:hoff + H]
        do = dout[t, r, doff:doff + H]
        dhb = dh[b]
        dnb = dghn[t, r]
        for j in range(H):
            dhv[j] = dhb[j] + do[j]
        if zh.shape[0] > 0:
            split_row(zh[t, r], dhv, keep[b])
        for j in range(H):
            n = g[2 * H + j]
            dgb[2 * H + j] = dhv[j] * (one - g[H + j]) * (one - n * n)
        for j in range(H):
            rg = g[j]
            dgb[j] = dgb[2 * H + j] * a[j] * rg * (one - rg)
        for j in range(H):
            z = g[H + j]
            dgb[H + j] = dhv[j] * (hp[j] - g[2 * H + j]) * z * (one - z)
        for j in range(H):
            dnb[j] = dgb[2 * H + j] * g[j]
        for j in range(2 * H):
            dgh_b[j] = dgb[j]
        for j in range(H):
            dgh_b[2 * H + j] = dnb[j]
        for j in range(H):
            dhb[j] = dhv[j] * g[H + j]


@register_jitable
def _backward_rows(k, n, gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff, dgi,
                   dghn, rd, zh):
    b0, b1 = chunk(k, n, dh.shape[0])
    T, G, ab = dgi.shape[0], dgi.shape[2], consts(dgi)
    dhc = get_rows(dh, b0, b1)
    dgh = np.empty((b1 - b0, G), dgi.dtype)
    has_rd, has_zh = rd.shape[0] > 0, zh.shape[0] > 0  # recurrent dropout, zoneout (``noise``)
    tmp = np.empty(dhc.shape if has_rd else (0, 0), dgi.dtype)
    keep = np.empty(dhc.shape if has_zh else (0, 0), dgi.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = prev_step(t, T, reverse)
        _bwd_ew(t, b0, first, tp, gates, ghn, h0, hseq, hoff, dhc, mask, has_mask, dout, doff, dgi, dghn, dgh,
                zh, keep)
        carry_add(t, b0, dgh, w_hh, dhc, tmp, False, ab, rd, keep, mask, has_mask)
    put_rows(dh, b0, dhc)


@register_jitable
def _backward_one(gates, ghn, h0, hseq, hoff, w_hh, dh, reverse, dout, doff, dgi, dghn):
    """``backward`` at batch 1 (``common.one_plain_row``)."""
    T, _, G = dgi.shape
    H = G // 3
    one = one_(dgi)
    dhb = dh[0]
    dgh = np.empty(G, dgi.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = prev_step(t, T, reverse)
        g, a, dgb, dnb = gates[t, 0], ghn[t, 0], dgi[t, 0], dghn[t, 0]
        hp = h0[0] if first else hseq[tp, 0, hoff:hoff + H]
        do = dout[t, 0, doff:doff + H]
        for j in range(H):
            d = dhb[j] + do[j]
            rg, z, n = g[j], g[H + j], g[2 * H + j]
            dn = d * (one - z) * (one - n * n)
            dr = dn * a[j] * rg * (one - rg)
            dz = d * (hp[j] - n) * z * (one - z)
            dgb[j], dgb[H + j], dgb[2 * H + j] = dr, dz, dn
            dgh[j], dgh[H + j], dgh[2 * H + j] = dr, dz, dn * rg
            dnb[j] = dn * rg
            dhb[j] = d * z
        vec_mat(dgh, w_hh, dhb, True)  # the direct term d·z, plus [dgi_r, dgi_z, dghn] W_hh


@register_jitable
def _backward(gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff, dgi, dghn, rd, zh):
    if one_plain_row(dh, has_mask, rd, zh):
        _backward_one(gates, ghn, h0, hseq, hoff, w_hh, dh, reverse, dout, doff, dgi, dghn)
    else:
        _backward_rows(0, 1, gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff,
                       dgi, dghn, rd, zh)


@jit
def backward(gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff, dgi, dghn, rd, zh):
    """Backward of ``forward``: dgi <f>[T, B, 3H] gradients of the input-side pre-activations
    (r, z, n); dghn <f>[T, B, H] that of W_hn h + b_hn (= dgi_n·r). The recurrent-side gradient is
    [dgi_r, dgi_z, dghn]."""
    _backward(gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff, dgi, dghn, rd, zh)


backward_par = parallel(_backward_rows)
"""``backward`` with the batch in n chunks, one per thread."""


@jit
def backward_step(t, tprev, tmp, reverse, gates, ghn, h0, hseq, hoff, dh, mask, has_mask, dout, doff,
                  dgi, dghn, dgh):
    """Add tmp = dgh W_hh of step tprev to dh if tprev >= 0, then step t's elementwise (into dgh)."""
    if tprev >= 0:
        merge_acc(dh, tmp)
    if t >= 0:
        tp, first = prev_step(t, gates.shape[0], reverse)
        _bwd_ew(t, 0, first, tp, gates, ghn, h0, hseq, hoff, dh, mask, has_mask, dout, doff, dgi, dghn, dgh,
                off3(dgi), off2(dgi))


@register_jitable
def _grux_forward_rows(k, n, gates, w_hrz, w_hn, wt, h, mask, has_mask, reverse, train, out, off, hs, rd, zh):
    b0, b1 = chunk(k, n, h.shape[0])
    T, _, G = gates.shape
    H = G // 3
    B = b1 - b0
    ab = consts(gates)
    hc = get_rows(h, b0, b1)
    ghrz = np.empty((B, 2 * H), gates.dtype)
    rh = np.empty((B, H), gates.dtype)
    ghn = np.empty((B, H), gates.dtype)
    nb = np.empty(H, gates.dtype)
    has_rd, has_zh = rd.shape[0] > 0, zh.shape[0] > 0  # recurrent dropout, zoneout (``noise``)
    hin, hold = noise_rows(hc, rd, zh)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot_dropped(hc, rd, b0, hin, w_hrz, ghrz, ab, not wt)
        hd = hin if has_rd else hc  # h as it enters both recurrent products
        for b in range(B):
            g, gb, db, rb = gates[t, b0 + b], ghrz[b], hd[b], rh[b]
            for j in range(2 * H):
                g[j] = sigmoid_(g[j] + gb[j])
            for j in range(H):
                rb[j] = g[j] * db[j]
        dot(rh, w_hn, ghn, ab, False, not wt)
        if has_zh:
            hold[:] = hc
        for b in range(B):
            ob = out[t, b0 + b, off:off + H]
            if past_end(t, b0 + b, ob, mask, has_mask):
                continue
            g, gn, hb = gates[t, b0 + b], ghn[b], hc[b]
            for j in range(H):
                nb[j] = tanh_(g[2 * H + j] + gn[j])
            _new_state(g, nb, hb, ob)
        state_out(t, b0, zh, hold, hc, out, off, mask, has_mask, hs, train and has_mask)
    put_rows(h, b0, hc)


@jit
def grux_forward(gates, w_hrz, w_hn, wt, h, mask, has_mask, reverse, train, out, off, hs, rd, zh):
    """GRU, reset_after=False (Cho et al.): n = tanh(gi_n + W_hn (r·h) + b_hn), all biases folded into
    gates. w_hrz <f>[2H, H] = W_h[rz]; w_hn <f>[H, H] = W_hn (both transposed when wt). train: keep
    r, z, n in ``gates``
    and h_t in hs with a mask. rd, zh: recurrent dropout (on h in both recurrent products) and zoneout
    (``noise``; size 0 when off). (Whole-loop only: its two mat-muls per step make a Python-driven
    loop twice as costly.)"""
    _grux_forward_rows(0, 1, gates, w_hrz, w_hn, wt, h, mask, has_mask, reverse, train, out, off, hs, rd, zh)


grux_forward_par = parallel(_grux_forward_rows)
"""``grux_forward`` with the batch in n chunks, one per thread."""


@register_jitable
def _grux_backward_rows(k, n, gates, h0, hseq, hoff, w_hrz, w_hn, dh, mask, has_mask, reverse, dout, doff, dg,
                        rhs, rd, zh):
    b0, b1 = chunk(k, n, dh.shape[0])
    T, _, G = dg.shape
    H = G // 3
    B = b1 - b0
    one = one_(dg)
    ab = consts(dg)
    dhc = get_rows(dh, b0, b1)
    dnp_s = np.empty((B, H), dg.dtype)
    drh = np.empty((B, H), dg.dtype)
    drz = np.empty((B, 2 * H), dg.dtype)
    has_rd, has_zh = rd.shape[0] > 0, zh.shape[0] > 0  # recurrent dropout, zoneout (``noise``)
    dhd = np.empty(dhc.shape if has_rd else (0, 0), dg.dtype)  # ∂L/∂(h ⊙ rd) from both products
    keep = np.empty(dhc.shape if has_zh else (0, 0), dg.dtype)
    hd = np.empty(H, dg.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = prev_step(t, T, reverse)
        for b in range(B):
            r = b0 + b
            if past_end(t, r, dg[t, r], mask, has_mask):
                zero_(dnp_s[b])
                continue
            g, dhb, dgb, dn = gates[t, r], dhc[b], dg[t, r], dnp_s[b]
            acc_(dhb, dout[t, r, doff:doff + H])
            if has_zh:
                split_row(zh[t, r], dhb, keep[b])
            for j in range(H):
                n = g[2 * H + j]
                dn[j] = dhb[j] * (one - g[H + j]) * (one - n * n)
            for j in range(H):
                dgb[2 * H + j] = dn[j]
        dot(dnp_s, w_hn, drh, ab, False, False)
        for b in range(B):
            r = b0 + b
            if past_end(t, r, rhs[t, r], mask, has_mask):
                zero_(drz[b])
                if has_rd:
                    zero_(dhd[b])
                continue
            g = gates[t, r]
            hp = h0[r] if first else hseq[tp, r, hoff:hoff + H]
            set_(hd, hp)
            if has_rd:
                rdb = rd[r]
                for j in range(H):
                    hd[j] = hd[j] * rdb[j]
            dhb = dhc[b]
            dgb = dg[t, r]
            db = drh[b]
            dzb = drz[b]
            rb = rhs[t, r]
            for j in range(H):
                rg = g[j]
                dgb[j] = db[j] * hd[j] * rg * (one - rg)
            for j in range(H):
                z = g[H + j]
                dgb[H + j] = dhb[j] * (hp[j] - g[2 * H + j]) * z * (one - z)
            for j in range(2 * H):
                dzb[j] = dgb[j]
            for j in range(H):
                rb[j] = g[j] * hd[j]
            if has_rd:
                ddb = dhd[b]
                for j in range(H):
                    dhb[j] = dhb[j] * g[H + j]
                for j in range(H):
                    ddb[j] = db[j] * g[j]
            else:
                for j in range(H):
                    dhb[j] = dhb[j] * g[H + j] + db[j] * g[j]
        carry_add(t, b0, drz, w_hrz, dhc, dhd, True, ab, rd, keep, mask, has_mask)  # both products read h ⊙ rd
    put_rows(dh, b0, dhc)


@jit
def grux_backward(gates, h0, hseq, hoff, w_hrz, w_hn, dh, mask, has_mask, reverse, dout, doff, dg, rhs, rd, zh):
    """Backward of ``grux_forward``: dg <f>[T, B, 3H] the pre-activation gradients (the same on the
    input and recurrent side); rhs <f>[T, B, H] = r_t·(h_{t-1} ⊙ rd) (0 past a length), for dW_hn.
    rd, zh: as ``grux_forward``'s."""
    _grux_backward_rows(0, 1, gates, h0, hseq, hoff, w_hrz, w_hn, dh, mask, has_mask, reverse, dout, doff,
                        dg, rhs, rd, zh)


grux_backward_par = parallel(_grux_backward_rows)
"""``grux_backward`` with the batch in n chunks, one per thread."""


@jit
def small_forward(x, w_ih, b_ih, b_hh, w_hh, h, reverse, out, off, gates, ghn):
    """One direction of a GRU layer (reset_after): gates <f>[T, B, 3H] and ghn = W_hn h + b_hn
    <f>[T, B, H] are kept for backward."""
    H = h.shape[1]
    project(x, w_ih, b_ih, b_hh, 2 * H, gates)
    wt = h.shape[0] == 1  # the one-row loop, on W_hh^T
    _forward(gates, transposed(w_hh) if wt else w_hh, wt, b_hh[2 * H:], h, no_mask(), False, reverse, True, out,
             off, np.empty((1, 1, 1), x.dtype), ghn, off2(x), off3(x))


@jit
def small_backward(x, gates, ghn, out, off, h0, w_ih, w_hh, dh, reverse, dout, dx, dw_ih, dw_hh, db_ih, db_hh):
    """Backward of ``small_forward``: the recurrent gradient is dgi's r and z parts and dghn."""
    T, B, G = gates.shape
    H = G // 3
    dgi = np.empty(gates.shape, x.dtype)
    dghn = np.empty((T, B, H), x.dtype)
    _backward(gates, ghn, h0, out, off, w_hh, dh, no_mask(), False, reverse, dout, off, dgi, dghn, off2(x), off3(x))
    dgh = np.empty(gates.shape, x.dtype)
    dgh[:, :, : 2 * H] = dgi[:, :, : 2 * H]
    dgh[:, :, 2 * H:] = dghn
    small_grads(x, dgi, dgh, out, off, h0, reverse, w_ih, dx, dw_ih, dw_hh, db_ih, db_hh)


@register_jitable
def _stream_rows(ptrs, x_addr, y_addr, steps, batch, b0, h, unused, reset_after):
    """Steps of a GRU stack (flag: reset_after) (see ``loops.stream``)."""
    L, B, H = h.shape
    G = 3 * H
    ab = consts(h)
    gates = np.empty((B, G), h.dtype)
    gh = np.empty((B, G), h.dtype)
    ghrz = np.empty((B, 2 * H), h.dtype)
    rh = np.empty((B, H), h.dtype)
    ghn = np.empty((B, H), h.dtype)
    nb = np.empty(H, h.dtype)
    for t in range(steps):
        xin, yout = step_rows(ptrs, x_addr, y_addr, t, batch, b0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = layer_weights(ptrs[layer], h, G, H)
            hl = h[layer]
            dot(xin, w_ih, gates, ab, False, True)
            if reset_after:
                dot(hl, w_hh, gh, ab, False, True)
            else:
                dot(hl, w_hh[: 2 * H], ghrz, ab, False, True)
            src = gh if reset_after else ghrz
            for b in range(B):
                g = gates[b]
                sb = src[b]
                for j in range(2 * H):
                    g[j] = sigmoid_(g[j] + bi[j] + sb[j] + bh[j])
                hb = hl[b]
                if reset_after:
                    for j in range(H):
                        nb[j] = tanh_(g[2 * H + j] + bi[2 * H + j] + g[j] * (sb[2 * H + j] + bh[2 * H + j]))
                    for j in range(H):
                        hb[j] = nb[j] + g[H + j] * (hb[j] - nb[j])
                else:
                    rb = rh[b]
                    for j in range(H):
                        rb[j] = g[j] * hb[j]
            if not reset_after:
                dot(rh, w_hh[2 * H:], ghn, ab, False, True)
                for b in range(B):
                    g = gates[b]
                    gnb = ghn[b]
                    for j in range(H):
                        nb[j] = tanh_(g[2 * H + j] + bi[2 * H + j] + gnb[j] + bh[2 * H + j])
                    hb = hl[b]
                    for j in range(H):
                        hb[j] = nb[j] + g[H + j] * (hb[j] - nb[j])
            xin = hl
        put_top(yout, h)


stream, stream_par = kernels(_stream_rows, False)


@register_jitable
def _unit_update(gx, gh, hold, h, c, layer, u0, u1, unused):
    """``stream_units``' step on units u0:u1 (reset_after): n = tanh(gx_n + r·gh_n), h = n + z·(h - n)."""
    H = h.shape[0]
    xr, xz, xn = gx[u0:u1], gx[H + u0:H + u1], gx[2 * H + u0:2 * H + u1]
    hr, hz, hn = gh[u0:u1], gh[H + u0:H + u1], gh[2 * H + u0:2 * H + u1]
    ho, hu = hold[u0:u1], h[u0:u1]
    for j in range(u1 - u0):
        nv = tanh_(xn[j] + sigmoid_(xr[j] + hr[j]) * hn[j])
        hu[j] = nv + sigmoid_(xz[j] + hz[j]) * (ho[j] - nv)


stream_units = units(_unit_update, 3)
"""``stream`` (reset_after) at batch 1 with each layer's units in n chunks, one per thread."""
