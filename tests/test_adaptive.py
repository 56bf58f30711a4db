"""Adaptive softmax output (``model.output = "adaptive"``): exact probabilities, its loss, tying,
cutoffs from frequencies, and a language model that trains, predicts, generates, evaluates and
round-trips through a checkpoint with it."""

from __future__ import annotations

import math

import pytest
import torch

import rnnkit
from rnnkit.layers.output import AdaptiveOutput, OutputLayer, frequency_cutoffs
from rnnkit.model import ModelConfig, SequenceModel
from rnnkit.tasks import LanguageModel

F64 = {"dtype": torch.float64}
WORDS = ("the cat sat on the mat . the dog sat on the log . a cat saw a dog . the bird sang on a tree . "
         "one fox ran past two owls near three old barns").split()


def _head(tied: bool = False):
    torch.manual_seed(0)
    head = AdaptiveOutput(8, 30, cutoffs=[5, 12, 20], div_value=2.0).double()  # clusters of 4, 2, 1 features
    embedding = torch.nn.Embedding(30, 8).double()
    if tied:
        head.tie_to(embedding)
    return head, embedding


@pytest.mark.parametrize("tied", [False, True], ids=["own_head", "tied_head"])
def test_probabilities_are_exact_and_the_loss_is_their_negative_log(tied):
    head, _ = _head(tied)
    h, target = torch.randn(3, 4, 8, **F64), torch.randint(0, 30, (3, 4))
    log_probs = head(h)
    assert log_probs.shape == (3, 4, 30)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 4, **F64), atol=1e-12, rtol=0)
    picked = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(head.target_log_prob(h, target), picked, atol=1e-12, rtol=0)
    torch.testing.assert_close(head.loss(log_probs, target), -picked.mean(), atol=1e-12, rtol=0)
    torch.testing.assert_close(head.activate(log_probs), log_probs.exp(), atol=1e-12, rtol=0)


def test_every_parameter_gets_a_gradient_when_targets_miss_a_cluster():
    """Targets all in the head: the tail clusters' gradients are zeros, not None (DistributedDataParallel
    needs every parameter's gradient at every step)."""
    head, _ = _head()
    head.target_log_prob(torch.randn(2, 3, 8, **F64), torch.zeros(2, 3, dtype=torch.long)).sum().backward()
    tail = list(head.adaptive.tail.parameters())
    assert all(p.grad is not None and not p.grad.any() for p in tail)


def test_tied_head_reads_the_embedding_rows():
    """The head's shortlist rows are the embedding's first cutoffs[0] rows: changing one changes the
    scores, the gradient reaches the embedding, and the head's state dict holds no copy of it."""
    head, embedding = _head(tied=True)
    h = torch.randn(2, 3, 8, **F64)
    before = head(h)
    with torch.no_grad():
        embedding.weight[2] += 1.0  # a shortlist id
    after = head(h)
    assert not torch.allclose(before, after)
    head.target_log_prob(h, torch.full((2, 3), 2)).sum().backward()
    assert embedding.weight.grad[:5].abs().sum() > 0 and embedding.weight.grad[5:].abs().sum() == 0
    assert not any("embedding" in name or "head.weight" in name for name in head.state_dict())
    with pytest.raises(ValueError, match=r"embedding: expected a weight of shape \(30, 8\)"):
        AdaptiveOutput(8, 30, [5]).tie_to(torch.nn.Embedding(30, 4))


def test_full_softmax_target_log_prob_equals_cross_entropy():
    torch.manual_seed(1)
    layer = OutputLayer(6, 9, activation="softmax")
    h, target = torch.randn(2, 5, 6), torch.randint(0, 9, (2, 5))
    want = -torch.nn.functional.cross_entropy(layer(h).reshape(-1, 9), target.reshape(-1), reduction="none")
    torch.testing.assert_close(layer.target_log_prob(h, target).reshape(-1), want)
    with pytest.raises(ValueError, match="activation='softmax'"):
        OutputLayer(6, 1).target_log_prob(h, target)


