"""Speed of rnnkit's recurrent layers against torch.nn, side by side (each config in one process).

For each cell and config (B, T, I, H) it times inference (forward under ``torch.no_grad``) and a
training step (forward + backward of an MSE loss) for torch.nn and for rnnkit with
``backend="fused"`` and ``backend="reference"``, all with the same weights, interleaved round by
round (in a shuffled order each round) so that machine noise hits every contender alike. Each cell
and config runs in a fresh process, so that a row does not depend on the rows run before it: in one
process a row's timing depended on the rows run before it (docs/performance.md). It prints
medians (ms), the ratio rnnkit ÷ torch.nn, each contender's share of the host's float32 GEMM rate
(``gemm_gflops``, measured at the start; the FMA peak, ``fma_peak``, goes to the header and the JSON),
and for batch-1 rows the ratio to the host's weight-read floor (``read_floor``: T reads of the step's
W_hh, timed beside them), and can write JSON and markdown. The streaming rows time one step at batch 1
on one thread: torch.nn's cell, ``layer.step``, the kernel under it, ``layer.streamer()``, the streamer
writing into a preallocated output, a step inside a 1000-step layer call, and with ``--threads`` above
1 a streamer on that many threads (it shares large weights among them); beside them the floors: one
read of the step's weights and a Python call that returns a new tensor. Last, the targets
(``checks``) as PASS / FAIL lines.

    rnnkit bench --repeat 5                       (or: python benchmarks/speed.py --repeat 5)
    rnnkit bench --cells lstm,gru --configs 64x100x128x256 --json out/speed.json
    rnnkit bench --configs none --repeat 9        (only the streaming step, batch 1)
    rnnkit bench --device cuda --no-stream        (on a GPU: rnnkit's backend="auto", i.e. cuDNN, and peak memory)
    rnnkit bench --malloc tuned                   (glibc never trims or unmaps: page faults out of every row)

Cells: rnn (tanh), rnn_relu, lstm, gru, against torch.nn; gru_v1 is GRU(reset_after=False), which
torch.nn lacks (compare it with the reference); lstm_ln is rnnkit's LayerNormLSTM, whose peer is
rnnkit's own plain LSTM (how much a variant cell costs over the standard one). When
JAX is installed (it is not one of rnnkit's dependencies), the LSTM rows also time the same LSTM as
a jitted ``lax.scan`` (``jax_lstm``; ``--no-jax`` skips it). FLOPs count the multiply-adds of the
GEMMs only (2 per MAC): forward 2·T·B·G·H·(I + H), a training step three times that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import random
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import torch

import rnnkit

from .kernels import fused as _fused
from .kernels.fused.gemm import linear_pointwise, reorder_weight

# --malloc tuned: glibc's malloc keeps freed memory (no heap trimming, no mmap for large blocks), so a
# training step does not fault its buffers in again. torch.nn's training rows gain most; rnnkit reuses
# its own large buffers (kernels/buffers.py) and depends less on it.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
DEFAULT_CONFIGS = "64x100x128x256,32x200x64x128,1x1000x32x64,256x50x256x512"
CELLS = {  # name: (rnnkit class, peer class or None, kwargs, gates)
    "rnn": (rnnkit.RNN, torch.nn.RNN, {}, 1),
    "rnn_relu": (rnnkit.RNN, torch.nn.RNN, {"nonlinearity": "relu"}, 1),
    "lstm": (rnnkit.LSTM, torch.nn.LSTM, {}, 4),
    "gru": (rnnkit.GRU, torch.nn.GRU, {}, 3),
    "gru_v1": (rnnkit.GRU, None, {"reset_after": False}, 3),
    "lstm_ln": (rnnkit.LayerNormLSTM, rnnkit.LSTM, {}, 4),
}


def peer_name(cell: str) -> str | None:
    """The peer's column name: "torch" for torch.nn, "rnnkit LSTM" for our own plain LSTM."""
    peer = CELLS[cell][1]
    return None if peer is None else ("torch" if peer.__module__.startswith("torch") else "rnnkit LSTM")


def parse_configs(text: str) -> list[tuple[int, int, int, int]]:
    """"BxTxIxH,..." as tuples; "none" for no configuration (e.g. only the streaming rows)."""
    if text.strip().lower() == "none":
        return []
    configs = []
    for item in text.split(","):
        parts = item.lower().replace("(", "").replace(")", "").split("x")
        if len(parts) != 4 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            raise SystemExit(f"--configs: expected BxTxIxH items of integers >= 1 (e.g. 64x100x128x256), got {item!r}")
        configs.append(tuple(int(p) for p in parts))
    return configs


