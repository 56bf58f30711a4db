"""Embedding: id checks, pretrained word2vec/GloVe text vectors, whole-word embedding dropout."""

import gzip
import logging

import pytest
import torch

from rnnkit.layers import Embedding, EmbeddingDropout

GLOVE = "the 0.1 0.2 0.3\ncat -1.0 0.5 2.0\nsat 3 4 5\non 0 0 1\n"
VOCAB = ["<pad>", "the", "cat", "dog", "on"]


@pytest.fixture
def glove(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text(GLOVE)
    return path


def test_forward_checks_ids():
    emb = Embedding(10, 4, padding_idx=0)
    assert emb(torch.tensor([[0, 9]])).shape == (1, 2, 4)
    with pytest.raises(TypeError, match="ids: expected integer token ids, got torch.float32"):
        emb(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="ids: expected ids below the vocabulary size 10, got max id 12"):
        emb(torch.tensor([1, 12, 3]))
    with pytest.raises(ValueError, match="got min id -1"):
        emb(torch.tensor([-1, 2]))


def test_from_text_vectors_found_missing_padding(glove, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="rnnkit.layers.embedding"):
        emb = Embedding.from_text_vectors(glove, VOCAB, padding_idx=0)
    assert emb.weight.shape == (5, 3) and emb.padding_idx == 0
    torch.testing.assert_close(emb.weight[1], torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(emb.weight[2], torch.tensor([-1.0, 0.5, 2.0]))
    torch.testing.assert_close(emb.weight[4], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(emb.weight[0], torch.zeros(3))
    assert emb.weight[3].abs().sum() > 0  # "dog": random
    assert emb.coverage == pytest.approx(3 / 5)
    assert "3 of 5" in caplog.text and "60.0%" in caplog.text
    assert emb.weight.requires_grad
    torch.manual_seed(0)  # missing rows come from torch's RNG
    assert torch.equal(Embedding.from_text_vectors(glove, VOCAB, padding_idx=0).weight, emb.weight)


def test_frozen_embedding_gets_no_gradient(glove):
    emb = Embedding.from_text_vectors(glove, VOCAB, freeze=True)
    assert not emb.weight.requires_grad
    assert not emb(torch.tensor([1, 2])).requires_grad


def test_word2vec_header_and_gzip(tmp_path):
    path = tmp_path / "w2v.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("4 3\n" + GLOVE.replace("\n", " \n"))  # word2vec writes a trailing space
    emb = Embedding.from_text_vectors(path, ["cat", "sat"])
    torch.testing.assert_close(emb.weight, torch.tensor([[-1.0, 0.5, 2.0], [3.0, 4.0, 5.0]]))
    assert emb.coverage == 1.0


@pytest.mark.parametrize("bad, message", [
    ("cat 1 2\n", r"vectors.txt:3: expected a word and 3 numbers .* got 2 values after 'cat'"),
    ("cat 1 x 2\n", r"vectors.txt:3: expected numbers after the word 'cat', got 'x'"),
])
def test_bad_line_names_file_and_line(tmp_path, bad, message):
    path = tmp_path / "vectors.txt"
    path.write_text("the 0.1 0.2 0.3\n\n" + bad)
    with pytest.raises(ValueError, match=message):
        Embedding.from_text_vectors(path, VOCAB)


def test_vocabulary_and_file_errors(glove, tmp_path):
    with pytest.raises(ValueError, match="token 'cat' appears twice, at positions 0 and 2"):
        Embedding.from_text_vectors(glove, ["cat", "dog", "cat"])
    with pytest.raises(ValueError, match="vectors file not found"):
        Embedding.from_text_vectors(tmp_path / "missing.txt", VOCAB)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt: expected word vectors, got an empty file"):
        Embedding.from_text_vectors(tmp_path / "empty.txt", VOCAB)


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    drop = EmbeddingDropout(0.5)
    ids = torch.tensor([[1, 2, 1, 3], [3, 1, 2, 2]])
    vectors = torch.ones(2, 4, 5)
    out = drop(ids, vectors)
    kept = out[..., 0]
    assert set(kept.unique().tolist()) <= {0.0, 2.0}
    for token in (1, 2, 3):  # one decision per word, shared by all its occurrences and features
        assert kept[ids == token].unique().numel() == 1
    assert torch.equal(out, kept.unsqueeze(-1).expand_as(out))
    assert torch.equal(drop.eval()(ids, vectors), vectors)
    with pytest.raises(ValueError, match=r"p: expected a dropout probability in \[0, 1\), got 1.0"):
        EmbeddingDropout(1.0)
