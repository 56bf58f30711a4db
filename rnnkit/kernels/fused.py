"""The fused CPU backend: every cell, forward and backward, float32 and float64.

One layer (both directions) is one ``torch.autograd.Function``:

forward, per direction
    gates = x W_ih^T + b          one GEMM for all T·B rows (biases folded where the cell allows)
    time loop                     per step the recurrent mat-mul and one fused elementwise pass that
                                  leaves the activated gates in ``gates`` (``fused_loops``)
backward, per direction
    time loop                     per step the elementwise backward and dh_{t-1} = dG_t W_hh
    dW_ih = dG^T x,  dx = dG W_ih,  dW_hh = dG^T h_prev   one GEMM each over the whole sequence

Saved for backward: the input, the layer output (it is the state sequence), the activated gates and
per cell what the elementwise backward needs (LSTM c_t; GRU W_hn h + b_hn); with ``lengths`` also
the state sequence (the output is zero-padded). Both directions write into one output buffer. What
is kept for backward and the backward's gradient buffers come from ``buffers.pool`` (reused from one
call to the next, so that a training loop does not fault them in again every step).

Dispatch (per call; the constants below were set by measurements on the host, listed in
docs/performance.md):

- ``supports()``: CPU float32/float64, all four modes (LSTM projection included), non-empty input,
  not tracing/scripting/ONNX export; anything else runs the reference kernel.
- LSTM, float32, no projection, no ``lengths``, per-step work B·4H·H >= ``ONEDNN_LSTM_MIN_MACS``
  (inference, unless the loop splits across threads with a small weight, by
  ``LOOP_LSTM_INFERENCE_ROW_BYTES``) or ``ONEDNN_LSTM_TRAIN_MIN_MACS`` (training, when the loop would
  not be split across threads by ``PAR_ROW_BYTES_LSTM``): oneDNN's fused LSTM layer
  (``aten::mkldnn_rnn_layer``, what torch.nn.LSTM runs, with its backward under autograd) — on par
  with torch.nn by construction; below that our own loop is faster.
- Batch split (``_chunks``): with several torch threads and enough rows per thread for the size of
  the recurrent weight (``PAR_ROW_BYTES``), the compiled loop runs on every thread at once, each for
  its own rows of the batch for the whole sequence (sequences are independent, so there is no
  synchronisation per step); numba's OpenMP layer provides the threads.
- Otherwise, one thread runs the time loop. float32 with a recurrent weight of at least
  ``STEP_LOOP_MIN_WEIGHT`` bytes, batch >= ``STEP_LOOP_MIN_BATCH`` and >= ``STEP_LOOP_MIN_STEPS``
  steps (and not GRU reset_after=False or an LSTM projection, which have two mat-muls per step): a
  Python loop whose recurrent GEMM is oneDNN's, on all threads, with the weight prepacked once per
  call (``mkldnn._reorder_linear_weight`` / ``_linear_pointwise``), plus one compiled elementwise
  call per step. Otherwise the whole loop runs compiled in numba, its GEMMs through MKL on the
  calling thread (batch 1: a plain loop), no Python per step.
- float32 input projection and dx use oneDNN linear; the weight gradients use torch.mm.
- A small training call (up to ``SMALL_TRAIN_MAX_MACS``; unmasked RNN, LSTM without projection, GRU
  with reset_after): ``_SmallLayer``, each direction's forward and backward, every gradient included,
  one compiled call on this thread.
- A small call without autograd (up to ``STREAM_SEQUENCE_MAX_MACS``; e.g. generation, one step at
  a time) of a unidirectional stack skips all GEMM setup: the streaming kernel below runs every
  step and layer in one compiled call. A larger one of a batch that several threads can share
  (``STREAM_PAR_*``) runs the same kernel split across them, each thread every step and layer for
  its own rows, the input product taken per step (no T·B·G buffer of projected inputs). At batch 1
  with large weights (``STREAM_UNITS_MIN_*``), any call of the streaming kernel (a
  step, a ``Streamer``, a whole no-grad call) shares each layer's hidden units among the threads.
- The layer-normalised LSTM (``spec.layer_norm``) runs its own compiled loop, ``fused_ln``.

Streaming: ``stream_step`` runs one time step of a whole unidirectional stack (or every step of a
small call) in one compiled call (no autograd), state in and out as tensors, for
``step(x_t, state)`` and ``forward()``; ``Streamer`` keeps the state
inside, for a state object (lowest overhead). The kernels take the weights as addresses into the
parameters themselves (shapes checked in Python), so updates are always seen.

Double backward (``create_graph=True``: gradient penalties, Hessian-vector products): a layer
Function's backward, called with grad mode on, reruns the reference on its saved inputs and
differentiates that with a graph (``reference.differentiable_grads``); oneDNN's LSTM layer has its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import weakref
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import Tensor

from ..cells import CellSpec, State
from . import Backend, reference, register_backend
from .base import DirectionWeights, check_out, eager, whole_sequence_input
from .buffers import pool

_MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
_DTYPES = (torch.float32, torch.float64)
_PER_DIR = 7  # flattened per direction: w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0

STEP_LOOP_MIN_WEIGHT = 1024 * 1024
"""Recurrent weight bytes from which an unsplit loop runs as a Python step loop on oneDNN's prepacked
GEMM (all threads) rather than compiled with one-thread BLAS: prepacking and per-step Python pay off
only for large weights."""
STEP_LOOP_MIN_BATCH = 4
STEP_LOOP_MIN_STEPS = 8
"""Fewer steps do not repay prepacking the weight (~100-300 µs) for the oneDNN loop."""
TRANSPOSE_MIN_STEPS = 16
"""At batch 1, from this many steps the compiled forward loop uses a transposed copy of W_hh (a faster
mat-vec at large H); below, the copy costs more than it saves."""
ONEDNN_MAX_SHAPES = 64
"""Distinct (rows, out, in) products that ``_linear`` gives to oneDNN; later shapes go to MKL, since
oneDNN caches a primitive per shape and a new sequence length every call would grow the process."""
LINEAR_POOL_MIN_BYTES = 32 << 20
"""Input projections (``_linear(..., pooled=True)``) of at least this many bytes go into a pooled
buffer through MKL: glibc maps every block above 32 MiB (its largest mmap threshold) afresh, so a
fresh result would fault all its pages in on every call."""
PAR_MIN_ROWS = 4
"""The compiled loops give each thread at least this many rows of the batch (see ``_chunks``)."""
PAR_ROW_BYTES = 256 * 1024
"""The loop splits across threads when the recurrent weight's bytes per row of a thread's chunk are
at most this: every thread reads the whole weight each step, which its rows must amortise."""
PAR_ROW_BYTES_LSTM = 64 * 1024
"""The same where the other choice is oneDNN's LSTM layer (LSTM training, float32, no projection or
lengths), which is faster than the split loop with larger weights per row."""
ONEDNN_LSTM_MIN_MACS = 65_536
"""Per-step multiply-adds B·4H·H from which LSTM inference goes to oneDNN's fused LSTM layer (except
where our loop splits across threads with a small weight, the next two constants): below it our
loop's lower fixed cost wins, above it oneDNN's blocked GEMMs."""
LOOP_LSTM_INFERENCE_ROW_BYTES = 16 * 1024
LOOP_LSTM_INFERENCE_MAX_WEIGHT = 256 * 1024
"""LSTM inference stays in our compiled loop when it splits across threads with at most
LOOP_LSTM_INFERENCE_ROW_BYTES of recurrent weight per row of a thread's chunk, for a weight of at
most LOOP_LSTM_INFERENCE_MAX_WEIGHT (H <= 128 in float32): there the split loop beats oneDNN's layer."""
ONEDNN_LSTM_TRAIN_MIN_MACS = 1_000_000
"""The same for LSTM training where our loop is not split across threads: from here oneDNN's layer
with its own backward (torch.nn.LSTM's path) beats our one-thread loops."""

SMALL_TRAIN_MAX_MACS = 1_500_000
"""Multiply-adds of the GEMMs (T·B·G·H·(I + P), both directions counted) up to which a training call
runs through ``_SmallLayer`` (unmasked RNN, LSTM without projection, GRU with reset_after): one
compiled call per direction saves ~25 torch operators, while its plain-loop weight gradients fall
behind BLAS and the threads at larger sizes."""

STREAM_SEQUENCE_MAX_MACS = 16_000_000
"""Multiply-adds (T·B·G·H·(I + P), every layer counted) up to which a no-grad call of a whole
unidirectional stack runs through the streaming kernel, every step and layer in one compiled call
(no GEMM setup, ~45 torch operators, per layer); larger calls gain more from whole-sequence GEMMs."""

