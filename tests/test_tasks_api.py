"""The Python fit API every task shares (rnnkit/tasks/base.py): in-memory data, keyword overrides,
out_dir=None, the experiment-config form, and the order of the scaffold's steps."""

from __future__ import annotations

import random
import tempfile
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit import distributed, tasks
from rnnkit.model import CELLS, ModelConfig
from rnnkit.tasks import (Classifier, ClassifierExperiment, Forecaster, LanguageModel, QAExperiment,
                          QuestionAnswering)
from rnnkit.tasks import base as base_module
from rnnkit.tasks import classifier as classifier_module
from rnnkit.tasks.forecasting import data as forecaster_module  # the reader of the forecaster's files
from rnnkit.tasks import language_model as lm_module
from rnnkit.tasks import qa as qa_module
from rnnkit.tasks.qa import QAModelConfig
from rnnkit.train import Trainer

POSITIVE, NEGATIVE = ["good", "great", "lovely", "fine"], ["bad", "awful", "dull", "poor"]
FILLER = ["the", "film", "was", "a", "plot", "very"]
NAMES, PLACES = ["mary", "john", "sandra", "daniel"], ["kitchen", "garden", "office", "hallway", "bathroom"]
TINY_TEXT = {"embedding_dim": 8, "hidden_size": 8, "lr": 2e-2, "log_every": 1000}