def check_output_path(flag: str, path: str | None) -> None:
    """Before any timing: the directory of an output file exists (or can be made) and takes a file, so
    a long run does not end in an error with its results unwritten."""
    if path is None:
        return
    target = Path(path)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a"):
            pass
    except (FileExistsError, NotADirectoryError):
        raise SystemExit(f"{flag}: cannot write {path!r}: a part of its directory is a file") from None
    except OSError as e:
        raise SystemExit(f"{flag}: cannot write {path!r}: {e.strerror or e}") from None
    if not existed:
        target.unlink()


def make_models(cell: str, B: int, T: int, I: int, H: int, backends: list[str], device: str = "cpu"):
    cls, torch_cls, kw, _ = CELLS[cell]
    torch.manual_seed(0)
    models = {}
    ours = cls(I, H, **kw)
    if torch_cls is not None:
        ref = torch_cls(I, H, **kw)
        ours.load_state_dict(ref.state_dict(), strict=cls is not rnnkit.LayerNormLSTM)
        models[peer_name(cell)] = ref.to(device)
    for b in backends:
        m = cls(I, H, backend=b, **kw)
        m.load_state_dict(ours.state_dict())
        models[b] = m.to(device)
    return models


def infer_fn(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def train_fn(model, x, target):
    params = list(model.parameters())

    def run():
        for p in params:
            p.grad = None
        out, _ = model(x)
        torch.nn.functional.mse_loss(out, target).backward()
    return run


def timed(fn, number: int, device: str = "cpu") -> float:
    """ms per call of fn, over number calls (on CUDA, until the device has finished them)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - t) / number * 1e3


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """os.environ with these values set (for the processes spawned meanwhile), restored afterwards."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def in_fresh_process(threads: int, fn, *args):
    """fn(*args) in a new interpreter (spawned) whose torch runs on ``threads`` threads."""
    with multiprocessing.get_context("spawn").Pool(1, initializer=_set_threads, initargs=(threads,)) as pool:
        return pool.apply(fn, args)


def jax_lstm(model, x: torch.Tensor, target: torch.Tensor):
    """The third contender for the LSTM rows: the same one-layer LSTM (same weights) in JAX, a
    ``lax.scan`` over time after one input GEMM, jitted, float32 on the CPU, as Flax's LSTM runs.
    Returns (inference, training step) callables that wait for their result, or None without JAX.
    The training step is the gradient of the same MSE loss with respect to every weight."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    params = {"w_ih": model.weight_ih_l0, "w_hh": model.weight_hh_l0, "b": model.bias_ih_l0 + model.bias_hh_l0}
    params = {k: jnp.asarray(v.detach().cpu().numpy()) for k, v in params.items()}
    batch, hidden = x.shape[1], model.hidden_size

    def forward(p, xs):
        def step(carry, gi):
            h, c = carry
            i, f, g, o = jnp.split(gi + h @ p["w_hh"].T, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h
        zeros = jnp.zeros((batch, hidden), xs.dtype)
        return jax.lax.scan(step, (zeros, zeros), xs @ p["w_ih"].T + p["b"])[1]

    infer = jax.jit(forward)
    grad = jax.jit(jax.grad(lambda p, xs, y: jnp.mean((forward(p, xs) - y) ** 2)))
    xs, ys = jnp.asarray(x.cpu().numpy()), jnp.asarray(target.cpu().numpy())
    return (lambda: infer(params, xs).block_until_ready()), (lambda: jax.block_until_ready(grad(params, xs, ys)))


def bench_one(cell, cfg, backends, repeat, min_time, device="cpu", with_jax=True):
    B, T, I, H = cfg
    G = CELLS[cell][3]
    flops_fwd = 2.0 * T * B * G * H * (I + H)
    models = make_models(cell, B, T, I, H, backends, device)
    peer = peer_name(cell)
    x = torch.randn(T, B, I, device=device)
    target = torch.randn(T, B, H, device=device)
    jax_fns = jax_lstm(models[peer], x, target) if (with_jax and cell == "lstm" and device == "cpu") else None
    rows = []
    for mode, make, flops in (("inference", infer_fn, flops_fwd), ("train", lambda m, x: train_fn(m, x, target),
                                                                    3 * flops_fwd)):
        fns = {name: make(m, x) for name, m in models.items()}
        if jax_fns is not None:
            fns["jax"] = jax_fns[mode == "train"]
        if B == 1 and device == "cpu":  # the weight-read floor: a read of W_hh per step (two in training)
            fns["floor"] = read_floor(step_weights(cell, I, H, streaming=False), T * (2 if mode == "train" else 1))
        first = {}
        for name, fn in fns.items():  # warm-up; the first call includes compilation (cached on disk)
            t = time.perf_counter()
            fn()
            first[name] = (time.perf_counter() - t) * 1e3
            fn()
        # calls per sample: enough for min_time on the slowest contender
        single = {name: timed(fn, 1, device) for name, fn in fns.items()}
        number = {name: max(1, int(min_time * 1e3 / max(s, 1e-3))) for name, s in single.items()}
        samples = {name: [] for name in fns}
        order, shuffle = list(fns), random.Random(0).shuffle
        for _ in range(repeat):  # interleaved rounds, each in a new order (what runs just before a call can
            shuffle(order)       # speed it up or slow it down: fixed-order blocks read small LSTMs 1.2x slower)
            for name in order:
                samples[name].append(timed(fns[name], number[name], device))
        med = {name: statistics.median(v) for name, v in samples.items()}
        peak_mib = {}
        if device == "cuda":  # the most memory one call holds at once, on top of the models and data
            for name, fn in fns.items():
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fn()
                torch.cuda.synchronize()
                peak_mib[name] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        floor = med.pop("floor", None)
        for name in med:
            rows.append({
                "cell": cell, "B": B, "T": T, "I": I, "H": H, "mode": mode, "impl": name, "device": device,
                "peak_mib": peak_mib.get(name),
                "median_ms": med[name], "min_ms": min(samples[name]), "first_call_ms": first[name],
                "peer": peer, "ratio_vs_peer": med[name] / med[peer] if peer else None,
                "ratio_vs_reference": med[name] / med["reference"] if "reference" in med else None,
                "ratio_vs_jax": med[name] / med["jax"] if "jax" in med else None,
                "gflops": flops / med[name] / 1e6,
                "floor_ms": floor, "ratio_vs_floor": med[name] / floor if floor else None,
                "samples_ms": samples[name], "calls_per_sample": number[name],
            })
    return rows


SEQUENCE_STEPS = 1000  # the steps of the whole-sequence call whose time per step the streaming rows show
FLOOR_PASSES = 100  # reads of the weights per call of the floor's timing (no Python cost per pass)


def bench_stream(cell: str, hidden: int, repeat: int, number: int = 2000, threads: int = 1) -> dict:
    """Streaming, batch 1: µs per call of one step of a 1-layer cell (input size = hidden), no grad,
    on one thread: torch.nn's *Cell (where torch.nn has the cell) against rnnkit's
    ``layer.step(x_t, state)``, the kernel it calls (``rnnkit.kernels.fused.stream_step``, state in
    and out as tensors), ``layer.streamer()`` (the state kept inside: a compiled ``fused.Streamer``),
    also writing into a preallocated output (``streamer(x, out=y)``), and a step inside one layer call
    of ``SEQUENCE_STEPS`` steps (``sequence``, µs per step). Beside them, the host's floors: one read
    of the weights a step reads (``step_weights``): every weight for a streaming step (``floor``), W_hh
    for a step inside a call (``floor_w_hh``: the input projection is one GEMM over all steps); and a
    Python call that returns a new tensor of y_t's shape (``new_tensor``: what any call pays that
    allocates its output). With threads > 1, also
    a streamer made and run on that many threads (``streamer_threads``: with large weights it shares
    the hidden units among them, see the policy's ``stream_units_min_weight``). Rounds interleave the
    contenders in a new order each."""
    cls, _, kw, _ = CELLS[cell]
    torch.manual_seed(0)
    m = cls(hidden, hidden, **kw)
    weights = [m.direction_weights(0, 0)]
    x, xs = torch.randn(1, hidden), torch.randn(SEQUENCE_STEPS, 1, hidden)
    h = torch.zeros(1, 1, hidden)
    c = torch.zeros(1, 1, hidden) if len(m.spec.state_sizes) == 2 else None
    with _threads_set(1):
        streamer, y = m.streamer(1), torch.empty(1, hidden)
    state = h if c is None else (h, c)

    def new_tensor(x_t):
        return torch.empty_like(y)
    fns = {"layer.step": lambda: m.step(x, state), "fused": lambda: _fused.stream_step(m.spec, x, weights, h, c),
           "streamer": lambda: streamer(x), "streamer_out": lambda: streamer(x, out=y),
           "sequence": lambda: m(xs), "new_tensor": lambda: new_tensor(x),
           "floor": read_floor(step_weights(cell, hidden, hidden, streaming=True), FLOOR_PASSES),
           "floor_w_hh": read_floor(step_weights(cell, hidden, hidden, streaming=False), FLOOR_PASSES)}
    per_call = {name: 1 for name in fns}  # units a call times: steps of the sequence, reads of the floor
    per_call.update(sequence=SEQUENCE_STEPS, floor=FLOOR_PASSES, floor_w_hh=FLOOR_PASSES)
    torch_cell = {"rnn": torch.nn.RNNCell, "rnn_relu": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell,
                  "gru": torch.nn.GRUCell}.get(cell)  # torch.nn has no layer-normalised LSTM cell
    if torch_cell is not None:
        tcell = torch_cell(hidden, hidden, **kw)
        cell_state = (h[0], c[0]) if c is not None else h[0]
        fns["torch"] = lambda: tcell(x, cell_state)
    on = {name: 1 for name in fns}  # batch 1: one thread beats two for torch.nn
    if threads > 1:
        with _threads_set(threads):
            shared = m.streamer(1)
        fns["streamer_threads"], on["streamer_threads"] = (lambda: shared(x)), threads
    calls = {name: max(1, number // per_call.get(name, 1)) for name in fns}
    order, shuffle = list(fns), random.Random(0).shuffle
    with torch.no_grad():
        samples = {name: [] for name in fns}
        for i in range(repeat + 1):  # the first round warms up
            shuffle(order)
            for name in order:
                with _threads_set(on[name]):
                    ms = timed(fns[name], calls[name] if i else 1)
                if i:
                    samples[name].append(ms * 1e3 / per_call.get(name, 1))
    return {name: statistics.median(v) for name, v in samples.items()}


@contextlib.contextmanager
def _threads_set(n: int):
    """torch (and with it the streaming kernels) on n threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpuinfo() -> dict[str, str]:
    """/proc/cpuinfo's fields (one processor's; they are the same for all here), empty off Linux."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # pragma: no cover - not Linux
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}


def cpu_name(info: dict[str, str] | None = None) -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model: hosts of one machine kind differ,
    so a report says which one it ran on."""
    info = _cpuinfo() if info is None else info
    if not info:  # pragma: no cover - not Linux
        return platform.processor() or "?"
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"


def fma_peak(threads: int, info: dict[str, str] | None = None) -> tuple[float | None, str]:
    """The float32 FMA peak of ``threads`` cores of this CPU in GFLOP/s, and how it was reckoned:
    threads × 2 FMA pipes × SIMD lanes × 2 FLOPs × the clock /proc/cpuinfo gives (the nominal one in
    a VM; a boost clock can run above it). Lanes: 16 with AVX-512 on full-width units (Intel; AMD from
    family 26, e.g. 2 threads at 4.45 GHz give 570 GFLOP/s), 8 with AVX2 and FMA (and on AMD family
    25, whose AVX-512 runs on 256-bit halves), 4 otherwise. Two FMA pipes per core holds for current
    AMD and Intel's larger cores; ``--peak-gflops`` overrides it. None where the clock
    is unknown (e.g. Arm, or not Linux)."""
    info = _cpuinfo() if info is None else info
    try:
        ghz = float(info["cpu MHz"]) / 1000
    except (KeyError, ValueError):
        return None, "unknown: /proc/cpuinfo gives no clock (pass --peak-gflops)"
    flags = set(info.get("flags", "").split())
    half_width_avx512 = info.get("vendor_id") == "AuthenticAMD" and int(info.get("cpu family", "0") or 0) < 26
    if "avx512f" in flags and not half_width_avx512:
        lanes, isa = 16, "AVX-512"
    elif "fma" in flags and "avx2" in flags:
        lanes, isa = 8, "AVX2"
    else:
        lanes, isa = 4, "SSE"
    peak = threads * 2 * lanes * 2 * ghz
    return peak, f"{threads} threads × 2 FMA pipes × {lanes} float32 lanes ({isa}) × 2 FLOPs × {ghz:.2f} GHz"


def gemm_gflops(repeat: int = 5, n: int = 2048) -> float:
    """This machine's float32 GEMM rate now (GFLOP/s): n³ on the current thread count, the faster
    (median of ``repeat``) of MKL (``torch.mm``) and oneDNN's linear on a prepacked weight — the
    ceiling that every row's % of the GEMM rate is read against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    packed = reorder_weight(b, n)
    fns = (lambda: torch.mm(a, b), lambda: linear_pointwise(a, packed, None, "none", [], ""))
    best = float("inf")
    for fn in fns:
        fn()
        best = min(best, statistics.median(timed(fn, 1) for _ in range(repeat)))
    return 2.0 * n ** 3 / (best * 1e-3) / 1e9


@numba.njit(cache=True, nogil=True, fastmath=True)
def read_passes(a, passes):
    """The sum of a float32[n] taken ``passes`` times, each pass reading every element: its time ÷
    passes is the time of one plain read of those bytes from where they stay between passes (L1, L2
    or memory), the floor of any step that reads them once."""
    total = 0.0
    for _ in range(passes):
        s = np.float32(0)
        for i in range(a.shape[0]):
            s += a[i]
        total += s
    return total


def step_weights(cell: str, I: int, H: int, streaming: bool) -> int:
    """Bytes of float32 weights one step reads: in a whole-sequence call the recurrent W_hh (the input
    projection is one GEMM over all steps, outside the time loop); in a streaming step every weight of
    the one-layer cell (W_ih, W_hh and both biases, and a layer-normalised LSTM's 10H gains and shifts)."""
    G = CELLS[cell][3] * H
    ln = 10 * H if cell == "lstm_ln" else 0
    return 4 * (G * H + ((G * I + 2 * G + ln) if streaming else 0))


def read_floor(nbytes: int, passes: int):
    """A callable making ``passes`` reads of a float32 buffer of nbytes (its own, not a model's weights:
    the same bytes, the same cache level), in one compiled call (no Python cost per pass)."""
    buf = np.ones(max(1, nbytes // 4), np.float32)
    read_passes(buf, 1)  # compiles (or loads the cache) outside the timings
    return lambda: read_passes(buf, passes)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the benchmark with command-line arguments argv; prints the table, returns the exit code."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help="comma-separated BxTxIxH (default: the 4 anchors); none: only the streaming rows")
    ap.add_argument("--cells", default="rnn,lstm,gru,lstm_ln", help=f"comma-separated, from {','.join(CELLS)}")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds; medians are over these")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: rnnkit's fused backend; cuda: backend='auto' (cuDNN for torch.nn's cells)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per sample (several calls if fast)")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) reference backend")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX LSTM (run when JAX is installed)")
    ap.add_argument("--json", default=None, help="write all rows (with raw samples) to this path")
    ap.add_argument("--no-stream", action="store_true", help="skip the streaming (batch 1 step) timings")
    ap.add_argument("--markdown", default=None, help="write the tables as markdown (for the README) to this path")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="the FMA peak that %%pk refers to (default: reckoned from /proc/cpuinfo for --threads cores)")
    ap.add_argument("--malloc", choices=("glibc", "tuned"), default="glibc",
                    help="glibc: the C library's defaults (what a user gets); tuned: no heap trimming and no mmap "
                         "for large blocks in the benchmark's processes, so neither contender pays page faults")
    args = ap.parse_args(argv)

    for flag, value in (("--repeat", args.repeat), ("--threads", args.threads)):
        if value < 1:
            raise SystemExit(f"{flag}: expected an integer >= 1, got {value}")
    if args.min_time <= 0:
        raise SystemExit(f"--min-time: expected a positive number of seconds, got {args.min_time}")
    torch.set_num_threads(args.threads)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if not cells:
        raise SystemExit(f"--cells: expected some of {sorted(CELLS)}, got {args.cells!r}")
    for c in cells:
        if c not in CELLS:
            raise SystemExit(f"--cells: unknown cell {c!r}; expected some of {sorted(CELLS)}")
    configs = parse_configs(args.configs)
    if not configs and (args.no_stream or args.device == "cuda"):
        raise SystemExit("--configs none with no streaming rows (--no-stream, or --device cuda): nothing to time")
    check_output_path("--json", args.json)
    check_output_path("--markdown", args.markdown)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device: 'cuda' requested but torch.cuda.is_available() is False")
    ours = "fused" if args.device == "cpu" else "auto"
    backends = [ours] + ([] if args.no_reference else ["reference"])
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, threads {args.threads}, repeat {args.repeat}, malloc {args.malloc}, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    info = _cpuinfo()
    peak, peak_from = (args.peak_gflops, "--peak-gflops") if args.peak_gflops else fma_peak(args.threads, info)
    if args.device == "cpu":
        gemm = gemm_gflops()
        print(f"CPU {cpu_name(info)}; %pk: of its FMA peak, {peak_from}" + (f" = {peak:.0f} GFLOP/s" if peak else "")
              + f"; its 2048³ float32 GEMM now: {gemm:.0f} GFLOP/s"
              + (f" = {100 * gemm / peak:.0f}% of that peak" if peak else ""), flush=True)
    else:
        gemm = peak = peak_from = None
        print(f"GPU {torch.cuda.get_device_name()}; rnnkit with backend='auto' (%pk: of the CPU peak, "
              f"meaningless here); peak MiB: the most memory one call holds beyond its inputs", flush=True)
    print(HEADER.format(ours=ours) + (f" | {'peer MiB':>9} {ours + ' MiB':>9}" if args.device == "cuda" else ""))
    print("-" * len(HEADER.format(ours=ours)))
    rows = []
    for cell in cells:
        for cfg in configs:
            with environment(TUNED_MALLOC if args.malloc == "tuned" else {}):
                got = in_fresh_process(args.threads, bench_one, cell, cfg, backends, args.repeat, args.min_time,
                                       args.device, not args.no_jax)
            for row in got:
                row["peak_pct"] = 100 * row["gflops"] / peak if peak else None
                row["gemm_pct"] = 100 * row["gflops"] / gemm if gemm else None
            rows += got
            for mode in ("inference", "train"):
                print(table_line({row["impl"]: row for row in got if row["mode"] == mode}, ours), flush=True)
    print()
    for cell in cells:
        if configs and peer_name(cell) is None:
            print(f"{cell}: torch.nn has no such cell, so no ratio; compare it with the reference backend "
                  f"({'dropped by --no-reference' if args.no_reference else 'the ref ms column'})")
    summary = {}
    for cell in cells:
        for mode in ("inference", "train"):
            for field, key, against in (("ratio_vs_peer", f"{cell}/{mode}", peer_name(cell)),
                                        ("ratio_vs_jax", f"{cell}/{mode}/jax", "jax")):
                ratios = [r[field] for r in rows if r["cell"] == cell and r["mode"] == mode
                          and r["impl"] == ours and r[field] is not None]
                if ratios:
                    summary[key] = {"median_ratio": statistics.median(ratios), "max_ratio": max(ratios)}
                    print(f"{cell:8} {mode:9} {ours}/{against}: median {statistics.median(ratios):.2f}, "
                          f"worst {max(ratios):.2f}")
    stream = []
    if not args.no_stream and args.device == "cpu":
        print()
        print(f"streaming, batch 1, one layer, input = hidden, one thread; µs per call (per step in a "
              f"{SEQUENCE_STEPS}-step call); floor: one read of the step's weights; new tensor: a Python call "
              f"that returns one")
        print(STREAM_HEADER.format(threads=args.threads))
        print("-" * len(STREAM_HEADER.format(threads=args.threads)))
        for cell in cells:
            for hidden in (64, 256):
                r = bench_stream(cell, hidden, args.repeat, threads=args.threads)
                stream.append({"cell": cell, "H": hidden, **{f"{k}_us": v for k, v in r.items()},
                               "floor_bytes": step_weights(cell, hidden, hidden, True)})
                print(stream_line(stream[-1]), flush=True)
    found = checks(rows, stream, ours)
    if found:
        print()
        print("targets (docs/performance.md):")
        for c in found:
            print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['text']}")
    load1 = os.getloadavg()
    gemm_end = gemm_gflops() if gemm else None  # the rate again: a host that changed speed shows here
    print(f"load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}"
          + (f"; 2048³ GEMM at the end {gemm_end:.0f} GFLOP/s (at the start {gemm:.0f}, the % gemm columns' rate)"
             if gemm else ""))
    report = {"torch": torch.__version__, "threads": args.threads, "repeat": args.repeat, "device": args.device,
              "malloc": args.malloc,
              "ours": ours, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
              "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
              "cpu": cpu_name(info), "gemm_gflops": gemm, "gemm_gflops_end": gemm_end,
              "load_start": load0, "load_end": load1,
              "peak_gflops": peak, "peak_from": peak_from,
              "rows": rows, "summary": summary, "stream": stream, "checks": found}
    for path, text in ((args.json, lambda: json.dumps(report, indent=1)), (args.markdown, lambda: markdown(report))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text())
            print(f"wrote {path}")
    return 0


