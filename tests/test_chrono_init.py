"""Chrono initialisation of the gate biases (Tallec & Ollivier 2018)."""

from __future__ import annotations

import pytest
import torch

import rnnkit


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.LayerNormLSTM])
def test_chrono_init(cls):
    """Tallec & Ollivier 2018: gate biases log(u), u ~ U[1, T-1]: LSTM forget = log u, input = -log u;
    GRU update = log u; the b_hh part of those gates zero; the other biases untouched."""
    torch.manual_seed(0)
    layer = cls(3, 500, num_layers=2, init="keras")
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    assert layer.chrono_init_(400) is layer
    H = 500
    for k in (0, 1):
        b_ih, b_hh = getattr(layer, f"bias_ih_l{k}"), getattr(layer, f"bias_hh_l{k}")
        keep = b_ih[H:2 * H]
        assert keep.min() >= 0 and keep.max() <= torch.log(torch.tensor(399.0)) + 1e-6
        assert abs(keep.exp().mean() - 200) < 15  # u is uniform on [1, 399]
        assert torch.all(b_hh[H:2 * H] == 0)
        if cls is not rnnkit.GRU:
            torch.testing.assert_close(b_ih[:H], -keep)
            torch.testing.assert_close(b_ih[2 * H:], before[f"bias_ih_l{k}"][2 * H:])
        else:
            torch.testing.assert_close(b_ih[2 * H:], before[f"bias_ih_l{k}"][2 * H:])
        torch.testing.assert_close(getattr(layer, f"weight_hh_l{k}"), before[f"weight_hh_l{k}"])


def test_chrono_init_errors_and_config():
    with pytest.raises(ValueError, match="chrono_init_: needs a gated cell"):
        rnnkit.RNN(3, 4).chrono_init_(100)
    with pytest.raises(ValueError, match="max_steps: expected an integer >= 3"):
        rnnkit.LSTM(3, 4).chrono_init_(2)
    with pytest.raises(ValueError, match="chrono_init_: the layer has no biases"):
        rnnkit.GRU(3, 4, bias=False).chrono_init_(100)
    with pytest.raises(ValueError, match="init: 'chrono' needs a gated cell"):
        rnnkit.ModelConfig(cell="rnn", init="chrono", chrono_max_steps=100)
    model = rnnkit.SequenceModel(rnnkit.ModelConfig(cell="lstm", hidden_size=8, init="chrono", chrono_max_steps=50))
    forget = model.stack[0].bias_ih_l0[8:16]
    assert forget.min() >= 0 and forget.max() <= torch.log(torch.tensor(49.0)) + 1e-6 and forget.std() > 0.1
