"""A first run without surprises: bAbI tasks by number from a local copy, the summary before
training, one-line errors for the wrong checkpoint and for degenerate input, predict --top-k and
its TSV round trip, whole-model torch.load(weights_only=True), and the checkpoint a run names."""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import rnnkit
from rnnkit import tasks
from rnnkit.cli import app
from rnnkit.data.babi import task_file
from rnnkit.data.classification import read_folder
from rnnkit.data.datasets import REGISTRY
from rnnkit.model import ModelConfig
from rnnkit.tasks.classifier import ClassifierDataConfig, ClassifierExperiment
from rnnkit.tasks.qa import QADataConfig, QAExperiment, QAModelConfig
from rnnkit.train import TrainConfig, Trainer

torch.set_num_threads(1)
runner = CliRunner()

ANIMALS = {"mouse": "cats", "sheep": "wolves", "cat": "mice", "wolf": "sheep"}  # X is afraid of ANIMALS[X]
NAMES = ["gertrude", "winona", "emily", "jessica"]


def deduction_task(n_stories: int, seed: int) -> str:
    """Task 15's format (basic deduction): who is what, what each kind fears, what does X fear?"""
    rng, lines = random.Random(seed), []
    for _ in range(n_stories):
        kinds = rng.sample(list(ANIMALS), 4)
        story = [f"{k.capitalize()}s are afraid of {ANIMALS[k]}." for k in kinds]
        who = dict(zip(NAMES, kinds))
        story += [f"{name.capitalize()} is a {kind}." for name, kind in who.items()]
        lines += [f"{i} {s}" for i, s in enumerate(story, 1)]
        for j, name in enumerate(rng.sample(NAMES, 2)):
            lines.append(f"{len(story) + j + 1} What is {name} afraid of?\t{ANIMALS[who[name]]}\t1")
    return "\n".join(lines) + "\n"


def write_babi_copy(root: Path, number: int, name: str) -> Path:
    """A local copy holding one task, laid out as the public archive: <root>/babi/tasks_1-20_v1-2/en/."""
    folder = root / "babi" / "tasks_1-20_v1-2" / "en"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"qa{number}_{name}_train.txt").write_text(deduction_task(40, 0))
    (folder / f"qa{number}_{name}_test.txt").write_text(deduction_task(10, 1))
    return root


def qa_experiment(data_dir: Path, out: Path | None = None, **train) -> QAExperiment:
    return QAExperiment(data=QADataConfig(task_id=15, data_dir=str(data_dir), batch_size=16),
                        model=QAModelConfig(embedding_dim=8, hidden_size=8, hops=1, memory_size=10, dropout=0.0),
                        train=TrainConfig(**{"epochs": 1, "lr": 1e-2, "monitor": "val_accuracy",
                                             "monitor_mode": "max", "log_every": 1000, **train}))


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng, rows = random.Random(seed), []
    for _ in range(n):
        label = rng.randrange(3)
        cue = rng.choice([["bad", "awful"], ["good", "great"], ["meh", "okay"]][label])
        words = rng.choices(["the", "film", "was", "a", "plot"], k=rng.randint(2, 6)) + [cue]
        rows.append((" ".join(rng.sample(words, len(words))), ["neg", "pos", "mid"][label]))
    return rows


def write_tsv(path: Path, rows) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


def classifier_experiment(root: Path, **train) -> ClassifierExperiment:
    return ClassifierExperiment(
        data=ClassifierDataConfig(train=str(write_tsv(root / "train.tsv", sentiment_rows(150, 0))),
                                  valid=str(write_tsv(root / "valid.tsv", sentiment_rows(30, 1))), batch_size=16),
        model=ModelConfig(cell="gru", embedding_dim=8, hidden_size=8, bidirectional=False, pooling="max",
                          output_per="sequence", padding_idx=0),
        train=TrainConfig(**{"epochs": 2, "lr": 1e-2, "monitor": "val_accuracy", "monitor_mode": "max",
                             "log_every": 1000, **train}))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """Trained on a local copy of the registered data set 'sst-2' (its file names, made-up rows)."""
    root = tmp_path_factory.mktemp("clf")
    (root / "sst-2").mkdir()
    write_tsv(root / "sst-2" / "train.tsv", sentiment_rows(150, 0))
    write_tsv(root / "sst-2" / "dev.tsv", sentiment_rows(30, 1))
    exp = classifier_experiment(root)
    exp = exp.model_copy(update={"data": exp.data.model_copy(update={
        "dataset": "sst-2", "data_dir": str(root), "train": "train.tsv", "valid": "dev.tsv"})})
    tasks.fit(exp, root / "run")
    return root


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    root = write_babi_copy(tmp_path_factory.mktemp("qa"), 15, "basic-deduction")
    tasks.fit(qa_experiment(root), root / "run")
    return root


