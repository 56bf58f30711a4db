"""The layer-normalised LSTM's loops (``rnnkit.cells.ln_lstm_step``): the input term's normalisation
over every row at once (``input_forward`` / ``input_backward``), the recurrent loop with the recurrent
term's and the cell's normalisations inside it, and the streaming stack step."""

from __future__ import annotations

import numpy as np
from numba import carray, prange
from numba.extending import register_jitable

from .common import (acc_, chunk, consts, dot, get_rows, merge_set, one_, one_plain_row, prev_step, put_rows, set_,
                     tanh_, vec_mat, zero_)
from .jit import jit, parallel
from .noise import carry, dot_dropped, noise_rows, off2, off3, put_out, split_row, zone
from .small import no_mask
from .lstm import activate_gates, gate_grads
from .stream import at_address, kernels, layer_weights, put_top, step_rows


@register_jitable
def _normalise(v, dst, inv_n, eps):
    """dst = (v - mean v) / sqrt(var v + eps) over the whole row; returns 1 / sqrt(var v + eps).
    inv_n = 1 / len(v) and eps in v's dtype (float32 math stays float32)."""
    n = v.shape[0]
    s = v[0] - v[0]
    for j in range(n):
        s += v[j]
    mu = s * inv_n
    q = s - s
    for j in range(n):
        d = v[j] - mu
        dst[j] = d
        q += d * d
    rstd = one_(v) / np.sqrt(q * inv_n + eps)
    for j in range(n):
        dst[j] *= rstd
    return rstd


@register_jitable
def _normalise_backward(dn, nv, rstd, inv_n, dst):
    """dst = ∂L/∂v of a normalisation nv = (v - mean)·rstd, given dn = ∂L/∂nv (rows of one length)."""
    n = dn.shape[0]
    m1 = dn[0] - dn[0]
    m2 = m1
    for j in range(n):
        m1 += dn[j]
        m2 += dn[j] * nv[j]
    m1 *= inv_n
    m2 *= inv_n
    for j in range(n):
        dst[j] = rstd * (dn[j] - m1 - nv[j] * m2)


@register_jitable
def _consts(a):
    """[1/(4H), 1/H, eps] in a's dtype, for a gate row of width 4H."""
    k = np.empty(3, a.dtype)
    k[0] = 1.0 / a.shape[-1]
    k[1] = 4.0 / a.shape[-1]
    k[2] = 1e-5
    return k


@register_jitable
def _input_row(g, g_ih, bias, nx, inv_n, eps):
    """g <f>[4H]: in a row of x W_ih^T, out γ_ih·LN(row) + bias; nx <f>[4H] gets LN(row). Returns its
    1/std."""
    r = _normalise(g, nx, inv_n, eps)
    for j in range(g.shape[0]):
        g[j] = g_ih[j] * nx[j] + bias[j]
    return r


@jit(parallel=True)
def input_forward(n, gates, ln, bias, train, ri, rstd):
    """Before ``forward``: the input term of every step at once (it does not depend on the
    recurrence), in n chunks of rows, one per thread. gates <f>[N, 4H] (all T·B rows): in x W_ih^T,
    out γ_ih·LN(x W_ih^T) + bias (bias <f>[4H] = b_ih + b_hh). train: keep LN(x W_ih^T) in ri
    <f>[N, 4H] and its 1/std in rstd[:, 0] (rstd <f>[N, 3]); else both may be placeholders."""
    N, G = gates.shape
    k = _consts(gates)
    g_ih = ln[:G]
    for c in prange(n):
        r0, r1 = chunk(c, n, N)
        scratch = np.empty(G, gates.dtype)
        for r in range(r0, r1):
            if train:
                rstd[r, 0] = _input_row(gates[r], g_ih, bias, ri[r], k[0], k[2])
            else:
                _input_row(gates[r], g_ih, bias, scratch, k[0], k[2])


