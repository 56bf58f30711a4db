"""Language modelling: next-word (or next-character) prediction and text generation.

The pytorch/examples ``word_language_model`` in rnnkit's terms: a text corpus is tokenized, mapped
through a vocabulary to one id stream, cut into ``batch_size`` parallel rows and trained with
truncated BPTT (the state carried across ``bptt``-step chunks and detached). The model is
Embedding → recurrent stack → softmax over the vocabulary, one prediction per step; with
``model.output = "adaptive"`` an adaptive softmax (cutoffs from the training text's token
frequencies unless ``model.adaptive_cutoffs`` gives them) that trains on the targets' clusters only
and still gives exact probabilities to ``predict_next``, ``generate`` and ``evaluate``.

    lm = LanguageModel.fit("corpus.txt", tokenizer="char", epochs=2)   # or a list of strings
    lm = LanguageModel.fit(load_experiment("configs/ptb_small.toml"), "runs/ptb")
    lm.evaluate("ptb.test.txt")          # {"loss": ..., "ppl": ..., "bpc": ...}
    lm.predict_next("the cats are", k=5)  # [("very", 0.04), ...]
    lm.generate("the cats are", length=20, temperature=0.8)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from .. import distributed
from ..config import Config
from ..data.datasets import dataset_file
from ..data.text import (LMStream, Tokenizer, Vocab, WordTokenizer, CharTokenizer, SubwordTokenizer,
                         TextFileConfig, corpus_tokens, encode_corpus, read_corpus, tokenizer_from_dict)
from ..layers.output import frequency_cutoffs
from ..model import ModelConfig, SequenceModel
from ..train import TrainConfig, Trainer
from .base import Task, Training

KNOWN_CORPORA = {  # dataset name → (train, valid, test) files, and the split/tokenizer they imply
    "ptb": ("ptb.train.txt.gz", "ptb.valid.txt", "ptb.test.txt"),
    "tinyshakespeare": ("input.txt", "", ""),
}


class LMDataConfig(TextFileConfig):
    """Where the text comes from and how it is cut into tokens and batches."""

    dataset: str = Field("", description="a registered corpus ('ptb', 'tinyshakespeare'); or '' to use the files below")
    data_dir: str = Field("", description="root holding <dataset>/<file> (default: $RNNKIT_DATA, then the cache)")
    train: str = Field("", description="training text file (plain or .gz); overrides the dataset's")
    valid: str = Field("", description="validation text file; '' takes valid_fraction of the training text")
    test: str = Field("", description="test text file; '' for none")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="tail of the training text used for validation when there is no valid file (nanoGPT: 0.1)")
    tokenizer: Literal["word", "char", "subword"] = Field("word", description="word (whitespace or regex), char, or subword BPE (tokenizers library)")
    lowercase: bool = Field(False, description="lowercase words before building the vocabulary")
    pattern: str = Field("", description="regex for word tokens (re.findall); '' splits on whitespace")
    min_freq: int = Field(1, ge=1, description="words seen fewer times become <unk>")
    max_vocab: int = Field(0, ge=0, description="keep only the most frequent words (0: no limit)")
    subword_vocab: int = Field(4000, ge=256, description="BPE vocabulary size (tokenizer = 'subword')")
    batch_size: int = Field(20, ge=1, description="parallel streams per training batch (global, across processes)")
    eval_batch_size: int = Field(10, ge=1, description="parallel streams when evaluating")
    bptt: int = Field(20, ge=1, description="truncated-BPTT length: steps unrolled per chunk")


class LMTrainConfig(TrainConfig):
    """The trainer's settings plus the language model's activation regularisation (Merity et al.
    2017, AWD-LSTM): ``ar · mean(m ⊙ h_t)²`` on the last layer's output after its dropout, and
    ``tar · mean((h_t - h_{t-1})²)`` on it before the dropout, both added to the training loss."""

    ar: float = Field(0.0, ge=0.0, description=(
        "activation regularisation: weight of the mean squared last-layer output after dropout (AWD-LSTM: 2)"))
    tar: float = Field(0.0, ge=0.0, description=(
        "temporal activation regularisation: weight of the mean squared step-to-step change of the "
        "last layer's output before dropout (AWD-LSTM: 1)"))


class LMExperiment(Config):
    """A language-model run: `rnnkit train CONFIG` with task = "language_model"."""

    task: Literal["language_model"] = Field("language_model", description="the task this config trains")
    data: LMDataConfig = Field(default_factory=LMDataConfig, description="corpus, tokenizer, batches")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(cell="lstm", hidden_size=200, embedding_dim=200, num_layers=2), description="the network; vocab and output sizes are set from the corpus")
    train: LMTrainConfig = Field(default_factory=LMTrainConfig, description=(
        "optimiser, schedule, checkpoints; ar / tar activation regularisation"))

    @field_validator("train", mode="before")
    @classmethod
    def _plain_train_config(cls, value: Any) -> Any:
        """A plain ``TrainConfig`` is taken as an ``LMTrainConfig`` without AR/TAR."""
        if isinstance(value, TrainConfig) and not isinstance(value, LMTrainConfig):
            return value.model_dump()
        return value


def make_tokenizer(cfg: LMDataConfig, train_text: str) -> Tokenizer:
    """The configured tokenizer (a BPE one is trained on ``train_text``)."""
    if cfg.tokenizer == "char":
        return CharTokenizer()
    if cfg.tokenizer == "subword":
        return SubwordTokenizer.train([train_text], cfg.subword_vocab)
    return WordTokenizer(lowercase=cfg.lowercase, pattern=cfg.pattern or None)


def load_corpora(cfg: LMDataConfig, given: dict[str, str] | None = None) -> dict[str, str]:
    """Training, validation and (if any) test text: ``given`` texts by split, else by the dataset
    name or the file paths."""
    given = given or {}
    files = dict(zip(("train", "valid", "test"), KNOWN_CORPORA.get(cfg.dataset, ("", "", ""))))
    if cfg.dataset and cfg.dataset not in KNOWN_CORPORA:
        raise ValueError(f"data.dataset: expected one of {sorted(KNOWN_CORPORA)} or '', got {cfg.dataset!r}")
    paths: dict[str, Path] = {}
    for split in ("train", "valid", "test"):
        own = getattr(cfg, split)
        if own:
            paths[split] = Path(own)
        elif files[split]:
            paths[split] = dataset_file(cfg.dataset, files[split], data_dir=cfg.data_dir or None)
    for split in given:
        paths.pop(split, None)
    if "train" not in paths and "train" not in given:
        raise ValueError("data.train: expected a training text file (or data.dataset), got none")
    texts = {split: read_corpus(path, **cfg.reading()) for split, path in paths.items()}
    texts.update(given)
    if "valid" not in texts:  # hold out the tail, as nanoGPT does for Tiny Shakespeare
        cut = int(len(texts["train"]) * (1 - cfg.valid_fraction))
        texts["train"], texts["valid"] = texts["train"][:cut], texts["train"][cut:]
    return texts


class _OutputActivations:
    """The last recurrent layer's output of the model's latest call, before and after its dropout, for
    AR/TAR: read off the model's output dropout (``SequenceModel.drop``), whose last call in a forward
    pass is on the stack's output."""

    def __init__(self, model: SequenceModel) -> None:
        self.raw = self.dropped = None
        model.drop.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.raw, self.dropped = inputs[0], output

    def penalty(self, ar: float, tar: float) -> torch.Tensor:
        """``ar · mean(dropped²) + tar · mean((raw_t - raw_{t-1})²)`` over <f>[B, T, H] (batch first)."""
        total = self.raw.new_zeros(())
        if ar:
            total = total + ar * self.dropped.pow(2).mean()
        if tar and self.raw.shape[1] > 1:
            total = total + tar * (self.raw[:, 1:] - self.raw[:, :-1]).pow(2).mean()
        return total


