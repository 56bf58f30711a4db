"""Recurrent dropout and zoneout inside the compiled loops (``rnnkit.cells.Noise``): the per-row pieces
the cells' rows functions call around their elementwise step. Every array is a placeholder of size 0
when its regulariser is off (the rows functions test ``shape[0] > 0``).

    rd  <f>[B, P]      recurrent dropout's multiplier on h where it enters W_hh, the same every step
    z   <f>[T, B, N]   zoneout's weight of the old state: new = z ⊙ old + (1 - z) ⊙ new

Forward, per step (rows from ``noise_rows``): ``dropped(h)`` feeds the mat-mul, ``zone`` mixes the kept
state into the new one (and ``put_out`` rewrites the output with it). Backward: after ∂L/∂h_t is
complete, ``zone_split`` sends z ⊙ ∂L/∂h_t straight to the old state (``add_kept`` adds it after the
step) and leaves (1 - z) ⊙ ∂L/∂h_t for the cell; the mat-mul's ∂L/∂h_{t-1} is scaled by rd (``scale``;
``carry`` and ``carry_add`` do the whole carry). A step past a sequence's end is left alone (its state
passes through). ``zone_mask`` draws zoneout's training mask."""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from .common import chunk, dot, merge_acc, merge_set, one_, put_rows, set_
from .jit import jit, parallel


@register_jitable
def dropped(hc, rd, b0, dst):
    """dst[b] = hc[b] ⊙ rd[b0 + b]: the state as it enters the recurrent mat-mul."""
    for b in range(hc.shape[0]):
        r = rd[b0 + b]
        hb = hc[b]
        db = dst[b]
        for j in range(hb.shape[0]):
            db[j] = hb[j] * r[j]


@register_jitable
def dot_dropped(hc, rd, b0, hin, w_hh, gh, ab, bt):
    """gh = (hc ⊙ rd) W (``common.dot(·, w_hh, gh, ab, False, bt)``), through the scratch rows hin;
    gh = hc W when recurrent dropout is off (rd of size 0)."""
    if rd.shape[0] > 0:
        dropped(hc, rd, b0, hin)
        dot(hin, w_hh, gh, ab, False, bt)
    else:
        dot(hc, w_hh, gh, ab, False, bt)


@register_jitable
def noise_rows(like, rd, z):
    """The forward's rows for the regularisers, shaped like ``like`` <f>[B, N]: hin (h ⊙ rd, for the
    mat-mul) and hold (the old state, for zoneout), each of size 0 when its regulariser is off."""
    return (np.empty(like.shape if rd.shape[0] > 0 else (0, 0), like.dtype),
            np.empty(like.shape if z.shape[0] > 0 else (0, 0), like.dtype))


@register_jitable
def zone(t, b0, z, old, new, mask, has_mask):
    """new[b] = new[b] + z[t, b0 + b] ⊙ (old[b] - new[b]) on the rows valid at step t."""
    for b in range(new.shape[0]):
        if has_mask and not mask[t, b0 + b]:
            continue
        zb = z[t, b0 + b]
        ob = old[b]
        nb = new[b]
        for j in range(nb.shape[0]):
            nb[j] = nb[j] + zb[j] * (ob[j] - nb[j])


@register_jitable
def put_out(t, b0, hc, out, off, mask, has_mask):
    """out[t, b0 + b, off:off + P] = hc[b] on the valid rows (the output after zoneout)."""
    P = hc.shape[1]
    for b in range(hc.shape[0]):
        if not has_mask or mask[t, b0 + b]:
            set_(out[t, b0 + b, off:off + P], hc[b])


@register_jitable
def state_out(t, b0, z, old, hc, out, off, mask, has_mask, hs, keep):
    """The end of step t for the state hc: zoneout (z of size 0: off) mixes the old state into it on the
    valid rows and rewrites the output with it; keep: hs[t] keeps hc (training with a mask)."""
    if z.shape[0] > 0:
        zone(t, b0, z, old, hc, mask, has_mask)
        put_out(t, b0, hc, out, off, mask, has_mask)
    if keep:
        put_rows(hs[t], b0, hc)


@register_jitable
def zone_split(t, b0, z, d, keep, mask, has_mask):
    """Backward of ``zone`` on the valid rows: keep[b] = z ⊙ d[b] (to the old state), d[b] -= keep[b]
    (the (1 - z) part, to the new state)."""
    for b in range(d.shape[0]):
        if has_mask and not mask[t, b0 + b]:
            continue
        split_row(z[t, b0 + b], d[b], keep[b])


