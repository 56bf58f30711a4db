"""The recurrent regularisers (weight_drop, recurrent_dropout, zoneout) of RNN, LSTM (with and without
a projection), GRU (both variants) and LayerNormLSTM against a direct implementation written here: a Python loop over the cell equations
with the same masks, drawn from torch's generator in the layer's documented order (per layer and
direction: weight_drop's mask of W_hh, recurrent dropout's of h, zoneout's of h, of c)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import rnnkit
from rnnkit import kernels
from rnnkit.kernels.fused import current, record, runtime

CLASSES = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "ln_lstm": rnnkit.LayerNormLSTM,
           "lstm_proj": functools.partial(rnnkit.LSTM, proj_size=2),
           "grux": functools.partial(rnnkit.GRU, reset_after=False)}
LSTMS = ("lstm", "ln_lstm", "lstm_proj")
"""The kinds with a cell state c."""


def _cell(kind, x_t, h, c, w, w_hh, drop):
    """One step of the cell with weights w (W_hh replaced by w_hh), written out: (h̃, c̃); drop
    multiplies h where it enters W_hh."""
    w_ih, b_ih, b_hh, ln = w.w_ih, w.b_ih, w.b_hh, w.ln
    hin = h if drop is None else h * drop
    if kind == "rnn":
        return torch.tanh(x_t @ w_ih.T + b_ih + hin @ w_hh.T + b_hh), None
    if kind in ("gru", "grux"):
        H = h.shape[1]
        gi, gh = x_t @ w_ih.T + b_ih, hin @ w_hh.T + b_hh
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        if kind == "gru":
            n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        else:  # reset_after=False: the reset gate scales the dropped h inside W_hn's product
            n = torch.tanh(gi[:, 2 * H:] + (r * hin) @ w_hh[2 * H:].T + b_hh[2 * H:])
        return (1 - z) * n + z * h, None
    H = c.shape[1]
    if kind == "ln_lstm":
        G = 4 * H
        pre = (F.layer_norm(x_t @ w_ih.T, (G,), ln[:G], None, 1e-5) + b_ih
               + F.layer_norm(hin @ w_hh.T, (G,), ln[G:2 * G], None, 1e-5) + b_hh)
    else:
        pre = x_t @ w_ih.T + b_ih + hin @ w_hh.T + b_hh
    i, f, g, o = (pre[:, k * H:(k + 1) * H] for k in range(4))
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    cc = F.layer_norm(c_new, (H,), ln[8 * H:9 * H], ln[9 * H:], 1e-5) if kind == "ln_lstm" else c_new
    h_new = torch.sigmoid(o) * torch.tanh(cc)
    return (h_new if w.w_hr is None else h_new @ w.w_hr.T), c_new


def _zone_mask(shape, rate, dtype):
    """Zoneout's mask as ``loops.noise.zone_mask`` documents it, written in numpy: element i is 1 where the
    low 32 bits of splitmix64's mix of seed + i * 0x9E3779B97F4A7C15 are below rate * 2^32, the seed
    drawn from torch's generator."""
    seed = int(torch.randint(0, 2**62, (1,)))
    u64 = np.uint64
    with np.errstate(over="ignore"):
        x = u64(seed) + np.arange(np.prod(shape), dtype=u64) * u64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> u64(30))) * u64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> u64(27))) * u64(0x94D049BB133111EB)
        x = x ^ (x >> u64(31))
    keep = (x & u64(0xFFFFFFFF)) < u64(round(rate * 2**32))
    return torch.from_numpy(keep.reshape(shape)).to(dtype)


def test_zoneout_mask_rate_and_threads():
    """The compiled draw keeps about rate of the units, the same mask on one thread or split over two."""
    like = torch.empty(0)
    torch.manual_seed(3)
    z = kernels.zoneout_mask((64, 16, 128), 0.3, like)
    assert set(z.unique().tolist()) == {0.0, 1.0} and abs(z.mean().item() - 0.3) < 0.01
    torch.manual_seed(3)
    with kernels.policy(dataclasses.replace(current(), threads=1)):
        assert torch.equal(kernels.zoneout_mask((64, 16, 128), 0.3, like), z)
    assert kernels.zoneout_mask((2, 3, 4), 1.0, like).eq(1).all()
    assert kernels.zoneout_mask((2, 3, 4), 0.0, like).eq(0).all()


