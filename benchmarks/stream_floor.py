"""Where a streaming step's time goes: ``layer.streamer(1)(x_t)`` on one thread, taken apart.

``rnnkit bench`` shows each streaming row against the host's floors (one read of the step's weights,
a Python call returning a new tensor); this takes a call apart. Per cell and size, medians of
alternating rounds of:

- the whole call, ``streamer(x_t)``, and with a preallocated output, ``streamer(x_t, out=y)``;
- its fixed costs: the full input check (``streamer._checked``, the path of an unusual x_t), the output
  tensor (``torch.empty_like``), numba's dispatch (a no-op compiled function with the kernel's
  argument types, through its dispatcher) and the same called at its compiled entry (no matching of
  argument types);
- the step itself: the kernel's time per step inside one call of many steps (no dispatch);
- the floor: one read of the step's weights (``rnnkit.bench.read_floor``), and the rates (GB/s) at
  which the step and that read go through the weights;
- torch.nn's cell.

    python benchmarks/stream_floor.py                       (LSTM, GRU, RNN at H = 64 and 256)
    python benchmarks/stream_floor.py --hidden 64,128,256,512 --cells lstm --rounds 15
"""

from __future__ import annotations

import argparse

import numba
import torch
from numba import njit
from stream_units import CELLS, known_cells, medians, positive_int, positive_ints

from rnnkit.bench import FLOOR_BAR, STREAMER_BAR_US, read_floor, step_weights

STEPS = 1000  # per call, for the step's own time
PASSES = 100  # reads of the weights per call of the floor


@njit(cache=False, nogil=True)
def _noop(ptrs, x_addr, y_addr, steps, h, c, flag):
    """Nothing, with the streaming kernels' argument types: numba's dispatch cost alone."""
    return None


def parts(streamer, x_t: torch.Tensor, peer, nbytes: int, rounds: int, number: int) -> dict:
    """µs per call of the whole call, its parts, the weight-read floor and torch.nn's cell (medians)."""
    s = streamer
    xs, ys = torch.randn(STEPS, *x_t.shape), torch.empty(STEPS, *s._like_y.shape)
    x_addr, xs_addr, ys_addr = x_t.data_ptr(), xs.data_ptr(), ys.data_ptr()
    y = torch.empty_like(s._like_y)
    y_addr = y.data_ptr()
    args = (s._ptrs, x_addr, y_addr, 1, s.h, s.c, s._flag)
    noop = _noop.compile(tuple(map(numba.typeof, args)))  # the compiled code, called without the dispatcher
    fns = {
        "call": lambda: s(x_t),
        "call, out=": lambda: s(x_t, out=y),
        "check": lambda: s._checked(x_t),
        "output": lambda: torch.empty_like(s._like_y),
        "dispatch": lambda: _noop(*args),
        "entry": lambda: noop(*args),
        "one step": lambda: s._kernel(*args),
        "cell": lambda: peer(x_t),
    }
    med = medians(fns, rounds, number)
    many = medians({"steps": lambda: s._kernel(s._ptrs, xs_addr, ys_addr, STEPS, s.h, s.c, s._flag),
                    "floor": read_floor(nbytes, PASSES)}, rounds, max(1, number // STEPS))
    med["step"] = many["steps"] / STEPS
    med["floor"] = many["floor"] / PASSES
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="64,256", help="comma-separated hidden sizes (input size = hidden)")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--rounds", type=positive_int, default=9)
    ap.add_argument("--calls", type=int, default=0, help="calls per sample (default: ~0.02 s of work each)")
    args = ap.parse_args()
    cells, hiddens = known_cells(ap, args.cells), positive_ints(ap, "--hidden", args.hidden)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"batch 1, one layer, input = hidden, one thread; µs per call, medians of {args.rounds} rounds")
    print("fixed = output + entry (what every call pays beside the step and a cheap check); step = the kernel's "
          f"time per step in a {STEPS}-step call; floor = one read of the step's weights")
    with torch.no_grad():
        for cell in cells:
            ours_cls, cell_cls = CELLS[cell]
            for hidden in hiddens:
                layer = ours_cls(hidden, hidden)
                streamer, x_t = layer.streamer(1), torch.randn(1, hidden)
                peer = cell_cls(hidden, hidden)
                number = args.calls or min(5_000, max(20, int(5e7 / (4 * hidden * hidden))))
                nbytes = step_weights(cell, hidden, hidden, streaming=True)
                med = parts(streamer, x_t, peer, nbytes, args.rounds, number)
                fixed = med["output"] + med["entry"]
                bar = STREAMER_BAR_US.get(hidden)
                print(f"{cell:4} H={hidden:<4} ({nbytes / 1024:5.0f} KB)  call {med['call']:6.2f}  with out= "
                      f"{med['call, out=']:6.2f}  fixed {fixed:5.2f} (output {med['output']:.2f}, entry "
                      f"{med['entry']:.2f}; dispatcher {med['dispatch']:.2f}, full check {med['check']:.2f})  "
                      f"step {med['step']:6.2f}  one-step kernel call {med['one step']:6.2f}  "
                      f"torch.nn cell {med['cell']:6.2f}" + (f"  bar {bar} µs" if bar else ""))
                print(f"{'':4} floor {med['floor']:.2f} µs (call / floor {med['call'] / med['floor']:.1f}, bar "
                      f"{FLOOR_BAR}); the step reads its weights at {nbytes / med['step'] / 1e3:5.1f} GB/s, the "
                      f"floor at {nbytes / med['floor'] / 1e3:5.1f} GB/s")

if __name__ == "__main__":
    main()