@register_jitable
def split_row(zb, db, kb):
    """One row of ``zone_split``: kb = zb ⊙ db, db -= kb."""
    for j in range(db.shape[0]):
        kb[j] = zb[j] * db[j]
    for j in range(db.shape[0]):
        db[j] = db[j] - kb[j]


@register_jitable
def add_kept(t, b0, d, keep, mask, has_mask):
    """d[b] += keep[b] on the valid rows (``zone_split``'s part for the old state)."""
    for b in range(d.shape[0]):
        if has_mask and not mask[t, b0 + b]:
            continue
        db = d[b]
        kb = keep[b]
        for j in range(db.shape[0]):
            db[j] += kb[j]


@register_jitable
def scale(tmp, rd, b0):
    """tmp[b] ⊙= rd[b0 + b]: the mat-mul's ∂L/∂h_{t-1} through dropped(h)."""
    for b in range(tmp.shape[0]):
        r = rd[b0 + b]
        tb = tmp[b]
        for j in range(tb.shape[0]):
            tb[j] = tb[j] * r[j]


@register_jitable
def off2(like):
    """A 2-D placeholder of like's dtype: the regulariser is off."""
    return np.empty((0, 0), like.dtype)


@register_jitable
def off3(like):
    """A 3-D placeholder of like's dtype: the regulariser is off."""
    return np.empty((0, 0, 0), like.dtype)


@register_jitable
def carry(t, b0, dh, tmp, rd, hkeep, dc, ckeep, mask, has_mask):
    """The carries after step t's mat-mul tmp = dg_t W_hh, on the rows valid at t (``merge_set``):
    dh = tmp ⊙ rd (rd of size 0: tmp) plus zoneout's share hkeep, and dc += ckeep (either of size 0
    when off)."""
    if rd.shape[0] > 0:
        scale(tmp, rd, b0)
    merge_set(t, b0, dh, tmp, mask, has_mask)
    if hkeep.shape[0] > 0:
        add_kept(t, b0, dh, hkeep, mask, has_mask)
    if ckeep.shape[0] > 0:
        add_kept(t, b0, dc, ckeep, mask, has_mask)


@register_jitable
def carry_add(t, b0, dg, w, dh, tmp, acc, ab, rd, keep, mask, has_mask):
    """The GRUs' carry after step t, where the mat-mul adds to the direct term already in dh:
    dh += (dg W) ⊙ rd, the product formed in tmp (acc: added to what tmp holds), or dh += dg W in place
    when recurrent dropout is off (rd of size 0; masked rows of dg are 0, so their dh passes through);
    then zoneout's share keep on the valid rows (keep of size 0 when off)."""
    if rd.shape[0] > 0:
        dot(dg, w, tmp, ab, acc, False)
        scale(tmp, rd, b0)
        merge_acc(dh, tmp)
    else:
        dot(dg, w, dh, ab, True, False)
    if keep.shape[0] > 0:
        add_kept(t, b0, dh, keep, mask, has_mask)


_PHI = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment (2^64 / golden ratio)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)
_LOW = np.uint64(0xFFFFFFFF)


@register_jitable
def _zone_mask_rows(k, n, seed, threshold, z):
    """Steps of chunk k of n of ``zone_mask``."""
    t0, t1 = chunk(k, n, z.shape[0])
    _, B, N = z.shape
    one = one_(z)
    zero = one - one
    for t in range(t0, t1):
        for b in range(B):
            row = z[t, b]
            start = seed + np.uint64((t * B + b) * N) * _PHI
            for j in range(N):
                x = start + np.uint64(j) * _PHI
                x = (x ^ (x >> _S30)) * _M1
                x = (x ^ (x >> _S27)) * _M2
                x = x ^ (x >> _S31)
                row[j] = one if (x & _LOW) < threshold else zero


@jit
def zone_mask(seed, threshold, z):
    """Zoneout's training mask z <f>[T, B, N]: element i (in C order) is 1 (the unit keeps its old value)
    where the low 32 bits of splitmix64's mix of ``seed + i * 0x9E3779B97F4A7C15`` (uint64, wrapping)
    are below threshold (rate * 2^32), else 0. A counter-based draw: each element from its index alone,
    so any split over threads gives the same mask, without a T*B*N array of random numbers."""
    _zone_mask_rows(0, 1, seed, threshold, z)


zone_mask_par = parallel(_zone_mask_rows)
"""``zone_mask`` with the steps in n chunks, one per thread."""
