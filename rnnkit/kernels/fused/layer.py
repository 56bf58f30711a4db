"""One layer (both directions) of a plain cell as one ``torch.autograd.Function``, on the plan's loop:

forward, per direction
    gates = x W_ih^T + b          one GEMM for all T·B rows (biases folded where the cell allows)
    time loop                     per step the recurrent mat-mul and one fused elementwise pass that
                                  leaves the activated gates in ``gates`` (the cell's driver, ``drivers``)
backward, per direction
    time loop                     per step the elementwise backward and dh_{t-1} = dG_t W_hh
    dW_ih = dG^T x,  dx = dG W_ih,  dW_hh = dG^T h_prev   one GEMM each over the whole sequence

Saved for backward: the input, the layer output (it is the state sequence), the activated gates and
per cell what the elementwise backward needs (LSTM c_t; GRU W_hn h + b_hn); with ``lengths`` also the
state sequence (the output is zero-padded). Both directions write into one output buffer. What is kept
for backward and the backward's gradient buffers come from ``buffers.pool``.

Double backward (``create_graph=True``): the backward, called with grad mode on, reruns the reference
on the saved inputs and differentiates that with a graph (``reference.differentiable_grads``).
Also here: oneDNN's LSTM layer (``onednn_lstm``), the plan's ``onednn_lstm`` path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells import CellSpec, State
from .. import reference
from ..base import DirectionWeights
from ..buffers import pool
from . import drivers
from .gemm import (NO_MASK, OneBlasThread, as_np, contiguous, dummy, folded_bias, grad_input_weight, linear,
                   pooled_contiguous)
from .plan import Plan
from .policies import Policy
from .streaming import zeros

PER_DIRECTION = 7  # flattened per direction: w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0


def flatten(weights: list[DirectionWeights], states: list[State]) -> list:
    """Per direction w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 (None where absent), as the Functions take them."""
    flat: list = []
    for w, s in zip(weights, states):
        flat += [w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, s[0], s[1] if len(s) > 1 else None]
    return flat


def state_grad(grad: Tensor | None, like: Tensor) -> Tensor:
    """A contiguous copy of a final state's gradient (the kernels turn it into the initial state's), or zeros."""
    if grad is None:
        return like.new_zeros(like.shape)
    return grad.detach().clone(memory_format=torch.contiguous_format)


def forward(plan: Plan, policy: Policy, x: Tensor, mask: Tensor | None, flat: list, train: bool,
            noise: list | None = None):
    """Run the layer on the plan's loop. Returns output <f>[T, B, D*P], final states (flat), per
    direction what backward needs (a dict of tensors), and the (contiguous, detached) input.
    noise: the regularisers' masks per direction (``rnnkit.cells.Noise``), or None."""
    spec = plan.call.spec
    cell = drivers.cell(spec)
    T, B, I = x.shape
    H, P, G = spec.hidden_size, spec.output_size, spec.gates
    D = len(flat) // PER_DIRECTION
    x = pooled_contiguous(x)
    out = x.new_empty(T, B, D * P)
    has_mask = mask is not None
    mask_np = as_np(mask[:, :, 0].contiguous()) if has_mask else NO_MASK
    finals: list[Tensor] = []
    saved: list[dict] = []
    with OneBlasThread():
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = flat[d * PER_DIRECTION:(d + 1) * PER_DIRECTION]
            bias = folded_bias(spec, b_ih, b_hh)
            gates = linear(x.view(T * B, I), contiguous(w_ih), bias.detach() if bias is not None else None, policy,
                           pooled=True).view(T, B, G * H)
            h0 = contiguous(h0)
            hs = pool.empty((T, B, P), x.dtype) if (train and has_mask) else None
            keep: dict[str, Tensor] = {"gates": gates, "h0": h0, "hs": hs} if train else {}
            f = drivers.Forward(spec, plan, d == 1, d * P, train, gates, as_np(out), mask_np, has_mask,
                                as_np(hs) if hs is not None else dummy(x.dtype, 3), keep, noise[d] if noise else None)
            finals += cell.forward(f, contiguous(w_hh), w_hr, b_hh, h0.clone(), c0)
            saved.append(keep)
    return out, finals, saved, x


def backward(plan: Plan, policy: Policy, x: Tensor, mask: Tensor | None, flat: list, out: Tensor,
             saved: list[dict], dout: Tensor, dfinals: list, needs: tuple,
             noise: list | None = None) -> tuple[Tensor | None, list]:
    """Gradients of the layer: dx and, flattened per direction, those of flat (None where not needed).
    needs: needs_input_grad of flat, then of x; noise: as forward's."""
    spec = plan.call.spec
    cell = drivers.cell(spec)
    T, B, I = x.shape
    P, G = spec.output_size, spec.gates * spec.hidden_size
    D = len(flat) // PER_DIRECTION
    dout = pooled_contiguous(dout)
    has_mask = mask is not None
    mask_np = as_np(mask[:, :, 0].contiguous()) if has_mask else NO_MASK
    nstate = 2 if spec.mode == "LSTM" else 1
    dx = None
    grads: list = []
    with OneBlasThread():
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr, _, _ = flat[d * PER_DIRECTION:(d + 1) * PER_DIRECTION]
            need = needs[d * PER_DIRECTION:(d + 1) * PER_DIRECTION]
            keep = saved[d]
            off, h0 = d * P, keep["h0"]
            # the state sequence: the output itself, or the separate copy kept with a mask
            hseq, hoff = (keep["hs"], 0) if has_mask else (out, off)
            dfin = dfinals[d * nstate:(d + 1) * nstate]
            dh = state_grad(dfin[0], h0)
            dc0 = state_grad(dfin[1], keep["c0"]) if nstate == 2 else None
            dg_in = pool.empty((T, B, G), x.dtype)
            b = drivers.Backward(spec, plan, d == 1, off, as_np(dout), mask_np, has_mask, keep, h0, as_np(hseq), hoff,
                                 hseq[:, :, hoff:hoff + P], dh, need, dg_in, noise[d] if noise else None)
            g_w_hh, g_b_hh, g_w_hr, dc = cell.backward(b, contiguous(w_hh), w_hr, dc0)
            dg2 = dg_in.view(T * B, G)
            g_w_ih = grad_input_weight(dg2, x.view(T * B, I), policy) if need[0] else None
            same = isinstance(g_b_hh, str)  # b_hh's gradient is b_ih's: one sum, a copy for the second
            g_b_ih = dg2.sum(0) if (need[2] or (need[3] and same)) else None
            if same:
                g_b_hh = g_b_ih.clone() if need[3] else None
                g_b_ih = g_b_ih if need[2] else None
            if needs[-1]:  # dx = dG W_ih, summed over directions
                part = linear(dg2, contiguous(w_ih.t()), None, policy)
                dx = part if dx is None else dx.add_(part)
            grads += [g_w_ih, g_w_hh, g_b_ih, g_b_hh if b_hh is not None else None, g_w_hr,
                      dh if need[5] else None, dc if (need[6] and dc is not None) else None]
    return (dx.view(T, B, I) if dx is not None else None), grads