def sentiment(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts with one sentiment word among filler; label 1 for a positive word, 0 for a negative one."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def stories(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(story, question, answer): two people go to two places; where is one of them?"""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        (a, b), (p, q) = rng.sample(NAMES, 2), rng.sample(PLACES, 2)
        who, where = (a, p) if rng.random() < 0.5 else (b, q)
        out.append((f"{a.title()} went to the {p}. {b.title()} went to the {q}.", f"Where is {who.title()}?", where))
    return out


def babi_text(examples: list[tuple[str, str, str]]) -> str:
    lines = []
    for story, question, answer in examples:
        first, second = story.split(". ")
        lines += [f"1 {first}.", f"2 {second}", f"3 {question}\t{answer}\t1"]
    return "\n".join(lines) + "\n"


def monthly(n: int = 60) -> pd.DataFrame:
    t = np.arange(n)
    y = 10 + 0.2 * t + 3 * np.sin(2 * np.pi * t / 12)
    return pd.DataFrame({"date": pd.date_range("2015-01-01", periods=n, freq="MS"), "y": y})


@pytest.fixture
def no_files(tmp_path, monkeypatch):
    """Run in an empty working directory with an empty temporary-files directory; yields a function
    that lists what is in them (but torch's own compile cache, torchinductor_<user>)."""
    work, temp = tmp_path / "work", tmp_path / "temp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    yield lambda: [p for d in (work, temp) for p in d.iterdir() if not p.name.startswith("torchinductor")]


# ------------------------------------------------------------------------------ in-memory data
def test_classifier_fits_texts_and_labels_with_keyword_overrides(no_files):
    texts, labels = sentiment(200, 0)
    clf = Classifier.fit(texts, labels, valid=sentiment(60, 1), cell="gru", epochs=6, batch_size=16,
                         model={"bidirectional": False}, **{"train.lr": 2e-2, "embedding_dim": 8, "hidden_size": 8})
    assert isinstance(clf, Classifier)
    exp = clf.experiment
    assert (exp.model.cell, exp.train.epochs, exp.data.batch_size, exp.train.lr) == ("gru", 6, 16, 2e-2)
    assert exp.model.bidirectional is False and exp.model.hidden_size == 8
    assert exp.train.out_dir is None
    assert clf.labels.names == ["0", "1"]
    assert clf.results["val_accuracy"] > 0.85
    assert clf.predict(["a great film", "a dull film"]) == [1, 0]  # integer labels in, integers out
    assert clf.predict_proba(["a great film"]).shape == (1, 2)
    assert not clf.model.training and next(clf.model.parameters()).device.type == "cpu"
    assert no_files() == []  # out_dir=None writes nothing, anywhere


def test_classifier_holds_out_validation_and_reads_a_test_tuple():
    texts, labels = sentiment(80, 2)
    clf = Classifier.fit(texts, labels, test=sentiment(20, 3), epochs=1, **TINY_TEXT)
    assert {"val_accuracy", "test_accuracy"} <= set(clf.results)


def test_language_model_fits_a_list_of_strings(no_files):
    corpus = ["the cat sat on the mat", "the dog sat on the log"] * 20
    lm = LanguageModel.fit(corpus, valid=["the cat sat on the log"] * 4, tokenizer="char", epochs=2, batch_size=4,
                           bptt=8, num_layers=1, **TINY_TEXT)
    assert isinstance(lm, LanguageModel) and lm.char_level
    assert (lm.experiment.model.num_layers, lm.experiment.data.bptt, lm.experiment.train.epochs) == (1, 8, 2)
    assert set(lm.vocab.tokens) >= set("the catsonmdglx") - {"x"}
    assert np.isfinite(lm.results["val_ppl"])
    out = lm.generate("the ", length=10, seed=0)
    assert len(out) == 10 and set(out) <= set(lm.vocab.tokens) | {"\n"}
    assert len(lm.predict_next("the c", k=3)) == 3
    assert no_files() == []


def test_language_model_fits_a_text_file_and_saves_when_asked(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b c d e f\n" * 40)
    valid = tmp_path / "valid.txt"  # the reversed order: every epoch of training makes it less likely
    valid.write_text("f e d c b a\n" * 8)
    lm = LanguageModel.fit(str(corpus), tmp_path / "run", valid=str(valid), epochs=3, batch_size=4, bptt=5,
                           num_layers=1, **{**TINY_TEXT, "lr": 1e-2})
    assert (tmp_path / "run" / "best" / "vocab.json").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()
    assert lm.experiment.data.train == str(corpus)
    best, last = tasks.load(tmp_path / "run" / "best"), tasks.load(tmp_path / "run" / "last")
    assert not torch.equal(best.model.output.weight, last.model.output.weight)  # epoch 1 was best, 3 was last
    assert torch.equal(best.model.output.weight, lm.model.output.weight)  # the best weights in memory
    with pytest.raises(FileNotFoundError, match="a string is read as a path.*pass a list of strings"):
        LanguageModel.fit("a b c as text")


def test_question_answering_fits_parsed_stories_and_files(tmp_path, no_files):
    train, test = stories(120, 0), stories(30, 1)
    model = {"embedding_dim": 8, "hidden_size": 8, "hops": 1, "memory_size": 4, "dropout": 0.0, "cell": "rnn_relu"}
    qa = QuestionAnswering.fit(train, test=test, epochs=2, batch_size=16, model=model, lr=1e-2)
    assert isinstance(qa, QuestionAnswering) and qa.experiment.model.cell == "rnn_relu"
    assert {"val_accuracy", "test_accuracy"} <= set(qa.results)
    assert qa.answer("Mary went to the office.", "Where is Mary?").answer in PLACES
    assert no_files() == []
    (tmp_path / "train.txt").write_text(babi_text(train))
    from_file = QuestionAnswering.fit(tmp_path / "train.txt", tmp_path / "run", epochs=1, batch_size=16, model=model)
    assert set(from_file.answers.names) == {a for _, _, a in train}
    assert (tmp_path / "run" / "results.json").is_file()
    loaded = tasks.load(tmp_path / "run" / "best")
    assert isinstance(loaded, QuestionAnswering) and loaded.answers.names == from_file.answers.names


def test_forecaster_fits_a_dataframe_with_target_and_overrides(no_files):
    fc = Forecaster.fit(monthly(), target="y", horizon=3, lookback=6, test=6, epochs=2, hidden_size=4, cell="gru",
                        evaluate=False, output="gaussian")
    exp = fc.experiment
    assert exp.data.target_columns == ["y"] and (exp.data.horizon, exp.model.hidden_size, exp.train.epochs) == (3, 4, 2)
    assert exp.model.cell == "gru"
    assert exp.forecast.output == "gaussian" and exp.model.output == "full"  # the forecaster's output, not the LM's
    assert {"y", "y_lower", "y_upper"} <= set(fc.predict().columns) and len(fc.predict()) == 3
    assert no_files() == []


def test_forecaster_season_comes_from_the_frequency_unless_given(tmp_path):
    fc = Forecaster.fit(monthly(), target="y", horizon=3, lookback=6, test=6, epochs=1, hidden_size=4,
                        statistical="none", out_dir=tmp_path / "run")
    assert fc.experiment.evaluate.season == 12 and "seasonal_naive_12" in fc.backtests[3].metrics.index
    assert tasks.load(tmp_path / "run" / "best").experiment.evaluate.season == 12  # kept with the checkpoint
    daily = monthly().assign(date=pd.date_range("2015-01-01", periods=60, freq="D"))
    assert Forecaster.fit(daily, target="y", horizon=3, lookback=6, test=6, epochs=1, hidden_size=4,
                          evaluate=False).experiment.evaluate.season == 7
    assert Forecaster.fit(monthly(), target="y", horizon=3, lookback=6, test=6, epochs=1, hidden_size=4,
                          evaluate=False, season=1).experiment.evaluate.season == 1  # given: kept
    with pytest.raises(ValueError, match=r"'seasonal' needs data.lookback >= 12 \(a season of 12, from the "
                                         r"frequency\), got 6"):
        Forecaster.fit(monthly(), target="y", horizon=3, lookback=6, test=6, epochs=1, normalize="seasonal")


def test_forecaster_warns_when_a_long_frame_is_read_as_one_series():
    one = monthly()
    long = pd.concat([one.assign(store="a"), one.assign(store="b", y=one["y"] * 2)], ignore_index=True)
    with pytest.warns(UserWarning, match=r"timestamps occur more than once .*averaged into one series.*"
                                         r"data\.id_column \(id_column=\).*e\.g\. one of \['store'\]"):
        Forecaster.fit(long, target="y", horizon=3, lookback=6, test=6, epochs=1, hidden_size=4, evaluate=False)


# -------------------------------------------------------------------------------- the config form
def test_experiment_config_form_with_out_dir_and_overrides(tmp_path):
    texts, labels = sentiment(60, 4)
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)))
    experiment = ClassifierExperiment.from_dict({"data": {"train": str(tmp_path / "train.tsv"), "batch_size": 16},
                                                 "model": {"embedding_dim": 8, "hidden_size": 8},
                                                 "train": {"epochs": 2, "log_every": 1000}})
    clf = Classifier.fit(experiment, tmp_path / "run", epochs=1)  # positional out_dir, as the CLI's form
    assert clf.experiment.train.epochs == 1 and clf.experiment.train.out_dir == str(tmp_path / "run")
    assert (tmp_path / "run" / "results.json").is_file() and (tmp_path / "run" / "best").is_dir()
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    assert experiment.train.epochs == 2  # the caller's config is not changed
    refit = Classifier.fit(texts, labels, experiment=clf.experiment, epochs=1)  # its train.out_dir is run/
    assert refit.experiment.train.out_dir is None
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == written  # nothing written
    path_fit = Classifier.fit(tmp_path / "train.tsv", epochs=1, batch_size=16, **TINY_TEXT)
    assert path_fit.labels.names == ["0", "1"] and isinstance(path_fit.predict(["a film"])[0], str)
    from_python = Classifier.fit(texts, labels, out_dir=tmp_path / "ints", epochs=1, batch_size=16, **TINY_TEXT)
    assert tasks.load(tmp_path / "ints" / "best").predict(["a film"]) == from_python.predict(["a film"])
    assert isinstance(from_python.predict(["a film"])[0], int)


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    texts, labels = sentiment(64, 8)
    options = {"valid": sentiment(16, 9), "batch_size": 16, "early_stop_patience": 0, **TINY_TEXT}
    whole = Classifier.fit(texts, labels, out_dir=tmp_path / "whole", epochs=3, **options)
    Classifier.fit(texts, labels, out_dir=tmp_path / "parts", epochs=2, **options)
    trained: list[int] = []
    train_epoch = Trainer._train_epoch
    monkeypatch.setattr(Trainer, "_train_epoch", lambda self, epoch, batches: trained.append(epoch) or
                        train_epoch(self, epoch, batches))
    resumed = Classifier.fit(texts, labels, out_dir=tmp_path / "parts", resume=True, epochs=3, **options)
    assert trained == [3]  # the third epoch only, after the two of the first fit
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.results["val_accuracy"] == whole.results["val_accuracy"]


