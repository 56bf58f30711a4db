"""Text data: reading, tokenizers, vocabulary, corpus encoding and LM streams (synthetic data)."""

import gzip
import json

import pytest
import torch

from rnnkit.data import (EOS, UNK, CharTokenizer, LMStream, SubwordTokenizer, Vocab, WordTokenizer, corpus_tokens,
                         encode_corpus, pad_sequences, read_corpus, read_text, tokenizer_from_dict)

TEXT = "the cat sat on the mat\nthe dog sat\n\nénorme <unk> chat\n"


# ------------------------------------------------------------------------------------- reading
def test_read_text_plain_gz_and_newlines(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\rthree\n")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(TEXT.encode()))
    assert read_text(tmp_path / "a.txt") == "one\ntwo\nthree\n"
    assert read_text(tmp_path / "a.txt.gz") == TEXT


def test_read_text_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_text(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef")
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 3, line 1.*data\.encoding_errors = \"replace\""):
        read_text(bad)
    with pytest.warns(UserWarning, match="replaced 1 undecodable byte"):
        assert read_text(bad, errors="replace") == "abc\ufffddef"
    (tmp_path / "bad.txt.gz").write_bytes(gzip.compress(b"ok\n\xc3("))
    with pytest.raises(ValueError, match=r"\(decompressed\) is not valid utf-8: byte 0xc3 at byte offset 3, line 2"):
        read_text(tmp_path / "bad.txt.gz")
    (tmp_path / "fake.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="fake.gz is not a valid gzip file"):
        read_text(tmp_path / "fake.gz")
    with pytest.raises(ValueError, match="encoding: .*'nope'"):
        read_text(bad, encoding="nope")
    with pytest.raises(ValueError, match="errors: .*'nope'"):
        read_text(bad, errors="nope")


def test_read_corpus_refuses_empty(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(ValueError, match=r"corpus: .*empty\.txt is empty"):
        read_corpus(tmp_path / "empty.txt")


# ---------------------------------------------------------------------------------- tokenizers
def test_word_tokenizer():
    assert WordTokenizer().tokenize(" The  cat\nsat ") == ["The", "cat", "sat"]
    assert WordTokenizer(lowercase=True).tokenize("The Cat") == ["the", "cat"]
    tok = WordTokenizer(pattern=r"\w+|[^\w\s]")
    assert tok.tokenize("Hi, there!") == ["Hi", ",", "there", "!"]
    assert tok.detokenize(["a", "b"]) == "a b"
    with pytest.raises(ValueError, match="pattern: expected no capturing groups"):
        WordTokenizer(pattern=r"(\w+)")
    with pytest.raises(ValueError, match="pattern: expected a regular expression"):
        WordTokenizer(pattern="(")


def test_char_tokenizer_round_trip():
    tok = CharTokenizer()
    assert tok.tokenize("ab\nç") == ["a", "b", "\n", "ç"]
    assert tok.detokenize(tok.tokenize(TEXT)) == TEXT


def test_subword_tokenizer_round_trip_and_serialisation():
    tok = SubwordTokenizer.train([TEXT] * 20, vocab_size=300)
    tokens = tok.tokenize(TEXT)
    assert len(tokens) < len(TEXT)  # merges were learnt
    assert tok.detokenize(tokens) == TEXT
    unseen = "zebra\tquiz 😀"
    assert tok.detokenize(tok.tokenize(unseen)) == unseen  # byte level: nothing is unknown
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.tokenize(TEXT) == tokens
    with pytest.raises(ValueError, match="vocab_size: expected an integer >= 256, got 100"):
        SubwordTokenizer.train([TEXT], vocab_size=100)
    with pytest.raises(TypeError, match="texts: .*single str"):
        SubwordTokenizer.train(TEXT, vocab_size=300)


def test_tokenizer_from_dict():
    for tok in (WordTokenizer(lowercase=True, pattern=r"\w+"), CharTokenizer()):
        again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
        assert type(again) is type(tok) and again.to_dict() == tok.to_dict()
    with pytest.raises(ValueError, match="'type' one of"):
        tokenizer_from_dict({"type": "bpe"})
    with pytest.raises(ValueError, match="expected keys"):
        tokenizer_from_dict({"type": "word"})
    with pytest.raises(ValueError, match="malformed subword model"):
        tokenizer_from_dict({"type": "subword", "model": {}})


# -------------------------------------------------------------------------------------- vocab
def test_vocab_build_order_min_freq_max_size():
    lists = [["b", "a", "c", "a"], ["c", "d", "b", "a", UNK, EOS]]
    vocab = Vocab.build(lists)
    # specials first; then by count, ties (b, c: 2 each) in order of first occurrence
    assert vocab.tokens == ["<pad>", "<unk>", "<eos>", "a", "b", "c", "d"]
    assert Vocab.build(lists, min_freq=2).tokens[3:] == ["a", "b", "c"]
    assert Vocab.build(lists, max_size=5).tokens[3:] == ["a", "b"]
    assert len(Vocab.build(lists, max_size=3)) == 3
    with pytest.raises(ValueError, match="min_freq: expected an integer >= 1, got 0"):
        Vocab.build(lists, min_freq=0)
    with pytest.raises(ValueError, match="max_size: expected None or an integer >= 3"):
        Vocab.build(lists, max_size=2)
    with pytest.raises(TypeError, match="token_lists"):
        Vocab.build(["abc"])


def test_vocab_lookup_encode_decode():
    vocab = Vocab(["the", "cat"])
    assert (vocab.pad_id, vocab.unk_id, vocab.eos_id) == (0, 1, 2)
    assert len(vocab) == 5 and "cat" in vocab and "dog" not in vocab
    assert vocab.index("cat") == 4 and vocab.token(3) == "the"
    tokens = ["the", "dog", "<unk>", "cat", "<eos>"]
    ids = vocab.encode(tokens)
    assert ids == [3, 1, 1, 4, 2]  # the literal "<unk>" is the special, not a new entry
    assert vocab.count_unknown(tokens) == 1
    assert vocab.decode(ids) == ["the", "<unk>", "<unk>", "cat", "<eos>"]
    assert vocab.decode(torch.tensor(ids)) == vocab.decode(ids)
    with pytest.raises(ValueError, match="token: 'dog' is not in the vocabulary"):
        vocab.index("dog")
    with pytest.raises(ValueError, match=r"i: expected an id in \[0, 5\), got 5"):
        vocab.token(5)
    with pytest.raises(ValueError, match=r"ids: expected ids in \[0, 5\), got 7"):
        vocab.decode([7])
    with pytest.raises(ValueError, match="duplicate token '<unk>'"):
        Vocab(["a", "<unk>"])


def test_vocab_save_load(tmp_path):
    vocab = Vocab.build([["b", "a", "é", "a"]])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert Vocab.load(path) == vocab
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temporary file left behind
    vocab2 = Vocab(["z"])
    vocab2.save(path)  # overwrites
    assert Vocab.load(path) == vocab2


@pytest.mark.parametrize("content", ["{not json", '{"tokens": ["a"]}', '{"specials": ["<unk>"], "tokens": []}',
                                     '{"specials": ["<pad>", "<unk>", "<eos>"], "tokens": [1]}',
                                     '{"specials": ["<pad>", "<unk>", "<eos>"], "tokens": ["a", "a"]}', "[]"])
def test_vocab_load_malformed(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="malformed vocab file .*vocab.json"):
        Vocab.load(path)


def test_vocab_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Vocab.load(tmp_path / "nope.json")


# ------------------------------------------------------------------------------ corpus encoding
def test_corpus_word_level_appends_eos_per_line():
    tok = WordTokenizer()
    lists = corpus_tokens(TEXT, tok)
    assert lists[1] == ["the", "dog", "sat", EOS]
    assert lists[2] == [EOS]  # a blank line still ends a sentence
    assert len(lists) == 4
    vocab = Vocab.build(lists)
    assert "<unk>" in vocab and len(vocab) == 3 + 8  # 8 distinct words besides the literal <unk>
    ids = encode_corpus(TEXT, tok, vocab)
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert vocab.decode(ids) == [t for line in lists for t in line]
    assert int((ids == vocab.eos_id).sum()) == 4


def test_corpus_char_level_keeps_newlines():
    tok = CharTokenizer()
    vocab = Vocab.build(corpus_tokens(TEXT, tok))
    ids = encode_corpus(TEXT, tok, vocab)
    assert ids.numel() == len(TEXT) and vocab.eos_id not in ids.tolist()
    assert tok.detokenize(vocab.decode(ids)) == TEXT


def test_pad_sequences():
    ids, lengths = pad_sequences([[5, 6, 7], [8], [9, 10]])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths.tolist() == [3, 1, 2]


# ---------------------------------------------------------------------------------- LM streams
def test_lm_stream_shapes_targets_and_continuity():
    ids = torch.arange(103)
    stream = LMStream(ids, batch_size=4, bptt=7)
    assert stream.data.shape == (4, 25)  # 3 tokens dropped
    chunks = list(stream)
    assert len(stream) == len(chunks) == 4  # 24 input steps per row: 7 + 7 + 7 + 3
    assert [c[0].shape for c in chunks] == [(4, 7)] * 3 + [(4, 3)]
    for x, y in chunks:
        assert x.dtype == torch.int64
        assert torch.equal(y, x + 1)  # targets are the next token
    for x, next_x in zip([c[0] for c in chunks], [c[0] for c in chunks[1:]]):
        assert torch.equal(next_x[:, 0], x[:, -1] + 1)  # row r of chunk k+1 continues row r of chunk k
    rows = torch.cat([c[0] for c in chunks], dim=1)
    assert torch.equal(rows, torch.arange(100).view(4, 25)[:, :-1])  # each row a contiguous segment
    with pytest.raises(IndexError):
        stream[4]


def test_lm_stream_sharding_partitions_the_rows():
    ids = torch.randint(0, 50, (1000,))
    full = LMStream(ids, batch_size=8, bptt=10)
    shards = [LMStream(ids, batch_size=8, bptt=10, rank=r, world_size=4) for r in range(4)]
    assert all(s.batch_size == 2 and len(s) == len(full) for s in shards)
    for k in range(len(full)):
        x, y = full[k]
        assert torch.equal(torch.cat([s[k][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[k][1] for s in shards]), y)


def test_lm_stream_errors():
    ids = torch.arange(20)
    with pytest.raises(ValueError, match="batch_size: expected a multiple of world_size=3.*got 8"):
        LMStream(ids, batch_size=8, bptt=5, world_size=3)
    with pytest.raises(ValueError, match="ids: too short for one chunk: 20 tokens give 1 per row at batch_size=16"):
        LMStream(ids, batch_size=16, bptt=5)
    with pytest.raises(ValueError, match=r"rank: expected an integer in \[0, 2\)"):
        LMStream(ids, batch_size=2, bptt=5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="bptt: expected an integer >= 1, got 0"):
        LMStream(ids, batch_size=2, bptt=0)
    with pytest.raises(ValueError, match="ids: expected a 1-D integer tensor"):
        LMStream(ids.float(), batch_size=2, bptt=5)
    with pytest.raises(TypeError, match="ids: expected a torch.Tensor"):
        LMStream(list(range(20)), batch_size=2, bptt=5)
