"""The recurrent equations, one readable function per cell.

Every cell is split in two so that a whole sequence can project its inputs at once:

    gi  = x_t W_ih^T + b_ih              # input projection, <float>[batch, gates*hidden]
    new = step(gi, state, W_hh, b_hh)    # the recurrence proper

``cell(x_t, state, ...)`` is ``step(linear(x_t), state, ...)``. Gate order in every weight matrix
is torch.nn's: RNN ``[h]``, LSTM ``[i, f, g, o]``, GRU ``[r, z, n]``; the minimal cells of Feng et
al. 2024 have no W_hh and stack minGRU ``[z, h̃]``, minLSTM ``[f, i, h̃]``. These functions are the
reference the fast kernels are tested against; they use only differentiable torch ops.

Shapes: ``B`` batch, ``I`` input features, ``H`` hidden size, ``P`` LSTM projection size
(``P = H`` without projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

State = tuple[Tensor, ...]
"""A cell's state: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM."""


class Noise(NamedTuple):
    """The recurrent regularisers' masks of one direction of one layer (None where one is off).

    recurrent: <float>[B, P], variational recurrent dropout (Gal & Ghahramani 2016): a multiplier
        (0 or 1/(1-p)) on h_{t-1} where it enters the recurrent product, ``(m ⊙ h_{t-1}) W_hh^T``,
        the same at every step of the sequence.
    zone_h: <float>[T, B, P], zoneout (Krueger et al. 2017) of h: the weight z of the old state,
        ``h_t = z ⊙ h_{t-1} + (1 - z) ⊙ h̃_t`` (0 or 1 in training, the rate p at evaluation).
    zone_c: <float>[T, B, H], the same for an LSTM's cell state c.
    """

    recurrent: Tensor | None = None
    zone_h: Tensor | None = None
    zone_c: Tensor | None = None


def zoneout(z: Tensor, old: Tensor, new: Tensor) -> Tensor:
    """``z ⊙ old + (1 - z) ⊙ new``: zoneout's update of one state, z the old state's weight."""
    return torch.lerp(new, old, z)


def rnn_step(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, nonlinearity: str = "tanh",
             drop: Tensor | None = None) -> State:
    """Simple (Elman) RNN: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, act ∈ {tanh, relu}.

    gi: <float>[B, H]   input projection ``W_ih x_t + b_ih``
    state: (h,) with h <float>[B, H]
    w_hh: <float>[H, H];  b_hh: <float>[H] or None
    drop: <float>[B, H] or None, recurrent dropout's multiplier on h where it enters W_hh (``Noise``)
    returns (h_t,)
    """
    pre = gi + F.linear(_dropped(state[0], drop), w_hh, b_hh)
    return (torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre),)


def lstm_step(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None = None,
              drop: Tensor | None = None) -> State:
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate), optional projection (Sak et al. 2014)::

        i = σ(gi_i + W_hi h + b_hi)     input gate
        f = σ(gi_f + W_hf h + b_hf)     forget gate
        g = tanh(gi_g + W_hg h + b_hg)  candidate cell
        o = σ(gi_o + W_ho h + b_ho)     output gate
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)             (then h_t = W_hr h_t with proj_size)

    gi: <float>[B, 4H];  state: (h <float>[B, P], c <float>[B, H])
    w_hh: <float>[4H, P];  b_hh: <float>[4H] or None;  w_hr: <float>[P, H] or None
    drop: <float>[B, P] or None, recurrent dropout's multiplier on h where it enters W_hh (``Noise``)
    returns (h_t, c_t)
    """
    h, c = state
    i, f, g, o = (gi + F.linear(_dropped(h, drop), w_hh, b_hh)).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if w_hr is not None:
        h = F.linear(h, w_hr)
    return (h, c)


def gru_step(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, reset_after: bool = True,
             drop: Tensor | None = None) -> State:
    """GRU (Cho et al. 2014) in both of its variants::

        r = σ(gi_r + W_hr h + b_hr)                      reset gate
        z = σ(gi_z + W_hz h + b_hz)                      update gate
        n = tanh(gi_n + r * (W_hn h + b_hn))             reset_after=True  (torch, cuDNN, Keras default)
        n = tanh(gi_n + W_hn (r * h) + b_hn)             reset_after=False (Cho et al.; Keras reset_after=False)
        h_t = (1 - z) * n + z * h

    gi: <float>[B, 3H];  state: (h <float>[B, H],)
    w_hh: <float>[3H, H];  b_hh: <float>[3H] or None
    drop: <float>[B, H] or None, recurrent dropout's multiplier on h where it enters W_hh (``Noise``);
        the old state in ``z * h`` is not dropped
    returns (h_t,)
    """
    (h,) = state
    gi_r, gi_z, gi_n = gi.chunk(3, dim=1)
    hidden = h.shape[1]
    hd = _dropped(h, drop)
    if reset_after:
        gh_r, gh_z, gh_n = F.linear(hd, w_hh, b_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
    else:
        b_rz, b_n = (None, None) if b_hh is None else (b_hh[: 2 * hidden], b_hh[2 * hidden :])
        gh_r, gh_z = F.linear(hd, w_hh[: 2 * hidden], b_rz).chunk(2, dim=1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + F.linear(r * hd, w_hh[2 * hidden :], b_n))
    return ((1 - z) * n + z * h,)


def _dropped(h: Tensor, drop: Tensor | None) -> Tensor:
    """h as it enters the recurrent product: times recurrent dropout's multiplier, if any."""
    return h if drop is None else h * drop