STREAM_UNITS_MIN_WEIGHT = 3 << 19
STREAM_UNITS_MIN_LAYER_WEIGHT = 1 << 20
"""Bytes of W_ih and W_hh, of the whole stack and per layer on average, from which a streaming call
at batch 1 shares each layer's hidden units among the threads (``_stream_units``): a step then pays
a parallel region per layer (~2 µs), which only halving the weights each thread reads repays."""

STREAM_PAR_MIN_MACS = 12_000_000
STREAM_PAR_ROW_BYTES = 32 * 1024
STREAM_PAR_CACHED_WEIGHT = 512 * 1024
"""A no-grad call of a unidirectional stack from STREAM_PAR_MIN_MACS multiply-adds (counted as for
``STREAM_SEQUENCE_MAX_MACS``) runs through the streaming kernel split across threads, each thread
every step and layer for its own rows, where every thread can afford to read a layer's whole W_ih and
W_hh each step: at most STREAM_PAR_ROW_BYTES of them per row of its chunk, or at most
STREAM_PAR_CACHED_WEIGHT in all (they stay in a core's L2). Below STREAM_PAR_MIN_MACS, starting the
threads costs more than they save."""

calls = {"forward": 0, "backward": 0, "onednn_lstm": 0, "small_train": 0, "step_loop": 0, "compiled_loop": 0,
         "layer_step": 0, "parallel_loop": 0, "serial_loop": 0, "stream_sequence": 0, "parallel_stream": 0,
         "units_stream": 0}
"""How often each path ran (layer calls and backward passes); for tests and diagnostics."""

_loops = None
_forked = False
"""Whether this process is a fork of the one that imported this module (GNU OpenMP, which runs
numba's threads, is not fork-safe: a forked child keeps the compiled loops on one thread). A flag
set at fork rather than a comparison of process ids: ``os.getpid()`` costs ~0.2 µs a streaming call."""


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)
_lp = torch.ops.mkldnn._linear_pointwise
_reorder = torch.ops.mkldnn._reorder_linear_weight


def _kernels():
    """The compiled loops, imported on first use (numba's import and cache load cost ~0.3 s)."""
    global _loops
    if _loops is None:
        threads = torch.get_num_threads()
        from . import fused_loops
        # starting numba's OpenMP pool (on the libgomp torch has loaded) resets the count torch reads
        torch.set_num_threads(threads)
        _loops = fused_loops
    return _loops


# ---------------------------------------------------------------------------- BLAS threads
class _OneBlasThread:
    """Run the compiled loops' BLAS (scipy's OpenBLAS, which numba calls) on one thread.

    Its per-step GEMMs are small (larger shapes take the oneDNN loop), a thread barrier per step
    stalls whenever another process holds a core, and OpenBLAS's idle workers spin for a while after
    each call, stealing a core from torch's OpenMP threads. Set once, process-wide (toggling it per
    call would wake the workers each time, making every call many times slower); numpy's own BLAS is a different
    library and is not affected."""

    done = False

    def __enter__(self):
        if not _OneBlasThread.done:
            _OneBlasThread.done = True
            if _kernels().BLAS != "openblas":
                return self
            try:
                import scipy.linalg.cython_blas  # noqa: F401  (loads the library)
                with open("/proc/self/maps") as maps:
                    paths = sorted({line.split()[-1] for line in maps if "libscipy_openblas" in line})
                for path in paths:
                    lib = ctypes.CDLL(path)
                    for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
                        if hasattr(lib, name):
                            getattr(lib, name)(ctypes.c_int(1))
                            break
            except (OSError, ImportError):  # pragma: no cover - not Linux, or another BLAS
                pass
        return self

    def __exit__(self, *exc):
        return None


