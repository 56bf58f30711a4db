"""Streaming: steps of a whole unidirectional stack, every layer in one compiled call, without autograd.

``stream_step`` runs one step (or every step of a small call) from a state given as tensors, for
``layer.step()`` and small ``forward()`` calls; ``Streamer`` keeps the state inside, for the lowest
overhead (``layer.streamer()``); ``cached_streamer`` keeps a layer's streamer for ``step()`` per
thread. The kernels take the weights as addresses into the parameters themselves (shapes checked
here), so in-place updates are always seen. Which kernel runs (one thread, the batch split across
threads, or at batch 1 the hidden units) is the plan's (``plan.py``), made once per call or streamer.
"""

from __future__ import annotations

import functools
import operator
import threading
import weakref
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ...cells import CellSpec
from ..base import DirectionWeights, check_out, eager
from . import drivers, runtime
from .gemm import NP_DTYPE, dummy
from .plan import Plan, planned, ran
from .policies import current

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
DTYPES = (torch.float32, torch.float64)
CPU = torch.device("cpu")
_zero_bias: dict = {}


def zeros(n: int, dtype: torch.dtype) -> Tensor:
    """A shared zero vector <dtype>[n] (the bias of a layer without one; never written)."""
    if (n, dtype) not in _zero_bias:
        _zero_bias[(n, dtype)] = torch.zeros(n, dtype=dtype)
    return _zero_bias[(n, dtype)]


def supports(spec: CellSpec, x_t: Tensor) -> bool:
    """Whether the streaming kernels can run: CPU float32/64, a known cell, one step <f>[B, I] or steps
    <f>[T, B, I], in plain eager mode (``base.eager``). The caller also checks that no gradient is
    needed (and that no inter-layer dropout applies)."""
    return x_t.is_cpu and x_t.dtype in DTYPES and spec.mode in MODES and x_t.dim() in (2, 3) and eager()


def all_contiguous(layers: list[DirectionWeights]) -> bool:
    return all(t.is_contiguous() for w in layers for t in w if t is not None)


_stacks: dict = {}


def stack_pointers(spec: CellSpec, layers: list[DirectionWeights]) -> tuple[np.ndarray, list[Tensor]]:
    """The weights of a stack for the streaming kernels: ptrs <int64>[L, 7] (per layer the addresses
    of w_ih, w_hh, b_ih, b_hh, w_hr or 0, ln or 0, and the layer's input size; see ``loops.stream``), and
    the tensors they point into: the parameters themselves where contiguous (so every in-place update
    is seen), else copies. The caller keeps those alive while it uses ptrs. Every shape and dtype is
    checked here (the compiled code does not). ptrs are cached per spec and parameters, while the
    same tensors (weak references: the cache keeps none alive) keep their addresses and sizes."""
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
        row = [w.w_ih, w.w_hh, w.b_ih if w.b_ih is not None else zeros(G, dtype),
               w.b_hh if w.b_hh is not None else zeros(G, dtype), w.w_hr, w.ln]
        row = [None if t is None else t.detach().contiguous() for t in row]  # the parameter itself when contiguous
        alive += [t for t in row if t is not None]
        rows.append([0 if t is None else t.data_ptr() for t in row] + [I])
    ptrs = np.array(rows, np.int64)
    if all_contiguous(layers):  # else the addresses are the copies': not cacheable
        if len(_stacks) > 256:
            _stacks.clear()
        _stacks[key] = ([weakref.ref(p) for p in params], [p.data_ptr() for p in params], [p.numel() for p in params],
                        ptrs)
    return ptrs, alive


def kernel(spec: CellSpec, p: Plan):
    """The plan's compiled steps of this cell, ``kernel(ptrs, x_addr, y_addr, steps, h, c, flag)``, and
    its flag: on one thread, or split into the plan's chunks of the batch or units of each layer (numba's
    pool is set to that size here)."""
    cell = drivers.cell(spec)
    n = max(p.chunks, p.units)
    if n == 1:
        return cell.stream.serial, cell.flag(spec)
    runtime.loops().set_threads(n)
    return functools.partial(cell.stream_units if p.units > 1 else cell.stream.parallel, n), cell.flag(spec)