LN_EPS = 1e-5
"""The variance epsilon of every layer normalisation in ``ln_lstm_step`` (torch's default)."""


def ln_lstm_project(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, ln: Tensor) -> Tensor:
    """The input term of a layer-normalised LSTM: ``LN(x W_ih^T)·γ_ih + b_ih``, x <float>[..., I]."""
    g = w_ih.shape[0]
    return F.layer_norm(F.linear(x, w_ih), (g,), ln[:g], b_ih, LN_EPS)  # b_ih as the norm's shift: one pass


def ln_lstm_step(gi: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, ln: Tensor,
                 drop: Tensor | None = None) -> State:
    """LSTM with layer normalisation (Ba et al. 2016, eqs. 20-22), each term normalised over its
    whole vector, with learned gains γ and the LSTM biases in the place of the LN shifts::

        i, f, g, o = split(gi + LN(W_hh h)·γ_hh + b_hh)     gi = LN(W_ih x)·γ_ih + b_ih
        c_t = σ(f) * c_{t-1} + σ(i) * tanh(g)
        h_t = σ(o) * tanh(LN(c_t)·γ_c + β_c)

    gi: <float>[B, 4H] (``ln_lstm_project``);  state: (h <float>[B, H], c <float>[B, H])
    w_hh: <float>[4H, H];  b_hh: <float>[4H] or None
    ln: <float>[10H], the packed normalisation parameters [γ_ih (4H) | γ_hh (4H) | γ_c (H) | β_c (H)]
    drop: <float>[B, H] or None, recurrent dropout's multiplier on h where it enters W_hh (``Noise``)
    returns (h_t, c_t)
    """
    h, c = state
    g4, hidden = w_hh.shape[0], h.shape[1]
    pre = gi + F.layer_norm(F.linear(_dropped(h, drop), w_hh), (g4,), ln[g4:2 * g4], None, LN_EPS)
    if b_hh is not None:
        pre = pre + b_hh
    i, f, g, o = pre.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    cn = F.layer_norm(c, (hidden,), ln[2 * g4:2 * g4 + hidden], ln[2 * g4 + hidden:], LN_EPS)
    return (torch.sigmoid(o) * torch.tanh(cn), c)


def min_g(x: Tensor) -> Tensor:
    """The minimal cells' candidate activation (Feng et al. 2024, appendix B.3): ``x + 0.5`` for
    x >= 0, ``σ(x)`` below; continuous, increasing and always positive, so that the state of a
    sequence started from zero stays positive and the scan can run in log space."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def min_log_g(x: Tensor) -> Tensor:
    """``log(min_g(x))`` computed without forming min_g: ``log(x + 0.5)`` or ``-softplus(-x)``."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def mingru_coefficients(gi: Tensor) -> tuple[Tensor, Tensor]:
    """minGRU (Feng et al. 2024, "Were RNNs All We Needed?", log-space form) as the first-order
    linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t``; the gates see only the input::

        z_t = σ(W_iz x_t + b_iz)                 update gate
        h̃_t = g(W_ih̃ x_t + b_ih̃)                candidate (``min_g``: positive)
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t     so a_t = 1 - z_t = σ(-k),  b_t = z_t ⊙ h̃_t

    gi: <float>[..., 2H], the input projection ``[k | u]`` (gate order ``[z, h̃]``)
    returns (a, b), each <float>[..., H]
    """
    k, u = gi.chunk(2, dim=-1)
    return torch.sigmoid(-k), torch.sigmoid(k) * min_g(u)


def minlstm_coefficients(gi: Tensor) -> tuple[Tensor, Tensor]:
    """minLSTM (Feng et al. 2024) as ``h_t = a_t ⊙ h_{t-1} + b_t``, with its forget and input gates
    normalised to sum to 1 (no cell state, no output gate)::

        f_t = σ(W_if x_t + b_if),  i_t = σ(W_ii x_t + b_ii),  h̃_t = g(W_ih̃ x_t + b_ih̃)
        f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)     (= σ(log f - log i), σ(log i - log f))
        h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t                        so a_t = f'_t,  b_t = i'_t ⊙ h̃_t

    gi: <float>[..., 3H], the input projection (gate order ``[f, i, h̃]``)
    returns (a, b), each <float>[..., H]
    """
    kf, ki, u = gi.chunk(3, dim=-1)
    d = F.softplus(-kf) - F.softplus(-ki)  # log i - log f
    return torch.sigmoid(-d), torch.sigmoid(d) * min_g(u)


