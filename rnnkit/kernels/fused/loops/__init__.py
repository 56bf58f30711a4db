"""Compiled time loops of the fused CPU backend (numba): forward and backward of each cell over a
sequence, one module per cell family (``rnn``, ``lstm``, ``gru``, ``ln``, ``minimal``), with what
they share in ``common`` (activations, BLAS, row helpers), ``small`` and ``stream``; ``jit`` compiles
them (numba's options and threads, the on-disk cache, the parallel twins). The Python side reaches
them through ``rnnkit.kernels.fused.runtime.loops()``, which imports this package on first use.

Each cell has an elementwise step (``_fwd_ew`` / ``_bwd_ew``: one fused pass over the batch at step t)
and two drivers that share it:

- ``forward`` / ``backward`` run the whole time loop inside numba, with the recurrent mat-mul through
  BLAS (``common.dot``): no Python per step; best when the per-step work is small. Both run a rows
  function (``_forward_rows`` / ``_backward_rows``: chunk k of n of the batch) over the whole batch;
  ``forward_par`` / ``backward_par``, made by ``jit.parallel``, run the n chunks on n threads at once
  (sequences are independent: no synchronisation per step);
- ``forward_step`` / ``backward_step`` do one step's elementwise work, for a Python loop whose
  recurrent mat-mul is oneDNN with prepacked weights (``fused.gemm.step_forward``): best for large
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

The ``dot`` helper is BLAS gemm except at batch 1, where a plain vectorised loop avoids the call
overhead. float32 uses a vectorisable rational tanh (abs. error < 3e-7, well inside float32 training
noise); float64 uses libm, to match the reference to ~1e-12.
"""

from __future__ import annotations

from . import gru, ln, lstm, minimal, noise, rnn
from .common import BLAS
from .jit import MAX_THREADS, set_threads

__all__ = ["BLAS", "MAX_THREADS", "gru", "ln", "lstm", "minimal", "noise", "rnn", "set_threads"]
