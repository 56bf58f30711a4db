"""Question answering over short stories in the bAbI format (Weston et al. 2015).

The network reads the story sentence by sentence and answers with a softmax over the answers
seen in training::

    sentence i ── Embedding ─► (bi)RNN over its words ─► s_i <float>[B, S, d]   (final states)
    question   ── the same (or its own) word RNN ─────► u   <float>[B, d]
    story encoder: a bidirectional RNN over s_1..s_S;  facts f_i = s_i + fwd_i + bwd_i
                   (+ a learned time embedding of the sentence's age, S-1-i)
    attention (hops k = 1..K, query q_1 = u):
        a_k = softmax_i( w · tanh(W [f_i*q_k, |f_i-q_k|, f_i*u, |f_i-u|]) )   over valid sentences
        c_k = Σ_i a_k,i f_i;   q_{k+1} = relu(U_k [q_k; c_k; u])
    without attention: c = the story encoder's final state (or the mean of the sentence vectors);
        q = relu(U [u; c; u])
    logits = V [q; u] → softmax over the answers

Training is weakly supervised (answers only; the supporting facts are read but not used). The
validation set, for early stopping, is ``data.valid`` or ``data.valid_fraction`` of the training
stories (whole stories, so that no validation question is about a story seen in training).

    qa = QuestionAnswering.fit("qa1_single-supporting-fact_train.txt", epochs=20)   # or parsed stories
    qa = QuestionAnswering.fit(load_experiment("configs/babi.toml"), "runs/babi/qa1")
    qa.answer("Mary moved to the bathroom. John went to the hallway.", "Where is Mary?")
    # Answer(answer='bathroom', probability=0.99, attention=[0.98, 0.02])
    qa.evaluate("qa1_single-supporting-fact_test.txt")   # {"accuracy": ..., "n": 1000, ...}
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from .. import distributed
from ..config import Config
from ..data.babi import (BabiExample, QABatch, QABatches, encode_examples, parse_story, read_babi, task_file,
                         tokenize, warn_unknown_answers)
from ..data.classification import LabelSet
from ..data.datasets import resolve_data_path
from ..data.text import TextFileConfig, Vocab
from ..layers.embedding import Embedding
from ..model import CellName, recurrent_layer
from ..train import TrainConfig, Trainer
from .base import Task, Training


class QAModelConfig(Config):
    """Architecture of a QAModel (module docstring)."""

    vocab_size: int = Field(0, ge=0, description="number of word ids (set from the training data)")
    answer_size: int = Field(0, ge=0, description="number of distinct answers (set from the training data)")
    cell: CellName = Field("gru", description="recurrent cell of every encoder (as SequenceModel's)")
    embedding_dim: int = Field(64, ge=1, description="size of the word vectors")
    hidden_size: int = Field(64, ge=1, description="hidden units per direction of the word encoder")
    bidirectional: bool = Field(True, description="read sentences and questions in both directions")
    share_encoder: bool = Field(True, description="encode questions with the sentence encoder")
    story_encoder: bool = Field(True, description="a bidirectional RNN over the sentence encodings, so that "
                                                  "each fact sees its context and order")
    time_encoding: bool = Field(True, description="add a learned embedding of each sentence's age (S-1-i)")
    attention: bool = Field(True, description="attend over the sentence encodings (else read the story "
                                              "encoder's final state)")
    hops: int = Field(3, ge=1, description="attention passes over the story")
    scoring: Literal["mlp", "dot"] = Field("mlp", description=(
        "attention scores: mlp over [f*q, |f-q|, f*u, |f-u|] (DMN+), or the dot product f·q (MemN2N)"))
    memory_size: int = Field(50, ge=1, description="the most recent sentences a question sees")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on word vectors and before the answer layer")

    @property
    def width(self) -> int:
        """d, the size of sentence, question and fact vectors."""
        return self.hidden_size * (2 if self.bidirectional else 1)


class QAModel(nn.Module):
    """The network of the module docstring.

    forward(batch: QABatch) -> (logits <float>[B, answers], attention <float>[hops, B, S] or None)
    """

    def __init__(self, config: QAModelConfig) -> None:
        super().__init__()
        if not isinstance(config, QAModelConfig):
            raise TypeError(f"config: expected a QAModelConfig, got {type(config).__name__}")
        for name in ("vocab_size", "answer_size"):
            if getattr(config, name) < 2:
                raise ValueError(f"{name}: expected at least 2 (set from the training data), got {getattr(config, name)}")
        self.config = c = config
        d = c.width

        def layer(input_size: int, hidden_size: int, **options: Any) -> nn.Module:
            return recurrent_layer(c.cell, input_size, hidden_size, **options)

        self.embedding = Embedding(c.vocab_size, c.embedding_dim, padding_idx=Vocab.pad_id)
        self.drop = nn.Dropout(c.dropout)
        self.sentence_rnn = layer(c.embedding_dim, c.hidden_size, bidirectional=c.bidirectional, batch_first=True)
        self.question_rnn = None if c.share_encoder else layer(c.embedding_dim, c.hidden_size,
                                                                 bidirectional=c.bidirectional, batch_first=True)
        self.story_rnn = layer(d, d, bidirectional=True, batch_first=True) if c.story_encoder else None
        self.time = nn.Embedding(c.memory_size, d) if c.time_encoding else None
        if self.time is not None:
            nn.init.normal_(self.time.weight, std=0.1)
        if c.attention:
            self.score = nn.Sequential(nn.Linear(4 * d, d), nn.Tanh(), nn.Linear(d, 1)) if c.scoring == "mlp" else None
            self.update = nn.ModuleList(nn.Linear(3 * d, d) for _ in range(c.hops))
        else:
            self.update = nn.ModuleList([nn.Linear(3 * d, d)])
        self.answer = nn.Linear(2 * d, c.answer_size)

    def _encode(self, rnn: nn.Module, ids: Tensor, lengths: Tensor) -> Tensor:
        """ids <int64>[N, W], lengths <int64>[N] (each >= 1) → <float>[N, d] (final state(s))."""
        _, h = rnn(self.drop(self.embedding(ids)), lengths=lengths)
        h = h[0] if isinstance(h, tuple) else h  # LSTM: (h, c)
        return torch.cat(list(h), dim=-1)  # [D, N, H] → [N, D*H]

    def forward(self, batch: QABatch) -> tuple[Tensor, Tensor | None]:
        c = self.config
        story, sentence_lengths, story_lengths = batch.story, batch.sentence_lengths, batch.story_lengths
        question, question_lengths = batch.question, batch.question_lengths
        b, s, w = story.shape
        valid = sentence_lengths > 0  # <bool>[B, S]
        flat = valid.reshape(-1)
        sentences = story.new_zeros(b * s, c.width, dtype=self.answer.weight.dtype)
        sentences[flat] = self._encode(self.sentence_rnn, story.reshape(b * s, w)[flat],
                                       sentence_lengths.reshape(-1)[flat])
        sentences = sentences.view(b, s, c.width)
        u = self._encode(self.question_rnn or self.sentence_rnn, question, question_lengths)
        facts = sentences
        final = None
        if self.story_rnn is not None:
            out, h = self.story_rnn(sentences, lengths=story_lengths)
            facts = sentences + out[..., :c.width] + out[..., c.width:]
            h = h[0] if isinstance(h, tuple) else h
            final = h[0] + h[1]
        if self.time is not None:
            age = (story_lengths[:, None] - 1 - torch.arange(s, device=story.device)[None, :])
            facts = facts + self.time(age.clamp(0, c.memory_size - 1))
        facts = facts * valid.unsqueeze(-1)
        attention = None
        if c.attention:
            q, weights = u, []
            for update in self.update:
                if self.score is None:
                    scores = torch.bmm(facts, q.unsqueeze(-1)).squeeze(-1)
                else:
                    qe, ue = q.unsqueeze(1).expand_as(facts), u.unsqueeze(1).expand_as(facts)
                    z = torch.cat([facts * qe, (facts - qe).abs(), facts * ue, (facts - ue).abs()], dim=-1)
                    scores = self.score(z).squeeze(-1)
                scores = scores.masked_fill(~valid, float("-inf"))
                a = torch.softmax(scores, dim=-1)
                weights.append(a)
                context = torch.bmm(a.unsqueeze(1), facts).squeeze(1)
                q = F.relu(update(torch.cat([q, context, u], dim=-1)))
            attention = torch.stack(weights)
        else:
            if final is None:
                final = facts.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
            q = F.relu(self.update[0](torch.cat([u, final, u], dim=-1)))
        return self.answer(self.drop(torch.cat([q, u], dim=-1))), attention


# ------------------------------------------------------------------------------------ configs
class QADataConfig(TextFileConfig):
    """Where the stories come from and how they are batched."""

    dataset: str = Field("babi", description="a registered data set whose files train/valid/test may name; "
                                             "'' when they are paths")
    data_dir: str = Field("", description="root holding <dataset>/<file> (default: $RNNKIT_DATA, then the cache)")
    task_id: int = Field(0, ge=0, le=20, description="bAbI task 1-20: its train and test files (unless "
                                                     "train/test are set); 0: use train/test")
    train: str = Field("", description="training questions in bAbI format (a path, or a file of `dataset`)")
    valid: str = Field("", description="validation questions; '' holds out valid_fraction of the training ones")
    test: str = Field("", description="questions scored once with the best model; '' for none")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="part of the training stories (with all "
                                                               "their questions) held out for validation "
                                                               "when valid = ''")
    supporting_facts: float = Field(0.0, ge=0, description=(
        "weight of an auxiliary loss teaching hop k to attend to the k-th supporting fact (strong "
        "supervision, as MemNN); 0 trains from the answers alone (weak supervision)"))
    batch_size: int = Field(32, ge=1, description="questions per training batch (global, across processes)")
    eval_batch_size: int = Field(256, ge=1, description="questions per batch when evaluating")


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=100, optimizer="adam", lr=3e-3, clip_norm=5.0, monitor="val_accuracy",
                       monitor_mode="max", early_stop_patience=25, log_every=1000)


class QAExperiment(Config):
    """A question-answering run: `rnnkit train CONFIG` with task = "qa"."""

    task: Literal["qa"] = Field("qa", description="the task this config trains")
    data: QADataConfig = Field(default_factory=QADataConfig, description="stories, questions, batches")
    model: QAModelConfig = Field(default_factory=QAModelConfig, description=(
        "the network; vocab_size and answer_size are set from the data"))
    train: TrainConfig = Field(default_factory=_default_train, description="optimiser, early stopping, checkpoints")


def _resolve(cfg: QADataConfig, value: str) -> Path:
    """A data path: a file of ``cfg.dataset`` when it names one, else a path."""
    return resolve_data_path(cfg.dataset, value, cfg.data_dir)


def load_splits(cfg: QADataConfig, seed: int = 0,
                given: dict[str, list[BabiExample]] | None = None) -> dict[str, list[BabiExample]]:
    """train, valid and (when configured) test examples: ``given`` ones by split, else read from
    the configured files."""
    given = given or {}
    train, test = cfg.train, cfg.test
    if cfg.task_id:
        if cfg.dataset != "babi":
            raise ValueError(f"data.task_id: needs dataset = 'babi', got dataset={cfg.dataset!r}")
        train, test = train or task_file(cfg.task_id, "train"), test or task_file(cfg.task_id, "test")
    if not train and "train" not in given:
        raise ValueError("data.train: expected a training file (or data.task_id), got none")
    read = lambda name: read_babi(_resolve(cfg, name), **cfg.reading())  # noqa: E731
    splits = {"train": given["train"] if "train" in given else read(train)}
    if "valid" in given or cfg.valid:
        splits["valid"] = given["valid"] if "valid" in given else read(cfg.valid)
    else:
        # hold out whole stories: questions on a story seen in training would leak its answers
        stories = sorted({ex.story_id for ex in splits["train"]})
        held = max(1, round(len(stories) * cfg.valid_fraction))
        if held >= len(stories):
            raise ValueError(f"data.valid_fraction: holding out {cfg.valid_fraction} of {len(stories)} stories "
                             "leaves none to train on")
        order = torch.randperm(len(stories), generator=torch.Generator().manual_seed(seed)).tolist()
        valid = {stories[i] for i in order[:held]}
        splits["valid"] = [ex for ex in splits["train"] if ex.story_id in valid]
        splits["train"] = [ex for ex in splits["train"] if ex.story_id not in valid]
    if "test" in given or test:
        splits["test"] = given["test"] if "test" in given else read(test)
    return splits


def as_examples(value: Any, arg: str) -> list[BabiExample]:
    """Parsed stories as BabiExamples: BabiExample objects (``read_babi``, ``parse_babi``) or
    ``(story, question, answer)`` triples, the story a text (``parse_story``) or a list of sentences.
    Triples with the same story text share a story id (held out together; negative, apart from
    the ids of the files' stories)."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise TypeError(f"{arg}: expected a bAbI file path or a list of examples, got {type(value).__name__}")
    examples, story_ids = [], {}
    for i, item in enumerate(value):
        if isinstance(item, BabiExample):
            examples.append(item)
            continue
        if not (isinstance(item, (tuple, list)) and len(item) == 3 and isinstance(item[1], str)
                and isinstance(item[2], str)):
            raise TypeError(f"{arg}[{i}]: expected a BabiExample or a (story, question, answer) triple of "
                            f"strings, got {item!r:.80}")
        story, question, answer = item
        sentences = parse_story(story) if isinstance(story, str) else [tokenize(s) for s in story if tokenize(s)]
        key = story if isinstance(story, str) else "\n".join(story)
        story_id = story_ids.setdefault(key, -len(story_ids) - 1)
        examples.append(BabiExample(sentences, tokenize(question), answer.strip(), [], f"{arg}[{i}]", story_id))
    if not examples:
        raise ValueError(f"{arg}: expected at least one example, got none")
    return examples


def attention_loss(attention: Tensor, supporting: Tensor) -> Tensor:
    """Mean -log attention of hop k on the k-th supporting fact (facts beyond the hops, and padding
    -1, are left out). attention <float>[hops, B, S]; supporting <int64>[B, F]."""
    facts = min(attention.shape[0], supporting.shape[1])
    target = supporting[:, :facts].t()  # [facts, B]
    logp = attention[:facts].clamp(min=1e-8).log()  # [facts, B, S]
    keep = target >= 0
    if not keep.any():
        return attention.new_zeros(())
    picked = logp.gather(2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked[keep]).mean()


class Answer(NamedTuple):
    """An answer, its probability, the last hop's attention over the story's sentences, and whether
    it is a guess (asked with ``allow_guess=True`` where the story or question gave nothing to read)."""

    answer: str
    probability: float
    attention: list[float]
    guess: bool = False


# --------------------------------------------------------------------------------------- task
class QuestionAnswering(Task):
    """A trained bAbI-style question answerer with its vocabulary and answer set."""

    name = "qa"
    experiment_cls = QAExperiment

    def __init__(self, model: QAModel, vocab: Vocab, answers: LabelSet, experiment: QAExperiment) -> None:
        super().__init__(model, experiment)
        self.vocab, self.answers = vocab, answers
        self._answer_index = {a: i for i, a in enumerate(answers.names)}

    # ---------------------------------------------------------------------------------- fit
    @classmethod
    def fit(cls, data: QAExperiment | str | Path | Iterable[Any] | None = None, out_dir: str | Path | None = None,
            resume: bool = False, *, valid: Any = None, test: Any = None, experiment: QAExperiment | None = None,
            **overrides: Any) -> QuestionAnswering:
        """Train a question answerer; returns it with the best epoch's weights (in memory, on the CPU).

        Args:
            data: the training questions: a file in the bAbI format (numbered story lines, question
                lines ``question<TAB>answer<TAB>supporting fact numbers``); or parsed stories, a list
                of ``BabiExample`` (``rnnkit.data.babi.read_babi``) or of ``(story, question, answer)``
                triples (the story a text with one or more sentences per line, or a list of sentences);
                or a ``QAExperiment`` (the form ``rnnkit train`` uses). None: the files of
                ``experiment`` / the keywords (e.g. ``task_id=1``, bAbI task 1 from the registry).
            out_dir: where ``best/``, ``last/``, ``metrics.jsonl`` and ``results.json`` go; None
                (default) writes nothing.
            resume: continue from ``out_dir/last``.
            valid: validation questions (file or parsed stories) for early stopping and the best
                epoch; None holds out ``valid_fraction`` (0.1) of the training stories.
            test: questions scored once with the best model (``results["test_accuracy"]``), as valid.
            experiment: the config the keywords start from (default ``QAExperiment()``: GRU encoders
                of 64 units, 3 attention hops, batch 32, up to 100 epochs with early stopping).
            **overrides: config fields by name: ``cell="lstm"``, ``hops=1``, ``hidden_size=32``,
                ``epochs=20``, ``lr=1e-2``, ``batch_size=16``, ...; dotted (``**{"train.lr": 1e-3}``)
                or a section as a dict (``model={"attention": False}``).

        Returns:
            The trained QuestionAnswering; on rank 0 ``results`` holds ``val_accuracy``,
            ``val_loss`` (and ``test_*``) of the best model.

        Example::

            stories = [("Mary went to the kitchen. John went to the garden.", "Where is Mary?", "kitchen"),
                       ...]
            qa = QuestionAnswering.fit(stories, epochs=20, hops=1)
            qa.answer("Sandra went to the office.", "Where is Sandra?").answer   # "office"
        """
        experiment, data = cls._split_experiment(data, experiment)
        given = cls._split_inputs({"train": data, "valid": valid, "test": test}, overrides,
                                  lambda split, value, arg: as_examples(value, arg))
        experiment = cls._experiment(experiment, overrides)
        return cls._fit_experiment(experiment, given, out_dir, resume)

    @classmethod
    def _read_data(cls, experiment: QAExperiment, given: dict) -> tuple[QAExperiment, dict]:
        splits = load_splits(experiment.data, experiment.train.seed, given)
        train = splits["train"]
        vocab = Vocab.build([w for s in ex.story for w in s] + ex.question for ex in train)
        answers = LabelSet(sorted({ex.answer for ex in train}))
        experiment = experiment.model_copy(update={"model": QAModelConfig.from_dict(
            {**experiment.model.to_dict(), "vocab_size": len(vocab), "answer_size": len(answers)}, "model")})
        return experiment, {"splits": splits, "vocab": vocab, "answers": answers}

    @classmethod
    def _build(cls, experiment: QAExperiment, prepared: dict) -> QuestionAnswering:
        qa = cls(QAModel(experiment.model), prepared["vocab"], prepared["answers"], experiment)
        prepared["encoded"] = {split: qa._encode(exs) for split, exs in prepared["splits"].items()}
        warn_unknown_answers(prepared["splits"]["valid"], qa._answer_index, "validation data")
        return qa

    def _training(self, prepared: dict, rank: int, world_size: int) -> Training:
        data, encoded = self.experiment.data, prepared["encoded"]
        distributed.per_rank(data.batch_size, "data.batch_size", world_size)
        train_batches = QABatches(encoded["train"], data.batch_size, seed=self.experiment.train.seed,
                                  rank=rank, world_size=world_size)

        def loss_fn(net, batch, state):
            logits, attention = net(batch)
            loss = F.cross_entropy(logits, batch.answer, ignore_index=-1)
            if data.supporting_facts and attention is not None:
                loss = loss + data.supporting_facts * attention_loss(attention, batch.supporting)
            return loss, None, batch.answer.numel()

        def evaluate_fn(net):
            correct, loss = self._score(encoded["valid"], net)
            return {"val_loss": loss, "val_accuracy": correct}

        summary = {"unit": "questions", "splits": {split: len(exs) for split, exs in encoded.items()},
                   "vocab_size": len(self.vocab), "answers": len(self.answers), "batch_size": data.batch_size,
                   "batches_per_epoch": len(train_batches)}
        return Training(loss_fn, train_batches.batches, evaluate_fn, summary)

    def _finish(self, prepared: dict, trainer: Trainer, out_dir: Path | None) -> None:
        """The best model's accuracy on valid (and test); with an out_dir, results.json there."""
        results = {"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch, "stop_reason": trainer.stop_reason}
        for split, prefix in (("valid", "val"), ("test", "test")):
            if split in prepared["encoded"]:
                acc, loss = self._score(prepared["encoded"][split])
                self.results.update({f"{prefix}_accuracy": acc, f"{prefix}_loss": loss})
        results.update(self.results)
        if out_dir is not None:
            (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")

    # --------------------------------------------------------------------------- checkpoint
    def extras(self) -> dict:
        return {"vocab": self.vocab.to_dict(), "answers": self.answers.to_dict()}

    @classmethod
    def _model(cls, experiment: QAExperiment) -> QAModel:
        return QAModel(experiment.model)

    @classmethod
    def from_parts(cls, model: QAModel, experiment: QAExperiment, extras: dict) -> QuestionAnswering:
        for name in ("vocab", "answers"):
            if name not in extras:
                raise ValueError(f"checkpoint: expected {name}.json beside the model, found none")
        vocab, answers = Vocab.from_dict(extras["vocab"]), LabelSet.from_dict(extras["answers"])
        if (len(vocab), len(answers)) != (experiment.model.vocab_size, experiment.model.answer_size):
            raise ValueError(f"checkpoint: vocab.json/answers.json have {len(vocab)} words/{len(answers)} answers "
                             f"but the model expects {experiment.model.vocab_size}/{experiment.model.answer_size}")
        return cls(model, vocab, answers, experiment)

    # ---------------------------------------------------------------------------------- use
    def _encode(self, examples: Sequence[BabiExample]):
        return encode_examples(examples, self.vocab, self._answer_index, self.model.config.memory_size)

    @torch.no_grad()
    def _run(self, encoded, net: nn.Module | None = None) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """Probabilities <float>[N, answers] and answer ids <int64>[N] in input order, and the
        attention of each batch."""
        net = self.model if net is None else net
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        batches = QABatches(encoded, self.experiment.data.eval_batch_size, shuffle=False)
        probs = torch.empty(len(encoded), self.model.config.answer_size)
        targets = torch.empty(len(encoded), dtype=torch.int64)
        attention: list[Tensor | None] = [None] * len(encoded)
        try:
            for idx, batch in zip(batches.index_batches(), batches.batches()):
                logits, att = net(batch.to(device))
                probs[idx] = torch.softmax(logits.float(), dim=-1).cpu()
                targets[idx] = batch.answer
                if att is not None:
                    for row, i in enumerate(idx):
                        attention[i] = att[:, row, :int(batch.story_lengths[row])].cpu()
        finally:
            net.train(was_training)
        return probs, targets, attention

    def _score(self, encoded, net: nn.Module | None = None) -> tuple[float, float]:
        """Accuracy (an unknown answer counts as wrong) and mean loss over the known answers."""
        probs, targets, _ = self._run(encoded, net)
        known = targets >= 0
        accuracy = float((probs.argmax(dim=1) == targets).float().mean())
        loss = float(F.nll_loss(probs[known].clamp(min=1e-12).log(), targets[known])) if known.any() else float("nan")
        return accuracy, loss

    def evaluate(self, path: str | Path, errors: str = "strict", encoding: str = "utf-8",
                 allow_control_chars: bool = False) -> dict:
        """Accuracy on a bAbI file (answers never seen in training count as wrong, with a warning)."""
        examples = read_babi(path, encoding, errors, allow_control_chars)
        unknown = warn_unknown_answers(examples, self._answer_index, str(path))
        accuracy, loss = self._score(self._encode(examples))
        return {"accuracy": accuracy, "loss": loss, "n": len(examples), "unknown_answers": unknown}

    def answer(self, story: str | Sequence[str], question: str, allow_guess: bool = False) -> Answer:
        """Answer ``question`` about ``story`` (text, one or more sentences per line, numbered or not;
        or a list of sentences). Unknown words read as <unk>, with a warning.

        Raises ValueError when there is nothing to answer from: a story without sentences, or a
        story or question without a word the model knows. ``allow_guess=True`` answers anyway, with
        a warning, and the Answer's ``guess`` is True.
        """
        if isinstance(story, str):
            sentences = parse_story(story)
        else:
            sentences = [tokenize(s) for s in story if tokenize(s)]
        words = tokenize(question)
        story_words = [w for s in sentences for w in s]
        problems = []
        if not sentences:
            problems.append("story: expected at least one sentence, got none")
        elif self.vocab.count_unknown(story_words) == len(story_words):
            problems.append(f"story: none of its {len(story_words)} words is known to the model")
        if not words:
            problems.append(f"question: expected words, got {question!r}")
        elif self.vocab.count_unknown(words) == len(words):
            problems.append(f"question: none of its words ({' '.join(words)}) is known to the model")
        if problems and not allow_guess:
            raise ValueError("; ".join(problems) + "; nothing to answer from (allow_guess=True, or --allow-guess, "
                             "answers anyway, marked as a guess)")
        if problems:
            warnings.warn("; ".join(problems) + "; the answer is a guess", stacklevel=2)
        unknown = sum(self.vocab.count_unknown(s) for s in sentences) + self.vocab.count_unknown(words)
        if unknown and not problems:
            warnings.warn(f"{unknown} word(s) of the story and question are unknown to the model and read as <unk>",
                          stacklevel=2)
        memory = self.model.config.memory_size
        if len(sentences) > memory:
            warnings.warn(f"story: {len(sentences)} sentences; the model reads the last {memory}", stacklevel=2)
        example = BabiExample(sentences, words, "", [], "<answer>")
        probs, _, attention = self._run(self._encode([example]))
        k = int(probs[0].argmax())
        weights = [] if attention[0] is None else attention[0][-1].tolist()
        return Answer(self.answers.names[k], float(probs[0, k]), weights, bool(problems))