def test_frequency_cutoffs():
    # shares: 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0 -> 80% within ids < 2, 95% within ids < 4
    assert frequency_cutoffs(torch.tensor([50, 30, 10, 5, 3, 1, 1])) == [2, 4]
    assert frequency_cutoffs(torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]), shares=(0.5,)) == [5]
    assert frequency_cutoffs(torch.tensor([99, 1])) == [1]  # a small vocabulary: one cluster
    with pytest.raises(ValueError, match="counts: expected occurrences of at least 2 classes"):
        frequency_cutoffs(torch.tensor([0, 0, 0]))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="div_value: the last tail cluster's projection would have no features"):
        AdaptiveOutput(8, 30, cutoffs=[5, 12, 20])
    base = {"vocab_size": 20, "output_size": 20, "embedding_dim": 8, "hidden_size": 8, "output": "adaptive"}
    with pytest.raises(ValueError, match="output: 'adaptive' needs output_activation='softmax'"):
        SequenceModel(ModelConfig(**base, adaptive_cutoffs=[5]))
    with pytest.raises(ValueError, match="adaptive_cutoffs: output = 'adaptive' needs cutoffs"):
        SequenceModel(ModelConfig(**base, output_activation="softmax"))
    with pytest.raises(ValueError, match=r"adaptive_cutoffs: expected strictly increasing ids in \[1, 19\]"):
        SequenceModel(ModelConfig(**base, output_activation="softmax", adaptive_cutoffs=[8, 5]))
    with pytest.raises(ValueError, match="adaptive_cutoffs"):
        SequenceModel(ModelConfig(**base, output_activation="softmax", adaptive_cutoffs=[5, 20]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("adaptive_lm")
    rng = torch.Generator().manual_seed(0)
    # a Zipf-like corpus: word k appears about 1/(k+1) as often as the first
    weights = torch.tensor([1.0 / (k + 1) for k in range(len(set(WORDS)))])
    vocab = list(dict.fromkeys(WORDS))
    lines = [" ".join(vocab[int(i)] for i in torch.multinomial(weights, 12, True, generator=rng)) for _ in range(60)]
    torch.manual_seed(0)
    lm = LanguageModel.fit(lines + [" ".join(WORDS)] * 20, out_dir=out, output="adaptive", tie_weights=True,
                           embedding_dim=24, hidden_size=24, num_layers=1, epochs=3, bptt=10, batch_size=4,
                           lr=1e-2)
    return lm, out


def test_language_model_trains_with_adaptive_softmax(trained):
    lm, _ = trained
    cfg = lm.experiment.model
    assert cfg.output == "adaptive" and isinstance(lm.model.output, AdaptiveOutput)
    assert cfg.adaptive_cutoffs and cfg.adaptive_cutoffs == sorted(cfg.adaptive_cutoffs)
    assert cfg.adaptive_cutoffs[-1] < len(lm.vocab)
    assert lm.results["val_ppl"] < 0.5 * len(lm.vocab)  # well below guessing uniformly


def test_predict_generate_and_evaluate_use_exact_probabilities(trained, tmp_path):
    lm, _ = trained
    top = lm.predict_next("the cat sat on", k=len(lm.vocab) - 1)
    assert math.isclose(sum(p for _, p in top), 1.0, abs_tol=1e-5)  # every token but <pad>
    assert top[0][0] == "the"
    text = lm.generate("the", length=8, seed=0)
    assert text == lm.generate("the", length=8, seed=0) and len(text.split()) >= 1
    path = tmp_path / "test.txt"
    path.write_text(" ".join(WORDS) + "\n")
    scores = lm.evaluate(path)
    ids = torch.tensor([lm.vocab.encode(WORDS + ["<eos>"])])  # the same stream, scored from every class's log p
    with torch.no_grad():
        log_probs, _ = lm.model.eval()(ids[:, :-1])
    want = -log_probs.gather(-1, ids[:, 1:, None]).mean().item()
    assert math.isclose(scores["loss"], want, rel_tol=1e-5)


def test_checkpoint_round_trip(trained):
    lm, out = trained
    loaded = rnnkit.load(out / "best")
    assert loaded.experiment.model.adaptive_cutoffs == lm.experiment.model.adaptive_cutoffs
    assert isinstance(loaded.model.output, AdaptiveOutput)
    head = loaded.model.output.adaptive.head
    assert head._embedding[0] is loaded.model.embedding  # still tied after loading
    for (a, pa), (b, pb) in zip(loaded.predict_next("a", k=4), lm.predict_next("a", k=4)):
        assert a == b and math.isclose(pa, pb, rel_tol=1e-6)
