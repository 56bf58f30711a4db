"""Recurrent layers beyond torch.nn parity: gradcheck, lengths semantics, step mode, the Cho GRU,
Keras-style init, the backend seam, NaN propagation and CUDA."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import kernels

F64 = {"dtype": torch.float64}
CELLS = [(rnnkit.RNN, {"nonlinearity": "tanh"}), (rnnkit.RNN, {"nonlinearity": "relu"}), (rnnkit.LSTM, {}),
         (rnnkit.LSTM, {"proj_size": 2}), (rnnkit.GRU, {}), (rnnkit.GRU, {"reset_after": False})]
CELL_IDS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru", "gru_reset_before"]


@pytest.mark.parametrize("cls,extra", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_gradcheck(cls, extra, with_lengths):
    torch.manual_seed(0)
    layer = cls(3, 4, num_layers=2, bidirectional=True, batch_first=True, **extra, **F64)
    x = torch.randn(3, 5, 3, **F64, requires_grad=True)
    lengths = torch.tensor([5, 2, 3]) if with_lengths else None
    names = [name for name, _ in layer.named_parameters()]

    def fn(x, *weights):
        out, hidden = torch.func.functional_call(layer, dict(zip(names, weights)), (x,), {"lengths": lengths})
        return (out, *(hidden if isinstance(hidden, tuple) else (hidden,)))

    weights = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *weights), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("cls,extra", CELLS, ids=CELL_IDS)
def test_lengths_equal_running_each_sequence_alone(cls, extra):
    """Padding must not leak: each row equals the same sequence run unpadded, in both directions."""
    torch.manual_seed(1)
    layer = cls(3, 5, num_layers=2, bidirectional=True, batch_first=True, **extra, **F64)
    lengths = [6, 1, 4]
    x = torch.randn(3, 6, 3, **F64)
    x[1, 1:] = 1e3  # garbage in the padding
    out, hidden = layer(x, lengths=lengths)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    for row, n in enumerate(lengths):
        alone_out, alone_hidden = layer(x[row:row + 1, :n])
        alone_hidden = alone_hidden if isinstance(alone_hidden, tuple) else (alone_hidden,)
        torch.testing.assert_close(out[row, :n], alone_out[0])
        assert torch.all(out[row, n:] == 0), "outputs past a sequence's end must be zero"
        for h, h_alone in zip(hidden, alone_hidden):
            torch.testing.assert_close(h[:, row], h_alone[:, 0])


@pytest.mark.parametrize("cls,extra", CELLS, ids=CELL_IDS)
def test_step_mode_equals_full_sequence(cls, extra):
    torch.manual_seed(2)
    layer = cls(3, 5, num_layers=3, batch_first=True, **extra, **F64)
    x = torch.randn(2, 7, 3, **F64)
    full_out, full_state = layer(x)
    state, outputs = None, []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state)
        outputs.append(y)
    torch.testing.assert_close(torch.stack(outputs, dim=1), full_out)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    full_state if isinstance(full_state, tuple) else (full_state,)):
        torch.testing.assert_close(a, b)


def test_step_rejects_bidirectional():
    layer = rnnkit.GRU(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="step: a bidirectional layer"):
        layer.step(torch.randn(2, 3))


def test_gru_reset_before_matches_cho_equations():
    """Cho et al. 2014, eqs. 5-8: r = σ(W_r x + U_r h), z = σ(W_z x + U_z h),
    h~ = tanh(W x + U (r ⊙ h)), h' = z ⊙ h + (1 - z) ⊙ h~ (with biases)."""
    torch.manual_seed(3)
    hidden = 4
    layer = rnnkit.GRU(3, hidden, reset_after=False, **F64)
    x = torch.randn(6, 2, 3, **F64)
    out, _ = layer(x)
    Wr, Wz, W = layer.weight_ih_l0.split(hidden)
    Ur, Uz, U = layer.weight_hh_l0.split(hidden)
    br, bz, b = (layer.bias_ih_l0 + layer.bias_hh_l0).split(hidden)
    h = torch.zeros(2, hidden, **F64)
    expected = []
    for x_t in x:
        r = torch.sigmoid(x_t @ Wr.T + h @ Ur.T + br)
        z = torch.sigmoid(x_t @ Wz.T + h @ Uz.T + bz)
        candidate = torch.tanh(x_t @ W.T + (r * h) @ U.T + b)
        h = z * h + (1 - z) * candidate
        expected.append(h)
    torch.testing.assert_close(out, torch.stack(expected))
    # and it is a different function from the default (reset after the matmul)
    after = rnnkit.GRU(3, hidden, **F64)
    after.load_state_dict(layer.state_dict())
    assert not torch.allclose(after(x)[0], out)