def stream_step(spec: CellSpec, x_t: Tensor, layers: list[DirectionWeights], h: Tensor | None,
                c: Tensor | None = None, p: Plan | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One time step of a unidirectional stack, or a few, every layer in one compiled call, without
    autograd (a few µs of overhead).

    x_t <f>[B, I] (or steps <f>[T, B, I]) on the CPU;  h <f>[L, B, P] and c <f>[L, B, H] (LSTM) in
    torch.nn's layout, or None (zeros). Returns y_t <f>[B, P] (or <f>[T, B, P]: the top layer's h at
    each step), the new h and the new c (None unless LSTM). p: the plan (a ``stream`` plan); default,
    the plan of one step of this stack."""
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
    ptrs, _alive = stack_pointers(spec, layers)  # _alive: what ptrs point into, held through the call
    if p is None:
        p = planned(current(), spec, "step", 1, B, I, x_t.dtype, layers=L)
    run, flag = kernel(spec, ran(p))
    y_t = torch.empty((*x_t.shape[:-1], P), dtype=x_t.dtype)  # its own tensor, not a view of the new h
    h_t, c_t = _advance(run, flag, ptrs, x_t, y_t, h, c, (L, B, P), (L, B, H) if spec.mode == "LSTM" else None)
    return y_t, h_t, c_t


def _advance(run, flag, ptrs, x_t: Tensor, y_t: Tensor, h: Tensor | None, c: Tensor | None, h_shape: tuple,
             c_shape: tuple | None) -> tuple[Tensor, Tensor | None]:
    """Run a streaming kernel over x_t <f>[B, I] or <f>[T, B, I] (contiguous, checked) into y_t from
    the state h, c (None: zeros; c_shape None: no cell state), on copies that become the new state
    tensors, returned. The last ones returned are remembered with their numpy views (``_last_state``)."""
    dtype = NP_DTYPE[x_t.dtype]
    hout = _state_np(h).copy() if h is not None else np.zeros(h_shape, dtype)  # the kernel updates it in place
    lstm = c_shape is not None
    cout = (_state_np(c).copy() if c is not None else np.zeros(c_shape, dtype)) if lstm else dummy(x_t.dtype, 3)
    run(ptrs, x_t.data_ptr(), y_t.data_ptr(), x_t.shape[0] if x_t.dim() == 3 else 1, hout, cout, flag)
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
    instead). The kernel is the plan's, made with the streamer (at batch 1 with large weights the
    threads share each layer's hidden units). The weights are read in place, so in-place updates to
    them (an optimizer step, ``load_state_dict``) are seen; after replacing a parameter tensor, make a
    new streamer.

    layers: the stack's DirectionWeights (forward direction, contiguous), batch B; h <f>[L, B, P] and
    c <f>[L, B, H] (LSTM) the initial state, or None for zeros. x_t <f>[B, I] on the CPU →
    y_t <f>[B, P]. ``state`` returns h, or (h, c) for LSTM, as new tensors (forward's hx layout)."""

    def __init__(self, spec: CellSpec, layers: list[DirectionWeights], batch: int,
                 h: Tensor | None = None, c: Tensor | None = None) -> None:
        if spec.mode not in MODES:
            raise ValueError(f"spec: the Streamer covers the RNN, LSTM and GRU cells, got {spec}")
        if not all_contiguous(layers):
            raise ValueError("layers: the Streamer reads the weights in place and needs them contiguous")
        self.spec = spec
        w0 = layers[0].w_ih
        L, H, P = len(layers), spec.hidden_size, spec.output_size
        dtype = NP_DTYPE[w0.dtype]
        self._lstm = spec.mode == "LSTM"
        self.h = np.zeros((L, batch, P), dtype)
        self.c = np.zeros((L, batch, H), dtype) if self._lstm else dummy(w0.dtype, 3)
        for name, init, n in (("h", h, P), ("c", c, H)):
            if init is not None:
                if tuple(init.shape) != (L, batch, n) or init.dtype != w0.dtype:
                    raise ValueError(f"{name}: expected shape {(L, batch, n)} of dtype {w0.dtype}, "
                                     f"got {tuple(init.shape)} {init.dtype}")
                getattr(self, name)[...] = init.detach().numpy()
        self._ptrs, self._alive = stack_pointers(spec, layers)  # _alive: what ptrs point into
        self.plan = planned(current(), spec, "step", 1, batch, w0.shape[1], w0.dtype, layers=L)
        self._kernel, self._flag = kernel(spec, self.plan)  # recorded as it runs: by step(), not per call
        self._run = compiled_entry(self._kernel, (self._ptrs, 0, 0, 1, self.h, self.c, self._flag))
        self._units = self.plan.units > 1
        self._shape_x, self._dtype = torch.Size((batch, w0.shape[1])), w0.dtype
        self._like_y = torch.empty((batch, P), dtype=w0.dtype)  # empty_like(it) is cheaper than empty(shape)
        self._shape_y = self._like_y.shape

    @property
    def splits_units(self) -> bool:
        """Whether the threads share each layer's hidden units (goes False in a forked child)."""
        return self._units

    def __call__(self, x_t: Tensor, out: Tensor | None = None) -> Tensor:
        """y_t for x_t, the state advanced; out: a tensor <f>[B, P] to write y_t into and return
        (no allocation per call), else a new tensor."""
        # The usual x_t and out pass each in one test of the attributes that cost least to read (a
        # tensor's .device builds an object); anything else, or a streamer that splits units (which
        # _checked may take back to one thread), goes through the full checks and their messages.
        if not (type(x_t) is Tensor and x_t.shape == self._shape_x and x_t.dtype == self._dtype and x_t.is_cpu
                and x_t.is_contiguous()) or self._units:
            x_t = self._checked(x_t)
        if out is None:
            out = torch.empty_like(self._like_y)
        elif not (type(out) is Tensor and out.shape == self._shape_y and out.dtype == self._dtype and out.is_cpu
                  and out.is_contiguous() and not out.requires_grad):
            check_out(out, self._shape_y, self._dtype, CPU)
        self._run(self._ptrs, x_t.data_ptr(), out.data_ptr(), 1, self.h, self.c, self._flag)
        return out

    def _checked(self, x_t: Tensor) -> Tensor:
        """x_t, checked against the streamer's shape, dtype and device, and contiguous. In a process
        forked after the streamer was made, the kernel that splits units goes back to one thread
        (GNU OpenMP, which runs numba's threads, is not fork-safe)."""
        if self._units and runtime.forked():
            self._kernel, self._units = drivers.cell(self.spec).stream.serial, False
            self._run = compiled_entry(self._kernel, (self._ptrs, 0, 0, 1, self.h, self.c, self._flag))
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
        ran(self.plan)
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


