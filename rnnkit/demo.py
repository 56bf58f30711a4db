"""`make demo`: train a next-word model on text that ships with Python, then use it.

The corpus is Python's own documentation text (the ``pydoc_data`` package, about 65,000 words), so
the demo needs no outside data. It trains a one-layer LSTM word model for about two and a half
minutes, prints the validation perplexity, top-5 next-word predictions for a few prompts and a
sampled continuation, saves the checkpoint and shows the commands to train on your own text.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import tasks
from .config import save_toml
from .model import ModelConfig
from .tasks.language_model import LMDataConfig, LMExperiment
from .train import TrainConfig

PROMPTS = ["the default value is", "an exception is", "the function returns", "if the"]


def write_corpus(path: Path) -> Path:
    """Python's documentation topics (``pydoc_data.topics``) as one text file, one paragraph per
    line (the source wraps lines at 70 columns; a line end marks an <eos> for the model)."""
    from pydoc_data.topics import topics
    paragraphs = (" ".join(p.split()) for key in sorted(topics) for p in topics[key].split("\n\n"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(p for p in paragraphs if p and not set(p) <= set("*=-")), encoding="utf-8")
    return path


def experiment(corpus: Path, out: Path, minutes: float) -> LMExperiment:
    return LMExperiment(
        data=LMDataConfig(train=str(corpus), valid_fraction=0.1, tokenizer="word", lowercase=True,
                          pattern=r"[a-z_][a-z0-9_]*|[0-9]+|[^\sa-z0-9_]", min_freq=2, batch_size=32,
                          eval_batch_size=32, bptt=35),
        model=ModelConfig(cell="lstm", embedding_dim=256, hidden_size=256, num_layers=1,
                          dropout=0.3, tie_weights=True),
        train=TrainConfig(epochs=30, optimizer="adam", lr=3e-3, clip_norm=1.0, schedule="plateau",
                          monitor="val_loss", max_minutes=minutes, out_dir=str(out), log_every=100))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the checkpoint goes")
    parser.add_argument("--minutes", type=float, default=2.5, help="training time budget")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    corpus = write_corpus(args.out / "pydoc.txt")
    print(f"corpus: {corpus} (Python's documentation text, {corpus.stat().st_size // 1000} kB)")
    start = time.monotonic()
    config = experiment(corpus, args.out, args.minutes)
    save_toml(config, args.out / "demo.toml")
    lm = tasks.fit(config, args.out)
    print(f"\ntrained in {time.monotonic() - start:.0f} s: vocabulary {len(lm.vocab)} words, "
          f"{sum(p.numel() for p in lm.model.parameters()):,} parameters, "
          f"validation perplexity {lm.results['val_ppl']:.1f} (last 10% of the text)")
    for prompt in PROMPTS:
        guesses = ", ".join(f"{word} ({p:.2f})" for word, p in lm.predict_next(prompt, k=5))
        print(f"  {prompt!r:26} → {guesses}")
    print("\nsampled continuation (temperature 0.8):")
    print("  the function " + lm.generate("the function", length=40, temperature=0.8, seed=0))
    best = args.out / "best"
    print(f"\ncheckpoint: {best}\n\nnext:")
    print(f"  rnnkit generate {best} --prompt 'the default value is' --top-k 5")
    print(f"  rnnkit generate {best} --prompt 'the function' --length 50 --temperature 0.8")
    print(f"  rnnkit train {args.out / 'demo.toml'} --set data.train=my_text.txt --out runs/mine   # your own text")
    print("  rnnkit datasets --download tinyshakespeare --data-dir ~/data   # a public corpus, checked by sha256")
    print("  rnnkit train configs/shakespeare_char.toml --data-dir ~/data --out runs/shakespeare")


if __name__ == "__main__":
    main()
