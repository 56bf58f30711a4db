"""GEMM helpers of the fused backend: the whole-sequence products around the time loops (oneDNN's
prepacked linear or MKL), the weight gradients, oneDNN's per-step GEMM for the Python step loops, and
the compiled loops' BLAS kept on one thread."""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import Tensor

from ...cells import CellSpec
from ..buffers import pool
from . import runtime
from .policies import Policy

linear_pointwise = torch.ops.mkldnn._linear_pointwise
reorder_weight = torch.ops.mkldnn._reorder_linear_weight
NP_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
NO_MASK = np.zeros((1, 1), np.bool_)
_DUMMIES = {(dt, n): np.zeros((1, 1, 1)[:n] if n == 3 else (0,) * n, dt) for dt in (np.float32, np.float64)
            for n in (1, 2, 3)}


def as_np(t: Tensor):
    """A numpy view of a CPU tensor (detached)."""
    return t.detach().numpy()


def dummy(dtype: torch.dtype, ndim: int):
    """A placeholder array for an unused kernel argument: <dtype>[1, 1, 1] (ndim 3) or empty."""
    return _DUMMIES[(NP_DTYPE[dtype].type, ndim)]


def contiguous(t: Tensor) -> Tensor:
    return t.detach().contiguous()


def pooled_contiguous(t: Tensor) -> Tensor:
    """t detached and C-contiguous: itself when it is, else a copy into a pooled buffer (for a large
    copy the backend keeps to itself, such as a batch-first gradient made time-major)."""
    t = t.detach()
    if t.is_contiguous():
        return t
    return pool.empty(tuple(t.shape), t.dtype).copy_(t)


def add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def folded_bias(spec: CellSpec, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    """The bias added to the input projection: b_ih + b_hh, except GRU's b_hn (reset_after=True),
    which stays inside r·(W_hn h + b_hn)."""
    if spec.mode == "GRU" and spec.reset_after and b_hh is not None:
        b_hh = torch.cat([b_hh[: 2 * spec.hidden_size], b_hh.new_zeros(spec.hidden_size)])
    return add(b_ih, b_hh)


_onednn_shapes: set = set()
"""(rows, out, in) of the products given to oneDNN so far (see ``linear``)."""


def linear(x: Tensor, w: Tensor, b: Tensor | None, policy: Policy, pooled: bool = False) -> Tensor:
    """x w^T + b into a fresh contiguous tensor: oneDNN for large float32 products (faster than MKL's
    sgemm here, but ~15 µs of fixed cost), for the first ``policy.onednn_max_shapes`` shapes (oneDNN
    keeps a primitive per shape). pooled (a result the layer keeps to itself): from
    ``policy.linear_pool_min_bytes``, into a pooled buffer through MKL."""
    if pooled and x.shape[0] * w.shape[0] * x.element_size() >= policy.linear_pool_min_bytes:
        out = pool.empty((x.shape[0], w.shape[0]), x.dtype)
        return torch.addmm(b, x, w.t(), out=out) if b is not None else torch.mm(x, w.t(), out=out)
    if x.dtype == torch.float32 and x.shape[0] * w.shape[0] * w.shape[1] >= policy.onednn_linear_min_macs:
        shape = (x.shape[0], *w.shape)
        if shape in _onednn_shapes or len(_onednn_shapes) < policy.onednn_max_shapes:
            _onednn_shapes.add(shape)
            return linear_pointwise(x, w, b, "none", [], "")
    return torch.addmm(b, x, w.t()) if b is not None else x.mm(w.t())


def onednn_shapes() -> frozenset:
    """The shapes ``linear`` has given to oneDNN in this process."""
    return frozenset(_onednn_shapes)


def grad_input_weight(dg: Tensor, x: Tensor, policy: Policy) -> Tensor:
    """dW_ih = dG^T x for dg <f>[N, G] and x <f>[N, I]: as (x^T dG)^T where the policy's rule says MKL's
    sgemm is faster on it (few input features, many gates), otherwise the direct form."""
    i, g = x.shape[1], dg.shape[1]
    if i <= policy.grad_weight_transposed_max_input and i * policy.grad_weight_transposed_min_ratio <= g:
        return x.t().mm(dg).t().contiguous()
    return dg.t().mm(x)


def grad_recurrent(dg: Tensor, hseq: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """Σ_t dg_t^T h_{t-1} as two GEMMs: dg <f>[T, B, N]; hseq <f>[T, B, M] with hseq[t] the state
    after step t (any strides with a unit last one); h0 <f>[B, M] the state before the first step."""
    T, _, n = dg.shape
    m = hseq.shape[2]
    first, rest, prev = (dg[T - 1], dg[: T - 1], hseq[1:]) if reverse else (dg[0], dg[1:], hseq[: T - 1])
    gw = first.t().mm(h0)
    if T > 1:
        gw.addmm_(rest.reshape(-1, n).t(), prev.reshape(-1, m))
    return gw


def step_forward(steps: int, reverse: bool, h: Tensor, w_hh: Tensor, step) -> None:
    """A Python time loop on oneDNN's GEMM: per step gh = h W_hh^T (W_hh prepacked once), then
    ``step(t, gh)``, the cell's compiled elementwise step, which updates h in place."""
    pw = reorder_weight(w_hh, h.shape[0])
    for s in range(steps):
        step(steps - 1 - s if reverse else s, as_np(linear_pointwise(h, pw, None, "none", [], "")))


def step_backward(steps: int, reverse: bool, dh_np, w_hh: Tensor, rows: int, grad_rows, step) -> None:
    """The backward of ``step_forward``: per step t (in backward order) ``step(t, tprev, tmp)`` finishes
    step tprev with tmp = grad_rows(tprev) W_hh and does step t's elementwise work; a last call with
    t = -1 finishes the first step. grad_rows(t): the gradient rows the recurrent GEMM takes."""
    pw_t = reorder_weight(contiguous(w_hh.t()), rows)  # g W_hh = linear(g, W_hh^T)
    tprev, tmp = -1, dh_np
    for s in range(steps):
        t = s if reverse else steps - 1 - s
        step(t, tprev, tmp)
        tmp, tprev = as_np(linear_pointwise(grad_rows(t), pw_t, None, "none", [], "")), t
    step(-1, tprev, tmp)


class OneBlasThread:
    """Run the compiled loops' BLAS (scipy's OpenBLAS, where numba calls it) on one thread.

    Its per-step GEMMs are small, a thread barrier per step stalls whenever another process holds a
    core, and OpenBLAS's idle workers spin after each call, stealing a core from torch's threads. Set
    once, process-wide (toggling it per call would wake the workers each time); numpy's own BLAS is
    another library and is not affected."""

    done = False

    def __enter__(self):
        if not OneBlasThread.done:
            OneBlasThread.done = True
            if runtime.loops().BLAS != "openblas":
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
