"""Adaptive softmax against the full softmax: tokens per second of a language-model training step
(forward + backward + SGD update), same model otherwise, on a synthetic Zipf-distributed stream (no
data set needed), interleaved, medians.

    python benchmarks/adaptive.py                          # PTB-sized: vocab 10,000, 2x200 LSTM, batch 20, bptt 20
    python benchmarks/adaptive.py --vocab 33000 --repeats 5

Cutoffs are chosen from the stream's frequencies as the language-model task chooses them (80% /
95% of the tokens). Prints each head's median ms per step, tokens/s and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnkit.layers.output import frequency_cutoffs
from rnnkit.model import ModelConfig, SequenceModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=10_000)
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--bptt", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per head, interleaved")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    zipf = 1.0 / torch.arange(1, args.vocab + 1, dtype=torch.float64)  # word k about 1/k as frequent
    stream = torch.multinomial(zipf, 200_000, replacement=True)
    cutoffs = frequency_cutoffs(torch.bincount(stream, minlength=args.vocab))
    base = {"cell": args.cell, "vocab_size": args.vocab, "output_size": args.vocab, "embedding_dim": args.hidden,
            "hidden_size": args.hidden, "num_layers": args.layers, "output_activation": "softmax"}
    models = {"full": SequenceModel(ModelConfig(**base)),
              "adaptive": SequenceModel(ModelConfig(**base, output="adaptive", adaptive_cutoffs=cutoffs))}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.1) for name, m in models.items()}
    tokens = args.batch * args.bptt

    def step(name: str, offset: int) -> float:
        chunk = stream[offset: offset + tokens + args.batch].reshape(args.batch, -1)[:, : args.bptt + 1]
        model, optimizer = models[name], optimizers[name]
        start = time.perf_counter()
        log_probs, _ = model(chunk[:, :-1], target=chunk[:, 1:])
        loss = -log_probs.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in models}
    for name in models:  # warm-up
        step(name, 0)
    for r in range(args.repeats):
        for name in models:
            times[name].append(step(name, (r + 1) * tokens))
    print(f"vocab {args.vocab}, {args.layers}x{args.hidden} {args.cell}, batch {args.batch}, bptt {args.bptt}, "
          f"{args.threads} threads, cutoffs {cutoffs}; median of {args.repeats}")
    full = statistics.median(times["full"])
    for name in models:
        t = statistics.median(times[name])
        print(f"{name:<9} {t * 1e3:8.1f} ms/step {tokens / t:10.0f} tokens/s  x{full / t:.2f}")


if __name__ == "__main__":
    main()