def _joined_texts(value: Any, arg: str) -> str:
    """A list of strings as one corpus, one string after another, each ending a line."""
    if isinstance(value, (bytes, dict)) or not isinstance(value, Iterable):
        raise TypeError(f"{arg}: expected a text file path or a list of strings, got {type(value).__name__}")
    items = list(value)
    bad = next((i for i, item in enumerate(items) if not isinstance(item, str)), None)
    if bad is not None:
        raise TypeError(f"{arg}: expected a list of strings, got {type(items[bad]).__name__} at index {bad}")
    text = "\n".join(item.rstrip("\n") for item in items)
    if not text.strip():
        raise ValueError(f"{arg}: expected some text, got {len(items)} empty or blank string(s)")
    return text + "\n"


@torch.no_grad()
def stream_loss(model: torch.nn.Module, ids: torch.Tensor, batch_size: int, bptt: int) -> float:
    """Mean next-token cross-entropy (nats) over an id stream, carrying the state across chunks
    (the exact log-probability of each target, adaptive softmax too)."""
    was_training = model.training
    model.eval()
    stream = LMStream(ids, min(batch_size, max(1, ids.numel() // 2)), bptt)
    device = next(model.parameters()).device
    total, count, state = 0.0, 0, None
    for inputs, targets in stream:
        inputs, targets = inputs.to(device), targets.to(device)
        log_probs, state = model(inputs, state=state, target=targets)
        total -= log_probs.sum().item()
        count += targets.numel()
    model.train(was_training)
    return total / count


class LanguageModel(Task):
    """A trained language model with its tokenizer and vocabulary (see module docstring)."""

    name = "language_model"
    experiment_cls = LMExperiment

    def __init__(self, model: SequenceModel, tokenizer: Tokenizer, vocab: Vocab, experiment: LMExperiment) -> None:
        super().__init__(model, experiment)
        self.tokenizer, self.vocab = tokenizer, vocab

    # ----------------------------------------------------------------------------------- fit
    @classmethod
    def fit(cls, data: LMExperiment | str | Path | Iterable[str] | None = None, out_dir: str | Path | None = None,
            resume: bool = False, *, valid: str | Path | Iterable[str] | None = None,
            test: str | Path | Iterable[str] | None = None, experiment: LMExperiment | None = None,
            **overrides: Any) -> LanguageModel:
        """Train a language model; returns it with the best epoch's weights (in memory, on the CPU).

        Args:
            data: the training text: a text file (plain or .gz), a list of strings (each one or more
                lines), or an ``LMExperiment`` whose data section names the files (the form
                ``rnnkit train`` uses). None: the files of ``experiment`` / the keywords (e.g.
                ``dataset="tinyshakespeare"``).
            out_dir: where ``best/``, ``last/`` and ``metrics.jsonl`` go; None (default) writes nothing.
            resume: continue from ``out_dir/last``.
            valid: validation text (file or list of strings) for early stopping and the best epoch;
                None holds out the last ``valid_fraction`` (0.1) of the training text.
            test: text scored once with the best model (``results["test_ppl"]``, ...); None for none.
            experiment: the config the keywords start from (default ``LMExperiment()``: word tokens,
                a 2-layer LSTM of 200 units, batch 20, bptt 20, 10 epochs of Adam).
            **overrides: config fields by name: ``tokenizer="char"``, ``cell="gru"``,
                ``hidden_size=256``, ``epochs=2``, ``lr=3e-3``, ``batch_size=32``, ``bptt=35``, ...;
                dotted (``**{"train.lr": 1e-3}``) or a section as a dict (``model={"num_layers": 1}``).

        Returns:
            The trained LanguageModel; on rank 0 ``results`` holds ``val_loss``/``val_ppl``/``val_bpc``
            (and ``test_*``) of the best model, in nats, perplexity and bits per token.

        Raises:
            TypeError: an unknown keyword (with the close valid ones) or a wrong type of data.
            ValueError: a wrong config value, naming its key; an empty text.

        Example::

            lm = LanguageModel.fit(["the cat sat on the mat", "the dog sat on the log"] * 50,
                                   tokenizer="char", hidden_size=64, epochs=2)
            lm.generate("the ", length=20)
        """
        experiment, data = cls._split_experiment(data, experiment)
        splits = {"train": data, "valid": valid, "test": test}
        for split, value in splits.items():
            if isinstance(value, (str, Path)) and not Path(value).exists():
                raise FileNotFoundError(
                    f"{'data' if split == 'train' else split}: no such file: {str(value)!r}; a string is read "
                    "as a path to a text file; to train on the text itself, pass a list of strings")
        texts = cls._split_inputs(splits, overrides, lambda split, value, arg: _joined_texts(value, arg))
        experiment = cls._experiment(experiment, overrides)
        return cls._fit_experiment(experiment, texts, out_dir, resume)

    @classmethod
    def _read_data(cls, experiment: LMExperiment, texts: dict[str, str]) -> tuple[LMExperiment, dict]:
        data = experiment.data
        texts = load_corpora(data, texts)
        tokenizer = make_tokenizer(data, texts["train"])
        vocab = Vocab.build(corpus_tokens(texts["train"], tokenizer), min_freq=data.min_freq,
                            max_size=data.max_vocab or None)
        ids = {split: encode_corpus(text, tokenizer, vocab) for split, text in texts.items()}
        sizes = {"vocab_size": len(vocab), "output_size": len(vocab), "output_activation": "softmax", "output_per": "step"}
        if experiment.model.output == "adaptive" and not experiment.model.adaptive_cutoffs:
            sizes["adaptive_cutoffs"] = frequency_cutoffs(torch.bincount(ids["train"].flatten(), minlength=len(vocab)))
        experiment = experiment.model_copy(update={"model": experiment.model.model_copy(update=sizes)})
        return experiment, {"tokenizer": tokenizer, "vocab": vocab, "ids": ids}

    @classmethod
    def _build(cls, experiment: LMExperiment, prepared: dict) -> LanguageModel:
        return cls(SequenceModel(experiment.model), prepared["tokenizer"], prepared["vocab"], experiment)

    def _training(self, prepared: dict, rank: int, world_size: int) -> Training:
        data, ids = self.experiment.data, prepared["ids"]
        distributed.per_rank(data.batch_size, "data.batch_size", world_size)
        train_stream = LMStream(ids["train"], data.batch_size, data.bptt, rank=rank, world_size=world_size)

        # a plain TrainConfig (put in by model_copy, which skips validation) has no AR/TAR
        ar, tar = (getattr(self.experiment.train, name, 0.0) for name in ("ar", "tar"))
        seen = _OutputActivations(self.model) if (ar or tar) else None

        def loss_fn(net, batch, state):
            inputs, targets = batch
            log_probs, state = net(inputs, state=state, target=targets)  # adaptive softmax: only the targets' clusters
            loss = -log_probs.mean()
            if seen is not None:
                loss = loss + seen.penalty(ar, tar)
            return loss, state, targets.numel()

        def evaluate_fn(net):
            loss = stream_loss(net, ids["valid"], data.eval_batch_size, data.bptt)
            return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpc": loss / math.log(2)}

        summary = {"unit": "tokens", "splits": {split: int(v.numel()) for split, v in ids.items()},
                   "vocab_size": len(self.vocab), "batch_size": data.batch_size, "batches_per_epoch": len(train_stream)}
        return Training(loss_fn, lambda epoch: train_stream, evaluate_fn, summary)

    def _finish(self, prepared: dict, trainer: Trainer, out_dir: Path | None) -> None:
        """The best model's figures; the test text read as one stream, as Zaremba et al."""
        data, ids = self.experiment.data, prepared["ids"]
        for split, batch in (("val", data.eval_batch_size), ("test", 1)):
            if split == "val" or "test" in ids:
                loss = stream_loss(self.model, ids["valid" if split == "val" else "test"], batch, data.bptt)
                self.results.update({f"{split}_loss": loss, f"{split}_ppl": math.exp(min(loss, 50)),
                                     f"{split}_bpc": loss / math.log(2)})

    # ---------------------------------------------------------------------------- checkpoint
    def extras(self) -> dict:
        return {"vocab": self.vocab.to_dict(), "tokenizer": self.tokenizer.to_dict()}

    @classmethod
    def from_parts(cls, model: SequenceModel, experiment: LMExperiment, extras: dict) -> LanguageModel:
        for name in ("vocab", "tokenizer"):
            if name not in extras:
                raise ValueError(f"checkpoint: expected {name}.json beside the model, found none")
        vocab = Vocab.from_dict(extras["vocab"])
        if len(vocab) != experiment.model.vocab_size:
            raise ValueError(f"checkpoint: vocab.json has {len(vocab)} tokens but the model expects "
                             f"{experiment.model.vocab_size}")
        return cls(model, tokenizer_from_dict(extras["tokenizer"]), vocab, experiment)

    # ------------------------------------------------------------------------------- use
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """Prompt → ids <int64>[1, T]; unknown words become <unk> (with a warning)."""
        tokens = self.tokenizer.tokenize(prompt)
        unknown = self.vocab.count_unknown(tokens)
        if tokens and unknown == len(tokens):
            warnings.warn(f"prompt: every token of {prompt!r} is unknown to the vocabulary; "
                          "predicting from <unk>", stacklevel=3)
        elif unknown:
            warnings.warn(f"prompt: {unknown} of {len(tokens)} tokens are unknown and read as <unk>", stacklevel=3)
        ids = self.vocab.encode(tokens) or [self.vocab.eos_id if self._word_level else self.vocab.unk_id]
        return torch.tensor([ids])

    @property
    def char_level(self) -> bool:
        """Whether tokens are characters (figures in bits per character, not perplexity)."""
        return isinstance(self.tokenizer, CharTokenizer)

    @property
    def _word_level(self) -> bool:
        return isinstance(self.tokenizer, WordTokenizer)

    @torch.no_grad()
    def _next_distribution(self, ids: torch.Tensor, state=None):
        logits, state = self.model(ids.to(next(self.model.parameters()).device), state=state)
        logits = logits[0, -1].to("cpu", torch.float32, copy=True)  # a copy: written into below
        logits[self.vocab.pad_id] = -math.inf
        return logits, state

    def predict_next(self, prompt: str, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens after ``prompt``, with their probabilities.

        Args:
            prompt: text, tokenized as the training text was (unknown words read as <unk>, with a
                warning; an empty prompt reads as <eos>, a line start, in word models, else <unk>).
            k: how many tokens (default 5; at most the vocabulary, <pad> excluded).

        Returns:
            ``[(token, probability), ...]``, most likely first.

        Example::

            lm.predict_next("the cats are", k=3)   # [("very", 0.04), ("not", 0.03), ("a", 0.02)]
        """
        if k < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k}")
        self.model.eval()
        logits, _ = self._next_distribution(self._encode_prompt(prompt))
        probs, idx = torch.softmax(logits, -1).topk(min(k, len(self.vocab) - 1))
        return [(self.vocab.token(int(i)), float(p)) for p, i in zip(probs, idx)]

    def generate(self, prompt: str, length: int = 50, temperature: float = 1.0, top_k: int = 0,
                 seed: int | None = None) -> str:
        """Sample ``length`` tokens after ``prompt`` and return the continuation as text.

        Args:
            prompt: text the model reads first (not repeated in the output).
            length: tokens to sample (default 50): words, or characters for ``tokenizer="char"``.
            temperature: above 0; below 1 sharpens the distribution, above 1 flattens it (default 1).
            top_k: sample only from the ``top_k`` most likely tokens; 0 (default) from all.
            seed: seeds the sampling, for a repeatable result; None draws from torch's global RNG.

        Returns:
            The sampled continuation; for word models the tokens are joined by spaces and <eos>
            becomes a line break.

        Example::

            lm.generate("the ", length=20, temperature=0.8, seed=0)
        """
        if length < 0:
            raise ValueError(f"length: expected an integer >= 0, got {length}")
        if temperature <= 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.model.eval()
        ids, state, out = self._encode_prompt(prompt), None, []
        for _ in range(length):
            logits, state = self._next_distribution(ids, state)
            logits = logits / temperature
            if top_k:
                cutoff = logits.topk(min(top_k, logits.numel())).values[-1]
                logits[logits < cutoff] = -math.inf
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            out.append(token)
            ids = torch.tensor([[token]])
        words = ["\n" if t == self.vocab.eos_id else self.vocab.token(t) for t in out]
        if not self._word_level:
            return self.tokenizer.detokenize(words)
        return " ".join(words).replace(" \n ", "\n").replace(" \n", "\n")

    def evaluate(self, path: str | Path, batch_size: int = 1, errors: str = "strict", encoding: str = "utf-8",
                 allow_control_chars: bool = False) -> dict[str, float]:
        """Loss (nats per token), perplexity and bits per token on a text file."""
        ids = encode_corpus(read_corpus(path, encoding, errors, allow_control_chars), self.tokenizer, self.vocab)
        loss = stream_loss(self.model, ids, batch_size, self.experiment.data.bptt)
        return {"loss": loss, "ppl": math.exp(min(loss, 50)), "bpc": loss / math.log(2), "tokens": ids.numel()}
