"""Bad input to the recurrent layers: the right exception, and a message naming the argument."""

from __future__ import annotations

import pytest
import torch

import rnnkit

X = torch.randn(5, 3, 4)  # (time, batch, features)


@pytest.mark.parametrize("call,error,pattern", [
    (lambda m: m(torch.randn(5, 3, 4, 1)), ValueError, r"input: expected 3 dims .* got shape \(5, 3, 4, 1\)"),
    (lambda m: m(torch.randn(4)), ValueError, r"input: expected 3 dims .* got shape \(4,\)"),
    (lambda m: m(torch.randn(5, 3, 6)), ValueError, r"input: expected 4 features .* got shape \(5, 3, 6\)"),
    (lambda m: m(torch.randn(0, 3, 4)), ValueError, r"input: expected at least one time step, got shape \(0, 3, 4\)"),
    (lambda m: m(torch.randn(0, 4)), ValueError, r"input: expected at least one time step, got shape \(0, 4\)"),
    (lambda m: m(torch.ones(5, 3, 4, dtype=torch.long)), TypeError, r"input: expected a floating-point tensor"),
    (lambda m: m(X.double()), TypeError, r"input: expected dtype torch.float32 .* got torch.float64"),
    (lambda m: m([[1.0]]), TypeError, r"input: expected a torch.Tensor"),
    (lambda m: m(X, torch.zeros(1, 3, 8)), TypeError, r"hx: expected a tuple \(h_0, c_0\)"),
    (lambda m: m(X, (torch.zeros(2, 3, 8), torch.zeros(1, 3, 8))), ValueError,
     r"h_0: expected shape \(1, 3, 8\) .* got \(2, 3, 8\)"),
    (lambda m: m(X, (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))), ValueError,
     r"h_0: expected shape \(1, 3, 8\) .* got \(1, 2, 8\)"),  # batch mismatch with the input
    (lambda m: m(X, (torch.zeros(1, 3, 8), torch.zeros(1, 3, 7))), ValueError,
     r"c_0: expected shape \(1, 3, 8\)"),
    (lambda m: m(X[:, 0], (torch.zeros(2, 8), torch.zeros(1, 8))), ValueError,  # unbatched: the shapes as given
     r"h_0: expected shape \(1, 8\) \(num_layers\*num_directions, 8\) for an unbatched \(2-D\) input, got \(2, 8\)"),
    (lambda m: m(X[:, 0], [torch.zeros(1, 8), torch.zeros(8)]), ValueError,
     r"c_0: expected shape \(1, 8\) .* got \(8,\)"),
    (lambda m: m(X, lengths=[5, 6, 2]), ValueError, r"lengths: expected every length <= 5 .* got 6"),
    (lambda m: m(X, lengths=[5, 0, 2]), ValueError, r"lengths: expected every length >= 1, got 0"),
    (lambda m: m(X, lengths=[5, -1, 2]), ValueError, r"lengths: expected every length >= 1, got -1"),
    (lambda m: m(X, lengths=[5, 2]), ValueError, r"lengths: expected 3 entries .* got 2"),
    (lambda m: m(X, lengths=[5.0, 2.0, 1.0]), TypeError, r"lengths: expected a 1-D integer tensor"),
    (lambda m: m(X, lengths="abc"), TypeError,
     r"lengths: expected a 1-D integer tensor or sequence of 3 lengths, got str"),
    (lambda m: m(X, (torch.zeros(1, 3, 8),) * 3), TypeError,
     r"hx: expected a tuple \(h_0, c_0\) for LSTM, got a tuple of 3"),
    (lambda m: m.step(torch.randn(3, 5)), ValueError, r"x_t: expected 4 features"),
    (lambda m: m.step(torch.randn(4)), ValueError, r"x_t: expected 2 dims \(batch, features\), got shape \(4,\)"),
    (lambda m: m.step(torch.ones(3, 4, dtype=torch.long)), TypeError, r"x_t: expected a floating-point tensor"),
    (lambda m: m.step([[1.0] * 4]), TypeError, r"x_t: expected a torch.Tensor, got list"),
    (lambda m: m.step(torch.randn(2, 3, 4)), ValueError, r"x_t: expected 2 dims \(batch, features\)"),
])
def test_bad_input_is_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(rnnkit.LSTM(4, 8))


def test_unbatched_state_may_be_a_list():
    """As in torch.nn: an unbatched input's (h_0, c_0) given as a list."""
    lstm = rnnkit.LSTM(4, 8)
    state = [torch.randn(1, 8), torch.randn(1, 8)]
    y, (h, c) = lstm(X[:, 0], state)
    want = lstm(X[:, :1], tuple(s.unsqueeze(1) for s in state))
    torch.testing.assert_close((y, (h, c)), (want[0][:, 0], tuple(s[:, 0] for s in want[1])))


def test_dropout_on_one_layer_warns_as_torch_nn():
    with pytest.warns(UserWarning, match="dropout=0.5 with num_layers=1 has no effect"):
        rnnkit.GRU(4, 8, dropout=0.5)


def test_packed_input_with_lengths_is_rejected():
    packed = torch.nn.utils.rnn.pack_padded_sequence(X, [5, 3, 2])
    with pytest.raises(ValueError, match="lengths: a PackedSequence carries its own lengths"):
        rnnkit.GRU(4, 8)(packed, lengths=[5, 3, 2])


def test_rnn_state_must_be_a_tensor():
    with pytest.raises(TypeError, match="hx: expected a tensor h_0, got tuple"):
        rnnkit.GRU(4, 8)(X, (torch.zeros(1, 3, 8),))


@pytest.mark.parametrize("kwargs,pattern", [
    ({"hidden_size": 0}, r"hidden_size: expected an integer >= 1, got 0"),
    ({"num_layers": 0}, r"num_layers: expected an integer >= 1, got 0"),
    ({"dropout": 1.5}, r"dropout: expected a number in \[0, 1\], got 1.5"),
    ({"proj_size": 8}, r"proj_size: expected less than hidden_size=8, got 8"),
    ({"init": "glorot"}, r"init: expected 'torch' or 'keras', got 'glorot'"),
])
def test_bad_constructor_arguments(kwargs, pattern):
    args = {"input_size": 4, "hidden_size": 8} | kwargs
    with pytest.raises(ValueError, match=pattern):
        rnnkit.LSTM(**args)


def test_bad_nonlinearity_and_projection_on_gru():
    with pytest.raises(ValueError, match="nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'"):
        rnnkit.RNN(4, 8, nonlinearity="sigmoid")
    with pytest.raises(TypeError):
        rnnkit.GRU(4, 8, proj_size=2)  # GRU has no proj_size argument, as in torch.nn
