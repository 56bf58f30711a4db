"""The table of cells: for each, the compiled loops that run it and the Python drivers that call them
for one direction of a layer (``layer.py`` runs the directions).

Adding a cell: its loops (a module of ``loops``), its forward and backward drivers below, and one entry in
``_build``. A driver's arguments: ``Forward`` / ``Backward`` (one direction's arrays, the plan), the
direction's weights and states; it runs the plan's loop (``compiled_loop``: serial or split by rows;
``step_loop``: a Python loop on oneDNN's GEMM, ``gemm.step_forward``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ...cells import CellSpec, Noise
from ..buffers import pool
from . import runtime
from .gemm import as_np, contiguous, dummy, grad_recurrent, step_backward, step_forward
from .plan import Plan


@dataclass(frozen=True)
class Split:
    """A compiled loop and its twin that splits the batch (or the units) into n chunks, one per thread."""

    serial: Callable
    parallel: Callable | None = None

    def __call__(self, n: int, *args) -> None:
        if n > 1:
            runtime.loops().set_threads(n)
            self.parallel(n, *args)
        else:
            self.serial(*args)


@dataclass
class Forward:
    """One direction's forward: gates <f>[T, B, G·H] (the input projection, becoming the activated
    gates), the layer output's numpy view and this direction's columns (off), what to keep for
    backward (keep), the mask (mask_np, has_mask), the state sequence buffer (hs_np, with lengths in
    training)."""

    spec: CellSpec
    plan: Plan
    reverse: bool
    off: int
    train: bool
    gates: Tensor
    out_np: object
    mask_np: object
    has_mask: bool
    hs_np: object
    keep: dict
    noise: Noise | None = None

    @property
    def transposed(self) -> bool:
        return self.plan.transposed

    def w(self, w: Tensor):
        """A recurrent weight as the compiled loop takes it: as stored, or transposed (batch 1)."""
        return as_np(contiguous(w.t())) if self.plan.transposed else as_np(w)


@dataclass
class Backward:
    """One direction's backward: dout (numpy), the state sequence (hseq_np, its columns from hoff;
    hprev the tensor view), the carried gradient dh, what forward kept, which gradients are needed, and
    dg <f>[T, B, G·H], the buffer the driver fills with the gradient of the input pre-activations."""

    spec: CellSpec
    plan: Plan
    reverse: bool
    off: int
    dout_np: object
    mask_np: object
    has_mask: bool
    keep: dict
    h0: Tensor
    hseq_np: object
    hoff: int
    hprev: Tensor
    dh: Tensor
    need: tuple
    dg: Tensor
    noise: Noise | None = None

    def buffer(self, width: int) -> Tensor:
        """A pooled <f>[T, B, width] buffer of this direction's dtype (a gradient over the sequence)."""
        return pool.empty((*self.hprev.shape[:2], width), self.dh.dtype)


@dataclass(frozen=True)
class Small:
    """A cell's drivers for one direction of the ``small_train`` path (``small.SmallLayer``), each one
    compiled call. forward(spec, x, head, initial, reverse, out_np, off) → (the final states after h,
    what backward needs); head = (x, w_ih, b_ih, b_hh, w_hh, h) as numpy, h updated in place; initial the
    initial states. backward(spec, x_np, saved, out_np, off, state, initial, dstates, tail) adds the
    direction's gradients: state = (h0, w_ih, w_hh, dh), tail = (reverse, dout, dx, *weight gradients),
    dstates the final states' gradients, which become the initial states'."""

    forward: Callable
    backward: Callable


@dataclass(frozen=True)
class Cell:
    """One cell's entry: its drivers (forward(f, w_hh, w_hr, b_hh, h, c0) → finals; backward(b, w_hh,
    w_hr, dc0) → (g_w_hh, g_b_hh or "same", g_w_hr, dc), b.dg filled), its small-training drivers (or None),
    its streaming kernels and the flag they take."""

    forward: Callable
    backward: Callable
    small: Small | None
    stream: Split
    stream_units: Callable | None
    flag: Callable[[CellSpec], bool]


