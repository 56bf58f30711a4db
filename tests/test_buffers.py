"""The pool of reusable scratch buffers behind the fused kernels (rnnkit.kernels.buffers)."""

import pytest
import torch

import rnnkit
from rnnkit.kernels.buffers import MIN_BYTES, BufferPool, pool

BIG = (MIN_BYTES // 4 + 10,)  # float32 elements: just above the pooling threshold


def test_a_buffer_is_reused_only_once_every_tensor_made_from_it_is_gone():
    p = BufferPool()
    a = p.empty(BIG, torch.float32)
    view = a[5:]
    addr = a.data_ptr()
    del a
    b = p.empty(BIG, torch.float32)  # the first buffer is still held by `view`
    assert b.data_ptr() != addr
    del view
    c = p.empty(BIG, torch.float32)
    assert c.data_ptr() == addr
    assert p.held_bytes >= 2 * BIG[0] * 4


def test_a_free_buffer_serves_requests_of_half_its_size_and_more():
    p = BufferPool()
    n = BIG[0] * 3
    addr = p.empty((n,), torch.float32).data_ptr()  # freed at once
    assert p.empty((n * 2 // 3,), torch.float32).data_ptr() == addr  # a shorter sequence's buffer
    assert p.empty((n + 1,), torch.float32).data_ptr() != addr  # too big for it
    assert p.empty((n // 2 - 100,), torch.float32).data_ptr() != addr  # under half: a buffer of its own


def test_varying_sizes_do_not_pile_up():
    """Sequences of varying length (a new size each call) reuse buffers of up to twice their size;
    what the pool holds stays within a few of the largest request."""
    p = BufferPool()
    gen = torch.Generator().manual_seed(0)
    sizes = torch.randint(BIG[0], 5 * BIG[0], (300,), generator=gen).tolist()
    for n in sizes:
        kept = p.empty((n,), torch.float32)  # in use while the next is taken (forward, then backward)
        p.empty((n // 2 + BIG[0],), torch.float32)
        del kept
    assert p.held_bytes <= 6 * max(sizes) * 4


def test_outgrown_buffers_do_not_pile_up():
    """Sequences a little longer every step (a curriculum, or batches sorted by length): no free buffer
    is big enough, so each step takes new ones; the pool keeps at most about one step's worth of the
    outgrown ones (it kept ~64 requests' worth before)."""
    p = BufferPool()
    for step in range(100):
        n = BIG[0] * (10 + step) // 10
        kept = [p.empty((n * k,), torch.float32) for k in (1, 3, 1)]  # one step's buffers, in use together
        need = sum(t.numel() * 4 for t in kept)
        del kept
    assert p.held_bytes <= 2.1 * need


def test_buffers_are_aligned_shaped_and_typed():
    p = BufferPool()
    for shape, dtype in (((3, 100_000), torch.float32), ((2, 7, 20_000), torch.float64)):
        t = p.empty(shape, dtype)
        assert t.shape == shape and t.dtype == dtype and t.is_contiguous()
        assert t.data_ptr() % 64 == 0
        t.fill_(1.5)  # writable, the whole extent
        assert float(t.sum()) == 1.5 * t.numel()


def test_small_requests_and_other_dtypes_are_not_pooled():
    p = BufferPool()
    small = p.empty((10,), torch.float32)
    ints = p.empty(BIG, torch.int64)
    assert small.shape == (10,) and ints.dtype == torch.int64
    assert p.held_bytes == 0


def test_a_free_buffer_not_taken_for_max_idle_requests_is_dropped():
    p = BufferPool(max_idle=3)
    p.empty(BIG, torch.float32)  # freed at once
    other = (BIG[0] * 2,)
    for _ in range(4):
        p.empty(other, torch.float32)
    assert p.held_bytes == pytest.approx(other[0] * 4, rel=0.01)  # only the one still taken remains
    p.clear()
    assert p.held_bytes == 0


@pytest.mark.parametrize("pooled_projection", [False, True], ids=["", "pooled-projection"])
@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN, rnnkit.LayerNormLSTM])
def test_graphs_alive_at_once_do_not_share_buffers(cls, pooled_projection, monkeypatch):
    """Two forward passes whose graphs are both alive, then both backwards (in the other order): each
    gets the gradients of its own input, as the reference backend computes them (float64: the
    comparison is exact to rounding). pooled_projection: the input projection x W_ih^T, which the
    layer keeps for backward, comes from the pool too (as it does from the policy's linear_pool_min_bytes)."""
    import contextlib
    import dataclasses

    from rnnkit import kernels
    torch.manual_seed(0)
    T, B, I, H = 40, 64, 16, 128  # big enough that the kept arrays and gradient buffers are pooled
    fused, ref = cls(I, H, backend="fused").double(), cls(I, H, backend="reference").double()
    pool.clear()
    requests = []
    policy = contextlib.nullcontext()
    if pooled_projection:
        policy = kernels.policy(dataclasses.replace(kernels.fused.current(), linear_pool_min_bytes=0))
        empty = pool.empty
        monkeypatch.setattr(pool, "empty", lambda shape, dtype: requests.append(tuple(shape)) or empty(shape, dtype))
    ref.load_state_dict(fused.state_dict())
    xs = [torch.randn(T, B, I, dtype=torch.float64) for _ in range(2)]
    weights = [torch.randn(T, B, H, dtype=torch.float64) for _ in range(2)]
    lengths = torch.randint(T // 2, T + 1, (B,))  # with lengths, every cell also keeps its states
    grads = {}
    for name, m in (("fused", fused), ("reference", ref)):
        m.zero_grad()
        with policy if name == "fused" else contextlib.nullcontext():
            outs = [m(x, lengths=lengths)[0] for x in xs]
            for o, w in reversed(list(zip(outs, weights))):
                (o * w).sum().backward()
        grads[name] = [p.grad.clone() for p in m.parameters()]
    for a, b in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert pool.held_bytes > 0  # the test did take its buffers from the pool
    if pooled_projection:
        assert requests.count((T * B, fused.spec.gates * H)) == 2  # one projection per forward pass
