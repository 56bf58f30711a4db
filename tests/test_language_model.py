"""The language-model task end to end on a small corpus made here: fit, predict, generate,
evaluate, checkpoints, and the CLI's messages for bad input."""

from __future__ import annotations

import gzip
import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

import rnnkit
from rnnkit import tasks
from rnnkit.cli import app
from rnnkit.model import ModelConfig
from rnnkit.tasks.language_model import LMDataConfig, LMExperiment
from rnnkit.train import TrainConfig

LINES = ["the cats are cute", "the dogs are loud", "a cat is small", "the cats are lovely",
         "the birds are loud", "a dog is big"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = torch.Generator().manual_seed(0)
    order = torch.randint(len(LINES), (600,), generator=rng).tolist()
    (root / "train.txt").write_text("\n".join(LINES[i] for i in order) + "\n")
    with gzip.open(root / "valid.txt.gz", "wt") as f:  # .gz corpora read the same way
        f.write("\n".join(LINES * 5) + "\n")
    return root


def experiment(corpus, out, **data) -> LMExperiment:
    return LMExperiment(
        data=LMDataConfig(train=str(corpus / "train.txt"), valid=str(corpus / "valid.txt.gz"),
                          batch_size=8, eval_batch_size=4, bptt=10, **data),
        model=ModelConfig(cell="lstm", embedding_dim=24, hidden_size=32),
        train=TrainConfig(epochs=12, optimizer="adam", lr=1e-2, log_every=1000))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    return tasks.fit(experiment(corpus, out), out), out


def test_learns_next_words(trained):
    lm, out = trained
    assert {w for w, _ in lm.predict_next("the cats are", k=2)} == {"cute", "lovely"}
    top = lm.predict_next("the dogs", k=3)
    assert top[0][0] == "are" and top[0][1] > 0.5
    assert all(0 <= p <= 1 for _, p in top) and top == sorted(top, key=lambda t: -t[1])
    assert (out / "best" / "model.safetensors").exists() and (out / "last" / "vocab.json").exists()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if "val_ppl" in line]
    assert len(epochs) == 12 and epochs[-1]["val_ppl"] < epochs[0]["val_ppl"]


def test_checkpoint_round_trip_and_generate(trained):
    lm, out = trained
    loaded = rnnkit.load(out / "best")
    (words_a, probs_a), (words_b, probs_b) = (zip(*m.predict_next("the cats are", k=5)) for m in (loaded, lm))
    assert words_a == words_b and probs_a == pytest.approx(probs_b)
    text = loaded.generate("the", length=12, temperature=0.5, seed=3)
    assert text == loaded.generate("the", length=12, temperature=0.5, seed=3)  # seeded
    assert set(text.split()) <= set(" ".join(LINES).split())
    result = loaded.evaluate(lm.experiment.data.train)
    assert 1.0 < result["ppl"] < 3.0 and result["bpc"] == pytest.approx(result["loss"] / 0.6931471805599453)


def test_unknown_prompt_falls_back_with_warning(trained):
    lm, _ = trained
    with pytest.warns(UserWarning, match="every token of 'zebras giraffes' is unknown"):
        assert len(lm.predict_next("zebras giraffes", k=3)) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.predict_next("the cats", k=1)


def test_char_and_subword_tokenizers(corpus, tmp_path):
    for tokenizer in ("char", "subword"):
        exp = experiment(corpus, tmp_path / tokenizer, tokenizer=tokenizer, subword_vocab=260)
        exp = exp.model_copy(update={"train": TrainConfig(epochs=1, log_every=1000)})
        lm = tasks.fit(exp, tmp_path / tokenizer)
        assert lm.char_level == (tokenizer == "char")
        assert isinstance(lm.generate("the c", length=5, seed=0), str)


runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_generate_and_evaluate(trained):
    lm, out = trained
    result = cli("generate", out / "best", "--prompt", "the cats are", "--top-k", "2")
    assert result.exit_code == 0
    assert {line.split()[1] for line in result.output.strip().splitlines()} == {"cute", "lovely"}
    result = cli("generate", out / "best", "--prompt", "the", "--length", "5", "--seed", "1")
    assert result.exit_code == 0 and result.output.startswith("the ")
    result = cli("evaluate", out / "best", "--data", lm.experiment.data.train)
    assert result.exit_code == 0 and result.output.startswith("ppl ")


@pytest.mark.parametrize("make_args,message", [
    (lambda p: ["train", p / "missing.toml"], "missing.toml: config file not found"),
    (lambda p: ["train", write(p / "a.toml", 'task = "language_model"\n[model]\nhiden_size = 3\n')],
     "model.hiden_size: unknown key"),
    (lambda p: ["train", write(p / "b.toml", 'task = "language_model"\n[train]\nlr = "fast"\n')],
     "train.lr: "),
    (lambda p: ["train", write(p / "c.toml", 'task = "language_model"\n[data]\ntrain = "%s"\n'
                                % (p / "nothere.txt"))], "nothere.txt"),
    (lambda p: ["train", write(p / "d.toml", 'task = "language_model"\n[data]\ntrain = "%s"\n'
                                % write(p / "empty.txt", ""))], "is empty"),
    (lambda p: ["generate", p / "nockpt", "--prompt", "x"], "no checkpoint directory"),
    (lambda p: ["train", write(p / "e.toml", 'task = "language_model"\n[data]\nbatch_size = 20\n'), "--nproc", 3],
     "data.batch_size=20: cannot split evenly over 3 processes"),
])
def test_cli_user_errors_exit_2_without_traceback(tmp_path, make_args, message):
    result = cli(*make_args(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def write(path, text):
    path.write_text(text)
    return path


def test_corrupt_and_foreign_checkpoints(trained, tmp_path):
    import shutil
    _, out = trained
    bad = tmp_path / "bad"
    shutil.copytree(out / "best", bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    result = cli("generate", bad, "--prompt", "the")
    assert result.exit_code == 2 and "model.safetensors" in result.output
    other = tmp_path / "other"
    shutil.copytree(out / "best", other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["hidden_size"] = 16  # a checkpoint whose weights don't fit its model
    (other / "config.json").write_text(json.dumps(config))
    result = cli("generate", other, "--prompt", "the")
    assert result.exit_code == 2 and "does not match the model" in result.output