def noise_arrays(noise: Noise | None, T: int, B: int, P: int, H: int, dtype: torch.dtype) -> tuple:
    """The regularisers' masks as the loops take them (``loops.noise``): rd <f>[B, P], zh <f>[T, B, P],
    zc <f>[T, B, H] (an evaluation's zoneout rate broadcast to every row and unit), or placeholders of
    size 0 where one is off."""
    parts = noise if noise is not None else (None, None, None)
    shapes = ((B, P), (T, B, P), (T, B, H))
    return tuple(as_np(torch.empty((0,) * len(shape), dtype=dtype)) if t is None
                 else as_np(t.detach().to(dtype).expand(shape).contiguous()) for t, shape in zip(parts, shapes))


def dropped_states(b: Backward) -> tuple[Tensor, Tensor]:
    """The state sequence and initial state as they entered W_hh (times recurrent dropout's mask),
    for W_hh's gradient."""
    rd = b.noise.recurrent if b.noise is not None else None
    if rd is None:
        return b.hprev, b.h0
    return b.hprev * rd, b.h0 * rd


def _rnn_forward(f: Forward, w_hh, w_hr, b_hh, h, c0):
    K = runtime.loops()
    T, B = f.gates.shape[:2]
    relu, keep_h, gates_np, h_np = f.spec.mode == "RNN_RELU", f.train and f.has_mask, as_np(f.gates), as_np(h)
    rd, zh, _ = noise_arrays(f.noise, T, B, f.spec.output_size, f.spec.hidden_size, f.gates.dtype)
    if f.plan.stepwise:
        step_forward(T, f.reverse, h, w_hh, lambda t, gh: K.rnn.forward_step(
            t, gates_np, gh, h_np, relu, f.mask_np, f.has_mask, keep_h, f.out_np, f.off, f.hs_np))
    else:
        Split(K.rnn.forward, K.rnn.forward_par)(f.plan.chunks, gates_np, f.w(w_hh), f.transposed, h_np, relu,
                                                f.mask_np, f.has_mask, f.reverse, keep_h, f.out_np, f.off, f.hs_np,
                                                rd, zh)
    if zh.shape[0] == 0:
        f.keep.pop("gates", None)  # the RNN backward needs only the states (with zoneout, gates hold h̃_t)
    return [h]


def _rnn_backward(b: Backward, w_hh, w_hr, dc0):
    K = runtime.loops()
    T, B = b.hprev.shape[:2]
    relu, dg = b.spec.mode == "RNN_RELU", b.dg
    dg_np, dh_np = as_np(dg), as_np(b.dh)
    rd, zh, _ = noise_arrays(b.noise, T, B, b.spec.output_size, b.spec.hidden_size, dg.dtype)
    ht = as_np(b.keep["gates"]) if zh.shape[0] else dg_np
    if b.plan.stepwise:
        step_backward(T, b.reverse, dh_np, w_hh, B, lambda t: dg[t], lambda t, tprev, tmp: K.rnn.backward_step(
            t, tprev, tmp, b.hseq_np, b.hoff, dh_np, relu, b.mask_np, b.has_mask, b.dout_np, b.off, dg_np))
    else:
        Split(K.rnn.backward, K.rnn.backward_par)(b.plan.chunks, b.hseq_np, b.hoff, as_np(w_hh), dh_np, relu,
                                                  b.mask_np, b.has_mask, b.reverse, b.dout_np, b.off, dg_np, ht, rd,
                                                  zh)
    g_w_hh = grad_recurrent(dg, *dropped_states(b), b.reverse) if b.need[1] else None
    return g_w_hh, "same", None, None


