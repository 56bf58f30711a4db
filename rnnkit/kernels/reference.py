"""The reference kernel: a Python loop over time calling the cell equations, with autograd.

Slow but obviously right; the oracle for the fast kernels, the path for ONNX export, and the
fallback for devices and dtypes the fast kernels do not cover.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._higher_order_ops.scan import scan

from ..cells import CellSpec, Noise, State, zoneout
from .base import DirectionWeights


def run_direction(spec: CellSpec, x: Tensor, w: DirectionWeights, state: State,
                  mask: Tensor | None, reverse: bool, noise: Noise | None = None) -> tuple[Tensor, State]:
    """Run one direction of one layer over a whole sequence.

    x: <float>[T, B, I] (time-major);  state: initial state, each <float>[B, *]
    mask: <bool>[T, B, 1], True on valid steps, or None when every sequence is full length.
    Steps past a sequence's end leave its state untouched and output zeros, so the reverse
    direction starts from the initial state at each sequence's own last valid step.
    noise: the recurrent regularisers' masks (``rnnkit.cells.Noise``), or None: recurrent dropout's
    multiplier on h where it enters W_hh, then zoneout of each state (before the lengths mask: a
    zoned-out step outputs the kept state, a padded step zeros).
    returns output <float>[T, B, P] and the final state.
    """
    step = spec.step_fn()
    gi = spec.project(x, w)  # every step's input projection as one GEMM
    noise = noise if noise is not None and any(n is not None for n in noise) else None
    if torch.compiler.is_exporting():  # recorded by torch.export (and ONNX): one scan, any length
        return _scanned(step, gi, w, state, mask, reverse, noise)
    drop = noise.recurrent if noise is not None else None
    zones = _zones(noise, len(state))
    outputs: list[Tensor] = [x.new_empty(0)] * x.shape[0]
    for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
        new = step(gi[t], state, w, drop)
        if zones is not None:
            new = tuple(n if z is None else zoneout(z[t], s, n) for n, s, z in zip(new, state, zones))
        if mask is None:
            state, outputs[t] = new, new[0]
        else:
            state = tuple(torch.where(mask[t], n, s) for n, s in zip(new, state))
            outputs[t] = torch.where(mask[t], new[0], 0.0)
    return torch.stack(outputs), state


def _zones(noise: Noise | None, n: int) -> tuple[Tensor | None, ...] | None:
    """Zoneout's weights per state tensor ((h,) or (h, c)), or None when zoneout is off."""
    if noise is None or (noise.zone_h is None and noise.zone_c is None):
        return None
    return (noise.zone_h, noise.zone_c)[:n]


def _scanned(step, gi: Tensor, w: DirectionWeights, state: State, mask: Tensor | None,
             reverse: bool, noise: Noise | None = None) -> tuple[Tensor, State]:
    """``run_direction``'s loop as torch's scan operator, for an exported program: one step body in
    the graph, not T copies, so the model takes any number of time steps (in ONNX, a Scan).
    torch.compile keeps the loop unrolled: in torch 2.13 inductor refuses a scan under autograd
    ("scan might be aliasing the input or the output")."""
    drop = noise.recurrent if noise is not None else None
    zones = _zones(noise, len(state))
    zoned = [] if zones is None else [k for k, z in enumerate(zones) if z is not None]
    per_step = [gi] + ([] if mask is None else [mask]) + [zones[k] for k in zoned]

    def body(carry: State, xs: tuple[Tensor, ...]) -> tuple[State, Tensor]:
        new = step(xs[0], carry, w, drop)
        if zoned:
            z = dict(zip(zoned, xs[len(xs) - len(zoned):]))
            new = tuple(zoneout(z[k], s, n) if k in z else n for k, (n, s) in enumerate(zip(new, carry)))
        if mask is None:
            return new, new[0].clone()  # the output may not alias the carried state
        valid = xs[1]
        return tuple(torch.where(valid, n, s) for n, s in zip(new, carry)), torch.where(valid, new[0], 0.0)
    final, outputs = scan(body, tuple(state), tuple(per_step), reverse=reverse)
    return outputs, final


def run_layer(spec: CellSpec, x: Tensor, weights: list[DirectionWeights], states: list[State],
              mask: Tensor | None, noise: list[Noise] | None = None) -> tuple[Tensor, list[State]]:
    """Both directions of a layer: output <float>[T, B, D*P], one final state per direction;
    noise: the regularisers' masks per direction, or None."""
    outs, finals = [], []
    for d, (w, s) in enumerate(zip(weights, states)):
        out, final = run_direction(spec, x, w, s, mask, reverse=d == 1, noise=noise[d] if noise else None)
        outs.append(out)
        finals.append(final)
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), finals


def differentiable_grads(spec: CellSpec, x: Tensor, mask: Tensor | None, weights: list[DirectionWeights],
                         states: list[State], reverse: bool, grads: list[Tensor],
                         inputs: list[Tensor | None], noise: list[Noise] | None = None) -> list[Tensor | None]:
    """Double backward for a fast kernel: the gradients of its layer w.r.t. ``inputs`` (a fast
    Function's own inputs; None where none is needed) as tensors autograd can differentiate again,
    by rerunning this reference on them and differentiating it with ``create_graph``. A fast
    backward calls it when grad mode is on inside it, i.e. under ``create_graph=True``.

    x <f>[T, B, I], mask <bool>[T, B, 1] or None; one DirectionWeights and state per direction, the
    second reversed (the first too with ``reverse``); grads: those of the output and of each
    direction's final state tensors, in that order; noise: the regularisers' masks per direction, or None."""
    with torch.enable_grad():
        outs, finals = [], []
        for d, (w, s) in enumerate(zip(weights, states)):
            out, final = run_direction(spec, x, w, s, mask, reverse=reverse or d == 1,
                                       noise=noise[d] if noise else None)
            outs.append(out)
            finals += final
        wanted = [t for t in inputs if t is not None]
        got = iter(torch.autograd.grad([torch.cat(outs, dim=2), *finals], wanted, grads, create_graph=True,
                                       allow_unused=True))
    return [None if t is None else next(got) for t in inputs]