def test_keras_init():
    torch.manual_seed(4)
    layer = rnnkit.LSTM(10, 16, num_layers=2, init="keras")
    w_hh = layer.weight_hh_l0  # [4H, H]: orthonormal columns, as Keras's orthogonal recurrent kernel
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(16), atol=1e-5, rtol=0)
    assert torch.all(layer.bias_ih_l0[16:32] == 1) and torch.all(layer.bias_ih_l0[:16] == 0)
    assert torch.all(layer.bias_hh_l0 == 0)
    limit = (6 / (10 + 64)) ** 0.5  # glorot_uniform over the Keras kernel [I, 4H]
    assert layer.weight_ih_l0.abs().max() <= limit and layer.weight_ih_l0.abs().max() > 0.9 * limit
    torch_init = rnnkit.LSTM(10, 16)
    assert torch_init.weight_hh_l0.abs().max() <= 16 ** -0.5


def test_nan_input_propagates():
    layer = rnnkit.LSTM(2, 3, batch_first=True)
    x = torch.randn(2, 4, 2)
    x[0, 1, 0] = float("nan")
    out, (h, c) = layer(x)
    assert torch.isnan(out[0, 1:]).all() and torch.isnan(h[0, 0]).all()
    assert not torch.isnan(out[1]).any(), "a NaN in one sequence must not touch another"


def test_backend_seam_dispatches_and_can_be_forced(monkeypatch):
    calls = []
    original = kernels.BACKENDS["reference"]

    def spy(*args):
        calls.append(args[0].mode)
        return original.run_layer(*args)

    monkeypatch.setitem(kernels.BACKENDS, "reference", original._replace(run_layer=spy))
    layer = rnnkit.GRU(3, 4, num_layers=2, backend="reference")
    layer(torch.randn(5, 2, 3))
    assert calls == ["GRU", "GRU"]
    for bad in ("nope", "FUSED", None, 1):  # refused when the layer is made, not at its first call
        with pytest.raises(ValueError, match=r"backend: expected 'auto' or one of \['fused', 'reference', 'torch'\], "
                                             f"got {bad!r}"):
            rnnkit.GRU(3, 4, backend=bad)
    layer.backend = "nope"  # set afterwards: every path that reads it refuses it
    for call in (lambda: layer(torch.randn(5, 2, 3)), lambda: layer.step(torch.randn(2, 3)), lambda: layer.streamer(1)):
        with pytest.raises(ValueError, match="backend: expected 'auto' or one of"):
            with torch.no_grad():
                call()


def test_layer_hook_sees_every_layer():
    layer = rnnkit.RNN(3, 4, num_layers=3, bidirectional=True)
    seen = []
    handle = layer.register_layer_hook(lambda i, out: seen.append((i, tuple(out.shape))))
    layer(torch.randn(5, 2, 3))
    handle.remove()
    layer(torch.randn(5, 2, 3))
    assert seen == [(0, (5, 2, 8)), (1, (5, 2, 8)), (2, (5, 2, 8))]


def test_parametrized_weight_is_used():
    """A weight computed by torch.nn.utils.parametrize (not a registered parameter) is the one used."""
    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    torch.manual_seed(0)
    layer = rnnkit.GRU(3, 4, **F64)
    plain = rnnkit.GRU(3, 4, **F64)
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(2)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight_hh_l0", Double())
    x = torch.randn(5, 2, 3, **F64)
    torch.testing.assert_close(layer(x)[0], plain(x)[0])
    with torch.no_grad():
        torch.testing.assert_close(layer.step(x[0])[0], plain.step(x[0])[0])
    # with autograd on, the parametrization's original (a parameter of a submodule) needs a gradient,
    # alone: step() must not take the no-grad streaming path
    for name, p in layer.named_parameters():
        p.requires_grad_(name.startswith("parametrizations."))
    y, _ = layer.step(x[0])
    y.sum().backward()
    assert layer.parametrizations.weight_hh_l0.original.grad is not None


@pytest.mark.parametrize("cls,extra", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("layers", [1, 2])
def test_final_state_is_its_own_tensor(cls, extra, backend, layers):
    """h_n (and c_n) share no memory with the output: an in-place change to one leaves the other
    (one layer and direction returns its final states with a new dim, not a stacked copy)."""
    layer = cls(3, 4, num_layers=layers, backend=backend, **extra)
    x = torch.randn(5, 2, 3)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out, hn = layer(x)
        states = hn if isinstance(hn, tuple) else (hn,)
        assert states[0].shape == (layers, 2, layer.spec.output_size)
        torch.testing.assert_close(states[0][-1], out[-1])
        before = out.detach().clone()
        for s in states:
            s.detach().add_(1)
        assert torch.equal(out.detach(), before)
