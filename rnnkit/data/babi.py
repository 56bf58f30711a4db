"""bAbI question answering (Weston et al. 2015): reading stories, questions, answers and supporting facts.

The format, one numbered line each; numbering restarts at 1 with each new story::

    1 Mary moved to the bathroom.
    2 John went to the hallway.
    3 Where is Mary? \\tbathroom\\t1                 question TAB answer TAB supporting line numbers

A question sees every statement of its story before it (questions are not statements). Answers
with several words (task 8: ``apple,football``) stay one answer string.

    examples = read_babi("qa1_single-supporting-fact_train.txt")
    ex = examples[0]
    ex.story       # [["mary", "moved", "to", "the", "bathroom"], ["john", "went", "to", "the", "hallway"]]
    ex.question    # ["where", "is", "mary"]
    ex.answer      # "bathroom"
    ex.supporting  # [0]: indices into ex.story
    ex.origin      # "qa1_...:3"
    ex.story_id    # 0: which story of the file (questions of one story share it)

``encode_examples`` turns examples into id lists; ``QABatches`` batches them by story length.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from .text import Vocab, read_text

__all__ = ["BabiExample", "tokenize", "parse_babi", "read_babi", "parse_story", "task_file",
           "EncodedExample", "encode_sentence", "encode_examples", "QABatch", "QABatches"]

_WORD = re.compile(r"[\w'-]+")
_LINE = re.compile(r"^[ ]*(\d+) +(.*?)[ \r]*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def tokenize(text: str) -> list[str]:
    """Lowercased words; punctuation is dropped (``"Where is Mary?"`` → ``["where", "is", "mary"]``)."""
    return _WORD.findall(text.lower())


@dataclass
class BabiExample:
    """One question with the statements of its story before it (tokenized)."""

    story: list[list[str]]
    question: list[str]
    answer: str
    supporting: list[int] = field(default_factory=list)
    origin: str = ""
    story_id: int = 0


def parse_babi(text: str, source: str = "<text>") -> list[BabiExample]:
    """Parse bAbI text; ``source`` names the file in errors, which give its line (``file:line``).

    Errors (ValueError): a line without a leading line number, a number that neither continues
    the story (previous + 1) nor starts one (1), a question line without an answer or with more
    than three tab-separated fields, and supporting facts that are not numbers of earlier
    statements of the same story.
    """
    examples: list[BabiExample] = []
    story: list[list[str]] = []
    statement_at: dict[int, int] = {}  # story line number → index in story
    previous, story_id = 0, -1
    for lineno, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        where = f"{source}:{lineno}"
        match = _LINE.match(raw)
        if match is None:
            raise ValueError(f"{where}: expected a line number, a space and a sentence (e.g. '1 Mary moved to "
                             f"the bathroom.'), got {raw[:80]!r}")
        number, rest = int(match.group(1)), match.group(2)
        if number == 1:
            story, statement_at, story_id = [], {}, story_id + 1
        elif number != previous + 1:
            raise ValueError(f"{where}: expected line number {previous + 1} (or 1 to start a new story), got {number}")
        previous = number
        if "\t" not in rest:
            if not tokenize(rest):
                raise ValueError(f"{where}: expected a statement with words, got {rest!r}")
            statement_at[number] = len(story)
            story.append(tokenize(rest))
            continue
        fields = [f.strip() for f in rest.split("\t")]
        if len(fields) not in (2, 3):
            raise ValueError(f"{where}: expected 'question<TAB>answer<TAB>supporting facts' (2 or 3 tab-separated "
                             f"fields), got {len(fields)} fields")
        question, answer = fields[0], fields[1]
        if not tokenize(question):
            raise ValueError(f"{where}: expected a question before the first tab, got {question!r}")
        if not answer:
            raise ValueError(f"{where}: expected an answer after the question's tab, got an empty field")
        supporting = []
        for token in (fields[2].split() if len(fields) == 3 else []):
            if not token.isdigit() or int(token) not in statement_at:
                raise ValueError(f"{where}: supporting facts: expected line numbers of earlier statements of "
                                 f"this story {sorted(statement_at)}, got {token!r}")
            supporting.append(statement_at[int(token)])
        examples.append(BabiExample([list(s) for s in story], tokenize(question), answer, supporting, where,
                                    story_id))
    return examples


def read_babi(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict",
              allow_control_chars: bool = False) -> list[BabiExample]:
    """The examples of a bAbI file, decoded as ``read_text`` does (``encoding``, ``errors``,
    ``allow_control_chars``); malformed lines raise with the file and line (see ``parse_babi``)."""
    examples = parse_babi(read_text(path, encoding, errors, allow_control_chars), str(path))
    if not examples:
        raise ValueError(f"{path}: expected bAbI questions (lines 'N question<TAB>answer<TAB>facts'), found none")
    return examples


def parse_story(text: str) -> list[list[str]]:
    """A story given by a user: one or more sentences per line, optionally numbered as in bAbI;
    question lines (with a tab) are skipped. Returns tokenized sentences (possibly none)."""
    sentences = []
    for raw in text.split("\n"):
        match = _LINE.match(raw)
        line = match.group(2) if match else raw
        if "\t" in line:
            continue
        for sentence in _SENTENCE_END.split(line.strip()):
            words = tokenize(sentence)
            if words:
                sentences.append(words)
    return sentences


def task_file(task: int, split: str) -> str:
    """The registered file name of bAbI task ``task`` (1-20), split "train" or "test", e.g.
    ``task_file(15, "train")`` → ``"tasks_1-20_v1-2/en/qa15_basic-deduction_train.txt"``."""
    from .datasets import dataset_info
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    files = [f for f in dataset_info("babi").files if re.search(rf"/qa{task}_[^/]*_{split}\.txt$", f)]
    if isinstance(task, bool) or not isinstance(task, int) or len(files) != 1:
        raise ValueError(f"task: expected a bAbI task number in 1..20, got {task!r}")
    return files[0]


# ------------------------------------------------------------------------------------ encoding
@dataclass
class EncodedExample:
    """Ids of one example: the last ``memory_size`` statements, the question, the answer class
    (-1 when the answer is not among the known answers) and supporting facts (indices into story)."""

    story: list[list[int]]
    question: list[int]
    answer: int
    supporting: list[int]


def encode_sentence(tokens: Sequence[str], vocab: Vocab) -> list[int]:
    """Ids of a sentence; an empty one is ``[<eos>]`` (the empty sequence)."""
    return vocab.encode(tokens) or [vocab.eos_id]


def encode_examples(examples: Iterable[BabiExample], vocab: Vocab, answers: dict[str, int],
                    memory_size: int = 50) -> list[EncodedExample]:
    """Ids of each example, keeping the last ``memory_size`` statements (0: all). An empty story
    becomes one empty sentence (``[<eos>]``)."""
    out = []
    for ex in examples:
        keep = ex.story[-memory_size:] if memory_size else ex.story
        offset = len(ex.story) - len(keep)
        story = [encode_sentence(s, vocab) for s in keep] or [[vocab.eos_id]]
        supporting = [i - offset for i in ex.supporting if i >= offset]
        out.append(EncodedExample(story, encode_sentence(ex.question, vocab), answers.get(ex.answer, -1), supporting))
    return out


class QABatch(NamedTuple):
    """A padded batch (a NamedTuple, so that the Trainer moves its tensors to the device).

    story <int64>[B, S, W]; sentence_lengths <int64>[B, S] (0 for padding sentences);
    story_lengths <int64>[B]; question <int64>[B, Q]; question_lengths <int64>[B];
    answer <int64>[B] (-1: unknown answer); supporting <int64>[B, F]: supporting facts as sentence
    indices within the batch's story rows, -1 padded (None when not collated).
    """

    story: Tensor
    sentence_lengths: Tensor
    story_lengths: Tensor
    question: Tensor
    question_lengths: Tensor
    answer: Tensor
    supporting: Tensor | None = None

    def to(self, device: torch.device | str) -> QABatch:
        return QABatch(*(None if t is None else t.to(device) for t in self))

    @classmethod
    def collate(cls, examples: Sequence[EncodedExample]) -> QABatch:
        b = len(examples)
        s = max(len(e.story) for e in examples)
        w = max(len(sent) for e in examples for sent in e.story)
        q = max(len(e.question) for e in examples)
        story = torch.zeros(b, s, w, dtype=torch.int64)
        sentence_lengths = torch.zeros(b, s, dtype=torch.int64)
        question = torch.zeros(b, q, dtype=torch.int64)
        supporting = torch.full((b, max(1, max(len(e.supporting) for e in examples))), -1, dtype=torch.int64)
        for i, e in enumerate(examples):
            supporting[i, :len(e.supporting)] = torch.tensor(e.supporting, dtype=torch.int64)
            for j, sent in enumerate(e.story):
                story[i, j, :len(sent)] = torch.tensor(sent)
                sentence_lengths[i, j] = len(sent)
            question[i, :len(e.question)] = torch.tensor(e.question)
        return cls(story, sentence_lengths, torch.tensor([len(e.story) for e in examples]), question,
                   torch.tensor([len(e.question) for e in examples]), torch.tensor([e.answer for e in examples]),
                   supporting)


class QABatches:
    """Batches grouped by story length (few padding sentences), reshuffled each epoch from
    ``seed`` and the epoch (the same epoch gives the same batches); ``shuffle=False`` sorts by
    story length once (evaluation) and ``index_batches`` tells which examples each batch holds.
    With ``world_size`` > 1 each rank takes rows ``rank::world_size`` of every global batch."""

    def __init__(self, examples: Sequence[EncodedExample], batch_size: int, *, shuffle: bool = True,
                 pool: int = 20, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not examples:
            raise ValueError("examples: expected at least one example, got none")
        for name, value in (("batch_size", batch_size), ("pool", pool), ("world_size", world_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        self.examples, self.batch_size, self.shuffle = list(examples), batch_size, shuffle
        self.pool, self.seed, self.rank, self.world_size = pool, seed, rank, world_size
        self.sizes = torch.tensor([len(e.story) for e in self.examples])

    def index_batches(self, epoch: int = 1) -> list[list[int]]:
        n, b = len(self.examples), self.batch_size
        if not self.shuffle:
            order = torch.sort(self.sizes, stable=True).indices.tolist()
            batches = [order[i:i + b] for i in range(0, n, b)]
        else:
            rng = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=rng)
            batches = []
            for start in range(0, n, b * self.pool):
                chunk = perm[start:start + b * self.pool]
                chunk = chunk[torch.sort(self.sizes[chunk], stable=True).indices].tolist()
                batches += [chunk[i:i + b] for i in range(0, len(chunk), b)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=rng).tolist()]
        if self.world_size > 1:
            batches = [idx[self.rank::self.world_size] for idx in batches if len(idx) >= self.world_size]
        return batches

    def batches(self, epoch: int = 1) -> list[QABatch]:
        return [QABatch.collate([self.examples[i] for i in idx]) for idx in self.index_batches(epoch)]

    def __len__(self) -> int:
        return len(self.index_batches(1))


def warn_unknown_answers(examples: Sequence[BabiExample], answers: dict[str, int], source: str) -> int:
    """Warn (once) about answers the model cannot give; returns their count."""
    unknown = [e for e in examples if e.answer not in answers]
    if unknown:
        warnings.warn(f"{source}: {len(unknown)} question(s) have answers the model never saw in training "
                      f"(first: {unknown[0].answer!r} at {unknown[0].origin}); they count as wrong", stacklevel=2)
    return len(unknown)