def test_fit_is_reproducible_whatever_the_global_rng_drew(tmp_path):
    """Words missing from a pretrained-vector file get random vectors while the data is read: from
    train.seed, not from whatever state torch's global RNG was left in."""
    (tmp_path / "vec.txt").write_text("good 0.1 0.2 0.3 0.4\nbad -0.1 -0.2 -0.3 -0.4\n")
    texts, labels = sentiment(32, 10)
    weights = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        clf = Classifier.fit(texts, labels, pretrained_vectors=str(tmp_path / "vec.txt"), freeze_embeddings=True,
                             epochs=1, batch_size=8, hidden_size=4)
        weights.append(clf.model.embedding.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


# ---------------------------------------------------------------------------------------- errors
def test_unknown_keyword_is_a_type_error_with_close_names():
    texts, labels = sentiment(20, 5)
    with pytest.raises(TypeError, match=r"Classifier\.fit: unknown keyword 'epoch'; did you mean 'epochs'"):
        Classifier.fit(texts, labels, epoch=3)
    with pytest.raises(TypeError, match=r"unknown keyword 'train\.lrr'; did you mean 'train\.lr'"):
        Classifier.fit(texts, labels, **{"train.lrr": 1e-3})
    with pytest.raises(TypeError, match=r"unknown keyword 'model\.hiden_size'; did you mean 'model\.hidden_size'"):
        LanguageModel.fit(["a b"], model={"hiden_size": 3})
    with pytest.raises(TypeError, match=r"Forecaster\.fit: unknown keyword 'lookbak'; did you mean 'lookback'"):
        Forecaster.fit(monthly(), target="y", lookbak=6)
    with pytest.raises(ValueError, match=r"Classifier\.fit: model\.cell: expected 'lstm', 'lstm_ln', 'gru'"):
        Classifier.fit(texts, labels, cell="tree")
    with pytest.raises(TypeError, match=r"Classifier\.fit: model: a config section; expected a dict of its fields"):
        Classifier.fit(texts, labels, model="gru")
    with pytest.raises(TypeError, match="'train.out_dir': give the directory as out_dir="):
        Classifier.fit(texts, labels, **{"train.out_dir": "runs/x"})


def test_bad_data_arguments():
    texts, labels = sentiment(20, 5)
    with pytest.raises(TypeError, match="labels: expected one label per text of data, got none"):
        Classifier.fit(texts)
    with pytest.raises(ValueError, match="texts: expected one label per text, got 20 texts and 3 labels"):
        Classifier.fit(texts, labels[:3])
    with pytest.raises(TypeError, match=r"valid: expected \(texts, labels\) or a file or folder path"):
        Classifier.fit(texts, labels, valid=texts)
    with pytest.raises(TypeError, match="data: expected a list of strings, got int at index 1"):
        LanguageModel.fit(["a", 3])
    with pytest.raises(TypeError, match=r"data\[0\]: expected a BabiExample or a \(story, question, answer\)"):
        QuestionAnswering.fit([("story", "question")])
    with pytest.raises(TypeError, match="experiment: give the experiment once"):
        QuestionAnswering.fit(QAExperiment(), experiment=QAExperiment())


# -------------------------------------------------------------------------------- the scaffold
def _recording(monkeypatch, calls: list[str], module, name: str) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append("read")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


@pytest.mark.parametrize("task", ["language_model", "classifier", "qa", "forecaster"])
def test_scaffold_joins_the_process_group_before_reading_data(task, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(distributed, "init", lambda *a, **k: calls.append("init") or False)
    if task == "language_model":
        (tmp_path / "corpus.txt").write_text("a b c d\n" * 30)
        _recording(monkeypatch, calls, lm_module, "read_corpus")
        run = lambda: LanguageModel.fit(tmp_path / "corpus.txt", epochs=1, batch_size=2, bptt=4,  # noqa: E731
                                        num_layers=1, **TINY_TEXT)
    elif task == "classifier":
        texts, labels = sentiment(40, 6)
        (tmp_path / "t.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)))
        _recording(monkeypatch, calls, classifier_module, "read_labelled")
        run = lambda: Classifier.fit(tmp_path / "t.tsv", epochs=1, batch_size=8, **TINY_TEXT)  # noqa: E731
    elif task == "qa":
        (tmp_path / "qa.txt").write_text(babi_text(stories(40, 2)))
        _recording(monkeypatch, calls, qa_module, "read_babi")
        run = lambda: QuestionAnswering.fit(tmp_path / "qa.txt", epochs=1, batch_size=8,  # noqa: E731
                                            model={"embedding_dim": 4, "hidden_size": 4, "hops": 1})
    else:
        monthly().to_csv(tmp_path / "s.csv", index=False)
        _recording(monkeypatch, calls, forecaster_module, "read_csv")
        run = lambda: Forecaster.fit(tmp_path / "s.csv", target="y", horizon=2, lookback=4, test=4,  # noqa: E731
                                     epochs=1, hidden_size=2, evaluate=False)
    run()
    assert calls and calls[0] == "init" and "read" in calls, calls


def test_only_rank_0_reports_and_writes_the_task_files(tmp_path, monkeypatch):
    """The scaffold seen as rank 1 (the Trainer, whose checkpoints are its own business, as rank 0):
    no results, no task files, no warnings about the data (rank 0 gives them)."""
    texts, labels = sentiment(40, 7)
    as_rank_1 = SimpleNamespace(**{name: getattr(distributed, name) for name in distributed.__all__})
    as_rank_1.is_main = lambda: False
    monkeypatch.setattr(base_module, "distributed", as_rank_1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = Classifier.fit(texts + [" "], labels + [1], out_dir=tmp_path / "run", epochs=1, batch_size=8,
                             **TINY_TEXT)
    assert clf.results == {} and not [w for w in caught if "empty text" in str(w.message)]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best", "last", "metrics.jsonl"]
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=r"1 empty text\(s\) \(texts\[40\]\)"):
        Classifier.fit(texts + [" "], labels + [1], out_dir=tmp_path / "run0", epochs=1, batch_size=8, **TINY_TEXT)
    assert {"results.json", "confusion_matrix.png"} <= {p.name for p in (tmp_path / "run0").iterdir()}


# ---------------------------------------------------------------------------------- cell names
def test_one_registry_of_cell_names():
    names = set(CELLS)
    assert names == {"lstm", "lstm_ln", "gru", "rnn", "rnn_relu", "mingru", "minlstm"}
    for config_cls in (ModelConfig, QAModelConfig):
        for name in names:
            assert config_cls(cell=name).cell == name
