"""Peak memory of one training step (forward + backward of an MSE loss), rnnkit's fused backend
against torch.nn, for the speed benchmark's cells and configs.

Each contender runs in a fresh process. It first runs one step of the same cell and config on
another model, so that every one-time cost of that path is paid before the measurement: numba's
kernels loaded, oneDNN initialised and its kernels generated for these shapes (a tiny warm-up step
missed those: at 1, 1000, 32, 64 our RNN's first call, where oneDNN's linear takes the input
projection, raised the peak by 5.7-6.1 MiB, its second by at most 0.4 MiB).
Then it empties rnnkit's pool of reusable buffers and hands the freed heap back to the system
(glibc's ``malloc_trim``), so that the step cannot reuse memory the warm-up left resident, builds
the model and data, and reports how far the process's peak resident memory rose above its resident
memory just before the step (``ru_maxrss``, which counts every allocator: torch's, numpy's inside
our kernels, oneDNN's), and what the pool keeps after it for the next step.

    python benchmarks/memory.py                              (all cells and configs)
    python benchmarks/memory.py --cells lstm --configs 256x50x256x512
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import statistics
import sys

import torch

from rnnkit.bench import CELLS, DEFAULT_CONFIGS, in_fresh_process, make_models, parse_configs, peer_name, train_fn
from rnnkit.kernels.buffers import pool


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _release_free_heap() -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim; a no-op elsewhere)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def step_peak_mib(cell: str, cfg: tuple[int, int, int, int], impl: str) -> tuple[float, float]:
    """MiB by which one training step raised the peak resident memory of this (fresh) process, and
    the MiB that rnnkit's buffer pool keeps after it for the next step (within the peak)."""
    B, T, I, H = cfg
    warm = make_models(cell, B, T, I, H, ["fused"])[impl]
    train_fn(warm, torch.randn(T, B, I), torch.randn(T, B, H))()
    del warm
    gc.collect()
    pool.clear()  # the warm-up's buffers kept for reuse: the measured step pays for its own
    _release_free_heap()
    model = make_models(cell, B, T, I, H, ["fused"])[impl]
    x, target = torch.randn(T, B, I), torch.randn(T, B, H)
    step = train_fn(model, x, target)
    before = _resident_bytes()
    step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 2 ** 20, pool.held_bytes / 2 ** 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated BxTxIxH")
    ap.add_argument("--cells", default="rnn,lstm,gru", help=f"comma-separated, from {','.join(CELLS)}")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    ratios = []
    print(f"{'cell':6} {'B,T,I,H':>16} | {'peer':>11} {'peer MiB':>9} {'fused MiB':>10} {'ratio':>6} | "
          f"{'kept MiB':>8}")
    for cell in args.cells.split(","):
        peer = peer_name(cell)
        for cfg in parse_configs(args.configs):
            (theirs, _), (ours, kept) = (in_fresh_process(args.threads, step_peak_mib, cell, cfg, impl)
                                         for impl in (peer, "fused"))
            ratios.append(ours / theirs)
            print(f"{cell:6} {','.join(map(str, cfg)):>16} | {peer:>11} {theirs:9.1f} {ours:10.1f} {ours / theirs:6.2f} | "
                  f"{kept:8.1f}", flush=True)
    print(f"fused / peer: median {statistics.median(ratios):.2f}, worst {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
