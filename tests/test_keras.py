"""Keras weight lists ↔ rnnkit, checked against the Keras formulas written out here in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.io.keras import from_keras, to_keras

I, H, T, B = 3, 4, 6, 2


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def keras_lstm(x, kernel, recurrent, bias):
    """Keras LSTM, gate order i, f, c, o; x [B, T, I] → outputs [B, T, H]."""
    h = np.zeros((x.shape[0], H))
    c = np.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, cc, o = np.split(z, 4, axis=1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
        h = sigmoid(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, 1)


def keras_gru(x, kernel, recurrent, bias, reset_after):
    """Keras GRU, gate order z, r, h; bias [2, 3H] when reset_after else [3H]."""
    h = np.zeros((x.shape[0], H))
    b_in, b_rec = (bias[0], bias[1]) if reset_after else (bias, np.zeros_like(bias))
    outs = []
    for t in range(x.shape[1]):
        xz, xr, xh = np.split(x[:, t] @ kernel + b_in, 3, axis=1)
        if reset_after:
            rz, rr, rh = np.split(h @ recurrent + b_rec, 3, axis=1)
            z, r = sigmoid(xz + rz), sigmoid(xr + rr)
            hh = np.tanh(xh + r * rh)
        else:
            z = sigmoid(xz + h @ recurrent[:, :H])
            r = sigmoid(xr + h @ recurrent[:, H:2 * H])
            hh = np.tanh(xh + (r * h) @ recurrent[:, 2 * H:])
        h = z * h + (1 - z) * hh
        outs.append(h)
    return np.stack(outs, 1)


def keras_simple_rnn(x, kernel, recurrent, bias):
    h = np.zeros((x.shape[0], H))
    outs = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ kernel + h @ recurrent + bias)
        outs.append(h)
    return np.stack(outs, 1)


def random_keras_weights(rng, gates, bias_shape):
    return [rng.normal(size=(I, gates * H)), rng.normal(size=(H, gates * H)) * 0.5, rng.normal(size=bias_shape)]


CASES = [
    ("lstm", lambda: rnnkit.LSTM(I, H, batch_first=True, dtype=torch.float64), 4, (4 * H,),
     keras_lstm),
    ("gru", lambda: rnnkit.GRU(I, H, batch_first=True, dtype=torch.float64), 3, (2, 3 * H),
     lambda x, k, r, b: keras_gru(x, k, r, b, True)),
    ("gru_reset_before", lambda: rnnkit.GRU(I, H, batch_first=True, reset_after=False, dtype=torch.float64),
     3, (3 * H,), lambda x, k, r, b: keras_gru(x, k, r, b, False)),
    ("simple_rnn", lambda: rnnkit.RNN(I, H, batch_first=True, dtype=torch.float64), 1, (H,), keras_simple_rnn),
]


@pytest.mark.parametrize("name,make,gates,bias_shape,formula", CASES, ids=[c[0] for c in CASES])
def test_converted_layer_matches_keras_formula(name, make, gates, bias_shape, formula):
    rng = np.random.default_rng(0)
    weights = random_keras_weights(rng, gates, bias_shape)
    x = rng.normal(size=(B, T, I))
    layer = from_keras(make(), [weights])
    ours, _ = layer(torch.from_numpy(x))
    np.testing.assert_allclose(ours.detach().numpy(), formula(x, *weights), atol=1e-12)


@pytest.mark.parametrize("name,make,gates,bias_shape,formula", CASES, ids=[c[0] for c in CASES])
def test_round_trip(name, make, gates, bias_shape, formula):
    layer = make()
    back = from_keras(make(), to_keras(layer))
    x = torch.randn(B, T, I, dtype=torch.float64)
    torch.testing.assert_close(back(x)[0], layer(x)[0], atol=1e-12, rtol=1e-12)
    rng = np.random.default_rng(1)
    weights = random_keras_weights(rng, gates, bias_shape)
    for a, b in zip(to_keras(from_keras(make(), [weights]))[0], weights):
        np.testing.assert_allclose(a, b, atol=1e-12)  # keras → rnnkit → keras is exact


def test_stacked_bidirectional_round_trip_and_layout():
    layer = rnnkit.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    weights = to_keras(layer)
    assert len(weights) == 2 and len(weights[0]) == 6  # forward then backward: kernel, recurrent, bias
    assert weights[1][0].shape == (2 * H, 3 * H)  # layer 2 reads both directions
    back = from_keras(rnnkit.GRU(I, H, num_layers=2, bidirectional=True, dtype=torch.float64), weights)
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(back(x)[0], layer(x)[0])


def test_no_bias_layers_convert():
    layer = rnnkit.LSTM(I, H, bias=False)
    assert len(to_keras(layer)[0]) == 2
    from_keras(rnnkit.LSTM(I, H, bias=False), to_keras(layer))


def test_bad_keras_weights_are_named():
    layer = rnnkit.LSTM(I, H)
    weights = to_keras(layer)
    bad = [[weights[0][0], weights[0][1][:, :-1], weights[0][2]]]
    with pytest.raises(ValueError, match=r"weights\[0\]\[1\] \(recurrent_kernel\): expected shape \(4, 16\)"):
        from_keras(layer, bad)
    with pytest.raises(ValueError, match=r"weights: expected 1 weight lists"):
        from_keras(layer, weights * 2)
    with pytest.raises(ValueError, match=r"weights\[0\]: expected 3 arrays"):
        from_keras(layer, [weights[0][:2]])
    with pytest.raises(ValueError, match="Keras has no LSTM projection"):
        to_keras(rnnkit.LSTM(I, H, proj_size=2))
    with pytest.raises(ValueError, match=r"bias\): expected shape \(2, 12\)"):
        from_keras(rnnkit.GRU(I, H), [[np.zeros((I, 12)), np.zeros((H, 12)), np.zeros(12)]])
