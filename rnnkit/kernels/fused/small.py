"""The plan's ``small_train`` path: a small training call, each direction's forward and backward (every
gradient included) one compiled call on this thread (unmasked RNN, LSTM without projection, GRU with
reset_after). It saves the ~25 torch operators a direction costs around the layer's own loops."""

from __future__ import annotations

import torch

from . import drivers
from .layer import PER_DIRECTION, double_backward, state_grad
from .streaming import zeros


class SmallLayer(torch.autograd.Function):
    """(spec, x, *flat) → (output, *final states). Every array it hands the kernels is detached
    already: ``.numpy()``, the cheaper of the two, not ``gemm.as_np`` (about 20 calls a step)."""

    @staticmethod
    def forward(ctx, spec, x_in, *flat):
        small_forward, _ = drivers.cell(spec).small
        x = x_in.detach().contiguous()
        T, B, _ = x.shape
        H, P, D = spec.hidden_size, spec.output_size, len(flat) // PER_DIRECTION
        out = x.new_empty(T, B, D * P)
        x_np, out_np = x.numpy(), out.numpy()
        finals, saved = [], [x, out]
        for d in range(D):
            part = flat[d * PER_DIRECTION:(d + 1) * PER_DIRECTION]
            w_ih, w_hh, b_ih, b_hh, _, h0, c0 = (t if t is None else t.detach().contiguous() for t in part)
            zero = zeros(w_ih.shape[0], x.dtype)
            b_ih, b_hh = (zero if b is None else b for b in (b_ih, b_hh))
            h = h0.clone()
            head = (x_np, w_ih.numpy(), b_ih.numpy(), b_hh.numpy(), w_hh.numpy(), h.numpy())
            if spec.mode == "LSTM":
                c = c0.clone()
                gates, cs = x.new_empty(T, B, 4 * H), x.new_empty(T, B, H)
                small_forward(*head, c.numpy(), d == 1, out_np, d * P, gates.numpy(), cs.numpy())
                finals += [h, c]
                saved += [gates, cs, c0]
            elif spec.mode == "GRU":
                gates, ghn = x.new_empty(T, B, 3 * H), x.new_empty(T, B, H)
                small_forward(*head, d == 1, out_np, d * P, gates.numpy(), ghn.numpy())
                finals.append(h)
                saved += [gates, ghn]
            else:
                small_forward(*head, spec.mode == "RNN_RELU", d == 1, out_np, d * P)
                finals.append(h)
            saved += [w_ih, w_hh, h0]
        ctx.spec, ctx.directions, ctx.bias = spec, D, flat[2] is not None
        ctx.save_for_backward(*saved, x_in, *flat)  # the inputs themselves last, for double backward
        return (out, *finals)

    @staticmethod
    def backward(ctx, dout, *dfinals):
        wanted = ctx.needs_input_grad[1:]  # x and flat, which forward saved last
        if torch.is_grad_enabled():  # create_graph=True: gradients that autograd can differentiate again
            return (None, *double_backward(ctx, ctx.spec, wanted, None, [dout, *dfinals]))
        spec = ctx.spec
        _, small_backward = drivers.cell(spec).small
        x, out, *rest = ctx.saved_tensors[:-len(wanted)]
        lstm = spec.mode == "LSTM"
        per = len(rest) // ctx.directions  # what forward saved per direction
        nstate = 2 if lstm else 1
        dout_np, x_np, out_np = dout.detach().contiguous().numpy(), x.numpy(), out.detach().numpy()
        dx = torch.zeros_like(x)
        grads: list = []
        for d in range(ctx.directions):
            kept = rest[d * per:(d + 1) * per]
            w_ih, w_hh, h0 = kept[-3:]
            dfin = dfinals[d * nstate:(d + 1) * nstate]
            dh = state_grad(dfin[0], h0)
            g = [torch.zeros_like(w_ih), torch.zeros_like(w_hh), w_ih.new_zeros(w_ih.shape[0]),
                 w_ih.new_zeros(w_ih.shape[0])]
            state = (h0.numpy(), w_ih.numpy(), w_hh.numpy(), dh.numpy())  # every kernel's arguments after off
            tail = (d == 1, dout_np, dx.numpy(), *(t.numpy() for t in g))
            off = d * spec.output_size
            dc = None
            if lstm:
                gates, cs, c0 = kept[:3]
                dc = state_grad(dfin[1], c0)
                small_backward(x_np, gates.numpy(), cs.numpy(), c0.numpy(), out_np, off, *state, dc.numpy(), *tail)
            elif spec.mode == "GRU":
                small_backward(x_np, kept[0].numpy(), kept[1].numpy(), out_np, off, *state, *tail)
            else:
                small_backward(x_np, out_np, off, *state, spec.mode == "RNN_RELU", *tail)
            if not ctx.bias:
                g[2] = g[3] = None
            grads += [*g, None, dh, dc]
        return (None, dx, *grads)
