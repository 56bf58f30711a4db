"""Where a streaming step's time goes: ``layer.streamer(1)(x_t)`` on one thread, taken apart.

The issue's targets for a batch-1 step are 4 µs at H = 64 and 20 µs at H = 256 (input = hidden).
This prints, per cell and size, medians of alternating rounds of:

- the whole call, ``streamer(x_t)``, and with a preallocated output, ``streamer(x_t, out=y)``;
- its fixed costs: the input check (``streamer._checked``), the output tensor (``torch.empty_like``)
  and numba's dispatch (a no-op compiled function with the kernel's argument types);
- the step itself: the kernel's time per step inside one call of many steps (no dispatch);
- the rate at which that step reads its weights (W_ih, W_hh and biases, GB/s), beside the rate of
  a one-thread ``torch.sum`` over the same bytes (a plain read of them, for scale);
- torch.nn's cell.

    python benchmarks/stream_floor.py                       (LSTM, GRU, RNN at H = 64 and 256)
    python benchmarks/stream_floor.py --hidden 64,128,256,512 --cells lstm --rounds 15
"""

from __future__ import annotations

import argparse

import torch
from numba import njit
from stream_units import CELLS, known_cells, medians, positive_int, positive_ints

TARGET_US = {64: 4.0, 256: 20.0}
STEPS = 1000  # per call, for the step's own time


@njit(cache=False, nogil=True)
def _noop(ptrs, x_addr, y_addr, steps, h, c, flag):
    """Nothing, with the streaming kernels' argument types: numba's dispatch cost alone."""
    return None


def parts(streamer, x_t: torch.Tensor, peer, rounds: int, number: int) -> dict:
    """µs per call of the whole call, its parts and torch.nn's cell (medians)."""
    s = streamer
    xs, ys = torch.randn(STEPS, *x_t.shape), torch.empty(STEPS, *s._like_y.shape)
    x_addr, xs_addr, ys_addr = x_t.data_ptr(), xs.data_ptr(), ys.data_ptr()
    y = torch.empty_like(s._like_y)
    y_addr = y.data_ptr()
    fns = {
        "call": lambda: s(x_t),
        "call, out=": lambda: s(x_t, out=y),
        "check": lambda: s._checked(x_t),
        "output": lambda: torch.empty_like(s._like_y),
        "dispatch": lambda: _noop(s._ptrs, x_addr, y_addr, 1, s.h, s.c, s._flag),
        "one step": lambda: s._kernel(s._ptrs, x_addr, y_addr, 1, s.h, s.c, s._flag),
        "cell": lambda: peer(x_t),
    }
    med = medians(fns, rounds, number)
    many = medians({"steps": lambda: s._kernel(s._ptrs, xs_addr, ys_addr, STEPS, s.h, s.c, s._flag)},
                   rounds, max(1, number // STEPS))
    med["step"] = many["steps"] / STEPS
    return med


def read_rate_gbs(tensors: list[torch.Tensor], rounds: int, number: int) -> float:
    """GB/s of a one-thread torch.sum over the tensors (the weights a step reads)."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    med = medians({"sum": lambda: flat.sum()}, rounds, number)
    return flat.numel() * flat.element_size() / med["sum"] / 1e3


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
    print("fixed = check + output + dispatch (paid by every call); step = the kernel's time per step "
          f"in a {STEPS}-step call")
    with torch.no_grad():
        for cell in cells:
            ours_cls, cell_cls = CELLS[cell]
            for hidden in hiddens:
                layer = ours_cls(hidden, hidden)
                streamer, x_t = layer.streamer(1), torch.randn(1, hidden)
                peer = cell_cls(hidden, hidden)
                number = args.calls or min(5_000, max(20, int(5e7 / (4 * hidden * hidden))))
                med = parts(streamer, x_t, peer, args.rounds, number)
                weights = list(layer.parameters())
                nbytes = sum(p.numel() * p.element_size() for p in weights)
                fixed = med["check"] + med["output"] + med["dispatch"]
                target = TARGET_US.get(hidden)
                target_text = f"  target {target:.0f}" if target else ""
                print(f"{cell:4} H={hidden:<4} ({nbytes / 1024:5.0f} KB)  call {med['call']:6.2f}  with out= "
                      f"{med['call, out=']:6.2f}  fixed {fixed:5.2f} "
                      f"(check {med['check']:.2f}, output {med['output']:.2f}, dispatch {med['dispatch']:.2f})  "
                      f"step {med['step']:6.2f}  one-step kernel call {med['one step']:6.2f}  "
                      f"torch.nn cell {med['cell']:6.2f}{target_text}")
                print(f"{'':4} the step reads its weights at {nbytes / med['step'] / 1e3:5.1f} GB/s; "
                      f"a one-thread torch.sum over them at {read_rate_gbs(weights, args.rounds, number):5.1f} GB/s")


if __name__ == "__main__":
    main()
