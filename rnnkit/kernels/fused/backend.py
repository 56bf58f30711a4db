"""The fused backend's entry points for ``rnnkit.kernels``: ``supports``, ``run_layer`` (a layer call:
planned, then run on the plan's path) and the streaming step and streamer a backend may offer."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...cells import CellSpec, State
from ..base import DirectionWeights, whole_sequence_input
from . import ln, runtime
from .drivers import Split
from .layer import FusedLayer, flatten, forward, onednn_lstm
from .plan import Plan, planned, ran
from .policies import Policy, current
from .small import SmallLayer
from .streaming import DTYPES, MODES, Streamer, all_contiguous, single_step, stream_step
from .streaming import supports as stream_supports


def supports(spec: CellSpec, x: Tensor, training: bool) -> bool:
    """CPU, float32/float64, a known cell, a non-empty 3-D input, not being traced or exported."""
    return x.device.type == "cpu" and x.dtype in DTYPES and spec.mode in MODES and whole_sequence_input(x)


def run_layer(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None, noise: list | None = None) -> tuple[Tensor, list[State]]:
    """The backend entry point (see ``rnnkit.kernels``): output <f>[T, B, D*P], final states; the
    plan's path runs it. noise: recurrent dropout's and zoneout's masks per direction (``rnnkit.cells.Noise``;
    the cells of ``drivers.takes_noise``), or None."""
    p = current()
    flat = flatten(weights, states)
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *flat))
    T, B, I = x.shape
    chosen = ran(planned(p, spec, "layer", T, B, I, x.dtype, need_grad, mask is not None, 1, len(weights),
                         noisy=noise is not None))
    if noise is not None:  # the plan sends a noisy call to the compiled loop only
        return _loop(chosen, p, x, weights, states, mask, flat, noise)
    return _PATHS[chosen.path](chosen, p, x, weights, states, mask, flat)


def _onednn(chosen: Plan, p: Policy, x, weights, states, mask, flat):
    with torch.set_grad_enabled(chosen.call.training):
        return onednn_lstm(x, weights, states, chosen.call.training)


def _per_direction(spec: CellSpec, out: Tensor, finals: list, directions: int):
    n = 2 if spec.mode == "LSTM" else 1
    return out, [tuple(finals[d * n:(d + 1) * n]) for d in range(directions)]


def _small(chosen: Plan, p: Policy, x, weights, states, mask, flat):
    spec = chosen.call.spec
    out, *finals = SmallLayer.apply(spec, x, *flat)
    return _per_direction(spec, out, finals, len(weights))


def _single(chosen: Plan, p: Policy, x, weights, states, mask, flat):
    with torch.no_grad():
        out, finals = single_step(chosen, x, weights, states)
    return _per_direction(chosen.call.spec, out, finals, len(weights))


def _loop(chosen: Plan, p: Policy, x, weights, states, mask, flat, noise=None):
    spec = chosen.call.spec
    if spec.layer_norm:
        return ln.run_layer(chosen, p, x, weights, states, mask, noise)
    if chosen.call.training:
        out, *finals = FusedLayer.apply(chosen, p, x, mask, noise, *flat)
    else:
        with torch.no_grad():
            out, finals, _, _ = forward(chosen, p, x, mask, flat, train=False, noise=noise)
    return _per_direction(spec, out, finals, len(weights))


_PATHS = {"onednn_lstm": _onednn, "small_train": _small, "single_step": _single, "compiled_loop": _loop,
          "step_loop": _loop}
"""What runs each path of a layer plan."""


ZONE_MASK_PAR_MIN = 1 << 16
"""Mask elements from which ``zoneout_mask`` splits its steps over threads (below, a thread launch costs
more than the draw)."""


def zoneout_mask(shape: tuple[int, int, int], rate: float, seed: int, dtype: torch.dtype) -> Tensor:
    """Zoneout's training mask <dtype>[T, B, N]: 1 where a unit keeps its old value (probability rate),
    drawn from seed (0 <= seed < 2^64) by the compiled counter-based generator ``loops.noise.zone_mask``
    (the same mask on any number of threads)."""
    z = torch.empty(shape, dtype=dtype)
    noise = runtime.loops().noise
    n = min(runtime.threads(current()), shape[0]) if z.numel() >= ZONE_MASK_PAR_MIN else 1
    Split(noise.zone_mask, noise.zone_mask_par)(n, np.uint64(seed), np.uint64(round(rate * 2**32)), z.numpy())
    return z


def stream_step_if_planned(spec: CellSpec, x_t: Tensor, layers: list[DirectionWeights], h: Tensor,
                         c: Tensor | None):
    """The backend's streaming step (``kernels.stream_step``): one step, or a whole no-grad stack call
    where the plan streams it; None where it does not."""
    if not stream_supports(spec, x_t):
        return None
    p = current()
    if x_t.dim() == 3:
        if not whole_sequence_input(x_t):
            return None
        T, B, I = x_t.shape
        chosen = planned(p, spec, "stack", T, B, I, x_t.dtype, layers=len(layers))
        if chosen.path != "stream":
            return None
    else:
        chosen = planned(p, spec, "step", 1, x_t.shape[0], x_t.shape[1], x_t.dtype, layers=len(layers))
    return stream_step(spec, x_t, layers, h, c, chosen)


def streamer_if_supported(spec: CellSpec, layers: list[DirectionWeights], batch: int, h: Tensor | None,
                          c: Tensor | None, like: Tensor):
    """The backend's streamer (``kernels.streamer``), or None where the streaming kernels cannot run."""
    if not (all_contiguous(layers) and stream_supports(spec, like[:1, :1])):
        return None  # the layer falls back to its step()-based streamer
    return Streamer(spec, layers, batch, h, c)


