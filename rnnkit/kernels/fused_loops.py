"""Compiled time loops of the fused CPU backend: forward and backward of each cell over a sequence.

Each cell has an elementwise step (``_<cell>_fwd_ew`` / ``_<cell>_bwd_ew``: one fused pass over the
batch at step t) and two drivers that share it:

- ``<cell>_forward`` / ``<cell>_backward`` run the whole time loop inside numba, with the recurrent
  mat-mul through BLAS (``dot``) — no Python per step; best when the per-step work is small.
  ``<cell>_forward_par`` / ``<cell>_backward_par`` split the batch into n chunks and run the loop
  for each on its own thread (sequences are independent: no synchronisation per step);
- ``<cell>_forward_step`` / ``<cell>_backward_step`` do one step's elementwise work, for a Python
  loop in ``fused.py`` whose recurrent mat-mul is oneDNN with prepacked weights — best for large
  shapes, where oneDNN's GEMM beats BLAS by more than the ~10 µs of Python per step.

The input projection (for all steps at once) and the weight gradients (one GEMM over all steps) are
done outside, in torch. Conventions (``G`` gates, ``H`` hidden, ``P`` output size, ``W`` output width)::

    gates  <f>[T, B, G*H]  in: x W_ih^T + folded biases; out: the activated gates
    h, c   <f>[B, P], [B, H]  the state: in the initial state, out the final one (updated in place)
    out    <f>[T, B, W]    the layer output; this direction writes columns off:off+P (0 past a length)
    hs     <f>[T, B, P]    the state sequence, written when keep_h (training with a mask; without a
                           mask the output is the state sequence)
    mask   <bool>[T, B]    True on valid steps (has_mask=False: ignored, may be a dummy)
    reverse                the direction runs t = T-1 .. 0; backward visits steps in the opposite order
    dh, dc                 backward carries: in ∂L/∂(final state), out ∂L/∂(initial state)

Writing the elementwise loops so that LLVM vectorises them (measured: 5-12x slower otherwise):
every inner loop is ``for j in range(n)`` from 0 (a loop starting at H is not vectorised), and no
loop reads one array at an offset while writing it at another (the gate write-back is a separate
in-place pass; the alias checks otherwise defeat the vectoriser). Small per-row scratch buffers
split the work into several such passes over L1-resident rows.

The ``dot`` helper is BLAS gemm (scipy's, through numba's helper) except at batch 1, where a plain
vectorised loop avoids the call overhead. float32 uses a vectorisable rational tanh (abs. error
< 3e-7, well inside float32 training noise); float64 uses libm, to match the reference to ~1e-12.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic, overload, register_jitable

if "NUMBA_THREADING_LAYER" not in os.environ:
    # OpenMP first: numba's omp layer then runs on the libgomp that torch has already loaded, so its
    # threads are torch's own (the ones that spin after each torch op) and do not compete with them.
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
set_threads = numba.set_num_threads


def _max_threads() -> int:
    """The most threads a ``*_par`` driver may use: numba's pool (the CPU count unless
    NUMBA_NUM_THREADS), or 1 unless its threading layer is thread-safe (OpenMP or TBB; the fallback
    ``workqueue`` aborts when two Python threads launch at once)."""
    from numba.np.ufunc import parallel
    parallel._launch_threads()  # loads the layer (numba 0.68, pinned)
    return numba.config.NUMBA_NUM_THREADS if numba.threading_layer() in ("omp", "tbb") else 1


MAX_THREADS = _max_threads()

_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no nnan/ninf: NaNs and infinities propagate
_JIT = dict(cache=True, nogil=True, fastmath=_FM, error_model="numpy", boundscheck=False)
_PAR = dict(_JIT, parallel=True)

# ------------------------------------------------------------------------------------ activations
# tanh(x) ≈ x·p(x²)/q(x²) on [-7.9053, 7.9053] (outside, float32 tanh is ±1): a minimax rational
# approximation, max abs. error 2.6e-7 in float32 — branch-free, so the gate loops vectorise.
_A1, _A3, _A5, _A7 = (np.float32(v) for v in (4.89352455891786e-03, 6.37261928875436e-04,
                                              1.48572235717979e-05, 5.12229709037114e-08))
_A9, _A11, _A13 = (np.float32(v) for v in (-8.60467152213735e-11, 2.00018790482477e-13,
                                           -2.76076847742355e-16))
_B0, _B2, _B4, _B6 = (np.float32(v) for v in (4.89352518554385e-03, 2.26843463243900e-03,
                                              1.18534705686654e-04, 1.19825839466702e-06))
_CLAMP = np.float32(7.90531110763549805)
_NCLAMP = np.float32(-7.90531110763549805)
_HALF32 = np.float32(0.5)


@register_jitable
def _tanh32(x):
    x = _CLAMP if x > _CLAMP else x
    x = _NCLAMP if x < _NCLAMP else x
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return x * p / q


def tanh_(x):
    """tanh for the loops (fast rational form in float32, libm in float64)."""
    return np.tanh(x)


def sigmoid_(x):
    """The logistic function for the loops (via tanh in float32, via exp in float64)."""
    return 1.0 / (1.0 + np.exp(-x))


@overload(tanh_)
def _ol_tanh(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    return lambda x: np.tanh(x)


@overload(sigmoid_)
def _ol_sigmoid(x):
    if x == types.float32:
        return lambda x: _HALF32 * _tanh32(_HALF32 * x) + _HALF32
    return lambda x: 1.0 / (1.0 + np.exp(-x))


def one_(a):
    """1 in the dtype of array ``a`` (a float64 literal would promote float32 arithmetic)."""
    return a.dtype.type(1)


@overload(one_)
def _ol_one(a):
    if a.dtype == types.float32:
        return lambda a: np.float32(1.0)
    return lambda a: np.float64(1.0)


# ------------------------------------------------------------------------------- row helpers
# Explicit loops instead of slice assignment: numba compiles its broadcasting setitem slowly (~5 s
# on a cold cache), and these keep the first call, compilation included, short.
@register_jitable
def _zero(dst):
    for j in range(dst.shape[0]):
        dst[j] = 0


@register_jitable
def _set(dst, src):
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@register_jitable
def _acc(dst, src):
    for j in range(dst.shape[0]):
        dst[j] += src[j]


# ------------------------------------------------------------------------------------- mat-mul
# The per-step GEMMs call a Fortran ?gemm_ by the names below, bound when this module is imported
# (``_bind_blas``), so the cached machine code holds names, not addresses: MKL's, from the
# libtorch_cpu that torch has loaded, where it exports them (x86-64 wheels), else scipy's OpenBLAS,
# which numba's np.dot would use. MKL is the faster of the two at the loops' shapes (tens of rows, K and
# N in the hundreds; one thread) and ties from about 128 rows. Each call
# runs on the calling thread (``rnnkit_blas_threads(1)``: MKL's thread-local setting, restored after).
_vp = types.voidptr
_sgemm = types.ExternalFunction("rnnkit_sgemm", types.void(*(_vp,) * 13))
_dgemm = types.ExternalFunction("rnnkit_dgemm", types.void(*(_vp,) * 13))
_blas_threads = types.ExternalFunction("rnnkit_blas_threads", types.intc(types.intc))


def _bind_blas() -> str:
    """Bind the names above for the compiled code. Returns the library: "mkl" or "openblas" (where
    torch has no MKL, or the environment sets RNNKIT_BLAS=openblas)."""
    import ctypes

    import llvmlite.binding as llvm
    import torch
    from numba.extending import get_cython_function_address
    names = ("sgemm_", "dgemm_", "MKL_Set_Num_Threads_Local")
    try:
        if os.environ.get("RNNKIT_BLAS", "mkl") != "mkl":
            raise OSError("RNNKIT_BLAS asks for scipy's OpenBLAS")
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        addrs = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names]
        blas = "mkl"
    except (OSError, AttributeError):  # not an MKL build of torch
        addrs = [get_cython_function_address("scipy.linalg.cython_blas", name) for name in ("sgemm", "dgemm")]

        @numba.cfunc(types.intc(types.intc))
        def keep_threads(n):  # MKL's thread-local setting has no OpenBLAS twin (fused._OneBlasThread)
            return 0
        addrs.append(keep_threads.address)
        blas = "openblas"
    for name, addr in zip(("rnnkit_sgemm", "rnnkit_dgemm", "rnnkit_blas_threads"), addrs):
        llvm.add_symbol(name, addr)
    return blas


BLAS = _bind_blas()
_N = np.int8(ord("n"))
_T = np.int8(ord("t"))
_SMALL_BATCH = 1  # at most this many rows: a plain loop beats the BLAS call (measured B=1..8)


def kind_(a):
    """BLAS type letter of array ``a``."""
    return np.int8(ord("s" if a.dtype == np.float32 else "d"))


@overload(kind_)
def _ol_kind(a):
    if a.dtype == types.float32:
        return lambda a: np.int8(115)
    return lambda a: np.int8(100)


@register_jitable
def consts(a):
    """[1, 0, 1] in the dtype of ``a``: alpha, beta=0 and beta=1 for ``dot``."""
    c = np.empty(3, a.dtype)
    c[0] = 1
    c[1] = 0
    c[2] = 1
    return c


@register_jitable
def dot(a, b, out, ab, acc, bt):
    """out[M, N] (+)= a[M, K] · B, all C-contiguous, where B = b[K, N], or b[N, K]^T when bt (a weight
    in torch's [out, in] layout, no transposed copy); ab = consts(a); acc: add to out."""
    m, k = a.shape
    n = b.shape[0] if bt else b.shape[1]
    if m <= _SMALL_BATCH and not bt:
        k4 = k - k % 4
        for i in range(m):
            o = out[i]
            if not acc:
                _zero(o)
            ai = a[i]
            for kk in range(0, k4, 4):  # four rows of b per pass over o: 4x less load/store of o
                a0, a1, a2, a3 = ai[kk], ai[kk + 1], ai[kk + 2], ai[kk + 3]
                b0, b1, b2, b3 = b[kk], b[kk + 1], b[kk + 2], b[kk + 3]
                for j in range(n):
                    o[j] += (a0 * b0[j] + a1 * b1[j]) + (a2 * b2[j] + a3 * b3[j])
            for kk in range(k4, k):
                aik = ai[kk]
                bk = b[kk]
                for j in range(n):
                    o[j] += aik * bk[j]
    elif m <= _SMALL_BATCH:
        n4 = n - n % 4
        for i in range(m):
            o = out[i]
            ai = a[i]
            zero = ai[0] - ai[0]
            for j in range(0, n4, 4):  # four dot products per pass over a
                b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
                s0 = s1 = s2 = s3 = zero
                for kk in range(k):
                    x = ai[kk]
                    s0 += x * b0[kk]
                    s1 += x * b1[kk]
                    s2 += x * b2[kk]
                    s3 += x * b3[kk]
                if acc:
                    o[j] += s0
                    o[j + 1] += s1
                    o[j + 2] += s2
                    o[j + 3] += s3
                else:
                    o[j] = s0
                    o[j + 1] = s1
                    o[j + 2] = s2
                    o[j + 3] = s3
            for j in range(n4, n):
                bj = b[j]
                s0 = zero
                for kk in range(k):
                    s0 += ai[kk] * bj[kk]
                o[j] = o[j] + s0 if acc else s0
    else:
        _gemm(a, b, out, ab, acc, bt, m, n, k)


@register_jitable
def _gemm(a, b, out, ab, acc, bt, m, n, k):
    """``dot`` through BLAS on this thread: column-major out^T[n, m] = op(b)^T a^T."""
    dims = np.empty(4, np.int32)
    dims[0], dims[1], dims[2], dims[3] = n, m, k, k if bt else n
    trans = np.empty(2, np.int8)
    trans[0], trans[1] = _T if bt else _N, _N
    beta = ab[2:] if acc else ab[1:]
    prev = _blas_threads(1)
    args = (trans.ctypes, trans[1:].ctypes, dims.ctypes, dims[1:].ctypes, dims[2:].ctypes, ab.ctypes, b.ctypes,
            dims[3:].ctypes, a.ctypes, dims[2:].ctypes, beta.ctypes, out.ctypes, dims.ctypes)
    if kind_(a) == 115:
        _sgemm(*args)
    else:
        _dgemm(*args)
    _blas_threads(prev)


@register_jitable
def _merge_set(t, b0, dh, tmp, mask, has_mask):
    """Backward carry after the recurrent mat-mul when it is the whole gradient (RNN, LSTM):
    dh = tmp on the rows valid at step t; past a length the carry passes through unchanged."""
    for b in range(dh.shape[0]):
        if has_mask and not mask[t, b0 + b]:
            continue
        _set(dh[b], tmp[b])


@register_jitable
def _merge_acc(dh, tmp):
    """Backward carry when the mat-mul adds to a direct term (GRU); masked rows of tmp are 0."""
    for b in range(dh.shape[0]):
        _acc(dh[b], tmp[b])


@register_jitable
def _add_dout(t, b0, dh, dout, doff, mask, has_mask):
    """dh += ∂L/∂out_t on the valid rows (the output past a length is a constant 0)."""
    P = dh.shape[1]
    for b in range(dh.shape[0]):
        if has_mask and not mask[t, b0 + b]:
            continue
        _acc(dh[b], dout[t, b0 + b, doff:doff + P])


@register_jitable
def _prev(t, T, reverse):
    """The step before t in the direction's order, and whether t is its first step."""
    tp = t + 1 if reverse else t - 1
    return tp, tp < 0 or tp >= T


# ------------------------------------------------------------------------------- batch chunks
# Sequences are independent: a driver runs the time loop for rows b0:b1 of the batch, so that
# ``<driver>_par`` can give each thread its own rows for the whole loop, with no synchronisation
# per step. A chunk keeps its carried state (h, c, dh, dc) and per-step scratch in buffers of its
# own (C-contiguous, so the row loops vectorise); the per-step arrays (gates, out, mask, ...) are
# shared and indexed at row b0 + b.
@register_jitable
def _get_rows(src, b0, b1):
    """A C-contiguous copy of rows b0:b1 of src <f>[B, N]."""
    dst = np.empty((b1 - b0, src.shape[1]), src.dtype)
    for b in range(b1 - b0):
        _set(dst[b], src[b0 + b])
    return dst


@register_jitable
def _put_rows(dst, b0, src):
    """dst[b0 + b] = src[b] for every row of src."""
    for b in range(src.shape[0]):
        _set(dst[b0 + b], src[b])


@register_jitable
def _chunk(k, n, B):
    """Rows b0, b1 of chunk k of n over a batch of B."""
    return k * B // n, (k + 1) * B // n


# ------------------------------------------------------------------------------------------ RNN
@register_jitable
def _rnn_fwd_ew(t, b0, gates, gh, h, relu, mask, has_mask, keep_h, out, off, hs):
    B, H = h.shape
    zero = one_(h) - one_(h)
    for b in range(B):
        ob = out[t, b0 + b, off:off + H]
        if has_mask and not mask[t, b0 + b]:
            _zero(ob)
            continue
        g = gates[t, b0 + b]
        ghb = gh[b]
        hb = h[b]
        if relu:
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
        _put_rows(hs[t], b0, h)


@register_jitable
def _rnn_forward_rows(b0, b1, gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs):
    T = gates.shape[0]
    ab = consts(gates)
    hc = _get_rows(h, b0, b1)
    gh = np.empty(hc.shape, h.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot(hc, w_hh, gh, ab, False, not wt)
        _rnn_fwd_ew(t, b0, gates, gh, hc, relu, mask, has_mask, keep_h, out, off, hs)
    _put_rows(h, b0, hc)


@njit(**_JIT)
def rnn_forward(gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs):
    """Elman RNN over the sequence. w_hh <f>[H, H] is W_hh, or W_hh^T when wt (see ``dot``)."""
    _rnn_forward_rows(0, h.shape[0], gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs)


@njit(**_PAR)
def rnn_forward_par(n, gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs):
    """``rnn_forward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[0])
        _rnn_forward_rows(b0, b1, gates, w_hh, wt, h, relu, mask, has_mask, reverse, keep_h, out, off, hs)


@njit(**_JIT)
def rnn_forward_step(t, gates, gh, h, relu, mask, has_mask, keep_h, out, off, hs):
    """One step of ``rnn_forward`` given gh = h W_hh^T."""
    _rnn_fwd_ew(t, 0, gates, gh, h, relu, mask, has_mask, keep_h, out, off, hs)


@register_jitable
def _rnn_bwd_ew(t, b0, hseq, hoff, dh, relu, mask, has_mask, dout, doff, dg):
    B, H = dh.shape
    one = one_(dg)
    zero = one - one
    for b in range(B):
        dgb = dg[t, b0 + b]
        if has_mask and not mask[t, b0 + b]:
            _zero(dgb)
            continue
        hv = hseq[t, b0 + b, hoff:hoff + H]
        do = dout[t, b0 + b, doff:doff + H]
        dhb = dh[b]
        if relu:
            for j in range(H):
                dgb[j] = (dhb[j] + do[j]) if hv[j] > 0 else zero
        else:
            for j in range(H):
                dgb[j] = (dhb[j] + do[j]) * (one - hv[j] * hv[j])


@register_jitable
def _rnn_backward_rows(b0, b1, hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg):
    T = dg.shape[0]
    ab = consts(dg)
    dhc = _get_rows(dh, b0, b1)
    tmp = np.empty(dhc.shape, dh.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        _rnn_bwd_ew(t, b0, hseq, hoff, dhc, relu, mask, has_mask, dout, doff, dg)
        dot(dg[t, b0:b1], w_hh, tmp, ab, False, False)
        _merge_set(t, b0, dhc, tmp, mask, has_mask)
    _put_rows(dh, b0, dhc)


@njit(**_JIT)
def rnn_backward(hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg):
    """Backward of ``rnn_forward``: dg <f>[T, B, H] the pre-activation gradients. hseq[t, :,
    hoff:hoff+H] is the state after step t."""
    _rnn_backward_rows(0, dh.shape[0], hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg)


@njit(**_PAR)
def rnn_backward_par(n, hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg):
    """``rnn_backward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, dh.shape[0])
        _rnn_backward_rows(b0, b1, hseq, hoff, w_hh, dh, relu, mask, has_mask, reverse, dout, doff, dg)


@njit(**_JIT)
def rnn_backward_step(t, tprev, tmp, hseq, hoff, dh, relu, mask, has_mask, dout, doff, dg):
    """Finish step tprev (tmp = dg[tprev] W_hh) if tprev >= 0, then step t's elementwise if t >= 0."""
    if tprev >= 0:
        _merge_set(tprev, 0, dh, tmp, mask, has_mask)
    if t >= 0:
        _rnn_bwd_ew(t, 0, hseq, hoff, dh, relu, mask, has_mask, dout, doff, dg)


# ----------------------------------------------------------------------------------------- LSTM
@register_jitable
def _lstm_fwd_ew(t, b0, gates, gh, hdst, c, mask, has_mask, train, write_out, out, off, cs):
    """Gates, c_t and o·tanh(c_t) into hdst (h, or the pre-projection buffer); the output too when
    write_out (no projection)."""
    B, H = c.shape
    for b in range(B):
        if has_mask and not mask[t, b0 + b]:
            if write_out:
                _zero(out[t, b0 + b, off:off + H])
            if train:
                _set(cs[t, b0 + b], c[b])
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
            _set(out[t, b0 + b, off:off + H], hb)
        if train:
            _set(cs[t, b0 + b], cb)


@register_jitable
def _lstm_forward_rows(b0, b1, gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs):
    T, _, G = gates.shape
    H = G // 4
    B = b1 - b0
    P = h.shape[1]
    proj = w_hr.shape[0] > 0
    ab = consts(gates)
    hc = _get_rows(h, b0, b1)
    cc = _get_rows(c, b0, b1)
    gh = np.empty((B, G), gates.dtype)
    hu = np.empty((B, H if proj else 0), gates.dtype)  # o·tanh(c) before the projection
    hp = np.empty((B, P if proj else 0), gates.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot(hc, w_hh, gh, ab, False, not wt)
        _lstm_fwd_ew(t, b0, gates, gh, hu if proj else hc, cc, mask, has_mask, train, not proj, out, off, cs)
        if proj:
            dot(hu, w_hr, hp, ab, False, True)
            for b in range(B):
                ob = out[t, b0 + b, off:off + P]
                if has_mask and not mask[t, b0 + b]:
                    _zero(ob)
                    continue
                _set(hc[b], hp[b])
                _set(ob, hp[b])
        if train and has_mask:
            _put_rows(hs[t], b0, hc)
    _put_rows(h, b0, hc)
    _put_rows(c, b0, cc)


@njit(**_JIT)
def lstm_forward(gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs):
    """LSTM, gate order i, f, g, o. w_hh <f>[4H, P] is W_hh, or W_hh^T when wt; w_hr <f>[P, H] = W_hr
    or shape (0, 0) without projection. train: keep activated gates in ``gates``, c_t in
    cs <f>[T, B, H] and, with a mask, h_t in hs."""
    _lstm_forward_rows(0, h.shape[0], gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs)


@njit(**_PAR)
def lstm_forward_par(n, gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs):
    """``lstm_forward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[0])
        _lstm_forward_rows(b0, b1, gates, w_hh, wt, w_hr, h, c, mask, has_mask, reverse, train, out, off, hs, cs)


@njit(**_JIT)
def lstm_forward_step(t, gates, gh, h, c, mask, has_mask, train, out, off, hs, cs):
    """One step of ``lstm_forward`` (no projection) given gh = h W_hh^T."""
    _lstm_fwd_ew(t, 0, gates, gh, h, c, mask, has_mask, train, True, out, off, cs)
    if train and has_mask:
        _put_rows(hs[t], 0, h)


@register_jitable
def _lstm_gate_grads(g, dcv, dho, tc, cp, dcb, dgb):
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
def _lstm_bwd_ew(t, b0, first, tp, gates, cs, c0, dsrc, dc, mask, has_mask, dg, proj, hcs):
    """dg[t] from ∂L/∂(o·tanh c_t) = dsrc (dh, or dh W_hr with a projection) and the c carry."""
    B, H = dc.shape
    one = one_(dg)
    tc = np.empty(H, dg.dtype)
    dcv = np.empty(H, dg.dtype)
    for b in range(B):
        r = b0 + b
        dgb = dg[t, r]
        if has_mask and not mask[t, r]:
            _zero(dgb)
            if proj:
                _zero(hcs[t, r])
            continue
        g = gates[t, r]
        cv = cs[t, r]
        cp = c0[r] if first else cs[tp, r]
        src = dsrc[b]
        dcb = dc[b]
        for j in range(H):
            tc[j] = tanh_(cv[j])
        for j in range(H):
            dcv[j] = dcb[j] + src[j] * g[3 * H + j] * (one - tc[j] * tc[j])
        _lstm_gate_grads(g, dcv, src, tc, cp, dcb, dgb)
        if proj:
            hb = hcs[t, r]
            for j in range(H):
                hb[j] = g[3 * H + j] * tc[j]


@register_jitable
def _lstm_backward_rows(b0, b1, gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg, dhs,
                        hcs):
    T, _, G = dg.shape
    H = G // 4
    B = b1 - b0
    proj = w_hr.shape[0] > 0
    ab = consts(dg)
    dhc = _get_rows(dh, b0, b1)
    dcc = _get_rows(dc, b0, b1)
    tmp = np.empty(dhc.shape, dg.dtype)
    dhu = np.empty((B, H if proj else 0), dg.dtype)  # ∂L/∂(o·tanh c) = dh W_hr
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = _prev(t, T, reverse)
        _add_dout(t, b0, dhc, dout, doff, mask, has_mask)
        if proj:
            for b in range(B):
                if has_mask and not mask[t, b0 + b]:
                    _zero(dhs[t, b0 + b])
                else:
                    _set(dhs[t, b0 + b], dhc[b])
            dot(dhc, w_hr, dhu, ab, False, False)
        _lstm_bwd_ew(t, b0, first, tp, gates, cs, c0, dhu if proj else dhc, dcc, mask, has_mask, dg, proj, hcs)
        dot(dg[t, b0:b1], w_hh, tmp, ab, False, False)
        _merge_set(t, b0, dhc, tmp, mask, has_mask)
    _put_rows(dh, b0, dhc)
    _put_rows(dc, b0, dcc)


@njit(**_JIT)
def lstm_backward(gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg, dhs, hcs):
    """Backward of ``lstm_forward``: dg <f>[T, B, 4H] the pre-activation gate gradients; with a
    projection (w_hr <f>[P, H], else shape (0, 0)) also dhs <f>[T, B, P] (∂L/∂h_t, 0 past a length)
    and hcs <f>[T, B, H] = o_t·tanh(c_t) (0 past a length), for dW_hr."""
    _lstm_backward_rows(0, dh.shape[0], gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg,
                        dhs, hcs)


@njit(**_PAR)
def lstm_backward_par(n, gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg, dhs, hcs):
    """``lstm_backward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, dh.shape[0])
        _lstm_backward_rows(b0, b1, gates, cs, c0, w_hh, w_hr, dh, dc, mask, has_mask, reverse, dout, doff, dg,
                            dhs, hcs)


@njit(**_JIT)
def lstm_backward_step(t, tprev, tmp, reverse, gates, cs, c0, dh, dc, mask, has_mask, dout, doff, dg):
    """Finish step tprev (tmp = dg[tprev] W_hh) if tprev >= 0, then step t's elementwise if t >= 0
    (no projection)."""
    if tprev >= 0:
        _merge_set(tprev, 0, dh, tmp, mask, has_mask)
    if t >= 0:
        tp, first = _prev(t, gates.shape[0], reverse)
        _add_dout(t, 0, dh, dout, doff, mask, has_mask)
        _lstm_bwd_ew(t, 0, first, tp, gates, cs, c0, dh, dc, mask, has_mask, dg, False, dg)


# ------------------------------------------------------------------------------------------ GRU
@register_jitable
def _gru_fwd_ew(t, b0, gates, gh, b_hn, h, mask, has_mask, train, out, off, ghn):
    B, H = h.shape
    nb = np.empty(H, h.dtype)
    for b in range(B):
        ob = out[t, b0 + b, off:off + H]
        if has_mask and not mask[t, b0 + b]:
            _zero(ob)
            continue
        g = gates[t, b0 + b]
        ghb = gh[b]
        hb = h[b]
        for j in range(2 * H):
            g[j] = sigmoid_(g[j] + ghb[j])
        for j in range(H):
            ghb[2 * H + j] = ghb[2 * H + j] + b_hn[j]
        for j in range(H):
            nb[j] = tanh_(g[2 * H + j] + g[j] * ghb[2 * H + j])
        for j in range(H):
            hb[j] = nb[j] + g[H + j] * (hb[j] - nb[j])
        for j in range(H):
            g[2 * H + j] = nb[j]
        _set(ob, hb)
        if train:
            _set(ghn[t, b0 + b], ghb[2 * H:])


@register_jitable
def _gru_forward_rows(b0, b1, gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn):
    T, _, G = gates.shape
    ab = consts(gates)
    hc = _get_rows(h, b0, b1)
    gh = np.empty((b1 - b0, G), gates.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot(hc, w_hh, gh, ab, False, not wt)
        _gru_fwd_ew(t, b0, gates, gh, b_hn, hc, mask, has_mask, train, out, off, ghn)
        if train and has_mask:
            _put_rows(hs[t], b0, hc)
    _put_rows(h, b0, hc)


@njit(**_JIT)
def gru_forward(gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn):
    """GRU, reset_after=True (torch.nn's), gate order r, z, n. gates hold x W_ih^T + b_ih with
    b_hh folded into r and z; b_hn <f>[H] stays inside r·(W_hn h + b_hn). w_hh <f>[3H, H] is W_hh,
    or W_hh^T when wt.
    train: keep r, z, n in ``gates``, W_hn h + b_hn in ghn <f>[T, B, H], h_t in hs with a mask."""
    _gru_forward_rows(0, h.shape[0], gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn)


@njit(**_PAR)
def gru_forward_par(n, gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn):
    """``gru_forward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[0])
        _gru_forward_rows(b0, b1, gates, w_hh, wt, b_hn, h, mask, has_mask, reverse, train, out, off, hs, ghn)


@njit(**_JIT)
def gru_forward_step(t, gates, gh, b_hn, h, mask, has_mask, train, out, off, hs, ghn):
    """One step of ``gru_forward`` given gh = h W_hh^T."""
    _gru_fwd_ew(t, 0, gates, gh, b_hn, h, mask, has_mask, train, out, off, ghn)
    if train and has_mask:
        _put_rows(hs[t], 0, h)


@register_jitable
def _gru_bwd_ew(t, b0, first, tp, gates, ghn, h0, hseq, hoff, dh, mask, has_mask, dout, doff, dgi, dghn, dgh):
    """dgi[t], dghn[t] and the recurrent-side gradient dgh = [dgi_r, dgi_z, dghn] (0 past a length);
    leaves the direct part dh·z in dh (the mat-mul adds dgh W_hh)."""
    B, H = dh.shape
    one = one_(dgi)
    dhv = np.empty(H, dh.dtype)
    for b in range(B):
        r = b0 + b
        dgb = dgi[t, r]
        dgh_b = dgh[b]
        if has_mask and not mask[t, r]:
            _zero(dgb)
            _zero(dghn[t, r])
            _zero(dgh_b)
            continue
        g = gates[t, r]
        a = ghn[t, r]
        hp = h0[r] if first else hseq[tp, r, hoff:hoff + H]
        do = dout[t, r, doff:doff + H]
        dhb = dh[b]
        dnb = dghn[t, r]
        for j in range(H):
            dhv[j] = dhb[j] + do[j]
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
def _gru_backward_rows(b0, b1, gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff, dgi,
                       dghn):
    T, _, G = dgi.shape
    ab = consts(dgi)
    dhc = _get_rows(dh, b0, b1)
    dgh = np.empty((b1 - b0, G), dgi.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = _prev(t, T, reverse)
        _gru_bwd_ew(t, b0, first, tp, gates, ghn, h0, hseq, hoff, dhc, mask, has_mask, dout, doff, dgi, dghn, dgh)
        dot(dgh, w_hh, dhc, ab, True, False)  # masked rows of dgh are 0: their dh passes through
    _put_rows(dh, b0, dhc)


@njit(**_JIT)
def gru_backward(gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff, dgi, dghn):
    """Backward of ``gru_forward``: dgi <f>[T, B, 3H] gradients of the input-side pre-activations
    (r, z, n); dghn <f>[T, B, H] that of W_hn h + b_hn (= dgi_n·r). The recurrent-side gradient is
    [dgi_r, dgi_z, dghn]."""
    _gru_backward_rows(0, dh.shape[0], gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff,
                       dgi, dghn)


@njit(**_PAR)
def gru_backward_par(n, gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff, dgi, dghn):
    """``gru_backward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, dh.shape[0])
        _gru_backward_rows(b0, b1, gates, ghn, h0, hseq, hoff, w_hh, dh, mask, has_mask, reverse, dout, doff,
                           dgi, dghn)


@njit(**_JIT)
def gru_backward_step(t, tprev, tmp, reverse, gates, ghn, h0, hseq, hoff, dh, mask, has_mask, dout, doff,
                      dgi, dghn, dgh):
    """Add tmp = dgh W_hh of step tprev to dh if tprev >= 0, then step t's elementwise (into dgh)."""
    if tprev >= 0:
        _merge_acc(dh, tmp)
    if t >= 0:
        tp, first = _prev(t, gates.shape[0], reverse)
        _gru_bwd_ew(t, 0, first, tp, gates, ghn, h0, hseq, hoff, dh, mask, has_mask, dout, doff, dgi, dghn, dgh)


@register_jitable
def _grux_forward_rows(b0, b1, gates, w_hrz, w_hn, wt, h, mask, has_mask, reverse, train, out, off, hs):
    T, _, G = gates.shape
    H = G // 3
    B = b1 - b0
    ab = consts(gates)
    hc = _get_rows(h, b0, b1)
    ghrz = np.empty((B, 2 * H), gates.dtype)
    rh = np.empty((B, H), gates.dtype)
    ghn = np.empty((B, H), gates.dtype)
    nb = np.empty(H, gates.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot(hc, w_hrz, ghrz, ab, False, not wt)
        for b in range(B):
            g = gates[t, b0 + b]
            gb = ghrz[b]
            hb = hc[b]
            rb = rh[b]
            for j in range(2 * H):
                g[j] = sigmoid_(g[j] + gb[j])
            for j in range(H):
                rb[j] = g[j] * hb[j]
        dot(rh, w_hn, ghn, ab, False, not wt)
        for b in range(B):
            ob = out[t, b0 + b, off:off + H]
            if has_mask and not mask[t, b0 + b]:
                _zero(ob)
                continue
            g = gates[t, b0 + b]
            gn = ghn[b]
            hb = hc[b]
            for j in range(H):
                nb[j] = tanh_(g[2 * H + j] + gn[j])
            for j in range(H):
                hb[j] = nb[j] + g[H + j] * (hb[j] - nb[j])
            for j in range(H):
                g[2 * H + j] = nb[j]
            _set(ob, hb)
        if train and has_mask:
            _put_rows(hs[t], b0, hc)
    _put_rows(h, b0, hc)


@njit(**_JIT)
def grux_forward(gates, w_hrz, w_hn, wt, h, mask, has_mask, reverse, train, out, off, hs):
    """GRU, reset_after=False (Cho et al.): n = tanh(gi_n + W_hn (r·h) + b_hn), all biases folded into
    gates. w_hrz <f>[2H, H] = W_h[rz]; w_hn <f>[H, H] = W_hn (both transposed when wt). train: keep
    r, z, n in ``gates``
    and h_t in hs with a mask. (Whole-loop only: its two mat-muls per step make a Python-driven
    loop twice as costly.)"""
    _grux_forward_rows(0, h.shape[0], gates, w_hrz, w_hn, wt, h, mask, has_mask, reverse, train, out, off, hs)


@njit(**_PAR)
def grux_forward_par(n, gates, w_hrz, w_hn, wt, h, mask, has_mask, reverse, train, out, off, hs):
    """``grux_forward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[0])
        _grux_forward_rows(b0, b1, gates, w_hrz, w_hn, wt, h, mask, has_mask, reverse, train, out, off, hs)


@register_jitable
def _grux_backward_rows(b0, b1, gates, h0, hseq, hoff, w_hrz, w_hn, dh, mask, has_mask, reverse, dout, doff, dg,
                        rhs):
    T, _, G = dg.shape
    H = G // 3
    B = b1 - b0
    one = one_(dg)
    ab = consts(dg)
    dhc = _get_rows(dh, b0, b1)
    dnp_s = np.empty((B, H), dg.dtype)
    drh = np.empty((B, H), dg.dtype)
    drz = np.empty((B, 2 * H), dg.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = _prev(t, T, reverse)
        for b in range(B):
            r = b0 + b
            if has_mask and not mask[t, r]:
                _zero(dnp_s[b])
                _zero(dg[t, r])
                continue
            g = gates[t, r]
            dhb = dhc[b]
            dgb = dg[t, r]
            dn = dnp_s[b]
            _acc(dhb, dout[t, r, doff:doff + H])
            for j in range(H):
                n = g[2 * H + j]
                dn[j] = dhb[j] * (one - g[H + j]) * (one - n * n)
            for j in range(H):
                dgb[2 * H + j] = dn[j]
        dot(dnp_s, w_hn, drh, ab, False, False)
        for b in range(B):
            r = b0 + b
            if has_mask and not mask[t, r]:
                _zero(drz[b])
                _zero(rhs[t, r])
                continue
            g = gates[t, r]
            hp = h0[r] if first else hseq[tp, r, hoff:hoff + H]
            dhb = dhc[b]
            dgb = dg[t, r]
            db = drh[b]
            dzb = drz[b]
            rb = rhs[t, r]
            for j in range(H):
                rg = g[j]
                dgb[j] = db[j] * hp[j] * rg * (one - rg)
            for j in range(H):
                z = g[H + j]
                dgb[H + j] = dhb[j] * (hp[j] - g[2 * H + j]) * z * (one - z)
            for j in range(2 * H):
                dzb[j] = dgb[j]
            for j in range(H):
                rb[j] = g[j] * hp[j]
            for j in range(H):
                dhb[j] = dhb[j] * g[H + j] + db[j] * g[j]
        dot(drz, w_hrz, dhc, ab, True, False)  # masked rows of drz are 0: their dh passes through
    _put_rows(dh, b0, dhc)


@njit(**_JIT)
def grux_backward(gates, h0, hseq, hoff, w_hrz, w_hn, dh, mask, has_mask, reverse, dout, doff, dg, rhs):
    """Backward of ``grux_forward``: dg <f>[T, B, 3H] the pre-activation gradients (the same on the
    input and recurrent side); rhs <f>[T, B, H] = r_t·h_{t-1} (0 past a length), for dW_hn."""
    _grux_backward_rows(0, dh.shape[0], gates, h0, hseq, hoff, w_hrz, w_hn, dh, mask, has_mask, reverse, dout, doff,
                        dg, rhs)


@njit(**_PAR)
def grux_backward_par(n, gates, h0, hseq, hoff, w_hrz, w_hn, dh, mask, has_mask, reverse, dout, doff, dg, rhs):
    """``grux_backward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, dh.shape[0])
        _grux_backward_rows(b0, b1, gates, h0, hseq, hoff, w_hrz, w_hn, dh, mask, has_mask, reverse, dout, doff,
                            dg, rhs)


# ------------------------------------------------------------------------- small training calls
# A whole direction of a layer, forward or backward, in one compiled call: the input projection,
# the time loop and (backward) every gradient, with no torch operator in between. For training calls
# so small that the torch operators around the loops (~25 a direction) would cost more than the
# arithmetic (``fused.SMALL_TRAIN_MAX_MACS``). Unmasked sequences; RNN, LSTM without projection, GRU
# with reset_after. The time loops are the layer's own (``_<cell>_forward_rows`` and
# ``_<cell>_backward_rows``); out <f>[T, B, D*P] holds the state sequence at columns off:off+P.
@register_jitable
def _project(x, w_ih, b_ih, b_hh, folded, gates):
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
def _small_grads(x, dgi, dgh, out, off, h0, reverse, w_ih, dx, dw_ih, dw_hh, db_ih, db_hh):
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
def _no_mask():
    return np.zeros((1, 1), np.bool_)


@njit(**_JIT)
def rnn_small_forward(x, w_ih, b_ih, b_hh, w_hh, h, relu, reverse, out, off):
    """One direction of an Elman RNN layer over x <f>[T, B, I] from h <f>[B, H] (updated in place)."""
    T, B, _ = x.shape
    gates = np.empty((T, B, h.shape[1]), x.dtype)
    _project(x, w_ih, b_ih, b_hh, gates.shape[2], gates)
    _rnn_forward_rows(0, B, gates, w_hh, False, h, relu, _no_mask(), False, reverse, False, out, off,
                      np.empty((1, 1, 1), x.dtype))


@njit(**_JIT)
def rnn_small_backward(x, out, off, h0, w_ih, w_hh, dh, relu, reverse, dout, dx, dw_ih, dw_hh, db_ih, db_hh):
    """Backward of ``rnn_small_forward``: adds to dx and the weight gradients; dh <f>[B, H], the final
    state's gradient, becomes h0's."""
    dg = np.empty((x.shape[0], x.shape[1], h0.shape[1]), x.dtype)
    _rnn_backward_rows(0, x.shape[1], out, off, w_hh, dh, relu, _no_mask(), False, reverse, dout, off, dg)
    _small_grads(x, dg, dg, out, off, h0, reverse, w_ih, dx, dw_ih, dw_hh, db_ih, db_hh)


@njit(**_JIT)
def lstm_small_forward(x, w_ih, b_ih, b_hh, w_hh, h, c, reverse, out, off, gates, cs):
    """One direction of an LSTM layer (no projection): gates <f>[T, B, 4H] and cs <f>[T, B, H] are
    kept for backward (the activated gates, c_t)."""
    _project(x, w_ih, b_ih, b_hh, gates.shape[2], gates)
    _lstm_forward_rows(0, x.shape[1], gates, w_hh, False, np.empty((0, 0), x.dtype), h, c, _no_mask(), False,
                       reverse, True, out, off, np.empty((1, 1, 1), x.dtype), cs)


@njit(**_JIT)
def lstm_small_backward(x, gates, cs, c0, out, off, h0, w_ih, w_hh, dh, dc, reverse, dout, dx, dw_ih, dw_hh,
                        db_ih, db_hh):
    """Backward of ``lstm_small_forward`` (dh, dc become h0's and c0's gradients)."""
    dg = np.empty(gates.shape, x.dtype)
    dummy = np.empty((1, 1, 1), x.dtype)
    _lstm_backward_rows(0, x.shape[1], gates, cs, c0, w_hh, np.empty((0, 0), x.dtype), dh, dc, _no_mask(), False,
                        reverse, dout, off, dg, dummy, dummy)
    _small_grads(x, dg, dg, out, off, h0, reverse, w_ih, dx, dw_ih, dw_hh, db_ih, db_hh)


@njit(**_JIT)
def gru_small_forward(x, w_ih, b_ih, b_hh, w_hh, h, reverse, out, off, gates, ghn):
    """One direction of a GRU layer (reset_after): gates <f>[T, B, 3H] and ghn = W_hn h + b_hn
    <f>[T, B, H] are kept for backward."""
    H = h.shape[1]
    _project(x, w_ih, b_ih, b_hh, 2 * H, gates)
    _gru_forward_rows(0, x.shape[1], gates, w_hh, False, b_hh[2 * H:], h, _no_mask(), False, reverse, True, out,
                      off, np.empty((1, 1, 1), x.dtype), ghn)


@njit(**_JIT)
def gru_small_backward(x, gates, ghn, out, off, h0, w_ih, w_hh, dh, reverse, dout, dx, dw_ih, dw_hh, db_ih, db_hh):
    """Backward of ``gru_small_forward``: the recurrent gradient is dgi's r and z parts and dghn."""
    T, B, G = gates.shape
    H = G // 3
    dgi = np.empty(gates.shape, x.dtype)
    dghn = np.empty((T, B, H), x.dtype)
    _gru_backward_rows(0, B, gates, ghn, h0, out, off, w_hh, dh, _no_mask(), False, reverse, dout, off, dgi, dghn)
    dgh = np.empty(gates.shape, x.dtype)
    dgh[:, :, : 2 * H] = dgi[:, :, : 2 * H]
    dgh[:, :, 2 * H:] = dghn
    _small_grads(x, dgi, dgh, out, off, h0, reverse, w_ih, dx, dw_ih, dw_hh, db_ih, db_hh)


# ------------------------------------------------------------------------------------ streaming
# One time step of a whole (unidirectional) stack, for ``step()`` and ``Streamer``: every layer in one
# compiled call, with a per-call overhead of about one numba dispatch. So that the call passes few
# arguments, the weights come as addresses: ptrs <int64>[L, 7] holds, per layer, the addresses of the
# C-contiguous w_ih <f>[G*H, I_l], w_hh <f>[G*H, P], b_ih, b_hh <f>[G*H] (zeros without bias),
# w_hr <f>[P, H] (LSTM projection; 0 without) and ln <f>[10H] (layer-normalised LSTM; 0 without),
# then I_l. They point into the parameters themselves
# (every update is seen); the caller keeps those alive and checks every shape. x_addr is the input
# <f>[steps, B, I_0], one or more time steps (C-contiguous). The state h <f>[L, B, P] (c <f>[L, B, H])
# is updated in place; the top layer's new h at each step is written to y_addr <f>[steps, B, P]. One
# signature for all, ``(ptrs, x_addr, y_addr, steps, h, c, flag)``: c a dummy and flag False where the
# cell has none. ``stream_<cell>_par(n, ...)`` splits the batch into n chunks, one per thread, each
# through every step and layer (sequences are independent: no synchronisation), for whole no-grad
# calls of a large batch; each cell's ``_stream_<cell>_rows`` does the work for one chunk.


@register_jitable
def _stream_rows(ptrs, x_addr, y_addr, t, batch, b0, h):
    """Step t's input rows <f>[b, I_0] and output rows <f>[b, P] from row b0 of the arrays at x_addr
    <f>[steps, batch, I_0] and y_addr <f>[steps, batch, P], for a chunk whose state h <f>[L, b, P]
    has b rows."""
    b, P, I0 = h.shape[1], h.shape[2], ptrs[0, 6]
    row = t * batch + b0
    return (carray(_at(x_addr + row * I0 * h.itemsize, h), (b, I0)),
            carray(_at(y_addr + row * P * h.itemsize, h), (b, P)))


@register_jitable
def _put_top(yout, h):
    """yout <f>[b, P] = the top layer's state h[L - 1]."""
    for r in range(yout.shape[0]):
        _set(yout[r], h[h.shape[0] - 1, r])


@register_jitable
def _state_chunk(s, b0, b1):
    """A C-contiguous copy of rows b0:b1 of a stack's state s <f>[L, B, N]."""
    dst = np.empty((s.shape[0], b1 - b0, s.shape[2]), s.dtype)
    for layer in range(s.shape[0]):
        for b in range(b1 - b0):
            _set(dst[layer, b], s[layer, b0 + b])
    return dst


@register_jitable
def _put_state_chunk(s, b0, src):
    """Rows b0: of a stack's state s <f>[L, B, N] = src <f>[L, b, N]."""
    for layer in range(s.shape[0]):
        _put_rows(s[layer], b0, src[layer])


@register_jitable
def _activate_lstm_gates(g, H):
    """An LSTM row's gate pre-activations g <f>[4H] = [i | f | g | o], activated in place: σ, σ, tanh, σ."""
    for j in range(2 * H):
        g[j] = sigmoid_(g[j])
    for j in range(H):
        g[2 * H + j] = tanh_(g[2 * H + j])
    for j in range(H):
        g[3 * H + j] = sigmoid_(g[3 * H + j])


@intrinsic
def _at(typingctx, addr, like):
    """A pointer to ``like``'s dtype at the integer address ``addr`` (for ``numba.carray``)."""
    ptr = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(types.intp, like), codegen


@register_jitable
def _stream_weights(p, like, G, P):
    """One layer's (w_ih, w_hh, b_ih, b_hh) from its row p of ptrs, as arrays of like's dtype."""
    return (carray(_at(p[0], like), (G, p[6])), carray(_at(p[1], like), (G, P)),
            carray(_at(p[2], like), G), carray(_at(p[3], like), G))


@register_jitable
def _stream_lstm_rows(ptrs, x_addr, y_addr, steps, batch, b0, h, c, unused):
    L, B, P = h.shape
    H = c.shape[2]
    G = 4 * H
    ab = consts(h)
    gates = np.empty((B, G), h.dtype)
    hc = np.empty((B, H), h.dtype)
    for t in range(steps):
        xin, yout = _stream_rows(ptrs, x_addr, y_addr, t, batch, b0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = _stream_weights(ptrs[layer], h, G, P)
            proj = ptrs[layer, 4] != 0
            dot(xin, w_ih, gates, ab, False, True)
            dot(h[layer], w_hh, gates, ab, True, True)
            co = c[layer]
            hdst = hc if proj else h[layer]
            for b in range(B):
                g = gates[b]
                for j in range(G):
                    g[j] = g[j] + bi[j] + bh[j]
                _activate_lstm_gates(g, H)
                cb = co[b]
                hb = hdst[b]
                for j in range(H):
                    cv = g[H + j] * cb[j] + g[j] * g[2 * H + j]
                    cb[j] = cv
                    hb[j] = g[3 * H + j] * tanh_(cv)
            if proj:
                dot(hc, carray(_at(ptrs[layer, 4], h), (P, H)), h[layer], ab, False, True)
            xin = h[layer]
        _put_top(yout, h)


@njit(**_JIT)
def stream_lstm(ptrs, x_addr, y_addr, steps, h, c, flag):
    """Steps of an LSTM stack (with or without projection), over the whole batch (see "streaming" above)."""
    _stream_lstm_rows(ptrs, x_addr, y_addr, steps, h.shape[1], 0, h, c, flag)


@njit(**_PAR)
def stream_lstm_par(n, ptrs, x_addr, y_addr, steps, h, c, flag):
    """``stream_lstm`` with the batch in n chunks, one per thread, each through every step and layer."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[1])
        hk, ck = _state_chunk(h, b0, b1), _state_chunk(c, b0, b1)
        _stream_lstm_rows(ptrs, x_addr, y_addr, steps, h.shape[1], b0, hk, ck, flag)
        _put_state_chunk(h, b0, hk)
        _put_state_chunk(c, b0, ck)


@register_jitable
def _stream_gru_rows(ptrs, x_addr, y_addr, steps, batch, b0, h, unused, reset_after):
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
        xin, yout = _stream_rows(ptrs, x_addr, y_addr, t, batch, b0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = _stream_weights(ptrs[layer], h, G, H)
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
        _put_top(yout, h)


@njit(**_JIT)
def stream_gru(ptrs, x_addr, y_addr, steps, h, c, flag):
    """Steps of a GRU stack (flag: reset_after), over the whole batch (see "streaming" above)."""
    _stream_gru_rows(ptrs, x_addr, y_addr, steps, h.shape[1], 0, h, c, flag)


@njit(**_PAR)
def stream_gru_par(n, ptrs, x_addr, y_addr, steps, h, c, flag):
    """``stream_gru`` with the batch in n chunks, one per thread, each through every step and layer."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[1])
        hk = _state_chunk(h, b0, b1)
        _stream_gru_rows(ptrs, x_addr, y_addr, steps, h.shape[1], b0, hk, c, flag)
        _put_state_chunk(h, b0, hk)


@register_jitable
def _stream_rnn_rows(ptrs, x_addr, y_addr, steps, batch, b0, h, unused, relu):
    L, B, H = h.shape
    ab = consts(h)
    zero = one_(h) - one_(h)
    gates = np.empty((B, H), h.dtype)
    for t in range(steps):
        xin, yout = _stream_rows(ptrs, x_addr, y_addr, t, batch, b0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = _stream_weights(ptrs[layer], h, H, H)
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
        _put_top(yout, h)


@njit(**_JIT)
def stream_rnn(ptrs, x_addr, y_addr, steps, h, c, flag):
    """Steps of an Elman RNN stack (flag: relu), over the whole batch (see "streaming" above)."""
    _stream_rnn_rows(ptrs, x_addr, y_addr, steps, h.shape[1], 0, h, c, flag)


@njit(**_PAR)
def stream_rnn_par(n, ptrs, x_addr, y_addr, steps, h, c, flag):
    """``stream_rnn`` with the batch in n chunks, one per thread, each through every step and layer."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[1])
        hk = _state_chunk(h, b0, b1)
        _stream_rnn_rows(ptrs, x_addr, y_addr, steps, h.shape[1], b0, hk, c, flag)
        _put_state_chunk(h, b0, hk)


# One step of a stack at batch 1 with each layer's hidden units split among n threads: thread k
# computes the gate rows of its units u0:u1 (``_chunk`` of H), from its own rows of W_ih and W_hh, and
# their new state; a layer's threads meet at the end of its ``prange`` (the next layer, and the next
# step, read all of h). At batch 1 a step reads every weight once and does little else, so the split
# shares the reading of the weights between the threads' caches. ``stream_<cell>_units(n, ...)``
# takes the streaming kernels' arguments (batch 1; GRU with reset_after only; LSTM without
# projection). hold <f>[1, P]: the layer's h before the step, read by every thread.
@register_jitable
def _unit_rows(x, w, b, out, ab, acc, H, blocks, u0, u1):
    """out[0, r] (+)= w[r] · x[0] + b[r] for the rows r = q·H + u, u0 <= u < u1, of each gate block q."""
    for q in range(blocks):
        r0, r1 = q * H + u0, q * H + u1
        dot(x, w[r0:r1], out[:, r0:r1], ab, acc, True)
        o, bq = out[0, r0:r1], b[r0:r1]
        for j in range(r1 - r0):
            o[j] += bq[j]


@njit(**_PAR)
def stream_rnn_units(n, ptrs, x_addr, y_addr, steps, h, c, flag):
    """``stream_rnn`` at batch 1 with each layer's units in n chunks, one per thread (flag: relu)."""
    L, _, H = h.shape
    ab = consts(h)
    zero = one_(h) - one_(h)
    gates = np.empty((1, H), h.dtype)
    hold = np.empty((1, H), h.dtype)
    for t in range(steps):
        xin, yout = _stream_rows(ptrs, x_addr, y_addr, t, 1, 0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = _stream_weights(ptrs[layer], h, H, H)
            _set(hold[0], h[layer, 0])
            for k in prange(n):
                u0, u1 = _chunk(k, n, H)
                _unit_rows(xin, w_ih, bi, gates, ab, False, H, 1, u0, u1)
                _unit_rows(hold, w_hh, bh, gates, ab, True, H, 1, u0, u1)
                g, hu = gates[0, u0:u1], h[layer, 0, u0:u1]
                for j in range(u1 - u0):
                    hu[j] = (g[j] if g[j] > 0 else zero) if flag else tanh_(g[j])
            xin = h[layer]
        _put_top(yout, h)


@njit(**_PAR)
def stream_lstm_units(n, ptrs, x_addr, y_addr, steps, h, c, flag):
    """``stream_lstm`` at batch 1 (no projection) with each layer's units in n chunks, one per thread."""
    L, _, H = h.shape
    ab = consts(h)
    gates = np.empty((1, 4 * H), h.dtype)
    hold = np.empty((1, H), h.dtype)
    for t in range(steps):
        xin, yout = _stream_rows(ptrs, x_addr, y_addr, t, 1, 0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = _stream_weights(ptrs[layer], h, 4 * H, H)
            _set(hold[0], h[layer, 0])
            for k in prange(n):
                u0, u1 = _chunk(k, n, H)
                _unit_rows(xin, w_ih, bi, gates, ab, False, H, 4, u0, u1)
                _unit_rows(hold, w_hh, bh, gates, ab, True, H, 4, u0, u1)
                g = gates[0]
                gi, gf, gg, go = g[u0:u1], g[H + u0:H + u1], g[2 * H + u0:2 * H + u1], g[3 * H + u0:3 * H + u1]
                cu, hu = c[layer, 0, u0:u1], h[layer, 0, u0:u1]
                for j in range(u1 - u0):
                    cv = sigmoid_(gf[j]) * cu[j] + sigmoid_(gi[j]) * tanh_(gg[j])
                    cu[j] = cv
                    hu[j] = sigmoid_(go[j]) * tanh_(cv)
            xin = h[layer]
        _put_top(yout, h)


@njit(**_PAR)
def stream_gru_units(n, ptrs, x_addr, y_addr, steps, h, c, flag):
    """``stream_gru`` (reset_after) at batch 1 with each layer's units in n chunks, one per thread."""
    L, _, H = h.shape
    ab = consts(h)
    gx = np.empty((1, 3 * H), h.dtype)
    gh = np.empty((1, 3 * H), h.dtype)
    hold = np.empty((1, H), h.dtype)
    for t in range(steps):
        xin, yout = _stream_rows(ptrs, x_addr, y_addr, t, 1, 0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = _stream_weights(ptrs[layer], h, 3 * H, H)
            _set(hold[0], h[layer, 0])
            for k in prange(n):
                u0, u1 = _chunk(k, n, H)
                _unit_rows(xin, w_ih, bi, gx, ab, False, H, 3, u0, u1)
                _unit_rows(hold, w_hh, bh, gh, ab, False, H, 3, u0, u1)
                a, b = gx[0], gh[0]
                xr, xz, xn = a[u0:u1], a[H + u0:H + u1], a[2 * H + u0:2 * H + u1]
                hr, hz, hn = b[u0:u1], b[H + u0:H + u1], b[2 * H + u0:2 * H + u1]
                ho, hu = hold[0, u0:u1], h[layer, 0, u0:u1]
                for j in range(u1 - u0):
                    nv = tanh_(xn[j] + sigmoid_(xr[j] + hr[j]) * hn[j])
                    hu[j] = nv + sigmoid_(xz[j] + hz[j]) * (ho[j] - nv)
            xin = h[layer]
        _put_top(yout, h)


# ---------------------------------------------------------------------- LSTM, layer-normalised
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
def _ln_consts(a):
    """[1/(4H), 1/H, eps] in a's dtype, for a gate row of width 4H."""
    k = np.empty(3, a.dtype)
    k[0] = 1.0 / a.shape[-1]
    k[1] = 4.0 / a.shape[-1]
    k[2] = 1e-5
    return k


@register_jitable
def _ln_input_row(g, g_ih, bias, nx, inv_n, eps):
    """g <f>[4H]: in a row of x W_ih^T, out γ_ih·LN(row) + bias; nx <f>[4H] gets LN(row). Returns its
    1/std."""
    r = _normalise(g, nx, inv_n, eps)
    for j in range(g.shape[0]):
        g[j] = g_ih[j] * nx[j] + bias[j]
    return r


@njit(**_PAR)
def ln_input_forward(n, gates, ln, bias, train, ri, rstd):
    """Before ``ln_lstm_forward``: the input term of every step at once (it does not depend on the
    recurrence), in n chunks of rows, one per thread. gates <f>[N, 4H] (all T·B rows): in x W_ih^T,
    out γ_ih·LN(x W_ih^T) + bias (bias <f>[4H] = b_ih + b_hh). train: keep LN(x W_ih^T) in ri
    <f>[N, 4H] and its 1/std in rstd[:, 0] (rstd <f>[N, 3]); else both may be placeholders."""
    N, G = gates.shape
    k = _ln_consts(gates)
    g_ih = ln[:G]
    for c in prange(n):
        r0, r1 = _chunk(c, n, N)
        scratch = np.empty(G, gates.dtype)
        for r in range(r0, r1):
            if train:
                rstd[r, 0] = _ln_input_row(gates[r], g_ih, bias, ri[r], k[0], k[2])
            else:
                _ln_input_row(gates[r], g_ih, bias, scratch, k[0], k[2])


@register_jitable
def _ln_lstm_fwd_ew(t, b0, gates, gh, ln, h, c, mask, has_mask, train, out, rh, rstd, cs, chat, hs, k, scratch):
    """Step t of ``ln_lstm_forward`` after the recurrent mat-mul gh = h W_hh^T, for every row; gates[t]
    holds the input term (``ln_input_forward``). k = _ln_consts(gh); scratch <f>[2, 4H]. hs is
    written only with a mask (else it is out)."""
    B, G = gh.shape
    H = G // 4
    g_hh, g_c, b_c = ln[G:2 * G], ln[2 * G:2 * G + H], ln[2 * G + H:]
    for b in range(B):
        r = b0 + b
        if has_mask and not mask[t, r]:
            _zero(out[t, r])
            if train:
                _set(cs[t, r], c[b])
                _set(hs[t, r], h[b])  # (a mask is given)
            continue
        nh, nc = scratch[0], scratch[1]  # nc: its first H used
        g = gates[t, r]
        r1 = _normalise(gh[b], nh, k[0], k[2])
        for j in range(G):
            g[j] += g_hh[j] * nh[j]
        _activate_lstm_gates(g, H)
        cb = c[b]
        for j in range(H):
            cb[j] = g[H + j] * cb[j] + g[j] * g[2 * H + j]
        r2 = _normalise(cb, nc, k[1], k[2])
        hb = h[b]
        for j in range(H):
            hb[j] = g[3 * H + j] * tanh_(g_c[j] * nc[j] + b_c[j])
        _set(out[t, r], hb)
        if train:
            _set(rh[t, r], nh)
            _set(chat[t, r], nc[:H])
            rstd[t, r, 1] = r1
            rstd[t, r, 2] = r2
            _set(cs[t, r], cb)
            if has_mask:
                _set(hs[t, r], hb)


@register_jitable
def _ln_lstm_forward_rows(b0, b1, gates, w_hh, ln, h, c, mask, has_mask, reverse, train, out, rh, rstd, cs, chat,
                          hs):
    T, _, G = gates.shape
    ab = consts(gates)
    hc = _get_rows(h, b0, b1)
    cc = _get_rows(c, b0, b1)
    gh = np.empty((b1 - b0, G), gates.dtype)
    scratch = np.empty((2, G), gates.dtype)
    k = _ln_consts(gh)
    for s in range(T):
        t = T - 1 - s if reverse else s
        dot(hc, w_hh, gh, ab, False, True)
        _ln_lstm_fwd_ew(t, b0, gates, gh, ln, hc, cc, mask, has_mask, train, out, rh, rstd, cs, chat, hs, k, scratch)
    _put_rows(h, b0, hc)
    _put_rows(c, b0, cc)


@njit(**_JIT)
def ln_lstm_forward(gates, w_hh, ln, h, c, mask, has_mask, reverse, train, out, rh, rstd, cs, chat, hs):
    """Layer-normalised LSTM (``rnnkit.cells.ln_lstm_step``), gate order i, f, g, o: the recurrent
    term's and the cell's normalisations inside the loop, the input term's before it.

    gates <f>[T, B, 4H]: in γ_ih·LN(x W_ih^T) + b_ih + b_hh (``ln_input_forward``); out (train) the
    activated gates. w_hh <f>[4H, H] (torch's layout); ln <f>[10H] = [γ_ih | γ_hh | γ_c | β_c];
    out <f>[T, B, H].
    train: keep the normalised recurrent term rh <f>[T, B, 4H], its and the cell's 1/std in
    rstd[:, :, 1:] (rstd <f>[T, B, 3]), c_t in cs, the normalised c_t in chat <f>[T, B, H] and, with a
    mask, h_t in hs <f>[T, B, H] (without one, out is the state sequence).
    """
    _ln_lstm_forward_rows(0, h.shape[0], gates, w_hh, ln, h, c, mask, has_mask, reverse, train, out, rh, rstd, cs,
                          chat, hs)


@njit(**_PAR)
def ln_lstm_forward_par(n, gates, w_hh, ln, h, c, mask, has_mask, reverse, train, out, rh, rstd, cs, chat, hs):
    """``ln_lstm_forward`` with the batch in n chunks, one per thread."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[0])
        _ln_lstm_forward_rows(b0, b1, gates, w_hh, ln, h, c, mask, has_mask, reverse, train, out, rh, rstd, cs, chat,
                              hs)


@register_jitable
def _stream_ln_lstm_rows(ptrs, x_addr, y_addr, steps, batch, b0, h, c, unused):
    """Steps of a layer-normalised LSTM stack, with ``stream_lstm``'s arguments (see "streaming"
    above; ptrs[l, 5] the address of ln), through the sequence loop's elementwise step."""
    L, B, H = h.shape
    G = 4 * H
    ab = consts(h)
    gates = np.empty((1, B, G), h.dtype)  # the step's input term, as step 0 of a sequence
    gh = np.empty((B, G), h.dtype)
    bias = np.empty(G, h.dtype)
    out = np.empty((1, B, H), h.dtype)
    scratch = np.empty((2, G), h.dtype)
    no_mask = np.zeros((1, 1), np.bool_)
    k = _ln_consts(gh)
    for t in range(steps):
        xin, yout = _stream_rows(ptrs, x_addr, y_addr, t, batch, b0, h)
        for layer in range(L):
            w_ih, w_hh, bi, bh = _stream_weights(ptrs[layer], h, G, H)
            ln = carray(_at(ptrs[layer, 5], h), 10 * H)
            for j in range(G):
                bias[j] = bi[j] + bh[j]
            dot(xin, w_ih, gates[0], ab, False, True)
            for b in range(B):
                _ln_input_row(gates[0, b], ln[:G], bias, scratch[0], k[0], k[2])
            dot(h[layer], w_hh, gh, ab, False, True)
            # not training and no mask: the kept-for-backward arrays are never touched (gates stands in)
            _ln_lstm_fwd_ew(0, 0, gates, gh, ln, h[layer], c[layer], no_mask, False, False, out, gates, gates, gates,
                            gates, gates, k, scratch)
            xin = h[layer]
        _put_top(yout, h)


@njit(**_JIT)
def stream_ln_lstm(ptrs, x_addr, y_addr, steps, h, c, flag):
    """Steps of a layer-normalised LSTM stack, over the whole batch (see "streaming" above)."""
    _stream_ln_lstm_rows(ptrs, x_addr, y_addr, steps, h.shape[1], 0, h, c, flag)


@njit(**_PAR)
def stream_ln_lstm_par(n, ptrs, x_addr, y_addr, steps, h, c, flag):
    """``stream_ln_lstm`` with the batch in n chunks, one per thread, each through every step and layer."""
    for k in prange(n):
        b0, b1 = _chunk(k, n, h.shape[1])
        hk, ck = _state_chunk(h, b0, b1), _state_chunk(c, b0, b1)
        _stream_ln_lstm_rows(ptrs, x_addr, y_addr, steps, h.shape[1], b0, hk, ck, flag)
        _put_state_chunk(h, b0, hk)
        _put_state_chunk(c, b0, ck)


@njit(**_JIT)
def ln_lstm_forward_step(t, gates, gh, ln, h, c, mask, has_mask, train, out, rh, rstd, cs, chat, hs):
    """One step of ``ln_lstm_forward`` given gh = h W_hh^T (for a Python loop with oneDNN's GEMM)."""
    _ln_lstm_fwd_ew(t, 0, gates, gh, ln, h, c, mask, has_mask, train, out, rh, rstd, cs, chat, hs, _ln_consts(gh),
                    np.empty((2, gh.shape[1]), gh.dtype))


@register_jitable
def _ln_lstm_bwd_ew(t, b0, first, tp, gates, rh, rstd, cs, chat, c0, ln, dh, dc, mask, has_mask, dout, dg, drh, dpar,
                    k, scratch):
    """Step t of ``ln_lstm_backward`` up to drh[t] (the recurrent mat-mul and the carry follow).
    k = _ln_consts(dg); scratch <f>[3, 4H]."""
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
            _zero(dgb)
            _zero(drb)
            continue
        dhb = dh[b]
        _acc(dhb, dout[t, r])
        g = gates[t, r]
        nc = chat[t, r]
        cp = c0[r] if first else cs[tp, r]
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
        for j in range(H):
            dcv[j] += dcb[j]
        _lstm_gate_grads(g, dcv, dhb, tc, cp, dcb, dgb)  # dgb: ∂L/∂(the gates' pre-activation)
        for j in range(G):  # through LN(h W_hh^T)·γ_hh
            dn[j] = dgb[j] * g_hh[j]
        _normalise_backward(dn, rh[t, r], rstd[t, r, 1], k[0], drb)


@njit(**_PAR)
def ln_input_backward(n, dg, ri, rh, rstd, ln, mask, has_mask, dpar):
    """After ``ln_lstm_backward``, for every row at once, in n chunks of rows, one per thread: adds the
    gradients of γ_ih, γ_hh and the bias (Σ dA·LN(x W_ih^T), Σ dA·LN(h W_hh^T), Σ dA) into dpar (its
    layout in ``ln_lstm_backward``) and turns each row of dg <f>[T, B, 4H] from dA = ∂L/∂(the gates'
    pre-activation) into ∂L/∂(x W_ih^T), through the input term's normalisation. Rows past a length
    hold dA = 0 and are skipped (their recurrent term in rh was never written)."""
    T, B, G = dg.shape
    k = _ln_consts(dg)
    g_ih = ln[:G]
    H = G // 4
    parts = np.zeros((n, dpar.shape[0]), dpar.dtype)
    for c in prange(n):
        r0, r1 = _chunk(c, n, T * B)
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
        _acc(dpar, parts[c])


@register_jitable
def _ln_lstm_backward_rows(b0, b1, gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse, dout,
                           dg, drh, dpar):
    T, _, G = dg.shape
    ab = consts(dg)
    dhc = _get_rows(dh, b0, b1)
    dcc = _get_rows(dc, b0, b1)
    tmp = np.empty(dhc.shape, dg.dtype)
    scratch = np.empty((3, G), dg.dtype)
    k = _ln_consts(dg)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp, first = _prev(t, T, reverse)
        _ln_lstm_bwd_ew(t, b0, first, tp, gates, rh, rstd, cs, chat, c0, ln, dhc, dcc, mask, has_mask, dout, dg, drh,
                        dpar, k, scratch)
        dot(drh[t, b0:b1], w_hh, tmp, ab, False, False)
        _merge_set(t, b0, dhc, tmp, mask, has_mask)
    _put_rows(dh, b0, dhc)
    _put_rows(dc, b0, dcc)


@njit(**_JIT)
def ln_lstm_backward(gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse, dout, dg, drh, dpar):
    """Backward of ``ln_lstm_forward`` (its saved buffers in). dh, dc <f>[B, H]: in ∂L/∂(final
    state), out ∂L/∂(initial state). Writes dg <f>[T, B, 4H] = ∂L/∂(the gates' pre-activation) (for
    ``ln_input_backward``) and drh <f>[T, B, 4H] = ∂L/∂(h_{t-1} W_hh^T), both 0 past a length; adds
    the gradients of ln's γ_c and β_c into dpar[8H:10H] (dpar <f>[14H] = [γ_ih | γ_hh | γ_c | β_c |
    the bias b_ih + b_hh])."""
    _ln_lstm_backward_rows(0, dh.shape[0], gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse,
                           dout, dg, drh, dpar)


@njit(**_PAR)
def ln_lstm_backward_par(n, gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse, dout, dg, drh,
                         dpar):
    """``ln_lstm_backward`` with the batch in n chunks, one per thread; each sums its own share of
    the parameters' gradients in dpar, added to dpar at the end."""
    parts = np.zeros((n, dpar.shape[0]), dpar.dtype)
    for k in prange(n):
        b0, b1 = _chunk(k, n, dh.shape[0])
        _ln_lstm_backward_rows(b0, b1, gates, rh, rstd, cs, chat, c0, w_hh, ln, dh, dc, mask, has_mask, reverse, dout,
                               dg, drh, parts[k])
    for k in range(n):
        _acc(dpar, parts[k])


@njit(**_JIT)
def ln_lstm_backward_step(t, tprev, tmp, reverse, gates, rh, rstd, cs, chat, c0, ln, dh, dc, mask, has_mask, dout, dg,
                          drh, dpar):
    """Finish step tprev (tmp = drh[tprev] W_hh) if tprev >= 0, then step t's elementwise if t >= 0."""
    if tprev >= 0:
        _merge_set(tprev, 0, dh, tmp, mask, has_mask)
    if t >= 0:
        tp, first = _prev(t, gates.shape[0], reverse)
        _ln_lstm_bwd_ew(t, 0, first, tp, gates, rh, rstd, cs, chat, c0, ln, dh, dc, mask, has_mask, dout, dg, drh,
                        dpar, _ln_consts(dg), np.empty((3, dg.shape[2]), dg.dtype))