def _lstm_forward(f: Forward, w_hh, w_hr, b_hh, h, c0):
    K = runtime.loops()
    T, B = f.gates.shape[:2]
    c0 = contiguous(c0)
    c = c0.clone()
    cs = pool.empty((T, B, f.spec.hidden_size), f.gates.dtype) if f.train else None
    cs_np = as_np(cs) if f.train else dummy(f.gates.dtype, 3)
    gates_np, h_np, c_np = as_np(f.gates), as_np(h), as_np(c)
    rd, zh, zc = noise_arrays(f.noise, T, B, f.spec.output_size, f.spec.hidden_size, f.gates.dtype)
    cz = pool.empty((T, B, f.spec.hidden_size), f.gates.dtype) if (f.train and zc.shape[0]) else None
    if f.plan.stepwise:
        step_forward(T, f.reverse, h, w_hh, lambda t, gh: K.lstm.forward_step(
            t, gates_np, gh, h_np, c_np, f.mask_np, f.has_mask, f.train, f.out_np, f.off, f.hs_np, cs_np))
    else:
        w_hr_np = as_np(contiguous(w_hr)) if w_hr is not None else dummy(f.gates.dtype, 2)
        Split(K.lstm.forward, K.lstm.forward_par)(f.plan.chunks, gates_np, f.w(w_hh), f.transposed, w_hr_np, h_np,
                                                  c_np, f.mask_np, f.has_mask, f.reverse, f.train, f.out_np, f.off,
                                                  f.hs_np, cs_np, rd, zh, zc,
                                                  as_np(cz) if cz is not None else zc)
    if f.train:
        f.keep.update(cs=cs, c0=c0, cz=cz)
    return [h, c]


def _lstm_backward(b: Backward, w_hh, w_hr, dc0):
    K = runtime.loops()
    T, B = b.hprev.shape[:2]
    H, P, dg = b.spec.hidden_size, b.spec.output_size, b.dg
    dtype = b.dh.dtype
    keep = b.keep
    gates_np, cs_np, c0_np, dc_np, dg_np, dh_np = (as_np(keep["gates"]), as_np(keep["cs"]), as_np(keep["c0"]),
                                                   as_np(dc0), as_np(dg), as_np(b.dh))
    g_w_hr = None
    if b.plan.stepwise:
        step_backward(T, b.reverse, dh_np, w_hh, B, lambda t: dg[t], lambda t, tprev, tmp: K.lstm.backward_step(
            t, tprev, tmp, b.reverse, gates_np, cs_np, c0_np, dh_np, dc_np, b.mask_np, b.has_mask, b.dout_np, b.off,
            dg_np))
    else:
        proj = w_hr is not None
        dhs = pool.empty((T, B, P), dtype) if proj else None
        hcs = pool.empty((T, B, H), dtype) if proj else None
        none3 = dummy(dtype, 3)
        rd, zh, zc = noise_arrays(b.noise, T, B, P, H, dtype)
        cz = as_np(keep["cz"]) if keep.get("cz") is not None else zc
        Split(K.lstm.backward, K.lstm.backward_par)(
            b.plan.chunks, gates_np, cs_np, c0_np, as_np(w_hh), as_np(contiguous(w_hr)) if proj else dummy(dtype, 2),
            dh_np, dc_np, b.mask_np, b.has_mask, b.reverse, b.dout_np, b.off, dg_np,
            as_np(dhs) if proj else none3, as_np(hcs) if proj else none3, rd, zh, zc, cz)
        if proj and b.need[4]:
            g_w_hr = dhs.view(T * B, P).t().mm(hcs.view(T * B, H))
    g_w_hh = grad_recurrent(dg, *dropped_states(b), b.reverse) if b.need[1] else None
    return g_w_hh, "same", g_w_hr, dc0


def _gru_forward(f: Forward, w_hh, w_hr, b_hh, h, c0):
    K = runtime.loops()
    T, B = f.gates.shape[:2]
    H = f.spec.hidden_size
    b_hn = contiguous(b_hh[2 * H:]) if b_hh is not None else f.gates.new_zeros(H)
    ghn = pool.empty((T, B, H), f.gates.dtype) if f.train else None
    ghn_np = as_np(ghn) if f.train else dummy(f.gates.dtype, 3)
    gates_np, h_np, b_hn_np = as_np(f.gates), as_np(h), as_np(b_hn)
    rd, zh, _ = noise_arrays(f.noise, T, B, H, H, f.gates.dtype)
    if f.plan.stepwise:
        step_forward(T, f.reverse, h, w_hh, lambda t, gh: K.gru.forward_step(
            t, gates_np, gh, b_hn_np, h_np, f.mask_np, f.has_mask, f.train, f.out_np, f.off, f.hs_np, ghn_np))
    else:
        Split(K.gru.forward, K.gru.forward_par)(f.plan.chunks, gates_np, f.w(w_hh), f.transposed, b_hn_np, h_np,
                                                f.mask_np, f.has_mask, f.reverse, f.train, f.out_np, f.off, f.hs_np,
                                                ghn_np, rd, zh)
    if f.train:
        f.keep["ghn"] = ghn
    return [h]