def compiled_entry(run, args: tuple):
    """``run``'s compiled code for the types of ``args``, to call without numba's dispatcher, which
    matches the types of every call's arguments to its compiled versions (about half of a dispatch
    with three arrays); ``run`` itself where it is not a dispatcher (a kernel split across threads).
    The arrays passed later must keep these types: the Streamer's own state and pointer arrays do."""
    from numba import typeof  # here, not at the top: ``import rnnkit`` does not load numba (the loops do)
    from numba.core.dispatcher import Dispatcher
    if not isinstance(run, Dispatcher):
        return run
    return run.compile(tuple(map(typeof, args)))


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"shape {tuple(x.shape)}, dtype {x.dtype} on {x.device}"
    return f"{type(x).__name__}"


def single_step(p: Plan, x: Tensor, weights: list[DirectionWeights], states: list):
    """The plan's ``single_step``: a one-step layer call without autograd through ``stream_step``, per
    direction (a single step is the same in both). Returns output <f>[1, B, D*P], final states (flat)."""
    spec = p.call.spec
    outs, finals = [], []
    for w, s in zip(weights, states):
        h = s[0].unsqueeze(0)
        c = s[1].unsqueeze(0) if len(s) > 1 else None
        y, hn, cn = stream_step(spec, x[0], [w], h, c, p)
        outs.append(y)
        finals += [hn[0], cn[0]] if cn is not None else [hn[0]]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
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


# ----------------------------------------------------------------------- a layer's step() streamer
_step_streamers = threading.local()
"""Per thread, ``by_owner``: each layer's cached streamer for ``step()`` (weak keys: it goes with the
layer, and no copy or pickle of the layer carries it; per thread: a streamer holds state)."""


class CachedStreamer:
    """A layer's streamer for ``step()`` on one thread, made for ``key`` (batch size, dtype, backend).
    The streamer reads the parameters in place, so it stays valid while each is still the registered
    parameter of its name, at the same address, shape and strides (checked every call: an assignment
    to ``.data`` keeps the Parameter and moves its memory). ``last``: the state its latest step
    returned."""

    def __init__(self, key: tuple, names: list[str], params: list[Tensor], streamer) -> None:
        self.key, self.names, self.params, self.streamer, self.last = key, names, params, streamer, None
        self.layout = _layout(params)

    def valid(self, registered: dict) -> bool:
        """Whether every parameter read is still ``registered[name]``, laid out as when made."""
        return all(map(operator.is_, map(registered.get, self.names), self.params)) and \
            _layout(self.params) == self.layout


def _layout(params: list[Tensor]) -> list[tuple]:
    return [(p.data_ptr(), p.shape, p.stride()) for p in params]


def cached_streamer(owner, key: tuple, registered: dict, make: Callable[[], tuple | None]) -> CachedStreamer | None:
    """``owner``'s streamer for ``step()`` on this thread, made for ``key`` and kept while it stays valid
    (``CachedStreamer.valid``): ``make()`` gives the names of the parameters it reads (in
    ``registered``) and a backend's streamer, or None; None where there is none."""
    cache = getattr(_step_streamers, "by_owner", None)
    if cache is None:
        cache = _step_streamers.by_owner = weakref.WeakKeyDictionary()
    hit = cache.get(owner)
    if hit is not None and hit.key == key and hit.valid(registered):
        return hit
    cache.pop(owner, None)
    made = make()
    if made is None or made[1] is None:
        return None
    names, streamer = made
    cache[owner] = CachedStreamer(key, names, [registered[n] for n in names], streamer)
    return cache[owner]