def mingru_log_coefficients(gi: Tensor) -> tuple[Tensor, Tensor]:
    """``(log a, log b)`` of ``mingru_coefficients``, from log-sigmoids (no log of a rounded 0)."""
    k, u = gi.chunk(2, dim=-1)
    return -F.softplus(k), -F.softplus(-k) + min_log_g(u)


def minlstm_log_coefficients(gi: Tensor) -> tuple[Tensor, Tensor]:
    """``(log a, log b)`` of ``minlstm_coefficients``."""
    kf, ki, u = gi.chunk(3, dim=-1)
    d = F.softplus(-kf) - F.softplus(-ki)
    return -F.softplus(d), -F.softplus(-d) + min_log_g(u)


MIN_COEFFICIENTS = {"MINGRU": (mingru_coefficients, mingru_log_coefficients),
                    "MINLSTM": (minlstm_coefficients, minlstm_log_coefficients)}
"""Minimal cell mode → (coefficients, log coefficients) functions of ``gi``."""


def min_step(gi: Tensor, state: State, mode: str = "MINGRU") -> State:
    """One step of a minimal cell (``"MINGRU"`` or ``"MINLSTM"``): ``h_t = a_t ⊙ h_{t-1} + b_t``.

    gi: <float>[B, G*H] (G = 2 or 3);  state: (h <float>[B, H],);  returns (h_t,)
    """
    a, b = MIN_COEFFICIENTS[mode][0](gi)
    return (torch.addcmul(b, a, state[0]),)


@dataclass(frozen=True)
class CellSpec:
    """What a recurrent layer computes per step; everything a kernel needs besides the weights.

    mode: "RNN_TANH" | "RNN_RELU" | "LSTM" | "GRU" | "MINGRU" | "MINLSTM" (the minimal cells have
        no recurrent weights: ``w_hh`` is None)
    hidden_size: H;  proj_size: P for LSTM (0: none);  reset_after: the GRU variant
    layer_norm: LSTM only, the layer-normalised cell of ``ln_lstm_step`` (weights carry ``ln``)
    """

    mode: str
    hidden_size: int
    proj_size: int = 0
    reset_after: bool = True
    layer_norm: bool = False

    @property
    def gates(self) -> int:
        """Number of gate blocks stacked in W_ih / W_hh."""
        return {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3, "MINGRU": 2, "MINLSTM": 3}[self.mode]

    @property
    def output_size(self) -> int:
        """Size of h: P with an LSTM projection, else H."""
        return self.proj_size or self.hidden_size

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Feature size of each state tensor: (H,), or (P, H) for LSTM."""
        return (self.output_size, self.hidden_size) if self.mode == "LSTM" else (self.hidden_size,)

    def project(self, x: Tensor, w) -> Tensor:
        """The input term of every step at once: x <float>[..., I] → gi <float>[..., G*H].
        w: the direction's weights (``rnnkit.kernels.DirectionWeights``)."""
        if self.layer_norm:
            return ln_lstm_project(x, w.w_ih, w.b_ih, w.ln)
        return F.linear(x, w.w_ih, w.b_ih)

    def step_fn(self) -> Callable[..., State]:
        """``step(gi, state, w, drop=None)`` for this cell, gi from ``project``, w the direction's
        weights and drop recurrent dropout's multiplier on h (``Noise.recurrent``; not for the minimal
        cells, which have no recurrent product)."""
        if self.layer_norm:
            return lambda gi, s, w, drop=None: ln_lstm_step(gi, s, w.w_hh, w.b_hh, w.ln, drop)
        if self.mode == "LSTM":
            return lambda gi, s, w, drop=None: lstm_step(gi, s, w.w_hh, w.b_hh, w.w_hr, drop)
        if self.mode == "GRU":
            return lambda gi, s, w, drop=None: gru_step(gi, s, w.w_hh, w.b_hh, self.reset_after, drop)
        if self.mode in MIN_COEFFICIENTS:
            return lambda gi, s, w, drop=None: min_step(gi, s, self.mode)
        act = "tanh" if self.mode == "RNN_TANH" else "relu"
        return lambda gi, s, w, drop=None: rnn_step(gi, s, w.w_hh, w.b_hh, act, drop)

    def cell(self, x: Tensor, state: State, w) -> State:
        """One step from the raw input: x <float>[B, I] → new state; w the direction's weights."""
        return self.step_fn()(self.project(x, w), state, w)
