"""What every sequence kernel receives: a cell spec, time-major input and one direction's weights."""

from __future__ import annotations

from typing import NamedTuple

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
