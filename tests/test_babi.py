"""bAbI question answering: the reader and its errors, batching, the QA model, the task end to end
on a small single-supporting-fact task made here, and the `answer` CLI."""

from __future__ import annotations

import random

import pytest
import torch
from typer.testing import CliRunner

from rnnkit import tasks
from rnnkit.cli import app
from rnnkit.data.babi import (QABatch, QABatches, encode_examples, parse_babi, parse_story, read_babi, task_file,
                              tokenize)
from rnnkit.data.text import Vocab
from rnnkit.tasks.qa import QADataConfig, QAExperiment, QAModel, QAModelConfig, QuestionAnswering
from rnnkit.train import TrainConfig

torch.set_num_threads(1)

SAMPLE = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Where is Daniel? \thallway\t4
1 Sandra travelled to the office.
2 Where is Sandra? \toffice\t1
"""

PEOPLE, PLACES = ["mary", "john", "daniel", "sandra"], ["bathroom", "hallway", "office", "garden", "kitchen"]
VERBS = ["moved to", "went to", "travelled to", "journeyed to"]


def make_task(n_stories: int, seed: int) -> str:
    """Stories of 2-4 moves, one 'Where is X?' question at the end of each (a QA1-like task)."""
    rng, lines = random.Random(seed), []
    for _ in range(n_stories):
        where, n = {}, 0
        for n in range(1, rng.randint(2, 4) + 1):
            person, place = rng.choice(PEOPLE), rng.choice(PLACES)
            where[person] = (place, n)
            lines.append(f"{n} {person.capitalize()} {rng.choice(VERBS)} the {place}.")
        person = rng.choice(sorted(where))
        lines.append(f"{n + 1} Where is {person.capitalize()}? \t{where[person][0]}\t{where[person][1]}")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- reader
def test_parse_babi():
    examples = parse_babi(SAMPLE, "s.txt")
    assert [e.answer for e in examples] == ["bathroom", "hallway", "office"]
    first, second, third = examples
    assert first.story == [tokenize("Mary moved to the bathroom."), tokenize("John went to the hallway.")]
    assert first.question == ["where", "is", "mary"] and first.supporting == [0] and first.origin == "s.txt:3"
    assert len(second.story) == 3 and second.supporting == [2]  # questions are not statements
    assert third.story == [["sandra", "travelled", "to", "the", "office"]] and third.story_id == 1
    assert first.story_id == second.story_id == 0
    assert parse_babi("1 A b.\n2 Q?\tyes\n")[0].supporting == []  # supporting facts are optional


@pytest.mark.parametrize("text, message", [
    ("1 Mary moved.\nMary went home.\n", r"f\.txt:2: expected a line number, a space and a sentence"),
    ("1 Mary moved.\n3 John went.\n", r"f\.txt:2: expected line number 2 \(or 1 to start a new story\), got 3"),
    ("1 Mary moved.\n2 Where? \t\t1\n", r"f\.txt:2: expected an answer after the question's tab"),
    ("1 Mary moved.\n2 Where?\ta\t1\textra\n", r"f\.txt:2: expected 'question<TAB>answer<TAB>supporting facts'"),
    ("1 Mary moved.\n2 Where?\ta\t5\n", r"f\.txt:2: supporting facts: expected line numbers of earlier "
                                        r"statements of this story \[1\], got '5'"),
    ("1 Mary moved.\n2 Where is she?\tx\t1\n3 Why?\ty\t2\n", r"f\.txt:3: supporting facts: .* got '2'"),
    ("1 Mary moved.\n2 \ta\t1\n", r"f\.txt:2: expected a question before the first tab"),
])
def test_malformed_lines_name_file_and_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_babi(text, "f.txt")


def test_read_babi_encoding_errors_and_empty_files(tmp_path):
    path = tmp_path / "qa.txt"
    path.write_bytes(b"1 Mary moved to the bathroom.\n2 Where is Mary? \tbath\xe9room\t1\n")
    with pytest.raises(ValueError, match=r"qa\.txt is not valid utf-8: byte 0xe9 at byte offset 52"):
        read_babi(path)
    assert read_babi(path, errors="replace")[0].answer == "bath\ufffdroom"
    (tmp_path / "none.txt").write_text("1 Mary moved.\n")
    with pytest.raises(ValueError, match=r"none\.txt: expected bAbI questions"):
        read_babi(tmp_path / "none.txt")


def test_parse_story_and_task_files():
    assert parse_story("Mary moved to the bathroom. John went to the hallway.\n\n3 Sandra left!\n4 Q?\tx\t1") == [
        tokenize("Mary moved to the bathroom"), tokenize("John went to the hallway"), ["sandra", "left"]]
    assert parse_story("  \n") == []
    assert task_file(1, "train") == "tasks_1-20_v1-2/en/qa1_single-supporting-fact_train.txt"
    assert task_file(10, "test").endswith("qa10_indefinite-knowledge_test.txt")
    assert task_file(20, "test").endswith("qa20_agents-motivations_test.txt")
    with pytest.raises(ValueError, match="task: expected a bAbI task number in 1..20, got 21"):
        task_file(21, "test")


def test_encoding_and_batches():
    examples = parse_babi(SAMPLE)
    vocab = Vocab.build([w for s in e.story for w in s] + e.question for e in examples)
    answers = {"bathroom": 0, "hallway": 1}
    encoded = encode_examples(examples, vocab, answers, memory_size=2)
    assert [len(e.story) for e in encoded] == [2, 2, 1] and encoded[1].supporting == [1]  # last 2 statements
    assert [e.answer for e in encoded] == [0, 1, -1]  # "office" is not a known answer
    batch = QABatch.collate(encoded)
    assert batch.story.shape == (3, 2, 6) and batch.sentence_lengths.tolist() == [[5, 5], [5, 6], [5, 0]]
    assert batch.story_lengths.tolist() == [2, 2, 1] and batch.question_lengths.tolist() == [3, 3, 3]
    batches = QABatches(encoded * 10, 4, seed=1)
    assert [b.answer.tolist() for b in batches.batches(3)] == [b.answer.tolist() for b in batches.batches(3)]
    assert sorted(i for idx in batches.index_batches(2) for i in idx) == list(range(30))
    evaluation = QABatches(encoded * 10, 4, shuffle=False)
    sizes = [n for b in evaluation.batches() for n in b.story_lengths.tolist()]
    assert sizes == sorted(sizes) == [1] * 10 + [2] * 20  # sorted by story length


# ----------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("options", [{}, {"attention": False}, {"story_encoder": False, "cell": "lstm"},
                                     {"share_encoder": False, "bidirectional": False, "time_encoding": False}])
def test_model_shapes_and_padding_invariance(options):
    torch.manual_seed(0)
    model = QAModel(QAModelConfig(vocab_size=20, answer_size=5, embedding_dim=8, hidden_size=6, hops=2,
                                  memory_size=6, dropout=0.0, **options)).eval()
    story = torch.randint(3, 20, (2, 3, 4))
    sentence_lengths = torch.tensor([[4, 2, 3], [1, 4, 0]])
    batch = QABatch(story, sentence_lengths, torch.tensor([3, 2]), torch.randint(3, 20, (2, 5)),
                    torch.tensor([5, 2]), torch.tensor([1, 4]))
    logits, attention = model(batch)
    assert logits.shape == (2, 5)
    if model.config.attention:
        assert attention.shape == (2, 2, 3) and attention[:, 1, 2].abs().max() == 0  # padding sentence
        assert torch.allclose(attention.sum(-1), torch.ones(2, 2))
    else:
        assert attention is None
    # extra padding (sentences, words, question steps) changes nothing
    padded = QABatch(torch.cat([torch.nn.functional.pad(story, (0, 2)), torch.zeros(2, 2, 6, dtype=torch.long)], 1),
                     torch.cat([sentence_lengths, torch.zeros(2, 2, dtype=torch.long)], 1), batch.story_lengths,
                     torch.nn.functional.pad(batch.question, (0, 3)), batch.question_lengths, batch.answer)
    assert torch.allclose(model(padded)[0], logits, atol=1e-5)


# ------------------------------------------------------------------------------------------ task
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("babi")
    (root / "train.txt").write_text(make_task(240, 0))
    (root / "test.txt").write_text(make_task(80, 1))
    exp = QAExperiment(
        data=QADataConfig(dataset="", train=str(root / "train.txt"), test=str(root / "test.txt"), batch_size=16),
        model=QAModelConfig(embedding_dim=16, hidden_size=16, hops=1, memory_size=8, dropout=0.0),
        train=TrainConfig(epochs=8, lr=1e-2, monitor="val_accuracy", monitor_mode="max", log_every=1000))
    return tasks.fit(exp, root / "run"), root


def test_fit_answers_questions(trained):
    qa, root = trained
    assert isinstance(qa, QuestionAnswering)
    assert qa.results["test_accuracy"] > 0.6  # chance: 1 in 5 places
    assert (root / "run" / "best" / "answers.json").exists() and (root / "run" / "results.json").exists()
    result = qa.evaluate(root / "test.txt")
    assert result["n"] == 80 and result["accuracy"] == pytest.approx(qa.results["test_accuracy"])
    answer = qa.answer("John went to the garden.\nMary moved to the office.", "Where is Mary?")
    assert answer.answer in PLACES and 0 < answer.probability <= 1
    assert len(answer.attention) == 2 and sum(answer.attention) == pytest.approx(1)


def test_checkpoint_round_trip_and_empty_inputs(trained):
    qa, root = trained
    again = tasks.load(root / "run" / "best")
    story = ["Sandra went to the kitchen.", "Mary moved to the office."]
    assert again.answer(story, "Where is Sandra?") == qa.answer(story, "Where is Sandra?")
    with pytest.raises(ValueError, match="story: expected at least one sentence, got none"):
        again.answer("", "Where is Mary?")
    with pytest.warns(UserWarning, match="the answer is a guess"):
        result = again.answer("", "Where is Mary?", allow_guess=True)
    assert result.answer in qa.answers.names and result.guess
    with pytest.warns(UserWarning, match=r"unknown to the model and read as <unk>"):
        again.answer("Zed flew to Mars.", "Where is Zed?")


def test_cli_answer(trained, tmp_path):
    _, root = trained
    story = tmp_path / "story.txt"
    story.write_text("1 Mary moved to the bathroom.\n2 John went to the hallway.\n")
    runner = CliRunner()
    result = runner.invoke(app, ["answer", str(root / "run" / "best"), "--story", str(story),
                                 "--question", "Where is Mary?"])
    assert result.exit_code == 0, result.output
    answer, prob = result.output.splitlines()[0].split("\t")
    assert answer in PLACES and 0 < float(prob) <= 1 and "attention" in result.output
    story.write_bytes(b"Mary moved to the bathroom.\nJohn w\xe9nt to the hallway.\n")
    args = ["answer", str(root / "run" / "best"), "--story", str(story), "--question", "Where is John?"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "story.txt is not valid utf-8: byte 0xe9 at byte offset 34" in result.output
    assert runner.invoke(app, args + ["--encoding-errors", "replace"]).exit_code == 0
    result = runner.invoke(app, ["predict", str(root / "run" / "best"), "text"])
    assert result.exit_code == 2 and "a qa checkpoint; rnnkit predict needs a classifier checkpoint" in result.output


def test_training_file_errors(tmp_path):
    (tmp_path / "bad.txt").write_text("1 Mary moved.\n2 Where is Mary?\tnowhere\t1\nbroken line\n")
    exp = QAExperiment(data=QADataConfig(dataset="", train=str(tmp_path / "bad.txt")))
    with pytest.raises(ValueError, match=r"bad\.txt:3: expected a line number"):
        tasks.fit(exp, tmp_path / "run")
    with pytest.raises(ValueError, match="data.task_id: needs dataset = 'babi'"):
        tasks.fit(QAExperiment(data=QADataConfig(dataset="", task_id=1)), tmp_path / "run")
