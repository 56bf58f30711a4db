"""What every cell's loops share: the activations, row helpers, the
recurrent mat-mul (``dot``, BLAS bound to torch's MKL where it has it), the backward carries and the
batch chunks."""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import types
from numba.extending import overload, register_jitable

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


def one_(a):
    """1 in the dtype of array ``a`` (a float64 literal would promote float32 arithmetic)."""
    return a.dtype.type(1)


def _per_dtype(fn, float32, float64, of_array: bool = False) -> None:
    """Compile the plain function ``fn`` as ``float32`` where its argument (an array's dtype where
    of_array) is float32, else as ``float64``."""
    @overload(fn)
    def choose(x):
        return float32 if (x.dtype if of_array else x) == types.float32 else float64


_per_dtype(tanh_, lambda x: _tanh32(x), lambda x: np.tanh(x))
_per_dtype(sigmoid_, lambda x: _HALF32 * _tanh32(_HALF32 * x) + _HALF32, lambda x: 1.0 / (1.0 + np.exp(-x)))
_per_dtype(one_, lambda x: np.float32(1.0), lambda x: np.float64(1.0), of_array=True)


# ------------------------------------------------------------------------------- row helpers
# Explicit loops instead of slice assignment: numba compiles its broadcasting setitem slowly (~5 s
# on a cold cache), and these keep the first call, compilation included, short.
@register_jitable
def zero_(dst):
    for j in range(dst.shape[0]):
        dst[j] = 0


@register_jitable
def set_(dst, src):
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@register_jitable
def acc_(dst, src):
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


_per_dtype(kind_, lambda x: np.int8(115), lambda x: np.int8(100), of_array=True)


@register_jitable
def consts(a):
    """[1, 0, 1] in the dtype of ``a``: alpha, beta=0 and beta=1 for ``dot``."""
    c = np.empty(3, a.dtype)
    c[0] = 1
    c[1] = 0
    c[2] = 1
    return c


@register_jitable
def transposed(w):
    """A C-contiguous copy of w^T for w <f>[N, K] (the one-row loops' W_hh^T)."""
    n, k = w.shape
    wt = np.empty((k, n), w.dtype)
    for i in range(n):
        wi = w[i]
        for j in range(k):
            wt[j, i] = wi[j]
    return wt


@register_jitable
def vec_mat(a, b, o, acc):
    """o[N] (+)= a[K] · b[K, N] (C-contiguous), four rows of b per pass over o (4x fewer loads and
    stores of o): the batch-1 mat-vec with a weight stored transposed, no horizontal sums. acc: add
    to o, else replace it."""
    if not acc:
        zero_(o)
    k = a.shape[0]
    n = o.shape[0]
    k4 = k - k % 4
    for kk in range(0, k4, 4):
        a0, a1, a2, a3 = a[kk], a[kk + 1], a[kk + 2], a[kk + 3]
        b0, b1, b2, b3 = b[kk], b[kk + 1], b[kk + 2], b[kk + 3]
        for j in range(n):
            o[j] += (a0 * b0[j] + a1 * b1[j]) + (a2 * b2[j] + a3 * b3[j])
    for kk in range(k4, k):
        ak = a[kk]
        bk = b[kk]
        for j in range(n):
            o[j] += ak * bk[j]


@register_jitable
def dot(a, b, out, ab, acc, bt):
    """out[M, N] (+)= a[M, K] · B, all C-contiguous, where B = b[K, N], or b[N, K]^T when bt (a weight
    in torch's [out, in] layout, no transposed copy); ab = consts(a); acc: add to out."""
    m, k = a.shape
    n = b.shape[0] if bt else b.shape[1]
    if m <= _SMALL_BATCH and not bt:
        for i in range(m):
            vec_mat(a[i], b, out[i], acc)
    elif m <= _SMALL_BATCH:
        n8 = n - n % 8
        for i in range(m):
            o = out[i]
            ai = a[i]
            zero = ai[0] - ai[0]
            for j in range(0, n8, 8):  # eight dot products per pass over a
                b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
                b4, b5, b6, b7 = b[j + 4], b[j + 5], b[j + 6], b[j + 7]
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
                for kk in range(k):
                    x = ai[kk]
                    s0 += x * b0[kk]
                    s1 += x * b1[kk]
                    s2 += x * b2[kk]
                    s3 += x * b3[kk]
                    s4 += x * b4[kk]
                    s5 += x * b5[kk]
                    s6 += x * b6[kk]
                    s7 += x * b7[kk]
                if acc:
                    s0 += o[j]
                    s1 += o[j + 1]
                    s2 += o[j + 2]
                    s3 += o[j + 3]
                    s4 += o[j + 4]
                    s5 += o[j + 5]
                    s6 += o[j + 6]
                    s7 += o[j + 7]
                o[j], o[j + 1], o[j + 2], o[j + 3] = s0, s1, s2, s3
                o[j + 4], o[j + 5], o[j + 6], o[j + 7] = s4, s5, s6, s7
            for j in range(n8, n):
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
def one_plain_row(h, has_mask, rd, z):
    """Whether a call takes its cell's one-row loops (``_forward_one``, given W_hh transposed, and
    ``_backward_one``): batch 1 (h, or dh, <f>[1, P]), no lengths, no recurrent dropout (rd) or zoneout
    (z): the same arithmetic without the general loops' per-step branches, row views and scratch, which
    cost as much as the step itself at H = 64."""
    return h.shape[0] == 1 and not has_mask and rd.shape[0] == 0 and z.shape[0] == 0


@register_jitable
def past_end(t, r, row, mask, has_mask):
    """Whether row r of the batch is past its length at step t; if so, ``row`` (its output or gradient
    row at t) is set to 0."""
    if has_mask and not mask[t, r]:
        zero_(row)
        return True
    return False


@register_jitable
def merge_set(t, b0, dh, tmp, mask, has_mask):
    """Backward carry after the recurrent mat-mul when it is the whole gradient (RNN, LSTM):
    dh = tmp on the rows valid at step t; past a length the carry passes through unchanged."""
    for b in range(dh.shape[0]):
        if has_mask and not mask[t, b0 + b]:
            continue
        set_(dh[b], tmp[b])


@register_jitable
def merge_acc(dh, tmp):
    """Backward carry when the mat-mul adds to a direct term (GRU); masked rows of tmp are 0."""
    for b in range(dh.shape[0]):
        acc_(dh[b], tmp[b])


@register_jitable
def add_dout(t, b0, dh, dout, doff, mask, has_mask):
    """dh += ∂L/∂out_t on the valid rows (the output past a length is a constant 0)."""
    P = dh.shape[1]
    for b in range(dh.shape[0]):
        if has_mask and not mask[t, b0 + b]:
            continue
        acc_(dh[b], dout[t, b0 + b, doff:doff + P])


@register_jitable
def prev_step(t, T, reverse):
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
def get_rows(src, b0, b1):
    """A C-contiguous copy of rows b0:b1 of src <f>[B, N]."""
    dst = np.empty((b1 - b0, src.shape[1]), src.dtype)
    for b in range(b1 - b0):
        set_(dst[b], src[b0 + b])
    return dst


@register_jitable
def put_rows(dst, b0, src):
    """dst[b0 + b] = src[b] for every row of src."""
    for b in range(src.shape[0]):
        set_(dst[b0 + b], src[b])


@register_jitable
def chunk(k, n, B):
    """Rows b0, b1 of chunk k of n over a batch of B."""
    return k * B // n, (k + 1) * B // n
