"""The minimal cells' loops (MinGRU, MinLSTM: h_t = a_t ⊙ h_{t-1} + b_t, a_t and b_t from the input
projection alone): one compiled pass forward (adds the bias, computes every step's coefficients and
scans) and one backward (the reverse scan and the coefficients' derivatives, writing ∂loss/∂gi and
summing the bias gradient as it goes), and the streaming step of one layer. ``cell`` is the cell's code
in the driver table (``fused.drivers``: 0 minGRU, 1 minLSTM; G = 2 + cell gate blocks). Lanes (one
sequence, up to 256 hidden units) run in parallel; time is sequential, so no log space is needed.

Float32 and float64; in float32 the sigmoid is ``common``'s branch-free rational form (absolute error
~1e-7) and exp a branch-free polynomial (relative error < 3e-7), so that the loops vectorise; float64
is exact.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .common import one_, sigmoid_
from .jit import OPTIONS, jit

_INLINE = dict(OPTIONS, inline="always")  # helpers compiled into the loops that call them
_LANE = 256  # hidden units per parallel job: 1 KB runs of each row (64-unit runs cost a TLB miss a row a step)


def _prefetcher(write: int):
    """An intrinsic ``prefetch(a, i)``: LLVM's prefetch of a[i]'s cache line (for a write if ``write``)."""
    @intrinsic
    def prefetch(typingctx, array, index):
        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = builder.module.declare_intrinsic(
                "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
            address = builder.bitcast(builder.gep(data, [args[1]]), i8p)
            builder.call(fn, [address, ir.Constant(i32, write), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()
        return types.void(array, types.intp), codegen
    return prefetch


_prefetch_read, _prefetch_write = _prefetcher(0), _prefetcher(1)


@intrinsic
def _pow2(typingctx, n):
    """2**n for a float32 n holding an integer in [-126, 127], built from its exponent bits."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return types.float32(types.float32), codegen


_LOG2E, _LN2_HI, _LN2_LO = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_MIN, _HALF32 = np.float32(-87.0), np.float32(0.5)
_EXP_TAYLOR = tuple(np.float32(1.0 / math.factorial(k)) for k in range(6, -1, -1))  # 1/6!, ..., 1/1!, 1/0!


@njit(**_INLINE)
def _exp32(x):
    """exp(x) for float32 x <= 0 (x < -87 gives ~1e-38), branch-free so that loops vectorise (numba's
    exp does not without SVML): 2**n e**r with r = x - n ln 2 in [-ln2/2, ln2/2] and e**r by its
    Taylor polynomial to r**7; relative error < 3e-7."""
    x = _EXP_MIN if x < _EXP_MIN else x
    n = np.floor(x * _LOG2E + _HALF32)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = np.float32(1.0 / 5040.0)  # 1/7!
    for c in _EXP_TAYLOR:  # Horner's rule (a constant tuple: unrolled)
        p = r * p + c
    return p * _pow2(n)


def exp_(x):
    """exp for the loops (the polynomial above in float32, libm in float64)."""
    return math.exp(x)


