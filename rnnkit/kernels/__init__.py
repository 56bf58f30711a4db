"""Sequence kernels and the one dispatch point the recurrent layers call.

A backend runs one layer (both directions) over a whole time-major sequence:

    run_layer(spec, x <float>[T, B, I], weights: [DirectionWeights] * D, states: [State] * D,
              mask <bool>[T, B, 1] | None) -> (output <float>[T, B, D*P], [final State] * D)

``backend="auto"`` picks the fastest backend that supports the call; a name forces one.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import Tensor

from ..cells import CellSpec, State
from . import reference
from .base import DirectionWeights

__all__ = ["Backend", "DirectionWeights", "BACKENDS", "register_backend", "select_backend", "run_layer"]


class Backend(NamedTuple):
    """A named kernel: ``supports(spec, x, training)`` says whether it can run the call."""

    name: str
    run_layer: Callable[..., tuple[Tensor, list[State]]]
    supports: Callable[[CellSpec, Tensor, bool], bool]


BACKENDS: dict[str, Backend] = {}
"""Registered backends, in order of preference for ``backend="auto"`` (last registered first)."""


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend; later registrations are preferred by ``auto``."""
    BACKENDS.pop(backend.name, None)
    BACKENDS[backend.name] = backend


register_backend(Backend("reference", reference.run_layer, lambda spec, x, training: True))


def select_backend(spec: CellSpec, x: Tensor, training: bool, backend: str = "auto") -> Backend:
    """The backend that will run this call: the named one, or the preferred one that supports it."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
        chosen = BACKENDS[backend]
        if not chosen.supports(spec, x, training):
            raise ValueError(f"backend: {backend!r} does not support {spec.mode} on "
                             f"{x.device.type}/{x.dtype}; use backend='auto' or 'reference'")
        return chosen
    for candidate in reversed(BACKENDS.values()):
        if candidate.supports(spec, x, training):
            return candidate
    raise RuntimeError("no backend supports this call")  # unreachable: reference supports all


def run_layer(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None, training: bool, backend: str = "auto") -> tuple[Tensor, list[State]]:
    """Run one recurrent layer through the selected backend (see module docstring for shapes)."""
    return select_backend(spec, x, training, backend).run_layer(spec, x, weights, states, mask)

from . import fused  # noqa: E402,F401  registers the "fused" CPU backend, preferred by "auto"