HEADER = (f"{'cell':8} {'B,T,I,H':>16} {'mode':9} | {'peer':>11} {'peer ms':>9} {{ours}} ms {'ratio':>6} "
          f"{{ours}} %gemm {'peer %gemm':>10} | {'floor ms':>9} {{ours}}/floor | {'ref ms':>9} {{ours}}/ref")
STREAM_HEADER = (f"{'cell':8} {'H':>4} | {'torch.nn':>8} {'.step':>7} {'stream_step':>11} {'streamer':>8} {'out=':>7} "
                 f"{'{threads} threads':>9} {'in a call':>9} | {'floor':>6} {'streamer/floor':>14} "
                 f"{'W_hh floor':>10} {'in-a-call/floor':>15} | {'new tensor':>10}")


def _num(value, spec: str) -> str:
    """value formatted, or "-" in the same width where there is none."""
    width = spec.split(".")[0]
    return format(value, spec) if value is not None else format("-", f">{width}")


def table_line(r: dict[str, dict], ours: str) -> str:
    """One line of the table from one cell, config and mode's rows by contender (``r[impl]``):
    times, ratio to the peer, shares of the host's GEMM rate, ratio to the weight-read floor (batch 1),
    ratio to the reference backend (and JAX's and GPU memory where they ran)."""
    f = r[ours]
    t, ref = r.get(f["peer"]), r.get("reference")
    cfg = ",".join(str(f[k]) for k in "BTIH")
    line = (f"{f['cell']:8} {cfg:>16} {f['mode']:9} | {f['peer'] or '-':>11} {_num(t and t['median_ms'], '9.2f')} "
            f"{f['median_ms']:{len(ours) + 3}.2f} {_num(f['ratio_vs_peer'], '6.2f')} "
            f"{_num(f.get('gemm_pct'), f'{len(ours) + 5}.1f')}% {_num(t and t.get('gemm_pct'), '9.1f')}% | "
            f"{_num(f['floor_ms'], '9.3f')} {_num(f['ratio_vs_floor'], f'{len(ours) + 6}.2f')} | "
            f"{_num(ref and ref['median_ms'], '9.2f')} {_num(f['ratio_vs_reference'], f'{len(ours) + 4}.3f')}")
    if f["device"] == "cuda":
        line += f" | {_num(t and t['peak_mib'], '9.1f')} {f['peak_mib']:9.1f}"
    if "jax" in r:
        line += f" | jax {r['jax']['median_ms']:9.2f} ms, {ours}/jax {f['ratio_vs_jax']:5.2f}"
    return line


