"""Helpers of the streaming loops (each cell's ``stream``, ``stream_par`` and ``stream_units``).

One time step of a whole (unidirectional) stack, for ``step()`` and ``Streamer``: every layer in one
compiled call, with a per-call overhead of about one numba dispatch. So that the call passes few
arguments, the weights come as addresses: ptrs <int64>[L, 7] holds, per layer, the addresses of the
C-contiguous w_ih <f>[G*H, I_l], w_hh <f>[G*H, P], b_ih, b_hh <f>[G*H] (zeros without bias),
w_hr <f>[P, H] (LSTM projection; 0 without) and ln <f>[10H] (layer-normalised LSTM; 0 without),
then I_l. They point into the parameters themselves (every update is seen); the caller keeps those
alive and checks every shape. x_addr is the input <f>[steps, B, I_0], one or more time steps
(C-contiguous). The state h <f>[L, B, P] (c <f>[L, B, H]) is updated in place; the top layer's new h
at each step is written to y_addr <f>[steps, B, P]. One signature for all, ``(ptrs, x_addr, y_addr,
steps, h, c, flag)``: c a dummy and flag False where the cell has none. Each cell writes its
``_stream_rows`` for one chunk of the batch; ``kernels`` makes its ``stream`` and ``stream_par`` of it
(sequences are independent: no synchronisation between chunks), ``units`` its ``stream_units``."""

from __future__ import annotations

import numpy as np
from numba import carray, prange, types
from numba.extending import intrinsic, register_jitable

from .common import chunk, consts, dot, put_rows, set_
from .jit import jit


@register_jitable
def step_rows(ptrs, x_addr, y_addr, t, batch, b0, h):
    """Step t's input rows <f>[b, I_0] and output rows <f>[b, P] from row b0 of the arrays at x_addr
    <f>[steps, batch, I_0] and y_addr <f>[steps, batch, P], for a chunk whose state h <f>[L, b, P]
    has b rows."""
    b, P, I0 = h.shape[1], h.shape[2], ptrs[0, 6]
    row = t * batch + b0
    return (carray(at_address(x_addr + row * I0 * h.itemsize, h), (b, I0)),
            carray(at_address(y_addr + row * P * h.itemsize, h), (b, P)))


@register_jitable
def put_top(yout, h):
    """yout <f>[b, P] = the top layer's state h[L - 1]."""
    for r in range(yout.shape[0]):
        set_(yout[r], h[h.shape[0] - 1, r])


@register_jitable
def state_chunk(s, b0, b1):
    """A C-contiguous copy of rows b0:b1 of a stack's state s <f>[L, B, N]."""
    dst = np.empty((s.shape[0], b1 - b0, s.shape[2]), s.dtype)
    for layer in range(s.shape[0]):
        for b in range(b1 - b0):
            set_(dst[layer, b], s[layer, b0 + b])
    return dst


@register_jitable
def put_state_chunk(s, b0, src):
    """Rows b0: of a stack's state s <f>[L, B, N] = src <f>[L, b, N]."""
    for layer in range(s.shape[0]):
        put_rows(s[layer], b0, src[layer])


@intrinsic
def at_address(typingctx, addr, like):
    """A pointer to ``like``'s dtype at the integer address ``addr`` (for ``numba.carray``)."""
    ptr = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))
    return ptr(types.intp, like), codegen


@register_jitable
def layer_weights(p, like, G, P):
    """One layer's (w_ih, w_hh, b_ih, b_hh) from its row p of ptrs, as arrays of like's dtype."""
    return (carray(at_address(p[0], like), (G, p[6])), carray(at_address(p[1], like), (G, P)),
            carray(at_address(p[2], like), G), carray(at_address(p[3], like), G))


