"""The ``torch`` backend: torch's own whole-sequence RNN kernels, which are cuDNN's on CUDA.

For the standard cells (simple RNN, LSTM with or without projection, GRU with ``reset_after=True``)
on a CUDA device, ``backend="auto"`` runs a layer on the kernels torch.nn runs on: cuDNN's fused
RNN, forward and backward. Our own equations (``rnnkit.cells``) stay the definition; the parity
tests hold this backend to them. It also runs on the CPU when named (``backend="torch"``), which is
how the tests check it on a machine without a GPU; ``auto`` prefers the fused backend there.

Layers call it one layer at a time (both directions), as every backend: dropout between layers is
the layer's business. ``mask`` becomes a packed sequence, whose semantics are ours: no step past a
sequence's end, zeros in the output there, the reverse direction starting at each sequence's own
last valid step.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor, _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..cells import CellSpec, State
from .base import DirectionWeights, whole_sequence_input

_FUNCTIONS = {"RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu, "LSTM": _VF.lstm, "GRU": _VF.gru}
_DTYPES = {"cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
           "cpu": (torch.float32, torch.float64)}


def supports(spec: CellSpec, x: Tensor, training: bool) -> bool:
    """A cell torch.nn has (not the layer-normalised LSTM, not GRU ``reset_after=False``), on CUDA
    (or CPU) in a floating dtype torch's kernels take, a non-empty 3-D input, not being traced."""
    if spec.layer_norm or (spec.mode == "GRU" and not spec.reset_after):
        return False
    return x.dtype in _DTYPES.get(x.device.type, ()) and whole_sequence_input(x)


def run_layer(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None) -> tuple[Tensor, list[State]]:
    """Both directions of one layer through ``torch._VF``: x <float>[T, B, I] → output
    <float>[T, B, D*P] and one final state per direction (shapes as ``rnnkit.kernels``)."""
    directions = len(weights)
    flat = [t for w in weights for t in (w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr) if t is not None]
    has_bias = weights[0].b_ih is not None
    hx = [torch.stack([s[i] for s in states]) for i in range(len(states[0]))]  # each <float>[D, B, *]
    run = _FUNCTIONS[spec.mode]
    # cuDNN saves what its backward needs only in training mode: it is "training" whenever autograd records
    options = (has_bias, 1, 0.0, torch.is_grad_enabled(), directions == 2)
    with _quiet_about_weight_layout():
        if mask is None:
            out, *final = run(x, _hx(spec, hx), flat, *options, False)
        else:
            packed = pack_padded_sequence(x, mask[:, :, 0].sum(0).cpu(), enforce_sorted=False)
            order = packed.sorted_indices
            data, *final = run(packed.data, packed.batch_sizes, _hx(spec, [h.index_select(1, order) for h in hx]),
                               flat, *options)
            out = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, packed.unsorted_indices),
                                      total_length=x.shape[0])[0]
            final = [f.index_select(1, packed.unsorted_indices) for f in final]
    return out, [tuple(f[d] for f in final) for d in range(directions)]


@contextlib.contextmanager
def _quiet_about_weight_layout():
    """cuDNN warns that weights not in one flat buffer are copied into one at every call, and to call
    ``flatten_parameters()``. Our layers keep one tensor per weight (a no-op ``flatten_parameters``);
    the copy is small beside the recurrence, so the advice would only mislead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        yield


def _hx(spec: CellSpec, hx: list[Tensor]):
    """The initial state as torch._VF takes it: (h, c) for LSTM, h otherwise."""
    return tuple(hx) if spec.mode == "LSTM" else hx[0]