def stream_line(s: dict) -> str:
    """One line of the streaming table from a ``bench_stream`` result (µs, keys ``<name>_us``)."""
    def us(name: str, width: int = 7) -> str:
        return _num(s.get(f"{name}_us"), f"{width}.2f")
    return (f"{s['cell']:8} {s['H']:>4} | {us('torch', 8)} {us('layer.step')} {us('fused', 11)} {us('streamer', 8)} "
            f"{us('streamer_out')} {us('streamer_threads', 9)} {us('sequence', 9)} | {us('floor', 6)} "
            f"{s['streamer_us'] / s['floor_us']:14.1f} {us('floor_w_hh', 10)} "
            f"{s['sequence_us'] / s['floor_w_hh_us']:15.1f} | "
            f"{us('new_tensor', 10)}")


PEER_BAR = 1.03  # rnnkit ÷ torch.nn on every row
GEMM_BARS = {(256, 50, 256, 512): 85.0, (64, 100, 128, 256): 75.0}  # % of the host's GEMM rate, large shapes
FLOOR_BAR = 1.5  # a batch-1 step ÷ one read of its weights
STREAMER_BAR_US = {64: 2.5}  # layer.streamer() µs a call, by H


def checks(rows: list[dict], stream: list[dict], ours: str) -> list[dict]:
    """The targets as pass/fail, from the rows that ran: per cell and mode the worst ratio to torch.nn
    (<= PEER_BAR), the large shapes' shares of the GEMM rate (GEMM_BARS), the batch-1 rows' and the
    streaming rows' ratios to the weight-read floor (<= FLOOR_BAR), and layer.streamer()'s µs a call
    (STREAMER_BAR_US). Each: ``{"passed", "value", "bar", "text"}``."""
    found = []

    def check(passed: bool, value: float, bar: float, text: str) -> None:
        found.append({"passed": passed, "value": value, "bar": bar, "text": text})
    mine = [r for r in rows if r["impl"] == ours]
    for cell in dict.fromkeys(r["cell"] for r in mine):
        for mode in ("inference", "train"):
            these = [r for r in mine if r["cell"] == cell and r["mode"] == mode]
            judged = [r for r in these if r["peer"] == "torch"]
            if judged:
                worst = max(judged, key=lambda r: r["ratio_vs_peer"])
                check(worst["ratio_vs_peer"] <= PEER_BAR, worst["ratio_vs_peer"], PEER_BAR,
                      f"{cell:8} {mode:9} worst {ours}/torch.nn {worst['ratio_vs_peer']:.2f} (at {_cfg(worst)}), "
                      f"bar <= {PEER_BAR}")
            for r in these:
                bar = GEMM_BARS.get(tuple(r[k] for k in "BTIH"))
                if bar is not None and r.get("gemm_pct") is not None:
                    check(r["gemm_pct"] >= bar, r["gemm_pct"], bar, f"{cell:8} {mode:9} {_cfg(r)}: "
                          f"{r['gemm_pct']:.1f}% of the host's GEMM rate, bar >= {bar:.0f}%")
                if r["ratio_vs_floor"] is not None:
                    check(r["ratio_vs_floor"] <= FLOOR_BAR, r["ratio_vs_floor"], FLOOR_BAR,
                          f"{cell:8} {mode:9} {_cfg(r)}: {r['ratio_vs_floor']:.2f}x the weight-read floor "
                          f"({r['floor_ms']:.3f} ms), bar <= {FLOOR_BAR}x")
    for s in stream:
        where = f"{s['cell']:8} H={s['H']:<4}"
        bar = STREAMER_BAR_US.get(s["H"])
        if bar is not None:
            check(s["streamer_us"] <= bar, s["streamer_us"], bar,
                  f"{where} layer.streamer() {s['streamer_us']:.2f} µs a call, bar <= {bar} µs (with out=: "
                  f"{s['streamer_out_us']:.2f} µs; a Python call returning a new tensor: "
                  f"{s['new_tensor_us']:.2f} µs)")
        for name, floor, what in (("streamer", "floor", "layer.streamer()"),
                                  ("sequence", "floor_w_hh", f"a step in a {SEQUENCE_STEPS}-step call")):
            ratio = s[f"{name}_us"] / s[f"{floor}_us"]
            check(ratio <= FLOOR_BAR, ratio, FLOOR_BAR, f"{where} {what}: {ratio:.1f}x the weight-read floor "
                  f"({s[f'{floor}_us']:.2f} µs), bar <= {FLOOR_BAR}x")
    return found