def kernels(rows, cell_state: bool):
    """A cell's streaming kernels from its rows function ``rows(ptrs, x_addr, y_addr, steps, batch, b0,
    h, c, flag)``, which runs the rows b0: of a batch of ``batch`` whose state h (and c, where
    ``cell_state``) holds just those rows, through every step and layer: ``(serial, parallel)``,
    ``serial(ptrs, x_addr, y_addr, steps, h, c, flag)`` over the whole batch and ``parallel(n, ...)``
    with the batch in n chunks, one per thread, each on a copy of its rows of the state (for whole
    no-grad calls of a large batch)."""

    def serial(ptrs, x_addr, y_addr, steps, h, c, flag):  # the signature spelled out: *args costs ~0.3 µs a call
        rows(ptrs, x_addr, y_addr, steps, h.shape[1], 0, h, c, flag)

    def split(n, ptrs, x_addr, y_addr, steps, h, c, flag):
        for k in prange(n):
            b0, b1 = chunk(k, n, h.shape[1])
            hk = state_chunk(h, b0, b1)
            ck = state_chunk(c, b0, b1) if cell_state else c
            rows(ptrs, x_addr, y_addr, steps, h.shape[1], b0, hk, ck, flag)
            put_state_chunk(h, b0, hk)
            if cell_state:
                put_state_chunk(c, b0, ck)

    return jit(serial, made_from=(rows, ".serial")), jit(split, parallel=True, made_from=(rows, ".parallel"))


# One step of a stack at batch 1 with each layer's hidden units split among n threads: thread k
# computes the gate rows of its units u0:u1 (``chunk`` of H), from its own rows of W_ih and W_hh, and
# their new state; a layer's threads meet at the end of its ``prange`` (the next layer, and the next
# step, read all of h). At batch 1 a step reads every weight once and does little else, so the split
# shares the reading of the weights between the threads' caches.
@register_jitable
def unit_rows(x, w, b, out, ab, H, blocks, u0, u1):
    """out[0, r] = w[r] · x[0] + b[r] for the rows r = q·H + u, u0 <= u < u1, of each gate block q."""
    for q in range(blocks):
        r0, r1 = q * H + u0, q * H + u1
        dot(x, w[r0:r1], out[:, r0:r1], ab, False, True)
        o, bq = out[0, r0:r1], b[r0:r1]
        for j in range(r1 - r0):
            o[j] += bq[j]


def units(update, blocks: int):
    """A cell's batch-1 streaming kernel with each layer's units split among n threads, with the
    streaming kernels' arguments after n: ``kernel(n, ptrs, x_addr, y_addr, steps, h, c, flag)``.
    ``update(gx, gh, hold, h, c, layer, u0, u1, flag)`` is the cell's step on units u0:u1 given
    gx = W_ih x + b_ih and gh = W_hh h_{t-1} + b_hh <f>[blocks·H] (their units' rows written), hold
    <f>[H] = h_{t-1} (read by every thread) and h = the layer's state row <f>[H], updated in place."""

    def kernel(n, ptrs, x_addr, y_addr, steps, h, c, flag):
        L, _, H = h.shape
        ab = consts(h)
        gx = np.empty((1, blocks * H), h.dtype)
        gh = np.empty((1, blocks * H), h.dtype)
        hold = np.empty((1, H), h.dtype)
        for t in range(steps):
            xin, yout = step_rows(ptrs, x_addr, y_addr, t, 1, 0, h)
            for layer in range(L):
                w_ih, w_hh, bi, bh = layer_weights(ptrs[layer], h, blocks * H, H)
                set_(hold[0], h[layer, 0])
                for k in prange(n):
                    u0, u1 = chunk(k, n, H)
                    unit_rows(xin, w_ih, bi, gx, ab, H, blocks, u0, u1)
                    unit_rows(hold, w_hh, bh, gh, ab, H, blocks, u0, u1)
                    update(gx[0], gh[0], hold[0], h[layer, 0], c, layer, u0, u1, flag)
                xin = h[layer]
            put_top(yout, h)

    return jit(kernel, parallel=True, made_from=(update, ".units"))
