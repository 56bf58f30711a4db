"""Streaming at batch 1 with and without the units split, against torch.nn's cell.

``layer.streamer(1)`` with each layer's hidden units shared among the threads (what rnnkit does from
the policy's ``stream_units_min_*`` bytes of weights) and on one thread, and torch.nn's *Cell (one
layer), all on the same threads, alternating round by round; then a generation loop per token
(embedding, streamer, a linear head over the vocabulary, argmax), split and not. Medians.

    python benchmarks/stream_units.py                         (H = 256 and 512, one and two layers)
    python benchmarks/stream_units.py --hidden 192,256,384 --layers 1 --cells lstm,gru --rounds 9
    python benchmarks/stream_units.py --hidden 650 --layers 2 --rounds 9
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import rnnkit
from rnnkit import kernels
from rnnkit.kernels import fused

CELLS = {"lstm": (rnnkit.LSTM, torch.nn.LSTMCell), "gru": (rnnkit.GRU, torch.nn.GRUCell),
         "rnn": (rnnkit.RNN, torch.nn.RNNCell)}


TOKENS = 20  # per generation loop


def per_call_us(fn, number: int) -> float:
    t = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t) / number * 1e6


def medians(fns: dict, rounds: int, number: int) -> dict:
    """µs per call of each fn: number calls a sample, the fns alternating round by round, medians."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            times[name].append(per_call_us(fn, number))
    return {name: statistics.median(v) for name, v in times.items()}


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def positive_ints(ap: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """A comma-separated option of integers >= 1, or the parser's error naming it."""
    try:
        return [positive_int(v) for v in text.split(",")]
    except argparse.ArgumentTypeError:
        ap.error(f"{flag}: expected comma-separated integers >= 1, got {text!r}")


def known_cells(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """--cells as a list of CELLS' names, or the parser's error."""
    cells = [c.strip() for c in text.split(",")]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        ap.error(f"--cells: expected some of {sorted(CELLS)}, got {text!r}")
    return cells


def streamers(layer, split: bool):
    """layer.streamer(1) with the units split on (from any size) or off."""
    limit = 0 if split else 1 << 62
    with kernels.policy(dataclasses.replace(fused.current(), stream_units_min_weight=limit,
                                            stream_units_min_layer_weight=limit)):
        return layer.streamer(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="256,512", help="comma-separated hidden sizes (input size = hidden)")
    ap.add_argument("--layers", default="1,2", help="comma-separated layer counts")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--vocab", type=positive_int, default=10_000, help="the generation loop's vocabulary")
    ap.add_argument("--rounds", type=positive_int, default=7)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--calls", type=int, default=0, help="calls per sample (default: ~0.05 s of work each)")
    args = ap.parse_args()
    cells, hiddens = known_cells(ap, args.cells), positive_ints(ap, "--hidden", args.hidden)
    layer_counts = positive_ints(ap, "--layers", args.layers)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch 1, input = hidden; {args.threads} threads; µs per call, medians of {args.rounds} rounds")
    with torch.no_grad():
        for cell in cells:
            ours_cls, cell_cls = CELLS[cell]
            for layers in layer_counts:
                for hidden in hiddens:
                    layer = ours_cls(hidden, hidden, num_layers=layers)
                    x = torch.randn(1, hidden)
                    split, one = streamers(layer, True), streamers(layer, False)
                    fns = {"split": lambda: split(x), "one thread": lambda: one(x)}
                    if layers == 1:
                        peer = cell_cls(hidden, hidden)
                        fns["torch.nn cell"] = lambda: peer(x)
                    number = args.calls or min(20_000, max(20, int(2e8 / (4 * hidden * hidden * layers))))
                    med = medians(fns, args.rounds, number)
                    peer_text = (f"  torch.nn cell {med['torch.nn cell']:8.1f} (split / cell "
                                 f"{med['split'] / med['torch.nn cell']:.2f})" if layers == 1 else "")
                    plan = kernels.explain(layer, x, streaming=True)
                    weight = plan.call.stack_weights() * 4  # W_ih and W_hh, float32
                    default = plan.units > 1
                    print(f"{cell:4} L={layers} H={hidden:<4} ({weight / 2 ** 20 / layers:4.1f} MB a layer; split by "
                          f"default: {'yes' if default else 'no '})  "
                          f"split {med['split']:8.1f}  one thread {med['one thread']:8.1f}  "
                          f"split / one {med['split'] / med['one thread']:.2f}{peer_text}")
        hidden, layers = hiddens[-1], layer_counts[-1]
        layer = rnnkit.LSTM(hidden, hidden, num_layers=layers)
        embed, head = torch.nn.Embedding(args.vocab, hidden), torch.nn.Linear(hidden, args.vocab)

        def generate(streamer):
            def run():
                token = torch.tensor([1])
                for _ in range(TOKENS):
                    token = head(streamer(embed(token))).argmax(-1)
            return run
        med = medians({"split": generate(streamers(layer, True)), "one thread": generate(streamers(layer, False))},
                      args.rounds, 5)
        split, one = med["split"] / TOKENS, med["one thread"] / TOKENS
        print(f"generation, LSTM L={layers} H={hidden}, vocabulary {args.vocab}, µs per token: split {split:.1f}  "
              f"one thread {one:.1f}  split / one {split / one:.2f}")


if __name__ == "__main__":
    main()
