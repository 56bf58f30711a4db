"""The plan's ``small_train`` path: a small training call, each direction's forward and backward (every
gradient included) one compiled call on this thread (unmasked RNN, LSTM without projection, GRU with
reset_after). It saves the ~25 torch operators a direction costs around the layer's own loops."""

from __future__ import annotations

import torch

from . import drivers
from .layer import PER_DIRECTION, double_backward, state_grad
from .streaming import zeros


class SmallLayer(torch.autograd.Function):
    """(spec, x, *flat) → (output, *final states), through the cell's ``drivers.Small`` entry. Every
    array it hands the kernels is detached already: ``.numpy()``, the cheaper of the two, not
    ``gemm.as_np`` (about 20 calls a step)."""

    @staticmethod
    def forward(ctx, spec, x_in, *flat):
        small = drivers.cell(spec).small
        x = x_in.detach().contiguous()
        T, B, _ = x.shape
        P, D, nstate = spec.output_size, len(flat) // PER_DIRECTION, len(spec.state_sizes)
        out = x.new_empty(T, B, D * P)
        x_np, out_np = x.numpy(), out.numpy()
        finals, saved, per = [], [x, out], []
        for d in range(D):
            part = flat[d * PER_DIRECTION:(d + 1) * PER_DIRECTION]
            w_ih, w_hh, b_ih, b_hh, _, *initial = (t if t is None else t.detach().contiguous() for t in part)
            initial = initial[:nstate]
            zero = zeros(w_ih.shape[0], x.dtype)
            b_ih, b_hh = (zero if b is None else b for b in (b_ih, b_hh))
            h = initial[0].clone()
            head = (x_np, w_ih.numpy(), b_ih.numpy(), b_hh.numpy(), w_hh.numpy(), h.numpy())
            more, kept = small.forward(spec, x, head, initial, d == 1, out_np, d * P)
            finals += [h, *more]
            saved += [*kept, w_ih, w_hh, *initial]
            per.append(len(kept))
        ctx.spec, ctx.kept, ctx.bias = spec, per, flat[2] is not None
        ctx.save_for_backward(*saved, x_in, *flat)  # the inputs themselves last, for double backward
        return (out, *finals)

    @staticmethod
    def backward(ctx, dout, *dfinals):
        wanted = ctx.needs_input_grad[1:]  # x and flat, which forward saved last
        if torch.is_grad_enabled():  # create_graph=True: gradients that autograd can differentiate again
            return (None, *double_backward(ctx, ctx.spec, wanted, None, [dout, *dfinals]))
        spec = ctx.spec
        small = drivers.cell(spec).small
        x, out, *rest = ctx.saved_tensors[:-len(wanted)]
        nstate = len(spec.state_sizes)
        dout_np, x_np, out_np = dout.detach().contiguous().numpy(), x.numpy(), out.detach().numpy()
        dx = torch.zeros_like(x)
        grads: list = []
        for d, n in enumerate(ctx.kept):
            kept, (w_ih, w_hh, *initial), rest = rest[:n], rest[n:n + 2 + nstate], rest[n + 2 + nstate:]
            dstates = [state_grad(g, s) for g, s in zip(dfinals[d * nstate:(d + 1) * nstate], initial)]
            g = [torch.zeros_like(w_ih), torch.zeros_like(w_hh), w_ih.new_zeros(w_ih.shape[0]),
                 w_ih.new_zeros(w_ih.shape[0])]
            state = (initial[0].numpy(), w_ih.numpy(), w_hh.numpy(), dstates[0].numpy())
            tail = (d == 1, dout_np, dx.numpy(), *(t.numpy() for t in g))
            small.backward(spec, x_np, kept, out_np, d * spec.output_size, state, initial, dstates, tail)
            if not ctx.bias:
                g[2] = g[3] = None
            grads += [*g, None, *dstates, *[None] * (2 - nstate)]
        return (None, dx, *grads)