class FusedLayer(torch.autograd.Function):
    """One layer, all directions: (plan, policy, x, mask, noise, *flat) → (output, *final states);
    noise: the regularisers' masks per direction, or None."""

    @staticmethod
    def forward(ctx, plan, policy, x_in, mask, noise, *flat):
        out, finals, saved, x = forward(plan, policy, x_in, mask, list(flat), train=True, noise=noise)
        ctx.plan, ctx.policy, ctx.noise = plan, policy, noise
        ctx.layout = [sorted(k for k, v in keep.items() if v is not None) for keep in saved]
        weights = [t for i, t in enumerate(flat) if i % PER_DIRECTION < 5]
        tensors = [x, mask, out, *weights]
        for keys, keep in zip(ctx.layout, saved):
            tensors += [keep[k] for k in keys]
        ctx.save_for_backward(*tensors, x_in, *flat)  # the inputs themselves last, for double backward
        if mask is not None:
            ctx.mark_non_differentiable(mask)
        return (out, *finals)

    @staticmethod
    def backward(ctx, dout, *dfinals):
        wanted = ctx.needs_input_grad[2:3] + ctx.needs_input_grad[5:]  # x and flat, which forward saved last
        if torch.is_grad_enabled():  # create_graph=True: gradients that autograd can differentiate again
            dx, *grads = double_backward(ctx, ctx.plan.call.spec, wanted, ctx.saved_tensors[1], [dout, *dfinals],
                                         ctx.noise)
            return (None, None, dx, None, None, *grads)
        x, mask, out, *rest = ctx.saved_tensors[:-len(wanted)]
        D = len(ctx.layout)
        weights, rest = rest[: 5 * D], rest[5 * D:]
        flat, saved = [], []
        for d, keys in enumerate(ctx.layout):
            flat += list(weights[5 * d: 5 * d + 5]) + [None, None]
            keep = dict(zip(keys, rest[: len(keys)]))
            keep.setdefault("hs", None)
            rest = rest[len(keys):]
            saved.append(keep)
        needs = tuple(ctx.needs_input_grad[5:]) + (ctx.needs_input_grad[2],)
        dx, grads = backward(ctx.plan, ctx.policy, x, mask, flat, out, saved, dout, list(dfinals), needs, ctx.noise)
        return (None, None, dx, None, None, *grads)


def double_backward(ctx, spec: CellSpec, needs: tuple, mask: Tensor | None, grads: list,
                    noise: list | None = None) -> list:
    """Double backward of a layer Function (``create_graph=True``) whose forward saved its inputs x and
    flat last: the gradients w.r.t. x and each of flat (None where ``needs`` says no), differentiable,
    through ``reference.differentiable_grads`` (with the same regularisers' masks, ``noise``)."""
    x, *flat = ctx.saved_tensors[-len(needs):]
    parts = [flat[d:d + PER_DIRECTION] for d in range(0, len(flat), PER_DIRECTION)]
    weights = [DirectionWeights(*part[:5]) for part in parts]
    states = [tuple(t for t in part[5:] if t is not None) for part in parts]
    inputs = [t if need else None for t, need in zip((x, *flat), needs)]
    return reference.differentiable_grads(spec, x, mask, weights, states, False, grads, inputs, noise)


def onednn_lstm(x: Tensor, weights: list[DirectionWeights], states: list[State], train: bool):
    """The layer through ``aten::mkldnn_rnn_layer`` (torch.nn.LSTM's CPU path), each direction; with
    train, under autograd (its backward is oneDNN's). Returns output <f>[T, B, D*H], final states."""
    H = weights[0].w_hh.shape[1]
    x = x.contiguous()
    outs, finals = [], []
    for d, (w, (h0, c0)) in enumerate(zip(weights, states)):
        b_ih = w.b_ih.contiguous() if w.b_ih is not None else zeros(4 * H, x.dtype)
        b_hh = w.b_hh.contiguous() if w.b_hh is not None else zeros(4 * H, x.dtype)
        y, hn, cn, _ = torch.ops.aten.mkldnn_rnn_layer(
            x, w.w_ih.contiguous(), w.w_hh.contiguous(), b_ih, b_hh, h0.contiguous(), c0.contiguous(), d == 1, [], 2,
            H, 1, True, False, False, train)
        outs.append(y)
        finals.append((hn, cn))
    return (outs[0] if len(outs) == 1 else torch.cat(outs, 2)), finals
