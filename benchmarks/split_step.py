"""A training step with and without the batch split of the fused loops, against torch.nn.

The adding problem's shape by default (B = 50, T = 400, I = 2, H = 128, loss on the last step):
forward and backward of one layer, interleaved round by round, medians.

    python benchmarks/split_step.py                 (2 threads)
    python benchmarks/split_step.py --shape 32x200x64x128 --rounds 9

"Not split" runs under a policy whose ``par_min_rows`` is out of reach, so the layer takes the plan it
would have on one thread's worth of rows (for the LSTM that is oneDNN's own layer, as in torch.nn).
"""

from __future__ import annotations

import argparse
import statistics
import time

import contextlib
import dataclasses

import torch

import rnnkit
from rnnkit import kernels
from rnnkit.kernels import fused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="50x400x2x128", help="BxTxIxH")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, T, I, H = (int(v) for v in args.shape.lower().split("x"))
    x = torch.randn(B, T, I)
    not_split = dataclasses.replace(fused.current(), par_min_rows=1 << 62)
    print(f"B, T, I, H = {B}, {T}, {I}, {H}; {args.threads} threads; medians of {args.rounds} (ms per step)")
    for ours_cls, torch_cls in ((rnnkit.LSTM, torch.nn.LSTM), (rnnkit.GRU, torch.nn.GRU), (rnnkit.RNN, torch.nn.RNN)):
        ours = ours_cls(I, H, batch_first=True, backend="fused")
        peer = torch_cls(I, H, batch_first=True)
        peer.load_state_dict(ours.state_dict())

        def step(model):
            out, _ = model(x)
            out[:, -1].square().mean().backward()

        times = {"torch.nn": [], "split": [], "not split": []}
        for _ in range(args.rounds):
            for name in times:
                model = peer if name == "torch.nn" else ours
                with kernels.policy(not_split) if name == "not split" else contextlib.nullcontext():
                    step(model)
                    t = time.perf_counter()
                    step(model)
                    step(model)
                times[name].append((time.perf_counter() - t) / 2 * 1e3)
        med = {name: statistics.median(v) for name, v in times.items()}
        print(f"{ours_cls.__name__:5} torch.nn {med['torch.nn']:7.1f}  split {med['split']:7.1f}  "
              f"not split {med['not split']:7.1f}  | torch.nn / split {med['torch.nn'] / med['split']:.2f}")


if __name__ == "__main__":
    main()