def _draw(layer, T, B, dtype, rates):
    """The masks the layer draws, in its order, from torch's generator as it stands."""
    wd, rd, (zh, zc) = rates
    masks = {}
    for k in range(layer.num_layers):
        for d in range(layer.num_directions):
            w_hh = layer.direction_weights(k, d).w_hh
            P, H = layer.spec.output_size, layer.hidden_size
            wm = torch.empty_like(w_hh).bernoulli_(1 - wd).div_(1 - wd) if wd else None
            rm = torch.empty(B, P, dtype=dtype).bernoulli_(1 - rd).div_(1 - rd) if rd else None
            mh = _zone_mask((T, B, P), zh, dtype) if zh else None
            mc = _zone_mask((T, B, H), zc, dtype) if zc else None
            masks[k, d] = (wm, rm, mh, mc)
    return masks


def _direct(kind, layer, x, masks, lengths):
    """The layer's forward on time-major x <f>[T, B, I], written out, with these masks
    (masks[layer, direction] = (W_hh mask, h mask, zoneout of h <f>[T, B, P], of c))."""
    T, B = x.shape[:2]
    lengths = torch.as_tensor(lengths if lengths is not None else [T] * B)
    finals = []
    for k in range(layer.num_layers):
        outs = []
        for d in range(layer.num_directions):
            w = layer.direction_weights(k, d)
            wm, rm, mh, mc = masks[k, d]
            w_hh = w.w_hh if wm is None else w.w_hh * wm
            h = x.new_zeros(B, layer.spec.output_size)
            c = x.new_zeros(B, layer.hidden_size) if kind in LSTMS else None
            out = [None] * T
            for t in (reversed(range(T)) if d else range(T)):
                hn, cn = _cell(kind, x[t], h, c, w, w_hh, rm)
                if mh is not None:
                    hn = mh[t] * h + (1 - mh[t]) * hn
                if mc is not None:
                    cn = mc[t] * c + (1 - mc[t]) * cn
                valid = (t < lengths)[:, None]
                out[t] = torch.where(valid, hn, 0.0)
                h = torch.where(valid, hn, h)
                c = torch.where(valid, cn, c) if c is not None else None
            outs.append(torch.stack(out))
            finals.append(h)
        x = torch.cat(outs, dim=2)
    return x, torch.stack(finals)


def _layer(kind, backend, **kw):
    torch.manual_seed(1)
    return CLASSES[kind](3, 4, backend=backend, dtype=torch.float64, **kw)