@register_jitable
def _fwd_ew(t, b0, gates, gh, ln, h, c, mask, has_mask, train, out, rh, rstd, cs, chat, hs, k, scratch):
    """Step t of ``forward`` after the recurrent mat-mul gh = h W_hh^T, for every row; gates[t]
    holds the input term (``input_forward``). k = _consts(gh); scratch <f>[2, 4H]. hs is
    written only with a mask (else it is out)."""
    B, G = gh.shape
    H = G // 4
    g_hh, g_c, b_c = ln[G:2 * G], ln[2 * G:2 * G + H], ln[2 * G + H:]
    for b in range(B):
        r = b0 + b
        if has_mask and not mask[t, r]:
            zero_(out[t, r])
            if train:
                set_(cs[t, r], c[b])
                set_(hs[t, r], h[b])  # (a mask is given)
            continue
        nh, nc = scratch[0], scratch[1]  # nc: its first H used
        g = gates[t, r]
        r1 = _normalise(gh[b], nh, k[0], k[2])
        for j in range(G):
            g[j] += g_hh[j] * nh[j]
        activate_gates(g, H)
        cb = c[b]
        for j in range(H):
            cb[j] = g[H + j] * cb[j] + g[j] * g[2 * H + j]
        r2 = _normalise(cb, nc, k[1], k[2])
        hb = h[b]
        for j in range(H):
            hb[j] = g[3 * H + j] * tanh_(g_c[j] * nc[j] + b_c[j])
        set_(out[t, r], hb)
        if train:
            set_(rh[t, r], nh)
            set_(chat[t, r], nc[:H])
            rstd[t, r, 1] = r1
            rstd[t, r, 2] = r2
            set_(cs[t, r], cb)
            if has_mask:
                set_(hs[t, r], hb)