@pytest.fixture(autouse=True)
def no_user_data_roots(tmp_path, monkeypatch):
    """Only the data roots a test names are searched (not the user's $RNNKIT_DATA or cache)."""
    monkeypatch.delenv("RNNKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ---------------------------------------------------------------------------- bAbI 1-20 by number
def test_registry_knows_all_twenty_babi_tasks():
    files = REGISTRY["babi"].files
    assert len(files) == 40
    assert task_file(15, "train") == "tasks_1-20_v1-2/en/qa15_basic-deduction_train.txt"
    assert files[task_file(20, "test")].sha256 == "bd3bde3788ac14ba0ae095078f7b820fbd2bfa6a34dba9d1d46a34afde9c2729"
    with pytest.raises(ValueError, match=r"task: expected a bAbI task number in 1\.\.20, got 21"):
        task_file(21, "train")
    with pytest.raises(ValueError, match=r"data.task_id: expected a value <= 20, got 21"):
        tasks.load_experiment(Path(__file__).parents[1] / "configs" / "babi.toml", ["data.task_id=21"])
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import babi as bench
    finally:
        sys.path.pop(0)
    assert bench._tasks("11,15,20") == [11, 15, 20] and len(bench.LSTM_BASELINE) == 20


def test_babi_task_15_by_number_from_a_local_copy(qa):
    """The copy holds task 15 only (no task 1-10 file, no checksum file): read by number and data_dir."""
    results = json.loads((qa / "run" / "results.json").read_text())
    assert 0 <= results["test_accuracy"] <= 1 and results["epochs_run"] == 1
    model = tasks.load(qa / "run" / "best")
    assert set(model.answers.names) == set(ANIMALS.values())
    first = json.loads((qa / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert (first["type"], first["task"], first["unit"], first["answers"]) == ("summary", "qa", "questions", 4)
    assert first["splits"]["test"] == 20 and first["vocab_size"] == len(model.vocab)
    result = runner.invoke(app, ["evaluate", str(qa / "run" / "best"), "--data-dir", str(qa),
                                 "--data", task_file(15, "test")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n"] == 20  # 10 stories, 2 questions each
    missing = runner.invoke(app, ["evaluate", str(qa / "run" / "best"), "--data-dir", str(qa / "nowhere"),
                                  "--data", task_file(16, "test")])
    assert missing.exit_code == 2 and "qa16_basic-induction_test.txt: not found; searched" in missing.output
    assert str(qa / "nowhere" / "babi" / task_file(16, "test")) in missing.output


def test_train_cli_with_data_dir_and_task_number(tmp_path):
    root = write_babi_copy(tmp_path, 15, "basic-deduction")
    config = Path(__file__).parents[1] / "configs" / "babi.toml"
    small = ["model.embedding_dim=8", "model.hidden_size=8", "model.hops=1", "model.memory_size=10",
             "train.epochs=1", "data.batch_size=16"]
    result = runner.invoke(app, ["train", str(config), "--data-dir", str(root), "--set", "data.task_id=15",
                                 *[arg for kv in small for arg in ("--set", kv)], "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert report["checkpoint"] == str(tmp_path / "run" / "best") and 0 <= report["test_accuracy"] <= 1
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["data"]["data_dir"] == str(root)
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import babi as bench
    finally:
        sys.path.pop(0)
    assert bench._found_tasks(str(root)) == [15]  # the benchmark's default: the tasks a copy holds


def test_data_dir_finds_the_registered_files_of_the_checkpoints_data_set(classifier, tmp_path):
    best = str(classifier / "run" / "best")
    for extra in (["--data-dir", str(classifier)], []):  # without it: the training config's data_dir
        result = runner.invoke(app, ["evaluate", best, "--data", "dev.tsv", *extra])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["n"] == 30
    result = runner.invoke(app, ["predict", best, "--input", "dev.tsv", "--output", str(tmp_path / "p.tsv"),
                                 "--data-dir", str(classifier)])
    assert result.exit_code == 0 and len(pd.read_csv(tmp_path / "p.tsv", sep="\t")) == 30
    missing = runner.invoke(app, ["evaluate", best, "--data", "test.tsv", "--data-dir", str(tmp_path)])
    assert missing.exit_code == 2 and f"{tmp_path / 'sst-2' / 'test.tsv'}" in missing.output


def test_datasets_counts_the_files_found_under_data_dir(tmp_path):
    write_babi_copy(tmp_path, 15, "basic-deduction")
    result = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    babi = [line for line in result.output.splitlines() if line.startswith("babi ")][0]
    assert "bAbI QA tasks 1-20" in babi and "(2 of 40 files found;" in babi
    assert f"searched, in order: {tmp_path}, " in result.output


# ------------------------------------------------------------------------------ training summary
def test_summary_is_printed_and_first_in_metrics(tmp_path, capsys):
    before = torch.get_num_threads()
    tasks.fit(classifier_experiment(tmp_path, epochs=1, threads=1), tmp_path / "run")
    assert torch.get_num_threads() == before  # train.threads holds for the run only
    err = capsys.readouterr().err
    head = err[:err.index("epoch 1 done")]
    for expected in ("training classifier", "train 150, valid 30 texts", "classes     3: mid, neg, pos",
                     "parameters; GRU 8", "cpu, 1 threads, backend ", "batches     10 per epoch"):
        assert expected in head, head
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    model = tasks.load(tmp_path / "run" / "best").model
    assert first["type"] == "summary" and first["task"] == "classifier" and first["unit"] == "texts"
    assert first["splits"] == {"train": 150, "valid": 30} and first["classes"] == ["mid", "neg", "pos"]
    assert first["vocab_size"] == len(tasks.load(tmp_path / "run" / "best").vocab)
    assert first["parameters"] == sum(p.numel() for p in model.parameters())
    assert first["cells"] == ["GRU 8"] and first["backends"] and first["threads"] == 1
    assert first["device"] == "cpu" and first["batches_per_epoch"] == 10


def test_summary_names_the_minimal_cells_and_their_scan():
    from rnnkit.summary import describe_model
    model = nn.Sequential(rnnkit.MinGRU(3, 8, num_layers=2), rnnkit.MinLSTM(8, 4, bidirectional=True))
    described = describe_model(model, batch=4)
    assert described["cells"] == ["minGRU 8 x2", "minLSTM 4 bidirectional"]
    assert described["backends"] == ["fused scan"]


def test_summary_of_a_bare_trainer(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    batches = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(5)]
    trainer = Trainer(model, TrainConfig(epochs=1, out_dir=str(tmp_path), log_every=100),
                      loss_fn=lambda m, b, s: (nn.functional.mse_loss(m(b[0]), b[1]), None, 4),
                      summary={"task": "regression", "unit": "rows", "splits": {"train": 20}})
    trainer.fit(lambda epoch: batches)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records][:2] == ["summary", "epoch"]
    assert records[0]["parameters"] == 8 and records[0]["batches_per_epoch"] == 5
    assert records[0]["cells"] == [] and records[0]["splits"] == {"train": 20}


# ------------------------------------------------------------------------ the wrong checkpoint
@pytest.mark.parametrize("command", [["generate", "--prompt", "the"], ["answer", "--story", "s.txt", "--question", "q"],
                                     ["forecast", "--input", "x.csv"], ["backtest", "--input", "x.csv"]])
def test_wrong_checkpoint_is_one_line_naming_task_and_commands(classifier, command):
    result = runner.invoke(app, [command[0], str(classifier / "run" / "best"), *command[1:]])
    line = one_line_error(result)
    assert f"a classifier checkpoint; rnnkit {command[0]} needs a" in line
    assert "rnnkit evaluate, rnnkit predict, rnnkit diagnose" in line
    assert "Traceback" not in result.output


def test_predict_on_a_qa_checkpoint(qa):
    line = one_line_error(runner.invoke(app, ["predict", str(qa / "run" / "best"), "some text"]))
    assert "a qa checkpoint; rnnkit predict needs a classifier checkpoint (a qa is read by rnnkit evaluate, " \
           "rnnkit answer)" in line
    line = one_line_error(runner.invoke(app, ["diagnose", str(qa / "run" / "best")]))
    assert "rnnkit diagnose needs a language_model or classifier or forecaster checkpoint" in line


# ------------------------------------------------------------------------------- degenerate input
def test_answer_refuses_empty_story_and_unknown_question_unless_guessing(qa, tmp_path):
    best = str(qa / "run" / "best")
    empty, story = tmp_path / "empty.txt", tmp_path / "story.txt"
    empty.write_text("\n\n")
    story.write_text("Mice are afraid of wolves.\nEmily is a mouse.\n")
    line = one_line_error(runner.invoke(app, ["answer", best, "--story", str(empty), "--question",
                                              "What is emily afraid of?"]))
    assert "story: expected at least one sentence, got none" in line and "--allow-guess" in line
    line = one_line_error(runner.invoke(app, ["answer", best, "--story", str(story), "--question", "Qux zorp?"]))
    assert "question: none of its words (qux zorp) is known to the model" in line
    guess = runner.invoke(app, ["answer", best, "--story", str(empty), "--question", "What is emily afraid of?",
                                "--allow-guess"])
    assert guess.exit_code == 0, guess.output
    answer_line = [line for line in guess.output.splitlines() if not line.startswith("warning")][0]
    assert answer_line.endswith("\tguess") and answer_line.split("\t")[0] in ANIMALS.values()
    fine = runner.invoke(app, ["answer", best, "--story", str(story), "--question", "What is emily afraid of?"])
    assert fine.exit_code == 0 and "guess" not in fine.output.splitlines()[0]


def test_class_folder_with_one_file_of_lines(tmp_path):
    for label in ("neg", "pos"):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "all.txt").write_text("one text\nanother text\na third\n")
    with pytest.raises(ValueError, match=r"neg/all\.txt \(3 lines\).*one example per file.*\.tsv table"):
        read_folder(tmp_path / "data")
    (tmp_path / "data" / "pos" / "all.txt").unlink()
    for i in range(2):
        (tmp_path / "data" / "pos" / f"{i}.txt").write_text("a good film\n")
    with pytest.warns(UserWarning, match=r"neg/all\.txt \(3 lines\)"):
        data = read_folder(tmp_path / "data")
    assert len(data) == 3


def test_evaluate_on_a_txt_file_names_the_formats(classifier, tmp_path):
    (tmp_path / "texts.txt").write_text("a good film\n")
    line = one_line_error(runner.invoke(app, ["evaluate", str(classifier / "run" / "best"),
                                              "--data", str(tmp_path / "texts.txt")]))
    assert "delimiter=" not in line and ".tsv or .csv table with a header row" in line
    assert "rnnkit predict --input" in line
    (tmp_path / "texts.dat").write_text("sentence\na good film\n")
    line = one_line_error(runner.invoke(app, ["predict", str(classifier / "run" / "best"), "--input",
                                              str(tmp_path / "texts.dat"), "--output", str(tmp_path / "out.tsv")]))
    assert "delimiter=" not in line and "a .txt file with one text per line" in line


# -------------------------------------------------------------------------- predict --top-k, TSV
def test_predict_top_k(classifier):
    result = runner.invoke(app, ["predict", str(classifier / "run" / "best"), "a good film", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.output.strip().splitlines()]
    assert sorted(label for label, _ in rows) == ["mid", "neg", "pos"]
    probs = [float(p) for _, p in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-3)
    single = runner.invoke(app, ["predict", str(classifier / "run" / "best"), "a good film"])
    assert single.output.strip() == result.output.strip().splitlines()[0]
    assert "--top-k: expected an integer >= 1, got 0" in one_line_error(
        runner.invoke(app, ["predict", str(classifier / "run" / "best"), "x", "--top-k", "0"]))


def test_predict_output_round_trips_quotes_tabs_and_newlines(classifier, tmp_path):
    texts = ['she said "great" twice', 'a \\"bad\\" film', "tab\there", 'ends with a quote"', "two\nlines"]
    source = tmp_path / "in.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("sentence", "label"), *[(t, "pos") for t in texts]])
    out = tmp_path / "out.tsv"
    result = runner.invoke(app, ["predict", str(classifier / "run" / "best"), "--input", str(source),
                                 "--output", str(out), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert frame["text"].tolist() == texts
    assert list(frame.columns[:5]) == ["text", "label", "probability", "label_2", "probability_2"]
    assert (frame["probability"] >= frame["probability_2"]).all() and (frame["label"] != frame["label_2"]).all()
    assert frame["true_label"].tolist() == ["pos"] * 5
    with open(out, newline="", encoding="utf-8") as f:
        assert [row[0] for row in csv.reader(f, delimiter="\t")][1:] == texts
    to_stdout = runner.invoke(app, ["predict", str(classifier / "run" / "best"), "--input", str(source),
                                    "--top-k", "2"])  # without --output: the same TSV on standard output
    assert to_stdout.exit_code == 0 and to_stdout.output == out.read_text(encoding="utf-8")


# ------------------------------------------------------------------- torch.load(weights_only=True)
class RNNModel(nn.Module):
    """pytorch/examples word_language_model's model: Embedding → recurrent layer → Linear."""

    def __init__(self, rnn: type[nn.Module], ntoken: int = 30, ninp: int = 8, nhid: int = 8) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = rnn(ninp, nhid, 2, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, x, hidden=None):
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(output)), hidden


TORCH_NN = [RNNModel, nn.Dropout, nn.Linear, nn.Embedding, nn.LSTM, nn.GRU, nn.RNN]  # main.py's allow-list


@pytest.mark.parametrize("rnn", [nn.LSTM, rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN, rnnkit.LayerNormLSTM])
def test_whole_model_reloads_with_weights_only(tmp_path, rnn):
    """word_language_model's main.py: torch.save(model, f), then torch.load(f, weights_only=True) with
    the torch.nn classes allowed; rnnkit's layers load wherever torch.nn's do."""
    torch.manual_seed(0)
    model = RNNModel(rnn).eval()
    with open(tmp_path / "model.pt", "wb") as f:
        torch.save(model, f)
    with open(tmp_path / "model.pt", "rb") as f, torch.serialization.safe_globals(TORCH_NN):
        loaded = torch.load(f, weights_only=True)
    x = torch.randint(0, 30, (5, 3))
    assert type(loaded.rnn) is rnn and torch.equal(loaded(x)[0], model(x)[0])


def test_sequence_model_and_streamed_layer_reload_with_weights_only():
    model = rnnkit.SequenceModel(rnnkit.ModelConfig(cell="gru", vocab_size=12, embedding_dim=4, hidden_size=5,
                                                    num_layers=2, output_size=12, output_per="step")).eval()
    layer = rnnkit.LSTM(3, 4)
    layer.step(torch.zeros(1, 3))  # a layer that has streamed holds a cached streamer
    for module in (model, layer):
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        with torch.serialization.safe_globals([nn.ModuleList, nn.Dropout, nn.Linear]):
            loaded = torch.load(buffer, weights_only=True)
        assert type(loaded) is type(module)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.state_dict().values()))


# --------------------------------------------------------------------- the checkpoint a run names
def test_run_stopped_before_validation_names_last(tmp_path):
    config = tmp_path / "clf.toml"
    exp = classifier_experiment(tmp_path, epochs=3, max_minutes=1e-9)
    config.write_text(f'task = "classifier"\n[data]\ntrain = "{exp.data.train}"\nvalid = "{exp.data.valid}"\n'
                      'batch_size = 16\n[model]\ncell = "gru"\nembedding_dim = 8\nhidden_size = 8\n'
                      'bidirectional = false\n[train]\nepochs = 3\nmax_minutes = 1e-9\n')
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert report["checkpoint"] == str(tmp_path / "run" / "last") and Path(report["checkpoint"]).is_dir()
    assert not (tmp_path / "run" / "best").exists()
    assert "never validated" in report["note"] and "time_budget" in report["note"]