def _compare(kind, backend, rates, lengths=None, num_layers=1, bidirectional=False, train=True, batch=3):
    wd, rd, zone = rates
    layer = _layer(kind, backend, num_layers=num_layers, bidirectional=bidirectional, weight_drop=wd,
                   recurrent_dropout=rd, zoneout=zone).train(train)
    T, B = 5, batch
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    zh, zc = (zone, zone) if not isinstance(zone, tuple) else zone
    zc = zc if kind in LSTMS else 0.0
    torch.manual_seed(7)
    out, hidden = layer(x, lengths=lengths)
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    torch.manual_seed(7)
    if train:
        masks = _draw(layer, T, B, x.dtype, (wd, rd, (zh, zc)))
    else:  # evaluation: no dropout; zoneout's expectation
        masks = {(k, d): (None, None, x.new_full((T, B, layer.spec.output_size), zh) if zh else None,
                          x.new_full((T, B, 4), zc) if zc else None)
                 for k in range(num_layers) for d in range(layer.num_directions)}
    want, want_h = _direct(kind, layer, x, masks, lengths)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h)
    weight = torch.randn_like(out)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad((out * weight).sum() + h_n.sum(), params)
    expected = torch.autograd.grad((want * weight).sum() + want_h.sum(), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    return out


CASES = [(0.5, 0.0, 0.0), (0.0, 0.4, 0.0), (0.0, 0.0, 0.3), (0.3, 0.3, 0.3)]


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("kind", sorted(CLASSES))
@pytest.mark.parametrize("rates", CASES, ids=["weight_drop", "recurrent_dropout", "zoneout", "all"])
def test_matches_direct_implementation(kind, backend, rates):
    _compare(kind, backend, rates)


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_lengths_bidirectional_stack(kind, backend):
    _compare(kind, backend, (0.3, 0.3, 0.3), lengths=[5, 2, 4], num_layers=2, bidirectional=True)


def test_lstm_zoneout_rates_of_its_own():
    _compare("lstm", "auto", (0.0, 0.0, (0.5, 0.0)))
    _compare("lstm", "auto", (0.0, 0.0, (0.0, 0.5)), lengths=[3, 5, 1])


FUSED = tuple(sorted(CLASSES))
"""The cells whose compiled loops take recurrent dropout and zoneout: all of them."""


def _paths(layer, x, **kw):
    with record() as plans:
        out, _ = layer(x, **kw)
        out.sum().backward()
    return {p.path for p in plans}


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_fused_backend_runs_the_masks_itself(kind):
    """A regularised training call of RNN, LSTM or GRU runs on the fused backend's compiled loop
    (never the reference, oneDNN's LSTM layer, the small-training or the step loop); float32 too."""
    torch.manual_seed(0)
    layer = CLASSES[kind](3, 4, recurrent_dropout=0.3, zoneout=0.2)
    x = torch.randn(6, 2, 3, requires_grad=True)
    paths = _paths(layer, x, lengths=[6, 4])
    assert paths == {"compiled_loop"}
    # the other paths planned everywhere (oneDNN's LSTM layer, the step loop, the small-training path):
    # the regularised call still takes the compiled loop, the plain one does not
    everywhere = dataclasses.replace(current(), onednn_lstm_min_macs=0, onednn_lstm_train_min_macs=0,
                                     step_loop_min_weight=0, step_loop_min_batch=1, step_loop_min_steps=1,
                                     small_train_max_macs=1 << 62)
    with kernels.policy(everywhere):
        assert _paths(layer, x) == {"compiled_loop"}
        if kind not in ("lstm_proj", "grux"):  # these two have no other path
            assert "compiled_loop" not in _paths(CLASSES[kind](3, 4), x)


@pytest.mark.parametrize("kind", FUSED)
@pytest.mark.parametrize("loop", ["split", "transposed"])
def test_fused_split_and_transposed_loops(kind, loop):
    """The batch split across threads (the rows functions' chunks) and W_hh transposed at batch 1."""
    if loop == "split" and runtime.loops().MAX_THREADS < 2:
        pytest.skip("numba has one thread here")
    options = {"par_min_rows": 1, "par_row_bytes": 1 << 62, "threads": 2} if loop == "split" else {
        "transpose_min_steps": 1}
    with kernels.policy(dataclasses.replace(current(), **options)):
        _compare(kind, "auto", (0.0, 0.3, 0.3), lengths=[5, 3, 4] if loop == "split" else None,
                 batch=3 if loop == "split" else 1)


@pytest.mark.parametrize("kind", FUSED)
def test_fused_float32_matches_reference(kind):
    x = torch.randn(6, 3, 3)
    outs = []
    for backend in ("fused", "reference"):
        torch.manual_seed(0)
        layer = CLASSES[kind](3, 4, backend=backend, recurrent_dropout=0.3, zoneout=0.2, bidirectional=True)
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)
        out, _ = layer(xi, lengths=[6, 2, 5])
        out.pow(2).sum().backward()
        outs.append((out, xi.grad, layer.weight_hh_l0.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_double_backward_keeps_the_masks():
    torch.manual_seed(0)
    layer = rnnkit.GRU(3, 4, dtype=torch.float64, recurrent_dropout=0.4, zoneout=0.3)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for backend in ("fused", "reference"):
        layer.backend = backend
        torch.manual_seed(2)
        out, _ = layer(x)
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        grads.append((g, gg))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_evaluation(kind):
    """eval(): weight_drop and recurrent dropout off (the plain layer's output), zoneout's expectation."""
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    plain = _layer(kind, "auto").eval()
    dropped = _layer(kind, "auto", weight_drop=0.5, recurrent_dropout=0.5).eval()
    torch.testing.assert_close(dropped(x)[0], plain(x)[0])
    _compare(kind, "auto", (0.5, 0.5, 0.3), train=False, lengths=[5, 3, 4])


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_step_and_streamer_follow_zoneout_evaluation_rule(kind):
    layer = _layer(kind, "auto", zoneout=0.4, num_layers=2).eval()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        out, _ = layer(x)
        state, steps = None, []
        for x_t in x:
            y, state = layer.step(x_t, state)
            steps.append(y)
        s = layer.streamer(batch_size=2)
        streamed = torch.stack([s(x_t) for x_t in x])
    torch.testing.assert_close(torch.stack(steps), out)
    torch.testing.assert_close(streamed, out)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_seeded_and_reproducible(kind):
    layer = _layer(kind, "auto", weight_drop=0.3, recurrent_dropout=0.3, zoneout=0.3)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(layer(x)[0])
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[2])


def test_training_no_grad_still_regularises():
    """A training-mode call without autograd takes no streaming shortcut that would skip the masks."""
    layer = _layer("gru", "auto", recurrent_dropout=0.5)
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        outs = {tuple(layer(x)[0].flatten().tolist()) for _ in range(6)}
        layer.eval()
        assert len({tuple(layer(x)[0].flatten().tolist()) for _ in range(3)}) == 1
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    layer.train()
    with torch.no_grad():
        outs = {tuple(layer(x)[0].flatten().tolist()) for _ in range(6)}
    assert len(outs) > 1


@pytest.mark.parametrize("name", ["weight_drop", "recurrent_dropout", "zoneout"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "0.2", True])
def test_invalid_rates(name, value):
    with pytest.raises(ValueError, match=rf"{name}: expected a number in \[0, 1\).*got {value!r}"):
        rnnkit.LSTM(3, 4, **{name: value})


def test_zoneout_pair_only_for_lstms():
    rnnkit.LayerNormLSTM(3, 4, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"zoneout: expected .* one number \(the cell has no c state\), got \(0.1, 0.2\)"):
        rnnkit.GRU(3, 4, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"zoneout: expected .* a pair"):
        rnnkit.LSTM(3, 4, zoneout=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=r"zoneout: expected a number in \[0, 1\).*got 2"):
        rnnkit.LSTM(3, 4, zoneout=(0.1, 2))


def test_torch_backend_refuses_noise():
    layer = rnnkit.LSTM(3, 4, backend="torch", recurrent_dropout=0.2)
    with pytest.raises(ValueError, match="backend: 'torch' does not run recurrent_dropout or zoneout"):
        layer(torch.randn(5, 2, 3))


def test_repr_names_the_rates():
    assert "weight_drop=0.5, recurrent_dropout=0.25, zoneout=(0.1, 0.2)" in repr(
        rnnkit.LSTM(3, 4, weight_drop=0.5, recurrent_dropout=0.25, zoneout=(0.1, 0.2)))


def test_model_config_keys_build_regularised_layers():
    from rnnkit.model import ModelConfig, SequenceModel
    cfg = ModelConfig.from_dict({"cell": "lstm", "vocab_size": 20, "embedding_dim": 8, "hidden_size": 8,
                                 "num_layers": 2, "output_size": 20, "output_activation": "softmax",
                                 "variational_dropout": 0.2, "weight_drop": 0.5, "recurrent_dropout": 0.25,
                                 "zoneout": [0.1, 0.2]})
    layers = list(SequenceModel(cfg).stack)
    assert [(m.weight_drop, m.recurrent_dropout, m._zone) for m in layers] == [(0.5, 0.25, (0.1, 0.2))] * 2
    for bad, message in (({"cell": "gru", "zoneout": [0.1, 0.2]}, "zoneout: a pair"),
                         ({"cell": "mingru", "recurrent_dropout": 0.1}, "recurrent_dropout: the minimal cells"),
                         ({"zoneout": 1.0}, r"zoneout: expected a number in \[0, 1\)"),
                         ({"weight_drop": 1.0}, "weight_drop")):
        with pytest.raises(ValueError, match=message):
            ModelConfig.from_dict(bad, "x.toml")


def test_ar_tar_penalty():
    """train.ar / train.tar: the penalty on the last layer's output, before and after its dropout."""
    from rnnkit.model import ModelConfig, SequenceModel
    from rnnkit.tasks.language_model import _OutputActivations
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(cell="gru", vocab_size=11, embedding_dim=6, hidden_size=5, output_size=11,
                                      output_activation="softmax", variational_dropout=0.5))
    seen = _OutputActivations(model)
    ids = torch.randint(0, 11, (3, 7))
    torch.manual_seed(1)
    model(ids, target=ids)
    penalty = seen.penalty(2.0, 1.0)
    torch.manual_seed(1)  # the same masks: embedding output, then the stack output
    h = model.stack[0](model._inputs(ids))[0]
    dropped = model.drop(h)
    want = 2.0 * dropped.pow(2).mean() + (h[:, 1:] - h[:, :-1]).pow(2).mean()
    torch.testing.assert_close(penalty, want)
    assert not torch.allclose(dropped, h)


def test_language_model_trains_with_regularisers():
    from rnnkit.tasks.language_model import LanguageModel
    text = ["the cat sat on the mat", "a dog sat on a log", "the dog and the cat"] * 10
    lm = LanguageModel.fit(text, tokenizer="word", hidden_size=8, embedding_dim=8, num_layers=2, epochs=1,
                           batch_size=2, bptt=5, weight_drop=0.3, recurrent_dropout=0.2, zoneout=0.1,
                           variational_dropout=0.2, ar=2.0, tar=1.0)
    assert lm.experiment.train.ar == 2.0 and lm.experiment.model.zoneout == 0.1
    assert lm.model.stack[0].recurrent_dropout == 0.2