@register_jitable
def _forward_rows(k, n, gates, w_hh, wt, ln, h, c, mask, has_mask, reverse, train, out, rh, rstd, cs, chat,
                  hs, rd, zh, zc, cz):
    b0, b1 = chunk(k, n, h.shape[0])
    T, _, G = gates.shape
    ab = consts(gates)
    hc = get_rows(h, b0, b1)
    cc = get_rows(c, b0, b1)
    gh = np.empty((b1 - b0, G), gates.dtype)
    scratch = np.empty((2, G), gates.dtype)
    k = _consts(gh)
    # recurrent dropout and zoneout (``noise``): h as it enters W_hh, the old states
    has_zh, has_zc = zh.shape[0] > 0, zc.shape[0] > 0
    hin, hold = noise_rows(hc, rd, zh)
    cold = np.empty(cc.shape if has_zc else (0, 0), gates.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot_dropped(hc, rd, b0, hin, w_hh, gh, ab, not wt)
        if has_zh:
            hold[:] = hc
        if has_zc:
            cold[:] = cc
        _fwd_ew(t, b0, gates, gh, ln, hc, cc, mask, has_mask, train, out, rh, rstd, cs, chat, hs, k, scratch)
        if has_zh:  # the zoned h is the output and the state (cs and chat keep c̃_t's values)
            zone(t, b0, zh, hold, hc, mask, has_mask)
            put_out(t, b0, hc, out, 0, mask, has_mask)
            if train and has_mask:
                put_rows(hs[t], b0, hc)
        if has_zc:
            zone(t, b0, zc, cold, cc, mask, has_mask)
            if train:
                put_rows(cz[t], b0, cc)
    put_rows(h, b0, hc)
    put_rows(c, b0, cc)


@register_jitable
def _forward_one(gates, w_t, ln, h, c, reverse, train, out, rh, rstd, cs, chat, hs):
    """``forward`` at batch 1 (``common.one_plain_row``), w_t = W_hh^T: ``_fwd_ew`` on the state rows in
    place after the one-row mat-vec."""
    T, _, G = gates.shape
    gh = np.empty((1, G), gates.dtype)
    scratch = np.empty((2, G), gates.dtype)
    k = _consts(gh)
    unmasked = no_mask()
    for s in range(T):
        t = T - 1 - s if reverse else s
        vec_mat(h[0], w_t, gh[0], False)
        _fwd_ew(t, 0, gates, gh, ln, h, c, unmasked, False, train, out, rh, rstd, cs, chat, hs, k, scratch)


@jit
def forward(gates, w_hh, wt, ln, h, c, mask, has_mask, reverse, train, out, rh, rstd, cs, chat, hs, rd, zh, zc,
            cz):
    """Layer-normalised LSTM (``rnnkit.cells.ln_lstm_step``), gate order i, f, g, o: the recurrent
    term's and the cell's normalisations inside the loop, the input term's before it.

    gates <f>[T, B, 4H]: in γ_ih·LN(x W_ih^T) + b_ih + b_hh (``input_forward``); out (train) the
    activated gates. w_hh <f>[4H, H] (torch's layout), or W_hh^T when wt (batch 1); ln <f>[10H] =
    [γ_ih | γ_hh | γ_c | β_c];
    out <f>[T, B, H].
    train: keep the normalised recurrent term rh <f>[T, B, 4H], its and the cell's 1/std in
    rstd[:, :, 1:] (rstd <f>[T, B, 3]), c_t in cs, the normalised c_t in chat <f>[T, B, H] and, with a
    mask, h_t in hs <f>[T, B, H] (without one, out is the state sequence).
    rd, zh, zc: recurrent dropout and zoneout (``noise``; size 0 when off); with zc, cs keeps c̃_t and
    cz <f>[T, B, H] the zoned c_t.
    """
    if wt and one_plain_row(h, has_mask, rd, zh) and zc.shape[0] == 0:
        _forward_one(gates, w_hh, ln, h, c, reverse, train, out, rh, rstd, cs, chat, hs)
    else:
        _forward_rows(0, 1, gates, w_hh, wt, ln, h, c, mask, has_mask, reverse, train, out, rh, rstd, cs,
                      chat, hs, rd, zh, zc, cz)


forward_par = parallel(_forward_rows)
"""``forward`` with the batch in n chunks, one per thread."""


@register_jitable
def _stream_rows(ptrs, x_addr, y_addr, steps, batch, b0, h, c, unused):
    """Steps of a layer-normalised LSTM stack, with ``lstm.stream``'s arguments (see ``loops.stream``;
    ptrs[l, 5] the address of ln), through the sequence loop's elementwise step."""
    L, B, H = h.shape
    G = 4 * H
    ab = consts(h)
    gates = np.empty((1, B, G), h.dtype)  # the step's input term, as step 0 of a sequence
    gh = np.empty((B, G), h.dtype)
    bias = np.empty(G, h.dtype)
    out = np.empty((1, B, H), h.dtype)
    scratch = np.empty((2, G), h.dtype)
    unmasked = no_mask()
    k = _consts(gh)
    for t in range(steps):
        xin, yout = step_rows(ptrs, x_addr, y_addr, t, batch, b0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = layer_weights(ptrs[layer], h, G, H)
            ln = carray(at_address(ptrs[layer, 5], h), 10 * H)
            for j in range(G):
                bias[j] = bi[j] + bh[j]
            dot(xin, w_ih, gates[0], ab, False, True)
            for b in range(B):
                _input_row(gates[0, b], ln[:G], bias, scratch[0], k[0], k[2])
            dot(h[layer], w_hh, gh, ab, False, True)
            # not training and no mask: the kept-for-backward arrays are never touched (gates stands in)
            _fwd_ew(0, 0, gates, gh, ln, h[layer], c[layer], unmasked, False, False, out, gates, gates, gates,
                    gates, gates, k, scratch)
            xin = h[layer]
        put_top(yout, h)


stream, stream_par = kernels(_stream_rows, True)


@jit
def forward_step(t, gates, gh, ln, h, c, mask, has_mask, train, out, rh, rstd, cs, chat, hs):
    """One step of ``forward`` given gh = h W_hh^T (for a Python loop with oneDNN's GEMM)."""
    _fwd_ew(t, 0, gates, gh, ln, h, c, mask, has_mask, train, out, rh, rstd, cs, chat, hs, _consts(gh),
            np.empty((2, gh.shape[1]), gh.dtype))


@register_jitable
def _bwd_ew(t, b0, first, tp, gates, rh, rstd, cs, chat, c0, ln, dh, dc, mask, has_mask, dout, dg, drh, dpar,
            k, scratch, zh, zc, cz, hkeep, ckeep):
    """Step t of ``backward`` up to drh[t] (the recurrent mat-mul and the carry follow).
    k = _consts(dg); scratch <f>[3, 4H]. With zoneout (zh, zc), its share of ∂L/∂h_t and ∂L/∂c_t,
    for the old states, goes to hkeep and ckeep, and c_{t-1} is read from cz."""
    G = dg.shape[2]
    B = dh.shape[0]
    H = G // 4
    one = one_(dg)
    g_hh, g_c, b_c = ln[G:2 * G], ln[2 * G:2 * G + H], ln[2 * G + H:]
    dg_c, db_c = dpar[2 * G:2 * G + H], dpar[2 * G + H:10 * H]
    dn, tc, dcv = scratch[0], scratch[1, :H], scratch[2, :H]
    for b in range(B):
        r = b0 + b
        dgb = dg[t, r]
        drb = drh[t, r]
        if has_mask and not mask[t, r]:
            zero_(dgb)
            zero_(drb)
            continue
        dhb = dh[b]
        acc_(dhb, dout[t, r])
        if zh.shape[0] > 0:
            split_row(zh[t, r], dhb, hkeep[b])
        g = gates[t, r]
        nc = chat[t, r]
        cp = c0[r] if first else (cz[tp, r] if cz.shape[0] > 0 else cs[tp, r])
        for j in range(H):
            tc[j] = tanh_(g_c[j] * nc[j] + b_c[j])
        for j in range(H):  # through h = o·tanh(LN(c)·γ_c + β_c): dn = ∂L/∂(LN(c)·γ_c + β_c)
            dn[j] = dhb[j] * g[3 * H + j] * (one - tc[j] * tc[j])
        for j in range(H):
            db_c[j] += dn[j]
        for j in range(H):
            dg_c[j] += dn[j] * nc[j]
        for j in range(H):
            dn[j] *= g_c[j]
        _normalise_backward(dn[:H], nc, rstd[t, r, 2], k[1], dcv)
        dcb = dc[b]
        if zc.shape[0] > 0:
            split_row(zc[t, r], dcb, ckeep[b])
        for j in range(H):
            dcv[j] += dcb[j]
        gate_grads(g, dcv, dhb, tc, cp, dcb, dgb)  # dgb: ∂L/∂(the gates' pre-activation)
        for j in range(G):  # through LN(h W_hh^T)·γ_hh
            dn[j] = dgb[j] * g_hh[j]
        _normalise_backward(dn, rh[t, r], rstd[t, r, 1], k[0], drb)


@jit(parallel=True)
def input_backward(n, dg, ri, rh, rstd, ln, mask, has_mask, dpar):
    """After ``backward``, for every row at once, in n chunks of rows, one per thread: adds the
    gradients of γ_ih, γ_hh and the bias (Σ dA·LN(x W_ih^T), Σ dA·LN(h W_hh^T), Σ dA) into dpar (its
    layout in ``backward``) and turns each row of dg <f>[T, B, 4H] from dA = ∂L/∂(the gates'
    pre-activation) into ∂L/∂(x W_ih^T), through the input term's normalisation. Rows past a length
    hold dA = 0 and are skipped (their recurrent term in rh was never written)."""
    T, B, G = dg.shape
    k = _consts(dg)
    g_ih = ln[:G]
    H = G // 4
    parts = np.zeros((n, dpar.shape[0]), dpar.dtype)
    for c in prange(n):
        r0, r1 = chunk(c, n, T * B)
        part = parts[c]
        dg_ih, dg_hh, dbias = part[:G], part[G:2 * G], part[10 * H:]
        dn = np.empty(G, dg.dtype)
        for q in range(r0, r1):
            t, r = q // B, q % B
            if has_mask and not mask[t, r]:
                continue
            da = dg[t, r]
            nx = ri[t, r]
            nh = rh[t, r]
            for j in range(G):
                dbias[j] += da[j]
            for j in range(G):
                dg_ih[j] += da[j] * nx[j]
            for j in range(G):
                dg_hh[j] += da[j] * nh[j]
            for j in range(G):
                dn[j] = da[j] * g_ih[j]
            _normalise_backward(dn, nx, rstd[t, r, 0], k[0], da)
    for c in range(n):
        acc_(dpar, parts[c])


@register_jitable
def _backward_rows(k, n, gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse, dout,
                   dg, drh, dpar, rd, zh, zc, cz):
    b0, b1 = chunk(k, n, dh.shape[0])
    T, _, G = dg.shape
    ab = consts(dg)
    dhc = get_rows(dh, b0, b1)
    dcc = get_rows(dc, b0, b1)
    tmp = np.empty(dhc.shape, dg.dtype)
    scratch = np.empty((3, G), dg.dtype)
    k = _consts(dg)
    has_zh, has_zc = zh.shape[0] > 0, zc.shape[0] > 0
    hkeep = np.empty(dhc.shape if has_zh else (0, 0), dg.dtype)
    ckeep = np.empty(dcc.shape if has_zc else (0, 0), dg.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = prev_step(t, T, reverse)
        _bwd_ew(t, b0, first, tp, gates, rh, rstd, cs, chat, c0, ln, dhc, dcc, mask, has_mask, dout, dg, drh,
                dpar, k, scratch, zh, zc, cz, hkeep, ckeep)
        dot(drh[t, b0:b1], w_hh, tmp, ab, False, False)
        carry(t, b0, dhc, tmp, rd, hkeep, dcc, ckeep, mask, has_mask)
    put_rows(dh, b0, dhc)
    put_rows(dc, b0, dcc)


@register_jitable
def _backward_one(gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, reverse, dout, dg, drh, dpar):
    """``backward`` at batch 1 (``common.one_plain_row``): ``_bwd_ew`` on the carried rows in place, then
    dh = drh[t] W_hh, one row."""
    T, _, G = dg.shape
    scratch = np.empty((3, G), dg.dtype)
    k = _consts(dg)
    unmasked, z2, z3 = no_mask(), off2(dg), off3(dg)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = prev_step(t, T, reverse)
        _bwd_ew(t, 0, first, tp, gates, rh, rstd, cs, chat, c0, ln, dh, dc, unmasked, False, dout, dg, drh, dpar,
                k, scratch, z3, z3, z3, z2, z2)
        vec_mat(drh[t, 0], w_hh, dh[0], False)


@jit
def backward(gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse, dout, dg, drh, dpar,
             rd, zh, zc, cz):
    """Backward of ``forward`` (its saved buffers in). dh, dc <f>[B, H]: in ∂L/∂(final
    state), out ∂L/∂(initial state). Writes dg <f>[T, B, 4H] = ∂L/∂(the gates' pre-activation) (for
    ``input_backward``) and drh <f>[T, B, 4H] = ∂L/∂(h_{t-1} W_hh^T), both 0 past a length; adds
    the gradients of ln's γ_c and β_c into dpar[8H:10H] (dpar <f>[14H] = [γ_ih | γ_hh | γ_c | β_c |
    the bias b_ih + b_hh]). rd, zh, zc, cz: as ``forward``'s."""
    if one_plain_row(dh, has_mask, rd, zh) and zc.shape[0] == 0:
        _backward_one(gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, reverse, dout, dg, drh, dpar)
    else:
        _backward_rows(0, 1, gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse,
                       dout, dg, drh, dpar, rd, zh, zc, cz)


@jit(parallel=True)
def backward_par(n, gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse, dout, dg, drh,
                 dpar, rd, zh, zc, cz):
    """``backward`` with the batch in n chunks, one per thread; each sums its own share of
    the parameters' gradients in dpar, added to dpar at the end."""
    parts = np.zeros((n, dpar.shape[0]), dpar.dtype)
    for k in prange(n):
        _backward_rows(k, n, gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse, dout,
                       dg, drh, parts[k], rd, zh, zc, cz)
    for k in range(n):
        acc_(dpar, parts[k])


@jit
def backward_step(t, tprev, tmp, reverse, gates, rh, rstd, cs, chat, c0, ln, dh, dc, mask, has_mask, dout, dg,
                  drh, dpar):
    """Finish step tprev (tmp = drh[tprev] W_hh) if tprev >= 0, then step t's elementwise if t >= 0."""
    if tprev >= 0:
        merge_set(tprev, 0, dh, tmp, mask, has_mask)
    if t >= 0:
        tp, first = prev_step(t, gates.shape[0], reverse)
        _bwd_ew(t, 0, first, tp, gates, rh, rstd, cs, chat, c0, ln, dh, dc, mask, has_mask, dout, dg, drh,
                dpar, _consts(dg), np.empty((3, dg.shape[2]), dg.dtype), off3(dg), off3(dg), off3(dg), off2(dg),
                off2(dg))
