"""rnnkit's RNN/LSTM/GRU against torch.nn with identical weights: outputs, final states and every
gradient, over the full grid of options, on every backend that supports the call."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit import kernels

CELLS = {  # name: (rnnkit class, torch class, extra kwargs)
    "rnn_tanh": (rnnkit.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnkit.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, torch.nn.LSTM, {}),
    "lstm_proj": (rnnkit.LSTM, torch.nn.LSTM, {"proj_size": 3}),
    "gru": (rnnkit.GRU, torch.nn.GRU, {}),
}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
BATCH, TIME, FEATURES, HIDDEN = 4, 6, 5, 7
LENGTHS = torch.tensor([6, 2, 4, 1])  # unsorted on purpose, with a full-length and a length-1 row


def make_pair(cell: str, dtype: torch.dtype, backend: str, **options):
    ours_cls, torch_cls, extra = CELLS[cell]
    theirs = torch_cls(FEATURES, HIDDEN, dtype=dtype, **extra, **options)
    ours = ours_cls(FEATURES, HIDDEN, dtype=dtype, backend=backend, **extra, **options)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def initial_state(module: torch.nn.Module, dtype: torch.dtype, generator: torch.Generator):
    rows = module.num_layers * (2 if module.bidirectional else 1)
    h_size = module.proj_size or module.hidden_size
    h = torch.randn(rows, BATCH, h_size, dtype=dtype, generator=generator, requires_grad=True)
    if isinstance(module, torch.nn.LSTM):
        c = torch.randn(rows, BATCH, module.hidden_size, dtype=dtype, generator=generator, requires_grad=True)
        return (h, c)
    return h


def clone_leaf(hx):
    """A fresh leaf copy of a state (tensor or tuple) that records its gradient."""
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(clone_leaf(h) for h in hx)
    return hx.detach().clone().requires_grad_(True)


def flat(hidden) -> list[torch.Tensor]:
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


def run(module, x, hx, mode: str, batch_first: bool, ours: bool):
    """Run one module; returns padded output and the list of final state tensors."""
    if mode == "full":
        out, hidden = module(x, hx)
    elif mode == "lengths" and ours:
        out, hidden = module(x, hx, lengths=LENGTHS)
    else:  # packed input, for torch always and for rnnkit in "packed" mode
        packed = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
        out, hidden = module(packed, hx)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=TIME)
    return out, flat(hidden)


def backends_for(dtype: torch.dtype) -> list[str]:
    """The registered backends that can run an input of the grid's shape and this dtype on the CPU."""
    x = torch.empty(TIME, BATCH, FEATURES, dtype=dtype)
    return [name for name, b in kernels.BACKENDS.items() if b.supports(rnnkit.CellSpec("LSTM", 1), x, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_grid_covers_every_backend(dtype):
    """The grid below runs on every backend: the reference, the fused CPU kernels and torch's own."""
    assert backends_for(dtype) == ["reference", "torch", "fused"]


GRID = list(itertools.product(CELLS, [1, 2, 3], [False, True], [False, True], [True, False],
                              ["full", "lengths", "packed"], [False, True]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell,layers,bidirectional,batch_first,bias,mode,with_state", GRID,
                         ids=["-".join(map(str, g)) for g in GRID])
def test_matches_torch_nn(cell, layers, bidirectional, batch_first, bias, mode, with_state, dtype):
    for backend in backends_for(dtype):
        gen = torch.Generator().manual_seed(hash((cell, layers, bidirectional, batch_first, bias)) % 2**31)
        ours, theirs = make_pair(cell, dtype, backend, num_layers=layers, bidirectional=bidirectional,
                                 batch_first=batch_first, bias=bias)
        shape = (BATCH, TIME, FEATURES) if batch_first else (TIME, BATCH, FEATURES)
        x = torch.randn(shape, dtype=dtype, generator=gen)
        hx = initial_state(theirs, dtype, gen) if with_state else None
        results = []
        for module, is_ours in ((ours, True), (theirs, False)):
            xi, hxi = clone_leaf(x), clone_leaf(hx)
            out, finals = run(module, xi, hxi, mode, batch_first, is_ours)
            weights = [torch.randn(t.shape, dtype=dtype, generator=torch.Generator().manual_seed(i))
                       for i, t in enumerate([out, *finals])]
            loss = sum((w * t).sum() for w, t in zip(weights, [out, *finals]))
            named = [("input", xi), *(("hx", h) for h in (flat(hxi) if hxi is not None else [])),
                     *module.named_parameters()]
            grads = torch.autograd.grad(loss, [leaf for _, leaf in named])
            results.append((out, finals, dict(zip([name for name, _ in named], grads))))
        tol = TOLERANCE[dtype]
        (out_a, fin_a, grad_a), (out_b, fin_b, grad_b) = results
        torch.testing.assert_close(out_a, out_b, atol=tol, rtol=tol, msg=f"output ({backend})")
        for a, b in zip(fin_a, fin_b):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=f"final state ({backend})")
        assert list(grad_a) == list(grad_b)
        for name in grad_a:
            torch.testing.assert_close(grad_a[name], grad_b[name], atol=tol, rtol=tol,
                                       msg=f"gradient of {name} ({backend})")


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_loads_both_ways(cell):
    ours_cls, torch_cls, extra = CELLS[cell]
    ours = ours_cls(3, 6, num_layers=2, bidirectional=True, **extra)
    theirs = torch_cls(3, 6, num_layers=2, bidirectional=True, **extra)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in theirs.named_parameters()]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input_matches_torch(cell):
    ours, theirs = make_pair(cell, torch.float64, "auto", num_layers=2, bidirectional=True)
    x = torch.randn(TIME, FEATURES, dtype=torch.float64)
    out_a, hid_a = ours(x)
    out_b, hid_b = theirs(x)
    torch.testing.assert_close(out_a, out_b, atol=1e-10, rtol=1e-10)
    for a, b in zip(flat(hid_a), flat(hid_b)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(4, 8, num_layers=2, dropout=0.5)
    x = torch.randn(5, 3, 4)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0])
    layer.train()
    assert not torch.allclose(layer(x)[0], layer(x)[0])
