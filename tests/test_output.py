"""OutputLayer: pooling over valid steps, activations, losses vs torch's functional losses, tying."""

import pytest
import torch
from torch.nn import functional as F

from rnnkit.layers import Embedding, OutputLayer, pool, sequence_mask

LENGTHS = torch.tensor([3, 1, 4])


@pytest.fixture
def h():
    """<float>[3, 4, 2]; padded steps hold huge values that pooling must ignore."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 2)
    return x.masked_fill(~sequence_mask(LENGTHS, 3, 4).unsqueeze(-1), 1e6)


def test_sequence_mask():
    assert sequence_mask([2, 1], 2, 3).tolist() == [[True, True, False], [True, False, False]]
    with pytest.raises(ValueError, match=r"lengths: expected every length in \[1, 3\]"):
        sequence_mask([4, 1], 2, 3)
    with pytest.raises(ValueError, match="lengths: expected 2 entries"):
        sequence_mask([1, 1, 1], 2, 3)
    with pytest.raises(TypeError, match="lengths: expected a 1-D integer tensor"):
        sequence_mask(torch.tensor([1.0, 2.0]), 2, 3)


def test_pooling_uses_valid_steps_only(h):
    valid = [h[b, : int(n)] for b, n in enumerate(LENGTHS)]
    torch.testing.assert_close(pool(h, LENGTHS, "last"), torch.stack([v[-1] for v in valid]))
    torch.testing.assert_close(pool(h, LENGTHS, "mean"), torch.stack([v.mean(0) for v in valid]))
    torch.testing.assert_close(pool(h, LENGTHS, "max"), torch.stack([v.max(0).values for v in valid]))
    torch.testing.assert_close(pool(h, None, "mean"), h.mean(1))
    torch.testing.assert_close(pool(h, None, "last"), h[:, -1])


def test_bidirectional_last_takes_each_directions_final_state(h):
    pooled = pool(h, LENGTHS, "last", directions=2)  # features: [forward | backward]
    expected = torch.stack([torch.stack([h[b, int(n) - 1, 0], h[b, 0, 1]]) for b, n in enumerate(LENGTHS)])
    torch.testing.assert_close(pooled, expected)


def test_output_shapes_and_activations(h):
    step = OutputLayer(2, 5, activation="softmax")
    logits = step(h, LENGTHS)
    assert logits.shape == (3, 4, 5)
    torch.testing.assert_close(step.activate(logits).sum(-1), torch.ones(3, 4))
    seq = OutputLayer(2, 1, activation="sigmoid", per="sequence", pooling="mean")
    logits = seq(h, LENGTHS)
    assert logits.shape == (3, 1)
    torch.testing.assert_close(logits, seq.linear(pool(h, LENGTHS, "mean")))
    torch.testing.assert_close(seq.activate(logits), torch.sigmoid(logits))
    assert torch.equal(OutputLayer(2, 3).activate(logits), logits)
    with pytest.raises(ValueError, match=r"h: expected <float>\[batch, time, 2\], got shape \(3, 4\)"):
        step(h[..., 0])
    with pytest.raises(ValueError, match="activation: expected one of 'linear', 'sigmoid', 'softmax', got 'tanh'"):
        OutputLayer(2, 3, activation="tanh")
    with pytest.raises(ValueError, match="pooling: expected one of"):
        OutputLayer(2, 3, pooling="first")


def test_losses_match_torch_functional():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5)
    mask = sequence_mask(LENGTHS, 3, 4)
    classes = torch.randint(0, 5, (3, 4))
    soft = OutputLayer(2, 5, activation="softmax")
    torch.testing.assert_close(soft.loss(logits, classes), F.cross_entropy(logits.reshape(-1, 5), classes.reshape(-1)))
    torch.testing.assert_close(soft.loss(logits, classes, mask), F.cross_entropy(logits[mask], classes[mask]))
    probs = torch.rand(3, 4, 5)
    sig = OutputLayer(2, 5, activation="sigmoid")
    torch.testing.assert_close(sig.loss(logits, probs, mask), F.binary_cross_entropy_with_logits(logits[mask], probs[mask]))
    lin = OutputLayer(2, 5)
    torch.testing.assert_close(lin.loss(logits, probs), F.mse_loss(logits, probs))
    # padded steps do not count: changing their targets leaves the loss unchanged
    torch.testing.assert_close(lin.loss(logits, probs.masked_fill(~mask.unsqueeze(-1), 9.0), mask),
                               lin.loss(logits, probs, mask))


def test_loss_errors():
    logits = torch.zeros(2, 3, 4)
    with pytest.raises(TypeError, match="target: expected integer class ids for a softmax output, got torch.float32"):
        OutputLayer(2, 4, activation="softmax").loss(logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"target: expected shape \(2, 3, 4\)"):
        OutputLayer(2, 4).loss(logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"mask: expected <bool>\[2, 3\]"):
        OutputLayer(2, 4).loss(logits, torch.zeros(2, 3, 4), torch.ones(2, 3))


def test_tie_to_shares_the_parameter():
    emb, out = Embedding(7, 4), OutputLayer(4, 7, activation="softmax")
    out.tie_to(emb)
    assert out.weight is emb.weight and out.linear.weight is emb.weight
    with pytest.raises(ValueError, match=r"embedding: expected a weight of shape \(7, 4\) .* got \(7, 5\)"):
        OutputLayer(4, 7).tie_to(Embedding(7, 5))
