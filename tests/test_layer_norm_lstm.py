"""LayerNormLSTM: Ba et al.'s equations, its layer-norm properties, and its place in models."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.io.keras import to_keras

F64 = {"dtype": torch.float64}


def _ln(v, gain, shift=0.0, eps=1e-5):
    """Layer normalisation written out: (v - mean) / sqrt(biased variance + eps) · gain + shift."""
    mu = v.mean(dim=-1, keepdim=True)
    var = ((v - mu) ** 2).mean(dim=-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + eps) * gain + shift


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_matches_ba_et_al_equations(backend):
    """Ba et al. 2016, eqs. 20-22, with separate normalisation of W_x x and W_h h and of c_t."""
    torch.manual_seed(0)
    H = 4
    layer = rnnkit.LayerNormLSTM(3, H, backend=backend, **F64)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 2, 3, **F64)
    out, (hn, cn) = layer(x)
    w_ih, w_hh, b_ih, b_hh, ln = (getattr(layer, n) for n in
                                  ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "layer_norm_l0"))
    g_x, g_h, g_c, b_c = ln[:4 * H], ln[4 * H:8 * H], ln[8 * H:9 * H], ln[9 * H:]
    h = c = torch.zeros(2, H, **F64)
    for t in range(5):
        pre = _ln(x[t] @ w_ih.T, g_x) + _ln(h @ w_hh.T, g_h) + b_ih + b_hh
        i, f, g, o = pre.split(H, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(_ln(c, g_c, b_c))
        torch.testing.assert_close(out[t], h, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(hn[0], h, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(cn[0], c, atol=1e-12, rtol=1e-10)


def test_input_scale_invariance():
    """The input term is normalised, so scaling every input by a positive constant changes nothing
    (to the epsilon's effect); a plain LSTM's output changes."""
    torch.manual_seed(1)
    x = torch.randn(6, 3, 5, **F64)
    ln_layer = rnnkit.LayerNormLSTM(5, 8, **F64)
    plain = rnnkit.LSTM(5, 8, **F64)
    with torch.no_grad():
        torch.testing.assert_close(ln_layer(x * 50.0)[0], ln_layer(x)[0], atol=1e-3, rtol=0)
        assert (plain(x * 50.0)[0] - plain(x)[0]).abs().max() > 0.1


def test_parameters_init_and_state_dict():
    layer = rnnkit.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True, init="keras")
    names = [n for n, _ in layer.named_parameters()]
    assert "layer_norm_l1_reverse" in names and "weight_hr_l0" not in names
    ln = layer.layer_norm_l0
    assert ln.shape == (40,)
    assert torch.all(ln[:36] == 1) and torch.all(ln[36:] == 0)
    assert torch.all(layer.bias_ih_l0[4:8] == 1)  # Keras's unit forget bias
    other = rnnkit.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(other(x)[0], layer(x)[0])


def test_step_mode_and_lengths():
    torch.manual_seed(2)
    layer = rnnkit.LayerNormLSTM(3, 5, num_layers=2, batch_first=True, **F64)
    x = torch.randn(2, 6, 3, **F64)
    full, (hn, cn) = layer(x, lengths=[6, 4])
    state, ys = None, []
    for t in range(4):
        y, state = layer.step(x[1:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1)[0], full[1, :4])
    torch.testing.assert_close(state[0][:, 0], hn[:, 1])
    assert torch.all(full[1, 4:] == 0)


def test_in_a_sequence_model_it_learns():
    """cell = "lstm_ln" from a config; init = "uniform" leaves the gains at 1; a few steps of Adam
    fit a small regression far better than the start."""
    torch.manual_seed(3)
    model = rnnkit.SequenceModel.from_config({"cell": "lstm_ln", "input_size": 2, "hidden_size": 16,
                                              "output_size": 1, "output_per": "sequence", "init": "uniform"})
    assert torch.all(model.stack[0].layer_norm_l0[:144] == 1)
    x = torch.randn(64, 10, 2)
    y = x[:, :, 0].sum(dim=1, keepdim=True) / 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x)[0], y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_errors():
    with pytest.raises(ValueError, match="layer_norm: only an LSTM without projection"):
        rnnkit.GRU.__mro__[1](3, 4, layer_norm=True)  # RecurrentBase with mode "" (neither LSTM)
    with pytest.raises(ValueError, match="Keras has no layer-normalised LSTM"):
        to_keras(rnnkit.LayerNormLSTM(3, 4))



def test_fused_inference_keeps_nothing_for_backward():
    """Without a gradient to compute (no_grad, or nothing that requires one) the fused recurrence runs
    its inference path, outside autograd, and keeps nothing: the layer's plan decides, as autograd's
    ``needs_input_grad`` is set under no_grad too."""
    import dataclasses

    from rnnkit import kernels
    from rnnkit.kernels import fused

    # so small a call would stream the whole stack: not here
    no_stream = dataclasses.replace(fused.current(), stream_sequence_max_macs=0)
    layer = rnnkit.LayerNormLSTM(3, 4, backend="fused")
    x = torch.randn(6, 2, 3)
    with kernels.policy(no_stream), fused.record() as plans:
        with torch.no_grad():
            inference, _ = layer(x)
        training, _ = layer(x)
        training.sum().backward()
        layer.requires_grad_(False)
        frozen, _ = layer(x)
    assert [(p.path, p.call.training) for p in plans] == [("compiled_loop", False), ("compiled_loop", True),
                                                          ("compiled_loop", False)]
    assert training.grad_fn is not None and frozen.grad_fn is None and inference.grad_fn is None
    torch.testing.assert_close(inference, training.detach())
    torch.testing.assert_close(frozen, inference)
