"""Sequence kernels and the one dispatch point the recurrent layers call.

A backend runs one layer (both directions) over a whole time-major sequence:

    run_layer(spec, x <float>[T, B, I], weights: [DirectionWeights] * D, states: [State] * D,
              mask <bool>[T, B, 1] | None) -> (output <float>[T, B, D*P], [final State] * D)

``backend="auto"`` picks the fastest backend that supports the call; a name forces one. The backends:
``fused`` (CPU float32/64, every cell: our compiled kernels), ``torch`` (torch's own RNN kernels:
cuDNN on CUDA, for the cells torch.nn has) and ``reference`` (the equations, step by step with
autograd: any device and dtype, ONNX export). A backend
may also offer a streaming step for a whole unidirectional stack, without autograd, for one step
x_t <float>[B, I] (``step()``) or for a whole small call x <float>[T, B, I] (``forward()``; y then
<float>[T, B, P]):

    stream_step(spec, x_t <float>[B, I], weights: [DirectionWeights] * L, h <float>[L, B, P],
                c <float>[L, B, H] | None) -> (y_t <float>[B, P], h, c | None), or None if it cannot

and a stateful streamer, ``streamer(spec, weights, batch, h, c, like)`` → an object with
``y_t = s(x_t)`` (or ``s(x_t, out=y)``: y_t written into y, checked by ``base.check_out``) and
``s.state`` (forward's hx layout), or None if it cannot (``like``: a tensor of the input's device and
dtype).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..cells import CellSpec, State
from . import native, reference
from .base import DirectionWeights, eager

__all__ = ["Backend", "DirectionWeights", "BACKENDS", "register_backend", "check_backend", "select_backend",
           "run_layer", "stream_step", "streamer", "eager", "choice_key", "Policy", "explain", "policy",
           "cached_streamer", "zoneout_mask"]


class Backend(NamedTuple):
    """A named kernel: ``supports(spec, x, training)`` says whether it can run the call."""

    name: str
    run_layer: Callable[..., tuple[Tensor, list[State]]]
    supports: Callable[[CellSpec, Tensor, bool], bool]
    stream_step: Callable[..., tuple | None] | None = None
    streamer: Callable[..., object | None] | None = None
    noise: Callable[[CellSpec], bool] | None = None
    """Whether ``run_layer`` takes ``noise=`` (the recurrent regularisers' masks, ``rnnkit.cells.Noise``)
    for a cell; None: for none."""


BACKENDS: dict[str, Backend] = {}
"""Registered backends, in order of preference for ``backend="auto"`` (last registered first)."""


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend; later registrations are preferred by ``auto``."""
    BACKENDS.pop(backend.name, None)
    BACKENDS[backend.name] = backend


register_backend(Backend("reference", reference.run_layer, lambda spec, x, training: True,
                         noise=lambda spec: True))
register_backend(Backend("torch", native.run_layer, native.supports))  # cuDNN on CUDA


def check_backend(backend) -> None:
    """A ValueError unless backend is "auto" or a registered backend's name."""
    if backend != "auto" and not (isinstance(backend, str) and backend in BACKENDS):
        raise ValueError(f"backend: expected 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")


def _describe_call(spec: CellSpec, x: Tensor, training: bool) -> str:
    """The call as a backend's ``supports`` sees it, for an error message."""
    variant = (" with layer norm" if spec.layer_norm else " with projection" if spec.proj_size
               else " (reset_after=False)" if spec.mode == "GRU" and not spec.reset_after else "")
    return (f"{spec.mode}{variant}, input of shape {tuple(x.shape)} ({x.device.type}, {x.dtype})"
            f"{', with autograd' if training else ''}")


def select_backend(spec: CellSpec, x: Tensor, training: bool, backend: str = "auto",
                   noisy: bool = False) -> Backend:
    """The backend that will run this call: the named one, or the preferred one that supports it
    (with noisy, the recurrent regularisers' masks: one whose ``noise`` takes this cell)."""
    check_backend(backend)
    if backend != "auto":
        chosen = BACKENDS[backend]
        if noisy and not (chosen.noise and chosen.noise(spec)):
            takers = sorted(n for n, b in BACKENDS.items() if b.noise and b.noise(spec))
            raise ValueError(f"backend: {backend!r} does not run recurrent_dropout or zoneout for this cell; "
                             f"use backend='auto' or one of {takers}")
        if not chosen.supports(spec, x, training):
            raise ValueError(f"backend: {backend!r} does not run this call: {_describe_call(spec, x, training)}; "
                             "use backend='auto' or 'reference'")
        return chosen
    for candidate in reversed(BACKENDS.values()):
        if (not noisy or (candidate.noise and candidate.noise(spec))) and candidate.supports(spec, x, training):
            return candidate
    raise RuntimeError("no backend supports this call")  # unreachable: reference supports all


def run_layer(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None, training: bool, backend: str = "auto",
              noise: list | None = None) -> tuple[Tensor, list[State]]:
    """Run one recurrent layer through the selected backend (see module docstring for shapes);
    noise: the recurrent regularisers' masks per direction (``rnnkit.cells.Noise``), or None."""
    if noise is None:
        return select_backend(spec, x, training, backend).run_layer(spec, x, weights, states, mask)
    return select_backend(spec, x, training, backend, True).run_layer(spec, x, weights, states, mask, noise=noise)


def stream_step(spec: CellSpec, x_t: Tensor, weights: list[DirectionWeights], h: Tensor, c: Tensor | None,
                backend: str = "auto") -> tuple | None:
    """One no-autograd step of a stack through the named backend's (or the preferred) streaming step
    (see module docstring for shapes); None when no such backend can run it."""
    return _first("stream_step", backend, spec, x_t, weights, h, c)


def choice_key() -> tuple:
    """What a backend's choice of path depends on besides the call itself: the fused backend's policy
    (compared by identity first, then by value) and torch's thread count. A caller may keep a choice for
    a call of the same shape, dtype and device while this is unchanged."""
    return fused.policies.current(), torch.get_num_threads()


def streamer(spec: CellSpec, weights: list[DirectionWeights], batch: int, h: Tensor | None, c: Tensor | None,
             like: Tensor, backend: str = "auto") -> object | None:
    """A backend's stateful streamer for a unidirectional stack (see module docstring), or None."""
    return _first("streamer", backend, spec, weights, batch, h, c, like)


def zoneout_mask(shape: tuple[int, int, int], rate: float, like: Tensor) -> Tensor:
    """Zoneout's training mask <like's dtype and device>[T, B, N]: 1 where a unit keeps its old value
    (probability ``rate``), from a seed that torch's generator gives, so that ``torch.manual_seed``
    reproduces it. On the CPU (float32/64) the fused backend's counter-based generator draws it
    (``fused.zoneout_mask``, one pass without an array of random numbers); elsewhere ``torch.rand`` on
    the device."""
    if like.device.type == "cpu" and like.dtype in fused.streaming.DTYPES:
        return fused.zoneout_mask(shape, rate, int(torch.randint(0, 2**62, (1,))), like.dtype)
    return (torch.rand(shape, device=like.device) < rate).to(like.dtype)


def _first(field: str, backend: str, *args):
    """The first non-None answer of the named (or every, in preference order) backend's optional field."""
    check_backend(backend)
    candidates = [BACKENDS[backend]] if backend in BACKENDS else reversed(BACKENDS.values())
    for candidate in candidates:
        fn = getattr(candidate, field)
        if fn is not None:
            out = fn(*args)
            if out is not None:
                return out
    return None


from . import fused  # noqa: E402,F401  registers the "fused" CPU backend, preferred by "auto"
from .fused import Policy, explain, policy  # noqa: E402  how the fused backend plans a call
from .fused.streaming import cached_streamer  # noqa: E402  a layer's streamer for step(), per thread
