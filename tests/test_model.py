"""SequenceModel: shapes for every cell and both stack forms, state carry, lengths, tying, init,
locked dropout, and a tiny learning run."""

import pytest
import torch

from rnnkit.layers import LSTM, LockedDropout
from rnnkit.model import ModelConfig, SequenceModel, detach_state

CELLS = ["lstm", "gru", "rnn", "rnn_relu"]
SMALL = dict(hidden_size=6, num_layers=2)


def tokens_model(**fields) -> SequenceModel:
    return SequenceModel(ModelConfig(**{"vocab_size": 11, "embedding_dim": 5, **SMALL, **fields}))


@pytest.mark.parametrize("variational", [0.0, 0.3], ids=["multilayer", "layer-list"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_shapes_for_every_cell_and_stack_form(cell, bidirectional, variational):
    model = tokens_model(cell=cell, bidirectional=bidirectional, variational_dropout=variational,
                         output_size=3)
    assert len(model.stack) == (2 if variational else 1)
    logits, state = model(torch.randint(0, 11, (4, 7)), lengths=[7, 3, 1, 5])
    assert logits.shape == (4, 7, 3)
    rows = 2 * (2 if bidirectional else 1)
    expected = model.init_state(4)
    for got, want in zip(*(s if cell == "lstm" else (s,) for s in (state, expected))):
        assert got.shape == want.shape == (rows, 4, 6)


def test_continuous_inputs_and_per_sequence_output():
    model = SequenceModel(ModelConfig(input_size=3, hidden_size=4, output_size=2, output_per="sequence",
                                      pooling="max", cell="gru"))
    assert model.embedding is None
    logits, state = model(torch.randn(5, 6, 3))
    assert logits.shape == (5, 2) and state.shape == (1, 5, 4)
    with pytest.raises(ValueError, match=r"x: expected <float>\[batch, time, 3\] \(input_size\), got torch.int64"):
        model(torch.zeros(5, 6, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x: expected token ids <int64>\[batch, time\]"):
        tokens_model()(torch.zeros(2, 3, 1, dtype=torch.long))


@pytest.mark.parametrize("variational", [0.0, 0.3], ids=["multilayer", "layer-list"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_carry_across_chunks_equals_one_pass(cell, variational):
    torch.manual_seed(0)
    model = tokens_model(cell=cell, variational_dropout=variational, dropout=0.0, output_size=11).eval()
    x = torch.randint(0, 11, (3, 9))
    with torch.no_grad():
        full, full_state = model(x)
        first, state = model(x[:, :4])
        second, state = model(x[:, 4:], state=detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], dim=1), full)
    for got, want in zip(*(s if cell == "lstm" else (s,) for s in (state, full_state))):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_sequence_matches_the_sequence_alone(bidirectional):
    torch.manual_seed(0)
    model = tokens_model(bidirectional=bidirectional, output_per="sequence", output_size=2,
                         padding_idx=0).eval()
    short = torch.randint(1, 11, (1, 3))
    padded = torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    batch = torch.cat([padded, torch.randint(1, 11, (1, 7))])
    with torch.no_grad():
        alone, _ = model(short)
        both, _ = model(batch, lengths=[3, 7])
    torch.testing.assert_close(both[:1], alone)


def test_state_errors_and_detach():
    model = tokens_model()
    with pytest.raises(TypeError, match=r"state: expected a tuple \(h, c\) for an LSTM, got Tensor"):
        model(torch.zeros(2, 3, dtype=torch.long), state=torch.zeros(2, 2, 6))
    with pytest.raises(ValueError, match=r"state: expected tensors of shape \(2, 2, size\)"):
        model(torch.zeros(2, 3, dtype=torch.long), state=model.init_state(3))
    _, state = model(torch.zeros(2, 3, dtype=torch.long))
    assert all(s.requires_grad for s in state)
    assert not any(s.requires_grad for s in SequenceModel.detach_state(state))
    assert detach_state(None) is None
    gru_state = tokens_model(cell="gru")(torch.zeros(2, 3, dtype=torch.long))[1]
    assert gru_state.requires_grad and not detach_state(gru_state).requires_grad


def test_tied_weights_share_one_parameter():
    model = tokens_model(embedding_dim=12, bidirectional=True, tie_weights=True, output_size=11,
                         output_activation="softmax")
    assert model.output.weight is model.embedding.weight
    assert sum(p is model.embedding.weight for p in model.parameters()) == 1
    with pytest.raises(ValueError, match=r"tie_weights: needs embedding_dim == hidden_size \* directions = 6, "
                                         r"got embedding_dim=5"):
        ModelConfig(vocab_size=11, embedding_dim=5, hidden_size=6, output_size=11, tie_weights=True)


def test_config_errors_and_from_config():
    with pytest.raises(ValueError, match="config: cell: expected 'lstm', 'lstm_ln', 'gru', 'rnn', 'rnn_relu', 'mingru' or 'minlstm', got 'tree'"):
        SequenceModel.from_config({"cell": "tree"})
    with pytest.raises(ValueError, match="config: hidden: unknown key .*did you mean 'hidden_size'"):
        SequenceModel.from_config({"hidden": 3})
    with pytest.raises(ValueError, match="dropout, variational_dropout: set one of them"):
        ModelConfig(dropout=0.2, variational_dropout=0.2)
    # vocabulary checks wait for the model: a task may set vocab_size after reading the config
    late = ModelConfig(padding_idx=0, tie_weights=True, embedding_dim=128)
    with pytest.raises(ValueError, match="tie_weights: needs token inputs"):
        SequenceModel(late)
    with pytest.raises(ValueError, match="padding_idx: expected a token id below vocab_size=5, got 7"):
        SequenceModel(ModelConfig(vocab_size=5, padding_idx=7))
    with pytest.raises(ValueError, match="tie_weights: needs output_size == vocab_size = 5, got output_size=1"):
        SequenceModel(late.model_copy(update={"vocab_size": 5}))
    model = SequenceModel.from_config({"input_size": 2, "hidden_size": 3})
    assert model.config == ModelConfig(input_size=2, hidden_size=3)
    assert SequenceModel.from_config(model.config.to_dict()).config == model.config


def test_init_schemes():
    model = tokens_model(init="uniform", init_range=0.05, padding_idx=0)
    assert all(p.abs().max() <= 0.05 for p in model.parameters())
    assert torch.equal(model.embedding.weight[0], torch.zeros(5))
    keras = tokens_model(init="keras", cell="lstm")
    layer = keras.stack[0]
    assert isinstance(layer, LSTM) and torch.all(layer.bias_ih_l0[6:12] == 1.0)  # unit forget bias
    assert torch.all(keras.output.linear.bias == 0) and keras.embedding.weight.abs().max() <= 0.05


def test_predict_is_activated_gradient_free_and_keeps_mode():
    model = tokens_model(output_size=4, output_activation="softmax", dropout=0.5)
    probs = model.predict(torch.randint(0, 11, (2, 3)))
    assert model.training and not probs.requires_grad
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))


def test_locked_dropout_mask_is_constant_across_time():
    torch.manual_seed(0)
    drop = LockedDropout(0.5)
    out = drop(torch.ones(4, 6, 8))
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(out, out[:, :1].expand_as(out))  # same mask at every step
    assert not torch.equal(out[0], out[1])  # a different mask per sequence
    x = torch.randn(2, 3, 4)
    assert drop.eval()(x) is x


def test_learns_a_trivial_task():
    """Next-token prediction on counting sequences (t+1 mod 5): loss falls far below its start.
    Plain SGD by hand keeps the test free of torch.optim's one-off import cost (~1 s)."""
    torch.manual_seed(0)
    model = tokens_model(cell="gru", num_layers=1, hidden_size=16, vocab_size=5, embedding_dim=8,
                         output_size=5, output_activation="softmax")
    losses = []
    for _ in range(30):
        x = (torch.randint(0, 5, (16, 1)) + torch.arange(7)) % 5
        logits, _ = model(x[:, :-1])
        loss = model.loss(logits, x[:, 1:], lengths=torch.full((16,), 6))
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 1.0 * p.grad
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
