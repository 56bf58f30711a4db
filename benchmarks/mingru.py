"""MinGRU / MinLSTM against rnnkit's GRU: a training step (forward + backward) at one shape, and a
streaming step at batch 1, in one process, interleaved, medians.

    python benchmarks/mingru.py                       # B, T, I, H = 32, 512, 128, 256, 2 threads
    python benchmarks/mingru.py --repeats 5 --scans log,loop --device cuda

Prints one row per layer (median ms of a training step, of a streaming step) and each layer's
speed-up over the GRU (GRU time / its time). At this shape MinGRU's multiply-adds are 4.5x fewer than
a GRU's (MinLSTM's 3x), all in the input projection's GEMM; the target is a MinGRU training step at
least 4x faster than the GRU's, with a streaming step no slower. Take figures from a quiet host:
on a loaded one the two layers suffer differently (the GEMMs and the memory-bound scan).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rnnkit


def _timer(device: torch.device):
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()
    return now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="32,512,128,256", help="B,T,I,H (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds; every layer once a round")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--scans", default="fused,loop", help="MinGRU scans to time: fused, loop, log (default: %(default)s)")
    ap.add_argument("--minlstm", action="store_true", help="time MinLSTM (its default scan) too")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    B, T, I, H = (int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    layers = {"GRU": rnnkit.GRU(I, H, batch_first=True)}
    for scan in args.scans.split(","):
        layers[f"MinGRU ({scan})"] = rnnkit.MinGRU(I, H, batch_first=True, scan=scan)
    if args.minlstm:
        layers["MinLSTM"] = rnnkit.MinLSTM(I, H, batch_first=True)
    layers = {name: layer.to(device) for name, layer in layers.items()}
    x = torch.randn(B, T, I, device=device)
    weight = torch.randn(H, device=device)  # a loss that weighs every output
    now = _timer(device)

    def train_step(layer) -> float:
        start = now()
        out, _ = layer(x)
        (out @ weight).sum().backward()
        return now() - start

    def stream_steps(layer, steps: int = 200) -> float:
        s, x_t = layer.streamer(batch_size=1), torch.randn(1, I, device=device)
        start = now()
        for _ in range(steps):
            s(x_t)
        return (now() - start) / steps

    train = {name: [] for name in layers}
    stream = {name: [] for name in layers}
    for layer in layers.values():  # warm-up: compiled kernels, allocator
        train_step(layer)
        stream_steps(layer, 20)
    for _ in range(args.repeats):
        for name, layer in layers.items():
            layer.zero_grad(set_to_none=True)
            train[name].append(train_step(layer))
            stream[name].append(stream_steps(layer))
    base_train, base_stream = statistics.median(train["GRU"]), statistics.median(stream["GRU"])
    print(f"B,T,I,H = {B},{T},{I},{H}; {args.threads} threads; {device}; torch {torch.__version__}; "
          f"median of {args.repeats}")
    print(f"{'layer':<16} {'train ms':>9} {'x GRU':>6} {'stream us':>10} {'x GRU':>6}")
    for name in layers:
        t, s = statistics.median(train[name]), statistics.median(stream[name])
        print(f"{name:<16} {t * 1e3:9.1f} {base_train / t:6.2f} {s * 1e6:10.1f} {base_stream / s:6.2f}")


if __name__ == "__main__":
    main()
