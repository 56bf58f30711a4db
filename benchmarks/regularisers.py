"""What the recurrent regularisers cost: a training step (forward + backward) of one layer with
``recurrent_dropout``, ``zoneout`` or ``weight_drop`` against the same step without, in one process,
interleaved, medians, and the plan (fused path) each ran on.

    python benchmarks/regularisers.py                          # LSTM and GRU, B, T, I, H = 32, 100, 128, 256
    python benchmarks/regularisers.py --cells lstm --shape 64,50,256,512 --repeats 5 --threads 1
    python benchmarks/regularisers.py --cells lstm_proj,grux   # a projected LSTM (P = H/2), GRU reset_after=False

Prints one row per cell and setting: median ms of a training step, its ratio to the plain step of
the same cell, and the path the fused backend planned (``reference`` where the call left it). The
bar: recurrent_dropout or zoneout within 1.2x of the plain step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rnnkit
from rnnkit.kernels.fused import record

CELLS = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "lstm_ln": rnnkit.LayerNormLSTM,
         "lstm_proj": lambda i, h, **kw: rnnkit.LSTM(i, h, proj_size=h // 2, **kw),  # output h // 2 wide
         "grux": lambda i, h, **kw: rnnkit.GRU(i, h, reset_after=False, **kw)}
SETTINGS = {"plain": {}, "recurrent_dropout=0.25": {"recurrent_dropout": 0.25}, "zoneout=0.1": {"zoneout": 0.1},
            "weight_drop=0.5": {"weight_drop": 0.5}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="32,100,128,256", help="B,T,I,H (default: %(default)s)")
    ap.add_argument("--cells", default="lstm,gru", help=f"cells to time, of {','.join(CELLS)} (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds; every setting once a round")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, T, I, H = (int(v) for v in args.shape.split(","))
    x = torch.randn(B, T, I)
    weights = {H: torch.randn(H), H // 2: torch.randn(H // 2)}  # a loss that weighs every output

    layers = {}
    for cell in args.cells.split(","):
        for setting, options in SETTINGS.items():
            torch.manual_seed(0)  # the same weights for every setting of a cell
            layers[cell, setting] = CELLS[cell](I, H, batch_first=True, **options)

    def train_step(layer) -> float:
        layer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out, _ = layer(x)
        (out @ weights[out.shape[-1]]).sum().backward()
        return time.perf_counter() - start

    paths = {}
    for key, layer in layers.items():  # warm-up (compiled kernels, allocator) and the plan each runs
        with record() as plans:
            train_step(layer)
        paths[key] = plans[0].path if plans else "reference"
    times = {key: [] for key in layers}
    for _ in range(args.repeats):
        for key, layer in layers.items():
            times[key].append(train_step(layer))
    print(f"B,T,I,H = {B},{T},{I},{H}; {args.threads} threads; torch {torch.__version__}; "
          f"median of {args.repeats}, training step (forward + backward)")
    print(f"{'cell':<10} {'setting':<24} {'ms':>8} {'x plain':>8}  path")
    for (cell, setting), samples in times.items():
        ms = statistics.median(samples) * 1e3
        base = statistics.median(times[cell, "plain"]) * 1e3
        print(f"{cell:<10} {setting:<24} {ms:8.2f} {ms / base:8.2f}  {paths[cell, setting]}")


if __name__ == "__main__":
    main()