@overload(exp_)
def _ol_exp(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: math.exp(x)


@njit(**_INLINE)
def _minlstm_gates(kf, ki, one):
    """minLSTM's normalised gates (a, 1 - a) = (f, i) / (f + i), f = σ(kf), i = σ(ki): with
    E = exp(-k), f / (f + i) = (1 + E_i) / (2 + E_i + E_f), every term scaled by exp(-m),
    m = max(0, -kf, -ki), so that no exp overflows and the denominator is >= 1 (the paper's log-space
    form, softplus differences, needs a log as well; this needs three exps)."""
    zero = one - one
    m = max(zero, max(-kf, -ki))
    em, ef, ei = exp_(-m), exp_(-kf - m), exp_(-ki - m)
    c = one / (em + em + ef + ei)
    return (em + ei) * c, (em + ef) * c


@njit(**_INLINE)
def _g(u, s, one):
    """min_g(u) given s = σ(u) (computed on both sides so the choice is a select); ``one`` is 1 in
    the arrays' dtype (a float64 literal would turn float32 arithmetic into float64)."""
    return u + one / (one + one) if u >= 0.0 else s


@njit(**_INLINE)
def _dg(u, s, one):
    return one if u >= 0.0 else s * (one - s)


@njit(**_INLINE)
def _coefficients(cell, row, bias, j, hidden):
    """(a, b) at one step and unit from the step's projection row + bias. minGRU: a = 1 - σ(k),
    b = σ(k) g(u). minLSTM: a = f/(f+i), b = i/(f+i) g(u)."""
    one = one_(row)
    if cell == 0:
        k, u = row[j] + bias[j], row[hidden + j] + bias[hidden + j]
        z = sigmoid_(k)
        return one - z, z * _g(u, sigmoid_(u), one)
    a, ia = _minlstm_gates(row[j] + bias[j], row[hidden + j] + bias[hidden + j], one)
    u = row[2 * hidden + j] + bias[2 * hidden + j]
    return a, ia * _g(u, sigmoid_(u), one)


@njit(**_INLINE)
def _prefetch_rows(t, b, j0, j1, gi, dgi, dout, hs, reverse):
    """Prefetch units j0..j1 of the rows the backward scan reads and writes at step t (the step after
    the current one): the scan walks each sequence's rows from the last to the first, a descending
    stream the hardware prefetcher follows poorly (without this the loop ran ~1.4x slower than the
    same loop walking the rows ascending)."""
    time, hidden = hs.shape[1], hs.shape[2]
    if 0 <= t < time:
        p = t + 1 if reverse else t - 1
        line = 64 // gi.itemsize
        for gate in range(gi.shape[2] // hidden):
            for j in range(gate * hidden + j0, gate * hidden + j1, line):
                _prefetch_read(gi[b, t], j)
                _prefetch_write(dgi[b, t], j)
        for j in range(j0, j1, line):
            _prefetch_read(dout[b, t], j)
            if 0 <= p < time:
                _prefetch_read(hs[b, p], j)


@njit(**_INLINE)
def _mingru_backward_step(row, bias, drow, dh, prev, g, gb, zb, sb, db, j0, j1, hidden):
    """One step of minGRU's reverse scan over units j0..j1: ∂loss/∂(k, u) into drow and added to db
    (the bias gradient), and g (∂loss/∂h through later steps) carried back one step. One loop per
    array written, each from index 0, so that LLVM's alias checks stay few and every loop
    vectorises; σ(k) and σ(u) once each, into zb and sb."""
    one = one_(row)
    k, u, dk, du = row[j0:j1], row[hidden + j0:hidden + j1], drow[j0:j1], drow[hidden + j0:hidden + j1]
    bk, bu, dbk, dbu = bias[j0:j1], bias[hidden + j0:hidden + j1], db[j0:j1], db[hidden + j0:hidden + j1]
    n = j1 - j0
    for j in range(n):
        zb[j] = sigmoid_(k[j] + bk[j])
    for j in range(n):
        sb[j] = sigmoid_(u[j] + bu[j])
    for j in range(n):
        gb[j] = g[j] + dh[j]  # ∂loss/∂h_t
    for j in range(n):  # ∂/∂k: da/dk = -z(1-z), db/dk = z(1-z) g(u)
        dk[j] = gb[j] * (_g(u[j] + bu[j], sb[j], one) - prev[j]) * zb[j] * (one - zb[j])
    for j in range(n):  # ∂/∂u: db/du = z g'(u)
        du[j] = gb[j] * zb[j] * _dg(u[j] + bu[j], sb[j], one)
    for j in range(n):  # ∂loss/∂h_{t-1} = a_t ∂loss/∂h_t
        g[j] = (one - zb[j]) * gb[j]
    for j in range(n):
        dbk[j] += dk[j]
    for j in range(n):
        dbu[j] += du[j]


@njit(**_INLINE)
def _minlstm_backward_step(row, bias, drow, dh, prev, g, gb, ab, sb, db, j0, j1, hidden):
    """The same for minLSTM: a = f/(f+i) = σ(-d) with d = log i - log f, i' = σ(d) = 1 - a,
    da/dd = -a i' and db/dd = a i' g(u), ∂d/∂kf = -(1 - f) = -σ(-kf), ∂d/∂ki = σ(-ki); ab holds a,
    sb σ(u)."""
    one = one_(row)
    kf, ki, u = row[j0:j1], row[hidden + j0:hidden + j1], row[2 * hidden + j0:2 * hidden + j1]
    bf, bi, bu = bias[j0:j1], bias[hidden + j0:hidden + j1], bias[2 * hidden + j0:2 * hidden + j1]
    df, di, du = drow[j0:j1], drow[hidden + j0:hidden + j1], drow[2 * hidden + j0:2 * hidden + j1]
    n = j1 - j0
    for j in range(n):
        gb[j] = g[j] + dh[j]
    for j in range(n):
        ab[j] = _minlstm_gates(kf[j] + bf[j], ki[j] + bi[j], one)[0]
    for j in range(n):
        sb[j] = sigmoid_(u[j] + bu[j])
    for j in range(n):  # ∂loss/∂d, kept in df until the two gates are done
        df[j] = gb[j] * (_g(u[j] + bu[j], sb[j], one) - prev[j]) * ab[j] * (one - ab[j])
    for j in range(n):
        di[j] = df[j] * sigmoid_(-(ki[j] + bi[j]))
    for j in range(n):
        df[j] = -df[j] * sigmoid_(-(kf[j] + bf[j]))
    for j in range(n):  # ∂/∂u: db/du = i' g'(u)
        du[j] = gb[j] * (one - ab[j]) * _dg(u[j] + bu[j], sb[j], one)
    for j in range(n):
        g[j] = ab[j] * gb[j]
    for gate in range(3):
        dbg, dg = db[gate * hidden + j0:gate * hidden + j1], drow[gate * hidden + j0:gate * hidden + j1]
        for j in range(n):
            dbg[j] += dg[j]


@njit(**_INLINE)
def _forward_step(cell, row, bias, h, out, ab, j0, j1, hidden):
    """One step over units j0..j1: h ← a ⊙ h + b into out and h. One loop per array written, each
    from index 0, so that every loop vectorises (ab: the step's a)."""
    one = one_(row)
    n = j1 - j0
    c0, c1 = (1 + cell) * hidden + j0, (1 + cell) * hidden + j1  # the candidate's block: the last
    k, bk, u, bu = row[j0:j1], bias[j0:j1], row[c0:c1], bias[c0:c1]
    if cell == 0:
        for j in range(n):
            ab[j] = one - sigmoid_(k[j] + bk[j])
    else:
        ki, bi = row[hidden + j0:hidden + j1], bias[hidden + j0:hidden + j1]
        for j in range(n):
            ab[j] = _minlstm_gates(k[j] + bk[j], ki[j] + bi[j], one)[0]
    for j in range(n):
        v = u[j] + bu[j]
        out[j] = ab[j] * h[j] + (one - ab[j]) * _g(v, sigmoid_(v), one)
    for j in range(n):
        h[j] = out[j]


@jit(parallel=True)
def forward_loop(cell, gi, bias, h0, valid, reverse, hs):
    """hs[:, t] = a_t ⊙ hs[:, t-1] + b_t (hs[:, -1] = h0), batch first, the steps in reverse with
    ``reverse``; where valid[b, t] is False the state is kept. gi <f>[B, T, G*H]: the input
    projection without its bias, bias <f>[G*H] (added here, not by the GEMM: a GEMM into a kept
    buffer first copies the bias into every row)."""
    batch, time, hidden = hs.shape
    blocks = (hidden + _LANE - 1) // _LANE
    for job in prange(batch * blocks):
        b, j0 = job // blocks, (job % blocks) * _LANE
        j1 = min(j0 + _LANE, hidden)
        h = h0[b, j0:j1].copy()
        ab = np.empty_like(h)
        for s in range(time):
            t = time - 1 - s if reverse else s
            out = hs[b, t, j0:j1]
            if valid[b, t]:
                _forward_step(cell, gi[b, t], bias, h, out, ab, j0, j1, hidden)
            else:
                for j in range(j1 - j0):
                    out[j] = h[j]


@jit(parallel=True)
def backward_loop(cell, gi, bias, h0, valid, reverse, hs, dout, dfinal, dgi, dh0, db):
    """The reverse scan of ``forward_loop``: dgi from dout (∂loss/∂hs) and dfinal (∂loss/∂h_n), dh0,
    and db <f>[B, G*H], each sequence's sum of its dgi rows over time (the bias gradient, summed over
    the batch outside), so that no pass over dgi is needed for it."""
    batch, time, hidden = hs.shape
    gates = 2 + cell
    zero = one_(gi) - one_(gi)
    blocks = (hidden + _LANE - 1) // _LANE
    for job in prange(batch * blocks):
        b, j0 = job // blocks, (job % blocks) * _LANE
        j1 = min(j0 + _LANE, hidden)
        g = dfinal[b, j0:j1].copy()  # ∂loss/∂h_t through every later step
        gb, zb, sb = np.empty_like(g), np.empty_like(g), np.empty_like(g)
        for gate in range(gates):
            for j in range(j0, j1):
                db[b, gate * hidden + j] = zero
        for s in range(time):
            t = s if reverse else time - 1 - s
            p = t + 1 if reverse else t - 1  # the step before t in the scan's order
            _prefetch_rows(p, b, j0, j1, gi, dgi, dout, hs, reverse)
            if valid[b, t]:
                prev = hs[b, p, j0:j1] if 0 <= p < time else h0[b, j0:j1]
                if cell == 0:
                    _mingru_backward_step(gi[b, t], bias, dgi[b, t], dout[b, t, j0:j1], prev, g, gb, zb, sb,
                                          db[b], j0, j1, hidden)
                else:
                    _minlstm_backward_step(gi[b, t], bias, dgi[b, t], dout[b, t, j0:j1], prev, g, gb, zb, sb,
                                           db[b], j0, j1, hidden)
            else:
                for gate in range(gates):
                    for j in range(j0, j1):
                        dgi[b, t, gate * hidden + j] = zero
        for j in range(j0, j1):
            dh0[b, j] = g[j - j0]


@jit
def stream_layer(cell, x, w, bias, h, gi):
    """One step of one layer in place, for streaming: h <f>[B, H] ← a ⊙ h + b from x <f>[B, I],
    w <f>[G*H, I], bias <f>[G*H]; gi <f>[G*H] scratch. Not parallel: a step is microseconds."""
    batch, hidden = h.shape
    zero = one_(gi) - one_(gi)
    for b in range(batch):
        for r in range(gi.shape[0]):  # the projection without the bias, as the whole-sequence loops take it
            acc = zero
            for i in range(x.shape[1]):
                acc += w[r, i] * x[b, i]
            gi[r] = acc
        for j in range(hidden):
            a, bb = _coefficients(cell, gi, bias, j, hidden)
            h[b, j] = a * h[b, j] + bb
