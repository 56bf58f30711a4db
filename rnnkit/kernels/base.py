"""What every sequence kernel receives: a cell spec, time-major input and one direction's weights."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class DirectionWeights(NamedTuple):
    """The parameters of one direction of one layer, named as in torch.nn.

    w_ih <float>[G*H, I];  w_hh <float>[G*H, P];  b_ih, b_hh <float>[G*H] or None;
    w_hr <float>[P, H] (LSTM projection) or None.  G gates, H hidden, P output size.
    ln <float>[10H]: a layer-normalised LSTM's gains and shift (``rnnkit.cells.ln_lstm_step``), or None.
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None
    ln: Tensor | None = None


def whole_sequence_input(x: Tensor) -> bool:
    """What every fast backend asks of an input besides device and dtype: non-empty <float>[T, B, I],
    in plain eager mode (see ``eager``)."""
    if x.dim() != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        return False
    return eager()


def eager() -> bool:
    """False while torch records the model rather than runs it: ``torch.jit.trace`` / ``script``
    (and the TorchScript ONNX exporter, which traces), ``torch.compile``, ``torch.export`` (and the
    ONNX exporter built on it, whose inputs are fake tensors without data). Those take the
    reference's plain torch ops."""
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


def check_out(out, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """A streamer's ``out=`` (the tensor to write y_t into): a contiguous tensor of that shape, dtype
    and device that does not require grad (the kernels write it behind autograd's back); otherwise
    a ValueError (TypeError for a non-tensor) naming ``out``, what was expected and what came."""
    if not isinstance(out, Tensor):
        raise TypeError(f"out: expected a torch.Tensor, got {type(out).__name__}")
    if not (out.shape == shape and out.dtype == dtype and out.device == device and out.is_contiguous()
            and not out.requires_grad):
        raise ValueError(f"out: expected a contiguous tensor of shape {tuple(shape)}, dtype {dtype} on {device} "
                         f"that does not require grad, got shape {tuple(out.shape)}, dtype {out.dtype} on "
                         f"{out.device}{', not contiguous' if not out.is_contiguous() else ''}"
                         f"{', requiring grad' if out.requires_grad else ''}")
