"""Speed of rnnkit's recurrent layers against torch.nn, side by side (each config in one process).

For each cell and config (B, T, I, H) it times inference (forward under ``torch.no_grad``) and a
training step (forward + backward of an MSE loss) for torch.nn and for rnnkit with
``backend="fused"`` and ``backend="reference"``, all with the same weights, interleaved round by
round (in a shuffled order each round) so that machine noise hits every contender alike. Each cell
and config runs in a fresh process, so that a row does not depend on the rows run before it: in one
process a row's timing depended on the rows run before it (docs/performance.md). It prints
medians (ms), the ratio rnnkit ÷ torch.nn and the share of this CPU's FMA peak on the threads used
(``fma_peak``: reckoned from /proc/cpuinfo), and can write
JSON. The streaming rows time one step at batch 1 on one thread: torch.nn's cell, ``layer.step``,
the kernel under it, ``layer.streamer()`` and the streamer writing into a preallocated output; and
with ``--threads`` above 1, a streamer on that many threads (it shares large weights among them).

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

import torch

import rnnkit

from .kernels import fused as _fused
from .kernels.fused.gemm import linear_pointwise

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
        for name in fns:
            rows.append({
                "cell": cell, "B": B, "T": T, "I": I, "H": H, "mode": mode, "impl": name, "device": device,
                "peak_mib": peak_mib.get(name),
                "median_ms": med[name], "min_ms": min(samples[name]), "first_call_ms": first[name],
                "peer": peer, "ratio_vs_peer": med[name] / med[peer] if peer else None,
                "ratio_vs_reference": med[name] / med["reference"] if "reference" in med else None,
                "ratio_vs_jax": med[name] / med["jax"] if "jax" in med else None,
                "gflops": flops / med[name] / 1e6,
                "samples_ms": samples[name], "calls_per_sample": number[name],
            })
    return rows


def bench_stream(cell: str, hidden: int, repeat: int, number: int = 2000, threads: int = 1) -> dict:
    """Streaming, batch 1: µs per call of one step of a 1-layer cell (input size = hidden), no grad,
    on one thread: torch.nn's *Cell (where torch.nn has the cell) against rnnkit's
    ``layer.step(x_t, state)``, the kernel it calls (``rnnkit.kernels.fused.stream_step``, state in
    and out as tensors) and ``layer.streamer()`` (the state kept inside: a compiled
    ``fused.Streamer``), also writing into a preallocated output (``streamer(x, out=y)``). With
    threads > 1, also a streamer made and run on that many threads (``streamer_threads``: with large
    weights it shares the hidden units among them, see the policy's ``stream_units_min_weight``)."""
    cls, _, kw, _ = CELLS[cell]
    torch.manual_seed(0)
    m = cls(hidden, hidden, **kw)
    weights = [m.direction_weights(0, 0)]
    x = torch.randn(1, hidden)
    h = torch.zeros(1, 1, hidden)
    c = torch.zeros(1, 1, hidden) if len(m.spec.state_sizes) == 2 else None
    with _threads_set(1):
        streamer, y = m.streamer(1), torch.empty(1, hidden)
    state = h if c is None else (h, c)
    fns = {"layer.step": lambda: m.step(x, state), "fused": lambda: _fused.stream_step(m.spec, x, weights, h, c),
           "streamer": lambda: streamer(x), "streamer_out": lambda: streamer(x, out=y)}
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
    with torch.no_grad():
        samples = {name: [] for name in fns}
        for i in range(repeat + 1):  # the first round warms up
            for name, fn in fns.items():
                with _threads_set(on[name]):
                    ms = timed(fn, number if i else 1)
                if i:
                    samples[name].append(ms * 1e3)
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


def gemm_gflops(repeat: int = 5) -> float:
    """This machine's float32 GEMM rate now (GFLOP/s, median): 2048³ through oneDNN with the current
    thread count — the ceiling that every row's % of peak should be read against."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    linear_pointwise(a, b, None, "none", [], "")
    times = [timed(lambda: linear_pointwise(a, b, None, "none", [], ""), 1) for _ in range(repeat)]
    return 2.0 * n ** 3 / (statistics.median(times) * 1e-3) / 1e9


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
    header = (f"{'cell':8} {'B,T,I,H':>16} {'mode':9} | {'peer':>11} {'peer ms':>9} {ours + ' ms':>9} {'ratio':>6} "
              f"{ours + ' %pk':>9} {'peer %pk':>9} | {'ref ms':>9} {ours + '/ref':>9}"
              + (f" | {'peer MiB':>9} {ours + ' MiB':>9}" if args.device == "cuda" else ""))
    print(header)
    print("-" * len(header))
    rows = []
    for cell in cells:
        for cfg in configs:
            with environment(TUNED_MALLOC if args.malloc == "tuned" else {}):
                got = in_fresh_process(args.threads, bench_one, cell, cfg, backends, args.repeat, args.min_time,
                                       args.device, not args.no_jax)
            for row in got:
                row["peak_pct"] = 100 * row["gflops"] / peak if peak else None
            rows += got
            for mode in ("inference", "train"):
                r = {row["impl"]: row for row in got if row["mode"] == mode}
                f, t, ref = r[ours], r.get(peer_name(cell)), r.get("reference")
                extra = "" if args.device == "cpu" else \
                    f" | {t['peak_mib'] if t else float('nan'):9.1f} {f['peak_mib']:9.1f}"
                if "jax" in r:
                    extra += f" | jax {r['jax']['median_ms']:9.2f} ms, {ours}/jax {f['ratio_vs_jax']:5.2f}"
                print(f"{cell:8} {','.join(map(str, cfg)):>16} {mode:9} | {peer_name(cell) or '-':>11} "
                      f"{t['median_ms'] if t else float('nan'):9.2f} {f['median_ms']:9.2f} "
                      f"{(f['ratio_vs_peer'] if t else float('nan')):6.2f} {_pct(f)}% {_pct(t)}% | "
                      f"{ref['median_ms'] if ref else float('nan'):9.2f} "
                      f"{(f['ratio_vs_reference'] if ref else float('nan')):9.3f}{extra}", flush=True)
    # summary: median ratio over configs per cell and mode
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
        print("streaming step, batch 1, one layer, input = hidden, one thread (µs per call, median; ratio to torch.nn):")
        for cell in cells:
            for hidden in (64, 256):
                r = bench_stream(cell, hidden, args.repeat, threads=args.threads)
                stream.append({"cell": cell, "H": hidden, **{f"{k}_us": v for k, v in r.items()}})
                t = r.get("torch", float("nan"))
                shared = (f"   streamer on {args.threads} threads {r['streamer_threads']:7.2f} µs "
                          f"({r['streamer_threads'] / t:.2f})" if "streamer_threads" in r else "")
                print(f"{cell:8} H={hidden:<4} torch.nn cell {t:7.2f} µs   layer.step {r['layer.step']:7.2f} µs "
                      f"({r['layer.step'] / t:.2f})   stream_step {r['fused']:7.2f} µs ({r['fused'] / t:.2f})   "
                      f"layer.streamer() {r['streamer']:7.2f} µs ({r['streamer'] / t:.2f})   "
                      f"with out= {r['streamer_out']:7.2f} µs ({r['streamer_out'] / t:.2f}){shared}")
    load1 = os.getloadavg()
    print(f"load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    report = {"torch": torch.__version__, "threads": args.threads, "repeat": args.repeat, "device": args.device,
              "malloc": args.malloc,
              "ours": ours, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
              "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
              "cpu": cpu_name(info), "gemm_gflops": gemm, "load_start": load0, "load_end": load1,
              "peak_gflops": peak, "peak_from": peak_from,
              "rows": rows, "summary": summary, "stream": stream}
    for path, text in ((args.json, lambda: json.dumps(report, indent=1)), (args.markdown, lambda: markdown(report))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text())
            print(f"wrote {path}")
    return 0


def _pct(row: dict | None, spec: str = "8.1f") -> str:
    """A row's share of the FMA peak, for the tables: nan without a row or a known peak."""
    pct = row.get("peak_pct") if row else None
    return format(pct if pct is not None else float("nan"), spec)


def markdown(report: dict) -> str:
    """The README's tables from a report: fused vs peer per cell, config and mode; the medians;
    the streaming step."""
    lines = ["| cell | B, T, I, H | mode | peer | peer ms | rnnkit ms | ratio | rnnkit % of peak |", "|" + "---|" * 8]
    by_key = {(r["cell"], r["B"], r["T"], r["I"], r["H"], r["mode"], r["impl"]): r for r in report["rows"]}
    for (cell, B, T, I, H, mode, impl), r in by_key.items():
        if impl != report.get("ours", "fused"):  # rnnkit's rows; JAX's have a table of their own
            continue
        peer = by_key.get((cell, B, T, I, H, mode, r["peer"])) if r["peer"] else None
        lines.append(f"| {cell} | {B}, {T}, {I}, {H} | {mode} | {r['peer'] or '-'} | "
                     f"{peer['median_ms'] if peer else float('nan'):.2f} | {r['median_ms']:.2f} | "
                     f"{r['ratio_vs_peer'] if peer else float('nan'):.2f} | {_pct(r, '.0f')}% |")
    ours = report.get("ours", "fused")
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
        lines += ["", "| cell | H | torch.nn cell µs | layer.step µs | layer.streamer() µs | streamer(x, out=y) µs | "
                  f"streamer on {report['threads']} threads µs |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['cell']} | {s['H']} | {s.get('torch_us', float('nan')):.2f} | {s['layer.step_us']:.2f} | "
                  f"{s['streamer_us']:.2f} | {s.get('streamer_out_us', float('nan')):.2f} | "
                  f"{s.get('streamer_threads_us', float('nan')):.2f} |" for s in report["stream"]]
    return "\n".join(lines) + "\n"