def _gru_backward(b: Backward, w_hh, w_hr, dc0):
    K = runtime.loops()
    T, B = b.hprev.shape[:2]
    H, dg_in, dghn = b.spec.hidden_size, b.dg, b.buffer(b.spec.hidden_size)
    saved = (as_np(b.keep["gates"]), as_np(b.keep["ghn"]), as_np(b.h0), b.hseq_np, b.hoff)
    dh_np, dg_np, dghn_np = as_np(b.dh), as_np(dg_in), as_np(dghn)
    if b.plan.stepwise:
        dgh = torch.empty(B, 3 * H, dtype=b.dh.dtype)
        dgh_np = as_np(dgh)
        step_backward(T, b.reverse, dh_np, w_hh, B, lambda t: dgh, lambda t, tprev, tmp: K.gru.backward_step(
            t, tprev, tmp, b.reverse, *saved, dh_np, b.mask_np, b.has_mask, b.dout_np, b.off, dg_np, dghn_np,
            dgh_np))
    else:
        rd, zh, _ = noise_arrays(b.noise, T, B, H, H, b.dh.dtype)
        Split(K.gru.backward, K.gru.backward_par)(b.plan.chunks, *saved, as_np(w_hh), dh_np, b.mask_np, b.has_mask,
                                                  b.reverse, b.dout_np, b.off, dg_np, dghn_np, rd, zh)
    g_w_hh = g_b_hh = None
    if b.need[1]:
        hprev, h0 = dropped_states(b)
        g_w_hh = torch.cat([grad_recurrent(dg_in[:, :, : 2 * H], hprev, h0, b.reverse),
                            grad_recurrent(dghn, hprev, h0, b.reverse)])
    if b.need[3]:
        g_b_hh = torch.cat([dg_in[:, :, : 2 * H].sum((0, 1)), dghn.sum((0, 1))])
    return g_w_hh, g_b_hh, None, None


def _grux_forward(f: Forward, w_hh, w_hr, b_hh, h, c0):
    K = runtime.loops()
    T, B = f.gates.shape[:2]
    H = f.spec.hidden_size
    rd, zh, _ = noise_arrays(f.noise, T, B, H, H, f.gates.dtype)
    Split(K.gru.grux_forward, K.gru.grux_forward_par)(
        f.plan.chunks, as_np(f.gates), f.w(w_hh[: 2 * H]), f.w(w_hh[2 * H:]), f.transposed, as_np(h), f.mask_np,
        f.has_mask, f.reverse, f.train, f.out_np, f.off, f.hs_np, rd, zh)
    return [h]


def _grux_backward(b: Backward, w_hh, w_hr, dc0):
    K = runtime.loops()
    T, B = b.hprev.shape[:2]
    H, dg_in, rhs = b.spec.hidden_size, b.dg, b.buffer(b.spec.hidden_size)
    rd, zh, _ = noise_arrays(b.noise, T, B, H, H, dg_in.dtype)
    Split(K.gru.grux_backward, K.gru.grux_backward_par)(
        b.plan.chunks, as_np(b.keep["gates"]), as_np(b.h0), b.hseq_np, b.hoff, as_np(contiguous(w_hh[: 2 * H])),
        as_np(contiguous(w_hh[2 * H:])), as_np(b.dh), b.mask_np, b.has_mask, b.reverse, b.dout_np, b.off,
        as_np(dg_in), as_np(rhs), rd, zh)
    g_w_hh = None
    if b.need[1]:
        g_w_hh = torch.cat([grad_recurrent(dg_in[:, :, : 2 * H], *dropped_states(b), b.reverse),
                            dg_in[:, :, 2 * H:].reshape(T * B, H).t().mm(rhs.view(T * B, H))])
    return g_w_hh, "same", None, None


def _rnn_small_forward(spec, x, head, initial, reverse, out_np, off):
    runtime.loops().rnn.small_forward(*head, spec.mode == "RNN_RELU", reverse, out_np, off)
    return [], []


