"""The recurrent equations, one readable function per cell.

Every cell is split in two so that a whole sequence can project its inputs at once:

    gi  = x_t W_ih^T + b_ih              # input projection, <float>[batch, gates*hidden]
    new = step(gi, state, W_hh, b_hh)    # the recurrence proper

``cell(x_t, state, ...)`` is ``step(linear(x_t), state, ...)``. Gate order in every weight matrix
is torch.nn's: RNN ``[h]``, LSTM ``[i, f, g, o]``, GRU ``[r, z, n]``. These functions are the
reference the fast kernels are tested against; they use only differentiable torch ops.

Shapes: ``B`` batch, ``I`` input features, ``H`` hidden size, ``P`` LSTM projection size
(``P = H`` without projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

State = tuple[Tensor, ...]
"""A cell's state: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM."""


def rnn_step(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, nonlinearity: str = "tanh") -> State:
    """Simple (Elman) RNN: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, act ∈ {tanh, relu}.

    gi: <float>[B, H]   input projection ``W_ih x_t + b_ih``
    state: (h,) with h <float>[B, H]
    w_hh: <float>[H, H];  b_hh: <float>[H] or None
    returns (h_t,)
    """
    pre = gi + F.linear(state[0], w_hh, b_hh)
    return (torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre),)


def lstm_step(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None = None) -> State:
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate), optional projection (Sak et al. 2014)::

        i = σ(gi_i + W_hi h + b_hi)     input gate
        f = σ(gi_f + W_hf h + b_hf)     forget gate
        g = tanh(gi_g + W_hg h + b_hg)  candidate cell
        o = σ(gi_o + W_ho h + b_ho)     output gate
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)             (then h_t = W_hr h_t with proj_size)

    gi: <float>[B, 4H];  state: (h <float>[B, P], c <float>[B, H])
    w_hh: <float>[4H, P];  b_hh: <float>[4H] or None;  w_hr: <float>[P, H] or None
    returns (h_t, c_t)
    """
    h, c = state
    i, f, g, o = (gi + F.linear(h, w_hh, b_hh)).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if w_hr is not None:
        h = F.linear(h, w_hr)
    return (h, c)


def gru_step(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, reset_after: bool = True) -> State:
    """GRU (Cho et al. 2014) in both of its variants::

        r = σ(gi_r + W_hr h + b_hr)                      reset gate
        z = σ(gi_z + W_hz h + b_hz)                      update gate
        n = tanh(gi_n + r * (W_hn h + b_hn))             reset_after=True  (torch, cuDNN, Keras default)
        n = tanh(gi_n + W_hn (r * h) + b_hn)             reset_after=False (Cho et al.; Keras reset_after=False)
        h_t = (1 - z) * n + z * h

    gi: <float>[B, 3H];  state: (h <float>[B, H],)
    w_hh: <float>[3H, H];  b_hh: <float>[3H] or None
    returns (h_t,)
    """
    (h,) = state
    gi_r, gi_z, gi_n = gi.chunk(3, dim=1)
    hidden = h.shape[1]
    if reset_after:
        gh_r, gh_z, gh_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
    else:
        b_rz, b_n = (None, None) if b_hh is None else (b_hh[: 2 * hidden], b_hh[2 * hidden :])
        gh_r, gh_z = F.linear(h, w_hh[: 2 * hidden], b_rz).chunk(2, dim=1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + F.linear(r * h, w_hh[2 * hidden :], b_n))
    return ((1 - z) * n + z * h,)


@dataclass(frozen=True)
class CellSpec:
    """What a recurrent layer computes per step; everything a kernel needs besides the weights.

    mode: "RNN_TANH" | "RNN_RELU" | "LSTM" | "GRU"
    hidden_size: H;  proj_size: P for LSTM (0: none);  reset_after: the GRU variant
    """

    mode: str
    hidden_size: int
    proj_size: int = 0
    reset_after: bool = True

    @property
    def gates(self) -> int:
        """Number of gate blocks stacked in W_ih / W_hh."""
        return {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}[self.mode]

    @property
    def output_size(self) -> int:
        """Size of h: P with an LSTM projection, else H."""
        return self.proj_size or self.hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Feature size of each state tensor: (H,), or (P, H) for LSTM."""
        return (self.output_size, self.hidden_size) if self.mode == "LSTM" else (self.hidden_size,)

    def step_fn(self) -> Callable[..., State]:
        """``step(gi, state, w_hh, b_hh, w_hr)`` for this cell."""
        if self.mode == "LSTM":
            return lstm_step
        if self.mode == "GRU":
            return lambda gi, s, w_hh, b_hh, w_hr=None: gru_step(gi, s, w_hh, b_hh, self.reset_after)
        act = "tanh" if self.mode == "RNN_TANH" else "relu"
        return lambda gi, s, w_hh, b_hh, w_hr=None: rnn_step(gi, s, w_hh, b_hh, act)

    def cell(self, x: Tensor, state: State, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, w_hr: Tensor | None = None) -> State:
        """One step from the raw input: x <float>[B, I] → new state."""
        return self.step_fn()(F.linear(x, w_ih, b_ih), state, w_hh, b_hh, w_hr)
