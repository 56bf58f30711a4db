"""Text classification: reading labelled tables and folders, labels, class weights, bucketed
batches, the Classifier task end to end on synthetic data, and the `predict` CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rnnkit import tasks
from rnnkit.cli import app
from rnnkit.data.classification import (BucketBatches, LabelSet, class_weights, encode_texts, read_folder,
                                        read_labelled, read_table)
from rnnkit.data.text import Vocab, WordTokenizer
from rnnkit.model import ModelConfig
from rnnkit.tasks.classifier import Classifier, ClassifierDataConfig, ClassifierExperiment
from rnnkit.train import TrainConfig

torch.set_num_threads(1)

POS, NEG, FILLER = ["good", "great", "fine"], ["bad", "awful", "poor"], ["the", "film", "was", "a", "plot", "and"]


def sentiment_rows(n: int, seed: int, classes: int = 2) -> list[tuple[str, str]]:
    """Texts whose class is set by one cue word among filler words."""
    rng = random.Random(seed)
    cues = [NEG, POS, ["meh", "okay", "so-so"]][:classes]
    rows = []
    for _ in range(n):
        label = rng.randrange(classes)
        words = rng.choices(FILLER, k=rng.randint(2, 9))
        words.insert(rng.randrange(len(words) + 1), rng.choice(cues[label]))
        rows.append((" ".join(words).capitalize(), str(label)))
    return rows


def write_tsv(path, rows, header=("sentence", "label")):
    path.write_text("\t".join(header) + "\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- reading
def test_read_table_tsv_and_csv(tmp_path):
    data = read_table(write_tsv(tmp_path / "a.tsv", [('say "hi" there', "1"), ("no", "0")]))
    assert data.texts == ['say "hi" there', "no"] and data.labels == ["1", "0"]  # TSV: quotes are text
    assert data.origins == [f"{tmp_path / 'a.tsv'}:2", f"{tmp_path / 'a.tsv'}:3"]
    (tmp_path / "b.csv").write_text('id,review,stars\n1,"fine, really",5\n\n2,"two\nlines",1\n')
    data = read_table(tmp_path / "b.csv", text_column="review", label_column="stars")
    assert data.texts == ["fine, really", "two\nlines"] and data.labels == ["5", "1"]
    assert data.origins[1].endswith("b.csv:4")  # the row's first line, after a blank line


def test_read_table_errors_name_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", [("a", "1")], header=("sentence", "polarity"))
    with pytest.raises(ValueError, match=r"x\.tsv:1: label_column: expected a column named 'label', found "
                                         r"columns \['sentence', 'polarity'\]"):
        read_table(path)
    assert read_table(path, require_label=False).labels is None  # prediction input
    with pytest.raises(ValueError, match=r"x\.tsv:1: text_column: expected a column named 'text'"):
        read_table(path, text_column="text", label_column="polarity")
    (tmp_path / "y.tsv").write_text("sentence\tlabel\nok\t1\ntoo\tmany\tfields\n")
    with pytest.raises(ValueError, match=r"y\.tsv:3: expected 2 fields separated by tab .* got 3"):
        read_table(tmp_path / "y.tsv")
    (tmp_path / "z.tsv").write_text("sentence\tlabel\nok\t1\nempty label\t \n")
    with pytest.raises(ValueError, match=r"z\.tsv:3: label_column 'label': expected a label, got an empty field"):
        read_table(tmp_path / "z.tsv")
    (tmp_path / "q.csv").write_text('sentence,label\n"unterminated,1\n')
    with pytest.raises(ValueError, match=r"q\.csv:\d+: malformed"):
        read_table(tmp_path / "q.csv")
    with pytest.raises(ValueError, match="delimiter: cannot infer"):
        read_table(tmp_path / "y.json")


def test_non_utf8_bytes_reported_with_offset_or_replaced(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"sentence\tlabel\nok\t1\nna\xefve\t0\n")
    with pytest.raises(ValueError, match=r"bad\.tsv is not valid utf-8: byte 0xef at byte offset 22"):
        read_table(path)
    data = read_table(path, errors="replace")
    assert data.texts[1] == "na\ufffdve" and data.labels == ["1", "0"]


def test_read_folder(tmp_path):
    for label, texts in (("neg", ["bad one", "awful"]), ("pos", ["good"])):
        (tmp_path / label).mkdir()
        for i, t in enumerate(texts):
            (tmp_path / label / f"{i}.txt").write_text(t)
    (tmp_path / ".hidden").mkdir()
    data = read_labelled(tmp_path)
    assert data.labels == ["neg", "neg", "pos"] and data.texts == ["bad one", "awful", "good"]
    assert data.origins[2].endswith("pos/0.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: expected at least one example file"):
        read_folder(tmp_path)


def test_labels_class_weights_and_encoding():
    labels = LabelSet.build(["10", "2", "-1", "2"])
    assert labels.names == ["-1", "2", "10"]  # numbers by value
    assert labels.encode(["2", "10"]).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"dev\.tsv:7: unknown label '3'; the model knows the classes"):
        labels.encode(["2", "3"], origins=["dev.tsv:6", "dev.tsv:7"])
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        LabelSet.build(["a", "a"])
    assert LabelSet.from_dict(labels.to_dict()) == labels
    w = class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0]))  # N / (K * count)
    assert float((w[torch.tensor([0, 0, 0, 1])]).sum()) == pytest.approx(4.0)  # each class weighs N/K

    tok, vocab = WordTokenizer(lowercase=True), Vocab(["good", "film"])
    with pytest.warns(UserWarning, match=r"1 empty text\(s\) \(a\.tsv:3\): read as the empty sequence"):
        seqs = encode_texts(["Good film", "  "], tok, vocab, origins=["a.tsv:2", "a.tsv:3"])
    assert seqs == [[3, 4, Vocab.eos_id], [Vocab.eos_id]]
    assert encode_texts(["good good good film"], tok, vocab, max_length=3) == [[3, 3, Vocab.eos_id]]


def test_bucket_batches_cover_everything_with_little_padding():
    rng = random.Random(0)
    seqs = [[5] * rng.randint(1, 40) for _ in range(1000)]
    y = torch.arange(1000)
    bucketed = BucketBatches(seqs, y, 20, seed=3)
    plain = BucketBatches(seqs, y, 20, seed=3, pool=1)
    first = bucketed.batches(1)
    assert sorted(int(i) for _, _, t in first for i in t) == list(range(1000))  # each example once
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, bucketed.batches(1)))  # same epoch, same batches
    assert [t.tolist() for _, _, t in bucketed.batches(2)] != [t.tolist() for _, _, t in first]
    ids, lengths, targets = first[0]
    assert ids.shape == (20, int(lengths.max())) and all(len(seqs[int(t)]) == int(n) for t, n in zip(targets, lengths))
    assert bucketed.padding_fraction() < 0.05 < 0.3 < plain.padding_fraction()
    ranks = [BucketBatches(seqs, y, 20, seed=3, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(bucketed)
    assert all(len(a[2]) == 10 for a in ranks[1].batches(1))


# ---------------------------------------------------------------------------------- the task
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    write_tsv(root / "train.tsv", sentiment_rows(400, 0))
    write_tsv(root / "dev.tsv", sentiment_rows(100, 1))
    return root


def experiment(root, **data) -> ClassifierExperiment:
    return ClassifierExperiment(
        data=ClassifierDataConfig(train=str(root / "train.tsv"), valid=str(root / "dev.tsv"), batch_size=32,
                                  **data),
        model=ModelConfig(cell="gru", embedding_dim=16, hidden_size=16, bidirectional=True, pooling="max",
                          padding_idx=0, dropout=0.1),
        train=TrainConfig(epochs=6, lr=1e-2, monitor="val_accuracy", monitor_mode="max", log_every=1000))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return tasks.fit(experiment(data_dir), out), out


def test_fit_learns_and_writes_plots(trained, data_dir):
    clf, out = trained
    assert isinstance(clf, Classifier) and clf.binary and clf.labels.names == ["0", "1"]
    assert clf.results["val_accuracy"] > 0.9
    assert clf.predict(["A good film", "the plot was awful", "Great!"])[:2] == ["1", "0"]
    probs = clf.predict_proba(["a good film", "awful"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1) and probs[0, 1] > 0.5 > probs[1, 1]
    for name in ("confusion_matrix.png", "training_curve.png", "metrics.jsonl", "best/labels.json"):
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    assert results["valid"]["n"] == 100 and sum(map(sum, results["valid"]["confusion_matrix"])) == 100
    report = clf.evaluate(data_dir / "dev.tsv")
    assert report["accuracy"] == pytest.approx(clf.results["val_accuracy"])
    assert set(report["per_class"]) == {"0", "1"} and 0 <= report["f1_macro"] <= 1


def test_checkpoint_round_trip_and_empty_text(trained):
    clf, out = trained
    again = Classifier.load(out / "best")
    texts = ["a good film", "bad", "the film was poor and the plot"]
    assert np.allclose(again.predict_proba(texts), clf.predict_proba(texts))
    with pytest.warns(UserWarning, match="empty text"):
        probs = again.predict_proba(["", "good"])
    assert probs.shape == (2, 2) and np.isfinite(probs).all()
    with pytest.raises(TypeError, match="texts: expected a list of strings, got a single str"):
        clf.predict("good")


def test_evaluate_rejects_unknown_labels_with_file_and_line(trained, tmp_path):
    clf, _ = trained
    path = write_tsv(tmp_path / "dev.tsv", [("good", "1"), ("bad", "0"), ("hmm", "neutral")])
    with pytest.raises(ValueError, match=r"dev\.tsv:4: unknown label 'neutral'; the model knows the classes \['0', '1'\]"):
        clf.evaluate(path)
    with pytest.raises(ValueError, match=r"dev\.tsv:1: label_column: expected a column named 'label'"):
        clf.evaluate(write_tsv(tmp_path / "dev.tsv", [("good", "1")], header=("sentence", "y")))


def test_multiclass_softmax_class_weights_and_held_out_validation(tmp_path):
    write_tsv(tmp_path / "train.tsv", sentiment_rows(300, 2, classes=3))
    exp = experiment(tmp_path, class_weights="balanced")
    exp.data.valid = ""  # hold out valid_fraction of train
    exp.train.epochs = 3
    clf = tasks.fit(exp, tmp_path / "run")
    assert clf.model.config.output_activation == "softmax" and clf.model.config.output_size == 3
    assert clf.predict_proba(["good"]).shape == (1, 3)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["valid"]["n"] == 30


def test_pretrained_vectors(tmp_path, data_dir):
    vectors = {"good": [1.0, 0.5, 0.25, 0.0], "bad": [-1.0, 0.0, 0.5, 2.0]}
    (tmp_path / "vec.txt").write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    exp = experiment(data_dir, pretrained_vectors=str(tmp_path / "vec.txt"), freeze_embeddings=True)
    exp.train.epochs = 1
    clf = tasks.fit(exp, tmp_path / "run")
    assert clf.model.config.embedding_dim == 4
    weight = clf.model.embedding.weight
    for word, vector in vectors.items():
        assert torch.allclose(weight[clf.vocab.index(word)], torch.tensor(vector))


# ------------------------------------------------------------------------------------- CLI
def test_cli_predict_text_and_file(trained, tmp_path):
    _, out = trained
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(out / "best"), "a great film"])
    assert result.exit_code == 0, result.output
    label, prob = result.output.strip().split("\t")
    assert label == "1" and 0.5 < float(prob) <= 1
    result = runner.invoke(app, ["predict", str(out / "best"), ""])
    assert result.exit_code == 0 and "warning: 1 empty text(s)" in result.output
    inp = write_tsv(tmp_path / "in.tsv", [("good film", "1"), ("awful plot", "0"), ("", "1")])
    result = runner.invoke(app, ["predict", str(out / "best"), "--input", str(inp), "--output", str(tmp_path / "p.tsv")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["text", "label", "probability", "p_0", "p_1", "true_label"]
    assert [line.split("\t")[1] for line in lines[1:3]] == ["1", "0"] and len(lines) == 4
    (tmp_path / "in.txt").write_text("good\nbad\n")
    result = runner.invoke(app, ["predict", str(out / "best"), "--input", str(tmp_path / "in.txt"),
                                 "--output", str(tmp_path / "q.tsv")])
    assert result.exit_code == 0 and "wrote 2 predictions" in result.output


def test_cli_predict_errors(trained, tmp_path):
    _, out = trained
    runner = CliRunner()
    (tmp_path / "bad.tsv").write_bytes(b"sentence\tlabel\ngood\t1\nna\xffve\t0\n")
    args = ["predict", str(out / "best"), "--input", str(tmp_path / "bad.tsv"), "--output", str(tmp_path / "p.tsv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "bad.tsv is not valid utf-8: byte 0xff at byte offset 24" in result.output
    result = runner.invoke(app, args + ["--encoding-errors", "replace"])
    assert result.exit_code == 0, result.output
    (tmp_path / "cols.tsv").write_text("review\tlabel\ngood\t1\n")
    result = runner.invoke(app, ["predict", str(out / "best"), "--input", str(tmp_path / "cols.tsv"),
                                 "--output", str(tmp_path / "p.tsv")])
    assert result.exit_code == 2 and "cols.tsv:1: text_column: expected a column named 'sentence'" in result.output
    result = runner.invoke(app, ["predict", str(out / "best")])
    assert result.exit_code == 2 and "either a TEXT argument or --input FILE" in result.output