def _cfg(row: dict) -> str:
    return ",".join(str(row[k]) for k in "BTIH")


def markdown(report: dict) -> str:
    """The docs' tables from a report: rnnkit against its peer per cell, config and mode (with the
    shares of the host's GEMM rate and, at batch 1, the ratio to the weight-read floor); the medians;
    the streaming step; the targets, pass or fail."""
    def cell_text(value, spec: str, suffix: str = "") -> str:
        return "-" if value is None else format(value, spec) + suffix
    lines = [f"Host: {report['cpu']}, {report['threads']} threads; 2048³ float32 GEMM "
             f"{cell_text(report['gemm_gflops'], '.0f')} GFLOP/s.", "",
             "| cell | B, T, I, H | mode | peer | peer ms | rnnkit ms | ratio | rnnkit % of GEMM | peer % of GEMM "
             "| floor ms | rnnkit ÷ floor |", "|" + "---|" * 11]
    by_key = {(r["cell"], r["B"], r["T"], r["I"], r["H"], r["mode"], r["impl"]): r for r in report["rows"]}
    ours = report.get("ours", "fused")
    for (cell, B, T, I, H, mode, impl), r in by_key.items():
        if impl != ours:  # rnnkit's rows; JAX's have a table of their own
            continue
        peer = by_key.get((cell, B, T, I, H, mode, r["peer"])) if r["peer"] else None
        lines.append(f"| {cell} | {B}, {T}, {I}, {H} | {mode} | {r['peer'] or '-'} | "
                     f"{cell_text(peer and peer['median_ms'], '.2f')} | {r['median_ms']:.2f} | "
                     f"{cell_text(r['ratio_vs_peer'], '.2f')} | {cell_text(r.get('gemm_pct'), '.0f', '%')} | "
                     f"{cell_text(peer and peer.get('gemm_pct'), '.0f', '%')} | {cell_text(r['floor_ms'], '.3f')} | "
                     f"{cell_text(r['ratio_vs_floor'], '.2f')} |")
    jax_rows = [(key, r) for key, r in by_key.items() if key[-1] == "jax"]
    if jax_rows:
        lines += ["", "| B, T, I, H | mode | JAX lax.scan LSTM ms | rnnkit ms | ratio |", "|---|---|---|---|---|"]
        for (cell, B, T, I, H, mode, _), r in jax_rows:
            mine = by_key[(cell, B, T, I, H, mode, ours)]
            lines.append(f"| {B}, {T}, {I}, {H} | {mode} | {r['median_ms']:.2f} | {mine['median_ms']:.2f} | "
                         f"{mine['ratio_vs_jax']:.2f} |")
    lines += ["", "| cell | mode | against | median ratio over configs | worst |", "|---|---|---|---|---|"]
    for key, v in report["summary"].items():
        cell, mode, *against = key.split("/")
        lines.append(f"| {cell} | {mode} | {against[0] if against else peer_name(cell)} | {v['median_ratio']:.2f} | "
                     f"{v['max_ratio']:.2f} |")
    if report["stream"]:
        lines += ["", "| cell | H | torch.nn cell µs | layer.step µs | layer.streamer() µs | "
                  f"streamer(x, out=y) µs | streamer on {report['threads']} threads µs | "
                  f"a step in a {SEQUENCE_STEPS}-step call µs | "
                  "weight-read floor µs | streamer ÷ floor | W_hh floor µs | step in a call ÷ W_hh floor | "
                  "new tensor µs |", "|" + "---|" * 13]
        lines += [f"| {s['cell']} | {s['H']} | {cell_text(s.get('torch_us'), '.2f')} | {s['layer.step_us']:.2f} | "
                  f"{s['streamer_us']:.2f} | {s['streamer_out_us']:.2f} | "
                  f"{cell_text(s.get('streamer_threads_us'), '.2f')} | {s['sequence_us']:.2f} | {s['floor_us']:.2f} | "
                  f"{s['streamer_us'] / s['floor_us']:.1f} | {s['floor_w_hh_us']:.2f} | "
                  f"{s['sequence_us'] / s['floor_w_hh_us']:.1f} | "
                  f"{s['new_tensor_us']:.2f} |" for s in report["stream"]]
    if report.get("checks"):
        lines += ["", "| target | result |", "|---|---|"]
        lines += [f"| {' '.join(c['text'].split())} | {'pass' if c['passed'] else '**fail**'} |"
                  for c in report["checks"]]
    return "\n".join(lines) + "\n"