def supports(spec: CellSpec, x: Tensor, training: bool) -> bool:
    """CPU, float32/float64, a known cell, a non-empty 3-D input, not being traced or exported."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and spec.mode in _MODES and whole_sequence_input(x)


# ----------------------------------------------------------------------------------- helpers
def _np(t: Tensor):
    return t.detach().numpy()


_NO_MASK = np.zeros((1, 1), np.bool_)
_DUMMIES = {(dt, n): np.zeros((1, 1, 1)[:n] if n == 3 else (0,) * n, dt) for dt in (np.float32, np.float64)
            for n in (1, 2, 3)}


_NP_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_CPU = torch.device("cpu")


def _dummy(dtype: torch.dtype, ndim: int):
    """A placeholder array for an unused kernel argument: <dtype>[1, 1, 1] (ndim 3) or empty."""
    return _DUMMIES[(_NP_DTYPE[dtype].type, ndim)]


def _c(t: Tensor) -> Tensor:
    return t.detach().contiguous()


def _pooled_contiguous(t: Tensor) -> Tensor:
    """t detached and C-contiguous: itself when it is, else a copy into a pooled buffer (for a
    large copy the backend keeps to itself, such as a batch-first gradient made time-major)."""
    t = t.detach()
    if t.is_contiguous():
        return t
    buf = pool.empty(tuple(t.shape), t.dtype)
    return buf.copy_(t)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _folded_bias(spec: CellSpec, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    """The bias added to the input projection: b_ih + b_hh, except GRU's b_hn (reset_after=True),
    which stays inside r·(W_hn h + b_hn)."""
    if spec.mode == "GRU" and spec.reset_after and b_hh is not None:
        b_hh = torch.cat([b_hh[: 2 * spec.hidden_size], b_hh.new_zeros(spec.hidden_size)])
    return _add(b_ih, b_hh)


_onednn_shapes: set = set()
"""(rows, out, in) of the products given to oneDNN so far (see ``_linear``)."""


def _linear(x: Tensor, w: Tensor, b: Tensor | None, pooled: bool = False) -> Tensor:
    """x w^T + b into a fresh contiguous tensor: oneDNN for large float32 products (20-30% faster
    than MKL's sgemm here; but ~15 µs of fixed cost, so small ones go to MKL), for the first
    ``ONEDNN_MAX_SHAPES`` shapes (oneDNN keeps a primitive per shape). pooled (a result the layer
    keeps to itself): from ``LINEAR_POOL_MIN_BYTES``, into a pooled buffer through MKL."""
    if pooled and x.shape[0] * w.shape[0] * x.element_size() >= LINEAR_POOL_MIN_BYTES:
        out = pool.empty((x.shape[0], w.shape[0]), x.dtype)
        return torch.addmm(b, x, w.t(), out=out) if b is not None else torch.mm(x, w.t(), out=out)
    if x.dtype == torch.float32 and x.shape[0] * w.shape[0] * w.shape[1] >= 2_000_000:
        shape = (x.shape[0], *w.shape)
        if shape in _onednn_shapes or len(_onednn_shapes) < ONEDNN_MAX_SHAPES:
            _onednn_shapes.add(shape)
            return _lp(x, w, b, "none", [], "")
    return torch.addmm(b, x, w.t()) if b is not None else x.mm(w.t())


def _grad_input_weight(dg: Tensor, x: Tensor) -> Tensor:
    """dW_ih = dG^T x for dg <f>[N, G] and x <f>[N, I]. With few input features MKL's sgemm is 4x
    faster on (x^T dG)^T; otherwise the direct form."""
    if x.shape[1] <= 32 and x.shape[1] * 8 <= dg.shape[1]:
        return x.t().mm(dg).t().contiguous()
    return dg.t().mm(x)


def _grad_recurrent(dg: Tensor, hseq: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """Σ_t dg_t^T h_{t-1} as two GEMMs: dg <f>[T, B, N]; hseq <f>[T, B, M] with hseq[t] the state
    after step t (any strides with a unit last one); h0 <f>[B, M] the state before the first step."""
    T, _, n = dg.shape
    m = hseq.shape[2]
    first, rest, prev = (dg[T - 1], dg[: T - 1], hseq[1:]) if reverse else (dg[0], dg[1:], hseq[: T - 1])
    gw = first.t().mm(h0)
    if T > 1:
        gw.addmm_(rest.reshape(-1, n).t(), prev.reshape(-1, m))
    return gw


def _weight_bytes(spec: CellSpec, x: Tensor) -> int:
    """Bytes of one direction's recurrent weight W_hh <f>[G·H, P] in x's dtype."""
    return spec.gates * spec.hidden_size * spec.output_size * x.element_size()


def _step_loop(spec: CellSpec, x: Tensor, w_hr: Tensor | None) -> bool:
    """Whether to drive the (unsplit) time loop from Python with oneDNN's GEMM (see module docstring)."""
    if x.dtype != torch.float32 or w_hr is not None or (spec.mode == "GRU" and not spec.reset_after):
        return False
    T, B = x.shape[0], x.shape[1]
    return B >= STEP_LOOP_MIN_BATCH and T >= STEP_LOOP_MIN_STEPS and _weight_bytes(spec, x) >= STEP_LOOP_MIN_WEIGHT


def _threads() -> int:
    """Threads the compiled loops may use: torch's count, within numba's pool; 1 in a forked child
    (GNU OpenMP, which runs numba's threads, is not fork-safe)."""
    return 1 if _forked else min(torch.get_num_threads(), _kernels().MAX_THREADS)


def _max_chunks(batch: int) -> int:
    """The most chunks a batch may be split into, one per thread: at least ``PAR_MIN_ROWS`` rows each."""
    return min(_threads(), batch // PAR_MIN_ROWS)


def _chunks(spec: CellSpec, x: Tensor, row_bytes: int | None = None) -> int:
    """How many threads share the compiled time loop, each running it for its own rows of the batch
    (no synchronisation per step): at least ``PAR_MIN_ROWS`` rows each, and at most ``row_bytes``
    (default ``PAR_ROW_BYTES``) of recurrent weight per row."""
    B = x.shape[1]
    n = _max_chunks(B)
    if n <= 1 or _weight_bytes(spec, x) > (PAR_ROW_BYTES if row_bytes is None else row_bytes) * (B // n):
        return 1
    return n


def _loop(name: str, n: int, *args) -> None:
    """Run the compiled driver ``fused_loops.<name>``: split into n chunks of the batch, one per
    thread (``<name>_par``), or on this thread when n = 1."""
    K = _kernels()
    if n > 1:
        K.set_threads(n)
        getattr(K, name + "_par")(n, *args)
    else:
        getattr(K, name)(*args)
    calls["parallel_loop" if n > 1 else "serial_loop"] += 1


# ----------------------------------------------------------------------------------- forward
def _forward(spec: CellSpec, x: Tensor, mask: Tensor | None, flat: list, train: bool):
    """Run the layer. Returns output <f>[T, B, D*P], final states (flat), per direction what
    backward needs (a dict of tensors), and the (contiguous, detached) input."""
    with _OneBlasThread():
        return _forward_impl(spec, x, mask, flat, train)


def _forward_impl(spec: CellSpec, x: Tensor, mask: Tensor | None, flat: list, train: bool):
    K = _kernels()
    T, B, I = x.shape
    H, P, G = spec.hidden_size, spec.output_size, spec.gates
    D = len(flat) // _PER_DIR
    x = _pooled_contiguous(x)
    x2 = x.view(T * B, I)
    out = x.new_empty(T, B, D * P)
    out_np = _np(out)
    has_mask = mask is not None
    mask_np = _np(mask[:, :, 0].contiguous()) if has_mask else _NO_MASK
    dummy3 = _dummy(x.dtype, 3)
    finals: list[Tensor] = []
    saved: list[dict] = []
    n = _chunks(spec, x)
    for d in range(D):
        w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = flat[d * _PER_DIR:(d + 1) * _PER_DIR]
        reverse, off = d == 1, d * P
        w_hh = _c(w_hh)
        bias = _folded_bias(spec, b_ih, b_hh)
        gates = _linear(x2, _c(w_ih), bias.detach() if bias is not None else None, pooled=True).view(T, B, G * H)
        h0 = _c(h0)
        h = h0.clone()  # becomes the final state
        hs = pool.empty((T, B, P), x.dtype) if (train and has_mask) else None
        hs_np = _np(hs) if hs is not None else dummy3
        keep: dict[str, Tensor] = {"gates": gates, "h0": h0, "hs": hs} if train else {}
        stepwise = n == 1 and _step_loop(spec, x, w_hr)
        calls["step_loop" if stepwise else "compiled_loop"] += 1
        if stepwise:
            pw = _reorder(w_hh, B)
            gates_np, h_np = _np(gates), _np(h)
        # the compiled loop multiplies by W_hh as stored (BLAS transposes for free), except at batch 1
        # over many steps, where a transposed copy (made once) feeds a faster mat-vec
        wt = B == 1 and T >= TRANSPOSE_MIN_STEPS

        def w_np(w: Tensor):
            return _np(_c(w.t())) if wt else _np(w)
        if spec.mode == "LSTM":
            c0 = _c(c0)
            c = c0.clone()
            cs = pool.empty((T, B, H), x.dtype) if train else None
            cs_np = _np(cs) if train else dummy3
            if stepwise:
                c_np = _np(c)
                for s in range(T):
                    t = T - 1 - s if reverse else s
                    gh = _lp(h, pw, None, "none", [], "")
                    K.lstm_forward_step(t, gates_np, _np(gh), h_np, c_np, mask_np, has_mask, train, out_np, off,
                                        hs_np, cs_np)
            else:
                _loop("lstm_forward", n, _np(gates), w_np(w_hh), wt,
                      _np(_c(w_hr)) if w_hr is not None else _dummy(x.dtype, 2), _np(h), _np(c), mask_np, has_mask,
                      reverse, train, out_np, off, hs_np, cs_np)
            finals += [h, c]
            if train:
                keep.update(cs=cs, c0=c0)
        elif spec.mode == "GRU" and spec.reset_after:
            b_hn = _c(b_hh[2 * H:]) if b_hh is not None else x.new_zeros(H)
            ghn = pool.empty((T, B, H), x.dtype) if train else None
            ghn_np = _np(ghn) if train else dummy3
            if stepwise:
                b_hn_np = _np(b_hn)
                for s in range(T):
                    t = T - 1 - s if reverse else s
                    gh = _lp(h, pw, None, "none", [], "")
                    K.gru_forward_step(t, gates_np, _np(gh), b_hn_np, h_np, mask_np, has_mask, train, out_np, off,
                                       hs_np, ghn_np)
            else:
                _loop("gru_forward", n, _np(gates), w_np(w_hh), wt, _np(b_hn), _np(h), mask_np, has_mask, reverse,
                      train, out_np, off, hs_np, ghn_np)
            finals.append(h)
            if train:
                keep["ghn"] = ghn
        elif spec.mode == "GRU":
            _loop("grux_forward", n, _np(gates), w_np(w_hh[: 2 * H]), w_np(w_hh[2 * H:]), wt, _np(h),
                  mask_np, has_mask, reverse, train, out_np, off, hs_np)
            finals.append(h)
        else:
            relu = spec.mode == "RNN_RELU"
            keep_h = train and has_mask
            if stepwise:
                for s in range(T):
                    t = T - 1 - s if reverse else s
                    gh = _lp(h, pw, None, "none", [], "")
                    K.rnn_forward_step(t, gates_np, _np(gh), h_np, relu, mask_np, has_mask, keep_h, out_np, off,
                                       hs_np)
            else:
                _loop("rnn_forward", n, _np(gates), w_np(w_hh), wt, _np(h), relu, mask_np, has_mask, reverse,
                      keep_h, out_np, off, hs_np)
            finals.append(h)
            keep.pop("gates", None)  # the RNN backward needs only the states
        saved.append(keep)
    calls["forward"] += 1
    return out, finals, saved, x


def _onednn_lstm_applies(spec: CellSpec, x: Tensor, mask: Tensor | None, train: bool) -> bool:
    """Whether the layer runs on oneDNN's fused LSTM layer: float32, no projection, no ``lengths``,
    from ONEDNN_LSTM_MIN_MACS (inference, unless our loop splits with a small weight: see
    LOOP_LSTM_INFERENCE_ROW_BYTES) or ONEDNN_LSTM_TRAIN_MIN_MACS (training, where our loop would not
    split by PAR_ROW_BYTES_LSTM) per-step multiply-adds B·4H·H."""
    if spec.mode != "LSTM" or spec.proj_size or mask is not None or x.dtype != torch.float32:
        return False
    macs = x.shape[1] * 4 * spec.hidden_size ** 2
    if train:
        return macs >= ONEDNN_LSTM_TRAIN_MIN_MACS and _chunks(spec, x, PAR_ROW_BYTES_LSTM) == 1
    small = _weight_bytes(spec, x) <= LOOP_LSTM_INFERENCE_MAX_WEIGHT
    return macs >= ONEDNN_LSTM_MIN_MACS and not (small and _chunks(spec, x, LOOP_LSTM_INFERENCE_ROW_BYTES) > 1)


def _onednn_lstm(x: Tensor, weights: list[DirectionWeights], states: list[State], train: bool):
    """The layer through ``aten::mkldnn_rnn_layer`` (torch.nn.LSTM's CPU path), each direction; with
    train, under autograd (its backward is oneDNN's). Returns output <f>[T, B, D*H], final states."""
    H = weights[0].w_hh.shape[1]
    x = x.contiguous()
    outs, finals = [], []
    for d, (w, (h0, c0)) in enumerate(zip(weights, states)):
        zeros = x.new_zeros(4 * H)
        b_ih = w.b_ih.contiguous() if w.b_ih is not None else zeros
        b_hh = w.b_hh.contiguous() if w.b_hh is not None else zeros
        y, hn, cn, _ = torch.ops.aten.mkldnn_rnn_layer(
            x, w.w_ih.contiguous(), w.w_hh.contiguous(), b_ih, b_hh, h0.contiguous(), c0.contiguous(), d == 1, [], 2,
            H, 1, True, False, False, train)
        outs.append(y)
        finals.append((hn, cn))
    calls["onednn_lstm"] += 1
    return (outs[0] if len(outs) == 1 else torch.cat(outs, 2)), finals


# ---------------------------------------------------------------------------------- backward
def _backward(spec: CellSpec, x: Tensor, mask: Tensor | None, flat: list, out: Tensor, saved: list[dict],
              dout: Tensor, dfinals: list, needs: tuple) -> tuple[Tensor | None, list]:
    """Gradients of the layer: dx and, flattened per direction, those of flat (None where not needed).
    needs: needs_input_grad of flat, then of x."""
    with _OneBlasThread():
        return _backward_impl(spec, x, mask, flat, out, saved, dout, dfinals, needs)


def _backward_impl(spec: CellSpec, x: Tensor, mask: Tensor | None, flat: list, out: Tensor, saved: list[dict],
                   dout: Tensor, dfinals: list, needs: tuple) -> tuple[Tensor | None, list]:
    K = _kernels()
    T, B, I = x.shape
    H, P, G = spec.hidden_size, spec.output_size, spec.gates
    D = len(flat) // _PER_DIR
    x2 = x.view(T * B, I)
    dout = _pooled_contiguous(dout)
    dout_np = _np(dout)
    has_mask = mask is not None
    mask_np = _np(mask[:, :, 0].contiguous()) if has_mask else _NO_MASK
    nstate = 2 if spec.mode == "LSTM" else 1
    n = _chunks(spec, x)
    dx = None
    grads: list = []
    for d in range(D):
        w_ih, w_hh, b_ih, b_hh, w_hr, _, _ = flat[d * _PER_DIR:(d + 1) * _PER_DIR]
        need = needs[d * _PER_DIR:(d + 1) * _PER_DIR]
        keep = saved[d]
        reverse, off = d == 1, d * P
        h0 = keep["h0"]
        w_hh = _c(w_hh)
        # the state sequence: the output itself, or the separate copy kept with a mask
        hseq, hoff = (keep["hs"], 0) if has_mask else (out, off)
        hseq_np = _np(hseq)
        hprev = hseq[:, :, hoff:hoff + P]
        dfin = dfinals[d * nstate:(d + 1) * nstate]
        dh = _state_grad(dfin[0], h0)
        dh_np = _np(dh)
        dc = None
        g_w_hr = None
        stepwise = n == 1 and _step_loop(spec, x, w_hr)
        if stepwise:
            pw_t = _reorder(_c(w_hh.t()), B)  # dG_t W_hh = linear(dG_t, W_hh^T)
        if spec.mode == "LSTM":
            dc = _state_grad(dfin[1], keep["c0"])
            dg = pool.empty((T, B, G * H), x.dtype)
            gates_np, cs_np, c0_np, dc_np, dg_np = (_np(keep["gates"]), _np(keep["cs"]), _np(keep["c0"]),
                                                   _np(dc), _np(dg))
            if stepwise:
                tprev, tmp_np = -1, dh_np
                for s in range(T):
                    t = s if reverse else T - 1 - s
                    K.lstm_backward_step(t, tprev, tmp_np, reverse, gates_np, cs_np, c0_np, dh_np, dc_np, mask_np,
                                         has_mask, dout_np, off, dg_np)
                    tmp_np, tprev = _np(_lp(dg[t], pw_t, None, "none", [], "")), t
                K.lstm_backward_step(-1, tprev, tmp_np, reverse, gates_np, cs_np, c0_np, dh_np, dc_np, mask_np,
                                     has_mask, dout_np, off, dg_np)
            else:
                proj = w_hr is not None
                dhs = pool.empty((T, B, P), x.dtype) if proj else None
                hcs = pool.empty((T, B, H), x.dtype) if proj else None
                dummy = _dummy(x.dtype, 3)
                _loop("lstm_backward", n, gates_np, cs_np, c0_np, _np(w_hh),
                      _np(_c(w_hr)) if proj else _dummy(x.dtype, 2), dh_np, dc_np, mask_np, has_mask, reverse,
                      dout_np, off, dg_np, _np(dhs) if proj else dummy, _np(hcs) if proj else dummy)
                if proj and need[4]:
                    g_w_hr = dhs.view(T * B, P).t().mm(hcs.view(T * B, H))
            dg_in = dg
            g_w_hh = _grad_recurrent(dg, hprev, h0, reverse) if need[1] else None
            g_b_hh = "same"  # = the input-side bias gradient
        elif spec.mode == "GRU" and spec.reset_after:
            dg_in = pool.empty((T, B, G * H), x.dtype)
            dghn = pool.empty((T, B, H), x.dtype)
            args = (_np(keep["gates"]), _np(keep["ghn"]), _np(h0), hseq_np, hoff)
            if stepwise:
                dgh = x.new_empty(B, G * H)
                dgh_np = _np(dgh)
                tprev, tmp_np = -1, dh_np
                for s in range(T):
                    t = s if reverse else T - 1 - s
                    K.gru_backward_step(t, tprev, tmp_np, reverse, *args, dh_np, mask_np, has_mask, dout_np, off,
                                        _np(dg_in), _np(dghn), dgh_np)
                    tmp_np, tprev = _np(_lp(dgh, pw_t, None, "none", [], "")), t
                K.gru_backward_step(-1, tprev, tmp_np, reverse, *args, dh_np, mask_np, has_mask, dout_np, off,
                                    _np(dg_in), _np(dghn), dgh_np)
            else:
                _loop("gru_backward", n, *args, _np(w_hh), dh_np, mask_np, has_mask, reverse, dout_np, off,
                      _np(dg_in), _np(dghn))
            g_w_hh = g_b_hh = None
            if need[1]:
                g_w_hh = torch.cat([_grad_recurrent(dg_in[:, :, : 2 * H], hprev, h0, reverse),
                                    _grad_recurrent(dghn, hprev, h0, reverse)])
            if need[3]:
                g_b_hh = torch.cat([dg_in[:, :, : 2 * H].sum((0, 1)), dghn.sum((0, 1))])
        elif spec.mode == "GRU":
            dg_in = pool.empty((T, B, G * H), x.dtype)
            rhs = pool.empty((T, B, H), x.dtype)
            _loop("grux_backward", n, _np(keep["gates"]), _np(h0), hseq_np, hoff, _np(_c(w_hh[: 2 * H])),
                  _np(_c(w_hh[2 * H:])), dh_np, mask_np, has_mask, reverse, dout_np, off, _np(dg_in), _np(rhs))
            g_w_hh = g_b_hh = None
            if need[1]:
                g_w_hh = torch.cat([_grad_recurrent(dg_in[:, :, : 2 * H], hprev, h0, reverse),
                                    dg_in[:, :, 2 * H:].reshape(T * B, H).t().mm(rhs.view(T * B, H))])
            g_b_hh = "same"
        else:
            dg_in = pool.empty((T, B, H), x.dtype)
            relu = spec.mode == "RNN_RELU"
            if stepwise:
                dg_np = _np(dg_in)
                tprev, tmp_np = -1, dh_np
                for s in range(T):
                    t = s if reverse else T - 1 - s
                    K.rnn_backward_step(t, tprev, tmp_np, hseq_np, hoff, dh_np, relu, mask_np, has_mask, dout_np,
                                        off, dg_np)
                    tmp_np, tprev = _np(_lp(dg_in[t], pw_t, None, "none", [], "")), t
                K.rnn_backward_step(-1, tprev, tmp_np, hseq_np, hoff, dh_np, relu, mask_np, has_mask, dout_np,
                                    off, dg_np)
            else:
                _loop("rnn_backward", n, hseq_np, hoff, _np(w_hh), dh_np, relu, mask_np, has_mask, reverse, dout_np,
                      off, _np(dg_in))
            g_w_hh = _grad_recurrent(dg_in, hprev, h0, reverse) if need[1] else None
            g_b_hh = "same"
        dg2 = dg_in.view(T * B, G * H)
        g_w_ih = _grad_input_weight(dg2, x2) if need[0] else None
        g_b_ih = dg2.sum(0) if (need[2] or (need[3] and isinstance(g_b_hh, str))) else None
        if isinstance(g_b_hh, str):  # the same sum: computed once, a copy for the second parameter
            g_b_hh = g_b_ih.clone() if need[3] else None
            g_b_ih = g_b_ih if need[2] else None
        if needs[-1]:  # dx = dG W_ih, summed over directions
            part = _linear(dg2, _c(w_ih.t()), None)
            dx = part if dx is None else dx.add_(part)
        if b_hh is None:
            g_b_hh = None
        grads += [g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_hr, dh if need[5] else None,
                  dc if (need[6] and dc is not None) else None]
    calls["backward"] += 1
    return (dx.view(T, B, I) if dx is not None else None), grads


class _FusedLayer(torch.autograd.Function):
    """One layer, all directions: (spec, x, mask, *flat) → (output, *final states)."""

    @staticmethod
    def forward(ctx, spec, x_in, mask, *flat):
        out, finals, saved, x = _forward(spec, x_in, mask, list(flat), train=True)
        ctx.spec = spec
        ctx.layout = [sorted(k for k, v in keep.items() if v is not None) for keep in saved]
        weights = [t for i, t in enumerate(flat) if i % _PER_DIR < 5]
        tensors = [x, mask, out, *weights]
        for keys, keep in zip(ctx.layout, saved):
            tensors += [keep[k] for k in keys]
        ctx.save_for_backward(*tensors, x_in, *flat)  # the inputs themselves last, for double backward
        if mask is not None:
            ctx.mark_non_differentiable(mask)
        return (out, *finals)

    @staticmethod
    def backward(ctx, dout, *dfinals):
        wanted = ctx.needs_input_grad[1:2] + ctx.needs_input_grad[3:]  # x and flat, which forward saved last
        if torch.is_grad_enabled():  # create_graph=True: gradients that autograd can differentiate again
            dx, *grads = _double_backward(ctx, wanted, ctx.saved_tensors[1], [dout, *dfinals])
            return (None, dx, None, *grads)
        x, mask, out, *rest = ctx.saved_tensors[:-len(wanted)]
        D = len(ctx.layout)
        weights, rest = rest[: 5 * D], rest[5 * D:]
        flat, saved = [], []
        for d, keys in enumerate(ctx.layout):
            flat += list(weights[5 * d: 5 * d + 5]) + [None, None]
            keep = dict(zip(keys, rest[: len(keys)]))
            keep.setdefault("hs", None)
            rest = rest[len(keys):]
            saved.append(keep)
        needs = tuple(ctx.needs_input_grad[3:]) + (ctx.needs_input_grad[1],)
        dx, grads = _backward(ctx.spec, x, mask, flat, out, saved, dout, list(dfinals), needs)
        return (None, dx, None, *grads)


def _double_backward(ctx, needs: tuple, mask: Tensor | None, grads: list) -> list:
    """Double backward of a layer Function (``create_graph=True``) whose forward saved its inputs x and
    flat last: the gradients w.r.t. x and each of flat (None where ``needs`` says no), differentiable,
    through ``reference.differentiable_grads``."""
    x, *flat = ctx.saved_tensors[-len(needs):]
    parts = [flat[d:d + _PER_DIR] for d in range(0, len(flat), _PER_DIR)]
    weights = [DirectionWeights(*part[:5]) for part in parts]
    states = [tuple(t for t in part[5:] if t is not None) for part in parts]
    inputs = [t if need else None for t, need in zip((x, *flat), needs)]
    return reference.differentiable_grads(ctx.spec, x, mask, weights, states, False, grads, inputs)


def _small_train_applies(spec: CellSpec, x: Tensor, mask: Tensor | None, flat: list) -> bool:
    """Whether a training call runs through ``_SmallLayer`` (see ``SMALL_TRAIN_MAX_MACS``)."""
    if mask is not None or (spec.mode == "GRU" and not spec.reset_after) or flat[4] is not None:
        return False
    T, B, I = x.shape
    return T * B * _stack_weights(spec, I, 1) * (len(flat) // _PER_DIR) <= SMALL_TRAIN_MAX_MACS


class _SmallLayer(torch.autograd.Function):
    """One small layer for training, all directions: (spec, x, *flat) → (output, *final states), each
    direction's forward and backward one compiled call (``fused_loops``, "small training calls").
    Every array it hands the kernels is detached already: ``.numpy()``, not ``_np`` (1.0 against 1.55
    µs each, ~20 a step)."""

    @staticmethod
    def forward(ctx, spec, x_in, *flat):
        K = _kernels()
        x = x_in.detach().contiguous()
        T, B, _ = x.shape
        H, P, D = spec.hidden_size, spec.output_size, len(flat) // _PER_DIR
        out = x.new_empty(T, B, D * P)
        x_np, out_np = x.numpy(), out.numpy()
        finals, saved = [], [x, out]
        for d in range(D):
            part = flat[d * _PER_DIR:(d + 1) * _PER_DIR]
            w_ih, w_hh, b_ih, b_hh, _, h0, c0 = (t if t is None else _c(t) for t in part)
            zero = _zeros(w_ih.shape[0], x.dtype)
            b_ih, b_hh = (zero if b is None else b for b in (b_ih, b_hh))
            h = h0.clone()
            head = (x_np, w_ih.numpy(), b_ih.numpy(), b_hh.numpy(), w_hh.numpy(), h.numpy())
            if spec.mode == "LSTM":
                c = c0.clone()
                gates, cs = x.new_empty(T, B, 4 * H), x.new_empty(T, B, H)
                K.lstm_small_forward(*head, c.numpy(), d == 1, out_np, d * P, gates.numpy(), cs.numpy())
                finals += [h, c]
                saved += [gates, cs, c0]
            elif spec.mode == "GRU":
                gates, ghn = x.new_empty(T, B, 3 * H), x.new_empty(T, B, H)
                K.gru_small_forward(*head, d == 1, out_np, d * P, gates.numpy(), ghn.numpy())
                finals.append(h)
                saved += [gates, ghn]
            else:
                K.rnn_small_forward(*head, spec.mode == "RNN_RELU", d == 1, out_np, d * P)
                finals.append(h)
            saved += [w_ih, w_hh, h0]
        ctx.spec, ctx.directions, ctx.bias = spec, D, flat[2] is not None
        calls["small_train"] += 1
        ctx.save_for_backward(*saved, x_in, *flat)  # the inputs themselves last, for double backward
        return (out, *finals)

    @staticmethod
    def backward(ctx, dout, *dfinals):
        wanted = ctx.needs_input_grad[1:]  # x and flat, which forward saved last
        if torch.is_grad_enabled():  # create_graph=True: gradients that autograd can differentiate again
            return (None, *_double_backward(ctx, wanted, None, [dout, *dfinals]))
        K = _kernels()
        spec = ctx.spec
        x, out, *rest = ctx.saved_tensors[:-len(wanted)]
        lstm = spec.mode == "LSTM"
        per = len(rest) // ctx.directions  # what forward saved per direction
        nstate = 2 if lstm else 1
        dout_np, x_np, out_np = dout.detach().contiguous().numpy(), x.numpy(), out.detach().numpy()
        dx = torch.zeros_like(x)
        grads: list = []
        for d in range(ctx.directions):
            kept = rest[d * per:(d + 1) * per]
            w_ih, w_hh, h0 = kept[-3:]
            dfin = dfinals[d * nstate:(d + 1) * nstate]
            dh = _state_grad(dfin[0], h0)
            g = [torch.zeros_like(w_ih), torch.zeros_like(w_hh), w_ih.new_zeros(w_ih.shape[0]),
                 w_ih.new_zeros(w_ih.shape[0])]
            state = (h0.numpy(), w_ih.numpy(), w_hh.numpy(), dh.numpy())  # every kernel's arguments after off
            tail = (d == 1, dout_np, dx.numpy(), *(t.numpy() for t in g))
            off = d * spec.output_size
            if lstm:
                gates, cs, c0 = kept[:3]
                dc = _state_grad(dfin[1], c0)
                K.lstm_small_backward(x_np, gates.numpy(), cs.numpy(), c0.numpy(), out_np, off, *state,
                                      dc.numpy(), *tail)
            elif spec.mode == "GRU":
                dc = None
                K.gru_small_backward(x_np, kept[0].numpy(), kept[1].numpy(), out_np, off, *state, *tail)
            else:
                dc = None
                K.rnn_small_backward(x_np, out_np, off, *state, spec.mode == "RNN_RELU", *tail)
            if not ctx.bias:
                g[2] = g[3] = None
            grads += [*g, None, dh, dc]
        return (None, dx, *grads)


def _state_grad(grad: Tensor | None, like: Tensor) -> Tensor:
    """A contiguous copy of a final state's gradient (the kernels turn it into the initial state's),
    or zeros."""
    if grad is None:
        return like.new_zeros(like.shape)
    return grad.detach().clone(memory_format=torch.contiguous_format)


def run_layer(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None) -> tuple[Tensor, list[State]]:
    """The backend entry point (see ``rnnkit.kernels``): output <f>[T, B, D*P], final states."""
    if spec.layer_norm:
        from . import fused_ln
        return fused_ln.run_layer(spec, x, weights, states, mask)
    flat: list = []
    for w, s in zip(weights, states):
        flat += [w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, s[0], s[1] if len(s) > 1 else None]
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *flat))
    if _onednn_lstm_applies(spec, x, mask, need_grad) and not (x.shape[0] == 1 and not need_grad):
        with torch.set_grad_enabled(need_grad):
            return _onednn_lstm(x, weights, states, need_grad)
    if need_grad and _small_train_applies(spec, x, mask, flat):
        out, *finals = _SmallLayer.apply(spec, x, *flat)
    elif need_grad:
        out, *finals = _FusedLayer.apply(spec, x, mask, *flat)
    elif x.shape[0] == 1 and mask is None:  # one step (e.g. generation): the streaming kernel, no GEMM setup
        with torch.no_grad():
            out, finals = _single_step(spec, x, weights, states)
    else:
        with torch.no_grad():
            out, finals, _, _ = _forward(spec, x, mask, flat, train=False)
    n = 2 if spec.mode == "LSTM" else 1
    return out, [tuple(finals[d * n:(d + 1) * n]) for d in range(len(weights))]


# --------------------------------------------------------------------------------- streaming
_zero_bias: dict = {}


def _zeros(n: int, dtype: torch.dtype) -> Tensor:
    """A shared zero vector <dtype>[n] (the bias of a layer without one; never written)."""
    if (n, dtype) not in _zero_bias:
        _zero_bias[(n, dtype)] = torch.zeros(n, dtype=dtype)
    return _zero_bias[(n, dtype)]


_stacks: dict = {}


def _all_contiguous(layers: list[DirectionWeights]) -> bool:
    return all(t.is_contiguous() for w in layers for t in w if t is not None)


def _stack_pointers(spec: CellSpec, layers: list[DirectionWeights]) -> tuple[np.ndarray, list[Tensor]]:
    """The weights of a stack for the streaming kernels: ptrs <int64>[L, 7] (per layer the addresses
    of w_ih, w_hh, b_ih, b_hh, w_hr or 0, ln or 0, and the layer's input size; see fused_loops), and
    the tensors they point into: the parameters themselves where contiguous (so every in-place update
    is seen), else copies. The caller keeps those alive while it uses ptrs. Every shape and dtype is
    checked here (the compiled code does not). ptrs are cached per spec and parameters, while the
    same tensors (weak references: the cache keeps none alive) keep their addresses and sizes (the
    compiled code can then not read past a weight, whatever a caller does to its shape)."""
    params = [p for w in layers for p in w if p is not None]
    key = (spec, *map(id, params))
    hit = _stacks.get(key)
    if (hit is not None and all(ref() is p for ref, p in zip(hit[0], params))
            and [p.data_ptr() for p in params] == hit[1] and [p.numel() for p in params] == hit[2]):
        return hit[3], params
    G, H, P = spec.gates * spec.hidden_size, spec.hidden_size, spec.output_size
    dtype = layers[0].w_ih.dtype
    rows, alive = [], []
    for layer, w in enumerate(layers):
        I = w.w_ih.shape[-1] if layer == 0 else P
        expected = {"w_ih": (G, I), "w_hh": (G, P), "b_ih": (G,), "b_hh": (G,), "w_hr": (P, H), "ln": (10 * H,)}
        for name, shape in expected.items():
            t = getattr(w, name)
            if t is not None and (tuple(t.shape) != shape or t.dtype != dtype or t.device.type != "cpu"):
                raise ValueError(f"layers[{layer}].{name}: expected a CPU tensor of shape {shape} and dtype {dtype}, "
                                 f"got {tuple(t.shape)} {t.dtype} on {t.device}")
        row = [w.w_ih, w.w_hh, w.b_ih if w.b_ih is not None else _zeros(G, dtype),
               w.b_hh if w.b_hh is not None else _zeros(G, dtype), w.w_hr, w.ln]
        row = [None if t is None else _c(t) for t in row]  # the parameter itself when contiguous
        alive += [t for t in row if t is not None]
        rows.append([0 if t is None else t.data_ptr() for t in row] + [I])
    ptrs = np.array(rows, np.int64)
    if _all_contiguous(layers):  # else the addresses are the copies': not cacheable
        if len(_stacks) > 256:
            _stacks.clear()
        _stacks[key] = ([weakref.ref(p) for p in params], [p.data_ptr() for p in params], [p.numel() for p in params],
                        ptrs)
    return ptrs, alive


def _stream_kernel(spec: CellSpec, chunks: int = 1, units: bool = False):
    """The compiled steps of this cell, ``kernel(ptrs, x_addr, y_addr, steps, h, c, flag)``, and its
    flag; with chunks > 1, the kernel that splits the batch (or with units, each layer's hidden units:
    see ``_stream_units``) into that many chunks, one per thread (numba's pool is set to that size here)."""
    K = _kernels()
    if spec.mode == "LSTM":
        name, flag = ("stream_ln_lstm" if spec.layer_norm else "stream_lstm"), False
    elif spec.mode == "GRU":
        name, flag = "stream_gru", spec.reset_after
    else:
        name, flag = "stream_rnn", spec.mode == "RNN_RELU"
    if chunks == 1:
        return getattr(K, name), flag
    K.set_threads(chunks)
    return functools.partial(getattr(K, name + ("_units" if units else "_par")), chunks), flag


def _stack_weights(spec: CellSpec, input_size: int, layers: int) -> int:
    """Elements of W_ih and W_hh in a unidirectional stack (= its multiply-adds per step and row)."""
    G, P = spec.gates * spec.hidden_size, spec.output_size
    return G * (input_size + P + (layers - 1) * 2 * P)


def _stream_units(spec: CellSpec, batch: int, input_size: int, layers: int, itemsize: int) -> int:
    """Threads that share each layer's hidden units in a streaming call of a unidirectional stack at
    batch 1 (``stream_<cell>_units``), or 1: from ``STREAM_UNITS_MIN_WEIGHT`` of W_ih and W_hh in all and
    ``STREAM_UNITS_MIN_LAYER_WEIGHT`` per layer, for the RNN, the LSTM without projection or layer norm
    and the GRU with reset_after."""
    if batch != 1 or spec.proj_size or spec.layer_norm or (spec.mode == "GRU" and not spec.reset_after):
        return 1
    n = _threads()
    if n < 2:
        return 1
    weight = _stack_weights(spec, input_size, layers) * itemsize
    return n if weight >= max(STREAM_UNITS_MIN_WEIGHT, STREAM_UNITS_MIN_LAYER_WEIGHT * layers) else 1


def _stream_sequence_chunks(spec: CellSpec, x: Tensor, layers: int) -> int:
    """How a no-grad call of a whole unidirectional stack over x <f>[T, B, I] runs: through the
    streaming kernel, every step and layer in one compiled call, split into that many chunks of the
    batch, one per thread (``STREAM_PAR_*``), or not split by rows (1: up to ``STREAM_SEQUENCE_MAX_MACS``,
    or at batch 1 where the threads share each layer's units, ``_stream_units``); 0: layer by layer."""
    T, B, I = x.shape
    G, P = spec.gates * spec.hidden_size, spec.output_size
    macs = T * B * _stack_weights(spec, I, layers)
    n = _max_chunks(B)
    weight = G * (max(I, P) + P) * x.element_size()  # the largest layer's W_ih and W_hh
    if n > 1 and macs >= STREAM_PAR_MIN_MACS and weight <= max(STREAM_PAR_CACHED_WEIGHT,
                                                                STREAM_PAR_ROW_BYTES * (B // n)):
        return n
    units = _stream_units(spec, B, I, layers, x.element_size()) > 1  # then stream_step splits the units
    return 1 if macs <= STREAM_SEQUENCE_MAX_MACS or units else 0


def stream_supports(spec: CellSpec, x_t: Tensor) -> bool:
    """Whether ``stream_step`` can run: CPU float32/64, a known cell, one step <f>[B, I] or steps
    <f>[T, B, I], in plain eager mode (``base.eager``). The caller also checks that no gradient is
    needed (and that no inter-layer dropout applies)."""
    return (x_t.is_cpu and x_t.dtype in _DTYPES and spec.mode in _MODES
            and x_t.dim() in (2, 3) and eager())


def stream_step(spec: CellSpec, x_t: Tensor, layers: list[DirectionWeights], h: Tensor | None,
                c: Tensor | None = None, chunks: int = 1) -> tuple[Tensor, Tensor, Tensor | None]:
    """One time step of a unidirectional stack, or a few, every layer in one compiled call, without
    autograd (for streaming inference, and whole calls on small shapes: a few µs of overhead).

    x_t <f>[B, I] (or steps <f>[T, B, I]) on the CPU;  h <f>[L, B, P] and c <f>[L, B, H] (LSTM) in
    torch.nn's layout, or None (zeros). Returns y_t <f>[B, P] (or <f>[T, B, P]: the top layer's h at
    each step), the new h and the new c (None unless LSTM). chunks: threads that share the batch (see
    ``_stream_sequence_chunks``)."""
    L, B, I = len(layers), x_t.shape[-2], x_t.shape[-1]
    H, P = spec.hidden_size, spec.output_size
    w0 = layers[0].w_ih
    if w0.shape[1] != I or w0.dtype != x_t.dtype:
        raise ValueError(f"x_t: expected {w0.shape[1]} features of dtype {w0.dtype}, got shape "
                         f"{tuple(x_t.shape)} of dtype {x_t.dtype}")
    if h is not None and (tuple(h.shape) != (L, B, P) or h.dtype != x_t.dtype):
        raise ValueError(f"h: expected shape {(L, B, P)} of dtype {x_t.dtype}, got {tuple(h.shape)} {h.dtype}")
    if c is not None and (tuple(c.shape) != (L, B, H) or c.dtype != x_t.dtype):
        raise ValueError(f"c: expected shape {(L, B, H)} of dtype {x_t.dtype}, got {tuple(c.shape)} {c.dtype}")
    x_t = x_t.contiguous()
    ptrs, _alive = _stack_pointers(spec, layers)  # _alive: what ptrs point into, held through the call
    units = _stream_units(spec, B, I, L, x_t.element_size()) if chunks == 1 else 1
    kernel, flag = _stream_kernel(spec, max(chunks, units), units > 1)
    calls["units_stream"] += units > 1
    y_t = torch.empty((*x_t.shape[:-1], P), dtype=x_t.dtype)  # its own tensor, not a view of the new h
    h_t, c_t = _advance(kernel, flag, ptrs, x_t, y_t, h, c, (L, B, P), (L, B, H) if spec.mode == "LSTM" else None)
    return y_t, h_t, c_t


def _advance(kernel, flag, ptrs, x_t: Tensor, y_t: Tensor, h: Tensor | None, c: Tensor | None, h_shape: tuple,
             c_shape: tuple | None) -> tuple[Tensor, Tensor | None]:
    """Run a streaming kernel over x_t <f>[B, I] or <f>[T, B, I] (contiguous, checked) into y_t from
    the state h, c (None: zeros; c_shape None: no cell state), on copies that become the new state
    tensors, returned. The last ones returned are remembered with their numpy views (``_last_state``)."""
    dtype = _NP_DTYPE[x_t.dtype]
    hout = _state_np(h).copy() if h is not None else np.zeros(h_shape, dtype)  # the kernel updates it in place
    lstm = c_shape is not None
    cout = (_state_np(c).copy() if c is not None else np.zeros(c_shape, dtype)) if lstm else _dummy(x_t.dtype, 3)
    kernel(ptrs, x_t.data_ptr(), y_t.data_ptr(), x_t.shape[0] if x_t.dim() == 3 else 1, hout, cout, flag)
    h_t = _from_np(hout)
    c_t = _from_np(cout) if lstm else None
    _last_state.clear()
    _last_state[id(h_t)] = (h_t, hout)
    if lstm:
        _last_state[id(c_t)] = (c_t, cout)
    return h_t, c_t


class Streamer:
    """Stateful streaming for a unidirectional stack: ``y_t = streamer(x_t)`` advances the state kept
    inside. The lowest-overhead way to run one step at a time: a call checks x_t, allocates y_t and
    makes one compiled call (the weights passed as addresses, the state updated in place). Each y_t
    is a tensor of its own (views of one preallocated block would share one version counter, so an
    in-place op on one output would break autograd's check of another saved for backward), unless
    the caller passes its own: ``streamer(x_t, out=y)`` writes into y (no allocation, a check of y
    instead). At batch 1 with large weights (``STREAM_UNITS_MIN_*``),
    the call shares each layer's hidden units among torch's threads (as many as when the
    streamer is made). The weights are read in place, so in-place updates to them
    (an optimizer step, ``load_state_dict``) are seen; after replacing a parameter tensor, make a new
    streamer.

    layers: the stack's DirectionWeights (forward direction, contiguous), batch B; h <f>[L, B, P] and
    c <f>[L, B, H] (LSTM) the initial state, or None for zeros. x_t <f>[B, I] on the CPU →
    y_t <f>[B, P]. ``state`` returns h, or (h, c) for LSTM, as new tensors (forward's hx layout)."""

    def __init__(self, spec: CellSpec, layers: list[DirectionWeights], batch: int,
                 h: Tensor | None = None, c: Tensor | None = None) -> None:
        if spec.mode not in _MODES:
            raise ValueError(f"spec: the Streamer covers the RNN, LSTM and GRU cells, got {spec}")
        if not _all_contiguous(layers):
            raise ValueError("layers: the Streamer reads the weights in place and needs them contiguous")
        self.spec = spec
        w0 = layers[0].w_ih
        L, H, P = len(layers), spec.hidden_size, spec.output_size
        dtype = _NP_DTYPE[w0.dtype]
        self._lstm = spec.mode == "LSTM"
        self.h = np.zeros((L, batch, P), dtype)
        self.c = np.zeros((L, batch, H), dtype) if self._lstm else _dummy(w0.dtype, 3)
        for name, init, n in (("h", h, P), ("c", c, H)):
            if init is not None:
                if tuple(init.shape) != (L, batch, n) or init.dtype != w0.dtype:
                    raise ValueError(f"{name}: expected shape {(L, batch, n)} of dtype {w0.dtype}, "
                                     f"got {tuple(init.shape)} {init.dtype}")
                getattr(self, name)[...] = _np(init)
        self._ptrs, self._alive = _stack_pointers(spec, layers)  # _alive: what ptrs point into
        units = _stream_units(spec, batch, w0.shape[1], L, w0.element_size())
        self._kernel, self._flag = _stream_kernel(spec, units, units > 1)
        self._units = units > 1
        self._shape_x, self._dtype = torch.Size((batch, w0.shape[1])), w0.dtype
        self._like_y = torch.empty((batch, P), dtype=w0.dtype)  # empty_like(it) is cheaper than empty(shape)

    def __call__(self, x_t: Tensor, out: Tensor | None = None) -> Tensor:
        """y_t for x_t, the state advanced; out: a tensor <f>[B, P] to write y_t into and return
        (no allocation per call), else a new tensor."""
        x_t = self._checked(x_t)
        if out is None:
            out = torch.empty_like(self._like_y)
        else:
            check_out(out, self._like_y.shape, self._dtype, _CPU)
        self._kernel(self._ptrs, x_t.data_ptr(), out.data_ptr(), 1, self.h, self.c, self._flag)
        return out

    def _checked(self, x_t: Tensor) -> Tensor:
        """x_t, checked against the streamer's shape, dtype and device, and contiguous. In a process
        forked after the streamer was made, the kernel that splits units goes back to one thread
        (GNU OpenMP, which runs numba's threads, is not fork-safe)."""
        if self._units and _forked:
            self._kernel, self._units = _stream_kernel(self.spec)[0], False
        if not isinstance(x_t, Tensor):
            raise TypeError(f"x_t: expected a torch.Tensor, got {type(x_t).__name__}")
        if x_t.shape != self._shape_x or x_t.dtype != self._dtype or not x_t.is_cpu:
            error = TypeError if x_t.dtype != self._dtype else ValueError  # as the layer's own checks
            raise error(f"x_t: expected a CPU tensor of shape {tuple(self._shape_x)} and dtype "
                        f"{self._dtype}, got {_describe(x_t)}")
        return x_t if x_t.is_contiguous() else x_t.contiguous()

    def step(self, x_t: Tensor, h: Tensor | None, c: Tensor | None = None):
        """One step from a given state, for ``layer.step()``: h <f>[L, B, P] (and c <f>[L, B, H] for
        LSTM; None for zeros, shapes and dtype checked by the caller). Returns y_t and the new state as
        new tensors (``state``'s layout); the streamer's own state is left as it was."""
        calls["layer_step"] += 1
        calls["units_stream"] += self._units
        y_t = torch.empty_like(self._like_y)
        h_t, c_t = _advance(self._kernel, self._flag, self._ptrs, self._checked(x_t), y_t, h, c, self.h.shape,
                            self.c.shape if self._lstm else None)
        return y_t, ((h_t, c_t) if self._lstm else h_t)

    @property
    def state(self) -> Tensor | tuple[Tensor, Tensor]:
        """The current h <f>[L, B, P], or (h, c <f>[L, B, H]) for LSTM, as new tensors."""
        h = _from_np(self.h.copy())
        return (h, _from_np(self.c.copy())) if self._lstm else h

    def __reduce_ex__(self, protocol):
        # the kernel's weight addresses cannot travel with a copy or a pickle
        raise TypeError("Streamer: cannot be copied or pickled; to fork the state, make another with "
                        "layer.streamer(batch_size, state=streamer.state)")


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"shape {tuple(x.shape)}, dtype {x.dtype} on {x.device}"
    return f"{type(x).__name__}"


def _single_step(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State]):
    """A one-step layer call without autograd through ``stream_step``, per direction (a single step
    is the same in both)."""
    outs, finals = [], []
    for w, s in zip(weights, states):
        h = s[0].unsqueeze(0)
        c = s[1].unsqueeze(0) if len(s) > 1 else None
        y, hn, cn = stream_step(spec, x[0], [w], h, c)
        outs.append(y)
        finals += [hn[0], cn[0]] if cn is not None else [hn[0]]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    calls["forward"] += 1
    return out.unsqueeze(0), finals


def _np_fast(t: Tensor):
    """A numpy view of a CPU tensor, with the fewest torch calls on the common path."""
    if t.requires_grad or not t.is_contiguous():
        t = t.detach().contiguous()
    return t.numpy()


_last_state: dict = {}
"""The state tensors the last ``stream_step`` returned, with their numpy views: fed back on the next
call (the usual streaming loop), they skip the tensor → numpy conversion."""


def _state_np(t: Tensor):
    hit = _last_state.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1]
    return _np_fast(t)


_from_np = torch.from_numpy


@contextlib.contextmanager
def _settings(**values):
    """Temporarily set this module's dispatch constants (for ``warm_up``)."""
    module = globals()
    saved = {name: module[name] for name in values}
    module.update(values)
    try:
        yield
    finally:
        module.update(saved)


WARM_UP_GROUPS = (
    (CellSpec("RNN_TANH", 3), CellSpec("GRU", 3), CellSpec("GRU", 3, reset_after=False)),
    (CellSpec("LSTM", 3), CellSpec("LSTM", 3, proj_size=2), CellSpec("LSTM", 3, layer_norm=True)),
)
"""The cells ``warm_up`` compiles, in groups that share no compiled function (rnn_*, gru_*, grux_* |
lstm_*, ln_lstm_*): numba keeps one index file per function, which two processes compiling it at
once could each rewrite, losing the other's entry. The two groups take about as long to compile."""


def warm_up(dtypes=(torch.float32, torch.float64), processes: int = 2) -> None:
    """Compile every loop of this backend into numba's on-disk cache, e.g. once after installing, so
    that no first call pays for compilation (4-15 s per cell otherwise; ~0.5 s to load from the
    cache). The groups of ``WARM_UP_GROUPS`` compile in ``processes`` processes at once (numba
    compiles on one thread, so two processes take about half the time on two cores)."""
    if processes > 1:
        with ProcessPoolExecutor(min(processes, len(WARM_UP_GROUPS)), multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_warm_up_cells, WARM_UP_GROUPS, [dtypes] * len(WARM_UP_GROUPS)))
    else:
        for group in WARM_UP_GROUPS:
            _warm_up_cells(group, dtypes)


def _warm_up_cells(specs, dtypes) -> None:
    """Run every driver of these cells once, forward and backward, with and without a mask."""
    never = 1 << 62
    with _settings(ONEDNN_LSTM_MIN_MACS=never, ONEDNN_LSTM_TRAIN_MIN_MACS=never, PAR_ROW_BYTES=never,
                   STEP_LOOP_MIN_STEPS=1, SMALL_TRAIN_MAX_MACS=-1):
        for dtype in dtypes:
            for spec in specs:
                g, h, p = spec.gates * spec.hidden_size, spec.hidden_size, spec.output_size

                def param(*shape):
                    return torch.randn(*shape, dtype=dtype, requires_grad=True)

                w = DirectionWeights(param(g, 2), param(g, p), param(g), param(g),
                                     param(p, h) if spec.proj_size else None, param(10 * h) if spec.layer_norm else None)
                x = torch.randn(2, 4, 2, dtype=dtype)
                state = (torch.zeros(4, p, dtype=dtype), torch.zeros(4, h, dtype=dtype))[:len(spec.state_sizes)]
                drivers = [(never, never)]  # (STEP_LOOP_MIN_WEIGHT, PAR_MIN_ROWS): the compiled loop
                if _threads() > 1:
                    drivers.append((never, 1))  # split across threads
                if dtype == torch.float32:
                    drivers.append((0, never))  # the Python step loop
                for step_weight, par_rows in drivers:
                    with _settings(STEP_LOOP_MIN_WEIGHT=step_weight, PAR_MIN_ROWS=par_rows):
                        for mask in (None, torch.ones(2, 4, 1, dtype=torch.bool)):
                            run_layer(spec, x, [w], [state], mask)[0].sum().backward()
                            with torch.no_grad():
                                run_layer(spec, x, [w], [state], mask)
                with _settings(SMALL_TRAIN_MAX_MACS=never):  # _SmallLayer, where it applies
                    run_layer(spec, x, [w], [state], None)[0].sum().backward()
                if stream_supports(spec, x[0]):  # one kernel for every depth
                    layers = [DirectionWeights(*(None if t is None else t.detach() for t in w))]
                    for chunks in (1, 2) if _threads() > 1 else (1,):
                        stream_step(spec, x[0], layers, None, chunks=chunks)
                    with _settings(STREAM_UNITS_MIN_WEIGHT=0, STREAM_UNITS_MIN_LAYER_WEIGHT=0):  # units split
                        stream_step(spec, x[0, :1], layers, None)


def _backend_stream_step(spec: CellSpec, x_t: Tensor, layers: list[DirectionWeights], h: Tensor,
                         c: Tensor | None):
    if not stream_supports(spec, x_t):
        return None
    chunks = 1
    if x_t.dim() == 3:  # a whole no-grad call of the stack: only where it beats the layer-by-layer path
        chunks = _stream_sequence_chunks(spec, x_t, len(layers)) if whole_sequence_input(x_t) else 0
        if not chunks:
            return None
        calls["stream_sequence"] += 1
        calls["parallel_stream"] += chunks > 1
    else:
        calls["layer_step"] += 1
    return stream_step(spec, x_t, layers, h, c, chunks)


def _backend_streamer(spec: CellSpec, layers: list[DirectionWeights], batch: int, h: Tensor | None,
                      c: Tensor | None, like: Tensor):
    if not (_all_contiguous(layers) and stream_supports(spec, like[:1, :1])):
        return None  # the layer falls back to its step()-based streamer
    return Streamer(spec, layers, batch, h, c)


register_backend(Backend("fused", run_layer, supports, _backend_stream_step, _backend_streamer))