def _rnn_small_backward(spec, x_np, saved, out_np, off, state, initial, dstates, tail):
    runtime.loops().rnn.small_backward(x_np, out_np, off, *state, spec.mode == "RNN_RELU", *tail)


def _lstm_small_forward(spec, x, head, initial, reverse, out_np, off):
    T, B, _ = x.shape
    c = initial[1].clone()
    gates, cs = x.new_empty(T, B, 4 * spec.hidden_size), x.new_empty(T, B, spec.hidden_size)
    runtime.loops().lstm.small_forward(*head, c.numpy(), reverse, out_np, off, gates.numpy(), cs.numpy())
    return [c], [gates, cs]


def _lstm_small_backward(spec, x_np, saved, out_np, off, state, initial, dstates, tail):
    gates, cs = saved
    runtime.loops().lstm.small_backward(x_np, gates.numpy(), cs.numpy(), initial[1].numpy(), out_np, off, *state,
                                        dstates[1].numpy(), *tail)


def _gru_small_forward(spec, x, head, initial, reverse, out_np, off):
    T, B, _ = x.shape
    gates, ghn = x.new_empty(T, B, 3 * spec.hidden_size), x.new_empty(T, B, spec.hidden_size)
    runtime.loops().gru.small_forward(*head, reverse, out_np, off, gates.numpy(), ghn.numpy())
    return [], [gates, ghn]


def _gru_small_backward(spec, x_np, saved, out_np, off, state, initial, dstates, tail):
    gates, ghn = saved
    runtime.loops().gru.small_backward(x_np, gates.numpy(), ghn.numpy(), out_np, off, *state, *tail)


def takes_noise(spec: CellSpec) -> bool:
    """Whether the cell's loops take recurrent dropout and zoneout (``Noise``): every cell with a
    recurrent product (RNN, LSTM with or without projection or layer norm, both GRUs); the minimal
    cells have none."""
    return spec.mode in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")


@dataclass(frozen=True)
class Scan:
    """A minimal cell's entry (h_t = a_t ⊙ h_{t-1} + b_t, a_t and b_t from the input projection alone;
    ``fused.minimal`` runs it): its code in ``loops.minimal``, whose coefficient functions branch on it."""

    code: int


_MINIMAL = {"MINGRU": "mingru", "MINLSTM": "minlstm"}


def key(spec: CellSpec) -> str:
    """The table's key for a cell: "rnn", "lstm", "ln_lstm", "gru" (reset_after), "grux", "mingru" or
    "minlstm"."""
    if spec.mode in _MINIMAL:
        return _MINIMAL[spec.mode]
    if spec.mode == "LSTM":
        return "ln_lstm" if spec.layer_norm else "lstm"
    if spec.mode == "GRU":
        return "gru" if spec.reset_after else "grux"
    return "rnn"


@functools.cache
def _build() -> dict[str, Cell | Scan]:
    K = runtime.loops()
    never = None
    return {
        "rnn": Cell(_rnn_forward, _rnn_backward, Small(_rnn_small_forward, _rnn_small_backward),
                    Split(K.rnn.stream, K.rnn.stream_par), K.rnn.stream_units, lambda s: s.mode == "RNN_RELU"),
        "lstm": Cell(_lstm_forward, _lstm_backward, Small(_lstm_small_forward, _lstm_small_backward),
                     Split(K.lstm.stream, K.lstm.stream_par), K.lstm.stream_units, lambda s: False),
        "gru": Cell(_gru_forward, _gru_backward, Small(_gru_small_forward, _gru_small_backward),
                    Split(K.gru.stream, K.gru.stream_par), K.gru.stream_units, lambda s: True),
        "grux": Cell(_grux_forward, _grux_backward, never, Split(K.gru.stream, K.gru.stream_par), never,
                     lambda s: False),
        # the layer-normalised LSTM's layer drivers are ln.py's (an autograd Function per direction)
        "ln_lstm": Cell(never, never, never, Split(K.ln.stream, K.ln.stream_par), never, lambda s: False),
        "mingru": Scan(0),
        "minlstm": Scan(1),
    }


def cell(spec: CellSpec) -> Cell | Scan:
    """The table's entry for this cell."""
    return _build()[key(spec)]
