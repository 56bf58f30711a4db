"""``rnnkit tune``: where two paths can tie on a CPU, time both on this host and keep the faster one.

Each ``Decision`` is a ``Policy`` field with two candidate values (the host's default and its
alternative), timed through rnnkit's own layers on a few shapes that the field's rule governs (``given``:
other fields set alike in both, so that the rule applies), interleaved round by round in a new order
each round (medians). A candidate our rules prefer is kept only where it is faster over the shapes and
never slower than ``TIE`` on any; otherwise the other one (for the LSTM: oneDNN's layer, torch.nn.LSTM's
own path). A shape where both candidates run the same plan is not timed. The
decisions go to ``$XDG_CACHE_HOME/rnnkit/tune/<cpu>.json`` (``policies.tune_path``), which the default
policy reads once per process. A run takes seconds (at most ``budget_s``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .explain import explain
from .policies import NEVER, TUNE_VERSION, Host, Policy, policy, tune_path


@dataclass(frozen=True)
class Decision:
    """A Policy field, its alternative value, the cell and the shapes (B, T, I, H) and mode it is timed on."""

    field: str
    question: str
    cell: str
    shapes: tuple
    training: bool
    alternative: object = None  # the value timed against the default (None: the opposite bool)
    given: tuple = ()  # (field, value) pairs set in both candidates: the rule this decision is timed under


SAMPLE_S = 0.02
"""Seconds of calls one timed sample takes at least: a single call of a millisecond moved by 10-25% from
one sample to the next, enough to flip a decision between two paths within 10% of each other."""

TIE = 1.03
"""The first candidate (the host's default, or our loops) is kept where it is faster over the shapes
(geometric mean of the ratios <= 1) and no shape is slower than this ratio: the bench's bar for "never
slower than torch.nn", whose LSTM layer is the alternative in the LSTM decisions."""

FRACTIONS = {"half": 2, "quarter": 4}
"""A Decision's alternative given as a fraction of the host's default."""

DECISIONS = (
    Decision("lstm_loops_inference", "float32 LSTM inference at small batches: our loops, or oneDNN's LSTM layer",
             "lstm", ((2, 200, 32, 64), (2, 300, 32, 96), (3, 200, 32, 64)), False),
    Decision("loop_lstm_inference_max_weight", "float32 LSTM inference at larger batches: our loop split across "
             "threads where W_hh is small, or oneDNN's LSTM layer", "lstm",
             ((16, 100, 32, 64), (32, 200, 64, 128), (64, 50, 128, 256)), False, alternative=0,
             given=(("lstm_loops_inference", True),)),
    Decision("onednn_lstm_min_macs", "float32 LSTM inference at batches of a few rows: oneDNN's LSTM layer from "
             "the host's per-step multiply-adds B·4H·H, or from half of them", "lstm",
             ((4, 250, 64, 64), (6, 100, 64, 64), (2, 300, 96, 96), (3, 200, 64, 64), (2, 300, 80, 80),
              (1, 500, 64, 96)), False, alternative="half",
             given=(("lstm_loops_inference", True), ("loop_lstm_inference_max_weight", 0))),
    Decision("lstm_loops_training", "float32 LSTM training below onednn_lstm_train_min_macs a step, unsplit: our "
             "loop, or oneDNN's LSTM layer", "lstm", ((2, 300, 32, 64), (4, 100, 32, 64), (8, 100, 32, 64),
                                                     (16, 50, 64, 128)), True, given=(("par_row_bytes_lstm", 0),)),
    Decision("onednn_lstm_train_max_elements", "float32 LSTM training of many state elements T·B·H (from 786,432): "
             "oneDNN's LSTM layer, or our loops", "lstm", ((32, 200, 64, 128), (128, 50, 64, 128), (64, 100, 128, 256)),
             True, alternative=786_432, given=(("lstm_loops_training", False),)),
    Decision("par_row_bytes_lstm", "float32 LSTM training at larger batches: our loop split across threads, or "
             "oneDNN's LSTM layer", "lstm", ((32, 50, 64, 128), (64, 50, 128, 256)), True, alternative=0,
             given=(("lstm_loops_training", True),)),
    Decision("par_row_bytes", "the batch split across threads at up to 4x smaller rows, or not", "gru",
             ((8, 50, 64, 256), (16, 25, 64, 384), (8, 25, 128, 512)), True, alternative="quarter"),
    Decision("stream_one_row_min_steps", "a long no-grad call at batch 1: the layer loop's one-row form from 200 "
             "steps, or one compiled streaming call", "gru", ((1, 600, 32, 64), (1, 500, 64, 64), (1, 250, 64, 96)),
             False, alternative=NEVER),
    Decision("stream_par_min_macs", "a small no-grad call in one compiled call: the batch split across threads "
             "from 1 M multiply-adds, or only from the host's default", "gru",
             ((16, 20, 32, 64), (8, 50, 64, 64), (8, 100, 64, 64)), False, alternative=1_000_000),
)


def _layer(cell: str, I: int, H: int):
    import rnnkit
    torch.manual_seed(0)
    return {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}[cell](I, H, batch_first=True)


def _timed(layer, x, training: bool, calls: int = 1) -> float:
    """Seconds a call takes, the mean over ``calls`` calls in a row."""
    start = time.perf_counter()
    for _ in range(calls):
        if training:
            layer(x)[0].sum().backward()
        else:
            with torch.no_grad():
                layer(x)
    return (time.perf_counter() - start) / calls


def keeps_first(ratios: list[float]) -> bool:
    """Whether the first candidate stays, from its time ÷ the other's at each shape: faster over the
    shapes (geometric mean <= 1) and never slower than ``TIE`` at any."""
    return max(ratios) <= TIE and statistics.geometric_mean(ratios) <= 1.0


def _shown(value) -> str:
    """A candidate's value as the tune's lines print it: "no limit" for the policies' unbounded ints."""
    return "no limit" if type(value) is int and value >= NEVER else str(value)


def _path(p) -> str:
    """A plan's path as the tune's lines print it, with the threads sharing the batch where it splits."""
    return p.path + (f" x{p.chunks}" if p.chunks > 1 else "")


def _runs(p) -> tuple:
    """What a plan runs, without its reason: two candidates that run the same need no timing."""
    return p.path, p.chunks, p.units, p.transposed


def _candidates(d: Decision, base: Policy) -> tuple[Policy, Policy]:
    """(the default, its alternative) for decision d."""
    base = dataclasses.replace(base, **dict(d.given))
    default = getattr(base, d.field)
    if d.alternative in FRACTIONS:
        other = default // FRACTIONS[d.alternative]
    elif isinstance(default, bool):
        other = not default
    else:
        other = d.alternative
    if isinstance(default, bool):  # the LSTM ties: "ours" (True) first
        return dataclasses.replace(base, **{d.field: True}), dataclasses.replace(base, **{d.field: False})
    return base, dataclasses.replace(base, **{d.field: other})


def run(rounds: int = 7, path: Path | None = None, budget_s: float = 60.0, decisions=DECISIONS,
        echo=print) -> dict:
    """Time every decision on this host and store the result at path (default: ``tune_path()``; None
    in the returned dict's "path" when not saved: path=False). Returns what it stores."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected an integer >= 1, got {rounds!r}")
    started = time.perf_counter()
    host = Host.detect()
    base = Policy.for_host(host)
    echo(f"rnnkit tune: {host.model} ({host.vendor}), {host.cores} cores, L2 {host.l2_bytes >> 10} KB a core, "
         f"{host.vector_bytes * 8}-bit SIMD; torch {torch.__version__}, {torch.get_num_threads()} threads")
    chosen: dict = {}
    measurements = []
    for d in decisions:
        first, second = _candidates(d, base)
        ratios = []
        for B, T, I, H in d.shapes:
            layer = _layer(d.cell, I, H)
            x = torch.randn(B, T, I)
            plans = []
            for candidate in (first, second):
                with policy(candidate):
                    _timed(layer, x, d.training)  # warm: compiled code loaded, buffers taken
                    p = explain(layer, x, training=d.training)
                    plans.append(p.layers[0] if p.layers else p)
            if _runs(plans[0]) == _runs(plans[1]):  # the rule does not apply at this shape here: nothing to time
                echo(f"  {d.field:22s} {d.cell} {B},{T},{I},{H} both candidates run {plans[0].path}: not timed")
                continue
            calls = max(1, round(SAMPLE_S / min(_timed(layer, x, d.training) for _ in range(2))))
            times: list[list[float]] = [[], []]
            for _ in range(rounds):
                order = [0, 1]
                random.shuffle(order)
                for k in order:
                    with policy((first, second)[k]):
                        times[k].append(_timed(layer, x, d.training, calls))
                if time.perf_counter() - started > budget_s * 0.8:
                    break
            a, b = (statistics.median(t) * 1e3 for t in times)
            ratios.append(a / b)
            measurements.append({"field": d.field, "cell": d.cell, "shape": [B, T, I, H],
                                 "mode": "train" if d.training else "inference",
                                 "candidates": [{"value": getattr(c, d.field), "path": p.path, "median_ms": round(m, 3)}
                                                for c, p, m in zip((first, second), plans, (a, b))]})
            echo(f"  {d.field:22s} {d.cell} {B},{T},{I},{H} {'train' if d.training else 'inference':9s} "
                 f"{_shown(getattr(first, d.field)):>8} ({_path(plans[0])}) {a:8.2f} ms   "
                 f"{_shown(getattr(second, d.field)):>8} "
                 f"({_path(plans[1])}) {b:8.2f} ms   ratio {a / b:.2f}")
        if not ratios:  # the host's rules already give both candidates the same paths: keep its default
            echo(f"{d.question}: {d.field} not decided (the same path at every shape)")
            continue
        chosen[d.field] = getattr(first if keeps_first(ratios) else second, d.field)
        echo(f"{d.question}: {d.field} = {chosen[d.field]!r} (worst ratio {max(ratios):.2f}, "
             f"geometric mean {statistics.geometric_mean(ratios):.2f})")
    seconds = time.perf_counter() - started
    result = {"version": TUNE_VERSION, "cpu": host.key, "host": dataclasses.asdict(host), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rounds": rounds, "seconds": round(seconds, 1),
              "decisions": chosen, "measurements": measurements}
    if path is not False:
        target = Path(path) if path is not None else tune_path(host)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(target)
        result["path"] = str(target)
        echo(f"decisions saved to {target} ({seconds:.1f} s); RNNKIT_TUNE=0 ignores them")
    else:
        echo(f"not saved ({seconds:.1f} s)")
    return result
